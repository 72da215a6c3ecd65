#!/usr/bin/env python
"""Memory of the engine: its own allocations must not grow with N (issue 7.5).

For each N, a fresh interpreter (clean baseline) writes X (N, M) float64 and
labels (N,) int64 to ``.npy`` files in chunks, opens them with
``np.load(mmap_mode="r")`` and streams them through ``gradient``, ``loss``,
``integrate`` with the per-point engine (and, for comparison, ``truncate``,
whose (N, M) *result* grows with N by definition, and ``integrate-moments``,
the moments engine of issue 14, which keeps 24 bytes per point by design plus
the groups and a bounded scratch of its full pass).  Per call it reports

* ``anon_MB``: peak growth of the process's *anonymous* resident memory
  (``RssAnon`` of /proc/self/status, sampled every ms by a thread; the kernels
  release the GIL).  Pages of the memmapped file are file-backed (``RssFile``),
  the page cache's business, not the engine's: a copy of X would show up here.
* ``numpy_MB``: tracemalloc peak (NumPy registers its buffers with
  tracemalloc; Numba NRT and the C core's scratch are not traced, which is why
  RssAnon is the primary measure).

JIT compilation, the thread pool and the first call's caches are warmed up on a
tiny problem first, so they are not counted.

Usage::

    python benchmarks/bench_memory.py                       # N = 1e5 and 1e7, M = L = 4
    python benchmarks/bench_memory.py --N 100000 1000000 --json
    python benchmarks/bench_memory.py --backends numba c --ops gradient integrate

Linux only (RssAnon).  The 1e7 case writes 400 MB of .npy files to --dir
(default: a temporary directory, removed afterwards).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _memory import PeakRSS  # noqa: E402

MB = 2.0**20
OPS = ("gradient", "loss", "integrate", "checkpointed-integrate", "truncate", "integrate-moments")


def rss_anon() -> int:
    """Anonymous resident memory of this process in bytes (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon not in /proc/self/status (Linux only)")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


class PeakAnon(PeakRSS):
    """Peak RssAnon growth while active (sampled every ``interval`` s) plus the tracemalloc peak."""

    def __init__(self, interval: float = 0.001):
        super().__init__(interval)

    def sample(self) -> int:
        return rss_anon()

    def __enter__(self):
        # return freed heap memory to the OS first: otherwise an allocation can reuse
        # pages freed (but still resident) by an earlier call and go unseen
        gc.collect()
        _malloc_trim()
        tracemalloc.start()
        tracemalloc.reset_peak()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.numpy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def write_data(folder: str, N: int, M: int, Q: int, seed: int = 0, rows: int = 1 << 18):
    """X.npy (N, M) and labels.npy (N,) written in chunks (never N rows in memory at once)."""
    rng = np.random.default_rng(seed)
    Xp, lp = os.path.join(folder, "X.npy"), os.path.join(folder, "labels.npy")
    X = np.lib.format.open_memmap(Xp, mode="w+", dtype=np.float64, shape=(N, M))
    lab = np.lib.format.open_memmap(lp, mode="w+", dtype=np.int64, shape=(N,))
    for s in range(0, N, rows):
        n = min(rows, N - s)
        X[s:s + n] = rng.standard_normal((n, M))
        lab[s:s + n] = rng.integers(0, Q, size=n)
    X.flush()
    lab.flush()
    del X, lab
    return Xp, lp


def problem_state(M: int, L: int, Q: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    R = np.array([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(L)])
    return R, 0.5 * rng.standard_normal((L, M)), rng.standard_normal((Q, M))


def measure_one(N: int, M: int, L: int, Q: int, backends, ops, folder: str, steps: int) -> list[dict]:
    """Run in a fresh process: measure every (backend, op) on memmapped data of N rows."""
    import truncfast as tf

    R, b, T = problem_state(M, L, Q)
    Xp, lp = write_data(folder, N, M, Q)
    X = np.load(Xp, mmap_mode="r")
    labels = np.load(lp, mmap_mode="r")
    file_bytes = X.nbytes + labels.nbytes
    # warm-up: JIT, pool threads, cffi, first-call caches
    Xs, ls = np.ascontiguousarray(X[:5000]), np.ascontiguousarray(labels[:5000])
    ck = os.path.join(folder, "ck.npz")
    for bk in backends:
        tf.gradient(R, b, Xs, ls, T, backend=bk)
        tf.loss(R, b, Xs, ls, T, backend=bk)
        tf.truncate(R, b, Xs, backend=bk)
        tf.integrate(R, b, Xs, ls, T, dt=0.01, steps=2, backend=bk, checkpoint=ck)
        tf.integrate(R, b, Xs[:100], ls[:100], T, dt=0.01, steps=2, backend=bk)
        tf.integrate(R, b, Xs, ls, T, dt=0.01, steps=2, backend=bk, engine="moments")
    rows = []
    for bk in backends:
        for op in ops:
            t0 = time.perf_counter()
            with PeakAnon() as mem:
                if op == "gradient":
                    out = tf.gradient(R, b, X, labels, T, backend=bk)
                elif op == "loss":
                    out = tf.loss(R, b, X, labels, T, backend=bk)
                elif op == "integrate":
                    out = tf.integrate(R, b, X, labels, T, dt=0.01, steps=steps, record_every=steps, backend=bk,
                                       engine="direct")
                elif op == "checkpointed-integrate":
                    out = tf.integrate(R, b, X, labels, T, dt=0.01, steps=steps, record_every=steps, backend=bk,
                                       checkpoint=ck, checkpoint_every=1, engine="direct")
                elif op == "integrate-moments":
                    out = tf.integrate(R, b, X, labels, T, dt=0.01, steps=steps, record_every=steps, backend=bk,
                                       engine="moments")
                elif op == "truncate":
                    out = tf.truncate(R, b, X, backend=bk)
                else:  # pragma: no cover
                    raise ValueError(op)
            seconds = time.perf_counter() - t0
            del out
            rows.append(dict(N=N, M=M, L=L, backend=bk, op=op, anon_MB=round(mem.growth / MB, 2),
                             numpy_MB=round(mem.numpy_peak / MB, 2), file_MB=round(file_bytes / MB, 1),
                             seconds=round(seconds, 3)))
    assert not X.flags.writeable and isinstance(X, np.memmap)
    return rows


def run_in_subprocess(N, M, L, Q, backends, ops, steps, folder=None) -> list[dict]:
    """measure_one in a fresh interpreter (its own baseline, no memory from earlier sizes).

    ``N`` may be a list: the sizes are then measured one after the other in the
    same interpreter (cheaper; freed memory is returned with malloc_trim between calls).
    """
    Ns = [N] if isinstance(N, int) else list(N)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--N", *map(str, Ns), "--M", str(M), "--L", str(L),
               "--Q", str(Q), "--steps", str(steps), "--dir", tmp, "--backends", *backends, "--ops", *ops]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-4000:])
        return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="peak anonymous-memory growth of truncfast calls vs N")
    ap.add_argument("--N", type=lambda s: int(float(s)), nargs="+", default=[10**5, 10**7])
    ap.add_argument("--M", type=int, default=4)
    ap.add_argument("--L", type=int, default=4)
    ap.add_argument("--Q", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="integration steps")
    ap.add_argument("--backends", nargs="+", default=None)
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--dir", default=None, help="where the .npy files go (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)
    if ns.backends is None:
        import truncfast as tf

        ns.backends = [k for k, v in tf.backends().items() if v == "available"]
    if ns.child:
        rows = []
        for N in ns.N:
            rows += measure_one(N, ns.M, ns.L, ns.Q, ns.backends, ns.ops, ns.dir, ns.steps)
        print(json.dumps(rows))
        return 0
    rows = []
    for N in ns.N:
        rows += run_in_subprocess(N, ns.M, ns.L, ns.Q, ns.backends, ns.ops, ns.steps, ns.dir)
    if ns.json:
        print(json.dumps(rows))
        return 0
    print(f"{'N':>10} {'backend':>7} {'op':>22} {'RssAnon MB':>10} {'numpy MB':>9} {'file MB':>8} {'s':>7}")
    for r in rows:
        print(f"{r['N']:>10} {r['backend']:>7} {r['op']:>22} {r['anon_MB']:>10} {r['numpy_MB']:>9} "
              f"{r['file_MB']:>8} {r['seconds']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
