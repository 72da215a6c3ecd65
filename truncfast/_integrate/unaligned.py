"""The gradient flow of general invertible cumulative weights (docs/theory.md §13): a small fixed-step loop.

Flow: ``∂_s W_ℓ = −∇_{W_ℓ} C``, ``∂_s b_ℓ = −∇_{b_ℓ} C`` (Frobenius metric on the
cumulative weights, plain Euclidean gradients of C_E).  One step of
``"euler"`` is one step of gradient descent with learning rate dt on (W, b):

    state k ──evaluate──▶ (C, ∇_b C, ∇_W C) ──record if k is recorded──▶ W ← W − dt ∇_W C,  b ← b − dt ∇_b C

Why not ``run.Run``: the aligned loop's state lives on O(M)^L (retractions,
re-orthonormalisation, ``ortho_defect``, compiled steps over R), and its
records are those of R.  Here the state is a point of GL(M)^L × R^{LM}, the
watched quantity is the condition number, and the records add the alignment
defect; sharing the loop would fork it at every line.  The divergence rules
are the aligned loop's (non-finite or ``DIVERGENCE_LOSS_FACTOR``-fold loss growth,
same constants), plus one: a step that takes some W_ℓ beyond
``_config.UNALIGNED_MAX_CONDITION`` stops the run with the condition number.

Hook for other solvers: :data:`STEPPERS` maps a method name to a function
``(W, b, grad_W, grad_b, dt, train_w, train_b) -> (W, b)``.  An adaptive method
(issue 15's ``heun``/``bs3`` on R^n) adds an entry and, if it rejects steps,
returns the step it took; nothing else in the loop depends on the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._errors import DivergenceError, InputError
from truncfast._flow import unaligned as _u
from truncfast._integrate.checks import (
    check_dt,
    check_flag,
    check_int,
    check_record_memory,
    n_records,
    record_step,
)
from truncfast._integrate.trajectory import FULL
from truncfast._version import __version__

__all__ = ["UnalignedTrajectory", "integrate", "STEPPERS"]


def _euler(W, b, gW, gb, dt, train_w, train_b):
    return (W - dt * gW if train_w else W), (b - dt * gb if train_b else b)


#: method name -> ``(W, b, grad_W, grad_b, dt, train_w, train_b) -> (W, b)``.
STEPPERS: dict[str, Callable] = {"euler": _euler}


@dataclass(eq=False)
class UnalignedTrajectory:
    """A recorded run of the unaligned flow (docs/theory.md §13).

    ``W, b``: the state after ``last_step``.  Per recorded step (0, every
    ``record_every``, the last): ``times`` (= step·dt), ``steps``, ``loss`` (C_E),
    ``grad_b_norm``, ``grad_W_norm`` (Frobenius over all layers), ``condition``
    (K, L) and ``alignment_defect`` (K, L) of every W_ℓ, ``counts`` (K, L, Q, 3)
    as ``truncfast.Trajectory.counts``, and the states ``Ws``, ``bs``.
    """

    W: np.ndarray
    b: np.ndarray
    times: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    grad_b_norm: np.ndarray
    grad_W_norm: np.ndarray
    condition: np.ndarray
    alignment_defect: np.ndarray
    counts: np.ndarray
    Ws: np.ndarray
    bs: np.ndarray
    settings: dict = field(default_factory=dict)
    last_step: int = 0

    @property
    def collapse_times(self) -> np.ndarray:
        """(Q,) first recorded time at which some layer fully truncates every point of cluster j (NaN if never)."""
        return collapse_times(self.times, self.counts)

    @property
    def complete(self) -> bool:
        return self.last_step == int(self.settings.get("steps", self.last_step))

    def __repr__(self) -> str:
        last = f"{self.loss[-1]:.6g}" if len(self.loss) else "n/a"
        return (f"UnalignedTrajectory(dt={self.settings.get('dt')}, step {self.last_step}/{self.settings.get('steps')}, "
                f"{len(self.steps)} records, L={self.W.shape[0]}, M={self.W.shape[1]}, final loss {last})")


def collapse_times(times: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(Q,) first time at which some layer fully truncates all of cluster j, from counts (K, L, Q, 3); NaN if never."""
    c = np.asarray(counts)
    Q = c.shape[2] if c.ndim == 4 else 0
    out = np.full(Q, np.nan)
    if c.ndim != 4 or c.shape[0] == 0 or (c < 0).any():
        return out
    size = c.sum(axis=3)
    collapsed = ((c[..., FULL] == size) & (size > 0)).any(axis=1)  # (K, Q)
    for j in range(Q):
        hit = np.flatnonzero(collapsed[:, j])
        if hit.size:
            out[j] = times[hit[0]]
    return out


