"""Numba kernels of the unaligned flow (docs/theory.md §13).  Arrays in, arrays out.

Same house rules as ``numba_kernels`` (sequential ``nogil`` kernels run over
fixed chunks by ``truncfast._kernels.parallel``; points in transposed blocks of
``_config.BLOCK_SIZE``; sums over points in ``ACC_LANES`` interleaved lanes;
chunk partials added in chunk order: the same bits for any thread count), and
the same arithmetic as the C core's ``tf_unaligned_*`` (``csrc/tf_unaligned.inc``),
so the two backends agree bit for bit.

Operators, precomputed once per evaluation (O(L M³)): the inverses ``W_ℓ⁻¹``
by Gauss–Jordan elimination with partial pivoting (:func:`inverse`, the twin of
the C core's, so neither backend depends on the LAPACK build), the transfer
matrices ``S_ℓ = W_{ℓ+1} W_ℓ⁻¹`` and ``Zt = (W_L⁻¹)ᵀ``.  Then per point, O(L M²):

    u_1 = W_1 x + b_1,   u_{ℓ+1} = S_ℓ t_ℓ + b_{ℓ+1},   z_L = W_L⁻¹ t_L,   e = z_L − ỹ_j,
    r_L = W_L⁻ᵀ e,       r_{ℓ−1} = S_{ℓ−1}ᵀ (h_ℓ ⊙ r_ℓ)

(``r_ℓ = W_ℓ⁻ᵀ g_ℓ`` and ``g_{ℓ−1} = W_ℓᵀ (h_ℓ ⊙ r_ℓ)`` of §13 combined).  The
weight gradient is accumulated as ``G_ℓ = (∇_{W_ℓ} C) W_ℓᵀ``, which per point is
``(h⊙r) vᵀ − r tᵀ`` with ``v = W_ℓ z_{ℓ−1} = u − b`` and ``t = W_ℓ z_ℓ``: the
§5 expression, now needed in full, not only its antisymmetric part:

    G_ik = Σ_p (h_i − h_k) r_i u_k + D_i b_k,     D = Σ_p (1 − h) ⊙ r = −(∇_b sum),

kept as two pair sums per i < k (``(h_i − h_k) r_i u_k`` and
``(h_i − h_k) r_k u_i``) plus the rank-one ``D bᵀ``; the diagonal is ``D_i b_i``.
At the end ``∇_{W_ℓ} C = G_ℓ W_ℓ⁻ᵀ`` (:func:`finish_grad_w`).  As in §5, points
a layer leaves untruncated add nothing to it, and nothing below the lowest
truncating layer of a block is computed.
"""

from __future__ import annotations

import numpy as np

from truncfast import _config
from truncfast._config import ACC_LANES
from truncfast._kernels import numba_cache as _numba_cache
from truncfast._kernels.numba_cache import jit

__all__ = ["inverse", "operators", "truncate_range", "general_range", "finish_grad_w"]


@jit
def inverse(W, Winv):
    """``Winv[ℓ] = W[ℓ]⁻¹`` by Gauss–Jordan with partial pivoting; returns the first
    layer with an exactly zero pivot (singular), or −1.

    Pivot: the first row of largest |a_ik| at or below the diagonal.  The pivot row
    is divided by the pivot, then subtracted ``f·row`` from every other row, in
    ascending order of rows and columns — exactly the loops of the C core's
    ``unaligned_inverse``.
    """
    L, M, _ = W.shape
    A = np.empty((M, M))
    for l in range(L):
        for i in range(M):
            for j in range(M):
                A[i, j] = W[l, i, j]
                Winv[l, i, j] = 1.0 if i == j else 0.0
        for k in range(M):
            p = k
            best = abs(A[k, k])
            for i in range(k + 1, M):
                a = abs(A[i, k])
                if a > best:
                    best = a
                    p = i
            if best == 0.0:
                return l
            if p != k:
                for j in range(M):
                    tmp = A[k, j]
                    A[k, j] = A[p, j]
                    A[p, j] = tmp
                    tmp = Winv[l, k, j]
                    Winv[l, k, j] = Winv[l, p, j]
                    Winv[l, p, j] = tmp
            piv = A[k, k]
            for j in range(M):
                A[k, j] = A[k, j] / piv
                Winv[l, k, j] = Winv[l, k, j] / piv
            for i in range(M):
                if i == k:
                    continue
                f = A[i, k]
                for j in range(M):
                    A[i, j] = A[i, j] - f * A[k, j]
                    Winv[l, i, j] = Winv[l, i, j] - f * Winv[l, k, j]
    return -1


