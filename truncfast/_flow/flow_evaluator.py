"""``tf.FlowEvaluator``: the flow's loss and gradient at states the caller chooses, groups kept across calls.

For tools that step the flow themselves (their own integrators, line
searches, optimisers): the data are validated once, and with
``engine="moments"`` or ``"auto"`` the pattern groups of docs/theory.md §11
live in the object, so a call at a state near the previous ones re-checks
only the points the margin bound cannot certify (``_flow.engines``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._backends.registry import select
from truncfast._errors import InputError
from truncfast._flow.engines import Engine, check_engine
from truncfast._validate import check_state, check_targets

__all__ = ["FlowEvaluator"]


class _DataGuard:
    """Cheap evidence that the data did not change since the evaluator was built.

    Checked at every call, for every in-memory array involved (the caller's X
    and labels, and the evaluator's converted copies when conversion was
    needed): the same shape, dtype and data pointer, and the same bytes in
    ``_config.FLOW_EVALUATOR_GUARD_ROWS`` rows spread evenly over the data
    (first and last included; blake2b).  Not detected: a change confined to
    rows outside the sample, and anything inside dask arrays.
    """

    def __init__(self, pairs: list[tuple[str, Any]]):
        self.watch = []
        for name, arr in pairs:
            if not isinstance(arr, np.ndarray) or any(arr is w[1] for w in self.watch):
                continue
            N = arr.shape[0] if arr.ndim else 0
            k = min(N, _config.FLOW_EVALUATOR_GUARD_ROWS)
            rows = np.unique(np.linspace(0, N - 1, k).round().astype(np.int64)) if k else np.zeros(0, np.int64)
            self.watch.append((name, arr, self._meta(arr), rows, self._digest(arr, rows)))

    @staticmethod
    def _meta(arr: np.ndarray) -> tuple:
        return arr.shape, arr.dtype.str, arr.__array_interface__["data"][0], arr.strides

    @staticmethod
    def _digest(arr: np.ndarray, rows: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(arr[rows]).tobytes(), digest_size=16).digest()

    def check(self) -> None:
        for name, arr, meta, rows, digest in self.watch:
            if self._meta(arr) != meta:
                raise InputError(f"{name}: its shape, dtype or memory changed since this FlowEvaluator was built "
                                 f"(shape {meta[0]} → {arr.shape}); build a new FlowEvaluator for new data")
            if self._digest(arr, rows) != digest:
                raise InputError(f"{name}: the data changed since this FlowEvaluator was built (a sampled row "
                                 "differs); its pattern groups describe the old data — build a new FlowEvaluator "
                                 "for new data")


class FlowEvaluator:
    """Loss and gradient of the Euclidean flow on fixed data, at any state (docs/theory.md §§3, 5, 11).

    ``FlowEvaluator(X, labels, targets, *, engine="auto", backend="auto")``;
    ``.loss(R, b)`` and ``.gradient(R, b)`` return what ``tf.loss`` and
    ``tf.gradient`` return (to rounding: every engine agrees with the per-point
    kernel); a second call at the same state is free.  ``.stats``: what the
    engine did (``groups``, ``rechecked_points``, ``rebuilds``,
    ``direct_evaluations``, ``moment_evaluations``, ...).

    The evaluator keeps references to ``X`` and ``labels`` (a converted copy
    when they are not C-contiguous float64 / int64) and never modifies them.
    Data changed behind its back are rejected with ``InputError`` when detected:
    every call compares shape, dtype and data pointer of the arrays and the
    bytes of a fixed sample of rows (``_config.FLOW_EVALUATOR_GUARD_ROWS``); a
    change confined to other rows cannot be seen.  Not thread-safe (one
    evaluator owns its groups); use one per thread.
    """

    def __init__(self, X: Any, labels: Any, targets: Any, *, engine: str = "auto", backend: str = "auto"):
        if labels is None or targets is None:
            raise InputError("labels and targets must be given together")
        shape = getattr(X, "shape", None)
        M = int(shape[1]) if shape is not None and len(shape) == 2 else None
        N = int(shape[0]) if shape is not None and len(shape) >= 1 else None
        bk = select(backend, X, M=M, N=N)
        Xp = bk.prepare_X(X, M)
        M = int(Xp.shape[1])
        if M < 1:
            raise InputError("X: has no columns (M = 0); at least one input dimension is needed")
        T = check_targets(targets, M)
        lab = bk.prepare_labels(labels, Xp, T.shape[0])
        engine = check_engine(engine)
        Xp, lab = bk.persist(Xp, lab)
        self.M = M
        self._engine = Engine(bk, Xp, lab, T, engine)
        self._guard = _DataGuard([("X", X), ("labels", labels), ("X", Xp), ("labels", lab)])
        self._last: tuple | None = None

    @property
    def backend(self) -> str:
        """The backend that runs the evaluations."""
        return self._engine.bk.name

    @property
    def stats(self) -> dict:
        """What the engine did so far (the keys of ``Trajectory.engine_stats``)."""
        return self._engine.stats

    def _state(self, R: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
        R, b = check_state(R, b)
        if b.shape[1] != self.M:
            raise InputError(f"b: layers of width {b.shape[1]} do not match the data's M = {self.M} columns of X")
        self._guard.check()
        return R, b

    def _cached(self, R: np.ndarray, b: np.ndarray, want_grad: bool):
        last = self._last
        if last is not None and np.array_equal(last[0], R) and np.array_equal(last[1], b) \
                and (last[3] is not None or not want_grad):
            return last[2:]
        with np.errstate(all="ignore"):  # a diverging state gives inf/nan, returned as such
            loss, gb, om = self._engine.evaluate(R, b, want_grad)
        if gb is not None:
            gb, om = np.asarray(gb, dtype=np.float64), np.asarray(om, dtype=np.float64)
        self._last = (R.copy(), b.copy(), float(loss), gb, om)
        return self._last[2:]

    def loss(self, R: Any, b: Any) -> float:
        """``C_E = 1/(2N) Σ_n |τ^(L)(x_n) − ỹ_{labels[n]}|²`` at (R, b) (as ``tf.loss``)."""
        R, b = self._state(R, b)
        return self._cached(R, b, False)[0]

    def gradient(self, R: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(grad_b (L, M), omega (L, M, M))`` at (R, b) (as ``tf.gradient``, general form)."""
        R, b = self._state(R, b)
        _, gb, om = self._cached(R, b, True)
        return gb.copy(), om.copy()

    def __repr__(self) -> str:
        e = self._engine
        return (f"FlowEvaluator(N={e.N}, M={e.M}, Q={e.Q}, engine={e.requested!r} (runs {e.mode!r}), "
                f"backend={e.bk.name!r})")
