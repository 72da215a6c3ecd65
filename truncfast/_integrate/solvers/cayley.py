"""Cayley: the Lie–Euler bias step with ``R ← (I + hΩ/2)⁻¹ (I − hΩ/2) R`` (docs/theory.md §9).

Agrees with Lie–Euler to O(h³ ‖Ω‖³) per step; order 1.
"""

from __future__ import annotations

from truncfast._integrate.solvers.base import Solver
from truncfast._kernels import expm as _expm


class Cayley(Solver):
    """Explicit Euler for b, Cayley map for R."""

    name = "cayley"
    order = 1
    code = _expm.CAYLEY

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        b_new = b - dt * rhs.grad_b if train_biases else b
        return self._rotate(R, rhs.omega, dt, _expm.CAYLEY, train_weights), b_new
