"""Exact, event-driven solution of the separated bias flow at fixed R (docs/theory.md §7).

Paper section 4.3, [4.38–4.50].  With the rotations frozen, the separated flow
of the biases [3.39] ``∂_s b_j = −π_j (1 − m0) ⊙ (b_j + R_j ỹ_j)`` decouples into
L·M scalar problems.  For layer j and direction i write

    z_k = (R_j x_{j,k})_i   (the N_j points of cluster j),   β = b_{j,i},
    β* = −(R_j ỹ_j)_i,      n(β) = #{k : z_k + β ≤ 0}        (H(0) = 0),

    ∂_s β = −(n(β)/N) (β − β*)                                             [4.42]

with N the total number of points (all clusters).  n is piecewise constant in β,
so between events β relaxes exponentially towards β*:

    β(s) = β* + (β(s_n) − β*) e^{−(n/N)(s − s_n)},                              [4.47]

and the next event is reached when β crosses the next threshold θ = −z:

    s_{n+1} = s_n + (N/n) ln( (β(s_n) − β*) / (θ − β*) ).                      [4.48–4.49]

Two directions (the sign of β − β* never changes, so neither does the direction):

* **β > β*, decreasing** (the paper's case).  Points are truncated one distinct
  value at a time in increasing order of z; the point z reaches the boundary
  z + β = 0 at finite time iff −z > β*, and is truncated at that instant
  (H(0) = 0).  Ties are truncated together (n jumps by the multiplicity).  Once
  no further threshold is reachable, β → β* at the final rate n/N (N_j/N when
  the whole cluster is truncated [4.50]).
* **β < β*, increasing** (not in the paper).  Truncated points are *released*
  in decreasing order of z as β rises past θ = −z; θ is reached in finite time
  iff θ < β*.  At β = θ the point still counts as truncated (H(0) = 0), so the
  rate is positive there, and it drops to (n − m)/N just above.  If that released
  group was the last truncated one (n − m = 0) the right-hand side is positive at
  β = θ and zero for every β > θ: no classical solution continues past θ, and
  the solution (Filippov's, and the limit of every fixed-step scheme, which
  overshoots θ by O(dt) and then stops) stays at β = θ = −min z for ever.  The
  flow therefore *stops* in finite time at the release of the last point, with
  that point exactly on the boundary; note that ``tf.gradient`` evaluated there
  is not zero (the point counts as truncated), although the state is the end
  point of the flow.
* **β = β*** or **n(β) = 0**: a fixed point [4.44].

Cost: one sort per (layer, direction), O(N_j log N_j), then O(#events) vector
operations; evaluation at T times is O(T log #events).  Nothing is stepped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from truncfast._errors import InputError, SeparationError
from truncfast._flow import separated as _separated
from truncfast._flow.problem import euclid_args
from truncfast._validate import check_results_finite

__all__ = ["BiasComponentSolution", "exact_bias_flow", "exact_bias_events", "solve_bias_component"]


@dataclass(frozen=True)
class BiasComponentSolution:
    """Exact solution β(s) of one scalar bias equation [4.42].

    Segment k runs over ``[event_times[k], event_times[k+1])`` (the last one to
    +∞); on it ``n(β) = counts[k]`` points are truncated and

        β(s) = beta_star + (thresholds[k] − beta_star) · exp(−rates[k] (s − event_times[k])),

    ``rates[k] = counts[k] / N``.  ``thresholds[0]`` is the initial value;
    ``thresholds[k]`` (k ≥ 1) equals ``−z`` of the point group truncated or
    released at ``event_times[k]``.  ``direction`` is −1 (β decreasing, points
    truncated), +1 (β increasing, points released) or 0 (fixed point).
    """

    beta_star: float
    event_times: np.ndarray
    thresholds: np.ndarray
    counts: np.ndarray
    rates: np.ndarray
    direction: int

    @property
    def stop_time(self) -> float:
        """Time after which β is exactly constant (``inf`` if it only converges)."""
        return float(self.event_times[-1]) if self.rates[-1] == 0.0 else float("inf")

    def __call__(self, s: Any) -> np.ndarray:
        """β at the (non-negative) times ``s``."""
        s = np.asarray(s, dtype=np.float64)
        k = np.searchsorted(self.event_times, s, side="right") - 1
        k = np.clip(k, 0, len(self.event_times) - 1)
        theta = self.thresholds[k]
        # β = θ_k + (β* − θ_k)(1 − e^{−r Δs}), written with expm1 so that β is
        # exactly θ_k at the event itself (and at s = 0) and accurate just after it.
        return theta - (self.beta_star - theta) * np.expm1(-self.rates[k] * (s - self.event_times[k]))

    def truncated(self, s: Any) -> np.ndarray:
        """n(β(s)) on the segment that starts at or contains ``s`` (right-continuous).

        Between events this is the count of the state (H(0) = 0).  At a truncation
        event it includes the point just reached; at a release event it excludes
        the point just released, which sits exactly on the boundary.
        """
        s = np.asarray(s, dtype=np.float64)
        k = np.clip(np.searchsorted(self.event_times, s, side="right") - 1, 0, len(self.event_times) - 1)
        return self.counts[k]


def solve_bias_component(z: Any, beta0: float, beta_star: float, N: int) -> BiasComponentSolution:
    """Event-driven solution of ``∂_s β = −(n(β)/N)(β − β*)``, ``n(β) = #{k : z_k + β ≤ 0}``.

    See the module docstring for the formulas [4.44–4.50] and the conventions at
    the boundary (H(0) = 0; the increasing flow stops at the release of the last
    truncated point).  ``z`` may contain ties and duplicates; ``N`` is the total
    number of points of the problem (it sets the time scale, rate n/N).
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    beta0 = float(beta0)
    beta_star = float(beta_star)
    u, mult = np.unique(z, return_counts=True)  # distinct values, increasing
    n0 = int(np.count_nonzero(z + beta0 <= 0.0))  # same test as the kernels: H(z + β)
    fixed = BiasComponentSolution(
        beta_star, np.zeros(1), np.array([beta0]), np.array([n0]), np.zeros(1), 0
    )
    if n0 == 0 or beta0 == beta_star:
        return fixed
    # Groups truncated at the start: u ≤ −β0 (use the same predicate as n0).
    trunc = u + beta0 <= 0.0
    g0 = int(np.count_nonzero(trunc))  # they are the g0 smallest values
    if beta0 > beta_star:
        # Decreasing: the next groups u[g0], u[g0+1], ... are truncated at β = −u,
        # reachable iff −u > β*  (−u decreases along the list: a prefix).
        theta = -u[g0:]
        m = mult[g0:]
        reach = int(np.count_nonzero(theta > beta_star))
        theta, m = theta[:reach], m[:reach]
        counts = n0 + np.concatenate(([0], np.cumsum(m)))
    else:
        # Increasing: truncated groups are released from the largest u down, at
        # β = −u, reachable iff −u < β* (−u increases along the list: a prefix).
        theta = -u[:g0][::-1]
        m = mult[:g0][::-1]
        reach = int(np.count_nonzero(theta < beta_star))
        theta, m = theta[:reach], m[:reach]
        # counts[-1] == 0 when the last truncated point is released: the flow stops there.
        counts = n0 - np.concatenate(([0], np.cumsum(m)))
    thresholds = np.concatenate(([beta0], theta))
    rates = counts.astype(np.float64) / N
    # Durations of segments 0..reach−1: (N/n) ln((θ_k − β*)/(θ_{k+1} − β*)) [4.49], as
    # log1p((θ_k − θ_{k+1})/(θ_{k+1} − β*)) so that close thresholds lose no digits.  The
    # argument is ≥ 0 in both directions, and exactly 0 for a start on a boundary.
    durations = np.log1p((thresholds[:-1] - thresholds[1:]) / (thresholds[1:] - beta_star)) / rates[:-1]
    durations = np.maximum(durations, 0.0)  # rounding of a zero-length segment
    event_times = np.concatenate(([0.0], np.cumsum(durations)))
    direction = -1 if beta0 > beta_star else 1
    return BiasComponentSolution(beta_star, event_times, thresholds, counts.astype(np.int64), rates, direction)


