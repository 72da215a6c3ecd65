"""truncfast.unaligned (docs/theory.md §13): general invertible cumulative weights.

Oracles: PyTorch autograd of the same loss (the maps written with
``torch.linalg.solve``, W and b plain leaves), central differences, the aligned
engine at W = R (§§4–5), the D⁻² bias flow of §13 at W = D R, SciPy's polar
decomposition for the alignment defect, and the C core against Numba bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    AVAILABLE_BACKENDS,
    FD_EPS,
    assert_rel,
    make_problem,
    random_orthogonal,
)

import truncfast as tf
import truncfast.unaligned as tu
from truncfast import _config

LOCAL = [b for b in AVAILABLE_BACKENDS if b != "dask"]


def unaligned_problem(rng, N=40, M=3, L=2, Q=2, spread=0.6):
    """Random data and well-conditioned, clearly unaligned W = R + spread·G (cond ≲ 10)."""
    p = make_problem(rng, N=N, M=M, L=L, Q=Q)
    W = np.array([random_orthogonal(rng, M) + spread * rng.standard_normal((M, M)) / np.sqrt(M) for _ in range(L)])
    while np.max(tu.condition_numbers(W)) > 20:  # keep the oracles' own rounding small
        W = np.array([random_orthogonal(rng, M) + spread * rng.standard_normal((M, M)) / np.sqrt(M) for _ in range(L)])
    return W, p.b, p.X, p.labels, p.targets


def torch_loss_and_grads(W, b, X, labels, targets):
    torch = pytest.importorskip("torch")
    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    z = torch.tensor(X)
    for l in range(W.shape[0]):
        u = z @ Wt[l].T + bt[l]
        z = torch.linalg.solve(Wt[l], (torch.relu(u) - bt[l]).T).T  # τ_ℓ(z) = W⁻¹(σ(Wz + b) − b)
    T = torch.tensor(targets)[torch.tensor(labels)]
    loss = ((z - T) ** 2).sum() / (2 * X.shape[0])
    loss.backward()
    return float(loss.detach()), bt.grad.numpy(), Wt.grad.numpy()


# ------------------------------------------------------------- gradients ---

@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("N,M,L,Q", [(50, 3, 2, 2), (300, 5, 4, 3), (70, 8, 1, 2), (5000, 4, 3, 3)])
def test_gradient_matches_pytorch_autograd(rng, backend, N, M, L, Q):
    W, b, X, labels, T = unaligned_problem(rng, N, M, L, Q)
    loss, gb, gW = torch_loss_and_grads(W, b, X, labels, T)
    got_b, got_W = tu.gradient(W, b, X, labels, T, backend=backend)
    assert_rel(tu.loss(W, b, X, labels, T, backend=backend), loss, what="loss")
    assert_rel(got_b, gb, what="grad_b")
    assert_rel(got_W, gW, what="grad_W")
    assert np.abs(gW).max() > 1e-3 and np.abs(gb).max() > 1e-3  # a test that can fail


def test_gradient_matches_central_differences(rng):
    W, b, X, labels, T = unaligned_problem(rng, 60, 3, 3, 2)
    gb, gW = tu.gradient(W, b, X, labels, T, backend="numpy")
    f = lambda W_, b_: tu.loss(W_, b_, X, labels, T, backend="numpy")
    checked = 0
    for idx in [(0, 0, 1), (1, 2, 0), (2, 1, 1), (0, 2, 2)]:
        E = np.zeros_like(W)
        E[idx] = FD_EPS
        fd = (f(W + E, b) - f(W - E, b)) / (2 * FD_EPS)
        assert abs(fd - gW[idx]) <= 1e-6 * max(1.0, abs(gW[idx])), (idx, fd, gW[idx])
        checked += abs(gW[idx]) > 1e-4
    for idx in [(0, 1), (1, 0), (2, 2)]:
        E = np.zeros_like(b)
        E[idx] = FD_EPS
        fd = (f(W, b + E) - f(W, b - E)) / (2 * FD_EPS)
        assert abs(fd - gb[idx]) <= 1e-6 * max(1.0, abs(gb[idx])), (idx, fd, gb[idx])
    assert checked >= 2


@pytest.mark.parametrize("backend", LOCAL)
def test_orthogonal_W_reproduces_the_aligned_engine(rng, backend):
    """W = R: τ, codes, loss and grad_b equal the aligned engine's, and P_A(grad_W Rᵀ) is its omega (§13)."""
    p = make_problem(rng, N=3000, M=6, L=4, Q=3)
    gb_a, om = tf.gradient(p.R, p.b, p.X, p.labels, p.targets, backend=backend)
    gb, gW = tu.gradient(p.R, p.b, p.X, p.labels, p.targets, backend=backend)
    G = gW @ np.swapaxes(p.R, 1, 2)
    scale = max(np.abs(om).max(), np.abs(gb_a).max())
    assert np.abs(0.5 * (G - np.swapaxes(G, 1, 2)) - om).max() <= 1e-13 * scale
    assert np.abs(gb - gb_a).max() <= 1e-13 * scale
    assert abs(tu.loss(p.R, p.b, p.X, p.labels, p.targets, backend=backend)
               - tf.loss(p.R, p.b, p.X, p.labels, p.targets, backend=backend)) <= 1e-13 * tf.loss(
        p.R, p.b, p.X, p.labels, p.targets)
    assert np.abs(tu.truncate(p.R, p.b, p.X, backend=backend) - tf.truncate(p.R, p.b, p.X, backend=backend)).max() \
        <= 1e-13 * np.abs(p.X).max()
    same = tu.sector_codes(p.R, p.b, p.X, backend=backend) == tf.sector_codes(p.R, p.b, p.X, backend=backend)
    assert same.mean() > 0.999  # only points within rounding of a face may differ (docs/api.md)


