"""Shared plan of the issue-6 gradient benchmarks (bench_suite.py, report.py).

* **Problems.** ``random``: Gaussian data, Haar rotations, biases of scale 0.5
  (``_problems.random_problem``; most points partially truncated, skipping
  rarely helps).  ``clusters``: the paper's setting, one cluster per layer —
  :func:`truncfast.data.make_problem` with ``source="clusters"``, Q = L clusters
  in R^M (std 0.1, centres 10 apart), cluster-separated simplex frames, layer ℓ's
  apex at the centre of cluster ℓ (the other clusters are untruncated by it).
* **Methods.** ``numpy`` / ``numba`` / ``c``: :func:`truncfast.gradient`;
  ``torch``: PyTorch eager autograd of the same C_E with the truncation maps
  written as tensor ops (docs/theory.md §4 form), ω = P_A(∇_R C Rᵀ);
  ``torch.compile``: the same loss function through ``torch.compile`` (inductor,
  N marked dynamic so each (M, L) compiles once).  On cluster data the engine
  backends are also timed with ``form="separated"`` (docs/theory.md §6).
* **Cost model** (docs/theory.md §10): ``10·L·M²·N`` flops and ``8·N·M`` bytes (X read
  once in float64) per evaluation — the model's count, not the kernel's own.
* **Sizes.** The grid N ∈ {10⁴, 10⁵, 10⁶, 10⁷} × (M, L) ∈ {(2,2), (8,8), (64,10)},
  plus the issue's target sizes (2·10⁵, 64, 10) and (10⁷, 4, 4).  ``TRUNCFAST_BENCH_QUICK=1``
  shrinks N by 10–100 (report.py --quick).  :func:`plan` decides, per
  case, to run it, mark it ``slow`` or skip it (with the reason, which the
  README table repeats).
"""

from __future__ import annotations

import os

import numpy as np

QUICK = os.environ.get("TRUNCFAST_BENCH_QUICK", "") not in ("", "0")

