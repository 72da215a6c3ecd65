"""The unaligned gradient (truncfast.unaligned, docs/theory.md §13) against the aligned engine and PyTorch (issue 17).

Run (pytest-benchmark; benchmarks are not part of the default test run):

    pytest benchmarks/bench_unaligned.py --benchmark-enable -s \\
        --benchmark-columns=min,median,max,rounds --benchmark-sort=name

or, for the interleaved table of benchmarks/README.md (robust to a busy host):

    python benchmarks/bench_unaligned.py [rounds]

Problem: N = 10⁶, M = 8, L = 8, Gaussian data, Haar rotations R and biases of
scale 0.5 (``_problems.random_problem``, as bench_gradient.py); the unaligned
state is ``W = R + 0.3 G/√M`` (G Gaussian; condition numbers ≈ 2–4, alignment
defect ≈ 0.2), so its truncation patterns are as mixed as the aligned ones.
Cases:

* ``aligned``: ``tf.gradient(R, b, ...)`` (backend auto: the C core);
* ``unaligned``: ``truncfast.unaligned.gradient(W, b, ...)`` (auto: the C core),
  validation (condition numbers) included; ``unaligned-numba`` the Numba kernels;
* ``unaligned-torch``: PyTorch eager autograd of the same loss, written as a user
  would: ``z ← (relu(z Wᵀ + b) − b) W⁻ᵀ`` with ``torch.linalg.inv``.

Targets: ``unaligned`` ≤ 1.5 × ``aligned``; ``unaligned-torch`` ≥ 10 × ``unaligned``.
Single calls swing by ±30 % on the shared host, so the ratio to ``aligned`` is
taken from calls interleaved in one loop (minimum of each over the rounds).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _problems import random_problem  # noqa: E402

import truncfast as tf  # noqa: E402
import truncfast.unaligned as tu  # noqa: E402

N, M, L = 10**6, 8, 8


def make_problem(N: int = N, M: int = M, L: int = L, seed: int = 0):
    R, b, X, labels, targets = random_problem(N, M, L, seed=seed)
    rng = np.random.default_rng(seed + 1)
    W = R + 0.3 * rng.standard_normal((L, M, M)) / np.sqrt(M)
    return R, W, b, X, labels, targets


def torch_unaligned(W, b, X, labels, targets):
    """A no-argument callable: PyTorch eager autograd of C_E in (W, b) → (grad_b, grad_W)."""
    import torch

    Xt = torch.from_numpy(X)
    Tt = torch.from_numpy(targets)[torch.from_numpy(np.asarray(labels, dtype=np.int64))]

    def step():
        Wt = torch.tensor(W, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        Winv = torch.linalg.inv(Wt)
        z = Xt
        for l in range(Wt.shape[0]):
            z = (torch.relu(z @ Wt[l].T + bt[l]) - bt[l]) @ Winv[l].T
        loss = ((z - Tt) ** 2).sum() / (2 * Xt.shape[0])
        loss.backward()
        return bt.grad, Wt.grad

    return step


def cases(p):
    R, W, b, X, labels, T = p
    return {
        "aligned": lambda: tf.gradient(R, b, X, labels, T),
        "unaligned": lambda: tu.gradient(W, b, X, labels, T),
        "unaligned-numba": lambda: tu.gradient(W, b, X, labels, T, backend="numba"),
    }


def interleaved(p, rounds: int = 7, with_torch: bool = True) -> dict[str, float]:
    """Minimum time of every case over ``rounds`` rounds, the cases called in turn within a round."""
    fns = cases(p)
    if with_torch:
        fns["unaligned-torch"] = torch_unaligned(*p[1:])
    for fn in fns.values():
        fn()  # warm up: JIT, caches, page faults
    best = dict.fromkeys(fns, float("inf"))
    for r in range(rounds):
        for name, fn in fns.items():
            if name == "unaligned-torch" and r >= 3:
                continue  # ~2 s each: three rounds are enough for a ≥ 10× margin
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


@pytest.fixture(scope="module")
def problem():
    return make_problem()


@pytest.mark.parametrize("case", ["aligned", "unaligned", "unaligned-numba"])
def test_gradient(benchmark, problem, case):
    fn = cases(problem)[case]
    fn()
    benchmark.group = f"unaligned gradient N={N} M={M} L={L}"
    benchmark.pedantic(fn, rounds=7, iterations=1)


def test_gradient_torch(benchmark, problem):
    pytest.importorskip("torch")
    fn = torch_unaligned(*problem[1:])
    fn()
    benchmark.group = f"unaligned gradient N={N} M={M} L={L}"
    benchmark.pedantic(fn, rounds=3, iterations=1)


def test_interleaved_ratios(benchmark, problem):
    """The issue's targets from one interleaved loop (printed and kept in extra_info)."""
    pytest.importorskip("torch")
    best = benchmark.pedantic(lambda: interleaved(problem, rounds=5), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in best.items()})
    print(_report(best))


def _report(best: dict[str, float]) -> str:
    lines = [f"{name:16s} {1e3 * t:9.1f} ms" for name, t in best.items()]
    lines.append(f"unaligned / aligned          = {best['unaligned'] / best['aligned']:.2f}  (target ≤ 1.5)")
    if "unaligned-torch" in best:
        lines.append(f"torch eager / unaligned      = {best['unaligned-torch'] / best['unaligned']:.1f}  (target ≥ 10)")
    return "\n".join(lines)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"N = {N}, M = {M}, L = {L}; {tf.get_num_threads()} threads; backend auto = "
          f"{tf.backends().get('c')!s:.9s} C core; load average before: {load}")
    print(_report(interleaved(make_problem(), rounds=rounds)))
    print(f"load average after: {os.getloadavg() if load else None}")
