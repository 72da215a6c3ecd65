"""Input validation at the API boundary (docs/api.md, "Bad input").

Every public function converts its arguments through these helpers before any
kernel runs.  Arrays of any library come in through ``_arrays.as_host_array``
(zero-copy views of NumPy, memmaps, PyTorch/JAX CPU tensors, DLPack; arrays on
another device are refused by name).  They never modify the caller's arrays: conversions that need a
copy make one, and arrays that are already C-contiguous float64 (including
read-only memmaps) are passed through without copying.  Kernels never validate.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._arrays import as_host_array
from truncfast._errors import InputError

__all__ = [
    "as_float_array",
    "as_labels",
    "check_finite",
    "check_rotations",
    "check_state",
    "check_problem",
    "check_targets",
    "check_output_layer",
    "orthogonality_defect",
    "square_matrices",
    "max_abs",
    "overflow_error",
    "check_results_finite",
    "check_forward_magnitude",
    "forward_magnitude",
    "safe_magnitude",
    "refuse_nonfinite",
]

_CHUNK_ROWS = 1 << 16


def _shape_str(shape: tuple) -> str:
    """``(?, 3)``-style description of an expected shape (``None`` = any); ``(2,)`` for one axis."""
    parts = ["?" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _describe(a: Any) -> str:
    return f"dtype {a.dtype}" if hasattr(a, "dtype") else type(a).__name__


def as_float_array(name: str, a: Any, ndim: int, shape: tuple | None = None) -> np.ndarray:
    """Return ``a`` as a C-contiguous float64 array of ``ndim`` dimensions.

    ``shape`` may fix some axes (``None`` entries are free).  Integer, boolean
    and any float dtype are accepted; complex, object and string dtypes are not.
    """
    arr = as_host_array(a, name)
    if arr.dtype.kind not in "fiub":
        raise InputError(
            f"{name}: expected a real numeric array, got {_describe(arr)}"
            + (" (complex values are not supported)" if arr.dtype.kind == "c" else "")
        )
    if arr.ndim != ndim:
        want = _shape_str(shape) if shape else f"{ndim}-D"
        raise InputError(f"{name}: expected shape {want}, got shape {arr.shape} ({arr.ndim}-D)")
    if shape is not None:
        for axis, (want, got) in enumerate(zip(shape, arr.shape)):
            if want is not None and want != got:
                want_s = _shape_str(shape)
                raise InputError(
                    f"{name}: expected shape {want_s}, got {arr.shape} (axis {axis} is {got}, expected {want})"
                )
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_finite(name: str, arr: np.ndarray) -> None:
    """Raise if ``arr`` holds NaN or ±inf, naming the first offending index.

    The common (all finite) case costs one pass and no temporary: large
    float64 arrays are scanned by the C core's threads, others summed once (a
    sum of finite numbers is finite unless it overflows, and any NaN or inf
    makes it non-finite).  Only then are rows scanned in bounded chunks to
    locate the culprit (an overflowing but finite array passes).
    """
    if arr.size == 0 or not _maybe_nonfinite(arr):
        return
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    for start in range(0, flat.shape[0], _CHUNK_ROWS):
        block = flat[start : start + _CHUNK_ROWS]
        bad = ~np.isfinite(block)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            idx = np.unravel_index(int((start + r) * flat.shape[1] + c), arr.shape)
            value = arr[idx]
            where = ", ".join(str(int(i)) for i in idx)
            count = int(bad.sum())
            raise InputError(
                f"{name}: contains {float(value)!r} at index [{where}]"
                + (f" (and {count - 1} more non-finite values in rows {start}..{start + block.shape[0] - 1})" if count > 1 else "")
                + "; all values must be finite"
            )


_PARALLEL_FINITE = 1 << 18  # elements; below this one NumPy sum is cheaper than a thread hand-off
_SMALL_FINITE = 1 << 12  # elements; below this np.isfinite(...).all() beats a sum under np.errstate


def _maybe_nonfinite(arr: np.ndarray) -> bool:
    """False only if ``arr`` is certainly all finite, in one pass.

    Large C-contiguous float64 arrays are scanned by the C core's threads
    (X of 10⁶ × 8: 7.6 → 4.4 ms); going through Numba here would load the JIT
    (~60 MB and ~0.5 s on first use) into processes that only use the C
    backend.  Otherwise one NumPy sum: a NaN or inf makes it non-finite, and
    so does an overflow (a false alarm the caller's row scan clears).
    """
    if arr.size <= _SMALL_FINITE:  # R, b, targets, results: isfinite needs no errstate (~1 µs, not ~4)
        return not bool(np.isfinite(arr).all())
    if arr.size >= _PARALLEL_FINITE and arr.flags.c_contiguous and arr.dtype == np.float64:
        from truncfast._kernels import ccore as _ccore

        if _ccore.available():
            from truncfast._kernels.parallel import get_num_threads

            return _ccore.any_nonfinite(arr.reshape(-1), get_num_threads())
    with np.errstate(over="ignore", invalid="ignore"):
        return not np.isfinite(np.add.reduce(arr.reshape(-1)))


def square_matrices(name: str, a: Any) -> np.ndarray:
    """``a`` as a float64 ``(L, M, M)`` stack or a single ``(M, M)`` real square matrix."""
    arr = as_host_array(a, name)
    if arr.ndim not in (2, 3) or arr.shape[-1] != arr.shape[-2]:
        raise InputError(f"{name}: expected (L, M, M) or (M, M) square matrices, got shape {arr.shape}")
    return as_float_array(name, arr, arr.ndim)


def orthogonality_defect(R: Any) -> np.ndarray:
    """Per-layer defect max_ik |(R_ℓᵀ R_ℓ − I)_ik| of an ``(L, M, M)`` stack.

    Any array-like is accepted; for a single ``(M, M)`` matrix a float is returned.
    """
    if not (isinstance(R, np.ndarray) and R.ndim == 3 and R.dtype == np.float64 and R.shape[1] == R.shape[2]):
        R = square_matrices("R", R)
        if R.ndim == 2:
            return float(orthogonality_defect(R[None])[0])
    M = R.shape[-1]
    gram = np.einsum("lji,ljk->lik", R, R)
    gram -= np.eye(M)
    return np.abs(gram).reshape(R.shape[0], -1).max(axis=1)


def check_rotations(R: Any, *, name: str = "R", tol: float | None = None) -> np.ndarray:
    """Validate an ``(L, M, M)`` stack of orthogonal matrices.

    The default tolerance is ``_config.ORTHOGONALITY_TOL``, widened for an R
    given in a lower float precision (docs/api.md: any float dtype is accepted) to
    ``ORTHOGONALITY_ULPS · M · eps`` of that precision.
    """
    R = as_host_array(R, name)  # a torch/JAX tensor's dtype is not a NumPy dtype: read it after the view
    given = R.dtype
    R = as_float_array(name, R, 3)
    L, M, M2 = R.shape
    if M != M2:
        raise InputError(f"{name}: each R_ℓ must be square, got shape {R.shape}")
    if L < 1 or M < 1:
        raise InputError(f"{name}: needs at least one layer and width ≥ 1, got shape {R.shape}")
    check_finite(name, R)
    if tol is None:
        tol = _config.ORTHOGONALITY_TOL
        if isinstance(given, np.dtype) and given.kind == "f":
            tol = max(tol, _config.ORTHOGONALITY_ULPS * M * float(np.finfo(given).eps))
    defect = orthogonality_defect(R)
    worst = int(np.argmax(defect))
    if defect[worst] > tol:
        raise InputError(
            f"{name}: layer {worst} is not orthogonal: max|RᵀR − I| = {defect[worst]:.3g} > tolerance {tol:.1g}"
            " (truncfast.orthonormalize(R) returns the nearest orthogonal matrices)"
        )
    return R


def check_state(R: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate the flow state (R, b): R ``(L, M, M)`` orthogonal, b ``(L, M)``."""
    R = check_rotations(R)
    L, M, _ = R.shape
    b = as_float_array("b", b, 2, (L, M))
    check_finite("b", b)
    return R, b


def as_labels(labels: Any, N: int, Q: int, *, Q_name: str = "targets") -> np.ndarray:
    """Validate integer labels of shape (N,) in 0..Q-1 and return them as int64."""
    arr = as_host_array(labels, "labels")
    if arr.dtype.kind not in "iu":
        raise InputError(f"labels: expected an integer array, got {_describe(arr)}")
    if arr.ndim != 1:
        raise InputError(f"labels: expected shape ({N},), got shape {arr.shape}")
    if arr.shape[0] != N:
        raise InputError(f"labels: has {arr.shape[0]} entries but X has {N} rows")
    if N:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= Q:
            bad = int(np.flatnonzero((arr < 0) | (arr >= Q))[0])
            raise InputError(
                f"labels: value {int(arr[bad])} at index {bad} is out of range 0..{Q - 1}"
                f" (Q = {Q} from {Q_name})"
            )
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_targets(targets: Any, M: int) -> np.ndarray:
    """Validate the pulled-back labels: ``targets`` (Q, M), Q ≥ 1, finite."""
    targets = as_float_array("targets", targets, 2, (None, M))
    if targets.shape[0] == 0:
        raise InputError("targets: has no rows (Q = 0)")
    check_finite("targets", targets)
    return targets


def check_problem(R: Any, b: Any, X: Any, labels: Any = None, targets: Any = None):
    """Validate (R, b, X[, labels, targets]) and return float64/int64 versions.

    Returns ``(R, b, X)`` or ``(R, b, X, labels, targets)``.
    """
    R, b = check_state(R, b)
    M = R.shape[1]
    X = as_float_array("X", X, 2, (None, M))
    if X.shape[0] == 0:
        raise InputError("X: has no rows (N = 0); at least one point is needed")
    check_finite("X", X)
    if labels is None and targets is None:
        return R, b, X
    if targets is None or labels is None:
        raise InputError("labels and targets must be given together")
    targets = check_targets(targets, M)
    labels = as_labels(labels, X.shape[0], targets.shape[0])
    return R, b, X, labels, targets


def check_output_layer(M: int, W_out: Any, b_out: Any, Y: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the output layer of the standard loss: W_out (P, M), b_out (P,), Y (Q, P)."""
    W_out = as_float_array("W_out", W_out, 2, (None, M))
    check_finite("W_out", W_out)
    P = W_out.shape[0]
    if P == 0:
        raise InputError("W_out: has no rows (output width P = 0)")
    b_out = as_float_array("b_out", b_out, 1, (P,))
    check_finite("b_out", b_out)
    Y = as_float_array("Y", Y, 2, (None, P))
    if Y.shape[0] == 0:
        raise InputError("Y: has no rows (Q = 0)")
    check_finite("Y", Y)
    return W_out, b_out, Y


# ------------------------------------------------------------- magnitudes ---
# Inputs are finite, but products of two of them (squared residuals, the pair
# sums of omega, loss sums over N points) may overflow float64.  Rather than
# scale (which only widens the window by sqrt(N M)), truncfast refuses: a result
# that came out non-finite from finite inputs raises, naming the largest input
# and the magnitude that is safe (docs/guarantees.md, "No silent NaN").

_DBL_MAX = float(np.finfo(np.float64).max)


def max_abs(a: Any) -> float:
    """max |a| (0 for an empty array), in bounded chunks; a dask array is reduced on its workers."""
    if a is None:
        return 0.0
    if hasattr(a, "compute") and not isinstance(a, np.ndarray):
        return float(abs(a).max().compute()) if a.size else 0.0
    arr = np.asarray(a)
    if arr.size == 0:
        return 0.0
    flat = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    m = 0.0
    for start in range(0, flat.shape[0], _CHUNK_ROWS):
        m = max(m, float(np.max(np.abs(flat[start : start + _CHUNK_ROWS]))))
    return m


def safe_magnitude(N: int, M: int) -> float:
    """Magnitude of X, b and targets below which the §5 sums cannot overflow: sqrt(max float64 / (2 N M))
    (a loss sum adds N squared residuals of M coordinates; omega's pair sums are alike)."""
    return math.sqrt(_DBL_MAX / (2.0 * max(int(N), 1) * max(int(M), 1)))


def forward_magnitude(M: int, L: int) -> float:
    """Magnitude of X and b below which the forward pass of τ^(L) cannot overflow (docs/theory.md §2).

    Every quantity of the forward pass is at most sqrt(M)·s·(2L + 3) with s the
    largest |x| or |b| (each τ_ℓ is a projection: ‖z_ℓ‖ ≤ ‖z_{ℓ−1}‖ + 2‖b_ℓ‖, and
    the rows of R_ℓ and S_ℓ are unit vectors); a factor 2 is left for rounding.
    """
    return _DBL_MAX / (2.0 * math.sqrt(max(int(M), 1)) * (2 * int(L) + 3))


def overflow_error(what: str, inputs: dict[str, Any], N: int, M: int,
                   scaled: str = "X, b and targets", bound: float | None = None,
                   formula: str = "sqrt(max float64 / (2·N·M))") -> Exception:
    """The error for a non-finite result of ``what`` computed from finite ``inputs``.

    Names the input of largest magnitude and the safe magnitude
    (:func:`safe_magnitude`); an :class:`InputError` when that input exceeds
    it, else a ``FloatingPointError`` (a non-finite result from moderate
    inputs would be a bug: never silent either way).
    """
    mags = {name: max_abs(a) for name, a in inputs.items() if a is not None}
    name, mag = max(mags.items(), key=lambda kv: kv[1])
    bound = safe_magnitude(N, M) if bound is None else bound
    if mag <= bound:
        return FloatingPointError(
            f"{what}: the result is not finite although every input is finite and at most {mag:.3g} in "
            f"magnitude (safe up to about {bound:.2g}); please report this with the inputs")
    return InputError(
        f"{name}: values up to {mag:.3g} in magnitude are too large: {what} overflows float64 (its result "
        f"would hold inf or NaN). For N = {N}, M = {M} keep {scaled} below about {bound:.2g} "
        f"({formula}); the flow is positively homogeneous, so rescale {scaled} together "
        "by one factor c (the loss scales by c², grad_b by c, omega by c²)")


def check_results_finite(what: str, results: Any, inputs: dict[str, Any], N: int, M: int,
                         scaled: str = "X, b and targets", **bound: Any) -> None:
    """Raise :func:`overflow_error` when any array or number in ``results`` is not finite
    (``bound``: the ``bound`` and ``formula`` of the message, default :func:`safe_magnitude`)."""
    for r in results:
        if r is None or (hasattr(r, "compute") and not isinstance(r, np.ndarray)):
            continue  # a lazy dask result: its values do not exist yet
        a = np.asarray(r)
        if a.dtype.kind in "fc" and a.size and _maybe_nonfinite(np.ascontiguousarray(a, dtype=np.float64)) \
                and not np.isfinite(a).all():
            raise overflow_error(what, inputs, N, M, scaled, **bound)


def check_forward_magnitude(what: str, b: np.ndarray, X: Any) -> None:
    """Refuse X or b above :func:`forward_magnitude`, before the forward pass.

    Needed where an overflow would not show in the result (sector codes: a NaN
    pre-activation silently reads as "truncated").
    """
    L, M = b.shape
    bound = forward_magnitude(M, L)
    for name, a in (("X", X), ("b", b)):
        mag = max_abs(a)
        if mag > bound:
            raise InputError(f"{name}: values up to {mag:.3g} in magnitude are too large for {what}: the "
                             f"pre-activations could overflow float64; keep X and b below about {bound:.2g} "
                             f"for M = {M}, L = {L} (max float64 / (2·sqrt(M)·(2L + 3)))")


def refuse_nonfinite(what: str, results: Any, inputs: dict[str, Any], small: str | None = None) -> None:
    """For the small dense helpers (layer maps, output-layer formulas): a non-finite result
    from finite inputs raises :class:`InputError` naming the input of largest magnitude —
    or, when every input is moderate (≤ 1e150) and the caller knows the other cause (an
    inverse of a tiny or nearly singular matrix), the message ``small``."""
    for r in results:
        if r is not None and not np.all(np.isfinite(np.asarray(r, dtype=np.float64))):
            mags = {name: max_abs(a) for name, a in inputs.items() if a is not None}
            name, mag = max(mags.items(), key=lambda kv: kv[1])
            if small is not None and mag <= 1e150:
                raise InputError(small)
            raise InputError(f"{name}: values up to {mag:.3g} in magnitude are too large: {what} overflows "
                             "float64 (its result would hold inf or NaN); rescale the inputs")
