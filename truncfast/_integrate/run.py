"""The integrator's run loop: records, checkpoints, Ctrl-C, divergence (docs/theory.md §9).

One :class:`Run` per integration (fresh or resumed) alternates *evaluate the
right-hand side at state k* (``_flow.evaluator.Evaluator``, any backend) and
*one solver step*:

    state k ──evaluate──▶ RHS(k) ──record if k is recorded──▶ solver.step ──▶ state k+1
                                                              └─ re-orthonormalise if the defect > tol

Recorded steps are 0, every ``record_every`` steps, and the last step.  The
loop is cut into *chunks* whose ends are the recorded steps, the checkpoint
steps, the last step and a wall-clock budget (for the progress bar and Ctrl-C
responsiveness).  Chunking never changes a single bit of the result.

Where the backend offers it (``Backend.runs_compiled_loop``: numba, general
form, lie-euler or cayley, small N), a chunk of steps runs in compiled code
(``_kernels.step_loop``) with the same arithmetic, hence the same bits.

The committed state ``(step, R, b, records written, reorthonormalisations)``
is replaced by one assignment, so a Ctrl-C never sees a half-updated run; the
interrupted run writes a last checkpoint and re-raises ``KeyboardInterrupt``
with the partial trajectory attached as ``exc.trajectory``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np

from truncfast import _config
from truncfast._atomic import remove_leftovers
from truncfast._errors import SeparationError
from truncfast._flow.engines import merge_stats
from truncfast._flow.evaluator import RHS, Evaluator
from truncfast._kernels.polar import orthonormalize
from truncfast._integrate.checks import check_record_memory, n_records, record_step
from truncfast._integrate.monitor import LossMonitor, suggested_dt
from truncfast._integrate.solvers import SOLVERS, Solver
from truncfast._integrate.stops import divergence_error, loss_trouble, on_interrupt, on_separation
from truncfast._integrate.trajectory import Trajectory
from truncfast._kernels import expm as _expm
from truncfast._kernels.step_loop import DIVERGED, REORTH
from truncfast._validate import overflow_error

__all__ = ["Run"]

#: Test hook: called with the step index after every committed chunk boundary
#: (tests raise KeyboardInterrupt from it to simulate Ctrl-C at a given step).
_after_boundary: Callable[[int], None] | None = None


class _Diverged(Exception):
    def __init__(self, step, loss, good_step, R, b, state: bool = False, unstable: dict | None = None):
        super().__init__(step)
        self.step, self.loss, self.good_step, self.R, self.b = step, loss, good_step, R, b
        self.state = state  # the step made (R, b) itself non-finite (a huge dt), not only the loss
        self.unstable = unstable  # the monitor's event (on_instability="raise")


class Run:
    """One integration (fresh or resumed): buffers, committed state, the loop."""

    def __init__(self, settings: dict, R, b, ev: Evaluator, *, checkpoint, checkpoint_every,
                 progress: bool, previous: Trajectory | None = None, digest: str | None = None,
                 reorth0: int = 0, monitor_state: dict | None = None):
        self.settings = settings
        self.ev = ev
        self.bk = ev.bk
        self.solver: Solver = SOLVERS[settings["method"]]()
        self.dt = float(settings["dt"])
        self.steps = int(settings["steps"])
        self.train_w = bool(settings["train_weights"])
        self.train_b = bool(settings["train_biases"])
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        if self.checkpoint is not None:
            remove_leftovers(self.checkpoint)  # temp files of a write that a kill -9 cut short
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.digest = digest
        L, M = b.shape
        Q = ev.targets.shape[0]
        self.record_every = int(settings["record_every"])
        check_record_memory(self.steps, self.record_every, L, M, Q)
        self.n_records = n_records(self.steps, self.record_every)
        # record buffers grow by doubling (a run of 10⁹ steps must not allocate
        # all its records up front); the recorded values never depend on capacity
        K = min(self.n_records, 256 if previous is None else len(previous.steps) + 256)
        self.buf = {
            "times": np.zeros(K), "steps": np.zeros(K, dtype=np.int64), "loss": np.zeros(K),
            "grad_b_norm": np.zeros(K), "omega_norm": np.zeros(K), "ortho_defect": np.zeros(K),
            "counts": np.zeros((K, L, Q, 3), dtype=np.int64), "Rs": np.zeros((K, L, M, M)),
            "bs": np.zeros((K, L, M)),
        }
        nrec, reorth, k = 0, reorth0, 0
        if previous is not None:
            nrec = len(previous.steps)
            for name, arr in self.buf.items():
                arr[:nrec] = getattr(previous, name)
            reorth = int(previous.reorthonormalizations)
            k = int(previous.last_step)
        # the committed state, replaced by one assignment so that Ctrl-C never
        # sees a half-updated run: (step, R, b, records written, reorthonormalisations)
        self.state = (k, R, b, nrec, reorth)
        self.warnings: list[str] = list(previous.warnings) if previous is not None else []
        if previous is not None and monitor_state is None and len(previous.loss):
            # a checkpoint from before the monitor: restart it from the recorded losses
            monitor_state = {"best": float(np.min(previous.loss)), "prev": float(previous.loss[-1])}
        self._monitor_state = monitor_state
        self.monitor: LossMonitor | None = None  # built once the initial loss is known (run())
        self._chunk_len = 64
        self._stats_before = dict(previous.engine_stats) if previous is not None else {}

    # ------------------------------------------------------------ pieces ---
    def _record(self, i: int, k: int, R, b, rhs: RHS) -> None:
        buf = self.buf
        cap = len(buf["steps"])
        if i >= cap:
            new = min(self.n_records, 2 * cap)
            # build the grown buffers first, then swap them in with one assignment
            # (a Ctrl-C in between leaves the old, still valid buffers)
            grown = {}
            for name, arr in buf.items():
                g = np.zeros((new,) + arr.shape[1:], dtype=arr.dtype)
                g[:cap] = arr
                grown[name] = g
            self.buf = buf = grown
        buf["times"][i] = k * self.dt
        buf["steps"][i] = k
        buf["loss"][i] = rhs.loss
        buf["grad_b_norm"][i] = math.sqrt(float(np.dot(rhs.grad_b.ravel(), rhs.grad_b.ravel())))
        buf["omega_norm"][i] = math.sqrt(float(np.dot(rhs.omega.ravel(), rhs.omega.ravel())))
        buf["ortho_defect"][i] = _expm.defect(R)
        buf["counts"][i] = self.ev.counts(R, b)
        buf["Rs"][i] = R
        buf["bs"][i] = b

    def trajectory(self) -> Trajectory:
        """The trajectory up to the committed state (complete or partial)."""
        k, R, b, nrec, reorth = self.state
        rec = {name: arr[:nrec].copy() for name, arr in self.buf.items()}
        return Trajectory(R=R.copy(), b=b.copy(), **rec, reorthonormalizations=reorth,
                          settings=dict(self.settings), last_step=k, warnings=list(self.warnings),
                          engine_stats=merge_stats(self._stats_before, self.ev.engine_stats))

    def write_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        extra = {"checkpoint": {"data_sha256": self.digest, "checkpoint_every": self.checkpoint_every}}
        if self.monitor is not None:
            extra["monitor"] = self.monitor.state()
        self.trajectory().save(self.checkpoint, extra=extra)

    def _next_boundary(self, k: int, nrec: int) -> int:
        stop = min(self.steps, record_step(nrec, self.steps, self.record_every), k + self._chunk_len)
        if self.checkpoint is not None and self.checkpoint_every:
            stop = min(stop, (k // self.checkpoint_every + 1) * self.checkpoint_every)
        return max(stop, k + 1)

    def _reorthonormalize(self, R) -> tuple[np.ndarray, bool]:
        """Polar projection back onto O(M) once the defect exceeds the tolerance (docs/theory.md §9)."""
        if self.train_w and _expm.defect(R) > _config.REORTHONORMALIZE_TOL:
            return orthonormalize(R), True
        return R, False

    # ------------------------------------------------------------ advance ---
    def _advance_python(self, k, stop, R, b, rhs, nrec, reorth):
        while k < stop:
            R_new, b_new = self.solver.step(R, b, rhs, self.dt, self.train_w, self.train_b)
            if not (np.isfinite(R_new).all() and np.isfinite(b_new).all()):
                raise _Diverged(k + 1, math.nan, k, R, b, state=True)  # the step overflowed: dt, not the data
            R_new, fixed = self._reorthonormalize(R_new)
            rhs_new = self.ev.rhs(R_new, b_new)
            if not rhs_new.finite() or rhs_new.loss > self.loss_limit:
                raise _Diverged(k + 1, rhs_new.loss, k, R, b)
            self._watch(k + 1, [rhs_new.loss], lambda good, R=R, b=b: (R, b))
            k, R, b, rhs = k + 1, R_new, b_new, rhs_new
            reorth += fixed
            if k < stop:  # intermediate states are never recorded: commit them at once
                self.state = (k, R, b, nrec, reorth)
        return k, R, b, rhs, reorth

    def _advance_compiled(self, k, stop, R, b, rhs, reorth, watch: bool = True):
        start = (k, R, b, rhs, reorth)
        # work on copies: the committed arrays must survive a Ctrl-C
        Rw, bw = R.copy(), b.copy()
        gb, om = rhs.grad_b.copy(), rhs.omega.copy()
        Rprev, bprev = np.empty_like(R), np.empty_like(b)
        ev, bk = self.ev, self.bk
        M = R.shape[1]
        W0, bo0, Y0 = np.zeros((0, M)), np.zeros(0), np.zeros((ev.targets.shape[0], 0))
        loss = rhs.loss
        losses = np.empty(stop - k)  # the loss after every step of the chunk, for the monitor
        k_first = k + 1
        while k < stop:
            status, done, loss_c = bk.compiled_steps(
                Rw, bw, gb, om, ev.X, ev.labels, ev.targets, W0, bo0, Y0, self.dt, self.solver.code,
                self.train_w, self.train_b, stop - k, _config.REORTHONORMALIZE_TOL, Rprev, bprev,
                self.loss_limit, losses[k + 1 - k_first:])
            k += done
            ev.engine.note_direct(done)
            if status == DIVERGED:
                raise _Diverged(k, loss_c, k - 1, Rprev.copy(), bprev.copy(),
                                state=not (np.isfinite(Rw).all() and np.isfinite(bw).all()))
            if status == REORTH:
                if not (np.isfinite(Rw).all() and np.isfinite(bw).all()):
                    raise _Diverged(k, math.nan, k - 1, Rprev.copy(), bprev.copy(), state=True)
                Rw = orthonormalize(Rw)
                reorth += 1
                loss_c = bk.evaluate_seq(Rw, bw, ev.X, ev.labels, ev.targets, gb, om)
                if not (np.isfinite(loss_c) and np.isfinite(gb).all() and np.isfinite(om).all()) \
                        or loss_c > self.loss_limit:
                    raise _Diverged(k, loss_c, k - 1, Rprev.copy(), bprev.copy())
                losses[k - k_first] = loss_c
            loss = loss_c
        if watch:
            self._watch(k_first, losses, lambda good: self._advance_compiled(
                start[0], good, *start[1:], watch=False)[1:3] if good > start[0] else start[1:3])
        return k, Rw, bw, RHS(float(loss), gb, om), reorth

    def _watch(self, first_step: int, losses, good_state) -> None:
        """The instability monitor (``monitor.LossMonitor``) sees the losses after steps
        ``first_step, …``; on its first event it warns (recorded in the trajectory) or, with
        ``on_instability="raise"``, stops the run at the step before (``good_state(step)``
        gives that state)."""
        ev = self.monitor.observe(first_step, losses) if self.monitor is not None else None
        if ev is None:
            return
        if self.monitor.mode == "raise":
            good = ev["step"] - 1
            Rg, bg = good_state(good)
            raise _Diverged(ev["step"], ev["loss"], good, Rg, bg, unstable=ev)
        self.warnings.append(ev["message"])
        self.monitor.warn(ev)

    # --------------------------------------------------------------- loop ---
    def run(self) -> Trajectory:
        k, R, b, nrec, reorth = self.state
        compiled = bool(self.settings.get("compiled_loop"))
        try:
            rhs = self.ev.rhs(R, b)
            if not rhs.finite():
                if nrec == 0:  # the caller's data, not the step: name the input that is too large
                    raise overflow_error("integrate (the loss and gradient at the initial state)",
                                         dict(X=self.ev.X, b=b, targets=self.ev.targets), self.ev.N, b.shape[1])
                raise _Diverged(k, rhs.loss, None, R, b)
            if nrec == 0:
                self._record(0, k, R, b, rhs)
                nrec = 1
                self.state = (k, R, b, nrec, reorth)
            self.loss_limit = self._loss_limit()
            self.monitor = LossMonitor(self.settings.get("on_instability", "warn"), self.dt, self._scale2(),
                                       self._monitor_state)
            self.monitor.start(rhs.loss)
            bar = None
            if self.progress and k < self.steps:
                from tqdm import tqdm

                bar = tqdm(total=self.steps, initial=k, unit="step",
                           desc=f"truncfast {self.settings['method']}", dynamic_ncols=True)
            try:
                while k < self.steps:
                    stop = self._next_boundary(k, nrec)
                    t0 = time.perf_counter()
                    k0 = k
                    if compiled:
                        k, R, b, rhs, reorth = self._advance_compiled(k, stop, R, b, rhs, reorth)
                    else:
                        k, R, b, rhs, reorth = self._advance_python(k, stop, R, b, rhs, nrec, reorth)
                    if nrec < self.n_records and k == record_step(nrec, self.steps, self.record_every):
                        self._record(nrec, k, R, b, rhs)
                        nrec += 1
                    self.state = (k, R, b, nrec, reorth)
                    self._tune_chunk(time.perf_counter() - t0, k - k0)
                    if bar is not None:
                        bar.update(k - k0)
                        bar.set_postfix(loss=f"{rhs.loss:.4g}", refresh=False)
                    if self.checkpoint is not None and self.checkpoint_every and k % self.checkpoint_every == 0 \
                            and k < self.steps:
                        self.write_checkpoint()
                    if _after_boundary is not None:
                        _after_boundary(k)
            finally:
                if bar is not None:
                    bar.close()
        except KeyboardInterrupt as exc:
            on_interrupt(exc, self, f"step {self.state[0]} of {self.steps}")
            raise
        except _Diverged as d:
            self._raise_divergence(d)
        except SeparationError as exc:
            on_separation(exc, self, self.state[0])
            raise
        self.write_checkpoint()
        return self.trajectory()

    loss_limit = math.inf

    def _loss_limit(self) -> float:
        """Largest loss a step may reach before the run counts as diverging.

        A gradient flow never increases its loss, so explicit steps with a stable
        dt keep it ≤ C(0) up to rounding.  The limit is DIVERGENCE_LOSS_FACTOR ×
        the loss at step 0 of the run (recorded, so a resumed run uses the same
        limit and stays bitwise equal), floored at DIVERGENCE_LOSS_FLOOR × the
        squared scale of the targets and initial biases, so that a run started
        at a (nearly) exact equilibrium is not stopped by rounding noise.
        """
        loss0 = float(self.buf["loss"][0])
        ref = max(loss0, _config.DIVERGENCE_LOSS_FLOOR * self._scale2())
        return _config.DIVERGENCE_LOSS_FACTOR * ref if ref > 0.0 else math.inf

    def _scale2(self) -> float:
        """max_j |ỹ_j|² + max_ℓ |b_ℓ(0)|²: the squared scale of the problem (noise floors)."""
        b0 = self.buf["bs"][0]
        T = self.ev.targets
        return float(np.max(np.sum(T * T, axis=1), initial=0.0) + np.max(np.sum(b0 * b0, axis=1), initial=0.0))

    def _tune_chunk(self, elapsed: float, n: int) -> None:
        """Keep one chunk near the wall-clock budget (progress bar, Ctrl-C latency)."""
        if n < self._chunk_len:
            return
        if elapsed < 0.5 * _config.INTEGRATE_CHUNK_SECONDS:
            self._chunk_len = min(self._chunk_len * 2, 1 << 24)
        elif elapsed > 2.0 * _config.INTEGRATE_CHUNK_SECONDS:
            self._chunk_len = max(1, self._chunk_len // 2)

    def _raise_divergence(self, d: _Diverged):
        k, R, b, nrec, reorth = self.state
        if d.good_step is not None and d.good_step != k:
            self.state = (d.good_step, d.R, d.b, nrec, reorth)
        traj = self.trajectory()
        suggest = suggested_dt(self.dt)
        if d.unstable is not None:
            raise divergence_error(d.unstable["message"] + f"; the run up to step {d.good_step} is kept in "
                                   "err.trajectory (on_instability='raise')", d.step, d.loss, suggest, traj) from None
        where = (f"the last good state (step {d.good_step}) is kept in err.trajectory"
                 if d.good_step is not None else "the initial state already has a non-finite loss")
        what = ("could not be evaluated: the step made the state (R, b) non-finite" if d.state
                else loss_trouble(d.loss, self.loss_limit))
        raise divergence_error(
            f"integrate: the loss {what} at step {d.step} (time {d.step * self.dt:g}) with "
            f"dt = {self.dt:g}; {where}. Use a smaller step: the bias rate π_j(1 − m0) is at most 1, so "
            f"explicit Euler on the biases needs dt < 2; try dt = {suggest:g}.", d.step, d.loss, suggest, traj) from None
