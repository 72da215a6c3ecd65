"""The C core against Numba and PyTorch eager autograd (issue 4).

Run (pytest-benchmark; benchmarks are not part of the default test run):

    pytest benchmarks/bench_ccore.py --benchmark-enable -s \\
        --benchmark-columns=min,median,max,rounds --benchmark-sort=name

or only the first-call latencies:

    python benchmarks/bench_ccore.py

Measured: one evaluation of the general effective flow (loss + grad_b + omega,
docs/theory.md §5) on the Euclidean loss at N = 10⁶, M = 8, L = 8 and at
N = 2·10⁵, M = 64, L = 10 (Gaussian data, Haar rotations, biases of scale 0.5:
most points partially truncated, so skipping rarely helps); the truncation map
alone at the first size; and the first-call latency of each backend in a fresh
process (C; Numba with an empty cache = cold compile, and with a filled cache).
The PyTorch baseline writes the truncation maps as tensor ops on R, b and
differentiates C_E with autograd (as benchmarks/bench_gradient.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import truncfast as tf
from _suite import torch_gradient
from _problems import random_problem

SIZES = [(10**6, 8, 8), (2 * 10**5, 64, 10)]
ROUNDS = {(10**6, 8, 8): 7, (2 * 10**5, 64, 10): 3}

_cache: dict = {}


def _problem(N: int, M: int, L: int):
    key = (N, M, L)
    if key not in _cache:
        _cache.clear()  # keep one large problem in memory at a time
        _cache[key] = random_problem(N, M, L)
    return _cache[key]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"N{s[0]}-M{s[1]}-L{s[2]}")
@pytest.mark.parametrize("backend", ["c", "numba", "torch"])
def test_gradient(benchmark, size, backend):
    if backend != "torch" and tf.backends()[backend] != "available":
        pytest.skip(tf.backends()[backend])
    N, M, L = size
    R, b, X, labels, targets = _problem(N, M, L)
    benchmark.group = f"gradient N={N} M={M} L={L}"
    if backend == "torch":
        pytest.importorskip("torch")
        fn = torch_gradient(R, b, X, labels, targets)
    else:
        def fn():
            return tf.gradient(R, b, X, labels, targets, backend=backend)
    fn()  # warm up: JIT compile / cache load, page-in
    benchmark.pedantic(fn, rounds=ROUNDS[size] if backend != "torch" else 3, iterations=1)


@pytest.mark.parametrize("backend", ["c", "numba"])
def test_truncate(benchmark, backend):
    if tf.backends()[backend] != "available":
        pytest.skip(tf.backends()[backend])
    N, M, L = SIZES[0]
    R, b, X, _, _ = _problem(N, M, L)
    benchmark.group = f"truncate N={N} M={M} L={L}"
    tf.truncate(R, b, X, backend=backend)
    benchmark.pedantic(lambda: tf.truncate(R, b, X, backend=backend), rounds=7, iterations=1)


# ------------------------------------------------------ first-call latency ---

SNIPPET = r"""
import time, json
t0 = time.perf_counter()
import numpy as np
import truncfast as tf
t1 = time.perf_counter()
rng = np.random.default_rng(0)
L, M, N = 4, 8, 1000
R = np.linalg.qr(rng.standard_normal((L, M, M)))[0]
b = rng.standard_normal((L, M)); X = rng.standard_normal((N, M))
labels = rng.integers(0, L, N); T = rng.standard_normal((L, M))
t2 = time.perf_counter(); tf.gradient(R, b, X, labels, T, backend=BACKEND)
t3 = time.perf_counter(); tf.truncate(R, b, X, backend=BACKEND)
t4 = time.perf_counter(); tf.gradient(R, b, X, labels, T, backend=BACKEND)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_gradient": t3 - t2, "first_truncate": t4 - t3,
                  "second_gradient": t5 - t4}))
"""


def first_call(backend: str, cache_dir: str | None = None) -> dict:
    """Import time and first-call times (s) of ``backend`` in a fresh interpreter."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run([sys.executable, "-c", SNIPPET.replace("BACKEND", repr(backend))],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def latencies(repeats: int = 5) -> dict[str, dict]:
    """Median over ``repeats`` fresh processes (Numba cold: one, it takes seconds)."""
    runs: dict[str, list[dict]] = {"c": [], "numba warm (cached)": []}
    with tempfile.TemporaryDirectory() as cache:
        cold = first_call("numba", cache)
        for _ in range(repeats):
            runs["c"].append(first_call("c"))
            runs["numba warm (cached)"].append(first_call("numba", cache))
    result = {name: {k: float(np.median([r[k] for r in rs])) for k in rs[0]} for name, rs in runs.items()}
    result["numba cold (empty cache)"] = cold
    return result


def _print(result: dict) -> None:
    for name, res in result.items():
        print(f"{name:26s} " + "  ".join(f"{k}={v:.4f}s" for k, v in res.items()))


def test_first_call_latency():
    if tf.backends()["c"] != "available":
        pytest.skip(tf.backends()["c"])
    result = latencies()
    _print(result)
    assert result["c"]["first_gradient"] <= 0.3


if __name__ == "__main__":
    _print(latencies())
