"""The cluster-separated moment form of the flow (docs/theory.md §6, Theorem 3.2).

With L = Q and τ_ℓ acting as the identity on every cluster j ≠ ℓ, layer j sees
only cluster j, and its flow is a function of the constrained moments of the
cluster's empirical measure μ_j in the rotated frame v = R_j x, h = H(v + b_j):

    m0_i = E[h_i],  m1_ik = E[h_i v_k],  m2_ik = E[h_i v_i v_k],
    t̄_k = m1_kk − (1 − m0_k) b_k,   ỹ' = R_j ỹ_j,   π_j = N_j / N,

    ∂_s b_j = −π_j (1 − m0) ⊙ (b_j + ỹ')                                    [3.39]
    (Ω_j)_ik = (π_j/2)[m2_ik − m2_ki − ỹ'_i m1_ik + ỹ'_k m1_ki + ỹ'_i t̄_k − ỹ'_k t̄_i]   [3.40–3.41]

The kernels return raw sums (S0 = N_j m0, ...); :func:`assemble` turns them
into (grad_b, omega) in O(Q M²).  :func:`checked_moments` gets them in one
pass over the data together with each cluster's bounding box in its own
frame, and proves the separation assumption on the boxes
(:func:`separated_by_boxes`, no further pass); only when that test is
inconclusive does :func:`check_separation` look at the data again
(``Backend.separation``: the local backends try enclosing balls first, then
the full composition per point).
"""

from __future__ import annotations

import numpy as np

from truncfast import _config
from truncfast._errors import InputError, SeparationError

__all__ = [
    "SeparationShapeError",
    "check_separation",
    "checked_moments",
    "separated_by_boxes",
    "assemble",
    "normalised_moments",
]


class SeparationShapeError(SeparationError, InputError):
    """The separated form needs L == Q (one layer per cluster)."""

    def __init__(self, message: str):
        SeparationError.__init__(self, message, [])


def separated_by_boxes(R, b, lo, hi) -> bool:
    """Sufficient condition for cluster separation from each cluster's box, O(L² M³), no pass over the data.

    Cluster j lies in the box lo_j ≤ v ≤ hi_j of its own frame v = R_j x.  For
    ℓ < j its points reach layer ℓ unchanged (the earlier layers act as the
    identity on them, which this same test establishes layer by layer), so
    layer ℓ sees u = A v + b_ℓ with A = R_ℓ R_jᵀ.  For ℓ > j they arrive as
    τ_j(x) = R_jᵀ t with t = max(v + b_j, 0) − b_j, coordinate-wise monotone in
    v, so t lies in the box [max(lo + b_j, 0) − b_j, max(hi + b_j, 0) − b_j] —
    exactly.  The minimum of a linear function over a box is attained at a
    corner: min_i u = Σ_k min(A_ik lo_k, A_ik hi_k) + b_ℓi.  If it exceeds a
    rounding margin (``_config.SEPARATION_MARGIN``) for every layer ℓ ≠ j and direction i, layer ℓ is the
    identity on cluster j (docs/theory.md §6, Def. 3.1).  Returns False when the test
    is inconclusive (a slower check must then decide).
    """
    L, M, _ = R.shape
    Q = lo.shape[0]
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return False
    A = np.einsum("lik,jmk->jlim", R, R[:Q])  # A[j, ℓ] = R_ℓ R_jᵀ
    pos, neg = np.maximum(A, 0.0), np.minimum(A, 0.0)
    for j in range(Q):
        t_lo = np.maximum(lo[j] + b[j], 0.0) - b[j]
        t_hi = np.maximum(hi[j] + b[j], 0.0) - b[j]
        for l in range(L):
            if l == j:
                continue
            blo, bhi = (lo[j], hi[j]) if l < j else (t_lo, t_hi)
            umin = pos[j, l] @ blo + neg[j, l] @ bhi + b[l]
            scale = np.abs(A[j, l]) @ np.maximum(np.abs(blo), np.abs(bhi)) + np.abs(b[l]) + np.abs(b[j]).max()
            if (umin <= _config.SEPARATION_MARGIN * (scale + 1.0)).any():
                return False
    return True


def check_one_layer_per_cluster(L: int, Q: int) -> None:
    if L != Q:
        raise SeparationShapeError(
            f"targets: form='separated' needs one layer per cluster (L == Q), got L = {L} layers and Q = {Q} clusters"
        )


