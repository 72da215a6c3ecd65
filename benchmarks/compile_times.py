"""Cold-compile and warm-cache first-call latency of the Numba kernels.

Run:  python benchmarks/compile_times.py

Each measurement runs in a fresh interpreter.  "cold" points NUMBA_CACHE_DIR at
an empty directory (nothing compiled yet); "warm" reuses that directory, so the
kernels load from Numba's on-disk cache.  Reported: import time of truncfast
and the wall time of the first ``gradient`` and ``truncate`` calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

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
backend = BACKEND
t2 = time.perf_counter(); tf.gradient(R, b, X, labels, T, backend=backend)
t3 = time.perf_counter(); tf.truncate(R, b, X, backend=backend)
t4 = time.perf_counter(); tf.loss(R, b, X, labels, T, backend=backend)
t5 = time.perf_counter(); tf.gradient(R, b, X, labels, T, backend=backend)
t6 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first_gradient": t3 - t2, "first_truncate": t4 - t3,
                  "first_loss": t5 - t4, "second_gradient": t6 - t5}))
"""


def measure(backend: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", SNIPPET.replace("BACKEND", repr(backend))],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = measure("numba", cache)
        warm = measure("numba", cache)
    for name, res in (("numba cold (empty cache)", cold), ("numba warm (cached)", warm)):
        print(f"{name:26s} " + "  ".join(f"{k}={v:.3f}s" for k, v in res.items()))


if __name__ == "__main__":
    main()
