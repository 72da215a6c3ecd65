"""Hypothesis property tests: random shapes (N, M, L = 1 included), points on
sector boundaries, duplicated points; every backend agrees with the naive
oracle.  Small sizes and bounded, derandomised examples keep them fast and
reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import naive
import truncfast as tf
from conftest import AVAILABLE_BACKENDS, RTOL, Problem, assert_rel, make_problem, separated_problem

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _check_all_backends(p: Problem) -> None:
    want_z = naive.truncate(p.R, p.b, p.X)
    want_codes = naive.codes(p.R, p.b, p.X) if p.X.shape[1] <= 64 else None
    want_loss = naive.loss(*p.euclid)
    want_grad = naive.gradient(*p.euclid)
    want_sloss = naive.standard_loss(*p.standard)
    want_sgrad = naive.standard_gradient(*p.standard)
    for bk in AVAILABLE_BACKENDS:
        assert_rel(tf.truncate(p.R, p.b, p.X, backend=bk), want_z, RTOL, f"{bk} truncate")
        np.testing.assert_array_equal(tf.sector_codes(p.R, p.b, p.X, backend=bk), want_codes)
        assert_rel(tf.loss(*p.euclid, backend=bk), want_loss, RTOL, f"{bk} loss")
        for g, w, name in zip(tf.gradient(*p.euclid, backend=bk), want_grad, ("grad_b", "omega")):
            assert_rel(g, w, RTOL, f"{bk} {name}")
        assert_rel(tf.standard_loss(*p.standard, backend=bk), want_sloss, RTOL, f"{bk} standard_loss")
        for g, w, name in zip(tf.standard_gradient(*p.standard, backend=bk), want_sgrad,
                              ("grad_b", "omega", "grad_W_out", "grad_b_out")):
            assert_rel(g, w, RTOL, f"{bk} standard {name}")


@st.composite
def seeded_problems(draw):
    N = draw(st.integers(1, 8))
    M = draw(st.integers(1, 4))
    L = draw(st.integers(1, 3))
    Q = draw(st.integers(1, 3))
    P = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["random", "boundary"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    p = make_problem(rng, N=N, M=M, L=L, Q=Q, P=P, kind=kind)
    if draw(st.booleans()):  # duplicated points
        idx = rng.integers(0, max(1, N // 2), size=N)
        p.X = p.X[idx]
    return p


@SETTINGS
@given(seeded_problems())
def test_backends_agree_with_naive_on_random_problems(p):
    _check_all_backends(p)


@st.composite
def integer_problems(draw):
    """Signed-permutation R, small-integer data and biases: exact sector boundaries."""
    M = draw(st.integers(1, 4))
    L = draw(st.integers(1, 3))
    N = draw(st.integers(1, 7))
    Q = draw(st.integers(1, 3))
    ints = st.integers(-2, 2)
    R = []
    for _ in range(L):
        perm = draw(st.permutations(range(M)))
        signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=M, max_size=M))
        R.append(np.eye(M)[list(perm)] * np.array(signs)[:, None])
    b = draw(hnp.arrays(np.float64, (L, M), elements=ints))
    X = draw(hnp.arrays(np.float64, (N, M), elements=ints))
    labels = draw(hnp.arrays(np.int64, (N,), elements=st.integers(0, Q - 1)))
    targets = draw(hnp.arrays(np.float64, (Q, M), elements=ints)) / 2
    P = draw(st.integers(1, 3))
    W_out = draw(hnp.arrays(np.float64, (P, M), elements=ints))
    if not W_out.any():
        W_out[0, 0] = 1.0
    b_out = draw(hnp.arrays(np.float64, (P,), elements=ints))
    Y = draw(hnp.arrays(np.float64, (Q, P), elements=ints))
    return Problem(np.array(R), b, X, labels, targets, W_out, b_out, Y)


@SETTINGS
@given(integer_problems())
def test_backends_agree_with_naive_on_sector_boundaries(p):
    _check_all_backends(p)


@SETTINGS
@given(seeded_problems(), st.integers(2, 3), st.randoms(use_true_random=False))
def test_gradient_is_a_mean_over_points(p, k, rnd):
    """Repeating every point k times, or reordering the points, changes nothing."""
    perm = list(range(len(p.X)))
    rnd.shuffle(perm)
    rep = Problem(p.R, p.b, np.repeat(p.X, k, axis=0), np.repeat(p.labels, k), p.targets,
                  p.W_out, p.b_out, p.Y)
    shuf = Problem(p.R, p.b, p.X[perm], p.labels[perm], p.targets, p.W_out, p.b_out, p.Y)
    for bk in AVAILABLE_BACKENDS:
        base = tf.gradient(*p.euclid, backend=bk)
        for q in (rep, shuf):
            assert_rel(tf.loss(*q.euclid, backend=bk), tf.loss(*p.euclid, backend=bk), RTOL)
            for g, w in zip(tf.gradient(*q.euclid, backend=bk), base):
                assert_rel(g, w, RTOL)


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 15), st.floats(0.01, 1.0),
       st.integers(0, 2**32 - 1), st.booleans())
def test_separated_form_on_random_separated_data(M, Q, n_per, spread, seed, outlier):
    """form="separated" equals the naive general gradient and the §6 moment
    formulas, or raises SeparationError listing exactly the naive violations."""
    Q = min(Q, M)
    rng = np.random.default_rng(seed)
    p = separated_problem(rng, M, Q, n_per=n_per, spread=spread)
    if outlier:  # deep in cluster 0's own negative sector: defeats the enclosing-ball shortcut
        i = np.flatnonzero(p.labels == 0)[0]
        p.X[i] -= 30.0 * (p.R[0].T @ np.ones(M))
    viol = naive.separation_violations(p.R, p.b, p.X, p.labels, Q)
    want = naive.gradient(*p.euclid)
    want_mom = naive.separated_gradient(*p.euclid)
    for bk in AVAILABLE_BACKENDS:
        if viol:
            with pytest.raises(tf.SeparationError) as info:
                tf.gradient(*p.euclid, form="separated", backend=bk)
            assert {tuple(v) for v in info.value.violations} == viol
            continue
        for g, w, m in zip(tf.gradient(*p.euclid, form="separated", backend=bk), want, want_mom):
            assert_rel(g, w, RTOL, f"{bk} vs general")
            assert_rel(g, m, RTOL, f"{bk} vs moments")
