"""This machine's roofline: achievable GFLOP/s and memory bandwidth, 1 and 2 threads.

* **Compute**: a float64 NumPy matmul of two n×n matrices (2n³ flops; BLAS,
  threads limited with threadpoolctl), best of ``repeats``.  This is what a
  well-blocked dense kernel achieves here — an honest ceiling for the
  gradient kernels, which also do ``M×M`` matrix–vector work.
* **Bandwidth**: reading a float64 array much larger than the caches (NumPy
  sums of 1 or 2 slices in as many threads), and a NumPy copy (read + write
  bytes) for reference.
  The gradient kernels *read* X once, so the read bandwidth is the roof.

``roofline_bound(flops, bytes, peak, bw)`` = min(peak, intensity · bw): the
attainable rate of a kernel with that arithmetic intensity.

Run alone: ``python benchmarks/_roofline.py``.
"""

from __future__ import annotations

import time

import numpy as np


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float64 n×n matmul on ``threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    C = np.empty((n, n))
    with threadpool_limits(limits=threads):
        t = _best(lambda: np.matmul(A, B, out=C), repeats)
    return 2.0 * n**3 / t / 1e9


def read_bandwidth(threads: int, mbytes: int = 1024, repeats: int = 5) -> float:
    """GB/s reading a ``mbytes`` MB float64 array: NumPy sums of ``threads`` slices in threads.

    NumPy's reductions release the GIL, so the slices are summed concurrently;
    the pairwise SIMD sum is load-bound on arrays far beyond the caches.
    """
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(mbytes * 2**20 // 8)
    parts = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:
        t = _best(lambda: sum(pool.map(np.sum, parts)), repeats)
    return a.nbytes / t / 1e9


def copy_bandwidth(mbytes: int = 512, repeats: int = 5) -> float:
    """GB/s (bytes read + written) of a single-threaded NumPy copy."""
    a = np.ones(mbytes * 2**20 // 8)
    b = np.empty_like(a)
    t = _best(lambda: np.copyto(b, a), repeats)
    return 2 * a.nbytes / t / 1e9


def measure(quick: bool = False) -> dict:
    """The roof for 1 and 2 threads: ``{threads: {"gflops": ..., "read_GBs": ...}, "copy_GBs": ...}``."""
    n = 1024 if quick else 2048
    mb = 256 if quick else 1024
    rep = 3 if quick else 7
    out: dict = {}
    for th in (1, 2):
        out[th] = {"gflops": matmul_gflops(th, n, rep), "read_GBs": read_bandwidth(th, mb, rep)}
    out["copy_GBs"] = copy_bandwidth(mb // 2, rep)
    out["method"] = (f"float64 matmul {n}×{n} (BLAS, threadpoolctl); read: NumPy sum of a {mb} MB "
                     f"array; best of {rep}")
    return out


def roofline_bound(flops: float, nbytes: float, peak_gflops: float, read_GBs: float) -> float:
    """Attainable GFLOP/s for a kernel of ``flops`` / ``nbytes`` arithmetic intensity."""
    return min(peak_gflops, flops / nbytes * read_GBs)


if __name__ == "__main__":
    r = measure()
    for th in (1, 2):
        print(f"{th} thread(s): {r[th]['gflops']:.1f} GFLOP/s, read {r[th]['read_GBs']:.1f} GB/s")
    print(f"copy (1 thread): {r['copy_GBs']:.1f} GB/s;  {r['method']}")
