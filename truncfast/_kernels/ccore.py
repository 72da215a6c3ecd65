"""The only importer of the compiled C core (``truncfast._ccore_cffi``).

Thin wrappers around ``csrc/truncfast.h``: arrays in, arrays out, one FFI
crossing per call (never per point).  Inputs must already be C-contiguous
float64 (labels int64), as the API boundary (``_validate``) guarantees; they
are passed zero-copy with ``ffi.from_buffer`` and a non-contiguous or
wrongly-typed array is refused (``TypeError``) instead of silently copied.
The C functions release the GIL while they run (cffi API mode).  Every call
takes the thread count of the Numba backend (``truncfast._kernels.parallel.get_num_threads``,
i.e. ``tf.set_num_threads`` or the environment) unless ``threads`` is given;
the results never depend on it.

Results have the same layout and meaning as the Numba kernels
(``truncfast._kernels.numba_kernels``): raw sums, not divided by N, G not antisymmetrised
(docs/theory.md §5, §6), and with the same chunk size the same bits.

The core is optional: when the extension was not built (no compiler,
``TRUNCFAST_NO_CEXT=1`` at build time) or ``TRUNCFAST_NO_CEXT=1`` is set at run
time, :func:`available` is False and :func:`unavailable_reason` says why.
"""

from __future__ import annotations

import collections

import numpy as np

from truncfast import _config

__all__ = ["available", "unavailable_reason", "calls", "has_openmp", "max_threads", "block_size", "acc_lanes", "moments_box",
           "truncate", "codes", "general", "moments", "violations", "retraction", "integrate",
           "unaligned_inverse", "unaligned_forward", "unaligned_general"]

#: Calls into the C core per function name (lets tests prove the C path ran).
calls: collections.Counter = collections.Counter()

_reason = ""
ffi = lib = None
if _config.env_no_cext():
    _reason = "disabled by the environment variable TRUNCFAST_NO_CEXT"
else:
    _config.apply_omp_wait_policy()  # before the OpenMP runtime loads with the extension
    try:
        from truncfast._ccore_cffi import ffi, lib  # type: ignore[import-not-found]
    except ImportError as exc:  # not built: no compiler, or installed without the C core
        _reason = (f"the C extension truncfast._ccore_cffi is not built ({exc}); reinstall with a "
                   "C compiler and without TRUNCFAST_NO_CEXT to get it")


def available() -> bool:
    """True when the compiled C core is importable (and not disabled)."""
    return lib is not None


def unavailable_reason() -> str:
    """Why the C core is unavailable ('' when it is available)."""
    return _reason


def has_openmp() -> bool:
    """True when the core was compiled with OpenMP (else it runs serially, same bits)."""
    return bool(lib.tf_has_openmp())


def max_threads() -> int:
    """OpenMP's default thread count (the C core uses ``truncfast._kernels.parallel.get_num_threads()`` per call)."""
    return int(lib.tf_max_threads())


def kernel_width() -> int:
    """Points per register tile of the C kernels on this CPU (8 AVX-512, 4 AVX2, 2 otherwise)."""
    return int(lib.tf_kernel_width())


def block_size() -> int:
    """Points per SIMD block compiled into the core (must equal ``_config.BLOCK_SIZE`` for equal bits)."""
    return int(lib.tf_block_size())


def acc_lanes() -> int:
    """Accumulator lanes of the bias and pair sums (must equal ``_config.ACC_LANES`` for equal bits)."""
    return int(lib.tf_acc_lanes())


# ------------------------------------------------------------------ helpers ---

def _buf(ctype: str, arr: np.ndarray | None, dtype: type, name: str):
    """Zero-copy pointer to ``arr``'s data (NULL for None or empty arrays)."""
    if arr is None or arr.size == 0:
        return ffi.NULL
    if arr.dtype != dtype or not arr.flags.c_contiguous:
        # the API boundary converts; a copy here would hide a slow path
        raise TypeError(f"_ccore: {name} must be a C-contiguous {np.dtype(dtype).name} array, "
                        f"got {arr.dtype} (C-contiguous: {arr.flags.c_contiguous})")
    return ffi.cast(ctype, ffi.from_buffer(arr))


