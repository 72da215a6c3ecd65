"""The pattern form of the general flow (docs/theory.md §11): groups, moments, assembly, bound.

Oracles: ``tf.sector_codes`` (group membership, bit for bit), ``tf.loss`` /
``tf.gradient`` (the per-point kernels), the NumPy reference
``truncfast._kernels.patterns_reference`` (moments with np.unique / np.mean,
assembly with the explicit affine maps of §11) and, for the bound, the codes
recomputed at the perturbed state.
"""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from truncfast._kernels import reference as _reference
from truncfast._kernels import pattern_state as ps
from truncfast._kernels import patterns_moments as pm
from truncfast._kernels import patterns_reference as ref
from conftest import RTOL, assert_rel, make_problem, random_orthogonal, separated_problem

CHUNK = _config.CHUNK_SIZE


def _codes_all(R, b, X):
    """Sector codes by the default backend and by Numba (equal bits: same forward kernel)."""
    c = tf.sector_codes(R, b, X)
    np.testing.assert_array_equal(c, tf.sector_codes(R, b, X, backend="numba"))
    return c


def _check_membership(st, R, b, X, labels):
    codes = _codes_all(R, b, X)
    np.testing.assert_array_equal(st.keys[st.group_of], codes)
    np.testing.assert_array_equal(st.labs[st.group_of], labels)
    assert st.n.sum() == X.shape[0]
    np.testing.assert_array_equal(np.bincount(st.group_of, minlength=st.G), st.n)
    # distinct groups have distinct keys
    keys = np.concatenate([st.patterns, st.label.astype(np.uint64)[:, None]], axis=1)[st.n > 0]
    assert np.unique(keys, axis=0).shape[0] == keys.shape[0]


def _check_moments(st, X, rtol=1e-13):
    """Every group's count, mean and scatter against np.mean / a matrix product over its members."""
    for g in np.flatnonzero(st.n):
        pts = X[st.group_of == g]
        assert st.n[g] == pts.shape[0]
        mu = pts.mean(axis=0)
        d = pts - mu
        scale = max(1.0, float(np.abs(pts).max()))
        np.testing.assert_allclose(st.mean[g], mu, rtol=0, atol=rtol * scale)
        np.testing.assert_allclose(st.scatter[g], d.T @ d, rtol=0, atol=rtol * scale * scale * pts.shape[0])


def _check_assembly(st, R, b, X, labels, targets, rtol=RTOL):
    loss, gb, om = ps.assemble(st, R, b, targets)
    gb0, om0 = tf.gradient(R, b, X, labels, targets)
    assert_rel(loss, tf.loss(R, b, X, labels, targets), rtol, "loss")
    assert_rel(gb, gb0, rtol, "grad_b")
    assert_rel(om, om0, rtol, "omega")
    np.testing.assert_array_equal(om, -np.swapaxes(om, 1, 2))
    return loss, gb, om


def _duplicated(p, rng, copies=3):
    """The problem with every point repeated (groups with zero scatter) in shuffled order."""
    order = rng.permutation(np.repeat(np.arange(p.X.shape[0]), copies))
    return p.X[order].copy(), p.labels[order].copy()


def _clustered(rng, N, M, L, Q, spread=0.05):
    centres = 3.0 * rng.standard_normal((Q, M))
    labels = rng.integers(0, Q, N)
    labels[:Q] = np.arange(Q)
    X = centres[labels] + spread * rng.standard_normal((N, M))
    R = np.array([random_orthogonal(rng, M) for _ in range(L)])
    b = np.array([-R[l] @ centres[l % Q] + 0.05 * rng.standard_normal(M) for l in range(L)])
    return R, b, X, labels, rng.standard_normal((Q, M))


# ------------------------------------------------------- (i) membership ---