def _prepare(R, b, X, labels, targets, check_separation: bool, backend: str):
    """The validated problem (``problem.Euclid``), with L == Q, non-empty clusters and, if asked, separation."""
    p = euclid_args(R, b, X, labels, targets, backend)
    L = p.R.shape[0]
    Q = p.targets.shape[0]
    if L != Q:
        raise _separated.SeparationShapeError(
            f"targets: exact_bias_flow solves the separated flow, which needs one layer per cluster"
            f" (L == Q), got L = {L} layers and Q = {Q} clusters"
        )
    if check_separation:
        _separated.check_separation(p.bk, p.R, p.b, p.X, p.labels, Q)
    return p


def exact_bias_events(R: Any, b: Any, X: Any, labels: Any, targets: Any, *,
                      check_separation: bool = False, backend: str = "auto") -> list[list[BiasComponentSolution]]:
    """The event structure of the exact bias flow: ``out[j][i]`` solves layer j, direction i.

    Same arguments as :func:`exact_bias_flow`; each entry is a
    :class:`BiasComponentSolution` (event times, thresholds, truncated counts,
    rates), callable at any times.
    """
    p = _prepare(R, b, X, labels, targets, _flag("check_separation", check_separation), backend)
    return _events(p)


def _events(p) -> list[list[BiasComponentSolution]]:
    """:func:`exact_bias_events` of a prepared problem."""
    R, b, targets = p.R, p.b, p.targets
    N = p.X.shape[0]
    L, M, _ = R.shape
    rows = [p.bk.rows_of(p.X, p.labels, j) for j in range(L)]  # one cluster in memory at a time would do too
    _separated.check_nonempty(np.array([r.shape[0] for r in rows]))
    out = []
    for j in range(L):
        V = rows[j] @ R[j].T  # v = R_j x for the points of cluster j
        beta_star = -(R[j] @ targets[j])  # β* = −ỹ' = −R_j ỹ_j
        out.append([solve_bias_component(V[:, i], b[j, i], beta_star[i], N) for i in range(M)])
    return out


