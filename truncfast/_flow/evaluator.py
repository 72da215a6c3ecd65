"""The right-hand side of the flow at a state, on prepared data: what integrators call.

An :class:`Evaluator` holds the validated data and the backend that runs them
and returns, for a state (R, b), the loss and (grad_b, omega) in the
requested form (docs/theory.md §5 general, §6 separated), plus the truncation
counts that trajectories record (§2).  The same object serves every backend
(dask included) and every solver.  :class:`StandardEvaluator` is the same for
the standard loss C_std, whose state also holds the output layer
(docs/theory.md §12).  ``engine`` chooses how the right-hand side
is computed (``_flow.engines``: per point, or from pattern groups kept across
evaluations, docs/theory.md §11); the integrator sees no difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._backends.protocol import Backend
from truncfast._flow import separated as _separated
from truncfast._flow.engines import Engine
from truncfast._flow.gradient import euclid_general

__all__ = ["RHS", "Evaluator", "StandardEvaluator"]


@dataclass
class RHS:
    """The right-hand side of the flow at one state (docs/theory.md §§5, 6).

    ``rate`` (L, M) = π_j (1 − m0_j) and ``target_rot`` (L, M) = ỹ'_j = R_j ỹ_j
    are filled only for solvers that need the separated moments; ``grad_W``
    (P, M) and ``grad_bout`` (P,) only for the standard loss (docs/theory.md §12).
    """

    loss: float
    grad_b: np.ndarray
    omega: np.ndarray
    rate: np.ndarray | None = None
    target_rot: np.ndarray | None = None
    grad_W: np.ndarray | None = None
    grad_bout: np.ndarray | None = None

    def finite(self) -> bool:
        """True when the loss and every entry of the gradient are finite."""
        ok = np.isfinite(self.loss) and np.isfinite(self.grad_b).all() and np.isfinite(self.omega).all()
        if ok and self.grad_W is not None:
            ok = np.isfinite(self.grad_W).all() and np.isfinite(self.grad_bout).all()
        return bool(ok)


class Evaluator:
    """Right-hand side of the Euclidean flow on data prepared by ``problem.euclid_args``.

    ``form="general"`` runs the per-point kernel of §5; ``"separated"`` the
    moment form of §6 (with the separation assumption proved at every
    evaluation), with ``needs_moments`` also filling ``RHS.rate`` and
    ``RHS.target_rot`` for the exponential bias step.  ``engine``: ``"direct"``,
    ``"moments"`` or ``"auto"`` (``_flow.engines.Engine``, which owns the pattern
    groups: one evaluator per run, not thread-safe).
    """

    def __init__(self, bk: Backend, X: Any, labels: Any, targets: np.ndarray, *, form: str = "general",
                 needs_moments: bool = False, engine: str = "direct"):
        self.bk, self.X, self.labels, self.targets = bk, X, labels, targets
        self.form = form
        self.needs_moments = needs_moments
        self.engine = Engine(bk, X, labels, targets, engine)

    @property
    def engine_stats(self) -> dict:
        """What the engine did so far (``Trajectory.engine_stats``)."""
        return self.engine.stats

    @property
    def N(self) -> int:
        return int(self.X.shape[0])

    def rhs(self, R: np.ndarray, b: np.ndarray) -> RHS:
        """Loss and (grad_b, omega) at (R, b); non-finite values are returned, not raised
        (the caller decides: the integrator raises DivergenceError)."""
        # a diverging state makes inf − inf in the kernels: no RuntimeWarning noise
        with np.errstate(all="ignore"):
            return self._rhs(R, b)

    def _rhs(self, R, b) -> RHS:
        X, labels, T = self.X, self.labels, self.targets
        if self.form == "general":
            loss, gb, om = self.engine.evaluate(R, b)
            return RHS(float(loss), gb, om)
        Q = T.shape[0]
        grouped = self.engine.separated(R, b)  # the moments from the groups, or None: per point
        if grouped is None:
            counts, S0, S1, S2 = _separated.checked_moments(self.bk, R, b, X, labels, Q)
            loss = float(euclid_general(self.bk, R, b, X, labels, T, False)[0])
        else:
            loss, counts, S0, S1, S2 = grouped
        gb, om = _separated.assemble(R, b, T, counts, S0, S1, S2, self.N)
        rhs = RHS(loss, gb, om)
        if self.needs_moments:
            rhs.rate = (counts[:, None] - S0) / self.N  # π_j (1 − m0_j)
            rhs.target_rot = np.einsum("jik,jk->ji", R, T)  # ỹ'_j
        return rhs

    def counts(self, R: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(L, Q, 3) untruncated / partial / full counts along the composition (docs/theory.md §2);
        −1 everywhere when M > 64 (sector codes need a uint64 bitmask)."""
        L, M = b.shape
        Q = self.targets.shape[0]
        if M > _config.MAX_CODE_WIDTH:
            return np.full((L, Q, 3), -1, dtype=np.int64)
        grouped = self.engine.counts(R, b)  # free when the groups are exact at (R, b)
        return grouped if grouped is not None else self.bk.counts(R, b, self.X, self.labels, Q)


class StandardEvaluator(Evaluator):
    """Right-hand side of the joint flow of C_std in (R, b, W_out, b_out) (docs/theory.md §12).

    ``Y`` (Q, P) are the reference outputs; they take the place of the
    targets (``self.targets`` is ``Y``: Q, the divergence scale and the
    checkpoint digest come from it).  The output layer is part of the state,
    so :meth:`rhs` takes it: ``rhs(R, b, W_out, b_out)`` returns the loss
    C_std, the hidden part (grad_b, omega) of §5 with the error
    ``e = W_outᵀ ρ`` and the output part ``grad_W = (1/N) Σ ρ zᵀ``,
    ``grad_bout = (1/N) Σ ρ`` (``ρ = W_out z + b_out − y_j``).  Only the
    general form exists for C_std.
    """

    def __init__(self, bk: Backend, X: Any, labels: Any, Y: np.ndarray):
        super().__init__(bk, X, labels, Y, form="general")
        self.engine.fallback = "the standard loss has no pattern form yet (docs/theory.md §11): per point"

    def rhs(self, R: np.ndarray, b: np.ndarray, W_out: np.ndarray | None = None,  # type: ignore[override]
            b_out: np.ndarray | None = None) -> RHS:
        """Loss C_std and its gradient at (R, b, W_out, b_out); non-finite values are returned, not raised."""
        with np.errstate(all="ignore"):
            M = R.shape[1]
            loss, gb, om, gW, gbo = self.bk.general(R, b, self.X, self.labels, np.zeros((0, M)), W_out, b_out,
                                                    self.targets, True, True)
            return RHS(float(loss), gb, om, grad_W=gW, grad_bout=gbo)
