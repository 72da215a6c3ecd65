"""Numba kernels of the assembly of the pattern form (docs/theory.md §11).

Loss and (∇_b C, G_ℓ) of the Euclidean loss from the groups (count n, mean μ,
centred scatter C per (pattern, label)), O(L M³) per group; groups are summed
in fixed blocks whose partial sums the caller adds in block order
(thread-count independent bits).  Also the truncation counts per layer and
cluster from the groups.
"""

from __future__ import annotations

import numpy as np
from truncfast._kernels.numba_cache import jit

__all__ = ["assemble_range", "counts_from_groups"]


@jit
def _group_terms(R, b, T, code, lab, nf, mu, C, gb, Gacc, hh, Vb, Tb, Fv, A, A2, W, Gam, RG, z, r, g):
    """Add one group's terms of §11 to gb, Gacc; return its ½ [n |ē|² + tr(A_L C A_Lᵀ)].

    Forward at x = μ with the group's pattern imposed: v̄_ℓ = R_ℓ z̄_{ℓ-1},
    t̄_ℓ = v̄_ℓ where h_ℓ = 1 and −b_ℓ elsewhere (a selection, so an untruncated
    layer adds exactly nothing), z̄_ℓ = R_ℓᵀ t̄_ℓ; with the second moments:
    F_v = R_ℓ A_{ℓ-1}, A_ℓ = R_ℓᵀ D_ℓ F_v.  Backward: r̄_ℓ = R_ℓ ḡ_ℓ,
    Γ_L = A_L C, Γ_{ℓ-1} = R_ℓᵀ D_ℓ R_ℓ Γ_ℓ (so R_ℓ Γ_ℓ F_vᵀ = F_r C F_vᵀ), and
        ∇_{b_ℓ} += −n (1 − h_ℓ) ⊙ r̄_ℓ,
        G_ℓ     += n ((h_ℓ ⊙ r̄_ℓ) v̄_ℓᵀ − r̄_ℓ t̄_ℓᵀ) + [D_ℓ, F_r C F_vᵀ].
    """
    L, M = b.shape
    second = False
    for i in range(M):
        for k in range(M):
            if C[i, k] != 0.0:
                second = True
    for k in range(M):
        z[k] = mu[k]
    if second:
        A[:, :] = 0.0
        for i in range(M):
            A[i, i] = 1.0
    for l in range(L):
        c = code[l]
        for i in range(M):
            hh[l, i] = 1.0 if (c >> np.uint64(i)) & np.uint64(1) else 0.0
        for i in range(M):
            s = 0.0
            for k in range(M):
                s += R[l, i, k] * z[k]
            Vb[l, i] = s
            Tb[l, i] = s if hh[l, i] > 0.0 else -b[l, i]
        for k in range(M):
            s = 0.0
            for i in range(M):
                s += R[l, i, k] * Tb[l, i]
            z[k] = s
        if second:
            for i in range(M):
                for j in range(M):
                    s = 0.0
                    for k in range(M):
                        s += R[l, i, k] * A[k, j]
                    Fv[l, i, j] = s
            for k in range(M):
                for j in range(M):
                    s = 0.0
                    for i in range(M):
                        if hh[l, i] > 0.0:
                            s += R[l, i, k] * Fv[l, i, j]
                    A2[k, j] = s
            A[:, :] = A2
    # loss: n |ē|² + tr(A_L C A_Lᵀ) = n |ē|² + Σ (A_L C) ⊙ A_L
    e2 = 0.0
    for k in range(M):
        g[k] = z[k] - T[lab, k]
        e2 += g[k] * g[k]
    quad = 0.0
    if second:
        for i in range(M):
            for j in range(M):
                s = 0.0
                for k in range(M):
                    s += A[i, k] * C[k, j]
                W[i, j] = s
                quad += s * A[i, j]
        Gam[:, :] = W
    loss = 0.5 * (nf * e2 + quad)
    for l in range(L - 1, -1, -1):
        for i in range(M):
            s = 0.0
            for k in range(M):
                s += R[l, i, k] * g[k]
            r[i] = s
        nh = 0
        for i in range(M):
            nh += hh[l, i] > 0.0
        if second:
            for i in range(M):
                for j in range(M):
                    s = 0.0
                    for k in range(M):
                        s += R[l, i, k] * Gam[k, j]
                    RG[i, j] = s
        if nh < M:  # an untruncated layer adds nothing
            for i in range(M):
                if hh[l, i] == 0.0:
                    gb[l, i] -= nf * r[i]
            for i in range(M):
                hr = hh[l, i] * r[i]
                for k in range(M):
                    Gacc[l, i, k] += nf * (hr * Vb[l, k] - r[i] * Tb[l, k])
            if second and nh > 0:  # the commutator vanishes on fully truncated layers
                for i in range(M):
                    for k in range(M):
                        dh = hh[l, i] - hh[l, k]
                        if dh != 0.0:
                            s = 0.0
                            for j in range(M):
                                s += RG[i, j] * Fv[l, k, j]
                            Gacc[l, i, k] += dh * s
        if nh == 0:  # fully truncated: nothing reaches the layers below
            break
        for k in range(M):
            s = 0.0
            for i in range(M):
                if hh[l, i] > 0.0:
                    s += R[l, i, k] * r[i]
            g[k] = s
        if second:
            for k in range(M):
                for j in range(M):
                    s = 0.0
                    for i in range(M):
                        if hh[l, i] > 0.0:
                            s += R[l, i, k] * RG[i, j]
                    Gam[k, j] = s
    return loss


@jit
def assemble_range(R, b, T, keys, labs, tn, tmean, tscat, G, q_first, q_last, blk, slot0, ploss, pgb, pG):
    """Blocks q_first..q_last-1 of ``blk`` groups, each summed in group order into slot q − slot0.

    Partial slots hold the raw sums (loss Σ ½[…], ∇_b sum, G sum; no 1/N);
    empty groups (n = 0) are skipped.
    """
    L, M = b.shape
    hh = np.empty((L, M))
    Vb = np.empty((L, M))
    Tb = np.empty((L, M))
    Fv = np.empty((L, M, M))
    A = np.empty((M, M))
    A2 = np.empty((M, M))
    W = np.empty((M, M))
    Gam = np.empty((M, M))
    RG = np.empty((M, M))
    z = np.empty(M)
    r = np.empty(M)
    g = np.empty(M)
    for q in range(q_first, q_last):
        s = q - slot0
        ploss[s] = 0.0
        pgb[s] = 0.0
        pG[s] = 0.0
        for gi in range(q * blk, min(G, (q + 1) * blk)):
            if tn[gi] == 0:
                continue
            ploss[s] += _group_terms(R, b, T, keys[gi], labs[gi], np.float64(tn[gi]), tmean[gi], tscat[gi],
                                     pgb[s], pG[s], hh, Vb, Tb, Fv, A, A2, W, Gam, RG, z, r, g)


@jit
def counts_from_groups(keys, labs, tn, G, M, Q):
    """(L, Q, 3) int64: points untruncated / partially / fully truncated per layer and cluster (§2)."""
    L = keys.shape[1]
    out = np.zeros((L, Q, 3), dtype=np.int64)
    full = ~np.uint64(0) if M == 64 else (np.uint64(1) << np.uint64(M)) - np.uint64(1)
    for gi in range(G):
        n = tn[gi]
        if n == 0:
            continue
        j = labs[gi]
        for l in range(L):
            c = keys[gi, l]
            if c == full:
                out[l, j, 0] += n
            elif c == np.uint64(0):
                out[l, j, 2] += n
            else:
                out[l, j, 1] += n
    return out
