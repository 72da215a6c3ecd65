"""Fixed-step integrators of the effective flow (THEORY §9), one small class each.

Every solver maps the state ``(R, b)`` at step k and the right-hand side
evaluated there (:class:`RHS`) to the state at step k + 1 with one ``step``.
Frozen parts are returned as the very same arrays (bitwise unchanged).

* :class:`LieEuler` — ``b ← b − h ∇_b C``, ``R_ℓ ← exp(−h Ω_ℓ) R_ℓ`` for all layers
  at once: exactly one gradient-descent step with the exponential retraction
  (CONTRACT.md).  Order 1.
* :class:`Cayley` — same bias step, ``R_ℓ ← (I + hΩ_ℓ/2)⁻¹ (I − hΩ_ℓ/2) R_ℓ``.
  Agrees with Lie–Euler to O(h³ ‖Ω‖³) per step; order 1.
* :class:`ExpEuler` — separated form only (THEORY §6, L == Q): the exact
  exponential step of the bias flow ``∂_s b_j = −π_j (1 − m0_j) ⊙ (b_j + ỹ'_j)``,

      b_j ← −ỹ'_j + exp(−h π_j (1 − m0_j)) ⊙ (b_j + ỹ'_j),

  exact while no sector code changes during the step; Lie–Euler for R.

To add an integrator, write one class with ``name``, ``order``, ``code`` (the
method code of the compiled small-problem loop, or None) and ``step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from truncfast._kernels import expm as _expm

__all__ = ["RHS", "Solver", "LieEuler", "Cayley", "ExpEuler", "SOLVERS"]


@dataclass
class RHS:
    """The right-hand side of the flow at one state (THEORY §§5, 6).

    ``rate`` (L, M) = π_j (1 − m0_j) and ``target_rot`` (L, M) = ỹ'_j = R_j ỹ_j
    are filled only for solvers that need the separated moments.
    """

    loss: float
    grad_b: np.ndarray
    omega: np.ndarray
    rate: np.ndarray | None = None
    target_rot: np.ndarray | None = None


class Solver:
    """Base class: one fixed step of size ``dt`` from ``(R, b)`` with right-hand side ``rhs``."""

    name: str = ""
    order: int = 1
    #: method code of the compiled loop (``_expm.LIE_EULER`` / ``CAYLEY``); None: Python loop only
    code: int | None = None
    #: True when the step needs the separated moments (``rhs.rate``, ``rhs.target_rot``)
    needs_moments: bool = False

    def step(self, R: np.ndarray, b: np.ndarray, rhs: RHS, dt: float,
             train_weights: bool, train_biases: bool) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def _rotate(R, omega, dt, code, train_weights):
        if not train_weights:
            return R
        out = np.empty_like(R)
        _expm.rotate_layers(R, omega, dt, code, out)
        return out


class LieEuler(Solver):
    """Explicit Euler for b, exponential map for R (gradient descent + exp retraction)."""

    name = "lie-euler"
    code = _expm.LIE_EULER

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        b_new = b - dt * rhs.grad_b if train_biases else b
        return self._rotate(R, rhs.omega, dt, _expm.LIE_EULER, train_weights), b_new


class Cayley(Solver):
    """Explicit Euler for b, Cayley map for R."""

    name = "cayley"
    code = _expm.CAYLEY

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        b_new = b - dt * rhs.grad_b if train_biases else b
        return self._rotate(R, rhs.omega, dt, _expm.CAYLEY, train_weights), b_new


class ExpEuler(Solver):
    """Exact exponential step for the separated bias flow, Lie–Euler for R (THEORY §9)."""

    name = "exp-euler"
    needs_moments = True

    def step(self, R, b, rhs, dt, train_weights, train_biases):
        if train_biases:
            y = rhs.target_rot
            b_new = -y + np.exp(-dt * rhs.rate) * (b + y)
        else:
            b_new = b
        return self._rotate(R, rhs.omega, dt, _expm.LIE_EULER, train_weights), b_new


SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (LieEuler, Cayley, ExpEuler)}
