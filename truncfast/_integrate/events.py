"""Located events of adaptive runs: sector crossings and collapses (docs/theory.md §12).

The right-hand side is smooth inside a sector pattern and jumps where a point
crosses a sector boundary.  :class:`Events` finds such places on the numerical
trajectory by *re-taking* the step from its start with smaller sizes θ (no
interpolation) and bisecting:

* :meth:`Events.bracket` — the first crossing of a step: the largest θ whose
  stages and end all have the start's sector codes, to
  ``CROSSING_LOCATE_FRACTION · rtol · (t + h)``.  The points whose codes changed
  over the step give a continuous function g(θ) = min over their flipped
  coordinates of the signed pre-activation (positive before, ≤ 0 after the
  flip); regula falsi with the Illinois modification on g (each trial one
  state-only step) brackets its first zero in a handful of steps instead of the
  ~27 halvings of a bisection; the bracket is then checked with the sector codes
  of every stage, and plain bisection takes over when the check fails (a stage
  that crosses when the end does not, a point that crosses and returns);
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

    def bracket(self, t: float, y: State, rhs: RHS, h: float, codes0: np.ndarray, end: Attempt | None = None):
        """Bracket the first sector crossing of the step from (t, y) inside (0, h].

        Returns ``(lo, full attempt at lo or None, hi, evaluations)``: every stage of the step to
        lo lies in the pattern of the start, some stage of the step to hi does not, and
        hi − lo ≤ max(CROSSING_LOCATE_FRACTION·rtol, 64 ulps)·(t + h).  ``end`` is the attempt
        of size h (its end state seeds the regula falsi; see the module docstring).
        """
        tol = max(_config.CROSSING_LOCATE_FRACTION * self.rtol, 64 * _EPS) * (t + h)
        evals = 0
        if end is not None:
            found, evals = self._regula_falsi(y, rhs, h, codes0, end, tol)
            if found is not None:
                lo, a_lo, hi = found
                return lo, a_lo, hi, evals
        lo, a_lo, hi, n = self._bisect(y, rhs, 0.0, h, codes0, tol)
        return lo, a_lo, hi, evals + n

    @staticmethod
    def _signed_preacts(y: State, Z: np.ndarray, rows: np.ndarray, layers: np.ndarray, coords: np.ndarray,
                        signs: np.ndarray) -> float:
        """min over the tracked (point, layer, coordinate) of ±u: the pre-activation R_ℓ τ^(ℓ−1)(x) + b_ℓ
        of the points ``Z`` along the composition (clamp form of docs/theory.md §4), positive while
        the coordinate has its starting bit."""
        L = y.b.shape[0]
        best = np.inf
        for l in range(int(layers.max()) + 1):
            V = Z @ y.R[l].T
            sel = layers == l
            if sel.any():
                U = V[rows[sel], coords[sel]] + y.b[l, coords[sel]]
                best = min(best, float(np.min(signs[sel] * U)))
            if l + 1 < L:
                Z = np.maximum(V, -y.b[l]) @ y.R[l]
        return best

    def _regula_falsi(self, y: State, rhs: RHS, h: float, codes0: np.ndarray, end: Attempt, tol: float):
        """Illinois regula falsi on g(θ) (see the module docstring): ``((lo, attempt at lo, hi) or None,
        evaluations)``; None when it cannot be used or its bracket fails the check with the sector codes."""
        codes1 = self.codes(end.state)
        flipped = codes0 ^ codes1
        pts, lays = np.nonzero(flipped)
        if pts.size == 0 or pts.size > _config.CROSSING_SECANT_MAX_POINTS:
            return None, 0
        M = y.b.shape[1]
        bits = (flipped[pts, lays][:, None] >> np.arange(M, dtype=np.uint64)) & np.uint64(1)
        k, coords = np.nonzero(bits)
        uniq, rows = np.unique(pts[k], return_inverse=True)
        Z = np.asarray(self.ev.X[uniq], dtype=np.float64)
        layers = lays[k]
        start_bit = (codes0[pts[k], layers] >> coords.astype(np.uint64)) & np.uint64(1)
        signs = np.where(start_bit == 1, 1.0, -1.0)
        g = lambda st: self._signed_preacts(st, Z, rows, layers, coords, signs)  # noqa: E731
        a, ga, b, gb = 0.0, g(y), h, g(end.state)
        if not (ga > 0.0 and gb <= 0.0):
            return None, 0
        evals, side, steps = 0, 0, 0
        while b - a > tol:
            if steps >= _config.CROSSING_SECANT_STEPS:
                return None, evals
            c = b - gb * (b - a) / (gb - ga)
            c = min(max(c, a + 0.25 * tol), b - 0.25 * tol)  # every trial shrinks the bracket
            if steps % 4 == 3:
                c = 0.5 * (a + b)  # a bisection now and then bounds the worst case
            ac = self.solver.attempt(y, rhs, c, self.ev, self.train, state_only=True)
            evals += ac.evals
            steps += 1
            gc = g(ac.state)
            if gc > 0.0:
                a, ga = c, gc
                if side == 1:
                    gb *= 0.5  # Illinois: the other end has stayed twice
                side = 1
            else:
                b, gb = c, gc
                if side == -1:
                    ga *= 0.5
                side = -1
        a_lo = None
        if a > 0.0:
            a_lo = self.solver.attempt(y, rhs, a, self.ev, self.train)
            evals += a_lo.evals
            if not self.one_pattern(a_lo, codes0):
                return None, evals
        return (a, a_lo, b), evals

    def _bisect(self, y: State, rhs: RHS, lo: float, hi: float, codes0: np.ndarray, tol: float):
        """Plain bisection of (lo, hi] on the sector codes of every stage (the fallback)."""
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