@pytest.mark.parametrize("kind", ["random", "boundary"])
@pytest.mark.parametrize("M,L,Q", [(1, 1, 1), (2, 2, 2), (3, 4, 5), (8, 2, 3), (64, 2, 2)])
def test_groups_equal_sector_codes(rng, kind, M, L, Q):
    p = make_problem(rng, N=700 if M < 64 else 150, M=M, L=L, Q=Q, kind=kind)
    st = ps.full_pass(p.R, p.b, p.X, p.labels, Q)
    _check_membership(st, p.R, p.b, p.X, p.labels)
    _check_moments(st, p.X)
    # ids: order of first appearance in row order (the reference numbers them so)
    go, pat, lab, n, mean, scat = ref.group_moments(tf.sector_codes(p.R, p.b, p.X), p.labels, p.X)
    np.testing.assert_array_equal(st.group_of, go)
    np.testing.assert_array_equal(st.patterns, pat)
    np.testing.assert_array_equal(st.label, lab)
    np.testing.assert_array_equal(st.n, n)
    if kind == "boundary":
        m, _, _ = ps.margins(st)
        assert (m == 0).any()  # exact zeros exercised
    if M == 64:  # bit 63 and the full mask of the counts
        assert (st.patterns >> np.uint64(63)).any()
        _check_assembly(st, *p.euclid)
        codes = tf.sector_codes(p.R, p.b, p.X)
        full = np.uint64(2**64 - 1)
        assert ps.counts(st)[:, :, 0].sum() == (codes == full).sum()


def test_groups_clustered_duplicated_and_many_chunks(rng):
    R, b, X, labels, T = _clustered(rng, 3 * CHUNK + 123, 3, 3, 3)
    st = ps.full_pass(R, b, X, labels, 3)
    _check_membership(st, R, b, X, labels)
    _check_moments(st, X)
    p = make_problem(rng, N=400, M=2, L=2, Q=2, kind="boundary")
    Xd, ld = _duplicated(p, rng)
    st = ps.full_pass(p.R, p.b, Xd, ld, 2)
    _check_membership(st, p.R, p.b, Xd, ld)
    _check_moments(st, Xd)


def test_max_groups_gives_up(rng):
    p = make_problem(rng, N=500, M=8, L=3, Q=2)
    full = ps.full_pass(p.R, p.b, p.X, p.labels, 2)
    assert ps.full_pass(p.R, p.b, p.X, p.labels, 2, max_groups=full.G) is not None
    assert ps.full_pass(p.R, p.b, p.X, p.labels, 2, max_groups=full.G - 1) is None


def test_counts_from_groups(rng):
    for kind in ("random", "boundary"):
        p = make_problem(rng, N=600, M=3, L=3, Q=4, kind=kind)
        st = ps.full_pass(p.R, p.b, p.X, p.labels, 4)
        codes = tf.sector_codes(p.R, p.b, p.X)
        want = np.zeros((3, 4, 3), np.int64)
        for l in range(3):
            cls = np.where(codes[:, l] == 7, 0, np.where(codes[:, l] == 0, 2, 1))
            np.add.at(want[l], (p.labels, cls), 1)
        np.testing.assert_array_equal(ps.counts(st), want)
        np.testing.assert_array_equal(ref.counts(st.patterns, st.label, st.n, 3, 4), want)


# --------------------------------------------------------- (ii) assembly ---

@pytest.mark.parametrize("M,L,Q", [(1, 1, 1), (1, 3, 2), (2, 1, 2), (2, 2, 2), (2, 4, 5), (3, 3, 4),
                                   (8, 1, 3), (8, 2, 2), (8, 4, 5)])
def test_assembly_equals_per_point_kernel(rng, M, L, Q):
    for kind in ("random", "boundary"):
        p = make_problem(rng, N=300, M=M, L=L, Q=Q, kind=kind)
        st = ps.full_pass(p.R, p.b, p.X, p.labels, Q)
        _check_assembly(st, *p.euclid)
        # the NumPy reference on the same groups
        loss, gb, om = ps.assemble(st, p.R, p.b, p.targets)
        rl, rgb, rom = ref.assemble(p.R, p.b, p.targets, st.patterns, st.label, st.n, st.mean, st.scatter, 300)
        assert_rel(loss, rl, RTOL, "loss vs reference")
        assert_rel(gb, rgb, RTOL, "grad_b vs reference")
        assert_rel(om, rom, RTOL, "omega vs reference")


