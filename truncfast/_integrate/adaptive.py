"""The time-stepped run loop: adaptive steps, ``t1``/``saveat``, multi-stage methods, the standard loss.

(docs/theory.md §§9, 12.)  The fixed-step loop of ``run.Run`` (single-stage
methods, a step count, the Euclidean loss) is left as it is — same bits,
compiled small-N loop.  Every other run goes through :class:`StepRun`:

    state (t, y) ──attempt step h (solver.attempt)──▶ proposal + error estimate
        rejected (err > 1): h ← controller.reject(h, err), retry  (adaptive only)
        accepted: re-orthonormalise R if needed, RHS at the new state (FSAL: reused),
                  locate collapses inside the step (adaptive), record, checkpoint

* **Step sizes.**  Fixed mode (no rtol/atol): every step is ``dt``.  Adaptive
  mode: ``dt`` is the first step, then the PI controller
  (``controller.PIController``) on the error norm (``controller.error_norm``).
  With ``t1`` a step that would pass the next stop (a ``saveat`` time or t1) is
  shortened to land on it exactly (no interpolation); after landing, the step
  the controller had planned is resumed.
* **Records.**  Always t = 0 and the end.  With ``saveat``: exactly the
  ``saveat`` times (``record_every`` must stay 1).  Without: every
  ``record_every``-th accepted step.  Record times are the flow times
  reached: ``k·dt`` in fixed mode with ``steps``, accumulated step sizes
  otherwise (landing times exact).
* **Located events** (adaptive only; ``events.py``).  With ``events="crossings"``
  a step whose stages or end leave the start's sector pattern is cut at the
  first crossing (bisection on re-taken steps) and continued across it; a
  collapse, being a crossing, then ends such a step.  With ``"collapses"`` the
  truncation counts after every accepted step show when cluster j becomes fully
  truncated at some layer for the first time inside [t, t + h]; that time is
  bisected to ``COLLAPSE_LOCATE_FRACTION · rtol · (t + h)``.
* **State.**  The committed state is one tuple, replaced by one assignment
  (Ctrl-C never sees half of it); checkpoints hold it together with the
  controller's memory, so :func:`resume_run` continues bitwise.
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple

import numpy as np

from truncfast import _config
from truncfast._errors import SeparationError, StepSizeError
from truncfast._flow.engines import merge_stats
from truncfast._flow.evaluator import RHS
from truncfast._integrate.controller import PIController, error_norm
from truncfast._integrate.events import Events, collapsed
from truncfast._integrate.records import Records
from truncfast._integrate.solvers import SOLVERS, Solver
from truncfast._integrate.solvers.base import State, Train, evaluate
from truncfast._integrate.monitor import suggested_dt
from truncfast._integrate.stops import divergence_error, loss_trouble, on_interrupt, on_separation
from truncfast._integrate.trajectory import Trajectory
from truncfast._kernels import expm as _expm
from truncfast._kernels.polar import orthonormalize

__all__ = ["StepRun"]

#: Test hook: called with the accepted-step count after every committed step.
_after_step: Callable[[int], None] | None = None


class _Committed(NamedTuple):
    k: int                    # accepted steps
    t: float                  # flow time of y
    y: State
    nrec: int                 # records written
    reorth: int               # re-orthonormalisations
    stop: int                 # index of the next stop (saveat times, then t1)
    h: float                  # next step size (adaptive: the controller's proposal)
    err_prev: float           # controller memory
    rejected_last: bool
    accepted: int
    rejected: int
    evals: int
    locate_evals: int
    ever: tuple               # (Q,) clusters that have collapsed
    located: tuple            # (Q,) located collapse times (NaN: not yet)
    crossings: int = 0        # sector crossings located and stepped over
    stall: int = 0            # consecutive crossings found at the very start of a step


class _Diverged(Exception):
    def __init__(self, k, t, loss):
        super().__init__(k)
        self.k, self.t, self.loss = k, t, loss


class StepRun:
    """One time-stepped integration (fresh or resumed)."""

    def __init__(self, settings: dict, y: State, ev, *, checkpoint, checkpoint_every, progress: bool,
                 previous: Trajectory | None = None, meta: dict | None = None, digest: str | None = None,
                 reorth0: int = 0):
        self._stats_before = dict(previous.engine_stats) if previous is not None else {}
        s = self.settings = settings
        self.ev = ev
        self.solver: Solver = SOLVERS[s["method"]]()
        self.train = Train(bool(s["train_weights"]), bool(s["train_biases"]), bool(s.get("train_output", False)))
        self.adaptive = s.get("rtol") is not None
        self.rtol = float(s["rtol"]) if self.adaptive else 0.0
        self.atol = float(s["atol"]) if self.adaptive else 0.0
        self.dt = float(s["dt"])
        self.t1 = None if s.get("t1") is None else float(s["t1"])
        self.steps = None if s.get("steps") is None else int(s["steps"])
        saveat = [float(v) for v in (s.get("saveat") or [])]
        self.saveat = [v for v in saveat if v > 0.0 and (self.t1 is None or v < self.t1)]
        self.stops = self.saveat + ([self.t1] if self.t1 is not None else [])
        self.record_every = int(s["record_every"])
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.digest = digest
        L, M = y.b.shape
        Q = ev.targets.shape[0]
        P = None if y.W is None else y.W.shape[0]
        self.records = Records(L, M, Q, P, previous=previous)
        nan = (math.nan,) * Q
        if previous is None:
            self.state = _Committed(0, 0.0, y, 0, reorth0, 0, self.dt, 1.0, False, 0, 0, 0, 0,
                                    (False,) * Q, nan)
        else:
            m = meta or {}
            st = previous.stats
            located = previous.located_collapse_times
            self.state = _Committed(
                int(previous.last_step), float(previous.last_time), y, len(previous.steps),
                int(previous.reorthonormalizations), int(m.get("stop", 0)), float(m.get("h", self.dt)),
                float(m.get("err_prev", 1.0)), bool(m.get("rejected_last", False)), int(st.get("accepted", 0)),
                int(st.get("rejected", 0)), int(st.get("rhs_evaluations", 0)),
                int(st.get("collapse_evaluations", 0)), tuple(bool(v) for v in m.get("ever", (False,) * Q)),
                nan if located is None else tuple(float(v) for v in located), int(st.get("crossings", 0)),
                int(m.get("stall", 0)))
        self.loss_limit = math.inf
        #: locate every sector crossing (restart the step there) instead of only collapses
        self.crossings = self.adaptive and s.get("events") == "crossings"
        self.events = Events(self.solver, ev, self.train, self.rtol)
        self._codes_cache: tuple[int, np.ndarray] | None = None

    # ------------------------------------------------------------ output ---
    def trajectory(self) -> Trajectory:
        """The trajectory up to the committed state (complete or partial)."""
        c = self.state
        rec = self.records.arrays(c.nrec)
        W_outs, b_outs = rec.pop("W_outs", None), rec.pop("b_outs", None)
        y = c.y
        stats = {"accepted": c.accepted, "rejected": c.rejected, "rhs_evaluations": c.evals,
                 "collapse_evaluations": c.locate_evals, "crossings": c.crossings}
        return Trajectory(R=y.R.copy(), b=y.b.copy(), **rec, reorthonormalizations=c.reorth,
                          settings=dict(self.settings), last_step=c.k,
                          W_out=None if y.W is None else y.W.copy(), b_out=None if y.c is None else y.c.copy(),
                          W_outs=W_outs, b_outs=b_outs, last_time=c.t, stats=stats,
                          located_collapse_times=np.array(c.located) if self.adaptive else None,
                          engine_stats=merge_stats(self._stats_before, self.ev.engine_stats))

    def write_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        c = self.state
        meta = {"data_sha256": self.digest, "checkpoint_every": self.checkpoint_every,
                "stepper": {"stop": c.stop, "h": c.h, "err_prev": c.err_prev, "rejected_last": c.rejected_last,
                            "ever": list(c.ever), "stall": c.stall}}
        self.trajectory().save(self.checkpoint, extra={"checkpoint": meta})

    # ------------------------------------------------------------ pieces ---
    def _done(self, k: int, stop: int) -> bool:
        return k >= self.steps if self.steps is not None else stop >= len(self.stops)

    def _counts(self, y: State) -> np.ndarray:
        return self.ev.counts(y.R, y.b)

    def _reorthonormalize(self, y: State) -> tuple[State, bool]:
        if self.train.weights and _expm.defect(y.R) > _config.REORTHONORMALIZE_TOL:
            return y._replace(R=orthonormalize(y.R)), True
        return y, False

    def _loss_limit(self) -> float:
        """As ``run.Run._loss_limit``: DIVERGENCE_LOSS_FACTOR × max(C at t = 0, floor × scale²)."""
        buf = self.records.buf
        loss0 = float(buf["loss"][0])
        b0 = buf["bs"][0]
        T = self.ev.targets
        scale2 = float(np.max(np.sum(T * T, axis=1), initial=0.0) + np.max(np.sum(b0 * b0, axis=1), initial=0.0))
        ref = max(loss0, _config.DIVERGENCE_LOSS_FLOOR * scale2)
        return _config.DIVERGENCE_LOSS_FACTOR * ref if ref > 0.0 else math.inf

    # --------------------------------------------------------------- loop ---
    def run(self) -> Trajectory:
        c = self.state
        rec = self.records
        try:
            rhs = evaluate(self.ev, c.y)
            self.state = c = c._replace(evals=c.evals + 1)
            if not rhs.finite():
                raise _Diverged(c.k, c.t, rhs.loss)
            counts = self._counts(c.y)
            if c.nrec == 0:
                rec.append(0, 0.0, 0, c.y, rhs, counts)
                now = collapsed(counts)
                located = tuple(0.0 if v else math.nan for v in now) if self.adaptive else c.located
                self.state = c = c._replace(nrec=1, ever=tuple(bool(v) for v in now), located=located)
            self.loss_limit = self._loss_limit()
            bar = self._bar(c)
            try:
                while not self._done(c.k, c.stop):
                    c, rhs = self._one_step(c, rhs)
                    if bar is not None:  # tqdm redraws at most every mininterval seconds
                        bar.set_postfix(loss=f"{rhs.loss:.4g}", h=f"{c.h:.3g}", refresh=False)
                        bar.update((c.k if self.steps is not None else min(c.t, self.t1)) - bar.n)
                    if self.checkpoint is not None and self.checkpoint_every and c.k % self.checkpoint_every == 0 \
                            and not self._done(c.k, c.stop):
                        self.write_checkpoint()
                    if _after_step is not None:
                        _after_step(c.k)
            finally:
                if bar is not None:
                    bar.close()
        except KeyboardInterrupt as exc:
            on_interrupt(exc, self, f"step {self.state.k} (time {self.state.t:g})")
            raise
        except _Diverged as d:
            self._raise_divergence(d)
        except SeparationError as exc:
            on_separation(exc, self, self.state.k)
            raise
        self.write_checkpoint()
        return self.trajectory()

    def _bar(self, c: _Committed):
        if not self.progress or self._done(c.k, c.stop):
            return None
        from tqdm import tqdm

        if self.steps is not None:
            return tqdm(total=self.steps, initial=c.k, unit="step", desc=f"truncfast {self.settings['method']}",
                        dynamic_ncols=True)
        return tqdm(total=self.t1, initial=c.t, unit="s", desc=f"truncfast {self.settings['method']}",
                    dynamic_ncols=True, bar_format="{l_bar}{bar}| s = {n:.4g}/{total:.4g} [{elapsed}{postfix}]")

    def _clip(self, c: _Committed, h: float) -> tuple[float, bool]:
        """The step to attempt from ``c``: h, or the distance to the next stop when h reaches it."""
        if self.t1 is not None:
            remaining = self.stops[c.stop] - c.t
            if h >= remaining - _config.ADAPTIVE_LAND_FRACTION * h:
                return remaining, True
        return h, False

    def _err(self, a, y0: State) -> float:
        """Error norm of an attempt (NaN when it produced non-finite values: rejected)."""
        with np.errstate(all="ignore"):
            return error_norm(a.error, y0, a.state, self.rtol, self.atol)

    def _one_step(self, c: _Committed, rhs: RHS) -> tuple[_Committed, RHS]:
        """Attempt steps from the committed state until one is accepted; commit it."""
        ctrl = PIController(self.solver.embedded_order or 1, c.err_prev)
        ctrl.rejected_last = c.rejected_last
        evals, rejected = c.evals, c.rejected
        h_plan = c.h if self.adaptive else self.dt
        codes0 = None
        if self.crossings:
            if self._codes_cache is None or self._codes_cache[0] != c.k:
                self._codes_cache = (c.k, self.events.codes(c.y))
            codes0 = self._codes_cache[1]
        if c.stall >= _config.CROSSING_STALL_STEPS:
            codes0 = None  # a crossing keeps recurring at the start of the step (sliding): one plain step
        codes_new = None
        crossing, stall, crossings = False, 0, c.crossings
        while True:
            h, landing = self._clip(c, h_plan)
            a = self.solver.attempt(c.y, rhs, h, self.ev, self.train)
            evals += a.evals
            if not self.adaptive:
                err = 0.0
                break
            if codes0 is not None and not self.events.one_pattern(a, codes0):
                # a sector crossing inside the step: step up to it (smooth), then over it
                lo, a_lo, hi, n = self.events.bracket(c.t, c.y, rhs, h, codes0, end=a)
                evals += n
                err = 0.0 if a_lo is None else self._err(a_lo, c.y)
                if err <= 1.0:
                    landing = landing and hi == h
                    a, n = self.events.step_over(c.y, rhs, lo, a_lo, hi)
                    evals += n
                    h, crossing, crossings = hi, True, crossings + 1
                    # a crossing at the very start of the step, or after a step below the smallest
                    # allowed one, is a stall (a point sliding along a boundary)
                    tiny = lo < _config.ADAPTIVE_MIN_STEP * max(abs(c.t), self.t1)
                    stall = c.stall + 1 if (a_lo is None or tiny) else 0
                    break
                h = lo
            else:
                err = self._err(a, c.y)
                if err <= 1.0:
                    break
            rejected += 1
            h_plan = ctrl.reject(h, err)
            if not h_plan >= _config.ADAPTIVE_MIN_STEP * max(abs(c.t), self.t1):
                self.state = c._replace(evals=evals, rejected=rejected)
                self._raise_step_size(h_plan, err)
        y, fixed = self._reorthonormalize(a.state)
        new_rhs = a.rhs
        if new_rhs is None or fixed:
            new_rhs = evaluate(self.ev, y)
            evals += 1
        if self.crossings:
            codes_new = codes0 if (codes0 is not None and not crossing and not fixed) else self.events.codes(y)
        k = c.k + 1
        if landing:
            t = self.stops[c.stop]
        elif self.steps is not None and not self.adaptive:
            t = k * self.dt
        else:
            t = c.t + h
        if not new_rhs.finite() or new_rhs.loss > self.loss_limit:
            self.state = c._replace(evals=evals, rejected=rejected)
            raise _Diverged(k, t, new_rhs.loss)
        counts = None
        ever, located, locate_evals = c.ever, c.located, c.locate_evals
        if self.adaptive:
            counts = self._counts(y)
            now = collapsed(counts)
            newly = np.flatnonzero(now & ~np.array(ever, dtype=bool))
            if newly.size:
                located = list(located)
                for j in newly:
                    if crossing:  # the step ends within the location tolerance after the crossing
                        located[j] = t
                    else:
                        located[j], n = self.events.locate_collapse(int(j), c.t, c.y, rhs, h)
                        locate_evals += n
                ever = tuple(bool(e or v) for e, v in zip(ever, now))
                located = tuple(located)
        h_next = self.dt
        err_prev, rejected_last = c.err_prev, c.rejected_last
        if self.adaptive:
            h_next = ctrl.accept(h, err)
            err_prev, rejected_last = ctrl.err_prev, ctrl.rejected_last
            if landing or crossing:
                # a step shortened to a stop or a crossing says little about the step size: resume the
                # plan, and keep the controller's memory of the last full step (a tiny error of a short
                # step would otherwise damp the next increase through the PI term)
                h_next = max(h_next, h_plan)
                err_prev = c.err_prev
        stop = c.stop + (1 if landing else 0)
        record = landing or (not self.saveat and k % self.record_every == 0) or self._done(k, stop)
        nrec = c.nrec
        if record:
            self.records.append(nrec, t, k, y, new_rhs, self._counts(y) if counts is None else counts)
            nrec += 1
        if codes_new is not None:
            self._codes_cache = (k, codes_new)
        c = _Committed(k, t, y, nrec, c.reorth + fixed, stop, h_next, err_prev, rejected_last, c.accepted + 1,
                       rejected, evals, locate_evals, ever, located, crossings, stall)
        self.state = c
        return c, new_rhs

    # ------------------------------------------------------------ errors ---
    def _raise_step_size(self, h: float, err: float):
        c = self.state
        err_ = StepSizeError(
            f"integrate: the adaptive step fell to h = {h:.3g} at time {c.t:g} (after {c.k} accepted and "
            f"{c.rejected} rejected steps; error norm {err:.3g} of the tolerance rtol = {self.rtol:g}, "
            f"atol = {self.atol:g}): the error cannot be brought under the tolerance there. Loosen rtol/atol "
            "(a tolerance near rounding cannot be met) or integrate with a fixed step; the run up to the last "
            "accepted step is in err.trajectory.")
        err_.trajectory = self.trajectory()  # type: ignore[attr-defined]
        err_.step = c.k  # type: ignore[attr-defined]
        err_.time = c.t  # type: ignore[attr-defined]
        err_.h = h  # type: ignore[attr-defined]
        raise err_ from None

    def _raise_divergence(self, d: _Diverged):
        c = self.state
        traj = self.trajectory()
        h = c.h if self.adaptive else self.dt
        suggest = suggested_dt(h)
        where = (f"the last good state (step {c.k}, time {c.t:g}) is kept in err.trajectory" if c.nrec
                 else "the initial state already has a non-finite loss")
        raise divergence_error(
            f"integrate: the loss {loss_trouble(d.loss, self.loss_limit)} at step {d.k} (time {d.t:g}) with "
            f"step size {h:g}; {where}. Use a smaller step{' or tolerance' if self.adaptive else ''}: "
            f"try dt = {suggest:g}.", d.k, d.loss, suggest, traj) from None
