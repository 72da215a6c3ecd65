"""Output-layer flows of the standard loss (docs/theory.md §8, paper sections 8–9).

* [8.6–8.7] against the engine: with collapsed clusters and frozen rotations,
  ``tf.standard_gradient`` moves W^(L+1) and the collapse points exactly as the
  paper's matrix ODE says.
* The conservation law K = WᵀW − XXᵀ [8.21] holds to the integrator's order
  (error ∝ dt^p, p measured by a log–log fit over dt = 2⁻ᵏ).
* The loss stays below C(0) e^{−2 λ π_min s} [8.27] when K is definite.
* The explicit solution [9.10] equals the stepped flow (Euler exactly in its
  discrete form, RK4 at fourth order), including singular A.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import expm

import truncfast as tf


def _slope(dts, errs) -> float:
    """Least-squares slope of log(err) against log(dt) (diffrax test_ode_order)."""
    return float(np.polyfit(np.log(dts), np.log(errs), 1)[0])


def _collapsed_problem(rng, M=3, scale_W=2.0):
    """Square (P = Q = M) problem with K = WᵀW − XXᵀ positive definite."""
    W = scale_W * np.eye(M) + 0.3 * rng.standard_normal((M, M))
    Xc = 0.5 * rng.standard_normal((M, M))
    Y = rng.standard_normal((M, M)) * 2.0
    pi = rng.uniform(0.5, 1.5, M)
    pi /= pi.sum()
    return W, Xc, Y, pi


# ----------------------------------------------------------------- section 8 ---

def test_collapsed_rhs_matches_engine_gradient():
    """Fully truncated (collapsed) clusters, R frozen: the engine's flow of W^(L+1) and
    of the collapse points x_j = −R_jᵀ b_j is [8.6–8.7] with π_j = N_j/N, b^(L+1) = 0."""
    rng = np.random.default_rng(1)
    n1, n2 = 7, 13
    X = np.vstack([0.1 * rng.standard_normal((n1, 2)), [10, 10] + 0.1 * rng.standard_normal((n2, 2))])
    labels = np.repeat([0, 1], [n1, n2])
    R = np.stack([np.eye(2), -np.eye(2)])
    b = np.array([[-1.0, -1.5], [9.0, 8.5]])  # cluster j fully truncated by layer j, untouched by the other
    codes = tf.sector_codes(R, b, X)
    assert (codes[labels == 0, 0] == 0).all() and (codes[labels == 1, 1] == 0).all()
    assert (codes[labels == 0, 1] == 3).all() and (codes[labels == 1, 0] == 3).all()
    W_out = rng.standard_normal((2, 2)) + 2 * np.eye(2)
    Y = rng.standard_normal((2, 2))
    grad_b, _, gW, gbo = tf.standard_gradient(R, b, X, labels, W_out, np.zeros(2), Y)

    Xc = -np.einsum("jki,jk->ji", R, b)  # x_j = −R_jᵀ b_j
    np.testing.assert_allclose(tf.truncate(R, b, X), Xc[labels], atol=1e-14)
    pi = np.array([n1, n2]) / (n1 + n2)
    dW, dX = tf.collapsed_output_rhs(W_out, Xc, Y, pi)
    np.testing.assert_allclose(-gW, dW, rtol=1e-12, atol=1e-13)
    # ∂_s x_j = −R_jᵀ ∂_s b_j = R_jᵀ grad_b_j  (rotations frozen)
    np.testing.assert_allclose(np.einsum("jki,jk->ji", R, grad_b), dX, rtol=1e-12, atol=1e-13)
    assert tf.collapsed_output_loss(W_out, Xc, Y, pi) == pytest.approx(
        tf.standard_loss(R, b, X, labels, W_out, np.zeros(2), Y), rel=1e-12)


@pytest.mark.parametrize("method, order, dts", [
    ("euler", 1, [2.0 ** -k for k in range(4, 9)]),
    ("rk4", 4, [2.0 ** -k for k in range(2, 6)]),
])
def test_conserved_gram_to_integrator_order(method, order, dts):
    """|K(T) − K(0)| ∝ dt^p [8.21]: the flow conserves K, the scheme only to its order."""
    rng = np.random.default_rng(2)
    W, Xc, Y, pi = _collapsed_problem(rng, M=3, scale_W=1.0)
    K0 = tf.conserved_gram(W, Xc)
    T = 2.0
    errs = []
    for dt in dts:
        out = tf.collapsed_output_flow(W, Xc, Y, pi, dt=dt, steps=int(round(T / dt)), method=method,
                                       record_every=10**9)
        assert out.times[-1] == pytest.approx(T)
        errs.append(np.abs(tf.conserved_gram(out.W[-1], out.Xc[-1]) - K0).max())
    p = _slope(dts, errs)
    assert abs(p - order) < 0.3, (p, errs)
    assert errs[-1] < (1e-2 if order == 1 else 1e-6)


@pytest.mark.parametrize("sign", [+1, -1])
def test_loss_below_spectral_gap_bound(sign):
    """C(s) ≤ C(0) e^{−2 λ π_min s} when K ≥ λ > 0 or K ≤ −λ < 0 [8.27]."""
    rng = np.random.default_rng(3)
    W, Xc, Y, pi = _collapsed_problem(rng, M=3, scale_W=2.0)
    if sign < 0:
        W, Xc = Xc.T.copy(), W.T.copy()  # swaps WᵀW and XXᵀ: K → −K
    lam, _ = tf.spectral_gap_bound(W, Xc, Y, pi, [0.0])
    ev = np.linalg.eigvalsh(tf.conserved_gram(W, Xc))
    assert lam > 0.1 and lam == pytest.approx(ev[0] if sign > 0 else -ev[-1])
    out = tf.collapsed_output_flow(W, Xc, Y, pi, dt=0.01, steps=1500, method="rk4", record_every=10)
    _, bound = tf.spectral_gap_bound(W, Xc, Y, pi, out.times)
    assert out.loss[0] == pytest.approx(bound[0], rel=1e-14)
    assert np.all(out.loss <= bound * (1 + 1e-9) + 1e-300)
    assert out.loss[-1] < 1e-3 * out.loss[0]  # the bound is not vacuous here: real decay
    assert np.all(np.diff(out.loss) <= 1e-15)  # gradient flow: monotone
    # W and X stay bounded and converge [8.28–8.29]
    assert np.abs(out.W[-1] - out.W[-11]).max() < 1e-4 and np.abs(out.Xc[-1] - out.Xc[-11]).max() < 1e-4
    assert np.abs(out.W).max() < 10 * np.abs(W).max() + 10


def test_conservation_for_any_shapes_and_weights():
    """K = WᵀW − XXᵀ is conserved for P ≠ Q ≠ M and any weights π ≥ 0 [8.21]."""
    rng = np.random.default_rng(7)
    P, Q, M = 2, 3, 4
    W, Xc, Y = rng.standard_normal((P, M)), rng.standard_normal((Q, M)), rng.standard_normal((Q, P))
    pi = np.array([0.7, 0.0, 2.0])
    out = tf.collapsed_output_flow(W, Xc, Y, pi, dt=0.002, steps=1500, method="rk4", record_every=500)
    K0 = tf.conserved_gram(W, Xc)
    for Wk, Xk in zip(out.W, out.Xc):
        assert np.abs(tf.conserved_gram(Wk, Xk) - K0).max() < 1e-8
    assert out.loss[-1] < out.loss[0]
    np.testing.assert_array_equal(out.Xc[-1][1], Xc[1])  # π_1 = 0: that collapse point never moves


def test_spectral_gap_indefinite_and_shape_errors():
    W = np.diag([2.0, 0.1])
    Xc = np.diag([1.0, 1.0])  # K = diag(3, −0.99): indefinite
    lam, bound = tf.spectral_gap_bound(W, Xc, np.eye(2), [0.5, 0.5], [0.0, 1.0])
    assert lam == 0.0 and bound[0] == bound[1]
    with pytest.raises(tf.InputError, match="P = Q = M"):
        tf.spectral_gap_bound(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 2)), [0.5, 0.5], [0.0])
    with pytest.raises(tf.InputError, match="method"):
        tf.collapsed_output_flow(W, Xc, np.eye(2), [0.5, 0.5], dt=0.1, steps=1, method="heun")
    with pytest.raises(tf.InputError, match="pi"):
        tf.collapsed_output_loss(W, Xc, np.eye(2), [0.5, -0.5])


# ----------------------------------------------------------------- section 9 ---

def _positive_problem(rng, N=40, M=3, P=2, Q=3, degenerate=False):
    X = rng.standard_normal((N, M)) + 1.0
    if degenerate:
        X[:, -1] = 0.0  # A = (1/N) Σ x̂x̂ᵀ singular: e_M ∈ ker A
    labels = np.arange(N) % Q
    Y = rng.standard_normal((Q, P))
    W = rng.standard_normal((P, M))
    b_out = rng.standard_normal(P)
    return W, b_out, X, labels, Y


@pytest.mark.parametrize("degenerate", [False, True])
def test_positive_sector_solution_equals_stepped_flow(degenerate):
    """[9.10]: Ŵ* + (Ŵ(0) − Ŵ*) e^{−sA} is the flow [9.7] (RK4 to 1e-10, Euler exactly
    in its discrete form Ŵ* + (Ŵ(0) − Ŵ*)(I − dt A)^k)."""
    rng = np.random.default_rng(4)
    W, b_out, X, labels, Y = _positive_problem(rng, degenerate=degenerate)
    dt, steps = 0.005, 600
    flow = tf.positive_sector_output_flow(W, b_out, X, labels, Y, dt=dt, steps=steps, method="rk4",
                                          record_every=60)
    sol = tf.positive_sector_output_solution(W, b_out, X, labels, Y, flow.times)
    np.testing.assert_allclose(flow.W, sol.W, atol=1e-10)
    np.testing.assert_allclose(flow.b, sol.b, atol=1e-10)
    np.testing.assert_allclose(flow.loss, sol.loss, rtol=1e-9)

    eul = tf.positive_sector_output_flow(W, b_out, X, labels, Y, dt=dt, steps=steps, method="euler",
                                         record_every=steps)
    Xh = np.hstack([X, np.ones((len(X), 1))])
    A = Xh.T @ Xh / len(X)
    W_star = sol.settings["W_star"]
    discrete = W_star + (np.hstack([W, b_out[:, None]]) - W_star) @ np.linalg.matrix_power(np.eye(4) - dt * A, steps)
    np.testing.assert_allclose(np.hstack([eul.W[-1], eul.b[-1][:, None]]), discrete, atol=1e-11)
    # and against scipy's expm of the same generator
    expl = W_star + (np.hstack([W, b_out[:, None]]) - W_star) @ expm(-flow.times[-1] * A)
    np.testing.assert_allclose(np.hstack([sol.W[-1], sol.b[-1][:, None]]), expl, atol=1e-11)
    if degenerate:
        assert sol.settings["rank_A"] == 3
        # the ker A part of Ŵ(0) stays put: column M of W never moves
        np.testing.assert_allclose(sol.W[:, :, -1], np.broadcast_to(W[:, -1], sol.W[:, :, -1].shape), atol=1e-12)


def test_positive_sector_limit_is_least_squares():
    """Ŵ(∞) = B A⁺ minimises C_std: the limit is the least-squares fit (normal equations)."""
    rng = np.random.default_rng(5)
    W, b_out, X, labels, Y = _positive_problem(rng)
    sol = tf.positive_sector_output_solution(W, b_out, X, labels, Y, [0.0, 1e4])
    Xh = np.hstack([X, np.ones((len(X), 1))])
    lsq = np.linalg.lstsq(Xh, Y[labels], rcond=None)[0].T
    np.testing.assert_allclose(np.hstack([sol.W[-1], sol.b[-1][:, None]]), lsq, atol=1e-9)
    assert sol.loss[-1] < sol.loss[0]


def test_positive_sector_rhs_matches_engine():
    """All points untruncated (b large): the engine's output-layer gradient is Ŵ A − B [9.7]."""
    rng = np.random.default_rng(6)
    W, b_out, X, labels, Y = _positive_problem(rng, M=3, Q=3, P=2)
    L = 2
    R = np.stack([np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(L)])
    b = np.full((L, 3), 50.0)
    assert (tf.sector_codes(R, b, X) == 7).all()
    _, _, gW, gbo = tf.standard_gradient(R, b, X, labels, W, b_out, Y)
    Xh = np.hstack([X, np.ones((len(X), 1))])
    A, B = Xh.T @ Xh / len(X), Y[labels].T @ Xh / len(X)
    G = np.hstack([W, b_out[:, None]]) @ A - B
    np.testing.assert_allclose(np.hstack([gW, gbo[:, None]]), G, rtol=1e-12, atol=1e-12)