def test_assembly_clustered_single_point_and_zero_scatter_groups(rng):
    # few big groups (clusters), M = 2..8
    for M, L, Q in ((2, 2, 2), (3, 3, 3), (8, 4, 5)):
        R, b, X, labels, T = _clustered(rng, 2000, M, L, Q)
        st = ps.full_pass(R, b, X, labels, Q)
        assert st.num_groups < 200
        _check_assembly(st, R, b, X, labels, T)
    # every point its own group (random data, M = 8): scatter exactly 0, n = 1
    p = make_problem(rng, N=200, M=8, L=4, Q=3)
    st = ps.full_pass(p.R, p.b, p.X, p.labels, 3)
    assert (st.n == 1).mean() > 0.9
    assert (st.scatter[st.n == 1] == 0).all()
    _check_assembly(st, *p.euclid)
    # duplicated points: groups of identical points, scatter (near) zero
    Xd, ld = _duplicated(p, rng, copies=4)
    st = ps.full_pass(p.R, p.b, Xd, ld, 3)
    assert (st.n % 4 == 0).all()
    _check_assembly(st, p.R, p.b, Xd, ld, p.targets)


def test_paper_2d_and_separated(rng):
    from truncfast.data import make_problem as data_problem

    pb = data_problem("paper-2d", n=5000, seed=3)
    st = ps.full_pass(pb.R0, pb.b0, pb.X, pb.labels, 2)
    _check_membership(st, pb.R0, pb.b0, pb.X, pb.labels)
    _check_assembly(st, pb.R0, pb.b0, pb.X, pb.labels, pb.targets)
    sp = separated_problem(rng, M=4, Q=3, n_per=300)
    st = ps.full_pass(sp.R, sp.b, sp.X, sp.labels, 3)
    _check_assembly(st, *sp.euclid)


# ----------------------------------------------------- (iii) determinism ---

def _snapshot(st, R, b, T):
    loss, gb, om = ps.assemble(st, R, b, T)
    m, rho, _ = ps.margins(st)
    return [st.group_of.copy(), st.patterns.copy(), st.label.copy(), st.n.copy(), st.mean.copy(),
            st.scatter.copy(), m, rho, np.float64(loss), gb, om]


def test_bitwise_for_any_thread_count(rng):
    # several chunks, and more groups than one assembly block
    p = make_problem(rng, N=3 * CHUNK + 77, M=3, L=3, Q=4)
    dR = np.array([random_orthogonal(rng, 3) for _ in range(3)])
    old = tf.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            tf.set_num_threads(threads)
            st = ps.full_pass(p.R, p.b, p.X, p.labels, 4)
            assert st.G > _config.PATTERN_ASSEMBLY_BLOCK
            snap = _snapshot(st, p.R, p.b, p.targets)
            # a recheck at another state (moves, new generation)
            R2 = np.array([np.linalg.qr(np.eye(3) + 1e-3 * d)[0] for d in dR]) @ p.R
            idx = ps.at_risk(st, R2, p.b + 1e-3)
            ps.recheck(st, idx, R2, p.b + 1e-3, p.X, p.labels)
            results.append(snap + _snapshot(st, R2, p.b + 1e-3, p.targets) + [idx])
    finally:
        tf.set_num_threads(old)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


# -------------------------------------------------- (iv) add / remove ---

