"""Integrators (issue 3): cost per step of ``tf.integrate``.

Run:  pytest benchmarks/bench_integrate.py --benchmark-enable --benchmark-columns=min,median,rounds

Each benchmark times one whole ``integrate`` call of ``steps`` steps; the
per-step times (median and min over rounds, divided by ``steps``) are in
``benchmark.extra_info`` and printed at the end of the run (``-s``).

* ``compiled``: the small-problem loop (backend numba, N ≤
  ``_config.COMPILED_LOOP_MAX_N``): the whole step loop in one compiled call.
* ``python``: the same problem through the general Python step loop (one
  backend call per step), forced with ``COMPILED_LOOP_MAX_N = -1``.
* ``torch``: the PyTorch eager baseline, autograd gradient + ``torch.linalg.matrix_exp``.
* ``record_every=1`` variants include recording every step (counts from the
  sector codes, norms, state copies).
"""

from __future__ import annotations

import pytest

import truncfast as tf
from _problems import random_problem
from truncfast import _config

SMALL = dict(N=100, M=2, L=2, Q=2)
_results: dict[str, tuple[float, float]] = {}


def _per_step(benchmark, name, steps, fn, rounds=5):
    fn()  # warm up (JIT compile or load the cache)
    benchmark.pedantic(fn, rounds=rounds, iterations=1)
    us = benchmark.stats.stats.median / steps * 1e6
    benchmark.extra_info["us_per_step"] = us
    benchmark.extra_info["us_per_step_min"] = benchmark.stats.stats.min / steps * 1e6
    _results[name] = (benchmark.stats.stats.min / steps * 1e6, us)


@pytest.fixture(scope="module")
def small():
    return random_problem(SMALL["N"], SMALL["M"], SMALL["L"], SMALL["Q"])


@pytest.mark.parametrize("record_every", [None, 100, 1])
def test_compiled_small(benchmark, small, record_every):
    steps = 20_000 if record_every != 1 else 2_000
    every = steps if record_every is None else record_every
    benchmark.group = "integrate N=100 M=2 L=2"
    run = lambda: tf.integrate(*small, dt=0.01, steps=steps, record_every=every, backend="numba")  # noqa: E731
    assert run().settings["compiled_loop"]
    _per_step(benchmark, f"compiled, record_every={every}", steps, run)


def test_python_loop_small(benchmark, small, monkeypatch):
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", -1)
    steps = 1_000
    benchmark.group = "integrate N=100 M=2 L=2"
    run = lambda: tf.integrate(*small, dt=0.01, steps=steps, record_every=steps, backend="numba")  # noqa: E731
    assert not run().settings["compiled_loop"]
    _per_step(benchmark, "python loop (numba backend)", steps, run, rounds=3)


def test_torch_eager_small(benchmark, small):
    torch = pytest.importorskip("torch")
    R0, b0, X, labels, targets = small
    N = X.shape[0]
    steps = 500
    Xt = torch.from_numpy(X)
    Tt = torch.from_numpy(targets)[torch.from_numpy(labels)]

    def run():
        R = torch.tensor(R0)
        b = torch.tensor(b0)
        for _ in range(steps):
            R.requires_grad_(True)
            b.requires_grad_(True)
            z = Xt
            for l in range(R.shape[0]):
                u = z @ R[l].T + b[l]
                z = (torch.relu(u) - b[l]) @ R[l]
            C = ((z - Tt) ** 2).sum() / (2 * N)
            gR, gb = torch.autograd.grad(C, (R, b))
            with torch.no_grad():
                G = gR @ R.transpose(1, 2)
                omega = 0.5 * (G - G.transpose(1, 2))
                R = torch.linalg.matrix_exp(-0.01 * omega) @ R
                b = b - 0.01 * gb
        return R, b

    benchmark.group = "integrate N=100 M=2 L=2"
    _per_step(benchmark, "torch eager GD + matrix_exp", steps, run, rounds=3)


def test_general_large(benchmark):
    """A problem beyond the compiled-loop threshold: one parallel gradient per step."""
    R, b, X, labels, targets = random_problem(200_000, 8, 4, 4)
    steps = 10
    benchmark.group = "integrate N=2e5 M=8 L=4"
    run = lambda: tf.integrate(R, b, X, labels, targets, dt=0.01, steps=steps, record_every=steps)  # noqa: E731
    assert not run().settings["compiled_loop"]
    _per_step(benchmark, "N=2e5 M=8 L=4 (parallel gradient per step)", steps, run, rounds=3)


def teardown_module(module):
    if _results:
        print("\nper step (min / median over rounds):")
        for name, (lo, med) in _results.items():
            print(f"  {name:45s} {lo:10.2f} / {med:10.2f} µs")
