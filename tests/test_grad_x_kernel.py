"""The data / target gradient kernel (truncfast/_kernels/grad_x.py) against the naive oracle.

∂C/∂x_n = (1/N) P_1 ⋯ P_L e_n and ∂C/∂ỹ_j = −(1/N) Σ_{n in j} e_n (docs/theory.md §§3–5),
checked against per-point NumPy loops, central differences, and for bitwise
independence of the thread count.
"""

from __future__ import annotations

import naive
import numpy as np
import pytest
from conftest import FD_EPS, FD_RTOL, RTOL, assert_rel, make_problem

import truncfast as tf
from truncfast._kernels.grad_x import data_target_gradients


def naive_data_gradient(R, b, X, labels, targets):
    """Row n: (1/N) P_1 ⋯ P_L (τ^(L)(x_n) − ỹ_j), with P_ℓ = R_ℓᵀ diag(H(u_ℓ)) R_ℓ (H(0) = 0)."""
    N = len(X)
    out = np.empty_like(X)
    for n, (x, j) in enumerate(zip(X, labels)):
        z = np.array(x, dtype=np.float64)
        projections = []
        for Rl, bl in zip(R, b):
            h = naive.heaviside(Rl @ z + bl)
            projections.append(Rl.T @ np.diag(h) @ Rl)
            z = naive.tau_layer(Rl, bl, z)
        g = z - targets[j]
        for P in reversed(projections):
            g = P @ g
        out[n] = g / N
    return out


def naive_target_gradient(R, b, X, labels, targets):
    Z = naive.truncate(R, b, X)
    return np.array([-(Z[labels == j] - targets[j]).sum(axis=0) for j in range(len(targets))]) / len(X)


@pytest.mark.parametrize("kind", ["random", "boundary"])
@pytest.mark.parametrize("shape", [(40, 3, 2, 2), (70, 5, 4, 3), (9, 1, 3, 2)])
def test_matches_naive(rng, kind, shape):
    N, M, L, Q = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q, kind=kind)
    gX, gT = data_target_gradients(*p.euclid)
    assert_rel(gX, naive_data_gradient(*p.euclid), what="dC/dX")
    assert_rel(gT, naive_target_gradient(*p.euclid), what="dC/dtargets")


def test_central_differences(rng):
    """The formulas themselves, independently of the projection algebra: C_E by finite differences."""
    p = make_problem(rng, N=15, M=3, L=3, Q=2)
    gX, gT = data_target_gradients(*p.euclid)
    for arr, grad in ((p.X, gX), (p.targets, gT)):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + FD_EPS
            up = naive.loss(*p.euclid)
            arr[idx] = old - FD_EPS
            down = naive.loss(*p.euclid)
            arr[idx] = old
            fd[idx] = (up - down) / (2 * FD_EPS)
        assert_rel(grad, fd, FD_RTOL, "central differences")


def test_only_what_is_asked(rng):
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    gX, gT = data_target_gradients(*p.euclid, want_x=False)
    assert gX is None and gT is not None
    gX2, gT2 = data_target_gradients(*p.euclid, want_targets=False)
    assert gT2 is None
    np.testing.assert_array_equal(gT, data_target_gradients(*p.euclid)[1])
    np.testing.assert_array_equal(gX2, data_target_gradients(*p.euclid)[0])


def test_chunks_and_threads_bitwise(rng):
    """Several chunks and a partial block: same bits for 1 and 2 threads, rows as the naive loop."""
    from truncfast import _config

    N = 3 * _config.CHUNK_SIZE + 37
    p = make_problem(rng, N=N, M=4, L=3, Q=5)
    old = tf.get_num_threads()
    try:
        tf.set_num_threads(1)
        one = data_target_gradients(*p.euclid)
        tf.set_num_threads(2)
        two = data_target_gradients(*p.euclid)
    finally:
        tf.set_num_threads(old)
    for a, c in zip(one, two):
        assert a.tobytes() == c.tobytes()
    rows = np.r_[0:5, N - 40 : N]
    assert_rel(one[0][rows], naive_data_gradient(p.R, p.b, p.X[rows], p.labels[rows], p.targets) * len(rows) / N,
               RTOL, "rows of dC/dX")
    assert_rel(one[1], naive_target_gradient(*p.euclid), 1e-11, "dC/dtargets, many points")
