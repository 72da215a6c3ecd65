"""Issue 18, items 1, 3 and 10: thread counts are validated wherever they enter, the C core
clamps any ``nthreads`` (never crashes), and changing the count while other threads
compute is safe and gives the same bits.

Decisions (docs/guarantees.md): ``tf.set_num_threads`` accepts any integer (NumPy
integers too) in 1..``_config.MAX_THREADS`` and refuses everything else with an
``InputError`` naming ``n``; ``TRUNCFAST_NUM_THREADS`` that is not a positive integer
is ignored with one warning, one above the maximum is clamped with one warning; the C
core clamps ``nthreads`` to ``TF_MAX_THREADS`` (= ``_config.MAX_THREADS``), to
``OMP_THREAD_LIMIT`` and to its number of chunks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from truncfast._kernels import ccore
from conftest import AVAILABLE_BACKENDS, make_problem, separated_problem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_threads():
    old = tf.get_num_threads()
    yield
    tf.set_num_threads(old)


# ------------------------------------------------------------- validation ---

@pytest.mark.parametrize("n", [1, 2, np.int64(2), np.int32(3), np.uint8(4), _config.MAX_THREADS])
def test_set_num_threads_accepts_integers(n, restore_threads):
    tf.set_num_threads(n)
    assert tf.get_num_threads() == int(n) and type(tf.get_num_threads()) is int


@pytest.mark.parametrize("n", [True, False, np.bool_(True), 2.0, np.float64(2.0), "2", None, [2], 0, -1,
                               np.int64(-3), _config.MAX_THREADS + 1, 200_000, 2**63, 10**30])
def test_set_num_threads_refuses_everything_else(n, restore_threads):
    before = tf.get_num_threads()
    with pytest.raises(tf.InputError, match=r"^n: "):
        tf.set_num_threads(n)
    assert tf.get_num_threads() == before  # a refused value changes nothing


def test_max_threads_mirrors_the_c_header():
    if not ccore.available():
        pytest.skip("C core not built")
    assert ccore.lib.TF_MAX_THREADS == _config.MAX_THREADS


def _env_threads(value: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    code = textwrap.dedent("""
        import warnings, numpy as np, truncfast as tf
        warnings.simplefilter("always")
        rng = np.random.default_rng(0)
        R = np.array([np.eye(3), -np.eye(3)]); b = rng.standard_normal((2, 3))
        X = rng.standard_normal((9000, 3)); lab = rng.integers(0, 2, 9000); T = rng.standard_normal((2, 3))
        for backend in ("numba", "c", "numpy"):
            if tf.backends()[backend] == "available":
                gb, om = tf.gradient(R, b, X, lab, T, backend=backend)
                gb, om = tf.gradient(R, b, X, lab, T, backend=backend)
        print(tf.get_num_threads())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update({"TRUNCFAST_NUM_THREADS": value, "PYTHONPATH": REPO, **(extra or {})})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5", "1e3"])
def test_invalid_env_thread_count_warns_once_and_falls_back(value):
    r = _env_threads(value, {"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2"]  # the next source: OMP_NUM_THREADS
    warnings = [line for line in r.stderr.splitlines() if "TRUNCFAST_NUM_THREADS" in line]
    assert len(warnings) == 1, r.stderr  # once, not per call
    assert "not a positive integer" in warnings[0]


def test_huge_env_thread_count_is_clamped_with_one_warning():
    r = _env_threads("200000")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(_config.MAX_THREADS)]
    warnings = [line for line in r.stderr.splitlines() if "TRUNCFAST_NUM_THREADS" in line]
    assert len(warnings) == 1 and "maximum" in warnings[0], r.stderr


@pytest.mark.parametrize("var", ["NUMBA_NUM_THREADS", "OMP_NUM_THREADS"])
def test_other_libraries_thread_variables_are_clamped(var, monkeypatch):
    monkeypatch.delenv("TRUNCFAST_NUM_THREADS", raising=False)
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv(var, "999999")
    assert _config.env_default_threads() == _config.MAX_THREADS


# ----------------------------------------------------------- the C core ---

