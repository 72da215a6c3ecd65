"""Make Numba's on-disk cache notice the modules a cached kernel depends on.

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
from types import ModuleType


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