class _Stop(Exception):
    def __init__(self, step: int, why: str, loss: float):
        super().__init__(why)
        self.step, self.why, self.loss = step, why, loss


def integrate(W: Any, b: Any, X: Any, labels: Any, targets: Any, *, dt: float, steps: int, method: str = "euler",
              train_weights: bool = True, train_biases: bool = True, record_every: int = 1,
              backend: str = "auto", progress: bool = False) -> UnalignedTrajectory:
    """Integrate ``∂_s W = −∇_W C``, ``∂_s b = −∇_b C`` of C_E with a fixed step (docs/theory.md §13).

    ``method="euler"``: explicit Euler, i.e. full-batch gradient descent with
    learning rate ``dt`` on the cumulative weights and biases.  ``train_weights``
    / ``train_biases`` freeze W / b (bitwise unchanged).  Records steps 0,
    ``record_every``, … and the last.

    Raises InputError for bad arguments (a singular or ill-conditioned W names
    its condition number) and DivergenceError when the loss or gradient becomes
    non-finite, the loss grows beyond ``DIVERGENCE_LOSS_FACTOR`` × its reference,
    or a step makes some W_ℓ ill-conditioned (condition number above
    ``UNALIGNED_MAX_CONDITION``); ``err.trajectory`` holds the run up to the last
    good state, with ``err.step`` and ``err.loss``.  Ctrl-C re-raises
    KeyboardInterrupt with the partial run in ``exc.trajectory``.
    """
    p = _u.unaligned_args(W, b, X, labels, targets, backend)
    dt = check_dt(dt)
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    if not isinstance(method, str) or method not in STEPPERS:
        raise InputError(f"method: unknown method {method!r}; choose one of " + ", ".join(map(repr, STEPPERS)))
    train_w = check_flag("train_weights", train_weights)
    train_b = check_flag("train_biases", train_biases)
    progress = check_flag("progress", progress)
    N, M = p.X.shape
    L, Q = p.W.shape[0], p.targets.shape[0]
    check_record_memory(steps, record_every, L, M, Q)
    settings = {"method": method, "dt": dt, "steps": steps, "record_every": record_every,
                "train_weights": train_w, "train_biases": train_b, "backend": p.bk.name,
                "N": int(N), "M": int(M), "L": int(L), "Q": int(Q), "version": __version__,
                "max_condition": _config.UNALIGNED_MAX_CONDITION}
    loop = _Loop(p, settings, STEPPERS[method])
    return loop.run(progress)


