"""The exact bias flow at fixed R (docs/theory.md §7, paper [4.38–4.50]) as an oracle.

* ``tf.exact_bias_flow`` against an independent brute-force fine-step Euler
  integration of ∂_s β = −(n(β)/N)(β − β*) (both directions, ties, boundaries).
* Its event structure: rates n/N, truncation times [4.49], stop at the release
  of the last truncated point (H(0) = 0).
* Fixed-step integrators of the engine with frozen weights converge to it:
  Lie–Euler at first order (log–log slope over dt = 2⁻ᵏ, as diffrax's
  test_ode_order), exponential Euler exactly while no point changes sector.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import truncfast as tf
from truncfast._flow.exact import solve_bias_component


# ------------------------------------------------------------ brute force ---

@numba.njit(cache=False)
def _brute_euler(z, beta0, beta_star, N, times, dt):
    """Explicit Euler with a tiny step on ∂_s β = −(n(β)/N)(β − β*),
    n(β) = #{k : z_k + β ≤ 0}; written from the equation, no event logic."""
    out = np.empty(times.shape[0])
    beta = beta0
    s = 0.0
    for q in range(times.shape[0]):  # times sorted increasingly
        while s + 0.5 * dt < times[q]:
            n = 0
            for k in range(z.shape[0]):
                if z[k] + beta <= 0.0:
                    n += 1
            beta -= dt * (n / N) * (beta - beta_star)
            s += dt
        out[q] = beta
    return out


def _brute(z, beta0, beta_star, N, times, dt=2e-6):
    return _brute_euler(np.asarray(z, float), float(beta0), float(beta_star), float(N),
                        np.asarray(times, float), dt)


def _cluster_problem(rng, n=(12, 9), M=3, tie_digits=1):
    """L = Q clusters with rounded data (many ties) and frames ±I (exact: ties stay ties in R x)."""
    X = np.round(rng.standard_normal((sum(n), M)), tie_digits)
    labels = np.repeat(np.arange(len(n)), n)
    R = np.stack([np.eye(M)] + [-np.eye(M)] * (len(n) - 1))
    return X, labels, R


# ------------------------------------------------------------ the oracle ----

CASES = [
    # (beta0, beta_star) with z = the rounded sample below
    (1.0, -2.5),    # decreasing, truncates everything, then rate N_j/N
    (0.3, -0.6),    # decreasing, stops truncating: β* inside the data
    (-1.5, 2.5),    # increasing, releases everything: flow stops at −min z
    (-0.4, 0.45),   # increasing, releases some, converges to β*
    (-3.0, -1.0),   # increasing from fully truncated
    (0.7, 0.7),     # β = β*: fixed point
    (9.0, -1.0),    # no point truncated: fixed point
]


@pytest.mark.parametrize("beta0, beta_star", CASES)
def test_component_against_brute_force(beta0, beta_star):
    rng = np.random.default_rng(11)
    z = np.round(rng.standard_normal(25), 1)  # many ties
    z[:3] = -beta0  # three points exactly on the boundary at s = 0 (truncated: H(0) = 0)
    N = 40  # total number of points (other clusters only set the time scale)
    times = np.array([0.0, 0.05, 0.3, 0.9, 1.7, 3.0, 6.0])
    sol = solve_bias_component(z, beta0, beta_star, N)
    exact = sol(times)
    brute = _brute(z, beta0, beta_star, N, times)
    np.testing.assert_allclose(exact, brute, atol=2e-5)
    assert exact[0] == beta0
    # monotone towards β*, never crossing it
    d = np.diff(exact) * np.sign(beta_star - beta0)
    assert np.all(d >= -1e-15)
    assert np.all((exact - beta_star) * (beta0 - beta_star) >= 0)


def test_events_follow_the_papers_recursion():
    """s_{n+1} = s_n + (N/n) ln((β(s_n) − β*)/(−z_{n+1} − β*)) [4.49]; n jumps by the multiplicity of ties."""
    z = np.array([0.5, -0.2, 0.1, 0.1, 0.3, 2.0])
    beta0, beta_star, N = 0.15, -1.0, 10  # truncated at start: z ≤ −0.15 → {−0.2}
    sol = solve_bias_component(z, beta0, beta_star, N)
    # −z reachable above β* = −1: z = 0.1 (×2), 0.3, 0.5; z = 2.0 is never truncated
    np.testing.assert_array_equal(sol.thresholds, [0.15, -0.1, -0.3, -0.5])
    np.testing.assert_array_equal(sol.counts, [1, 3, 4, 5])
    s1 = (N / 1) * np.log((0.15 + 1) / (-0.1 + 1))
    s2 = s1 + (N / 3) * np.log((-0.1 + 1) / (-0.3 + 1))
    s3 = s2 + (N / 4) * np.log((-0.3 + 1) / (-0.5 + 1))
    np.testing.assert_allclose(sol.event_times, [0.0, s1, s2, s3], rtol=1e-14)
    np.testing.assert_allclose(sol(sol.event_times), sol.thresholds, rtol=0, atol=1e-15)
    # after the last event: rate 5/N towards β*
    s = s3 + 7.0
    assert sol(s) == pytest.approx(beta_star + (-0.5 - beta_star) * np.exp(-0.5 * 7.0), rel=1e-14)
    assert sol.stop_time == np.inf
    # the count reported is the count of the state (H(0) = 0 at the event itself)
    for k, s in enumerate(sol.event_times):
        beta = sol(s)
        assert np.count_nonzero(z + beta <= 0) == sol.truncated(s) == sol.counts[k]


