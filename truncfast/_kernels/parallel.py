"""Thread pool that runs GIL-free kernels over fixed chunk ranges.

The number of worker threads only decides *who* computes a chunk, never how
chunks are summed (see ``truncfast._kernels.numba_kernels``), so results are bitwise identical
for any thread count.  The count is, in order of precedence: the value given to
:func:`set_num_threads`, the environment variable ``TRUNCFAST_NUM_THREADS``,
``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, and the number of usable CPUs.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from truncfast import _config

__all__ = ["get_num_threads", "set_num_threads", "run_ranges"]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_requested: int | None = None


def _default_threads() -> int:
    n = _config.env_default_threads()
    if n is not None:
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def get_num_threads() -> int:
    """Worker threads used by the Numba backend."""
    return _requested if _requested is not None else _default_threads()


def set_num_threads(n: int) -> None:
    """Set the number of worker threads (≥ 1) for the Numba backend."""
    global _requested
    from truncfast._errors import InputError

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InputError(f"n: number of threads must be a positive integer, got {n!r}")
    _requested = n


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="truncfast")
            _pool_size = n
        return _pool


def run_ranges(fn: Callable[[int, int, int], None], first: int, last: int, *, split: int = 1) -> int:
    """Call ``fn(a, b, i)`` on contiguous sub-ranges ``a..b-1`` covering ``first..last-1``.

    ``i`` numbers the sub-ranges 0, 1, …; their number — at most ``split`` times
    the thread count — is returned.  ``split > 1`` cuts the work into more
    pieces than threads, handed out as threads become free, so one slow thread
    (another process on its core) does not hold up the rest; callers that keep
    an accumulator per sub-range must size it with ``split``.  With one thread
    (or one item) the call happens in the caller's thread.  Exceptions in
    workers propagate to the caller.
    """
    count = last - first
    if count <= 0:
        return 0
    threads = get_num_threads()
    if threads <= 1 or count == 1:
        fn(first, last, 0)
        return 1
    n = min(threads * max(1, split), count)
    bounds = [first + (count * i) // n for i in range(n + 1)]
    pool = _executor(min(threads, n))
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], i) for i in range(n)]
    for f in futures:
        f.result()
    return n
