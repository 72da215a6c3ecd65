"""Numba's on-disk cache: one decorator for every kernel, and cache keys that see dependencies.

:func:`jit` is how every Numba kernel of truncfast is compiled (instead of
``njit(cache=True, nogil=True)``).  Numba raises at *decoration* time —
hence at ``import truncfast`` — when it finds no writable cache directory
(read-only site-packages, no writable ``HOME``, no ``NUMBA_CACHE_DIR``); then
:func:`jit` compiles the kernel uncached instead (same code, same bits; it is
only compiled again in every process) and warns once per process.

Numba keys a cached function on its own source file only, yet it freezes the
globals it reads (``_config.ACC_LANES``) and links the functions it calls from
other modules (``truncfast._kernels.numba_kernels.general_chunk``, ``truncfast._kernels.expm``) into the cached
code.  After an edit of one of those modules the cache would silently keep
the old code — and break the bitwise equality of the Numba and C backends, or
of the compiled and Python integrator loops.  :func:`stamp` adds the
dependencies' (mtime, size) to the cache stamp, which makes such a cache stale.
"""

from __future__ import annotations

import os
import threading
import warnings
from types import ModuleType
from typing import Any, Callable

from numba import njit

__all__ = ["jit", "uncached", "stamp"]

#: Kernels compiled without an on-disk cache in this process (qualified names).
uncached: list[str] = []
_warn_lock = threading.Lock()


def _is_no_locator(exc: BaseException) -> bool:
    # numba.core.caching.CacheImpl: "cannot cache function %r: no locator available for file %r"
    return isinstance(exc, RuntimeError) and "no locator available" in str(exc)


def jit(fn: Callable | None = None, **options: Any):
    """``njit(cache=True, nogil=True, **options)``; uncached, with one warning per process,
    where Numba has no writable cache directory (the library must import and run anywhere)."""

    def decorate(f: Callable):
        try:
            return njit(cache=True, nogil=True, **options)(f)
        except RuntimeError as exc:
            if not _is_no_locator(exc):
                raise
        with _warn_lock:
            first = not uncached
            uncached.append(f"{f.__module__}.{f.__qualname__}")
        if first:
            # warn_explicit without a source line: one line on stderr, filterable as usual
            warnings.warn_explicit(
                "truncfast: no writable Numba cache directory for "
                f"{os.path.dirname(getattr(f, '__code__').co_filename)!r} (read-only install and HOME); "
                "kernels are compiled uncached in every process — set NUMBA_CACHE_DIR to a writable "
                "directory to cache them", RuntimeWarning, "truncfast", 0, module="truncfast")
        return njit(nogil=True, **options)(f)

    return decorate(fn) if fn is not None else decorate


def stamp(dispatchers, modules: list[ModuleType]) -> None:
    """Key the cache of every dispatcher in ``dispatchers`` also on the files of ``modules``."""
    deps = []
    for mod in modules:
        try:
            st = os.stat(mod.__file__)
            deps.append((st.st_mtime, st.st_size))
        except (OSError, TypeError):  # pragma: no cover - frozen installs
            deps.append(None)
    for d in dispatchers:
        try:
            cf = d._cache._cache_file
            cf._source_stamp = (cf._source_stamp, tuple(deps))
        except AttributeError:  # pragma: no cover - NUMBA_DISABLE_JIT or another Numba layout
            pass