def check_nonempty(counts: np.ndarray) -> None:
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise InputError(
            f"labels: cluster(s) {', '.join(map(str, empty.tolist()))} have no points; form='separated' needs every cluster non-empty"
        )


def checked_moments(bk, R, b, X, labels, Q: int):
    """``(counts, S0, S1, S2)`` of the separated form, with the assumption verified.

    One pass over the data (``bk.moments_box``) gives the moments, the cluster
    sizes and each cluster's box; the boxes usually prove separation
    (:func:`separated_by_boxes`).  Otherwise the backend's exact check
    (``bk.separation``) decides and :class:`SeparationError` names the
    clusters and layers.  Raises on L ≠ Q and on empty clusters.
    """
    check_one_layer_per_cluster(R.shape[0], Q)
    S0, S1, S2, counts, lo, hi = bk.moments_box(R, b, X, labels, Q)
    check_nonempty(counts)
    if not separated_by_boxes(R, b, lo, hi):
        raise_violations(bk.separation(R, b, X, labels, Q)[1])
    return counts, S0, S1, S2


def check_separation(bk, R, b, X, labels, Q: int) -> np.ndarray:
    """Raise :class:`SeparationError` unless layer ℓ ≠ j leaves cluster j untruncated.

    Returns the cluster sizes N_j.  Also rejects L ≠ Q and empty clusters
    (before any violation: an empty cluster is the clearer error).
    """
    check_one_layer_per_cluster(R.shape[0], Q)
    sizes, bad = bk.separation(R, b, X, labels, Q)
    check_nonempty(sizes)
    raise_violations(np.asarray(bad))
    return sizes


def raise_violations(bad: np.ndarray) -> None:
    """Raise :class:`SeparationError` if some ``bad[j, ℓ]`` (points of cluster j truncated by layer ℓ ≠ j) > 0."""
    if bad.any():
        viol = [(int(j), int(l), int(bad[j, l])) for j, l in zip(*np.nonzero(bad))]
        listed = "; ".join(f"cluster {j} truncated by layer {l} ({n} point{'s' if n != 1 else ''})" for j, l, n in viol[:10])
        more = f"; and {len(viol) - 10} more pairs" if len(viol) > 10 else ""
        raise SeparationError(
            "the truncations are not cluster-separated (docs/theory.md §6: layer ℓ must act as the identity on every cluster j ≠ ℓ): "
            + listed + more + ". Use form='general', which is exact for any data.",
            viol,
        )


def assemble(R, b, targets, counts, S0, S1, S2, N: int):
    """(grad_b, omega) of the separated form from raw moment sums (docs/theory.md §6).

    With n_k = N_j − S0_k truncated points in direction k and D_k = S1_kk,
    N_j t̄_k = D_k − n_k b_k, and the bracket of [3.40–3.41] times N_j is A − Aᵀ with

        A_ik = S2_ik + ỹ'_i (D_k − S1_ik) − n_k (ỹ'_i b_k).

    Grouped this way the equilibria of Prop. 4.1 give exactly zero in floating
    point: untruncated clusters have S1_ik = D_k and n = 0, so A = S2 is exactly
    symmetric; fully truncated clusters with b = −ỹ' have S = 0, n_k = N_j and
    ỹ'_i b_k = −ỹ'_i ỹ'_k, again exactly symmetric.
    """
    yr = np.einsum("jik,jk->ji", R, targets)  # ỹ'_j = R_j ỹ_j
    n_trunc = counts[:, None] - S0  # N_j (1 − m0)
    grad_b = n_trunc * (b + yr) / N
    diag = np.einsum("jkk->jk", S1)
    A = S2 + yr[:, :, None] * (diag[:, None, :] - S1) - n_trunc[:, None, :] * (yr[:, :, None] * b[:, None, :])
    omega = 0.5 * (A - np.swapaxes(A, 1, 2)) / N
    return grad_b, omega


def normalised_moments(R, b, targets, counts, S0, S1, S2, N: int) -> dict:
    """The moments of §6 as expectations over each cluster (for users and plots)."""
    c = counts[:, None]
    m0 = S0 / c
    m1 = S1 / c[:, :, None]
    m2 = S2 / c[:, :, None]
    tbar = np.einsum("jkk->jk", m1) - (1.0 - m0) * b
    return {
        "pi": counts / N,
        "m0": m0,
        "m1": m1,
        "m2": m2,
        "tbar": tbar,
        "target_rotated": np.einsum("jik,jk->ji", R, targets),
    }