class _Loop:
    def __init__(self, p: _u.Unaligned, settings: dict, stepper: Callable):
        self.p, self.settings, self.stepper = p, settings, stepper
        self.dt, self.steps = settings["dt"], settings["steps"]
        self.record_every = settings["record_every"]
        self.K = n_records(self.steps, self.record_every)
        self.rec: dict[str, list] = {k: [] for k in ("times", "steps", "loss", "grad_b_norm", "grad_W_norm",
                                                    "condition", "alignment_defect", "counts", "Ws", "bs")}
        self.state = (0, p.W.copy(), p.b.copy())  # (step, W, b): replaced by one assignment

    def _eval(self, W, b):
        with np.errstate(all="ignore"):  # a diverging state: reported below, not warned about
            loss, gb, gW = self.p.bk.unaligned_general(W, b, self.p.X, self.p.labels, self.p.targets, True)
        return float(loss), gb, gW

    def _record(self, k, W, b, loss, gb, gW, cond):
        r = self.rec
        r["times"].append(k * self.dt)
        r["steps"].append(k)
        r["loss"].append(loss)
        r["grad_b_norm"].append(math.sqrt(float(np.vdot(gb, gb))))
        r["grad_W_norm"].append(math.sqrt(float(np.vdot(gW, gW))))
        r["condition"].append(cond)
        r["alignment_defect"].append(_u.alignment_defect(W))
        r["counts"].append(_u.counts(self.p.bk, W, b, self.p.X, self.p.labels, self.p.targets.shape[0]))
        r["Ws"].append(W.copy())
        r["bs"].append(b.copy())

    def trajectory(self) -> UnalignedTrajectory:
        k, W, b = self.state
        p = self.p
        L, M = b.shape
        Q = p.targets.shape[0]
        shapes = {"condition": (L,), "alignment_defect": (L,), "counts": (L, Q, 3), "Ws": (L, M, M), "bs": (L, M)}
        arrays = {}
        for name, vals in self.rec.items():
            dtype = np.int64 if name in ("steps", "counts") else np.float64
            arrays[name] = (np.array(vals, dtype=dtype) if vals
                            else np.zeros((0,) + shapes.get(name, ()), dtype=dtype))
        return UnalignedTrajectory(W=W.copy(), b=b.copy(), **arrays, settings=dict(self.settings), last_step=k)

    def run(self, progress: bool) -> UnalignedTrajectory:
        k, W, b = self.state
        train_w, train_b = self.settings["train_weights"], self.settings["train_biases"]
        bar = None
        try:
            loss, gb, gW = self._eval(W, b)
            cond = _u.conditions(W)
            if not (np.isfinite(loss) and np.isfinite(gb).all() and np.isfinite(gW).all()):
                raise _Stop(0, f"the initial state has a non-finite loss or gradient (loss {loss!r})", loss)
            self._record(0, W, b, loss, gb, gW, cond)
            limit = self._loss_limit(loss, b)
            if progress and self.steps:
                from tqdm import tqdm

                bar = tqdm(total=self.steps, unit="step", desc="truncfast unaligned", dynamic_ncols=True)
            nrec = 1
            while k < self.steps:
                W_new, b_new = self.stepper(W, b, gW, gb, self.dt, train_w, train_b)
                cond_new = _u.conditions(W_new) if train_w else cond
                worst = int(np.argmax(cond_new))
                if not cond_new[worst] <= _config.UNALIGNED_MAX_CONDITION:
                    raise _Stop(k + 1, f"W_{worst} became ill-conditioned: condition number "
                                       f"{float(cond_new[worst]):.3g} > {_config.UNALIGNED_MAX_CONDITION:.3g}", loss)
                loss_new, gb_new, gW_new = self._eval(W_new, b_new)
                if not (np.isfinite(loss_new) and np.isfinite(gb_new).all() and np.isfinite(gW_new).all()):
                    raise _Stop(k + 1, f"the loss or gradient became non-finite (loss {loss_new!r})", loss_new)
                if loss_new > limit:
                    raise _Stop(k + 1, f"the loss grew to {loss_new!r}, more than "
                                       f"{_config.DIVERGENCE_LOSS_FACTOR:g} × its reference "
                                       f"{limit / _config.DIVERGENCE_LOSS_FACTOR:.6g}", loss_new)
                k, W, b, loss, gb, gW, cond = k + 1, W_new, b_new, loss_new, gb_new, gW_new, cond_new
                if nrec < self.K and k == record_step(nrec, self.steps, self.record_every):
                    self._record(k, W, b, loss, gb, gW, cond)
                    nrec += 1
                self.state = (k, W, b)
                if bar is not None:
                    bar.update(1)
        except KeyboardInterrupt as exc:
            exc.trajectory = self.trajectory()  # type: ignore[attr-defined]
            raise
        except _Stop as s:
            traj = self.trajectory()
            err = DivergenceError(
                f"unaligned.integrate: {s.why} at step {s.step} (time {s.step * self.dt:g}) with dt = {self.dt:g}; "
                f"the last good state (step {self.state[0]}) is kept in err.trajectory. A smaller dt, or stopping "
                "earlier, keeps the weights invertible (docs/theory.md §13).")
            err.step, err.loss, err.trajectory = s.step, s.loss, traj  # type: ignore[attr-defined]
            raise err from None
        finally:
            if bar is not None:
                bar.close()
        return self.trajectory()

    def _loss_limit(self, loss0: float, b0: np.ndarray) -> float:
        """The aligned loop's rule (``run.Run._loss_limit``): factor × max(C(0), floor × scale²)."""
        T = self.p.targets
        scale2 = float(np.max(np.sum(T * T, axis=1)) + np.max(np.sum(b0 * b0, axis=1)))
        ref = max(loss0, _config.DIVERGENCE_LOSS_FLOOR * scale2)
        return _config.DIVERGENCE_LOSS_FACTOR * ref if ref > 0.0 else math.inf