SHAPES = [(2, 2), (8, 8), (64, 10)]
GRID_N = [10**3, 10**4] if QUICK else [10**4, 10**5, 10**6, 10**7]
#: the sizes the issue states targets for, full run; /100 (N) in quick mode
TARGETS = {
    "i": (10**6, 8, 8),
    "iii": (2 * 10**5, 64, 10),
    "iv": (10**7, 4, 4),
}
if QUICK:
    TARGETS = {k: (N // 100, M, L) for k, (N, M, L) in TARGETS.items()}
    TARGETS["iv"] = (10**5, 4, 4)  # still the largest N of the quick run
KINDS = ["random", "clusters"]
METHODS = ["numpy", "numba", "c", "torch", "torch.compile"]
ENGINE = ("numpy", "numba", "c")

#: rough sustained rates (flop/s) used only to decide what is slow (measured under load)
_RATE = {"numpy": 0.5e9, "numba": 5e9, "c": 5e9, "torch": 2e9, "torch.compile": 2e9}
#: seconds per evaluation above which a case is marked ``slow`` / skipped
SLOW_S, SKIP_S = (0.3 if QUICK else 5.0), 60.0
#: torch autograd keeps about 4 N×M float64 tensors per layer for the backward pass
TORCH_MAX_BYTES = 6e9


def flops(N: int, M: int, L: int) -> float:
    """docs/theory.md §10's cost model of one general right-hand side."""
    return 10.0 * L * M * M * N


def bytes_read(N: int, M: int) -> float:
    return 8.0 * N * M


def cases() -> list[tuple]:
    """All cases ``(kind, N, M, L, method, form)``, grouped so one problem is built at a time."""
    sizes = [(N, M, L) for (M, L) in SHAPES for N in GRID_N]
    for N, M, L in TARGETS.values():
        if (N, M, L) not in sizes:
            sizes.append((N, M, L))
    out = []
    for kind in KINDS:
        for N, M, L in sizes:
            for method in METHODS:
                out.append((kind, N, M, L, method, "general"))
            if kind == "clusters":
                for method in ENGINE:
                    out.append((kind, N, M, L, method, "separated"))
    return out


def case_id(case: tuple) -> str:
    kind, N, M, L, method, form = case
    return f"{kind}-N{N:.0e}-M{M}-L{L}-{method}" + ("-separated" if form == "separated" else "")


def plan(case: tuple) -> tuple[str, str]:
    """``("run" | "slow" | "skip", reason)`` for one case."""
    kind, N, M, L, method, form = case
    if M == 64 and N >= 10**7:
        return "skip", "X alone is 5 GB and one evaluation takes minutes for every method"
    if method.startswith("torch") and 4 * L * 8.0 * N * M > TORCH_MAX_BYTES:
        return "skip", f"autograd would keep ≈ {4 * L * 8.0 * N * M / 1e9:.0f} GB of activations"
    est = flops(N, M, L) / _RATE[method]
    if form == "separated":
        est *= 0.3  # one pass over each cluster, ~3 M² N flops
    if QUICK and (N, M, L) in TARGETS.values() and method != "numpy":
        return "run", ""  # the quick run still computes every ratio, at its small sizes
    if est > SKIP_S and method not in ("numba", "c"):  # the compiled engine always runs the grid
        return "skip", f"≈ {est / 60:.0f} min per evaluation"
    if est > SLOW_S:
        return "slow", f"≈ {est:.2g} s per evaluation"
    return "run", ""


def rounds(case: tuple) -> int:
    """Timed rounds of a case; the tables report the minimum.

    The host adds noise of ±30 % and more to single calls (three full runs of
    the same build: the C gradient at N = 10⁶, M = L = 8 measured 95–147 ms
    within and across runs), so every case that costs ≤ 5 s gets 7 rounds —
    the same for every method, PyTorch included — and the minimum estimates
    the undisturbed cost.
    """
    kind, N, M, L, method, form = case
    est = flops(N, M, L) / _RATE[method]
    if QUICK:
        return 3
    return 2 if est > SLOW_S else 7 if est > 0.05 else 10


# --------------------------------------------------------------------------- problems

_cache: dict = {}


def problem(kind: str, N: int, M: int, L: int):
    """``(R, b, X, labels, targets)``; keeps one problem in memory at a time."""
    key = (kind, N, M, L)
    if key not in _cache:
        _cache.clear()
        if kind == "random":
            from _problems import random_problem

            _cache[key] = random_problem(N, M, L)
        elif kind == "clusters":
            from truncfast import data

            p = data.make_problem("clusters", n=N, dim=M, clusters=L, seed=0)
            _cache[key] = (p.R0, p.b0, p.X, p.labels, p.targets)
        else:
            raise ValueError(kind)
    return _cache[key]


# --------------------------------------------------------------------------- PyTorch


def _torch_loss(Rt, bt, Xt, Tt):
    import torch

    z = Xt
    for l in range(Rt.shape[0]):
        u = z @ Rt[l].T + bt[l]
        z = (torch.relu(u) - bt[l]) @ Rt[l]
    return ((z - Tt) ** 2).sum() / (2 * Xt.shape[0])


_compiled: dict = {}


def torch_gradient(R, b, X, labels, targets, compiled: bool = False):
    """A no-argument callable returning ``(grad_b, omega)`` by PyTorch autograd."""
    import torch

    Xt = torch.from_numpy(X)
    Tt = torch.from_numpy(targets)[torch.from_numpy(np.asarray(labels, dtype=np.int64))]
    fn = _torch_loss
    if compiled:
        key = (R.shape[0], R.shape[1])
        if key not in _compiled:
            _compiled[key] = torch.compile(_torch_loss)
        fn = _compiled[key]
        torch._dynamo.mark_dynamic(Xt, 0)
        torch._dynamo.mark_dynamic(Tt, 0)

    def step():
        Rt = torch.tensor(R, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        loss = fn(Rt, bt, Xt, Tt)
        loss.backward()
        G = Rt.grad @ Rt.detach().transpose(1, 2)
        return bt.grad, 0.5 * (G - G.transpose(1, 2))

    return step
