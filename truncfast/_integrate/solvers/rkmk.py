"""Runge–Kutta–Munthe-Kaas steps on O(M)^L × R^{L M} (× the output layer), docs/theory.md §12.

One explicit Butcher tableau ``(a, weights, embedded)`` drives every part of
the state at once.  With ``K_j = −Ω(Y_j)`` (Lie-algebra direction of stage j),
``F_j = −∇_b C(Y_j)`` (and ``−∇_W``, ``−∇_c`` for the standard loss):

    Θ_i = h Σ_j a_ij K̃_j,   Y_i = (exp(Θ_i) R, b + h Σ_j a_ij F_j, …)     (stages)
    K̃_i = dexp⁻¹_{Θ_i}(K_i) ≈ K_i − ½ [Θ_i, K_i]                           (order ≥ 3 only)
    R ← exp(Θ) R,  Θ = h Σ_i w_i K̃_i;   b ← b + h Σ_i w_i F_i               (the step)

``exp(Θ)R`` is the flow of ``R' = K R`` with Θ solving ``Θ' = dexp⁻¹_Θ(K)``;
RK applied to that equation in the algebra is the RKMK method (Munthe-Kaas
1999).  Its series ``K − ½[Θ, K] + (1/12)[Θ, [Θ, K]] − …`` may be cut after
the terms of degree p − 2 in Θ for order p (Θ_i = O(h)), so order 2 needs no
correction and order 3 the first commutator.  In M = 2 the algebra so(2) is
abelian and every correction vanishes.

**Error estimate.**  The embedded weights ŵ give a second solution of order
p̂ = ``embedded_order``; the estimate is the difference of the two *in the
algebra and in the vector parts*: ``e_Θ = h Σ (w_i − ŵ_i) K̃_i`` and
``e_b = h Σ (w_i − ŵ_i) F_i``.  For R this is the difference of the two Θ's,
which equals ``log(R_newᵀ R_emb)`` conjugated by R up to a relative O(h) (BCH:
``log(e^{−Θ} e^{Θ̂}) = (Θ̂ − Θ) − ½[Θ, Θ̂ − Θ] + …``), costs no second
exponential and no logarithm, and is an antisymmetric matrix of angles whose
size does not depend on where R is on O(M).

**FSAL.**  When the last stage is evaluated at the new state itself (last row
of ``a`` equal to ``weights``, as for Bogacki–Shampine), that stage's state *is*
the step's result and its right-hand side is returned for the next step.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from truncfast._integrate.solvers.base import RHS, Attempt, Solver, State, Train, evaluate
from truncfast._kernels import expm as _expm

__all__ = ["RKMK", "expm_algebra", "commutator"]


def expm_algebra(Theta: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``exp(Θ_ℓ) R_ℓ`` for every layer (the integrators' own expm: same code, no BLAS)."""
    out = np.empty_like(R)
    # rotate_layers forms exp(−h Ω) R; with Ω = Θ and h = −1 the argument is −(−1)·Θ = Θ exactly
    _expm.rotate_layers(R, Theta, -1.0, _expm.LIE_EULER, out)
    return out