def test_add_remove_round_trip_and_drift(rng):
    M = 3
    X = np.concatenate([rng.normal(5.0, 1e-3, (400, M)), rng.normal(-2.0, 2.0, (400, M))])
    tn, tmean, tscat = np.zeros(2, np.int64), np.zeros((2, M)), np.zeros((2, M, M))
    rows = np.arange(800)
    pm.group_add(tn, tmean, tscat, 0, X, rows)
    n0, m0, C0 = tn[0], tmean[0].copy(), tscat[0].copy()
    # remove / re-add random subsets many times: back to the batch moments within a small drift
    worst = 0.0
    for _ in range(200):
        sub = rng.choice(800, size=rng.integers(1, 60), replace=False)
        pm.group_remove(tn, tmean, tscat, 0, X, sub)
        pm.group_add(tn, tmean, tscat, 0, X, sub)
        worst = max(worst, float(np.abs(tscat[0] - C0).max() / np.abs(C0).max()))
    assert tn[0] == n0
    assert worst < 1e-13, worst
    assert np.abs(tmean[0] - m0).max() < 1e-13 * np.abs(X).max()
    # remove the wide half: the tight half is left, its scatter with an absolute
    # error of order u · |C_before| (documented drift), not relative to its own size
    pm.group_remove(tn, tmean, tscat, 0, X, np.arange(400, 800))
    d = X[:400] - X[:400].mean(axis=0)
    exact = d.T @ d
    err = float(np.abs(tscat[0] - exact).max())
    assert err < 1e-12 * np.abs(C0).max(), err
    np.testing.assert_allclose(tmean[0], X[:400].mean(axis=0), rtol=0, atol=1e-12 * np.abs(X).max())
    # one point at a time (Welford) agrees with the batch
    tn2, tmean2, tscat2 = np.zeros(1, np.int64), np.zeros((1, M)), np.zeros((1, M, M))
    for r in range(800):
        pm.group_add(tn2, tmean2, tscat2, 0, X, np.array([r]))
    assert_rel(tscat2[0], C0, 1e-13, "Welford scatter")
    # emptying a group gives exact zeros
    pm.group_remove(tn2, tmean2, tscat2, 0, X, rows)
    assert tn2[0] == 0 and not tmean2.any() and not tscat2.any()


def test_recheck_equals_rebuild(rng):
    R, b, X, labels, T = _clustered(rng, 2 * CHUNK + 5, 3, 3, 3, spread=0.5)
    st = ps.full_pass(R, b, X, labels, 3)
    Rn, bn = R.copy(), b.copy()
    for step in range(5):
        Om = rng.standard_normal((3, 3, 3)) * 0.02
        Om = Om - np.swapaxes(Om, 1, 2)
        Rn = np.array([np.linalg.solve(np.eye(3) - o / 2, np.eye(3) + o / 2) for o in Om]) @ Rn
        bn = bn + 0.02 * rng.standard_normal(bn.shape)
        idx = ps.at_risk(st, Rn, bn)
        ps.recheck(st, idx, Rn, bn, X, labels)
        _check_membership(st, Rn, bn, X, labels)
    assert st.stats["moved_points"] > 0
    fresh = ps.full_pass(Rn, bn, X, labels, 3)
    # same groups (keyed by pattern and label), moments within the documented drift
    key = {(tuple(p), l): g for g, (p, l) in enumerate(zip(fresh.patterns.tolist(), fresh.label.tolist()))}
    for g in np.flatnonzero(st.n):
        f = key[(tuple(st.patterns[g].tolist()), int(st.label[g]))]
        assert st.n[g] == fresh.n[f]
        np.testing.assert_allclose(st.mean[g], fresh.mean[f], rtol=0, atol=1e-13 * np.abs(X).max())
        np.testing.assert_allclose(st.scatter[g], fresh.scatter[f], rtol=0,
                                   atol=1e-12 * max(1.0, np.abs(fresh.scatter[f]).max()))
    _check_assembly(st, Rn, bn, X, labels, T)


# -------------------------------------------------------- (v) the bound ---

