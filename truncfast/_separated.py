"""The cluster-separated moment form of the flow (THEORY §6, Theorem 3.2).

With L = Q and τ_ℓ acting as the identity on every cluster j ≠ ℓ, layer j sees
only cluster j, and its flow is a function of the constrained moments of the
cluster's empirical measure μ_j in the rotated frame v = R_j x, h = H(v + b_j):

    m0_i = E[h_i],  m1_ik = E[h_i v_k],  m2_ik = E[h_i v_i v_k],
    t̄_k = m1_kk − (1 − m0_k) b_k,   ỹ' = R_j ỹ_j,   π_j = N_j / N,

    ∂_s b_j = −π_j (1 − m0) ⊙ (b_j + ỹ')                                    [3.39]
    (Ω_j)_ik = (π_j/2)[m2_ik − m2_ki − ỹ'_i m1_ik + ỹ'_k m1_ki + ỹ'_i t̄_k − ỹ'_k t̄_i]   [3.40–3.41]

The kernels return raw sums (S0 = N_j m0, ...); :func:`assemble` turns them
into (grad_b, omega) in O(Q M²).  The assumption is checked first by
:func:`check_separation`, which runs the full composition.
"""

from __future__ import annotations

import numpy as np

from ._errors import InputError, SeparationError

__all__ = ["SeparationShapeError", "check_separation", "assemble", "normalised_moments"]


class SeparationShapeError(SeparationError, InputError):
    """The separated form needs L == Q (one layer per cluster)."""

    def __init__(self, message: str):
        SeparationError.__init__(self, message, [])


def check_separation(bk, R, b, X, labels, Q: int) -> np.ndarray:
    """Raise :class:`SeparationError` unless layer ℓ ≠ j leaves cluster j untruncated.

    Returns the cluster sizes N_j.  Also rejects L ≠ Q and empty clusters.
    """
    L = R.shape[0]
    if L != Q:
        raise SeparationShapeError(
            f"targets: form='separated' needs one layer per cluster (L == Q), got L = {L} layers and Q = {Q} clusters"
        )
    counts = np.bincount(labels, minlength=Q)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise InputError(
            f"labels: cluster(s) {', '.join(map(str, empty.tolist()))} have no points; form='separated' needs every cluster non-empty"
        )
    bad = np.asarray(bk.violations(R, b, X, labels, Q))
    if bad.any():
        viol = [(int(j), int(l), int(bad[j, l])) for j, l in zip(*np.nonzero(bad))]
        listed = "; ".join(f"cluster {j} truncated by layer {l} ({n} point{'s' if n != 1 else ''})" for j, l, n in viol[:10])
        more = f"; and {len(viol) - 10} more pairs" if len(viol) > 10 else ""
        raise SeparationError(
            "the truncations are not cluster-separated (THEORY §6: layer ℓ must act as the identity on every cluster j ≠ ℓ): "
            + listed + more + ". Use form='general', which is exact for any data.",
            viol,
        )
    return counts.astype(np.float64)


def assemble(R, b, targets, counts, S0, S1, S2, N: int):
    """(grad_b, omega) of the separated form from raw moment sums (THEORY §6)."""
    Q, M = targets.shape
    yr = np.einsum("jik,jk->ji", R, targets)  # ỹ'_j = R_j ỹ_j
    n_trunc = counts[:, None] - S0  # N_j (1 − m0)
    grad_b = n_trunc * (b + yr) / N
    diag = np.einsum("jkk->jk", S1)
    tbar = diag - n_trunc * b  # N_j t̄
    A = S2 - yr[:, :, None] * S1 + yr[:, :, None] * tbar[:, None, :]
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
