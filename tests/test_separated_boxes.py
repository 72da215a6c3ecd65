"""The one-pass separation proof of the separated form (docs/theory.md §6).

``truncfast._flow.separated.separated_by_boxes`` decides "cluster-separated" from each
cluster's bounding box in its own frame.  It is a *sufficient* test, so it must
never say yes when the per-point check of the full composition (the NumPy
reference ``separation_violations``) finds a violation; when it is
inconclusive the slower checks must still give the exact answer.
"""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from conftest import separated_problem
from truncfast._backends import registry as _backends
from truncfast._kernels import reference as _reference
from truncfast._flow import separated as _separated


def _box(p, Q):
    return _reference.separated_box(p.R, p.X, p.labels, Q)


def _violations(p, Q):
    return _reference.separation_violations(p.R, p.b, p.X, p.labels, Q)


def _near_separated(seed):
    rng = np.random.default_rng(seed)
    M = int(rng.integers(2, 6))
    Q = int(rng.integers(1, M + 1))
    p = separated_problem(rng, M=M, Q=Q, n_per=int(rng.integers(1, 30)), spread=float(rng.uniform(0.05, 4.0)))
    p.b = p.b + rng.normal(0.0, float(rng.uniform(0.0, 3.0)), p.b.shape)  # often breaks separation
    lo, hi = _box(p, Q)
    return _separated.separated_by_boxes(p.R, p.b, lo, hi), bool(_violations(p, Q).any())


def test_boxes_never_accept_a_violation():
    """Soundness on random near-separated problems: box says yes ⇒ no violations.

    The seeds cover both outcomes (measured: 22 accepted, 36 with violations,
    2 separated but inconclusive), so the implication is tested, not vacuous.
    """
    outcomes = [_near_separated(seed) for seed in range(60)]
    for seed, (accepted, violated) in enumerate(outcomes):
        assert not (accepted and violated), f"seed {seed}: boxes accepted a problem with violations"
    assert sum(a for a, _ in outcomes) >= 10 and sum(v for _, v in outcomes) >= 10


def test_boxes_accept_the_papers_setting():
    """The benchmark's cluster data (one cluster per layer) is proven separated by the boxes alone."""
    from truncfast import data

    prob = data.make_problem("clusters", n=4000, dim=8, clusters=8, seed=0)
    lo, hi = _reference.separated_box(prob.R0, prob.X, prob.labels, 8)
    assert _separated.separated_by_boxes(prob.R0, prob.b0, lo, hi)
    assert not _reference.separation_violations(prob.R0, prob.b0, prob.X, prob.labels, 8).any()


def test_box_image_under_own_truncation_is_exact(rng):
    """τ_j maps the box of cluster j onto the box [max(lo + b, 0) − b, max(hi + b, 0) − b] of its frame."""
    p = separated_problem(rng, M=4, Q=3, n_per=200, spread=0.5)
    lo, hi = _box(p, 3)
    for j in range(3):
        Xj = p.X[p.labels == j]
        # R_j τ_j(x) in the frame of layer j, with v = R_j x summed as the reference (and the
        # kernels) sum it, so that the box and t hold the same rounded v
        t = np.maximum(_reference._matvec(p.R[j], Xj) + p.b[j], 0.0) - p.b[j]
        np.testing.assert_array_equal(t.min(axis=0), np.maximum(lo[j] + p.b[j], 0.0) - p.b[j])
        np.testing.assert_array_equal(t.max(axis=0), np.maximum(hi[j] + p.b[j], 0.0) - p.b[j])


@pytest.mark.parametrize("backend", ["numpy", "numba", "c"])
def test_moments_box_matches_reference(backend, rng):
    if tf.backends()[backend] != "available":
        pytest.skip(f"backend {backend} unavailable")
    p = separated_problem(rng, M=5, Q=4, n_per=3000, spread=0.3)
    S0, S1, S2, counts, lo, hi = _backends.get(backend).moments_box(p.R, p.b, p.X, p.labels, 4)
    c_ref, S0r, S1r, S2r = _reference.separated_moments(p.R, p.b, p.X, p.labels, 4)
    lo_r, hi_r = _box(p, 4)
    np.testing.assert_array_equal(counts, c_ref)
    np.testing.assert_array_equal(S0, S0r)
    np.testing.assert_allclose(S1, S1r, rtol=1e-12, atol=1e-12 * np.abs(S1r).max())
    np.testing.assert_allclose(S2, S2r, rtol=1e-12, atol=1e-12 * np.abs(S2r).max())
    # v = R_j x is a sum of M products: a few ulps between summation orders
    np.testing.assert_allclose(lo, lo_r, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(hi, hi_r, rtol=1e-13, atol=1e-13)


def test_inconclusive_boxes_fall_back_to_the_exact_check(monkeypatch):
    """A thin diagonal cluster whose box, but not the cluster, reaches into another
    layer's truncated region: the box test says "don't know", the exact check accepts.

    Cluster 0 is the segment x = s(1, −1), s ∈ [−1, 1]; R_0 = I, so its box is
    [−1, 1]².  Layer 1 (R_1 = [[1, 1], [1, −1]]/√2, b_1 = (0.5, 1.5)) sees
    u = (0.5, 1.5 + √2 s) > 0 on the segment, but u_0 = 0.5 − √2 < 0 at the
    corner (−1, −1) of the box (and the enclosing ball, radius √2, fails too).
    """
    M = 2
    R = np.array([np.eye(M), np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)])
    b = np.array([[5.0, 5.0], [0.5, 1.5]])  # layer 0 truncates nothing of either cluster
    s = np.linspace(-1.0, 1.0, 101)
    X = np.vstack([np.stack([s, -s], axis=1), [[30.0, -2.0], [31.0, -2.5]]])
    labels = np.array([0] * len(s) + [1, 1])
    targets = np.array([[0.0, 1.0], [2.0, 0.0]])
    lo, hi = _reference.separated_box(R, X, labels, 2)
    assert not _separated.separated_by_boxes(R, b, lo, hi)
    assert not _reference.separation_violations(R, b, X, labels, 2).any()
    called = []
    from truncfast._backends.local import LocalBackend

    real = LocalBackend.separation
    monkeypatch.setattr(LocalBackend, "separation", lambda *a: called.append(1) or real(*a))
    for backend in ("numpy", "numba"):
        gb, om = tf.gradient(R, b, X, labels, targets, form="separated", backend=backend)
        gbg, omg = tf.gradient(R, b, X, labels, targets, form="general", backend="numpy")
        np.testing.assert_allclose(gb, gbg, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(om, omg, rtol=1e-12, atol=1e-14)
    assert called == [1, 1]


def test_violation_still_raises_after_the_box_pass(rng):
    p = separated_problem(rng, M=3, Q=3, n_per=20)
    bad_b = p.b.copy()
    bad_b[2] = -50.0  # layer 2 now truncates every cluster
    with pytest.raises(tf.SeparationError, match="truncated by layer 2"):
        tf.gradient(p.R, bad_b, p.X, p.labels, p.targets, form="separated")
