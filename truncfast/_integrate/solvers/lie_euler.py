"""Lie–Euler: ``b ← b − h ∇_b C``, ``R_ℓ ← exp(−h Ω_ℓ) R_ℓ`` for all layers at once (docs/theory.md §9).

Exactly one gradient-descent step with learning rate h followed by the
exponential retraction on O(M) (docs/api.md).  Order 1.
"""

from __future__ import annotations

from truncfast._integrate.solvers.base import Solver
from truncfast._kernels import expm as _expm


class LieEuler(Solver):
    """Explicit Euler for b, exponential map for R (gradient descent + exp retraction)."""

    name = "lie-euler"
    order = 1
    code = _expm.LIE_EULER

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        b_new = b - dt * rhs.grad_b if train_biases else b
        return self._rotate(R, rhs.omega, dt, _expm.LIE_EULER, train_weights), b_new