def commutator(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``[A_ℓ, B_ℓ] = A_ℓ B_ℓ − B_ℓ A_ℓ`` per layer (einsum's own loops: no BLAS, fixed order)."""
    return np.einsum("lij,ljk->lik", A, B) - np.einsum("lij,ljk->lik", B, A)


def _combine(coeffs: Sequence[float], vecs: list, h: float):
    """``h Σ_j coeffs_j vecs_j`` over the nonzero coefficients, in index order (None if all vanish)."""
    acc = None
    for a, v in zip(coeffs, vecs):
        if a != 0.0 and v is not None:
            acc = a * v if acc is None else acc + a * v
    return None if acc is None else h * acc


class RKMK(Solver):
    """An explicit RKMK method given by its tableau (subclasses set the class attributes)."""

    #: strictly lower triangular rows: ``a[i]`` has i entries (``a[0] == ()``)
    a: tuple[tuple[float, ...], ...] = ((),)
    #: weights w of the propagated solution (order ``order``)
    weights: tuple[float, ...] = (1.0,)
    #: weights ŵ of the embedded solution (order ``embedded_order``); None: no estimate
    embedded: tuple[float, ...] | None = None
    #: apply the first dexp⁻¹ correction ``K − ½[Θ_i, K]`` (needed for order ≥ 3)
    dexpinv: bool = False
    one_stage = False

    @property
    def fsal(self) -> bool:
        """True when the last stage is evaluated at the step's result."""
        return len(self.a) > 1 and tuple(self.a[-1]) == tuple(self.weights[:-1]) and self.weights[-1] == 0.0

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        raise NotImplementedError(f"{self.name} is a multi-stage method: it needs the evaluator (use attempt)")

    def attempt(self, y: State, rhs: RHS, h: float, ev: Any, train: Train, state_only: bool = False) -> Attempt:
        """One RKMK step of size h from ``y`` with ``rhs`` = RHS(y) (the first stage).

        ``state_only``: only the new state is wanted (no error estimate, no
        RHS there), which saves the last evaluation of a FSAL method; the
        state has the same bits as in a full attempt.
        """
        std = y.W is not None
        mv_W, mv_b, mv_out = train.weights, train.biases, train.output and std
        K: list = []   # stage directions in the algebra (after dexp⁻¹), per layer
        F: list = []   # bias velocities
        G: list = []   # output weight velocities
        H: list = []   # output bias velocities
        evals = 0
        stage_rhs = rhs
        stage_y = y
        stages = []
        fsal = self.fsal and not state_only
        for i, row in enumerate(self.a):
            if state_only and self.fsal and i == len(self.a) - 1:
                break
            Theta_i = None
            if i > 0:
                Theta_i = _combine(row, K, h) if mv_W else None
                db = _combine(row, F, h) if mv_b else None
                dW = _combine(row, G, h) if mv_out else None
                dc = _combine(row, H, h) if mv_out else None
                stage_y = State(y.R if Theta_i is None else expm_algebra(Theta_i, y.R),
                                y.b if db is None else y.b + db,
                                y.W if dW is None else y.W + dW,
                                y.c if dc is None else y.c + dc)
                stage_rhs = evaluate(ev, stage_y)
                stages.append(stage_y)
                evals += 1
            if mv_W:
                k = -stage_rhs.omega
                if self.dexpinv and Theta_i is not None:
                    k = k - 0.5 * commutator(Theta_i, k)
                K.append(k)
            F.append(-stage_rhs.grad_b if mv_b else None)
            G.append(-stage_rhs.grad_W if mv_out else None)
            H.append(-stage_rhs.grad_bout if mv_out else None)
        if fsal:
            new, new_rhs = stage_y, stage_rhs
        else:
            Theta = _combine(self.weights, K, h) if mv_W else None
            db = _combine(self.weights, F, h) if mv_b else None
            dW = _combine(self.weights, G, h) if mv_out else None
            dc = _combine(self.weights, H, h) if mv_out else None
            new = State(y.R if Theta is None else expm_algebra(Theta, y.R),
                        y.b if db is None else y.b + db,
                        y.W if dW is None else y.W + dW,
                        y.c if dc is None else y.c + dc)
            new_rhs = None
        error = None
        if self.embedded is not None and not state_only:
            d = [w - e for w, e in zip(self.weights, self.embedded)]
            error = State(_combine(d, K, h) if mv_W else None, _combine(d, F, h) if mv_b else None,
                          _combine(d, G, h) if mv_out else None, _combine(d, H, h) if mv_out else None)
        if fsal and stages:
            stages.pop()  # the last stage is the new state itself
        return Attempt(new, new_rhs, error, evals, tuple(stages))
