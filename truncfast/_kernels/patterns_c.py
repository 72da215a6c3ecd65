"""The C core's pattern kernels (``csrc/tf_patterns.c``), with the signatures of their Numba twins.

Thin wrappers over the cffi extension through ``truncfast._ccore`` (its
``ffi``/``lib``, ``_buf`` zero-copy pointers and ``_check`` status handling):
arrays in, arrays out, one FFI crossing per call.  The results have the bits of
``truncfast._kernels.patterns`` (tests/test_patterns.py checks it).  Unlike the
Numba range kernels, each call covers its whole range with OpenMP threads.
"""

from __future__ import annotations

import numpy as np

from truncfast._kernels import ccore as _ccore  # the only importer of the extension

__all__ = ["available", "pass_chunks", "stats", "local_moments", "assemble"]


def available() -> bool:
    return _ccore.available() and hasattr(_ccore.lib, "tf_pattern_assemble")


def _p(ctype, arr, dtype, name):
    return _ccore._buf(ctype, arr, dtype, name)


def pass_chunks(R, b, X, labels, chunk, c_first, c_last, group_of, m32, rho32, lkeys, llab, lcount,
                threads=None) -> None:
    """Full pass phase 1 for chunks c_first..c_last-1 into slots 0.. (``patterns.pass_range`` with c0 = c_first)."""
    _ccore.calls["pattern_pass"] += 1
    N, M = X.shape
    L = b.shape[0]
    _ccore._check(_ccore.lib.tf_pattern_pass(
        _p("double *", R, np.float64, "R"), _p("double *", b, np.float64, "b"), _p("double *", X, np.float64, "X"),
        _p("int64_t *", labels, np.int64, "labels"), N, M, L, chunk, c_first, c_last, _ccore._threads(threads),
        _p("int32_t *", group_of, np.int32, "group_of"), _p("float *", m32, np.float32, "m32"),
        _p("float *", rho32, np.float32, "rho32"), _p("uint64_t *", lkeys, np.uint64, "lkeys"),
        _p("int64_t *", llab, np.int64, "llab"), _p("int64_t *", lcount, np.int64, "lcount")), "pattern pass")


def stats(R, b, X, chunk, codes, m32, rho32, threads=None) -> None:
    """Codes, margins and ρ of the rows of X (``patterns.stats_range`` over all chunks)."""
    _ccore.calls["pattern_stats"] += 1
    K, M = X.shape
    L = b.shape[0]
    _ccore._check(_ccore.lib.tf_pattern_stats(
        _p("double *", R, np.float64, "R"), _p("double *", b, np.float64, "b"), _p("double *", X, np.float64, "X"),
        K, M, L, chunk, _ccore._threads(threads), _p("uint64_t *", codes, np.uint64, "codes"),
        _p("float *", m32, np.float32, "m32"), _p("float *", rho32, np.float32, "rho32")), "pattern stats")


def local_moments(X, group_of, chunk, c_first, c_last, loff, ln, lmean, lscat, threads=None) -> None:
    """Full pass phase 2 (``patterns.local_moments_range`` with c0 = c_first)."""
    _ccore.calls["pattern_moments"] += 1
    N, M = X.shape
    _ccore._check(_ccore.lib.tf_pattern_local_moments(
        _p("double *", X, np.float64, "X"), _p("int32_t *", group_of, np.int32, "group_of"), N, M, chunk,
        c_first, c_last, _ccore._threads(threads), _p("int64_t *", loff, np.int64, "loff"),
        _p("int64_t *", ln, np.int64, "ln"), _p("double *", lmean, np.float64, "lmean"),
        _p("double *", lscat, np.float64, "lscat")), "pattern moments")


def assemble(R, b, T, keys, labs, tn, tmean, tscat, G, blk, threads=None):
    """Raw (loss, gb (L, M), G (L, M, M)) sums of §11 from the first G groups, blocks of ``blk``."""
    _ccore.calls["pattern_assemble"] += 1
    L, M = b.shape
    loss = _ccore.ffi.new("double *")
    gb = np.empty((L, M))
    Gm = np.empty((L, M, M))
    _ccore._check(_ccore.lib.tf_pattern_assemble(
        _p("double *", R, np.float64, "R"), _p("double *", b, np.float64, "b"), _p("double *", T, np.float64, "T"),
        _p("uint64_t *", keys, np.uint64, "keys"), _p("int64_t *", labs, np.int64, "labs"),
        _p("int64_t *", tn, np.int64, "tn"), _p("double *", tmean, np.float64, "tmean"),
        _p("double *", tscat, np.float64, "tscat"), G, M, L, blk, _ccore._threads(threads), loss,
        _p("double *", gb, np.float64, "gb"), _p("double *", Gm, np.float64, "Gm")), "pattern assemble")
    return float(loss[0]), gb, Gm
