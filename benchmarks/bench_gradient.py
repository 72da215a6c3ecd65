"""Gradient evaluation: NumPy reference vs Numba vs PyTorch eager autograd (issue 2).

Run:  pytest benchmarks/bench_gradient.py --benchmark-enable --benchmark-columns=min,median,mean,rounds

The PyTorch baseline evaluates the same Euclidean loss C_E (docs/theory.md §3) with the
truncation maps written as tensor ops on R and b and differentiates it with
autograd; omega = P_A(∇_R C · Rᵀ).  Peak RSS growth during the timed calls is
stored in ``benchmark.extra_info['rss_growth_MB']``.
"""

from __future__ import annotations

import pytest

import truncfast as tf
from _memory import peak_rss
from _problems import random_problem
from _suite import torch_gradient

N, M, L = 10**6, 8, 8


@pytest.fixture(scope="module")
def problem():
    return random_problem(N, M, L)


def _run(benchmark, fn, rounds=5):
    fn()  # warm up (JIT compile, caches)
    with peak_rss() as mem:
        result = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    benchmark.extra_info["rss_growth_MB"] = mem.growth / 2**20
    return result


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gradient(benchmark, problem, backend):
    R, b, X, labels, targets = problem
    benchmark.group = f"gradient N={N} M={M} L={L}"
    _run(benchmark, lambda: tf.gradient(R, b, X, labels, targets, backend=backend), rounds=3 if backend == "numpy" else 10)


def test_gradient_torch_eager(benchmark, problem):
    pytest.importorskip("torch")
    R, b, X, labels, targets = problem
    benchmark.group = f"gradient N={N} M={M} L={L}"
    step = torch_gradient(R, b, X, labels, targets)
    _run(benchmark, step, rounds=3)
