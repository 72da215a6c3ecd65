"""The joint flow of the standard loss in (R, b, W_out, b_out) (docs/theory.md §12), against its oracles.

1. All points untruncated at every layer: the hidden right-hand side vanishes and
   (W_out, b_out) follow the explicit positive-sector solution of §8
   (``tf.positive_sector_output_solution``).
2. Fully collapsed, separated clusters with R frozen: the collapse points
   x_j = −R_jᵀ b_j and W_out follow the collapsed flow of §8, so
   K = WᵀW − XXᵀ (``tf.conserved_gram``) stays constant to the integrator's
   accuracy; the trajectory also matches an RK4 of [8.6–8.7] (with b_out) written here.
3. One Lie–Euler step = one step of PyTorch gradient descent on C_std in
   (R, b, W_out, b_out) with the exponential retraction for R, to rounding.

Plus: frozen parts bitwise, the identity output layer reproduces the Euclidean
flow, backends (dask included) agree, checkpoints resume bitwise, bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from truncfast._integrate import adaptive as _adaptive
from conftest import separated_problem


def _untruncated_problem(seed=1):
    rng = np.random.default_rng(seed)
    n = 40
    X = np.concatenate([(3.0, 1.0) + 0.3 * rng.standard_normal((n, 2)), (1.0, 4.0) + 0.3 * rng.standard_normal((n, 2))])
    labels = np.repeat([0, 1], n)
    th = 0.3
    Rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    R = np.stack([np.eye(2), Rot])
    b = np.full((2, 2), 20.0)  # every pre-activation ≥ 20 − |x|·... > 0: nothing is truncated
    W_out = rng.standard_normal((3, 2))
    b_out = rng.standard_normal(3)
    Y = rng.standard_normal((2, 3))
    return R, b, X, labels, W_out, b_out, Y


def test_untruncated_points_follow_the_positive_sector_solution():
    R, b, X, labels, W_out, b_out, Y = _untruncated_problem()
    times = [0.25, 0.5, 1.0, 2.0, 4.0]
    tr = tf.integrate_standard(R, b, X, labels, W_out, b_out, Y, dt=0.01, t1=4.0, rtol=1e-10, saveat=times)
    assert (tr.counts[..., 0] == 40).all()  # untruncated everywhere, all along
    exact = tf.positive_sector_output_solution(W_out, b_out, X, labels, Y, [0.0] + times)
    scale = np.abs(exact.W).max()
    np.testing.assert_allclose(tr.W_outs, exact.W, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(tr.b_outs, exact.b, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(tr.loss, exact.loss, rtol=1e-8)
    # the hidden right-hand side is zero: R and b do not move
    assert np.array_equal(tr.b, b) and np.abs(tr.R - R).max() == 0.0
    assert np.all(tr.grad_b_norm == 0.0) and np.all(tr.omega_norm == 0.0)
    # a fixed-step run converges to the same solution at its order
    errs = []
    for dt in (0.02, 0.01):
        fx = tf.integrate_standard(R, b, X, labels, W_out, b_out, Y, dt=dt, t1=4.0, method="heun", saveat=times)
        errs.append(np.abs(fx.W_outs - exact.W).max())
    assert 3.0 < errs[0] / errs[1] < 5.0  # order 2


def _collapsed_problem():
    """L = Q = 3 separated clusters, each fully truncated at its own layer (apex pushed past it)."""
    rng = np.random.default_rng(7)
    p = separated_problem(rng, 3, 3, n_per=20, spread=0.1, scale=30.0)
    b = p.b - 3.0  # R_j x + b_j ≈ −3 on cluster j: fully truncated; other clusters keep a margin of ~7
    W_out = np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    b_out = 0.1 * rng.standard_normal(3)
    # outputs that pull the collapse points further out of their clusters (they stay fully truncated)
    Xc0 = -np.einsum("jik,jk->ji", p.R, b)  # x_j = −R_jᵀ b_j
    Y = (Xc0 + 1.0 * np.einsum("jik,i->jk", p.R, np.ones(3))) @ W_out.T + b_out
    return p.R, b, p.X, p.labels, W_out, b_out, Y


def _collapse_points(R, bs):
    return -np.einsum("...jik,...ji->...jk", R, bs)


def _rk4_collapsed_with_bias(W, c, Xc, Y, pi, T, n):
    """[8.6–8.7] with the output bias c trained too: E_j = W x_j + c − y_j,
    ∂W = −Σ π_j E_j x_jᵀ, ∂c = −Σ π_j E_j, ∂x_j = −π_j Wᵀ E_j (rows are points)."""
    def f(W, c, Xc):
        E = Xc @ W.T + c - Y
        return -(E * pi[:, None]).T @ Xc, -(E * pi[:, None]).sum(axis=0), -(E @ W) * pi[:, None]

    h = T / n
    for _ in range(n):
        k1 = f(W, c, Xc)
        k2 = f(*(a + 0.5 * h * k for a, k in zip((W, c, Xc), k1)))
        k3 = f(*(a + 0.5 * h * k for a, k in zip((W, c, Xc), k2)))
        k4 = f(*(a + h * k for a, k in zip((W, c, Xc), k3)))
        W, c, Xc = (a + h / 6 * (p1 + 2 * p2 + 2 * p3 + p4) for a, p1, p2, p3, p4 in zip((W, c, Xc), k1, k2, k3, k4))
    return W, c, Xc


def test_collapsed_clusters_conserve_the_gram_matrix():
    R, b, X, labels, W_out, b_out, Y = _collapsed_problem()
    T = 2.0
    times = [0.5, 1.0, 1.5, 2.0]
    drifts = []
    for rtol in (1e-5, 1e-9):
        tr = tf.integrate_standard(R, b, X, labels, W_out, b_out, Y, dt=0.01, t1=T, rtol=rtol, saveat=times,
                                   train_weights=False)
        for j in range(3):  # the oracle's assumption holds all along: cluster j fully truncated at layer j,
            assert (tr.counts[:, j, j, 2] == 20).all()  # untouched by the other layers
            assert all((tr.counts[:, l, j, 0] == 20).all() for l in range(3) if l != j)
        Xc = _collapse_points(R, tr.bs)
        K = np.array([tf.conserved_gram(W, x) for W, x in zip(tr.W_outs, Xc)])
        drifts.append(np.abs(K - K[0]).max() / np.abs(K[0]).max())
        assert np.abs(tr.W_outs[-1] - W_out).max() > 0.05  # the flow does move
    assert drifts[1] < 1e-8, drifts
    assert drifts[1] < drifts[0] / 100, drifts
    # the trajectory itself: the collapsed flow of [8.6–8.7] with the output bias
    pi = np.bincount(labels) / len(labels)
    Wr, cr, Xr = _rk4_collapsed_with_bias(W_out, b_out, _collapse_points(R, b), Y, pi, T, 4000)
    for got, want in ((tr.W_out, Wr), (tr.b_out, cr), (_collapse_points(R, tr.b), Xr)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7 * np.abs(want).max())


def test_one_lie_euler_step_is_one_torch_gradient_step():
    torch = pytest.importorskip("torch")

    rng = np.random.default_rng(11)
    M, L, Q, P, N = 3, 2, 2, 2, 30
    R = np.stack([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(L)])
    b = 0.5 * rng.standard_normal((L, M))
    X = rng.standard_normal((N, M))
    labels = rng.integers(0, Q, N)
    W_out, b_out, Y = rng.standard_normal((P, M)), rng.standard_normal(P), rng.standard_normal((Q, P))
    h = 0.05
    codes = tf.sector_codes(R, b, X)
    assert len(np.unique(codes)) > 3  # a mix of sectors

    Rt = torch.tensor(R, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    Wt = torch.tensor(W_out, requires_grad=True)
    ct = torch.tensor(b_out, requires_grad=True)
    Xt = torch.tensor(X)
    Yt = torch.tensor(Y)[torch.tensor(labels)]

    # C_std through the cumulative network: z = τ^(L)(x) (the forward of truncfast.backprop.cumulative_loss),
    # then the output layer W z + c; autograd in all four parameters
    z = Xt
    for l in range(L):
        u = z @ Rt[l].T + bt[l]
        z = (torch.relu(u) - bt[l]) @ Rt[l]
    loss = (((z @ Wt.T + ct) - Yt) ** 2).sum() / (2 * N)
    loss.backward()
    with torch.no_grad():
        G = Rt.grad @ Rt.transpose(1, 2)
        omega = 0.5 * (G - G.transpose(1, 2))
        R1 = (torch.linalg.matrix_exp(-h * omega) @ Rt).numpy()
        b1 = (bt - h * bt.grad).numpy()
        W1 = (Wt - h * Wt.grad).numpy()
        c1 = (ct - h * ct.grad).numpy()

    tr = tf.integrate_standard(R, b, X, labels, W_out, b_out, Y, dt=h, steps=1, method="lie-euler", backend="numpy")
    assert loss.item() == pytest.approx(tr.loss[0], rel=1e-14)
    np.testing.assert_allclose(tr.R, R1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(tr.b, b1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(tr.W_out, W1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(tr.b_out, c1, rtol=0, atol=1e-14)


# ------------------------------------------------------------ plumbing ---

@pytest.fixture(scope="module")
def paper():
    from truncfast import data

    return data.make_problem("paper-2d", output="random")


def _std_args(p):
    return p.R0, p.b0, p.X, p.labels, p.W_out, p.b_out, p.Y


@pytest.mark.parametrize("flag", ["train_output", "train_weights", "train_biases"])
def test_frozen_parts_stay_bitwise(paper, flag):
    tr = tf.integrate_standard(*_std_args(paper), dt=0.005, steps=20, method="bs3", **{flag: False})
    part = {"train_output": ("W_outs", paper.W_out), "train_weights": ("Rs", paper.R0),
            "train_biases": ("bs", paper.b0)}[flag]
    assert all(np.array_equal(x, part[1]) for x in getattr(tr, part[0]))
    if flag == "train_output":
        assert np.array_equal(tr.b_out, paper.b_out)
    moved = [name for name in ("Rs", "bs", "W_outs") if name != part[0]]
    assert all(not np.array_equal(getattr(tr, n)[-1], getattr(tr, n)[0]) for n in moved)


def test_identity_output_layer_gives_the_euclidean_flow():
    from truncfast import data

    p = data.make_problem("paper-2d")  # W_out = I, b_out = 0, Y = targets
    for method in ("lie-euler", "bs3"):
        std = tf.integrate_standard(*_std_args(p), dt=0.01, steps=50, method=method, train_output=False,
                                    record_every=10)
        euc = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.01, steps=50, method=method, record_every=10)
        np.testing.assert_allclose(std.loss, euc.loss, rtol=1e-13)
        np.testing.assert_allclose(std.bs, euc.bs, rtol=0, atol=1e-13)
        np.testing.assert_allclose(std.Rs, euc.Rs, rtol=0, atol=1e-13)


def test_backends_agree(paper, backend):
    args = _std_args(paper)
    ref = tf.integrate_standard(*args, dt=0.005, steps=6, method="heun", backend="numpy")
    tr = tf.integrate_standard(*args, dt=0.005, steps=6, method="heun", backend=backend)
    for name in ("R", "b", "W_out", "b_out", "loss"):
        x, y = getattr(ref, name), getattr(tr, name)
        np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12 * np.abs(x).max())


def test_adaptive_standard_run_resumes_bitwise(monkeypatch, paper, tmp_path):
    args = _std_args(paper)
    kw = dict(dt=0.01, t1=0.5, rtol=1e-6, saveat=[0.1, 0.2])
    full = tf.integrate_standard(*args, **kw)
    ck = tmp_path / "std.npz"

    def stop(k):
        if k == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(_adaptive, "_after_step", stop)
    with pytest.raises(KeyboardInterrupt):
        tf.integrate_standard(*args, checkpoint=ck, **kw)
    monkeypatch.setattr(_adaptive, "_after_step", None)
    res = tf.resume(ck, paper.X, paper.labels, paper.Y)
    for name in ("R", "b", "W_out", "b_out", "W_outs", "b_outs", "bs", "times", "loss"):
        assert np.array_equal(getattr(full, name), getattr(res, name)), name
    assert res.settings["loss"] == "standard"
    with pytest.raises(tf.InputError, match="^X:"):  # the checkpoint's digest covers Y
        tf.resume(ck, paper.X, paper.labels, paper.Y + 1.0)


def test_loss_is_the_standard_loss(paper):
    tr = tf.integrate_standard(*_std_args(paper), dt=0.005, steps=4, method="cayley", record_every=2)
    for k in range(len(tr.steps)):
        assert tr.loss[k] == pytest.approx(
            tf.standard_loss(tr.Rs[k], tr.bs[k], paper.X, paper.labels, tr.W_outs[k], tr.b_outs[k], paper.Y),
            rel=1e-13)


@pytest.mark.parametrize("kw, arg", [
    (dict(method="exp-euler"), "method"), (dict(form="separated"), "form"), (dict(train_output=1), "train_output"),
    (dict(steps=None), "steps"), (dict(rtol=1e-3, steps=None, t1=1.0, method="cayley"), "method"),
])
def test_bad_arguments(paper, kw, arg):
    kw = {"dt": 0.01, "steps": 2, **kw}
    with pytest.raises(tf.InputError) as ei:
        tf.integrate_standard(*_std_args(paper), **kw)
    assert str(ei.value).startswith(arg + ":"), str(ei.value)


def test_bad_output_layer_is_named(paper):
    with pytest.raises(tf.InputError, match="^W_out:"):
        tf.integrate_standard(paper.R0, paper.b0, paper.X, paper.labels, np.zeros((2, 3)), paper.b_out, paper.Y,
                              dt=0.01, steps=2)
