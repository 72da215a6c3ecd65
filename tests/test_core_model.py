"""docs/theory.md §§1–4: truncation maps, sector codes, the identities with the
layer-by-layer ReLU network, and the losses built on them."""

from __future__ import annotations

import numpy as np
import pytest

import naive
import truncfast as tf
from conftest import RTOL, RTOL_COMPOSED, assert_rel, make_problem, random_orthogonal

SHAPES = [  # (N, M, L, Q, P)
    (1, 1, 1, 1, 1),
    (1, 3, 2, 2, 3),
    (9, 1, 3, 2, 2),
    (17, 3, 2, 3, 2),
    (13, 4, 3, 2, 5),
    (25, 5, 1, 4, 5),
]


@pytest.mark.parametrize("kind", ["random", "boundary"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-M%d-L%d-Q%d-P%d" % s)
def test_truncate_and_codes_match_naive(backend, rng, shape, kind):
    N, M, L, Q, P = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q, P=P, kind=kind)
    out = tf.truncate(p.R, p.b, p.X, backend=backend)
    assert out.dtype == np.float64 and out.shape == (N, M)
    assert_rel(out, naive.truncate(p.R, p.b, p.X), RTOL, "truncate")
    codes = tf.sector_codes(p.R, p.b, p.X, backend=backend)
    assert codes.dtype == np.uint64 and codes.shape == (N, L)
    np.testing.assert_array_equal(codes, naive.codes(p.R, p.b, p.X))


def test_boundary_points_count_as_truncated(backend):
    """H(0) = 0: a pre-activation exactly 0 is truncated (bit clear)."""
    R = np.eye(2)[None]
    b = np.zeros((1, 2))
    X = np.array([[0.0, 1.0], [0.0, 0.0], [1.0, 2.0], [-0.0, -1.0]])
    codes = tf.sector_codes(R, b, X, backend=backend)
    np.testing.assert_array_equal(codes[:, 0], np.array([0b10, 0b00, 0b11, 0b00], dtype=np.uint64))
    # on the face u = 0 the projection is the identity there
    np.testing.assert_array_equal(tf.truncate(R, b, X, backend=backend), [[0, 1], [0, 0], [1, 2], [0, 0]])


def test_codes_are_taken_along_the_composition(backend):
    """Layer 2 sees τ_1(x), not x: τ_1 can move a point into layer 2's positive sector."""
    R = np.array([np.eye(2), np.eye(2)])
    b = np.array([[1.0, 0.0], [1.5, 1.0]])
    X = np.array([[-3.0, 1.0]])  # τ_1(x) = (-1, 1) → u_2 = (0.5, 2); the raw x would give (-1.5, 2)
    np.testing.assert_array_equal(tf.sector_codes(R, b, X, backend=backend), [[0b10, 0b11]])
    np.testing.assert_array_equal(naive.codes(R, b, X), [[0b10, 0b11]])


def test_sector_codes_width_64(backend, rng):
    M = 64
    R = np.array([np.eye(M)[rng.permutation(M)]])
    b = np.zeros((1, M))
    X = rng.choice([-1.0, 1.0], size=(3, M))
    codes = tf.sector_codes(R, b, X, backend=backend)
    np.testing.assert_array_equal(codes, naive.codes(R, b, X))
    X[0] = 1.0
    assert tf.sector_codes(R, b, X, backend=backend)[0, 0] == np.uint64(2**64 - 1)


def test_truncate_is_projection_onto_the_cone(backend, rng):
    """τ_ℓ is the Euclidean projection onto K = {Rz + b ≥ 0} (docs/theory.md §4)."""
    M = 4
    R = random_orthogonal(rng, M)[None]
    b = rng.standard_normal((1, M))
    X = 2 * rng.standard_normal((30, M))
    Z = tf.truncate(R, b, X, backend=backend)
    assert (Z @ R[0].T + b[0] >= -1e-12).all()  # in the cone
    # the clamp form: R τ(z) = max(R z, −b)
    assert_rel(Z @ R[0].T, np.maximum(X @ R[0].T, -b[0]), RTOL)
    # idempotent, and the residual x − τ(x) is normal to K at τ(x)
    assert_rel(tf.truncate(R, b, Z, backend=backend), Z, RTOL)
    K = rng.standard_normal((200, M)) * 3
    Kin = tf.truncate(R, b, K, backend=backend)
    for x, z in zip(X, Z):
        assert ((Kin - z) @ (x - z) <= 1e-9).all()


# ---------------------------------------------------------- §1 cumulative ---

def _random_layers(rng, L, M):
    Ws = np.array([random_orthogonal(rng, M) @ np.diag(rng.uniform(0.5, 2.0, M)) for _ in range(L)])
    bs = rng.standard_normal((L, M))
    return Ws, bs


@pytest.mark.parametrize("L,M", [(1, 1), (1, 3), (3, 2), (4, 5)])
def test_layers_cumulative_round_trip(rng, L, M):
    Ws, bs = _random_layers(rng, L, M)
    Wc, bc = tf.layers_to_cumulative(Ws, bs)
    Wn, bn = naive.cumulative(Ws, bs)
    assert_rel(Wc, Wn, RTOL)
    assert_rel(bc, bn, RTOL)
    Ws2, bs2 = tf.cumulative_to_layers(Wc, bc)
    assert_rel(Ws2, Ws, RTOL_COMPOSED)
    assert_rel(bs2, bs, RTOL_COMPOSED)
    # lists of matrices are accepted too
    Wl, bl = tf.layers_to_cumulative(list(Ws), list(bs))
    np.testing.assert_array_equal(Wl, Wc)
    np.testing.assert_array_equal(bl, bc)


def test_cumulative_to_layers_rejects_singular_layer():
    Wc = np.array([np.eye(2), np.eye(2)])
    Wc[0, 1] = 0.0
    with pytest.raises(tf.InputError, match="Wc.*layer 0"):
        tf.cumulative_to_layers(Wc, np.zeros((2, 2)))


def _aligned_network(rng, L, M, P):
    """Aligned cumulative weights W^(ℓ) = D_ℓ R_ℓ and the layer weights they imply."""
    R = np.array([random_orthogonal(rng, M) for _ in range(L)])
    d = rng.uniform(0.5, 2.0, size=(L, M))
    Wc = d[:, :, None] * R
    bc = rng.standard_normal((L, M))
    Ws, bs = [Wc[0]], [bc[0]]
    for l in range(1, L):  # W_ℓ = W^(ℓ) (W^(ℓ-1))⁻¹, b_ℓ = b^(ℓ) − W_ℓ b^(ℓ-1)
        Wl = Wc[l] @ np.linalg.inv(Wc[l - 1])
        Ws.append(Wl)
        bs.append(bc[l] - Wl @ bc[l - 1])
    W_last = rng.standard_normal((P, M))
    b_last = rng.standard_normal(P)
    W_out = W_last @ Wc[-1]  # W^(L+1) = W_{L+1} W^(L)
    b_out = W_last @ bc[-1] + b_last
    return R, d, Wc, bc, np.array(Ws), np.array(bs), W_last, b_last, W_out, b_out


@pytest.mark.parametrize("L,M,P", [(1, 1, 1), (1, 3, 2), (3, 2, 2), (3, 4, 6), (4, 3, 1)])
def test_network_identities(backend, rng, L, M, P):
    """x⁽ℓ⁾ = a_ℓ(τ^(ℓ)(x)) and x⁽ᴸ⁺¹⁾ = W^(L+1) τ^(L)(x) + b^(L+1) (docs/theory.md §2, §4)."""
    R, d, Wc, bc, Ws, bs, W_last, b_last, W_out, b_out = _aligned_network(rng, L, M, P)
    R2, beta, d2 = tf.aligned_from_cumulative(Wc, bc)
    assert_rel(R2, R, RTOL_COMPOSED)
    assert_rel(d2, d, RTOL_COMPOSED)
    assert_rel(beta, bc / d, RTOL_COMPOSED)
    Wc2, bc2 = tf.layers_to_cumulative(Ws, bs)
    assert_rel(Wc2, Wc, RTOL_COMPOSED)
    assert_rel(bc2, bc, RTOL_COMPOSED)

    X = 1.5 * rng.standard_normal((20, M))
    net = [naive.relu_network(Ws, bs, W_last, b_last, x) for x in X]
    for l in range(1, L + 1):
        Z = tf.truncate(R[:l], beta[:l], X, backend=backend)  # τ^(ℓ)(x)
        hidden = Z @ Wc[l - 1].T + bc[l - 1]  # a_ℓ(τ^(ℓ)(x))
        assert_rel(hidden, np.array([s[l - 1] for s, _ in net]), RTOL_COMPOSED, f"layer {l}")
        # the codes are the activation patterns of the hidden layers
        codes = tf.sector_codes(R[:l], beta[:l], X, backend=backend)[:, l - 1]
        pattern = np.array([int(sum(1 << i for i in range(M) if s[l - 1][i] > 1e-9)) for s, _ in net])
        np.testing.assert_array_equal(codes, pattern.astype(np.uint64))
    out = tf.truncate(R, beta, X, backend=backend) @ W_out.T + b_out
    assert_rel(out, np.array([o for _, o in net]), RTOL_COMPOSED, "output")

    # the standard loss of the network
    Q = 3
    labels = rng.integers(0, Q, size=len(X))
    Y = rng.standard_normal((Q, P))
    direct = sum(np.sum((o - Y[j]) ** 2) for (_, o), j in zip(net, labels)) / (2 * len(X))
    got = tf.standard_loss(R, beta, X, labels, W_out, b_out, Y, backend=backend)
    assert abs(got - direct) <= RTOL_COMPOSED * direct


def test_aligned_from_cumulative_rejects_unaligned(rng):
    W = np.array([[2.0, 1.0], [1.0, 3.0]])[None]
    with pytest.raises(tf.InputError, match="Wc.*layer 0.*not aligned"):
        tf.aligned_from_cumulative(W, np.zeros((1, 2)))


# --------------------------------------------------------------- §3 losses ---

@pytest.mark.parametrize("M,P", [(3, 3), (3, 2), (3, 5), (1, 1), (1, 3), (4, 1)])
def test_pullback_targets(rng, M, P):
    W = rng.standard_normal((P, M))
    bo = rng.standard_normal(P)
    Y = rng.standard_normal((4, P))
    got = tf.pullback_targets(W, bo, Y)
    assert got.shape == (4, M)
    assert_rel(got, naive.pullback_targets(W, bo, Y), RTOL_COMPOSED)
    # Moore–Penrose: the residual W ỹ + b − y is orthogonal to range(W), ỹ ⟂ ker(W)
    res = got @ W.T + bo - Y
    assert np.abs(res @ W).max() <= 1e-10 * (1 + np.abs(Y).max())
    if P >= M:
        return
    assert np.abs(res).max() <= 1e-10 * (1 + np.abs(Y).max())  # full row rank: exact


@pytest.mark.parametrize("M,P,rank", [(3, 3, 2), (4, 4, 1), (3, 5, 2), (4, 2, 1)])
def test_pullback_targets_rank_deficient(rng, M, P, rank):
    """A singular W_out: the minimum-norm least-squares ỹ (Moore–Penrose)."""
    W = rng.standard_normal((P, rank)) @ rng.standard_normal((rank, M))
    bo = rng.standard_normal(P)
    Y = rng.standard_normal((3, P))
    got = tf.pullback_targets(W, bo, Y)
    assert_rel(got, naive.pullback_targets(W, bo, Y), RTOL_COMPOSED)
    assert np.abs(got @ np.linalg.svd(W)[2][rank:].T).max() <= 1e-10  # no part in ker W


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-M%d-L%d-Q%d-P%d" % s)
def test_losses_match_naive(backend, rng, shape):
    N, M, L, Q, P = shape
    for kind in ("random", "boundary"):
        p = make_problem(rng, N=N, M=M, L=L, Q=Q, P=P, kind=kind)
        got = tf.loss(*p.euclid, backend=backend)
        assert isinstance(got, float)
        assert_rel(got, naive.loss(*p.euclid), RTOL, "loss")
        got = tf.standard_loss(*p.standard, backend=backend)
        assert isinstance(got, float)
        assert_rel(got, naive.standard_loss(*p.standard), RTOL, "standard_loss")


@pytest.mark.parametrize("P", [1, 2, 3, 5])
def test_standard_loss_is_euclidean_in_pullback_metric(backend, rng, P):
    """C_std = 1/(2N) Σ |W (τ(x) − ỹ_j)|² + const, const = 1/(2N) Σ |W ỹ_j + b − y_j|² (§3)."""
    M, N = 3, 15
    p = make_problem(rng, N=N, M=M, L=2, Q=3, P=P)
    ty = tf.pullback_targets(p.W_out, p.b_out, p.Y)
    Z = tf.truncate(p.R, p.b, p.X, backend=backend)
    metric = np.sum(((Z - ty[p.labels]) @ p.W_out.T) ** 2) / (2 * N)
    const = np.sum((ty[p.labels] @ p.W_out.T + p.b_out - p.Y[p.labels]) ** 2) / (2 * N)
    if P <= M:
        assert const <= 1e-20  # W has full row rank: the labels are reachable
    got = tf.standard_loss(*p.standard, backend=backend)
    assert abs(got - (metric + const)) <= RTOL_COMPOSED * got


def test_orthogonal_output_layer_makes_losses_equal(backend, rng):
    """With W_out orthogonal, C_std = C_E (pull-back targets) and the hidden gradients agree."""
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    W = random_orthogonal(rng, 3)
    ty = tf.pullback_targets(W, p.b_out, p.Y)
    assert_rel(tf.standard_loss(p.R, p.b, p.X, p.labels, W, p.b_out, p.Y, backend=backend),
               tf.loss(p.R, p.b, p.X, p.labels, ty, backend=backend), RTOL_COMPOSED)
    gb, om, _, _ = tf.standard_gradient(p.R, p.b, p.X, p.labels, W, p.b_out, p.Y, backend=backend)
    gb2, om2 = tf.gradient(p.R, p.b, p.X, p.labels, ty, backend=backend)
    assert_rel(gb, gb2, RTOL_COMPOSED)
    assert_rel(om, om2, RTOL_COMPOSED)


def test_orthonormalize_and_defect(rng):
    R = np.array([random_orthogonal(rng, 4) for _ in range(3)])
    assert tf.orthogonality_defect(R).max() <= 1e-14
    # array-likes and single matrices
    assert tf.orthogonality_defect(R.tolist()).shape == (3,)
    assert tf.orthogonality_defect(2.0 * R[0]) == pytest.approx(3.0)
    assert tf.orthonormalize((R[0] + 1e-7).tolist()).shape == (4, 4)
    noisy = R + 1e-6 * rng.standard_normal(R.shape)
    assert (tf.orthogonality_defect(noisy) > 1e-8).all()
    fixed = tf.orthonormalize(noisy)
    assert tf.orthogonality_defect(fixed).max() <= 1e-14
    assert np.abs(fixed - R).max() <= 1e-5  # the nearest orthogonal matrix, close to R
    # the polar factor: fixedᵀ noisy is symmetric positive definite
    P = np.swapaxes(fixed, 1, 2) @ noisy
    assert_rel(P, np.swapaxes(P, 1, 2), 1e-12)
    assert (np.linalg.eigvalsh(P) > 0).all()
