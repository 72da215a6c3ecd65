"""Exponential Euler for the separated form (docs/theory.md §6, §9; needs L == Q).

The exact step of the bias flow ``∂_s b_j = −π_j (1 − m0_j) ⊙ (b_j + ỹ'_j)``,

    b_j ← −ỹ'_j + exp(−h π_j (1 − m0_j)) ⊙ (b_j + ỹ'_j),

exact while no sector code changes during the step; Lie–Euler for R.
"""

from __future__ import annotations

import numpy as np

from truncfast._integrate.solvers.base import Solver
from truncfast._kernels import expm as _expm


class ExpEuler(Solver):
    """Exact exponential step for the separated bias flow, Lie–Euler for R."""

    name = "exp-euler"
    order = 1
    needs_moments = True

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        if train_biases:
            y = rhs.target_rot
            b_new = -y + np.exp(-dt * rhs.rate) * (b + y)
        else:
            b_new = b
        return self._rotate(R, rhs.omega, dt, _expm.LIE_EULER, train_weights), b_new