@jit
def operators(W, Winv, S, Zt):
    """``S[ℓ] = W_{ℓ+1} W_ℓ⁻¹`` (ℓ < L−1) and ``Zt = (W_L⁻¹)ᵀ`` from W and its inverses (sums over k in order)."""
    L, M, _ = W.shape
    for l in range(L - 1):
        for i in range(M):
            for j in range(M):
                s = 0.0
                for k in range(M):
                    s += W[l + 1, i, k] * Winv[l, k, j]
                S[l, i, j] = s
    for i in range(M):
        for k in range(M):
            Zt[i, k] = Winv[L - 1, k, i]


@jit
def _forward_block(W, S, Zt, b, X, p0, nb, U, Hm, Tt, Z, ntr, want_z):
    """Forward pass for points p0..p0+nb-1 (transposed block layout), as ``numba_kernels._forward_block``
    with ``W_1`` as the first matrix and ``z_L = Ztᵀ t_L``."""
    L, M = b.shape
    for p in range(nb):
        for k in range(M):
            Z[k, p] = X[p0 + p, k]
    for l in range(L):
        V = U[l]
        A = W[0] if l == 0 else S[l - 1]
        src = Z if l == 0 else Tt[l - 1]
        for i in range(M):
            for p in range(nb):
                V[i, p] = 0.0
            for k in range(M):
                a = A[i, k]
                for p in range(nb):
                    V[i, p] += a * src[k, p]
        cnt = 0
        for i in range(M):
            bi = b[l, i]
            for p in range(nb):
                u = V[i, p] + bi
                V[i, p] = u
                h = 1.0 if u > 0.0 else 0.0
                Hm[l, i, p] = h
                Tt[l, i, p] = u * h - bi
                cnt += 1 - int(h)
        ntr[l] = cnt
    if not want_z:
        return
    for k in range(M):
        for p in range(nb):
            Z[k, p] = 0.0
    for i in range(M):
        for k in range(M):
            a = Zt[i, k]
            for p in range(nb):
                Z[k, p] += a * Tt[L - 1, i, p]


@jit
def _truncate_chunk(W, S, Zt, b, X, start, stop, block, out, codes, want_codes):
    L, M = b.shape
    U, Hm, Tt = np.zeros((L, M, block)), np.zeros((L, M, block)), np.zeros((L, M, block))
    Z, ntr = np.zeros((M, block)), np.zeros(L, dtype=np.int64)
    for p0 in range(start, stop, block):
        nb = min(block, stop - p0)
        _forward_block(W, S, Zt, b, X, p0, nb, U, Hm, Tt, Z, ntr, not want_codes)
        if want_codes:
            for p in range(nb):
                for l in range(L):
                    c = np.uint64(0)
                    for i in range(M):
                        if Hm[l, i, p] > 0.0:
                            c |= np.uint64(1) << np.uint64(i)
                    codes[p0 + p, l] = c
        else:
            for p in range(nb):
                for k in range(M):
                    out[p0 + p, k] = Z[k, p]


