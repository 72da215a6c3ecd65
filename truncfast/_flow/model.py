"""Network parametrisations: layer ↔ cumulative maps, pull-back of labels,
and the rotation helpers of the aligned form (docs/theory.md §§1, 3, 4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast._arrays import as_host_array
from truncfast._errors import InputError
from truncfast._validate import as_float_array, check_finite, refuse_nonfinite, square_matrices

__all__ = [
    "layers_to_cumulative",
    "cumulative_to_layers",
    "pullback_targets",
    "orthonormalize",
    "aligned_from_cumulative",
]


def _stack(name: str, a: Any, ndim: int) -> np.ndarray:
    if isinstance(a, (list, tuple)):
        if len(a) == 0:
            raise InputError(f"{name}: needs at least one layer, got an empty {type(a).__name__}")
        try:
            a = np.stack([as_host_array(x, name) for x in a])
        except ValueError as exc:
            raise InputError(f"{name}: the layers do not all have the same shape ({exc})") from None
    arr = as_float_array(name, a, ndim)
    if arr.size == 0:
        raise InputError(f"{name}: needs at least one layer and width ≥ 1, got shape {arr.shape}")
    check_finite(name, arr)
    return arr


def layers_to_cumulative(Ws: Any, bs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative weights and biases of a ReLU network (docs/theory.md §1, [1.5]).

    ``W^(ℓ) = W_ℓ W^(ℓ-1)``, ``b^(ℓ) = W_ℓ b^(ℓ-1) + b_ℓ`` with ``W^(0) = I``, ``b^(0) = 0``.

    Parameters
    ----------
    Ws : (L, M, M) array (or a list of L square matrices)
    bs : (L, M) array

    Returns
    -------
    Wc : (L, M, M), bc : (L, M)
    """
    Ws = _stack("Ws", Ws, 3)
    L, M, M2 = Ws.shape
    if M != M2:
        raise InputError(f"Ws: each W_ℓ must be square (M, M), got shape {Ws.shape}")
    bs = _stack("bs", bs, 2)
    if bs.shape != (L, M):
        raise InputError(f"bs: expected shape ({L}, {M}), got {bs.shape}")
    Wc = np.empty_like(Ws)
    bc = np.empty_like(bs)
    Wc[0], bc[0] = Ws[0], bs[0]
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        for l in range(1, L):
            Wc[l] = Ws[l] @ Wc[l - 1]
            bc[l] = Ws[l] @ bc[l - 1] + bs[l]
    refuse_nonfinite("layers_to_cumulative", (Wc, bc), dict(Ws=Ws, bs=bs))
    return Wc, bc