def test_fixed_diagonal_D_gives_the_D_minus_2_bias_flow(rng):
    """W = D R, b = D β with D fixed: τ is that of (R, β) and ∂_s β = −D⁻² ∇_β C (docs/theory.md §13)."""
    p = make_problem(rng, N=400, M=4, L=3, Q=3)
    d = rng.uniform(0.5, 2.0, size=(3, 4))
    W = d[:, :, None] * p.R
    beta = p.b.copy()
    b = d * beta
    assert_rel(tu.truncate(W, b, p.X), tf.truncate(p.R, beta, p.X), rtol=1e-13, what="τ")
    gb, _ = tu.gradient(W, b, p.X, p.labels, p.targets)
    gbeta, _ = tf.gradient(p.R, beta, p.X, p.labels, p.targets)
    assert_rel(gb, gbeta / d, rtol=1e-13, what="∇_b C = D⁻¹ ∇_β C")
    dt, steps = 0.2, 30
    traj = tu.integrate(W, b, p.X, p.labels, p.targets, dt=dt, steps=steps, train_weights=False)
    assert traj.W.tobytes() == W.tobytes()
    for _ in range(steps):  # the aligned engine, with each bias component on its own clock 1/d²
        beta = beta - dt * tf.gradient(p.R, beta, p.X, p.labels, p.targets)[0] / d**2
    assert_rel(traj.b / d, beta, rtol=1e-12, what="β(s)")
    plain = tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=dt, steps=steps, train_weights=False).b
    assert np.abs(plain - beta).max() > 1e-3  # D = I would be a different flow


# ------------------------------------------------------- alignment defect ---

def test_alignment_defect_zero_when_aligned_and_invariant_under_row_order(rng):
    from scipy.linalg import polar

    R = np.array([random_orthogonal(rng, 5) for _ in range(3)])
    d = rng.uniform(0.3, 3.0, size=(3, 5))
    assert np.all(tu.alignment_defect(d[:, :, None] * R) <= 1e-14)
    assert np.all(tu.alignment_defect(R) <= 1e-14)
    W = R + 0.5 * rng.standard_normal((3, 5, 5))
    got = tu.alignment_defect(W)
    for l in range(3):  # oracle: SciPy's left polar factor W = S U
        _, S = polar(W[l], side="left")
        off = S - np.diag(np.diag(S))
        assert abs(got[l] - np.linalg.norm(off) / np.linalg.norm(S)) <= 1e-12
    assert np.all(got > 0.05)
    perm = rng.permutation(5)
    signs = rng.choice([-1.0, 1.0], size=5)
    assert np.abs(tu.alignment_defect(signs[:, None] * W[:, perm]) - got).max() <= 1e-13
    # a single matrix of known defect: W = [[1, 1], [0, 1]], S² = W Wᵀ = [[2, 1], [1, 1]]
    S = np.array(polar(np.array([[1.0, 1.0], [0.0, 1.0]]), side="left")[1])
    want = abs(S[0, 1]) * np.sqrt(2) / np.linalg.norm(S)
    assert abs(tu.alignment_defect(np.array([[[1.0, 1.0], [0.0, 1.0]]]))[0] - want) <= 1e-15


# ------------------------------------------------------------ C == Numba ---