def _check(status: int, what: str) -> None:
    if status != 0:
        message = ffi.string(lib.tf_status_string(status)).decode()
        if status == lib.TF_ERR_NOMEM:
            raise MemoryError(f"truncfast C core, {what}: {message}")
        raise ValueError(f"truncfast C core, {what}: {message} (status {status})")


def _threads(threads: int | None) -> int:
    """OpenMP threads of a call: ``threads`` or truncfast's setting (``tf.set_num_threads``,
    ``TRUNCFAST_NUM_THREADS``, ``OMP_NUM_THREADS``, ...), shared with the Numba backend."""
    if threads is None:
        from truncfast._kernels.parallel import get_num_threads

        threads = get_num_threads()
    # the C core clamps too (TF_MAX_THREADS); clamping here keeps any Python int inside a C int
    return max(0, min(int(threads), _config.MAX_THREADS))


def _dims(R: np.ndarray, b: np.ndarray, X: np.ndarray) -> tuple[int, int, int]:
    L, M = b.shape
    N = X.shape[0]
    assert R.shape == (L, M, M) and X.shape == (N, M), "shapes of R, b, X do not match"
    return N, M, L


# ---------------------------------------------------------------- kernels ---

def truncate(R: np.ndarray, b: np.ndarray, X: np.ndarray, chunk: int, threads: int | None = None) -> np.ndarray:
    """τ^(L)(x) for every row of X, (N, M) (docs/theory.md §2, §4)."""
    calls["truncate"] += 1
    N, M, L = _dims(R, b, X)
    out = np.empty((N, M))
    _check(lib.tf_truncate(_buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
                           _buf("double *", X, np.float64, "X"), N, M, L, chunk, _threads(threads),
                           _buf("double *", out, np.float64, "out")), "truncate")
    return out


def codes(R: np.ndarray, b: np.ndarray, X: np.ndarray, chunk: int, threads: int | None = None) -> np.ndarray:
    """Sector codes (N, L) uint64 along the composition; bit i = h_ℓ,i (docs/theory.md §2)."""
    calls["codes"] += 1
    N, M, L = _dims(R, b, X)
    out = np.empty((N, L), dtype=np.uint64)
    _check(lib.tf_codes(_buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
                        _buf("double *", X, np.float64, "X"), N, M, L, chunk, _threads(threads),
                        _buf("uint64_t *", out, np.uint64, "codes")), "codes")
    return out