def _cayley(rng, M, eps):
    if M == 1:  # O(1) = {±1}: no small rotations
        return np.eye(1)
    O = rng.standard_normal((M, M))
    O = O - O.T
    O *= eps / np.linalg.norm(O, 2)
    return np.linalg.solve(np.eye(M) - O / 2, np.eye(M) + O / 2)


def _near_boundary_points(rng, R, b, n, deltas):
    """Points with one pre-activation pushed to ±δ (layer 1 exactly in its affine piece, deeper by Newton)."""
    L, M, _ = R.shape
    pts = []
    for k in range(n):
        x = rng.standard_normal(M) * 2.0
        l = rng.integers(0, L)
        i = rng.integers(0, M)
        delta = deltas[k % len(deltas)] * rng.choice([-1.0, 1.0])
        for _ in range(3):
            z = x.copy()
            A = np.eye(M)
            for q in range(l):
                u = R[q] @ z + b[q]
                h = (u > 0).astype(float)
                P = R[q].T @ np.diag(h) @ R[q]
                z = R[q].T @ (np.maximum(R[q] @ z, -b[q]))
                A = P @ A
            u = R[l] @ z + b[l]
            w = (R[l] @ A)[i]
            if not np.any(w):
                break
            x = x + (delta - u[i]) * w / (w @ w)
        pts.append(x)
    return np.array(pts)


def _check_sound(st, R, b, X, Rt, bt):
    """Points not returned by at_risk have, at (Rt, bt), the pattern of their group."""
    risk = ps.at_risk(st, Rt, bt)
    safe = np.ones(X.shape[0], bool)
    safe[risk] = False
    codes = _codes_all(Rt, bt, X)
    bad = np.flatnonzero(safe & (codes != st.keys[st.group_of]).any(axis=1))
    assert bad.size == 0, f"{bad.size} points declared safe changed pattern, e.g. {bad[:5]}"
    return risk.size, int((codes != st.keys[st.group_of]).any(axis=1).sum())


@pytest.mark.parametrize("M,L", [(1, 1), (2, 2), (3, 4), (8, 3)])
def test_bound_is_sound(rng, M, L):
    R = np.array([random_orthogonal(rng, M) for _ in range(L)])
    b = 0.5 * rng.standard_normal((L, M))
    X = np.concatenate([rng.standard_normal((1500, M)) * 2.0,
                        _near_boundary_points(rng, R, b, 1500, [0.0, 1e-16, 1e-15, 1e-14, 1e-12, 1e-10, 1e-8,
                                                                1e-6, 1e-4])])
    labels = rng.integers(0, 2, X.shape[0])
    st = ps.full_pass(R, b, X, labels, 2)
    m, _, _ = ps.margins(st)
    assert (m < 1e-10).sum() > 100  # the near-boundary points are there
    safe_seen = changed_seen = 0
    for eps in (0.0, 1e-16, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 0.3, 0.6):
        for beta in (0.0, 1e-15, 1e-11, 1e-7, 1e-3, 0.1):
            for _ in range(2):
                Rt = np.array([_cayley(rng, M, eps) for _ in range(L)]) @ R if eps else R.copy()
                d = rng.standard_normal((L, M))
                bt = b + beta * d / np.linalg.norm(d, axis=1, keepdims=True)
                nrisk, nchanged = _check_sound(st, R, b, X, Rt, bt)
                safe_seen += X.shape[0] - nrisk
                changed_seen += nchanged
    assert safe_seen > 0 and changed_seen > 0  # neither vacuous side