def exact_bias_flow(R: Any, b: Any, X: Any, labels: Any, targets: Any, times: Any, *,
                    check_separation: bool = False, backend: str = "auto") -> np.ndarray:
    """Exact solution of the separated bias flow at fixed R (docs/theory.md §7, paper [4.38–4.50]).

    Solves ``∂_s b_j = −π_j (1 − m0) ⊙ (b_j + R_j ỹ_j)`` [3.39] with R frozen,
    component by component: for layer j, direction i, with z_k = (R_j x_{j,k})_i,
    β* = −(R_j ỹ_j)_i and n = #{k : z_k + β ≤ 0} (H(0) = 0),

        β(s) = β* + (β(s_n) − β*) e^{−(n/N)(s − s_n)}   between events,
        s_{n+1} = s_n + (N/n) ln((β(s_n) − β*)/(−z_{n+1} − β*)),

    N the total number of points.  β above β* decreases and truncates points one
    distinct value at a time; β below β* increases and releases them, and stops
    for good at the release of the last truncated point (β = −min z; see the
    module docstring for why).  β = β* or no truncated point: fixed point.

    Parameters
    ----------
    R : (L, M, M) orthogonal;  b : (L, M) initial biases;  X : (N, M);
    labels : (N,) in 0..Q−1;  targets : (Q, M) ỹ_j.  Needs L == Q (layer j ↔ cluster j).
    times : 1-D array of finite, non-negative times, in any order.
    check_separation : also verify the separation assumption of docs/theory.md §6 at the
        initial state and at every requested time (raises :class:`SeparationError`
        naming the first time at which it fails).  The separated equation is
        solved either way; it is the biases-only flow of C_E only while
        separation holds (between the sampled times it is not checked).

    Returns
    -------
    (len(times), L, M) float64: b(s) at each requested time, in the given order.
    """
    t = np.asarray(times)
    if t.dtype.kind not in "fiu":
        raise InputError(f"times: expected a real numeric array, got dtype {t.dtype}")
    if t.ndim != 1:
        raise InputError(f"times: expected a 1-D array of times, got shape {t.shape}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)):
        k = int(np.flatnonzero(~np.isfinite(t))[0])
        raise InputError(f"times: contains {float(t[k])!r} at index {k}; all times must be finite")
    if np.any(t < 0):
        k = int(np.flatnonzero(t < 0)[0])
        raise InputError(f"times: contains the negative time {float(t[k])!r} at index {k}; times must be ≥ 0")
    check_separation = _flag("check_separation", check_separation)
    p = _prepare(R, b, X, labels, targets, check_separation, backend)
    with np.errstate(all="ignore"):  # an overflow is reported below, not as RuntimeWarnings
        sols = _events(p)
        L, M = len(sols), len(sols[0])
        out = np.empty((t.shape[0], L, M))
        for j in range(L):
            for i in range(M):
                out[:, j, i] = sols[j][i](t)
    check_results_finite("exact_bias_flow", [out], dict(X=p.X, b=p.b, targets=p.targets), p.X.shape[0], M)
    if check_separation:
        for q in np.argsort(t, kind="stable"):
            try:
                _separated.check_separation(p.bk, p.R, out[q], p.X, p.labels, L)
            except SeparationError as exc:
                raise SeparationError(f"at time s = {float(t[q]):g} (times[{q}]): {exc}", exc.violations) from None
    return out


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)