def test_increasing_flow_stops_at_release_of_last_point():
    """β < β*: truncated points are released at β = −z; after the last release the
    right-hand side vanishes for every β above −min z, so β stops there for good."""
    z = np.array([-1.0, -0.5, -0.5, -1.0, -1.0, 3.0])
    N = 10
    sol = solve_bias_component(z, 0.0, 5.0, N)
    np.testing.assert_array_equal(sol.counts, [5, 3, 0])
    np.testing.assert_array_equal(sol.thresholds, [0.0, 0.5, 1.0])
    s1 = (N / 5) * np.log(5.0 / 4.5)
    s2 = s1 + (N / 3) * np.log(4.5 / 4.0)
    assert sol.stop_time == pytest.approx(s2, rel=1e-14)
    assert np.all(sol([s2, s2 + 1, 1e6]) == 1.0)
    brute = _brute(z, 0.0, 5.0, N, [s2 + 1.0], dt=1e-5)
    assert abs(brute[0] - 1.0) < 1e-5  # Euler overshoots by O(dt), then stops


def test_public_api_per_layer_and_component():
    """tf.exact_bias_flow: layer j ↔ cluster j, z = R_j x, β* = −R_j ỹ_j, N = all points,
    any order of times, duplicates allowed."""
    rng = np.random.default_rng(12)
    X, labels, R = _cluster_problem(rng)
    L, M = R.shape[0], R.shape[1]
    targets = rng.standard_normal((L, M)) * 2
    b = rng.standard_normal((L, M))
    times = np.array([2.0, 0.0, 0.7, 2.0, 5.0, 0.1])
    out = tf.exact_bias_flow(R, b, X, labels, targets, times)
    assert out.shape == (len(times), L, M) and out.dtype == np.float64
    np.testing.assert_array_equal(out[1], b)
    np.testing.assert_array_equal(out[0], out[3])
    order = np.argsort(times, kind="stable")
    for j in range(L):
        z = X[labels == j] @ R[j].T
        ystar = -(R[j] @ targets[j])
        for i in range(M):
            ref = _brute(z[:, i], b[j, i], ystar[i], len(X), times[order])
            np.testing.assert_allclose(out[order, j, i], ref, atol=2e-5)


def test_rate_is_the_derivative_of_the_separated_gradient():
    """Right after s = 0 (no event yet), ∂_s b equals −grad_b of the separated form [3.39]."""
    rng = np.random.default_rng(13)
    n = (30, 20)
    X = np.vstack([0.3 * rng.standard_normal((n[0], 2)), [10, 10] + 0.3 * rng.standard_normal((n[1], 2))])
    labels = np.repeat([0, 1], n)
    R = np.stack([np.eye(2), -np.eye(2)])
    b = np.array([[0.05, -0.02], [10.03, 9.96]])
    targets = np.array([[2.0, 2.0], [8.0, 8.0]])
    grad_b, _ = tf.gradient(R, b, X, labels, targets, form="separated")
    events = tf.exact_bias_events(R, b, X, labels, targets)
    h = 0.5 * min(e.event_times[1] for row in events for e in row if len(e.event_times) > 1)
    out = tf.exact_bias_flow(R, b, X, labels, targets, [0.0, h])
    rate = np.array([[e.rates[0] for e in row] for row in events])
    # the rate of the first segment is n/N, n the truncated count: −grad_b = −(n/N)(b + ỹ')
    np.testing.assert_allclose(rate * (b + np.einsum("jik,jk->ji", R, targets)), grad_b, rtol=1e-12, atol=1e-15)
    # before the first event the solution is the exponential b(h) − b(0) = −grad_b (1 − e^{−rh})/r
    safe = np.where(rate > 0, rate, 1.0)
    chord = np.where(rate > 0, -np.expm1(-rate * h) / safe, h)
    np.testing.assert_allclose(out[1] - out[0], -grad_b * chord, rtol=1e-12, atol=1e-15)
    assert (rate > 0).any()