@pytest.mark.parametrize("delta,beta", [(1e-3, 0.0), (0.3, 0.0), (1e-6, 1e-6), (0.05, 0.2), (-0.2, 1e-3)])
def test_bound_is_attained_for_one_layer(rng, delta, beta):
    """L = 1, M = 2: points placed where the change of u is exactly the bound ε|x| + β.

    Rᶜ → R = rot(δ) Rᶜ, bᶜ → bᶜ + β e₀; the points x = s ŵ with (R − Rᶜ) ŵ = ε e₀
    get Δu₀ = ε s + β = Δ, and are placed at uᶜ₀ = −f Δ, f ∈ (0.55, 1): every one
    changes pattern while its margin f Δ is above half the bound, so a bound too
    small by a factor 2 (in ε or β) would certify some of them.
    """
    Rc = random_orthogonal(rng, 2)[None]
    rot = np.array([[np.cos(delta), -np.sin(delta)], [np.sin(delta), np.cos(delta)]])
    R = (rot @ Rc[0])[None]
    bc = np.array([[-1.0, 0.3]])
    b = bc + np.array([[beta, 0.0]])
    D = R[0] - Rc[0]
    eps = np.linalg.norm(D, 2)
    w = eps * np.linalg.solve(D, [1.0, 0.0])  # unit vector, D w = ε e₀
    f = rng.uniform(0.55, 0.999, 400)
    s = (1.0 - f * beta) / ((Rc[0] @ w)[0] + f * eps)  # solves s (Rᶜw)₀ + bᶜ₀ = −f (ε s + β)
    assert (s > 0).all()
    X = s[:, None] * w[None]
    st = ps.full_pass(Rc, bc, X, np.zeros(400, np.int64), 1)
    risk = ps.at_risk(st, R, b)
    codes = tf.sector_codes(R, b, X)
    changed = np.flatnonzero((codes != st.keys[st.group_of]).any(axis=1))
    assert changed.size > 350  # nearly all of them cross (f < 1)
    assert np.isin(changed, risk).all()


def test_bound_covers_non_orthogonal_R():
    """R = (sI, −sI), s = 1 + 10⁻⁶: a point truncated in direction 0 at layer 1 sees
    u_2,0 change by exactly (1 + s²) β when b_1,0 and b_2,0 both move by β.  Placed
    at margins between 2β (the bound with ν = 1) and (1 + s²) β, it flips; the
    bound with ν ≥ ‖R‖₂ must flag it.  (At the API's orthogonality tolerance,
    10⁻⁸, this window is below the float32 resolution of the stored margins; the
    kernels accept any R, so the test uses a larger defect.)"""
    s_ = 1.0 + 1e-6
    R = np.array([s_ * np.eye(2), -s_ * np.eye(2)])
    X = np.array([[-5.0, 5.0]])
    beta = 0.1
    window = (1.0 + s_ * s_) * beta - 2.0 * beta
    for w in np.linspace(0.05, 0.95, 19):
        m = 2.0 * beta + w * window
        bc = np.array([[0.0, 0.0], [-m, 10.0]])
        b = bc + np.array([[beta, 0.0], [beta, 0.0]])
        st = ps.full_pass(R, bc, X, np.zeros(1, np.int64), 1)
        # it flips; codes by the NumPy backend without validation (R is outside the API's
        # tolerance), in the kernels' form z = Rᵀ max(R z, −b) the bound is derived for
        assert (_reference.sector_codes(R, b, X) != st.patterns[st.group_of]).any()
        assert ps.at_risk(st, R, b).tolist() == [0]


