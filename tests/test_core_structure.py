"""Structural facts of docs/theory.md §5, the cluster-separated form of §6 and the
closed forms of §7 (equilibria, collapse)."""

from __future__ import annotations

import numpy as np
import pytest

import naive
import truncfast as tf
from conftest import RTOL, Problem, assert_rel, make_problem, random_orthogonal, separated_problem


def _naive_codes(p, X=None):
    return naive.codes(p.R, p.b, p.X if X is None else X)


def _sample_points(rng, p, want, n, scale=3.0, tries=40):
    """n points x with want(codes of x) true, drawn by rejection from N(0, scale²)."""
    M = p.X.shape[1]
    found = []
    for _ in range(tries):
        cand = scale * rng.standard_normal((200, M))
        keep = [x for x, c in zip(cand, naive.codes(p.R, p.b, cand)) if want(c)]
        found.extend(keep)
        if len(found) >= n:
            return np.array(found[:n])
    raise AssertionError("could not sample the requested points")


def _extended(p, Xnew, labels_new):
    return Problem(p.R, p.b, np.vstack([p.X, Xnew]), np.concatenate([p.labels, labels_new]),
                   p.targets, p.W_out, p.b_out, p.Y)


def rel_change(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


# --------------------------------------------------------------- §5 facts ---

def test_untruncated_points_add_nothing(backend, rng):
    M, L = 3, 3
    Xu = 0.5 * rng.standard_normal((6, M))
    p = make_problem(rng, N=25, M=M, L=L, Q=2)
    p.X *= 3.0
    # biases that leave Xu untruncated at every layer (so τ^(ℓ)(x) = x for them)
    p.b = 0.5 - np.min(np.einsum("lik,nk->nli", p.R, Xu), axis=0)
    allbits = np.uint64(2**M - 1)
    assert (naive.codes(p.R, p.b, Xu) == allbits).all()
    assert (naive.codes(p.R, p.b, p.X) != allbits).sum() > 10
    q = _extended(p, Xu, rng.integers(0, 2, 6))
    gb, om = tf.gradient(*p.euclid, backend=backend)
    gb2, om2 = tf.gradient(*q.euclid, backend=backend)
    N, N2 = len(p.X), len(q.X)
    assert_rel(gb2 * N2, gb * N, RTOL)
    assert_rel(om2 * N2, om * N, RTOL)
    # alone, they contribute exactly nothing
    only = Problem(p.R, p.b, Xu, np.zeros(6, dtype=int), p.targets, p.W_out, p.b_out, p.Y)
    gb0, om0 = tf.gradient(*only.euclid, backend=backend)
    assert not gb0.any() and not om0.any()
    # and they are fixed by the truncation
    assert_rel(tf.truncate(p.R, p.b, Xu, backend=backend), Xu, RTOL)


def test_fully_truncated_points_collapse(backend, rng):
    """Points with h_ℓ = 0…0 land on −R_ℓᵀ b_ℓ and add nothing to layers < ℓ (§5)."""
    M, L = 3, 3
    allbits = np.uint64(2**M - 1)
    # fully truncated at layer 1 (0-based), partially truncated at layer 0; a random
    # problem can make that region tiny, so draw problems until it is reachable
    for _ in range(20):
        p = make_problem(rng, N=25, M=M, L=L, Q=2)
        try:
            Xf = _sample_points(rng, p, lambda c: c[1] == 0 and 0 < c[0] < allbits, 5)
            break
        except AssertionError:
            continue
    else:
        raise AssertionError("no random problem with a reachable fully truncated region")
    z1 = tf.truncate(p.R[:2], p.b[:2], Xf, backend=backend)
    assert_rel(z1, np.tile(-p.R[1].T @ p.b[1], (5, 1)), RTOL)
    out = tf.truncate(p.R, p.b, Xf, backend=backend)
    assert_rel(out, np.tile(out[0], (5, 1)), RTOL)  # one point from layer 1 on

    lab = np.zeros(5, dtype=int)
    q = _extended(p, Xf, lab)
    gb, om = tf.gradient(*p.euclid, backend=backend)
    gb2, om2 = tf.gradient(*q.euclid, backend=backend)
    N, N2 = len(p.X), len(q.X)
    assert_rel(gb2[0] * N2, gb[0] * N, RTOL)  # layer 0 unchanged
    assert_rel(om2[0] * N2, om[0] * N, RTOL)
    assert rel_change(gb2[1:] * N2, gb[1:] * N) > 1e-6  # later layers do see them
    # processed once with a weight: replacing them by copies of one changes nothing
    r = _extended(p, np.tile(Xf[0], (5, 1)), lab)
    for a, c in zip(tf.gradient(*r.euclid, backend=backend), (gb2, om2)):
        assert_rel(a, c, RTOL)
    assert_rel(tf.loss(*r.euclid, backend=backend), tf.loss(*q.euclid, backend=backend), RTOL)


def test_fully_truncated_cluster_closed_form(backend, rng):
    """Collapse [Prop. 4.2]: ∇_b = π(b + ỹ'), Ω = (π/2)(b ỹ'ᵀ − ỹ' bᵀ) (docs/theory.md §7)."""
    M = 3
    R = random_orthogonal(rng, M)[None]
    b = np.array([[0.3, -0.2, 0.5]])
    # cluster 0 fully truncated (R x + b ≤ 0), cluster 1 elsewhere untruncated
    X0 = (R[0].T @ (-b[0][:, None] - rng.uniform(0.1, 2.0, (M, 7)))).T
    X1 = (R[0].T @ (-b[0][:, None] + rng.uniform(0.1, 2.0, (M, 5)))).T
    X = np.vstack([X0, X1])
    labels = np.array([0] * 7 + [1] * 5)
    T = rng.standard_normal((2, M))
    np.testing.assert_array_equal(naive.codes(R, b, X)[:, 0], [0] * 7 + [7] * 5)
    gb, om = tf.gradient(R, b, X, labels, T, backend=backend)
    # cluster 1 untruncated adds nothing; cluster 0 is the collapse case
    pi, y = 7 / 12, R[0] @ T[0]
    assert_rel(gb[0], pi * (b[0] + y), RTOL)
    assert_rel(om[0], 0.5 * pi * (np.outer(b[0], y) - np.outer(y, b[0])), RTOL)


def test_equilibria(backend, rng):
    """[Prop. 4.1] RHS zero when a cluster is untruncated, or fully truncated with b = −ỹ'."""
    M = 3
    R = random_orthogonal(rng, M)[None]
    T = rng.standard_normal((1, M))
    b = -(R[0] @ T[0])[None]  # b = −ỹ'
    X = (R[0].T @ (-b[0][:, None] - rng.uniform(0.1, 2.0, (M, 9)))).T  # fully truncated
    gb, om = tf.gradient(R, b, X, np.zeros(9, dtype=int), T, backend=backend)
    scale = np.abs(X).max() ** 2
    assert np.abs(gb).max() <= 1e-14 * scale and np.abs(om).max() <= 1e-14 * scale
    assert tf.loss(R, b, X, np.zeros(9, dtype=int), T, backend=backend) <= 1e-28 * scale
    b_up = b + 100.0  # every point untruncated
    gb, om = tf.gradient(R, b_up, X, np.zeros(9, dtype=int), T, backend=backend)
    assert not gb.any() and not om.any()  # exactly: untruncated points add nothing


# ------------------------------------------------------ §6 separated form ---

def _plane_problem(rng, n=60):
    """docs/theory.md §7 'Partial collapse': two clusters in the plane, R = (I, −I)."""
    R = np.array([np.eye(2), -np.eye(2)])
    b = np.array([[0.0, 0.0], [10.0, 10.0]])
    centres = np.array([[0.0, 0.0], [10.0, 10.0]])
    labels = np.repeat([0, 1], n // 2)
    X = centres[labels] + 0.1 * rng.standard_normal((n, 2))
    T = np.array([[2.0, 2.0], [8.0, 8.0]])
    return Problem(R, b, X, labels, T, np.eye(2), np.zeros(2), T)


def _plane_outlier(rng):
    """The plane problem with one far point of cluster 0 that its own layer truncates:
    still separated, but no longer provably so from an enclosing ball of the cluster."""
    p = _plane_problem(rng)
    p.X[np.flatnonzero(p.labels == 0)[0]] = [-30.0, 0.5]
    return p


def _one_cluster(rng):
    p = make_problem(rng, N=30, M=4, L=1, Q=1)
    return p


SEPARATED = {
    "one-cluster": _one_cluster,
    "plane": _plane_problem,
    "plane-outlier": _plane_outlier,
    "M2-Q2": lambda rng: separated_problem(rng, 2, 2),
    "M3-Q3": lambda rng: separated_problem(rng, 3, 3),
    "M4-Q2": lambda rng: separated_problem(rng, 4, 2),
    "M5-Q4": lambda rng: separated_problem(rng, 5, 4, n_per=8),
}


@pytest.mark.parametrize("name", list(SEPARATED))
def test_separated_equals_general(backend, rng, name):
    p = SEPARATED[name](rng)
    Q = p.targets.shape[0]
    assert len(p.R) == Q
    assert naive.separation_violations(p.R, p.b, p.X, p.labels, Q) == set()
    # each cluster is partially truncated by its own layer: the test has teeth
    codes = _naive_codes(p)
    full = np.uint64(2 ** p.X.shape[1] - 1)
    for j in range(Q):
        cj = codes[p.labels == j, j]
        assert (cj != full).any()
    gen = tf.gradient(*p.euclid, form="general", backend=backend)
    sep = tf.gradient(*p.euclid, form="separated", backend=backend)
    ref = naive.separated_gradient(*p.euclid)
    for g, s, r, name_ in zip(gen, sep, ref, ("grad_b", "omega")):
        assert s.dtype == np.float64
        assert_rel(s, g, RTOL, name_ + " separated vs general")
        assert_rel(s, r, RTOL, name_ + " separated vs naive moments")
        assert np.linalg.norm(g) > 0
    assert_rel(gen[0], naive.gradient(*p.euclid)[0], RTOL)
    mom = tf.cluster_moments(*p.euclid, backend=backend)
    nm = naive.moments(*p.euclid)
    assert set(mom) >= set(nm)
    for k in nm:
        assert_rel(mom[k], nm[k], RTOL, k)


def _violating(rng):
    """Separated data, then points of cluster 0 moved onto cluster 1's apex, and back."""
    p = separated_problem(rng, 3, 3, n_per=10)
    X = p.X.copy()
    i0 = np.flatnonzero(p.labels == 0)[:3]
    i2 = np.flatnonzero(p.labels == 2)[:2]
    X[i0] = p.X[p.labels == 1][:3]  # cluster 0 now truncated by layer 1
    X[i2] = p.X[p.labels == 0][3:5]  # cluster 2 now truncated by layer 0
    return Problem(p.R, p.b, X, p.labels, p.targets, p.W_out, p.b_out, p.Y)


def test_separation_error_names_clusters_and_layers(backend, rng):
    p = _violating(rng)
    expected = naive.separation_violations(p.R, p.b, p.X, p.labels, 3)
    assert {(j, l) for j, l, _ in expected} >= {(0, 1), (2, 0)}
    with pytest.raises(tf.SeparationError) as info:
        tf.gradient(*p.euclid, form="separated", backend=backend)
    err = info.value
    assert {tuple(v) for v in err.violations} == expected
    msg = str(err)
    for j, l, n in expected:
        assert f"cluster {j} truncated by layer {l}" in msg
    # the general form is fine on the same data
    assert_rel(tf.gradient(*p.euclid, backend=backend)[1], naive.gradient(*p.euclid)[1], RTOL)


def test_separated_needs_one_layer_per_cluster(backend, rng):
    p = make_problem(rng, N=10, M=3, L=2, Q=3)
    with pytest.raises(tf.SeparationError, match="L == Q"):
        tf.gradient(*p.euclid, form="separated", backend=backend)
    with pytest.raises(tf.InputError, match="targets"):
        tf.gradient(*p.euclid, form="separated", backend=backend)


def test_separated_rejects_empty_cluster(backend, rng):
    p = separated_problem(rng, 3, 2)
    keep = p.labels == 0
    with pytest.raises(tf.InputError, match="labels.*1"):
        tf.gradient(p.R, p.b, p.X[keep], p.labels[keep], p.targets, form="separated", backend=backend)


def test_repeated_layer_keeps_projected_points_on_the_shared_face(backend, rng):
    """τ_ℓ is idempotent: repeating a layer (W_{ℓ+1} = I, b_{ℓ+1} = 0 in the network)
    changes nothing, and the points it projected sit exactly on the shared faces,
    u = 0, so they count as truncated again (H(0) = 0).  Signed-permutation R keep
    the arithmetic exact (see DESIGN.md on faces shared up to rounding)."""
    M = 4
    p = make_problem(rng, N=40, M=M, L=1, Q=2, kind="boundary")
    p.X = 2.0 * p.X + 1.0  # odd integers: nothing on a face of the first layer
    R2 = np.concatenate([p.R, p.R])
    b2 = np.concatenate([p.b, p.b])
    codes = tf.sector_codes(R2, b2, p.X, backend=backend)
    np.testing.assert_array_equal(codes[:, 1], codes[:, 0])
    np.testing.assert_array_equal(codes, naive.codes(R2, b2, p.X))
    np.testing.assert_array_equal(tf.truncate(R2, b2, p.X, backend=backend), tf.truncate(p.R, p.b, p.X, backend=backend))
    gb, om = tf.gradient(R2, b2, p.X, p.labels, p.targets, backend=backend)
    ngb, nom = naive.gradient(R2, b2, p.X, p.labels, p.targets)
    assert_rel(gb, ngb, RTOL)
    assert_rel(om, nom, RTOL)


def test_separated_equilibria(backend, rng):
    """[Prop. 4.1] in the separated form: a cluster untruncated by its own layer has
    an exactly zero right-hand side; a fully truncated one with b_j = −R_j ỹ_j a
    zero one up to rounding (both forms)."""
    p = separated_problem(rng, 3, 3)
    p.b[1] += 5.0  # cluster 1: untruncated by layer 1
    p.b[2] = -p.R[2] @ p.targets[2]  # cluster 2: collapse point on its target ...
    shift = p.R[2] @ (np.eye(3)[2] * 10.0) + p.b[2]  # ... and all of it in the negative sector
    p.targets[2] += p.R[2].T @ (shift + 1.0)
    p.b[2] = -p.R[2] @ p.targets[2]
    assert naive.separation_violations(p.R, p.b, p.X, p.labels, 3) == set()
    codes = naive.codes(p.R, p.b, p.X)
    assert (codes[p.labels == 1, 1] == 7).all() and (codes[p.labels == 2, 2] == 0).all()
    for form in ("separated", "general"):
        gb, om = tf.gradient(*p.euclid, form=form, backend=backend)
        assert not gb[1].any() and not om[1].any(), form
        assert np.abs(gb[2]).max() <= 1e-14 * 100 and np.abs(om[2]).max() <= 1e-14 * 100, form
        assert np.abs(gb[0]).max() > 1e-6  # cluster 0 is partially truncated: not at rest
