"""Sizes that cross the kernels' internal boundaries: point blocks
(``_config.BLOCK_SIZE``) with remainders, several reduction chunks
(``_config.CHUNK_SIZE``), wider layers and deeper stacks."""

from __future__ import annotations

import numpy as np
import pytest

import naive
import truncfast as tf
from truncfast import _config
from conftest import RTOL, assert_rel, make_problem, separated_problem


@pytest.mark.parametrize("shape", [(130, 17, 4, 3, 5), (67, 8, 5, 2, 8), (200, 3, 2, 4, 2), (128, 3, 3, 2, 2), (64, 2, 2, 2, 1),
                          (20, 70, 2, 2, 3)],
                         ids=lambda s: "N%d-M%d-L%d-Q%d-P%d" % s)
def test_block_remainders_and_wide_layers_vs_naive(backend, rng, shape):
    N, M, L, Q, P = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q, P=P)
    # make a fifth of the points fully truncated and a fifth untruncated at layer 0
    k = N // 5
    shift = rng.uniform(0.1, 2.0, size=(2 * k, M))
    p.X[:k] = (-p.b[0] - shift[:k]) @ p.R[0]
    p.X[k:2 * k] = (-p.b[0] + shift[k:]) @ p.R[0]
    assert_rel(tf.truncate(p.R, p.b, p.X, backend=backend), naive.truncate(p.R, p.b, p.X), RTOL)
    if M <= 64:
        codes = naive.codes(p.R, p.b, p.X)
        full = np.uint64(2**M - 1)
        assert (codes == 0).any() and (codes == full).any() and ((codes != 0) & (codes != full)).any()
        np.testing.assert_array_equal(tf.sector_codes(p.R, p.b, p.X, backend=backend), codes)
    for g, w in zip(tf.gradient(*p.euclid, backend=backend), naive.gradient(*p.euclid)):
        assert_rel(g, w, RTOL)
    for g, w in zip(tf.standard_gradient(*p.standard, backend=backend), naive.standard_gradient(*p.standard)):
        assert_rel(g, w, RTOL)


@pytest.fixture(scope="module", params=[77, 0], ids=["remainder", "exact-multiple"])
def many_chunks(request):
    rng = np.random.default_rng(20260)
    N = 2 * _config.CHUNK_SIZE + request.param
    return make_problem(rng, N=N, M=4, L=3, Q=3, P=2)


def test_several_chunks_agree_with_reference(backend, many_chunks):
    """Many reduction chunks: every backend agrees with the NumPy reference
    (itself checked against the naive loop everywhere else)."""
    p = many_chunks
    assert_rel(tf.truncate(p.R, p.b, p.X, backend=backend), tf.truncate(p.R, p.b, p.X, backend="numpy"), RTOL)
    np.testing.assert_array_equal(tf.sector_codes(p.R, p.b, p.X, backend=backend),
                                  tf.sector_codes(p.R, p.b, p.X, backend="numpy"))
    assert_rel(tf.loss(*p.euclid, backend=backend), tf.loss(*p.euclid, backend="numpy"), RTOL)
    for g, w in zip(tf.gradient(*p.euclid, backend=backend), tf.gradient(*p.euclid, backend="numpy")):
        assert_rel(g, w, RTOL)
    for g, w in zip(tf.standard_gradient(*p.standard, backend=backend),
                    tf.standard_gradient(*p.standard, backend="numpy")):
        assert_rel(g, w, RTOL)
    # and a slice of it against the naive loop, through the same backend
    idx = np.r_[0:5, _config.CHUNK_SIZE - 3:_config.CHUNK_SIZE + 3, len(p.X) - 5:len(p.X)]
    assert_rel(tf.truncate(p.R, p.b, p.X, backend=backend)[idx], naive.truncate(p.R, p.b, p.X[idx]), RTOL)


def test_separated_moments_over_several_chunks(backend):
    rng = np.random.default_rng(7)
    p = separated_problem(rng, 3, 3, n_per=_config.CHUNK_SIZE // 2 + 11)
    sep = tf.gradient(*p.euclid, form="separated", backend=backend)
    gen = tf.gradient(*p.euclid, form="general", backend="numpy")
    for s, g in zip(sep, gen):
        assert_rel(s, g, RTOL)


def test_numba_caches_depend_on_the_modules_they_freeze():
    """A cached gradient kernel holds _config.ACC_LANES and the compiled integrator
    loop holds the kernels: their cache stamps must include those files, or an
    edit would leave stale code (and break C == Numba) until the cache is cleared."""
    from truncfast._kernels import numba_kernels as _kernels_numba
    from truncfast._kernels import step_loop

    for fn, n_deps in [(_kernels_numba.general_chunk, 1), (_kernels_numba.general_range, 1),
                       (step_loop.compiled_steps, 3)]:
        own, deps = fn._cache._cache_file._source_stamp
        assert len(deps) == n_deps and all(d is not None for d in deps)