def general(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, T: np.ndarray,
            W: np.ndarray, bout: np.ndarray, Y: np.ndarray, standard: bool, want_grad: bool,
            chunk: int, threads: int | None = None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw loss and gradient sums of the general flow (docs/theory.md §5).

    Returns ``(loss, gb (L, M), G (L, M, M), gW (P, M), gbo (P,))`` with
    ``loss = Σ ½|res|²``, ``gb = −Σ (1 − h_ℓ) ⊙ r_ℓ``,
    ``P_A(G_ℓ) = P_A(Σ (h_ℓ ⊙ r_ℓ) v_ℓᵀ − r_ℓ t_ℓᵀ)`` (G comes back strictly
    upper triangular: only its antisymmetric part is meaningful), and for the standard loss
    ``gW = Σ res z_Lᵀ``, ``gbo = Σ res`` (zeros otherwise) — exactly as
    ``truncfast._kernels.numba_kernels.general_kernel``.
    """
    calls["general"] += 1
    N, M, L = _dims(R, b, X)
    P = W.shape[0]
    Q = Y.shape[0] if standard else T.shape[0]
    loss = ffi.new("double *")
    gb = np.empty((L, M))
    G = np.empty((L, M, M))
    gW = np.zeros((P, M))
    gbo = np.zeros(P)
    _check(lib.tf_general(
        _buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
        _buf("double *", X, np.float64, "X"), _buf("int64_t *", labels, np.int64, "labels"),
        N, M, L, Q,
        ffi.NULL if standard else _buf("double *", T, np.float64, "T"),
        _buf("double *", W, np.float64, "W") if standard else ffi.NULL,
        _buf("double *", bout, np.float64, "bout") if standard else ffi.NULL,
        _buf("double *", Y, np.float64, "Y") if standard else ffi.NULL,
        P if standard else 0, int(bool(standard)), int(bool(want_grad)), chunk, _threads(threads),
        loss, _buf("double *", gb, np.float64, "gb"), _buf("double *", G, np.float64, "G"),
        _buf("double *", gW, np.float64, "gW") if standard else ffi.NULL,
        _buf("double *", gbo, np.float64, "gbo") if standard else ffi.NULL), "general")
    return float(loss[0]), gb, G, gW, gbo


def moments(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, Q: int,
            chunk: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw constrained moments of docs/theory.md §6, cluster j at layer j.

    ``S0[j, i] = Σ h_i``, ``S1[j, i, k] = Σ h_i v_k``, ``S2[j, i, k] = Σ h_i v_i v_k``
    over the points of cluster j, with ``v = R_j x`` and ``h = H(v + b_j)``.
    """
    calls["moments"] += 1
    N, M, L = _dims(R, b, X)
    S0 = np.empty((Q, M))
    S1 = np.empty((Q, M, M))
    S2 = np.empty((Q, M, M))
    _check(lib.tf_moments(
        _buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
        _buf("double *", X, np.float64, "X"), _buf("int64_t *", labels, np.int64, "labels"),
        N, M, L, Q, chunk, _threads(threads), _buf("double *", S0, np.float64, "S0"),
        _buf("double *", S1, np.float64, "S1"), _buf("double *", S2, np.float64, "S2")), "moments")
    return S0, S1, S2


def any_nonfinite(flat: np.ndarray, threads: int | None = None) -> bool:
    """True if the C-contiguous float64 array holds a NaN or ±inf (input validation)."""
    return bool(lib.tf_any_nonfinite(_buf("double *", flat, np.float64, "x"), flat.size, _threads(threads)))


def moments_box(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, Q: int,
                chunk: int, threads: int | None = None):
    """:func:`moments` plus the cluster sizes (Q,) and the extent lo, hi (Q, M) of v = R_j x, in one pass."""
    calls["moments"] += 1
    N, M, L = _dims(R, b, X)
    S0, S1, S2 = np.empty((Q, M)), np.empty((Q, M, M)), np.empty((Q, M, M))
    counts, lo, hi = np.empty(Q), np.empty((Q, M)), np.empty((Q, M))
    _check(lib.tf_moments_box(
        _buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
        _buf("double *", X, np.float64, "X"), _buf("int64_t *", labels, np.int64, "labels"),
        N, M, L, Q, chunk, _threads(threads), _buf("double *", S0, np.float64, "S0"),
        _buf("double *", S1, np.float64, "S1"), _buf("double *", S2, np.float64, "S2"),
        _buf("double *", counts, np.float64, "counts"), _buf("double *", lo, np.float64, "lo"),
        _buf("double *", hi, np.float64, "hi")), "moments")
    return S0, S1, S2, counts, lo, hi


def violations(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, Q: int,
               chunk: int, threads: int | None = None) -> np.ndarray:
    """(Q, L) int64: points of cluster j truncated at some layer ℓ ≠ j (docs/theory.md §6 check)."""
    calls["violations"] += 1
    N, M, L = _dims(R, b, X)
    counts = np.empty((Q, L), dtype=np.int64)
    _check(lib.tf_violations(
        _buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
        _buf("double *", X, np.float64, "X"), _buf("int64_t *", labels, np.int64, "labels"),
        N, M, L, Q, chunk, _threads(threads), _buf("int64_t *", counts, np.int64, "counts")), "violations")
    return counts


# ------------------------------------------------- unaligned weights (§13) ---

def unaligned_inverse(W: np.ndarray) -> np.ndarray:
    """W_ℓ⁻¹ of every layer by the core's Gauss–Jordan elimination (``ValueError`` if a pivot is 0)."""
    calls["unaligned_inverse"] += 1
    L, M, _ = W.shape
    out = np.empty_like(W)
    _check(lib.tf_unaligned_inverse(_buf("double *", W, np.float64, "W"), M, L,
                                    _buf("double *", out, np.float64, "Winv")), "unaligned_inverse")
    return out


def unaligned_forward(W: np.ndarray, b: np.ndarray, X: np.ndarray, want_codes: bool, chunk: int,
                      threads: int | None = None) -> np.ndarray:
    """τ^(L)(x) (N, M) or the sector codes (N, L) uint64 with general invertible W (docs/theory.md §13)."""
    calls["unaligned_forward"] += 1
    N, M, L = _dims(W, b, X)
    args = (_buf("double *", W, np.float64, "W"), _buf("double *", b, np.float64, "b"),
            _buf("double *", X, np.float64, "X"), N, M, L, chunk, _threads(threads))
    if want_codes:
        out = np.empty((N, L), dtype=np.uint64)
        _check(lib.tf_unaligned_codes(*args, _buf("uint64_t *", out, np.uint64, "codes")), "unaligned codes")
    else:
        out = np.empty((N, M))
        _check(lib.tf_unaligned_truncate(*args, _buf("double *", out, np.float64, "out")), "unaligned truncate")
    return out


def unaligned_general(W: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, T: np.ndarray,
                      want_grad: bool, chunk: int, threads: int | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Raw sums ``(loss, gb (L, M), gW (L, M, M))`` of the Euclidean loss in (W, b) (docs/theory.md §13),
    the same bits as ``truncfast._kernels.unaligned_numba`` with the same chunk."""
    calls["unaligned_general"] += 1
    N, M, L = _dims(W, b, X)
    loss = ffi.new("double *")
    gb, gW = np.empty((L, M)), np.empty((L, M, M))
    _check(lib.tf_unaligned_general(
        _buf("double *", W, np.float64, "W"), _buf("double *", b, np.float64, "b"),
        _buf("double *", X, np.float64, "X"), _buf("int64_t *", labels, np.int64, "labels"),
        N, M, L, T.shape[0], _buf("double *", T, np.float64, "T"), int(bool(want_grad)), chunk,
        _threads(threads), loss, _buf("double *", gb, np.float64, "gb"),
        _buf("double *", gW, np.float64, "gW")), "unaligned general")
    return float(loss[0]), gb, gW


# ------------------------------------------------------------- the flow ---

def retraction(A: np.ndarray, method: int) -> np.ndarray:
    """``exp(A)`` (``lib.TF_LIE_EULER``) or the Cayley map (``lib.TF_CAYLEY``) of an
    antisymmetric (M, M) matrix, by ``tf_retraction`` (docs/theory.md §9)."""
    calls["retraction"] += 1
    M = A.shape[0]
    out = np.empty((M, M))
    _check(lib.tf_retraction(_buf("double *", A, np.float64, "A"), M, int(method),
                             _buf("double *", out, np.float64, "out")), "retraction")
    return out


def integrate(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, T: np.ndarray,
              dt: float, steps: int, method: int, train_weights: bool, train_biases: bool,
              chunk: int, threads: int | None = None):
    """The whole fixed-step flow in C (``tf_integrate``, docs/theory.md §9).

    Returns ``(status, R, b, loss (steps + 1,), steps_done, reorthonormalizations)``
    without raising on the status (``lib.TF_OK``, ``lib.TF_ERR_DIVERGED`` with the
    last good state, or a validation code; ``ffi.string(lib.tf_status_string(status))``
    says which).
    """
    calls["integrate"] += 1
    N, M, L = _dims(R, b, X)
    R_out, b_out = np.empty_like(R), np.empty_like(b)
    loss = np.empty(int(steps) + 1)
    done, reorth = ffi.new("int64_t *"), ffi.new("int64_t *")
    status = lib.tf_integrate(
        _buf("double *", R, np.float64, "R"), _buf("double *", b, np.float64, "b"),
        _buf("double *", X, np.float64, "X"), _buf("int64_t *", labels, np.int64, "labels"),
        _buf("double *", T, np.float64, "T"), N, M, L, T.shape[0], float(dt), int(steps), int(method),
        int(bool(train_weights)), int(bool(train_biases)), chunk, _threads(threads),
        _buf("double *", R_out, np.float64, "R_out"), _buf("double *", b_out, np.float64, "b_out"),
        _buf("double *", loss, np.float64, "loss"), done, reorth)
    return int(status), R_out, b_out, loss, int(done[0]), int(reorth[0])
