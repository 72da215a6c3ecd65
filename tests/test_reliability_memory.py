"""Issue 7.5: the engine's own allocations do not grow with N, and .npy data
larger than a memory budget stream from a read-only memmap without a copy.

The measurement is ``benchmarks/bench_memory.py`` (peak growth of anonymous
resident memory, RssAnon, sampled every ms, plus the tracemalloc peak of NumPy
buffers), run in fresh interpreters at N = 1e5 and 1e6 here (1e7 in the
benchmark; numbers in benchmarks/README.md, section "Memory").
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from conftest import AVAILABLE_BACKENDS, make_problem

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RssAnon needs Linux /proc")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "benchmarks" / "bench_memory.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _slow_only_when_selected(request):
    """pyproject: slow checks stay out of the default run; select them with ``-m slow``."""
    if request.node.get_closest_marker("slow") and "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("slow check: run with -m slow")


MB = 2.0**20
#: allowed growth of a call's scratch from N = 1e5 to 1e6 (10x the data: +34 MB of file)
SLACK_MB = 4.0


def _check_bounded(rows, backends, ops):
    by = {(r["backend"], r["op"], r["N"]): r for r in rows}
    Ns = sorted({r["N"] for r in rows})
    small, big = Ns[0], Ns[-1]
    for bk in backends:
        for op in ops:
            a, b = by[(bk, op, small)], by[(bk, op, big)]
            for key in ("anon_MB", "numpy_MB"):
                assert b[key] <= a[key] + SLACK_MB, (bk, op, key, a[key], b[key])
            # far below the size of the data streamed from the memmap: no copy of X was made
            assert b["anon_MB"] < 0.5 * b["file_MB"], (bk, op, b)


def test_memory_does_not_grow_with_n_numba_and_c():
    backends = [b for b in ("numba", "c") if b in AVAILABLE_BACKENDS]
    ops = ["gradient", "integrate"]
    rows = _bench().run_in_subprocess([10**5, 10**6], 4, 4, 4, backends, ops, steps=1)
    _check_bounded(rows, backends, ops)
    for r in rows:  # the compiled kernels keep O(L M²) scratch plus bounded partial slots
        assert r["anon_MB"] < 12, r


def test_moments_engine_keeps_24_bytes_per_point():
    """engine="moments" (issue 14): the state kept across steps is ≤ 24 bytes per point plus the
    groups; a full pass needs transient arrays on top (the unsorted and sorted entries, sort keys:
    ~60 bytes per point at most, docs/DESIGN.md "Engines"), so the peak growth from N = 1e5 to 1e6
    stays within 100 bytes per added point, and nothing else grows with N."""
    backends = [b for b in ("numba",) if b in AVAILABLE_BACKENDS]
    rows = _bench().run_in_subprocess([10**5, 10**6], 4, 4, 4, backends, ["integrate-moments"], steps=1)
    by = {r["N"]: r for r in rows}
    grew = by[10**6]["anon_MB"] - by[10**5]["anon_MB"]
    assert grew * MB <= 100 * 9 * 10**5, (grew, by)
    from truncfast._kernels import pattern_state as ps

    rng = np.random.default_rng(1)
    p = make_problem(rng, N=20000, M=4, L=4, Q=4)
    st = ps.full_pass(p.R, p.b, p.X, p.labels, 4)
    groups = sum(a.nbytes for a in (st.keys, st.labs, st.tn, st.tmean, st.tscat, st.hslots))
    assert st.nbytes() - groups <= 24 * 20000


@pytest.mark.slow
def test_memory_does_not_grow_with_n_every_backend_and_checkpoints():
    ops = ["gradient", "loss", "integrate", "checkpointed-integrate"]
    rows = []
    bench = _bench()
    for N in (10**5, 10**6):
        rows += bench.run_in_subprocess(N, 4, 4, 4, AVAILABLE_BACKENDS, ops, steps=2)
    _check_bounded(rows, AVAILABLE_BACKENDS, ops)


def test_truncation_counts_are_blocked_without_changing_them(monkeypatch, rng, backend):
    """integrate's per-record counts are accumulated over blocks of COUNTS_ROWS points:
    the same integers as one pass, and as counting tf.sector_codes directly."""
    p = make_problem(rng, N=1000, M=3, L=3, Q=3)
    kw = dict(dt=0.05, steps=4, record_every=2, backend=backend)
    whole = tf.integrate(*p.euclid, **kw)
    monkeypatch.setattr(_config, "COUNTS_ROWS", 96)  # 11 blocks, the last one ragged
    blocked = tf.integrate(*p.euclid, **kw)
    np.testing.assert_array_equal(blocked.counts, whole.counts)
    np.testing.assert_array_equal(blocked.b, whole.b)
    codes = tf.sector_codes(blocked.Rs[-1], blocked.bs[-1], p.X, backend=backend)
    full = (1 << 3) - 1
    for l in range(3):
        for j in range(3):
            c = codes[p.labels == j, l]
            want = [(c == full).sum(), ((c != full) & (c != 0)).sum(), (c == 0).sum()]
            np.testing.assert_array_equal(blocked.counts[-1, l, j], want)


@pytest.mark.parametrize("backend", [b for b in ("numba", "c") if b in AVAILABLE_BACKENDS])
def test_memmap_larger_than_the_budget_is_streamed_not_copied(tmp_path, backend):
    """X as a read-only .npy memmap through gradient and integrate: the boundary passes
    it through (shares memory), results equal the in-memory ones bit for bit, and the
    anonymous memory grows by far less than the file (a copy would add its size).
    (The numpy reference keeps ~20 MB of block scratch: covered by the slow test.)"""
    bench = _bench()
    N, M, L, Q = 1_000_000, 4, 4, 4
    Xp, lp = bench.write_data(str(tmp_path), N, M, Q)
    X = np.load(Xp, mmap_mode="r")
    labels = np.load(lp, mmap_mode="r")
    R, b, T = bench.problem_state(M, L, Q)
    # warm-up on a slice of the memmap (same array types: no compilation while measuring)
    tf.gradient(R, b, X[:5000], labels[:5000], T, backend=backend)
    tf.integrate(R, b, X[:5000], labels[:5000], T, dt=0.01, steps=1, backend=backend, engine="direct")
    with bench.PeakAnon() as mem:  # the per-point engine (the moments engine keeps 24 B per point)
        g = tf.gradient(R, b, X, labels, T, backend=backend)
        tr = tf.integrate(R, b, X, labels, T, dt=0.01, steps=1, backend=backend, engine="direct")
    file_mb = (X.nbytes + labels.nbytes) / MB
    assert mem.growth / MB < 0.25 * file_mb, (mem.growth / MB, file_mb)
    Xa, la = np.array(X), np.array(labels)
    for x, y in zip(g, tf.gradient(R, b, Xa, la, T, backend=backend)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(tr.b, tf.integrate(R, b, Xa, la, T, dt=0.01, steps=1, backend=backend,
                                                     engine="direct").b)
    np.testing.assert_array_equal(X[:3], Xa[:3])
    assert not X.flags.writeable