def test_c_core_survives_any_nthreads():
    """Every public C function taking nthreads, called directly (past the Python clamp) with
    absurd counts, in a subprocess: a crash would be a negative return code."""
    if not ccore.available():
        pytest.skip("C core not built")
    code = textwrap.dedent("""
        import numpy as np
        from truncfast._kernels.ccore import ffi, lib
        rng = np.random.default_rng(1)
        N, M, L, Q = 3 * 4096 + 7, 3, 2, 2
        R = np.array([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(L)])
        b = rng.standard_normal((L, M)); X = rng.standard_normal((N, M))
        lab = rng.integers(0, Q, N).astype(np.int64); T = rng.standard_normal((Q, M))
        p = lambda a, t="double *": ffi.cast(t, ffi.from_buffer(a))
        ref = None
        for nt in (1, 200000, 2**31 - 1, -(2**31), 0, 4096):
            out = np.empty((N, M)); codes = np.empty((N, L), dtype=np.uint64)
            loss = ffi.new("double *"); gb = np.empty((L, M)); G = np.empty((L, M, M))
            S0, S1, S2 = np.empty((Q, M)), np.empty((Q, M, M)), np.empty((Q, M, M))
            cnt = np.empty((Q, L), dtype=np.int64)
            st = [lib.tf_truncate(p(R), p(b), p(X), N, M, L, 4096, nt, p(out)),
                  lib.tf_codes(p(R), p(b), p(X), N, M, L, 4096, nt, p(codes, "uint64_t *")),
                  lib.tf_general(p(R), p(b), p(X), p(lab, "int64_t *"), N, M, L, Q, p(T), ffi.NULL, ffi.NULL,
                                 ffi.NULL, 0, 0, 1, 4096, nt, loss, p(gb), p(G), ffi.NULL, ffi.NULL),
                  lib.tf_moments(p(R), p(b), p(X), p(lab, "int64_t *"), N, M, L, Q, 4096, nt, p(S0), p(S1), p(S2)),
                  lib.tf_violations(p(R), p(b), p(X), p(lab, "int64_t *"), N, M, L, Q, 4096, nt,
                                    p(cnt, "int64_t *")),
                  int(lib.tf_any_nonfinite(p(X), N * M, nt))]
            Ro, bo, lo = np.empty_like(R), np.empty_like(b), np.empty(4)
            st.append(lib.tf_integrate(p(R), p(b), p(X), p(lab, "int64_t *"), p(T), N, M, L, Q, 0.05, 3,
                                       lib.TF_LIE_EULER, 1, 1, 4096, nt, p(Ro), p(bo), p(lo), ffi.NULL, ffi.NULL))
            assert st == [0] * 7, (nt, st)
            got = [out, codes, loss[0], gb, G, S0, S1, S2, cnt, Ro, bo, lo]
            if ref is None:
                ref = got
            for a, r in zip(got, ref):
                assert np.array_equal(np.asarray(a), np.asarray(r)), nt
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


# --------------------------------------------------------------- races ---

def _problem(i: int):
    rng = np.random.default_rng(500 + i)
    # several reduction chunks, so every call really uses the pool / OpenMP team;
    # cluster-separated, so form="separated" runs the separation checks (per-thread slots)
    return separated_problem(rng, M=3, Q=3, n_per=_config.CHUNK_SIZE + 5 * i)


def _calls(p, backend):
    gb, om = tf.gradient(*p.euclid, backend=backend)
    gbs, oms = tf.gradient(*p.euclid, backend=backend, form="separated")
    return (gb, om, gbs, oms, tf.loss(*p.euclid, backend=backend), tf.sector_codes(p.R, p.b, p.X, backend=backend),
            tf.truncate(p.R, p.b, p.X, backend=backend))


@pytest.mark.parametrize("backend", [b for b in AVAILABLE_BACKENDS if b in ("numba", "c")])
def test_thread_count_changes_while_many_threads_compute(backend, restore_threads):
    """8 threads call gradient (both forms) / loss / truncate / sector codes in a
    loop while another thread keeps changing the thread count (1..5): no call fails
    ("cannot schedule new futures after shutdown", an IndexError on per-thread slots) and
    every result has the bits of a sequential call."""
    problems = [_problem(i) for i in range(4)]
    want = [_calls(p, backend) for p in problems]
    stop = threading.Event()
    errors: list = []
    mismatches: list = []

    def changer():
        k = 0
        while not stop.is_set():
            tf.set_num_threads(1 + k % 5)
            k += 1

    def worker(t):
        try:
            for it in range(6):
                i = (t + it) % len(problems)
                p = problems[i]
                got = _calls(p, backend)
                for a, w in zip(got, want[i]):
                    if not np.array_equal(a, w):
                        mismatches.append((t, it))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    ch = threading.Thread(target=changer)
    ch.start()
    workers = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    stop.set()
    ch.join()
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]


def test_pool_of_a_call_is_not_shut_down_under_it(restore_threads):
    """White-box: a call that started on a pool keeps it after the count changes; the
    retired pool shuts down when its last call leaves."""
    from truncfast._kernels import parallel

    tf.set_num_threads(2)
    started, release = threading.Event(), threading.Event()
    seen = []

    def slow(a, c, i):
        started.set()
        release.wait(10)
        seen.append((a, c))

    th = threading.Thread(target=lambda: parallel.run_ranges(slow, 0, 4))
    th.start()
    assert started.wait(10)
    first = parallel._pool
    tf.set_num_threads(3)
    parallel.run_ranges(lambda a, c, i: None, 0, 6)  # replaces the pool while `slow` runs on the old one
    assert parallel._pool is not first and first.retired and first.users == 1
    release.set()
    th.join(10)
    assert sorted(seen) == [(0, 2), (2, 4)]  # two threads, two ranges
    assert first.users == 0 and first.executor._shutdown
