"""A gradient's time and extra memory must not grow with the number of targets Q (issue 14).

PyTorch users write regression losses with one target per point (Q = N);
truncfast's kernels once spent O(Q) per chunk (Numba: 10.8 s at Q = N vs
0.52 s at Q = 8, N = 10⁶) or allocated a Q-sized temporary per call (C).
Now each point's target is rotated on the fly past ``_config.TARGETS_CACHE_ROWS``
targets.  Cases: N = 10⁶, M = L = 8, Q ∈ {8, 10⁵, N} (Q = N: target n for point n),
both compiled backends; peak RSS growth during the timed calls in
``extra_info['rss_growth_MB']``.

Run:  pytest benchmarks/bench_targets.py --benchmark-enable --benchmark-columns=min,median,rounds
"""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from _memory import peak_rss

N, M, L = 10**6, 8, 8


@pytest.fixture(scope="module")
def base():
    rng = np.random.default_rng(14)
    R = np.linalg.qr(rng.standard_normal((L, M, M)))[0]
    b = 0.3 * rng.standard_normal((L, M))
    X = rng.standard_normal((N, M))
    return rng, R, b, X


@pytest.mark.parametrize("Q", [8, 10**5, N], ids=["Q=8", "Q=1e5", "Q=N"])
@pytest.mark.parametrize("backend", ["numba", "c"])
def test_gradient_many_targets(benchmark, base, backend, Q):
    if tf.backends().get(backend) != "available":
        pytest.skip(f"{backend} backend not available")
    rng, R, b, X = base
    labels = np.arange(N) if Q == N else rng.integers(0, Q, N)
    T = rng.standard_normal((Q, M))
    benchmark.group = f"gradient vs Q, N={N} M={M} L={L}"
    fn = lambda: tf.gradient(R, b, X, labels, T, backend=backend)  # noqa: E731
    fn()  # warm up
    with peak_rss() as mem:
        benchmark.pedantic(fn, rounds=5, iterations=1)
    benchmark.extra_info["rss_growth_MB"] = mem.growth / 2**20