def test_input_validation():
    rng = np.random.default_rng(14)
    X, labels, R = _cluster_problem(rng)
    targets = np.zeros((2, 3))
    b = np.zeros((2, 3))
    with pytest.raises(tf.InputError, match="times"):
        tf.exact_bias_flow(R, b, X, labels, targets, [0.0, -1.0])
    with pytest.raises(tf.InputError, match="times"):
        tf.exact_bias_flow(R, b, X, labels, targets, [0.0, np.nan])
    with pytest.raises(tf.InputError, match="times"):
        tf.exact_bias_flow(R, b, X, labels, targets, [[0.0]])
    with pytest.raises(tf.SeparationError, match="L == Q"):
        tf.exact_bias_flow(R, b, X, labels % 1, targets[:1], [0.0])
    with pytest.raises(tf.InputError, match="L == Q"):
        tf.exact_bias_flow(R[:1], b[:1], X, labels, targets, [0.0])
    with pytest.raises(tf.InputError, match="no points"):
        tf.exact_bias_flow(R, b, X, np.zeros_like(labels), targets, [0.0])
    assert tf.exact_bias_flow(R, b, X, labels, targets, np.zeros(0)).shape == (0, 2, 3)


# ------------------------------------------------ the engine's integrators ---

def _separated_two_clusters():
    """Two clusters (spread 0.5) at (0,0) and (10,10), frames R = (I, −I), biases chosen so
    that the four components cover: increasing with release of every point (the flow stops
    at s ≈ 9.75), decreasing with full truncation, and two more decreasing ones.  The
    truncations stay cluster-separated along the whole biases-only flow, so the general
    flow the engine integrates is the separated one solved exactly."""
    rng = np.random.default_rng(7)
    X = np.vstack([0.5 * rng.standard_normal((20, 2)), [10.0, 10.0] + 0.5 * rng.standard_normal((20, 2))])
    labels = np.repeat([0, 1], 20)
    R = np.stack([np.eye(2), -np.eye(2)])
    targets = np.array([[-3.0, 2.0], [8.0, 8.0]])
    b = np.array([[-0.3, 0.2], [10.2, 9.9]])
    return R, b, X, labels, targets


def test_lie_euler_with_frozen_weights_converges_at_first_order():
    """Lie–Euler (explicit Euler on b, R frozen) → the exact solution with error ∝ dt
    (log–log slope over dt = 2⁻ᵏ, diffrax test_ode_order style).  Events make the
    right-hand side discontinuous, so first order is the best a fixed step can do."""
    R, b, X, labels, targets = _separated_two_clusters()
    events = tf.exact_bias_events(R, b, X, labels, targets)
    assert events[0][0].direction == 1 and events[0][0].stop_time < 10.0  # the stop is inside the horizon
    assert {e.direction for row in events for e in row} == {-1, 1}
    T_end = 12.0
    times = np.linspace(0.0, T_end, 25)
    exact = tf.exact_bias_flow(R, b, X, labels, targets, times)
    dts = [2.0 ** -k for k in range(4, 11)]
    errs = []
    for dt in dts:
        traj = tf.integrate(R, b, X, labels, targets, dt=dt, steps=int(T_end / dt), method="lie-euler",
                            train_weights=False, record_every=int(0.5 / dt))
        np.testing.assert_allclose(traj.times, times, rtol=1e-14)
        assert (traj.Rs == R).all()
        errs.append(np.abs(traj.bs - exact).max())
    slope = float(np.polyfit(np.log(dts), np.log(errs), 1)[0])
    assert abs(slope - 1.0) < 0.2, (slope, errs)  # measured: 0.95
    assert errs[-1] < 1e-3


