"""Gradient evaluation across backends, sizes and data (issue 6, part 2).

Run everything and regenerate the README tables (the normal way):

    python benchmarks/report.py            # full sizes, run on a quiet machine
    python benchmarks/report.py --quick    # N / 100, < 2 min, for checking the pipeline

or this suite alone (pytest-benchmark; not part of the default test run):

    pytest benchmarks/bench_suite.py --benchmark-enable -s --benchmark-columns=min,median,rounds
    pytest benchmarks/bench_suite.py --benchmark-enable -m "not slow"      # without the long cases

Cases are in ``_suite.cases()``: methods numpy / numba / c / torch (eager
autograd) / torch.compile, on random and cluster-separated data, form general
(and separated for the engine on cluster data).  Each records in
``benchmark.extra_info``: the case, ``rss_growth_MB`` (peak RSS during the
timed rounds minus RSS before them, psutil sampling every 2 ms; the allocator
reuses what the warm-up freed, so report.py measures the target sizes again in
fresh interpreters), and the
cost-model throughput (GFLOP/s, GB/s; docs/theory.md §10).  ``test_threads`` times
numba and c on 1 and 2 threads (``tf.set_num_threads``).
"""

from __future__ import annotations

import pytest

import _suite
import truncfast as tf
from _memory import peak_rss


def _params():
    out = []
    for case in _suite.cases():
        what, why = _suite.plan(case)
        marks = []
        if what == "slow":
            marks.append(pytest.mark.slow)
        elif what == "skip":
            marks.append(pytest.mark.skip(reason=why))
        out.append(pytest.param(case, id=_suite.case_id(case), marks=marks))
    return out


def _method_fn(case):
    kind, N, M, L, method, form = case
    R, b, X, labels, targets = _suite.problem(kind, N, M, L)
    if method in _suite.ENGINE:
        if tf.backends()[method] != "available":
            pytest.skip(f"backend {method}: {tf.backends()[method]}")
        return lambda: tf.gradient(R, b, X, labels, targets, form=form, backend=method)
    pytest.importorskip("torch")
    fn = _suite.torch_gradient(R, b, X, labels, targets, compiled=method == "torch.compile")
    if method == "torch.compile":
        try:
            fn()  # compiles (inductor needs a working C++ toolchain)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "does not compile here"
            pytest.skip(f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return fn


def _record(benchmark, case, fn):
    kind, N, M, L, method, form = case
    fn()  # warm up: JIT / cache load, page-in, torch.compile
    with peak_rss() as mem:  # in-process, after the warm-up: report.py's fresh-process numbers are the reference
        benchmark.pedantic(fn, rounds=_suite.rounds(case), iterations=1)
    t = benchmark.stats.stats.min
    benchmark.extra_info.update(
        kind=kind, N=N, M=M, L=L, method=method, form=form, threads=tf.get_num_threads(),
        rss_growth_MB=mem.growth / 2**20,
        gflops=_suite.flops(N, M, L) / t / 1e9, gbytes_per_s=_suite.bytes_read(N, M) / t / 1e9,
    )


@pytest.mark.parametrize("case", _params())
def test_gradient(benchmark, case):
    kind, N, M, L, method, form = case
    benchmark.group = f"gradient {kind} N={N} M={M} L={L}"
    _record(benchmark, case, _method_fn(case))


THREAD_CASE = ("random", 10**5 if _suite.QUICK else 10**6, 8, 8)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", ["numba", "c"])
def test_threads(benchmark, backend, threads):
    if tf.backends()[backend] != "available":
        pytest.skip(tf.backends()[backend])
    kind, N, M, L = THREAD_CASE
    before = tf.get_num_threads()
    tf.set_num_threads(threads)
    try:
        benchmark.group = f"threads {kind} N={N} M={M} L={L}"
        case = (kind, N, M, L, backend, "general")
        _record(benchmark, case, _method_fn(case))
    finally:
        tf.set_num_threads(before)