def cumulative_to_layers(Wc: Any, bc: Any) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`layers_to_cumulative` (docs/theory.md §1).

    ``W_ℓ = W^(ℓ) (W^(ℓ-1))⁻¹``, ``b_ℓ = b^(ℓ) − W_ℓ b^(ℓ-1)``.  Needs every
    ``W^(ℓ)``, ℓ < L, invertible; raises :class:`InputError` naming the first
    singular layer otherwise.
    """
    Wc = _stack("Wc", Wc, 3)
    L, M, M2 = Wc.shape
    if M != M2:
        raise InputError(f"Wc: each W^(ℓ) must be square (M, M), got shape {Wc.shape}")
    bc = _stack("bc", bc, 2)
    if bc.shape != (L, M):
        raise InputError(f"bc: expected shape ({L}, {M}), got {bc.shape}")
    Ws = np.empty_like(Wc)
    bs = np.empty_like(bc)
    Ws[0], bs[0] = Wc[0], bc[0]
    for l in range(1, L):
        prev = Wc[l - 1]
        cond = np.linalg.cond(prev)
        if not np.isfinite(cond) or cond > 1e14:
            raise InputError(f"Wc: layer {l - 1} is singular (condition number {cond:.3g}); cannot form W_{l}")
        # W_ℓ = W^(ℓ) prev⁻¹  ⇔  prevᵀ W_ℓᵀ = W^(ℓ)ᵀ
        with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
            Ws[l] = np.linalg.solve(prev.T, Wc[l].T).T
            bs[l] = bc[l] - Ws[l] @ bc[l - 1]
    refuse_nonfinite("cumulative_to_layers", (Ws, bs), dict(Wc=Wc, bc=bc),
                     small="Wc: inverting a layer overflows float64 (some W^(ℓ) is tiny or nearly singular)")
    return Ws, bs


def pullback_targets(W_out: Any, b_out: Any, Y: Any) -> np.ndarray:
    """Labels pulled back to input space: ``ỹ_j = W_out⁺ (y_j − b_out)`` (docs/theory.md §3).

    ``W_out`` is the cumulative output weight W^(L+1) of shape (P, M); ``⁺`` is the
    inverse when P = M and W_out is invertible, else the Moore–Penrose
    pseudo-inverse.  ``b_out`` is (P,), ``Y`` is (Q, P).  Returns (Q, M).
    """
    W_out = as_float_array("W_out", W_out, 2)
    check_finite("W_out", W_out)
    P, M = W_out.shape
    if P == 0 or M == 0:
        raise InputError(f"W_out: must have non-zero shape, got {W_out.shape}")
    b_out = as_float_array("b_out", b_out, 1, (P,))
    check_finite("b_out", b_out)
    Y = as_float_array("Y", Y, 2, (None, P))
    check_finite("Y", Y)
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        rhs = (Y - b_out).T  # (P, Q)
        if P == M and np.linalg.cond(W_out) < 1e12:
            out = np.linalg.solve(W_out, rhs).T.copy()
        else:
            out = (np.linalg.pinv(W_out) @ rhs).T.copy()
    refuse_nonfinite("pullback_targets", (out,), dict(W_out=W_out, b_out=b_out, Y=Y),
                     small="W_out: its (pseudo-)inverse overflows float64 (W_out is tiny or nearly singular)")
    return out


def orthonormalize(R: Any) -> np.ndarray:
    """Nearest orthogonal matrices (polar factor, via SVD) of an (L, M, M) or (M, M) array.

    Used to repair rotations that drifted, and by the integrators when the
    orthogonality defect exceeds ``_config.REORTHONORMALIZE_TOL`` (docs/theory.md §9).
    """
    A = square_matrices("R", R)
    check_finite("R", A)
    U, _, Vt = np.linalg.svd(A)
    return U @ Vt


def aligned_from_cumulative(Wc: Any, bc: Any, *, tol: float = 1e-8):
    """Split aligned cumulative weights ``W^(ℓ) = D_ℓ R_ℓ`` (docs/theory.md §4).

    Returns ``(R, beta, d)`` with R (L, M, M) orthogonal, ``beta = D⁻¹ b^(ℓ)`` the
    biases of the aligned form and ``d`` (L, M) the positive diagonals of D_ℓ.
    Raises :class:`InputError` when a layer is not aligned (its symmetric polar
    factor is not diagonal to ``tol`` relative).
    """
    Wc = _stack("Wc", Wc, 3)
    bc = _stack("bc", bc, 2)
    L, M, _ = Wc.shape
    if bc.shape != (L, M):
        raise InputError(f"bc: expected shape ({L}, {M}), got {bc.shape}")
    U, s, Vt = np.linalg.svd(Wc)
    R = U @ Vt
    D = (U * s[:, None, :]) @ np.swapaxes(U, 1, 2)
    d = np.einsum("lii->li", D).copy()
    off = np.abs(D - np.einsum("li,ij->lij", d, np.eye(M))).reshape(L, -1).max(axis=1)
    scale = np.abs(d).max(axis=1)
    for l in range(L):
        if off[l] > tol * scale[l]:
            raise InputError(
                f"Wc: layer {l} is not aligned with the activation: its polar factor D has"
                f" off-diagonal entries up to {off[l]:.3g} (docs/theory.md §4 needs D diagonal)"
            )
    for l in range(L):
        if not np.all(d[l] > 0.0):
            i = int(np.flatnonzero(~(d[l] > 0.0))[0])
            raise InputError(
                f"Wc: layer {l} is singular: W^(ℓ) = D R has D[{i}, {i}] = {float(d[l, i])!r}, so the aligned "
                "biases beta = D⁻¹ b^(ℓ) are undefined (docs/theory.md §4 needs invertible weights)")
    with np.errstate(all="ignore"):  # an overflow of a tiny D is refused below, not warned about
        beta = bc / d
    refuse_nonfinite("aligned_from_cumulative", (beta,), dict(bc=bc, Wc=Wc),
                     small="Wc: D⁻¹ b^(ℓ) overflows float64 (some diagonal entry of D is tiny)")
    return R, beta, d
