"""Thread pool that runs GIL-free kernels over fixed chunk ranges.

The number of worker threads only decides *who* computes a chunk, never how
chunks are summed (see ``truncfast._kernels.numba_kernels``), so results are bitwise identical
for any thread count.  The count is, in order of precedence: the value given to
:func:`set_num_threads`, the environment variable ``TRUNCFAST_NUM_THREADS``,
``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, and the number of usable CPUs —
never more than ``_config.MAX_THREADS`` (the C core's ``TF_MAX_THREADS``).
:func:`set_num_threads` refuses anything but an integer in 1..MAX_THREADS; a bad
``TRUNCFAST_NUM_THREADS`` is ignored with one warning (``_config.env_num_threads``).

Thread safety.  Any number of Python threads may call the kernels at once,
and :func:`set_num_threads` may change the count while they run: a pool is
reference-counted by the calls using it and shut down only when it has been
replaced *and* its last call has finished, so no call ever submits to a pool
that was shut down under it.  A caller that sizes per-range scratch reads the
count once with :func:`get_num_threads` and passes it to :func:`run_ranges`.
"""

from __future__ import annotations

import numbers
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from truncfast import _config

__all__ = ["get_num_threads", "set_num_threads", "check_num_threads", "run_ranges"]

_lock = threading.Lock()
_requested: int | None = None


class _Pool:
    """A worker pool and the number of calls using it (guarded by ``_lock``)."""

    def __init__(self, n: int):
        self.size = n
        self.executor = ThreadPoolExecutor(max_workers=n, thread_name_prefix="truncfast")
        self.users = 0
        self.retired = False


_pool: _Pool | None = None


def _default_threads() -> int:
    n = _config.env_default_threads()
    if n is not None:
        return n
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, _config.MAX_THREADS))


def get_num_threads() -> int:
    """Worker threads used by the Numba backend and the C core (1..``_config.MAX_THREADS``)."""
    n = _requested
    return n if n is not None else _default_threads()


def check_num_threads(n: object, name: str = "n") -> int:
    """``n`` as a thread count: an integer (NumPy integers too) in 1..``_config.MAX_THREADS``.

    Bools, floats, strings and anything else raise :class:`truncfast.InputError`
    naming ``name``; counts above the maximum are refused rather than clamped,
    so a typo (``200000``) is seen at once.
    """
    from truncfast._errors import InputError

    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise InputError(f"{name}: number of threads must be a positive integer, got {n!r} ({type(n).__name__})")
    v = int(n)
    if v < 1:
        raise InputError(f"{name}: number of threads must be a positive integer, got {v}")
    if v > _config.MAX_THREADS:
        raise InputError(f"{name}: {v} threads is more than truncfast's maximum of {_config.MAX_THREADS} "
                         "(_config.MAX_THREADS, the C core's TF_MAX_THREADS); os.cpu_count() tells how many "
                         "CPUs this machine has")
    return v


def set_num_threads(n: int) -> None:
    """Set the number of worker threads (an integer in 1..``_config.MAX_THREADS``).

    Safe while other threads compute: calls already running finish on the
    pool they started with; results never depend on the count.
    """
    global _requested
    _requested = check_num_threads(n)


def _acquire(n: int) -> _Pool:
    """The pool of ``n`` workers, marked in use by one more call."""
    global _pool
    with _lock:
        if _pool is None or _pool.size != n:
            old, _pool = _pool, _Pool(n)
            if old is not None:
                old.retired = True
                if old.users == 0:
                    old.executor.shutdown(wait=False)
        _pool.users += 1
        return _pool


def _release(pool: _Pool) -> None:
    with _lock:
        pool.users -= 1
        if pool.retired and pool.users == 0:
            pool.executor.shutdown(wait=False)


def run_ranges(fn: Callable[[int, int, int], None], first: int, last: int, *, split: int = 1,
               threads: int | None = None) -> int:
    """Call ``fn(a, b, i)`` on contiguous sub-ranges ``a..b-1`` covering ``first..last-1``.

    ``i`` numbers the sub-ranges 0, 1, …; their number — at most ``split`` times
    the thread count — is returned.  ``split > 1`` cuts the work into more
    pieces than threads, handed out as threads become free, so one slow thread
    (another process on its core) does not hold up the rest; callers that keep
    an accumulator per sub-range must size it with ``split`` and pass the
    ``threads`` they sized it with (another thread may change the setting in
    between).  With one thread (or one item) the call happens in the caller's
    thread.  Exceptions in workers propagate to the caller.
    """
    count = last - first
    if count <= 0:
        return 0
    if threads is None:
        threads = get_num_threads()
    if threads <= 1 or count == 1:
        fn(first, last, 0)
        return 1
    n = min(threads * max(1, split), count)
    bounds = [first + (count * i) // n for i in range(n + 1)]
    pool = _acquire(threads)  # workers start on demand: at most n of them ever run here
    try:
        futures = [pool.executor.submit(fn, bounds[i], bounds[i + 1], i) for i in range(n)]
        for f in futures:
            f.result()
    finally:
        _release(pool)
    return n