def test_bound_covers_rounding(rng, monkeypatch):
    """Margins of a few ulps and state changes below one ulp: the computed codes can flip
    by rounding alone, which the exact-arithmetic bound does not cover; the rounding
    term does (and without it this test finds unsound declarations)."""
    cases = []
    for M, L in ((2, 1), (2, 2), (3, 2), (8, 4)) * 4:
        R = np.array([random_orthogonal(rng, M) for _ in range(L)])
        b = 3.0 * rng.standard_normal((L, M))
        X = _near_boundary_points(rng, R, b, 2000, [0.0])
        X = np.concatenate([X, 30.0 * X])
        st = ps.full_pass(R, b, X, np.zeros(X.shape[0], np.int64), 1)
        for _ in range(25):
            Rt = np.array([_cayley(rng, M, 10 ** rng.uniform(-19, -15)) for _ in range(L)]) @ R
            bt = b.copy()
            mask = rng.random(b.shape) < 0.5
            bt[mask] = np.nextafter(bt[mask], rng.choice([-np.inf, np.inf], size=int(mask.sum())))
            cases.append((st, X, Rt, bt, tf.sector_codes(Rt, bt, X)))

    def unsound():
        bad = 0
        for st, X, Rt, bt, codes in cases:
            safe = np.ones(X.shape[0], bool)
            safe[ps.at_risk(st, Rt, bt)] = False
            bad += int((safe & (codes != st.keys[st.group_of]).any(axis=1)).sum())
        return bad

    assert unsound() == 0
    monkeypatch.setattr(_config, "PATTERN_ROUNDING_FACTOR", 0.0)
    assert unsound() > 0  # the cases do exercise rounding


def test_bound_at_the_reference_and_exact_zeros(rng):
    p = make_problem(rng, N=500, M=3, L=3, Q=2, kind="boundary")
    st = ps.full_pass(p.R, p.b, p.X, p.labels, 2)
    m, _, _ = ps.margins(st)
    risk = ps.at_risk(st, p.R, p.b)
    # m = 0 points are always at risk; at the reference nothing else is
    np.testing.assert_array_equal(risk, np.flatnonzero(m == 0))
    # any change of the state puts every m = 0 point at risk too
    assert np.isin(np.flatnonzero(m == 0), ps.at_risk(st, p.R, p.b + 1e-300)).all()


def test_theory_bound_dominates_the_change(rng):
    """max_ℓ |u_ℓ(θ) − u_ℓ(θᶜ)|_∞ ≤ (2L − 1) ε ρ + L β for every point (ν = 1 to rounding)."""
    M, L = 3, 4
    R = np.array([random_orthogonal(rng, M) for _ in range(L)])
    b = 0.5 * rng.standard_normal((L, M))
    X = rng.standard_normal((2000, M)) * 2.0
    st = ps.full_pass(R, b, X, np.zeros(2000, np.int64), 1)
    _, rho, _ = ps.margins(st)

    def u_all(R, b):
        z, out = X.copy(), []
        for l in range(L):
            v = z @ R[l].T
            out.append(v + b[l])
            z = np.maximum(v, -b[l]) @ R[l]
        return np.stack(out, axis=1)  # (N, L, M)

    u0 = u_all(R, b)
    worst = 0.0
    for eps in (1e-8, 1e-4, 1e-2, 0.2):
        for beta in (1e-8, 1e-3, 0.3):
            Rt = np.array([_cayley(rng, M, eps) for _ in range(L)]) @ R
            d = rng.standard_normal((L, M))
            bt = b + beta * d / np.linalg.norm(d, axis=1, keepdims=True)
            e = np.linalg.norm(Rt - R, axis=(1, 2)).max()
            bb = np.linalg.norm(bt - b, axis=1).max()
            bound = (2 * L - 1) * e * rho.astype(float) + L * bb
            change = np.abs(u_all(Rt, bt) - u0).max(axis=(1, 2))
            assert (change <= bound * (1 + 1e-9)).all()
            worst = max(worst, float((change / bound).max()))
    assert worst > 0.05  # the bound is not absurdly loose on random data


