"""docs/theory.md §5: the gradient of the effective flow, against the naive loop,
against PyTorch autograd of the same loss, and against finite differences of
``loss`` along the flow directions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import naive
import truncfast as tf
from conftest import FD_EPS, FD_RTOL, RTOL, Problem, assert_rel, make_problem, rel_err

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

SHAPES = [  # (N, M, L, Q, P): L ≠ Q, P ≠ M, N = 1, M = 1 all covered
    (1, 1, 1, 1, 1),
    (1, 3, 2, 1, 3),
    (1, 2, 3, 2, 4),
    (8, 1, 3, 2, 2),
    (15, 3, 2, 3, 2),
    (12, 4, 3, 2, 6),
    (20, 5, 1, 4, 5),
    (30, 3, 4, 2, 1),
]
IDS = ["N%d-M%d-L%d-Q%d-P%d" % s for s in SHAPES]


# ---------------------------------------------------------- torch oracle ---

def torch_gradients(p, *, standard: bool, extension: str = "relu", euclidean: bool = False):
    """Autograd of the loss with R, b (and W_out, b_out) as plain leaf tensors.

    ``extension`` picks how τ_ℓ is extended off O(M): ``"relu"`` is the
    network form z = Rᵀ(σ(Rz + b) − b), ``"clamp"`` the form
    z − Rᵀ min(Rz + b, 0).  Their Euclidean gradients in R differ, their
    projections ω = P_A(∇_R C · Rᵀ) onto the Lie algebra must not.
    Returns (loss, grad_b, omega[, grad_W_out, grad_b_out]), or only the
    Euclidean gradient ∇_R C when ``euclidean``.
    """
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)  # noqa: E731
    R = t(p.R).requires_grad_(True)
    b = t(p.b).requires_grad_(True)
    z = t(p.X)
    lab = torch.tensor(np.asarray(p.labels), dtype=torch.long)
    for l in range(R.shape[0]):
        u = z @ R[l].T + b[l]
        if extension == "relu":
            z = (torch.relu(u) - b[l]) @ R[l]
        else:
            z = z - torch.clamp(u, max=0.0) @ R[l]  # d/du min(u, 0) = 1 at u = 0: H(0) = 0
    N = z.shape[0]
    if standard:
        W = t(p.W_out).requires_grad_(True)
        bo = t(p.b_out).requires_grad_(True)
        res = z @ W.T + bo - t(p.Y)[lab]
        C = (res * res).sum() / (2 * N)
    else:
        d = z - t(p.targets)[lab]
        C = (d * d).sum() / (2 * N)
    C.backward()
    gR = R.grad.numpy()
    if euclidean:
        return gR.copy()
    Rn = R.detach().numpy()
    A = gR @ np.swapaxes(Rn, 1, 2)  # ∇_R C · Rᵀ
    omega = 0.5 * (A - np.swapaxes(A, 1, 2))
    out = (C.item(), b.grad.numpy().copy(), omega)
    if standard:
        out += (W.grad.numpy().copy(), bo.grad.numpy().copy())
    return out


@pytest.mark.parametrize("kind", ["random", "boundary"])
def test_torch_extensions_agree(rng, kind):
    """Self-check of the oracle: ω does not depend on how τ is extended off O(M)."""
    p = make_problem(rng, N=20, M=4, L=3, Q=2, kind=kind)
    a = torch_gradients(p, standard=False, extension="relu")
    c = torch_gradients(p, standard=False, extension="clamp")
    for x, y in zip(a, c):
        assert_rel(x, y, RTOL)
    # ... whereas the Euclidean gradients in R do differ (the projection matters)
    ga = torch_gradients(p, standard=False, extension="relu", euclidean=True)
    gc = torch_gradients(p, standard=False, extension="clamp", euclidean=True)
    assert rel_err(ga, gc) > 1e-3


@pytest.mark.parametrize("kind", ["random", "boundary"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_gradient_matches_naive_and_torch(backend, rng, shape, kind):
    N, M, L, Q, P = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q, P=P, kind=kind)
    gb, om = tf.gradient(*p.euclid, backend=backend)
    assert gb.shape == (L, M) and om.shape == (L, M, M)
    assert gb.dtype == np.float64 and om.dtype == np.float64
    np.testing.assert_array_equal(om, -np.swapaxes(om, 1, 2))  # exactly antisymmetric
    ngb, nom = naive.gradient(*p.euclid)
    assert_rel(gb, ngb, RTOL, "grad_b vs naive")
    assert_rel(om, nom, RTOL, "omega vs naive")
    tl, tgb, tom = torch_gradients(p, standard=False, extension="relu" if kind == "random" else "clamp")
    assert_rel(tf.loss(*p.euclid, backend=backend), tl, RTOL, "loss vs torch")
    assert_rel(gb, tgb, RTOL, "grad_b vs torch")
    assert_rel(om, tom, RTOL, "omega vs torch")


@pytest.mark.parametrize("kind", ["random", "boundary"])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_standard_gradient_matches_naive_and_torch(backend, rng, shape, kind):
    N, M, L, Q, P = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q, P=P, kind=kind)
    got = tf.standard_gradient(*p.standard, backend=backend)
    shapes = [(L, M), (L, M, M), (P, M), (P,)]
    assert [g.shape for g in got] == shapes
    assert all(g.dtype == np.float64 for g in got)
    names = ["grad_b", "omega", "grad_W_out", "grad_b_out"]
    for g, n, name in zip(got, naive.standard_gradient(*p.standard), names):
        assert_rel(g, n, RTOL, name + " vs naive")
    tl, *tg = torch_gradients(p, standard=True)
    assert_rel(tf.standard_loss(*p.standard, backend=backend), tl, RTOL, "standard_loss vs torch")
    for g, n, name in zip(got, tg, names):
        assert_rel(g, n, RTOL, name + " vs torch")


def test_boundary_problem_really_has_zero_preactivations(rng):
    """The 'boundary' factory puts points exactly on sector faces (u = 0) at every layer."""
    p = make_problem(rng, N=40, M=3, L=3, Q=2, kind="boundary")
    zeros = np.zeros(3, dtype=int)
    for x in p.X:
        for l in range(3):
            zeros[l] += np.sum(p.R[l] @ naive.tau(p.R, p.b, x, upto=l) + p.b[l] == 0.0)
    assert (zeros > 0).all()


def test_h0_is_truncated_in_the_gradient(backend):
    """One point on the face u_1 = 0 of a one-layer cone: direction 1 is truncated."""
    R = np.eye(2)[None]
    b = np.array([[0.0, 0.0]])
    X = np.array([[0.0, 1.0]])
    T = np.array([[2.0, 3.0]])
    gb, om = tf.gradient(R, b, X, [0], T, backend=backend)
    # e = z − ỹ = (−2, −2); truncated direction 0 only: grad_b = −(1 − h) ⊙ r = (2, 0)
    np.testing.assert_array_equal(gb, [[2.0, 0.0]])
    # G = (h⊙r) vᵀ − r tᵀ with v = (0, 1), t = (0, 1): [[0,0],[0,-2]] − [[0,-2],[0,-2]] = [[0,2],[0,0]]
    np.testing.assert_array_equal(om, [[[0.0, 1.0], [-1.0, 0.0]]])
    p = Problem(R, b, X, np.array([0]), T, np.eye(2), np.zeros(2), T)
    _, tgb, tom = torch_gradients(p, standard=False)
    np.testing.assert_array_equal(tgb, gb)
    np.testing.assert_array_equal(tom, om)


# -------------------------------------------------- finite differences ---

def _min_abs_preactivation(p):
    m = np.inf
    for x in p.X:
        for l in range(len(p.R)):
            u = p.R[l] @ naive.tau(p.R, p.b, x, upto=l) + p.b[l]
            m = min(m, np.abs(u).min())
    return m


def _interior_problem(rng, **kw):
    """A random problem with no pre-activation within 1e-3 of a sector face."""
    for _ in range(200):
        p = make_problem(rng, **kw)
        if _min_abs_preactivation(p) > 1e-3:
            return p
    raise AssertionError("could not draw an interior configuration")


def _random_antisymmetric(rng, L, M):
    A = rng.standard_normal((L, M, M))
    return A - np.swapaxes(A, 1, 2)


def _rotate(R, A, eps):
    return np.array([scipy.linalg.expm(eps * a) @ r for a, r in zip(A, R)])


@pytest.mark.parametrize("shape", [(6, 2, 1, 1), (10, 3, 2, 2), (8, 4, 3, 2), (1, 3, 2, 1)])
def test_finite_differences_along_flow_directions(backend, rng, shape):
    """dC/dε C(exp(εA)R, b) = ⟨Ω, A⟩_F for antisymmetric A; dC/db = grad_b."""
    N, M, L, Q = shape
    p = _interior_problem(rng, N=N, M=M, L=L, Q=Q)
    gb, om = tf.gradient(*p.euclid, backend=backend)
    C = lambda R, b: tf.loss(R, b, p.X, p.labels, p.targets, backend=backend)  # noqa: E731
    h = FD_EPS
    # biases: every coordinate
    fd_b = np.zeros_like(p.b)
    for l in range(L):
        for i in range(M):
            e = np.zeros_like(p.b)
            e[l, i] = h
            fd_b[l, i] = (C(p.R, p.b + e) - C(p.R, p.b - e)) / (2 * h)
    assert rel_err(fd_b, gb) < FD_RTOL
    # rotations: random Lie-algebra directions, one layer at a time and all at once
    fd, an = [], []
    for k in range(3):
        A = _random_antisymmetric(rng, L, M)
        if k < L:
            A[np.arange(L) != k] = 0.0
        fd.append((C(_rotate(p.R, A, h), p.b) - C(_rotate(p.R, A, -h), p.b)) / (2 * h))
        an.append(np.sum(om * A))
    assert rel_err(fd, an) < FD_RTOL
    # the flow direction itself: dC/ds = −(|grad_b|² + |Ω|²_F)  [3.27–3.29]
    rate = -(np.sum(gb**2) + np.sum(om**2))
    fd_s = (C(_rotate(p.R, -om, h), p.b - h * gb) - C(_rotate(p.R, om, h), p.b + h * gb)) / (2 * h)
    assert abs(fd_s - rate) <= FD_RTOL * abs(rate)


@pytest.mark.parametrize("P", [1, 3, 5])
def test_finite_differences_standard(backend, rng, P):
    p = _interior_problem(rng, N=9, M=3, L=2, Q=2, P=P)
    gb, om, gW, gbo = tf.standard_gradient(*p.standard, backend=backend)

    def C(R=p.R, b=p.b, W=p.W_out, bo=p.b_out):
        return tf.standard_loss(R, b, p.X, p.labels, W, bo, p.Y, backend=backend)

    h = FD_EPS

    def fd_of(arr, f):
        out = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            e = np.zeros_like(arr)
            e[idx] = h
            out[idx] = (f(arr + e) - f(arr - e)) / (2 * h)
        return out

    assert rel_err(fd_of(p.b, lambda b: C(b=b)), gb) < FD_RTOL
    assert rel_err(fd_of(p.W_out, lambda W: C(W=W)), gW) < FD_RTOL
    assert rel_err(fd_of(p.b_out, lambda bo: C(bo=bo)), gbo) < FD_RTOL
    A = _random_antisymmetric(rng, 2, 3)
    fd = (C(R=_rotate(p.R, A, h)) - C(R=_rotate(p.R, A, -h))) / (2 * h)
    assert abs(fd - np.sum(om * A)) <= FD_RTOL * np.linalg.norm(om) * np.linalg.norm(A)


def test_small_flow_step_decreases_loss(backend, rng):
    """One Lie–Euler step with a small step decreases C (docs/theory.md §5, monotonicity)."""
    p = make_problem(rng, N=40, M=3, L=3, Q=2)
    C0 = tf.loss(*p.euclid, backend=backend)
    gb, om = tf.gradient(*p.euclid, backend=backend)
    rate = np.sum(gb**2) + np.sum(om**2)
    assert rate > 0
    dt = 1e-4
    C1 = tf.loss(_rotate(p.R, -om, dt), p.b - dt * gb, p.X, p.labels, p.targets, backend=backend)
    assert C1 < C0
    assert abs((C0 - C1) / dt - rate) <= 1e-2 * rate


def test_default_backend_matches_naive(rng):
    p = make_problem(rng, N=25, M=3, L=2, Q=2, P=2)
    for g, w in zip(tf.gradient(*p.euclid), naive.gradient(*p.euclid)):
        assert_rel(g, w, RTOL)
    for g, w in zip(tf.standard_gradient(*p.standard), naive.standard_gradient(*p.standard)):
        assert_rel(g, w, RTOL)
    assert_rel(tf.loss(*p.euclid), naive.loss(*p.euclid), RTOL)
    assert_rel(tf.truncate(p.R, p.b, p.X), naive.truncate(p.R, p.b, p.X), RTOL)
