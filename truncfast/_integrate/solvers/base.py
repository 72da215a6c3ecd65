"""The solver interface: one small object per time-stepping method (docs/theory.md §9).

Every solver maps the state ``(R, b)`` at step k and the right-hand side
evaluated there (``RHS``) to the state at step k + 1 with one ``step``.
Frozen parts are returned as the very same arrays (bitwise unchanged).
To add an integrator, write one file with one subclass of :class:`Solver`
(``name``, ``order``, ``code``, ``step``) and list it in ``solvers/__init__.py``.
"""

from __future__ import annotations

import numpy as np

from truncfast._flow.evaluator import RHS
from truncfast._kernels import expm as _expm

__all__ = ["RHS", "Solver"]


class Solver:
    """Base class: one fixed step of size ``dt`` from ``(R, b)`` with right-hand side ``rhs``."""

    name: str = ""
    #: order of convergence inside a fixed sector pattern
    order: int = 1
    #: method code of the compiled loop (``expm.LIE_EULER`` / ``CAYLEY``); None: Python loop only
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
