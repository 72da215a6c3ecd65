"""Cold-compile and warm-cache first-call latency of the Numba kernels.

Run:  python benchmarks/compile_times.py

Each measurement runs in a fresh interpreter (``bench_ccore.first_call``, the
same snippet the report uses).  "cold" points NUMBA_CACHE_DIR at an empty
directory (nothing compiled yet); "warm" reuses that directory, so the kernels
load from Numba's on-disk cache.  Reported: import time of truncfast and the
wall time of the first ``gradient`` and ``truncate`` calls.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_ccore import first_call  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = first_call("numba", cache)
        warm = first_call("numba", cache)
    for name, res in (("numba cold (empty cache)", cold), ("numba warm (cached)", warm)):
        print(f"{name:26s} " + "  ".join(f"{k}={v:.3f}s" for k, v in res.items()))


if __name__ == "__main__":
    main()