@pytest.mark.skipif("c" not in AVAILABLE_BACKENDS, reason="C core not built")
@pytest.mark.parametrize("N,M,L", [(9000, 8, 8), (5000, 3, 1), (4500, 16, 2), (700, 11, 3)])
def test_c_core_equals_numba_bitwise(rng, N, M, L):
    from truncfast._backends import registry
    from truncfast._kernels import ccore, unaligned_numba

    W, b, X, labels, T = unaligned_problem(rng, N, M, L, 3)
    inv = np.empty_like(W)
    assert unaligned_numba.inverse(W, inv) == -1
    assert ccore.unaligned_inverse(W).tobytes() == inv.tobytes()
    c, nb = registry.get("c"), registry.get("numba")
    old = tf.get_num_threads()
    try:
        ref = None
        for threads in (1, 2, 3):
            tf.set_num_threads(threads)
            outs = [c.unaligned_general(W, b, X, labels, T, True), nb.unaligned_general(W, b, X, labels, T, True)]
            for out in outs:
                got = (np.float64(out[0]).tobytes(), out[1].tobytes(), out[2].tobytes())
                ref = got if ref is None else ref
                assert got == ref
            for want_codes in (False, True):
                assert c.unaligned_forward(W, b, X, want_codes).tobytes() == \
                    nb.unaligned_forward(W, b, X, want_codes).tobytes()
    finally:
        tf.set_num_threads(old)


# ------------------------------------------------------------- integrate ---

def test_integrate_is_gradient_descent_and_records(rng):
    W, b, X, labels, T = unaligned_problem(rng, 200, 3, 2, 2)
    dt, steps = 0.05, 12
    traj = tu.integrate(W, b, X, labels, T, dt=dt, steps=steps, record_every=5, backend="numba")
    Wk, bk = W.copy(), b.copy()
    for _ in range(steps):
        gb, gW = tu.gradient(Wk, bk, X, labels, T, backend="numba")
        Wk, bk = Wk - dt * gW, bk - dt * gb
    assert traj.W.tobytes() == Wk.tobytes() and traj.b.tobytes() == bk.tobytes()
    assert list(traj.steps) == [0, 5, 10, 12]
    assert traj.Ws[0].tobytes() == W.tobytes()
    assert np.all(np.diff(traj.loss) <= 0)  # a gradient flow with a small step
    assert_rel(traj.alignment_defect[-1], tu.alignment_defect(Wk), what="recorded defect")
    assert_rel(traj.condition[0], tu.condition_numbers(W), what="recorded condition")
    assert traj.counts.shape == (4, 2, 2, 3) and np.all(traj.counts.sum(axis=(1, 3)) == 2 * np.bincount(labels))


def test_flow_into_singularity_stops_with_divergence_error(monkeypatch):
    """A flow that leaves the aligned set raises cond(W); past the limit the run stops and says so."""
    from truncfast import data

    p = data.make_problem("paper-2d", n=200)
    monkeypatch.setattr(_config, "UNALIGNED_MAX_CONDITION", 2.0)
    with pytest.raises(tf.DivergenceError, match="condition number") as info:
        tu.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=2000)
    traj = info.value.trajectory
    assert 0 < traj.last_step < 2000
    assert np.max(tu.condition_numbers(traj.W)) <= 2.0
    assert np.max(tu.condition_numbers(traj.W - 0.05 * tu.gradient(traj.W, traj.b, p.X, p.labels,
                                                                      p.targets)[1])) > 2.0


# ------------------------------------------------------------ bad input ---

@pytest.mark.parametrize("make,arg,pattern", [
    (lambda W, b: (W[:, :, :2], b), "W", "square"),
    (lambda W, b: (W[0], b), "W", "square"),
    (lambda W, b: (np.zeros_like(W), b), "W", "singular"),
    (lambda W, b: (W * np.array([1.0, 1.0, 1e-12])[None, :, None], b), "W", "ill-conditioned"),
    (lambda W, b: (np.where(np.eye(3, dtype=bool), np.nan, W), b), "W", "nan"),
    (lambda W, b: (W, b[:1]), "b", "shape"),
    (lambda W, b: (W, np.full_like(b, np.inf)), "b", "inf"),
])
def test_bad_input_names_the_argument(rng, make, arg, pattern):
    W, b, X, labels, T = unaligned_problem(rng, 20, 3, 2, 2)
    W2, b2 = make(W, b)
    for call in (lambda: tu.gradient(W2, b2, X, labels, T), lambda: tu.truncate(W2, b2, X),
                 lambda: tu.integrate(W2, b2, X, labels, T, dt=0.1, steps=1)):
        with pytest.raises(tf.InputError, match=pattern) as info:
            call()
        assert str(info.value).startswith(arg + ":")
    if pattern in ("singular", "ill-conditioned"):
        assert "condition number" in str(info.value)


def test_inputs_are_not_modified_and_dask_is_refused(rng):
    W, b, X, labels, T = unaligned_problem(rng, 30, 3, 2, 2)
    copies = [a.copy() for a in (W, b, X, labels, T)]
    for a in (W, b, X, labels, T):
        a.flags.writeable = False
    tu.gradient(W, b, X, labels, T)
    tu.integrate(W, b, X, labels, T, dt=0.1, steps=2)
    for a, c in zip((W, b, X, labels, T), copies):
        assert a.tobytes() == c.tobytes()
    if "dask" in AVAILABLE_BACKENDS:
        with pytest.raises(tf.BackendUnavailable, match="unaligned"):
            tu.gradient(W, b, X, labels, T, backend="dask")