@jit
def truncate_range(W, S, Zt, b, X, c_first, c_last, chunk, block, out, codes, want_codes):
    """τ^(L) rows into ``out`` (or codes into ``codes``) for chunks c_first..c_last-1."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        _truncate_chunk(W, S, Zt, b, X, c * chunk, min(N, (c + 1) * chunk), block, out, codes, want_codes)


@jit
def general_chunk(W, S, Zt, b, X, labels, T, want_grad, start, stop, block, gb, G):
    """Sequential sum over points start..stop-1; returns the raw loss Σ ½|z_L − ỹ_j|².

    ``gb`` (L, M) and ``G`` (L, M, M) must be zero on entry; on return ``gb`` is
    the raw sum of ∇_b contributions and ``G`` the raw sum of
    ``(∇_{W_ℓ} C) W_ℓᵀ`` contributions (module docstring), full, not triangular.
    """
    L, M = b.shape
    npairs = M * (M - 1) // 2
    U, Hm, Tt = np.zeros((L, M, block)), np.zeros((L, M, block)), np.zeros((L, M, block))
    Z, ntr = np.zeros((M, block)), np.zeros(L, dtype=np.int64)
    E = np.zeros((M, block))
    Ra = np.zeros((M, block))
    Rb = np.zeros((M, block))
    Dacc = np.zeros((L, M, ACC_LANES))
    K1 = np.zeros((L, npairs, ACC_LANES))
    K2 = np.zeros((L, npairs, ACC_LANES))
    term = np.empty(block)
    term2 = np.empty(block)
    loss = 0.0
    for p0 in range(start, stop, block):
        nb = min(block, stop - p0)
        _forward_block(W, S, Zt, b, X, p0, nb, U, Hm, Tt, Z, ntr, True)
        for p in range(nb):
            j = labels[p0 + p]
            s = 0.0
            for k in range(M):
                d = Z[k, p] - T[j, k]
                E[k, p] = d
                s += d * d
            loss += 0.5 * s
        if not want_grad:
            continue
        lowest = L
        for l in range(L):
            if ntr[l] > 0:
                lowest = l
                break
        if lowest == L:
            continue
        # r_L = W_L⁻ᵀ e = Zt e; columns nb..block-1 stay exactly 0
        for i in range(M):
            for p in range(block):
                Ra[i, p] = 0.0
            for k in range(M):
                a = Zt[i, k]
                for p in range(nb):
                    Ra[i, p] += a * E[k, p]
        for l in range(L - 1, lowest - 1, -1):
            if ntr[l] > 0:
                H = Hm[l]
                Ul = U[l]
                Dl = Dacc[l]
                K1l = K1[l]
                K2l = K2[l]
                for i in range(M):
                    for p in range(block):
                        term[p] = (1.0 - H[i, p]) * Ra[i, p]
                    for p8 in range(0, block, ACC_LANES):
                        for q in range(ACC_LANES):
                            Dl[i, q] += term[p8 + q]
                pair = 0
                for i in range(M):
                    for k in range(i + 1, M):
                        for p in range(block):
                            d = H[i, p] - H[k, p]
                            term[p] = d * (Ra[i, p] * Ul[k, p])
                            term2[p] = d * (Ra[k, p] * Ul[i, p])
                        for p8 in range(0, block, ACC_LANES):
                            for q in range(ACC_LANES):
                                K1l[pair, q] += term[p8 + q]
                                K2l[pair, q] += term2[p8 + q]
                        pair += 1
                for i in range(M):
                    for p in range(block):
                        Ra[i, p] *= H[i, p]
            if l > lowest:
                Sl = S[l - 1]
                for j in range(M):
                    for p in range(block):
                        Rb[j, p] = 0.0
                for i in range(M):
                    for j in range(M):
                        a = Sl[i, j]
                        for p in range(block):
                            Rb[j, p] += a * Ra[i, p]
                Ra, Rb = Rb, Ra
    if want_grad:
        Dc = np.empty(M)
        for l in range(L):
            for i in range(M):
                s = 0.0
                for q in range(ACC_LANES):
                    s += Dacc[l, i, q]
                Dc[i] = s
                gb[l, i] -= s
                G[l, i, i] += Dc[i] * b[l, i]
            pair = 0
            for i in range(M):
                for k in range(i + 1, M):
                    s1 = 0.0
                    s2 = 0.0
                    for q in range(ACC_LANES):
                        s1 += K1[l, pair, q]
                        s2 += K2[l, pair, q]
                    G[l, i, k] += s1 + Dc[i] * b[l, k]
                    G[l, k, i] += Dc[k] * b[l, i] - s2
                    pair += 1
    return loss


@jit
def general_range(W, S, Zt, b, X, labels, T, want_grad, c_first, c_last, chunk, block, slot0, pgb, pG, ploss):
    """Chunks c_first..c_last-1 of :func:`general_chunk`, each into its own partial slot c − slot0."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        s = c - slot0
        pgb[s] = 0.0
        pG[s] = 0.0
        ploss[s] = general_chunk(W, S, Zt, b, X, labels, T, want_grad, c * chunk, min(N, (c + 1) * chunk), block,
                                 pgb[s], pG[s])


@jit
def finish_grad_w(G, Winv, out):
    """``out[ℓ] = G[ℓ] W_ℓ⁻ᵀ``: ``out[ℓ, i, j] = Σ_k G[ℓ, i, k] Winv[ℓ, j, k]`` (k ascending)."""
    L, M, _ = G.shape
    for l in range(L):
        for i in range(M):
            for j in range(M):
                s = 0.0
                for k in range(M):
                    s += G[l, i, k] * Winv[l, j, k]
                out[l, i, j] = s


# the gradient kernels freeze _config.ACC_LANES into their cached code
_numba_cache.stamp([general_chunk, general_range], [_config])
