"""Numba code-generation target: let LLVM use full 512-bit vectors on AVX-512.

LLVM tunes Skylake-and-later server CPUs with ``prefer-256-bit``: it keeps
vector code to 256-bit registers even where AVX-512 is available.  Our kernels
are long, branch-free loops over the points of a block, where 512-bit vectors
measured 27 % faster (N = 2·10⁵, M = L = 8, one thread: 0.070 s → 0.051 s) and
give the same bits (no sum is reassociated; the vector width only changes how
many independent lanes run at once).

:func:`prefer_wide_vectors` (called first thing by ``import truncfast``) sets
``NUMBA_CPU_FEATURES`` to the host's features plus ``-prefer-256-bit`` — Numba
reads it when it is imported and builds its code generator right then.  It does
nothing when the host has no AVX-512, when the user set ``NUMBA_CPU_FEATURES``
or ``NUMBA_CPU_NAME`` themselves, when ``TRUNCFAST_NUMBA_WIDE_VECTORS=0``, or
when Numba was imported before truncfast (its target is fixed by then).  Being
an environment variable, it also reaches every Numba function compiled later in
the process and in child processes (dask workers, multiprocessing), which is
why it can be switched off.  Numba keys its on-disk cache on the features, so
cached code never mixes the two settings.
"""

from __future__ import annotations

import os

from truncfast import _config

__all__ = ["prefer_wide_vectors"]


def prefer_wide_vectors() -> bool:
    """Apply the setting if it applies; return whether it is in effect."""
    import sys

    current = _config.env_raw("NUMBA_CPU_FEATURES")
    if "-prefer-256-bit" in current:
        return True
    if not _config.env_numba_wide_vectors():
        return False
    if current or _config.env_raw("NUMBA_CPU_NAME") or "numba" in sys.modules:
        return False
    try:
        import llvmlite.binding as ll  # does not import numba

        features = ll.get_host_cpu_features()
    except Exception:  # llvmlite missing or unusable: nothing to tune
        return False
    if not features.get("avx512f", False):
        return False
    os.environ["NUMBA_CPU_FEATURES"] = features.flatten() + ",-prefer-256-bit"
    return True