def test_exp_euler_exact_while_no_point_changes_sector():
    """The exponential Euler step b ← −ỹ' + e^{−h π (1 − m0)} ⊙ (b + ỹ') is the exact flow
    while no sector code changes: up to the first event, any step size reproduces
    the exact solution to rounding."""
    R, b, X, labels, targets = _separated_two_clusters()
    events = tf.exact_bias_events(R, b, X, labels, targets)
    first = min(e.event_times[1] for row in events for e in row if len(e.event_times) > 1)
    horizon = 0.95 * first
    times = np.linspace(0.0, horizon, 11)
    exact = tf.exact_bias_flow(R, b, X, labels, targets, times)
    for steps in (10, 40):
        traj = tf.integrate(R, b, X, labels, targets, dt=horizon / steps, steps=steps, method="exp-euler",
                            train_weights=False, record_every=steps // 10)
        np.testing.assert_allclose(traj.bs, exact, rtol=0, atol=1e-13)
    # and Lie–Euler with the same steps is not exact (the check has teeth)
    le = tf.integrate(R, b, X, labels, targets, dt=horizon / 10, steps=10, train_weights=False)
    assert np.abs(le.b - exact[-1]).max() > 1e-6


def test_exp_euler_exact_after_collapse():
    """Both clusters fully truncated from the start, no threshold left: b_j + R_j ỹ_j decays
    exactly as e^{−π_j s} [4.50]; exp-euler with a coarse step reproduces it."""
    R, b, X, labels, targets = _separated_two_clusters()
    b = np.array([[-2.5, -2.5], [7.5, 7.5]])  # R_j x + b_j < 0 for every point of cluster j
    assert (tf.sector_codes(R, b, X)[labels == 0, 0] == 0).all()
    assert (tf.sector_codes(R, b, X)[labels == 1, 1] == 0).all()
    targets = np.array([[2.0, 2.5], [7.0, 7.0]])
    times = np.linspace(0.0, 20.0, 21)
    exact = tf.exact_bias_flow(R, b, X, labels, targets, times)
    ystar = -np.einsum("jik,jk->ji", R, targets)
    np.testing.assert_allclose(exact, ystar + (b - ystar) * np.exp(-0.5 * times)[:, None, None], rtol=1e-13)
    traj = tf.integrate(R, b, X, labels, targets, dt=1.0, steps=20, method="exp-euler", train_weights=False)
    np.testing.assert_allclose(traj.bs, exact, rtol=0, atol=1e-13)


# ------------------------------------------------------------- properties ---

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(
    z=st.lists(st.integers(-6, 6), min_size=1, max_size=12),  # small integers: many ties
    beta0=st.integers(-8, 8),
    beta_star=st.integers(-8, 8),
    extra=st.integers(0, 5),
    s=st.floats(0.0, 30.0, allow_nan=False),
)
def test_solution_satisfies_the_equation(z, beta0, beta_star, extra, s):
    """At any time off the events, β solves ∂_s β = −(n(β)/N)(β − β*) with the count of
    the state itself (H(0) = 0), never crosses β*, and is monotone; integer data put
    points exactly on boundaries at the start and at every event."""
    z = np.asarray(z, dtype=float) / 2
    b0, bs = beta0 / 2, beta_star / 2
    N = len(z) + extra
    sol = solve_bias_component(z, b0, bs, N)
    beta = float(sol(s))
    assert (beta - bs) * (b0 - bs) >= 0 and abs(beta - bs) <= abs(b0 - bs)
    assert np.all(np.diff(sol.event_times) >= 0)
    # the count of the state at each event: truncation events (β decreasing) count the new
    # point at once (z + β = 0 is truncated); at a release event (β increasing) the released
    # point sits on the boundary, still counted, and the segment after it has counts[k]
    for k, t in enumerate(sol.event_times):
        n_state = np.count_nonzero(z + sol(t) <= 0)
        if sol.direction == 1 and k > 0:
            assert n_state == sol.counts[k - 1] or np.count_nonzero(z + sol(t) < 0) == sol.counts[k]
        else:
            assert n_state == sol.counts[k]
    # derivative off events: central difference of the closed form
    k = int(np.searchsorted(sol.event_times, s, side="right")) - 1
    h = 1e-6
    if s - h > sol.event_times[k] and (k + 1 == len(sol.event_times) or s + h < sol.event_times[k + 1]):
        deriv = (float(sol(s + h)) - float(sol(s - h))) / (2 * h)
        n = np.count_nonzero(z + beta <= 0)
        if sol.rates[k] == 0.0:
            assert deriv == 0.0
        else:
            assert n == sol.counts[k]
            assert deriv == pytest.approx(-(n / N) * (beta - bs), rel=1e-5, abs=1e-8)


def test_check_separation_samples_the_requested_times():
    """check_separation=True verifies docs/theory.md §6 at s = 0 and at every requested time."""
    R = np.stack([np.eye(2), -np.eye(2)])
    X = np.array([[0.0, 0.0], [0.2, -0.1], [10.0, 10.0], [9.8, 10.1]])
    labels = np.array([0, 0, 1, 1])
    b = np.array([[0.05, 0.05], [10.0, 10.0]])
    ok = np.array([[2.0, 2.0], [8.0, 8.0]])
    out = tf.exact_bias_flow(R, b, X, labels, ok, [0.0, 1.0, 50.0], check_separation=True)
    np.testing.assert_array_equal(out, tf.exact_bias_flow(R, b, X, labels, ok, [0.0, 1.0, 50.0]))
    # ỹ_1 far out: b_1 → −ỹ_1 = (−12, −12) and layer 1 starts truncating cluster 2 (at x ≈ 10)
    far = np.array([[12.0, 12.0], [8.0, 8.0]])
    tf.exact_bias_flow(R, b, X, labels, far, [0.0, 0.5], check_separation=True)
    with pytest.raises(tf.SeparationError, match="at time s = 60 "):
        tf.exact_bias_flow(R, b, X, labels, far, [0.0, 60.0, 0.5], check_separation=True)
