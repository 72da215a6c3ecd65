"""One target per point (Q = N, as in regression): same results, and no O(Q) work per chunk.

Past ``_config.TARGETS_CACHE_ROWS`` targets the kernels rotate each point's
target into the last layer's frame on the fly instead of rotating every target
once per chunk (Numba) or per call (C, a Q×M temporary).  The two paths do the
same operations in the same order, so the gradient with many targets must have
the very bits of the gradient with only the targets the labels use.
"""

from __future__ import annotations

import numpy as np
import pytest

import naive
import truncfast as tf
from conftest import RTOL, assert_rel, make_problem
from truncfast import _config

BIG = _config.TARGETS_CACHE_ROWS + 5


def test_unused_extra_targets_change_no_bit(backend, rng):
    """Targets beyond those the labels use switch the kernels to per-point rotation: same bits."""
    p = make_problem(rng, N=700, M=5, L=3, Q=4)
    T_big = np.vstack([p.targets, rng.standard_normal((BIG - 4, 5))])
    small = tf.gradient(p.R, p.b, p.X, p.labels, p.targets, backend=backend)
    big = tf.gradient(p.R, p.b, p.X, p.labels, T_big, backend=backend)
    for a, c in zip(big, small):
        assert a.tobytes() == c.tobytes()
    assert tf.loss(p.R, p.b, p.X, p.labels, T_big, backend=backend) == \
        tf.loss(p.R, p.b, p.X, p.labels, p.targets, backend=backend)


def test_one_target_per_point_matches_the_naive_oracle(backend, rng):
    N = BIG + 300
    p = make_problem(rng, N=N, M=4, L=3, Q=2)
    labels = np.arange(N)
    T = rng.standard_normal((N, 4))
    gb, om = tf.gradient(p.R, p.b, p.X, labels, T, backend=backend)
    gb0, om0 = naive.gradient(p.R, p.b, p.X, labels, T)
    assert_rel(gb, gb0, RTOL, "grad_b")
    assert_rel(om, om0, RTOL, "omega")


def test_c_and_numba_agree_bitwise_with_many_targets(rng):
    if tf.backends()["c"] != "available":
        pytest.skip("C core not built")
    N = BIG + 77
    p = make_problem(rng, N=N, M=8, L=4, Q=2)
    labels = rng.integers(0, N, N)
    T = rng.standard_normal((N, 8))
    for a, c in zip(tf.gradient(p.R, p.b, p.X, labels, T, backend="c"),
                    tf.gradient(p.R, p.b, p.X, labels, T, backend="numba")):
        assert a.tobytes() == c.tobytes()