def test_many_generations_stay_exact(rng):
    """A run of small steps: at every step, at_risk + recheck keep every point's group exact."""
    R, b, X, labels, T = _clustered(rng, CHUNK + 300, 2, 2, 2, spread=0.3)
    X = np.concatenate([X, _near_boundary_points(rng, R, b, 200, [0.0, 1e-14, 1e-9])])
    labels = np.concatenate([labels, rng.integers(0, 2, 200)])
    st = ps.full_pass(R, b, X, labels, 2)
    for step in range(3 * _config.PATTERN_GENERATIONS_MAX):
        R = np.array([_cayley(rng, 2, 3e-3) for _ in range(2)]) @ R
        b = b + 3e-3 * rng.standard_normal(b.shape)
        idx = ps.at_risk(st, R, b)
        ps.recheck(st, idx, R, b, X, labels)
        assert len(st.gens) <= _config.PATTERN_GENERATIONS_MAX
        _check_membership(st, R, b, X, labels)
        if step % 8 == 0:
            _check_assembly(st, R, b, X, labels, T)
    assert st.stats["rechecked_points"] < 0.5 * X.shape[0] * 3 * _config.PATTERN_GENERATIONS_MAX
    assert st.stats["folded_points"] > 0 and st.stats["compactions"] > 0  # both paths ran
    _check_assembly(st, R, b, X, labels, T)


# ------------------------------------------------------------ (vi) C core ---

def _c_available():
    from truncfast._kernels import patterns_c

    return patterns_c.available()


@pytest.mark.skipif(not _c_available(), reason="C core with the pattern kernels not built")
@pytest.mark.parametrize("M,L,kind", [(1, 1, "random"), (2, 2, "boundary"), (3, 4, "random"), (8, 3, "random"),
                                      (8, 2, "boundary"), (20, 2, "random")])
def test_c_equals_numba_bitwise(rng, M, L, kind):
    from truncfast._kernels import ccore as _ccore

    p = make_problem(rng, N=2 * CHUNK + 311, M=M, L=L, Q=3, kind=kind)
    old = tf.get_num_threads()
    try:
        for threads in (1, 3):
            tf.set_num_threads(threads)
            before = dict(_ccore.calls)
            sn = ps.full_pass(p.R, p.b, p.X, p.labels, 3, backend="numba")
            sc = ps.full_pass(p.R, p.b, p.X, p.labels, 3, backend="c")
            a = _snapshot(sn, p.R, p.b, p.targets)
            c = _snapshot(sc, p.R, p.b, p.targets)
            # the assembly of the C core on the same groups
            lc, gc, oc = ps.assemble(sn, p.R, p.b, p.targets, backend="c")
            for x, y in zip(a + a[-3:], c + [np.float64(lc), gc, oc]):
                assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
            # rechecks at another state
            Rt = np.array([_cayley(rng, M, 0.05) for _ in range(L)]) @ p.R
            bt = p.b + 0.05
            idx = ps.at_risk(sn, Rt, bt)
            np.testing.assert_array_equal(idx, ps.at_risk(sc, Rt, bt))
            ps.recheck(sn, idx, Rt, bt, p.X, p.labels, backend="numba")
            ps.recheck(sc, idx, Rt, bt, p.X, p.labels, backend="c")
            for x, y in zip(_snapshot(sn, Rt, bt, p.targets), _snapshot(sc, Rt, bt, p.targets)):
                assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
            for name in ("pattern_pass", "pattern_moments", "pattern_assemble", "pattern_stats"):
                assert _ccore.calls[name] > before.get(name, 0), name  # the C path did run
    finally:
        tf.set_num_threads(old)


def test_at_risk_limit(rng):
    p = make_problem(rng, N=3000, M=3, L=3, Q=2)
    st = ps.full_pass(p.R, p.b, p.X, p.labels, 2)
    ps.recheck(st, np.arange(0, 3000, 7), p.R, p.b + 1e-3, p.X, p.labels)  # two generations
    for eps in (1e-3, 3e-2, 0.7):
        Rt = np.array([_cayley(rng, 3, eps) for _ in range(3)]) @ p.R
        full = ps.at_risk(st, Rt, p.b + eps)
        assert full.size > 0
        np.testing.assert_array_equal(ps.at_risk(st, Rt, p.b + eps, limit=full.size), full)
        assert ps.at_risk(st, Rt, p.b + eps, limit=full.size - 1) is None
        assert ps.at_risk(st, Rt, p.b + eps, limit=0) is None
