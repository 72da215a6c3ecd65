"""The solver interface: one small object per time-stepping method (docs/theory.md §9).

Every solver maps the state ``(R, b)`` at step k and the right-hand side
evaluated there (``RHS``) to the state at step k + 1 with one ``step``.
Frozen parts are returned as the very same arrays (bitwise unchanged).
To add an integrator, write one file with one subclass of :class:`Solver`
(``name``, ``order``, ``code``, ``step``) and list it in ``solvers/__init__.py``.

The time-stepped loop of ``_integrate.adaptive`` (variable steps, the
standard loss) calls :meth:`Solver.attempt` instead: one step of size h from a
:class:`State` (R, b and, for the standard loss, the output layer W, c), which
returns the proposed state, the right-hand side there when the method computed
it, and — for methods with an embedded pair (``embedded_order``) — the raw
local error estimate (docs/theory.md §12).  The default ``attempt`` of a
single-stage solver is its ``step`` plus explicit Euler for the output layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from truncfast._flow.evaluator import RHS
from truncfast._kernels import expm as _expm

__all__ = ["RHS", "Solver", "State", "Train", "Attempt", "evaluate"]


class State(NamedTuple):
    """A point of the flow: ``R`` (L, M, M), ``b`` (L, M), and for the standard loss
    the output layer ``W`` (P, M), ``c`` (P,) (None for the Euclidean loss)."""

    R: np.ndarray
    b: np.ndarray
    W: np.ndarray | None = None
    c: np.ndarray | None = None


class Train(NamedTuple):
    """Which parts of the state move (a frozen part is returned as the same array)."""

    weights: bool
    biases: bool
    output: bool = False


class Attempt(NamedTuple):
    """One proposed step: the new state, the RHS there if computed (else None), the raw
    local error estimate as a State of differences (Θ-difference in place of R; None
    without an embedded pair), the number of RHS evaluations it took, and the states
    at which the inner stages were evaluated (a step "sees one sector pattern" when
    all of them and the new state have the pattern of its start)."""

    state: State
    rhs: RHS | None
    error: State | None
    evals: int
    stages: tuple = ()


def evaluate(ev: Any, y: State) -> RHS:
    """The right-hand side at ``y`` (the standard evaluator also takes the output layer)."""
    if y.W is None:
        return ev.rhs(y.R, y.b)
    return ev.rhs(y.R, y.b, y.W, y.c)


class Solver:
    """Base class: one fixed step of size ``dt`` from ``(R, b)`` with right-hand side ``rhs``."""

    name: str = ""
    #: order of convergence inside a fixed sector pattern
    order: int = 1
    #: method code of the compiled loop (``expm.LIE_EULER`` / ``CAYLEY``); None: Python loop only
    code: int | None = None
    #: True when the step needs the separated moments (``rhs.rate``, ``rhs.target_rot``)
    needs_moments: bool = False
    #: order of the embedded error estimate (adaptive steps); None: fixed steps only
    embedded_order: int | None = None
    #: True when ``step`` needs only the RHS at the state before it (the loop of ``run.Run``)
    one_stage: bool = True

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

    def attempt(self, y: State, rhs: RHS, h: float, ev: Any, train: Train, state_only: bool = False) -> Attempt:
        """One step of size h from ``y`` (RHS ``rhs`` there): :meth:`step` for (R, b) and
        explicit Euler ``W ← W − h grad_W``, ``c ← c − h grad_bout`` for the output layer."""
        R, b = self.step(y.R, y.b, rhs, h, train.weights, train.biases)
        W, c = y.W, y.c
        if W is not None and train.output:
            W = W - h * rhs.grad_W
            c = c - h * rhs.grad_bout
        return Attempt(State(R, b, W, c), None, None, 0)
