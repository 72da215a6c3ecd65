"""Located events of adaptive runs: sector crossings and collapses (docs/theory.md §12).

The right-hand side is smooth inside a sector pattern and jumps where a point
crosses a sector boundary.  :class:`Events` finds such places on the numerical
trajectory by *re-taking* the step from its start with smaller sizes θ (no
interpolation) and bisecting:

* :meth:`Events.bracket` — the first crossing of a step: the largest θ whose
  stages and end all have the start's sector codes, to
  ``CROSSING_LOCATE_FRACTION · rtol · (t + h)``;
* :meth:`Events.step_over` — the state just past it: the (smooth, error-controlled)
  step to the left end of the bracket, then one Lie–Euler step across;
* :meth:`Events.locate_collapse` — the first time in a step at which cluster j is
  fully truncated at some layer, to ``COLLAPSE_LOCATE_FRACTION · rtol · (t + h)``
  (used when crossings are not located; otherwise a collapse ends a crossing step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast import _config
from truncfast._backends.protocol import FULL
from truncfast._flow.evaluator import RHS
from truncfast._integrate.solvers import SOLVERS, Solver
from truncfast._integrate.solvers.base import Attempt, State, Train, evaluate

__all__ = ["Events", "collapsed"]

_EULER = SOLVERS["lie-euler"]()
_EPS = float(np.finfo(np.float64).eps)


def collapsed(counts: np.ndarray) -> np.ndarray:
    """(Q,) True where some layer fully truncates every point of cluster j (counts (L, Q, 3))."""
    if (counts < 0).any():
        return np.zeros(counts.shape[1], dtype=bool)
    size = counts.sum(axis=2)
    return ((counts[..., FULL] == size) & (size > 0)).any(axis=0)


class Events:
    """Bisection on re-taken steps of ``solver`` for crossings and collapses."""

    def __init__(self, solver: Solver, ev: Any, train: Train, rtol: float):
        self.solver, self.ev, self.train, self.rtol = solver, ev, train, rtol

    def codes(self, y: State) -> np.ndarray:
        """Sector codes (N, L) of every point at ``y`` (docs/theory.md §2)."""
        return np.asarray(self.ev.bk.codes(y.R, y.b, self.ev.X))

    def one_pattern(self, a: Attempt, codes0: np.ndarray) -> bool:
        """True when the new state and every inner stage of attempt ``a`` have the sector codes ``codes0``."""
        if not np.array_equal(self.codes(a.state), codes0):
            return False
        return all(np.array_equal(self.codes(st), codes0) for st in a.stages)

    def bracket(self, t: float, y: State, rhs: RHS, h: float, codes0: np.ndarray):
        """Bisect (0, h] for the first sector crossing of the step from (t, y).

        Returns ``(lo, full attempt at lo or None, hi, evaluations)``: every stage of the step to
        lo lies in the pattern of the start, some stage of the step to hi does not, and
        hi − lo ≤ max(CROSSING_LOCATE_FRACTION·rtol, 64 ulps)·(t + h).
        """
        lo, hi = 0.0, h
        tol = max(_config.CROSSING_LOCATE_FRACTION * self.rtol, 64 * _EPS) * (t + h)
        evals = 0
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if not (lo < mid < hi):
                break
            am = self.solver.attempt(y, rhs, mid, self.ev, self.train, state_only=True)
            evals += am.evals
            if self.one_pattern(am, codes0):
                lo = mid
            else:
                hi = mid
        a_lo = None
        if lo > 0.0:
            a_lo = self.solver.attempt(y, rhs, lo, self.ev, self.train)
            evals += a_lo.evals
        return lo, a_lo, hi, evals

    def step_over(self, y: State, rhs: RHS, lo: float, a_lo: Attempt | None, hi: float) -> tuple[Attempt, int]:
        """The state just after a located crossing: the accepted step to ``lo`` (all its stages
        before the crossing), then one Lie–Euler step of hi − lo ≤ the location tolerance across it.

        (Taking the method's own step to hi would evaluate stages beyond the crossing: Heun's
        second stage sits at the end of the step and would carry the new pattern's right-hand
        side over the whole step — measured: errors 1000× rtol.)"""
        evals = 0
        if a_lo is None:
            y0, r0 = y, rhs
        else:
            y0, r0 = a_lo.state, a_lo.rhs
            if r0 is None:
                r0 = evaluate(self.ev, y0)
                evals += 1
        return _EULER.attempt(y0, r0, hi - lo, self.ev, self.train), evals

    def locate_collapse(self, j: int, t: float, y: State, rhs: RHS, h: float) -> tuple[float, int]:
        """First time in (t, t + h] at which cluster j is collapsed: bisection on re-taken steps."""
        lo, hi = 0.0, h
        tol = max(_config.COLLAPSE_LOCATE_FRACTION * self.rtol, 64 * _EPS) * (t + h)
        evals = 0
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if not (lo < mid < hi):
                break
            a = self.solver.attempt(y, rhs, mid, self.ev, self.train)
            evals += a.evals
            if collapsed(self.ev.counts(a.state.R, a.state.b))[j]:
                hi = mid
            else:
                lo = mid
        return t + hi, evals
