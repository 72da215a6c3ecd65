"""Numba kernels (docs/theory.md §§2, 5, 6).  Arrays and scalars in, arrays out.

Kernels never validate (the API boundary does) and are compiled lazily on
first use, cached on disk where possible (``numba_cache.jit``).

Determinism and threads.  The kernels here are sequential and release the GIL
(``nogil=True``); ``truncfast._kernels.parallel`` runs them on a thread pool over ranges of
fixed-size chunks (``_config.CHUNK_SIZE``).  Each chunk is summed sequentially
into its own partial slot and the slots are added in chunk order, so every
result has the same bits for any number of threads.  (Plain Python threads
instead of ``parallel=True``/``prange``: the parfor version took ~15 s to
compile cold and caching parallel kernels is fragile; these compile in a few
seconds and cache reliably.)

Layout.  Inside a chunk, points are processed in blocks of ``block`` points
(``_config.BLOCK_SIZE``) stored transposed, ``(M, block)``, so that every
matrix–vector product of §5 becomes an axpy over the points of the block:
``V[i, :] += A[i, k] * T[k, :]``.  These loops vectorise (SIMD) *without*
reassociating any sum: each entry is still summed over k in ascending order,
exactly as a per-point dot product would be.  Scratch is O(L·M·block) per
chunk; nothing of size N × M (or N × L × M) is ever formed.

The forward pass of §5 is written in the "transfer" form: with
``S_ℓ = R_{ℓ+1} R_ℓᵀ`` (precomputed, O(L M³)),

    v_1 = R_1 x,   v_{ℓ+1} = R_{ℓ+1} z_ℓ = S_ℓ t_ℓ,   z_L = R_Lᵀ t_L,

and the backward pass likewise ``r_{ℓ-1} = R_{ℓ-1} g_{ℓ-1} = S_{ℓ-1}ᵀ (h_ℓ ⊙ r_ℓ)``,
so each layer costs one M×M product forward and one backward instead of two.
A point untruncated at layer ℓ has h_ℓ ⊙ r_ℓ = r_ℓ exactly, so P_ℓ = I needs
no special case; a fully truncated point has h_ℓ ⊙ r_ℓ = 0, which ends its
backward pass.  The G_ℓ update of §5,

    G_ℓ += (h⊙r) vᵀ − r tᵀ,  i.e. row i:  h_i = 1 →  r_i ((1−h)⊙u)ᵀ,   h_i = 0 →  −r_i tᵀ,

is one axpy per (point, row), and zero work is done for layers at which no
point of the block is truncated, or below the lowest truncating layer.
"""

from __future__ import annotations

import numpy as np
from truncfast._kernels.numba_cache import jit

from truncfast import _config
from truncfast._kernels import numba_cache as _numba_cache
from truncfast._config import ACC_LANES, TARGETS_CACHE_ROWS

__all__ = [
    "transfer_matrices",
    "truncate_range",
    "general_chunk",
    "general_range",
    "moments_range",
    "violations_range",
    "add_slots",
]


@jit
def transfer_matrices(R):
    """``S_ℓ = R_{ℓ+1} R_ℓᵀ`` for ℓ = 0..L-2, shape (max(L-1, 0), M, M)."""
    L, M, _ = R.shape
    S = np.zeros((max(L - 1, 0), M, M))
    for l in range(L - 1):
        for i in range(M):
            for j in range(M):
                s = 0.0
                for k in range(M):
                    s += R[l + 1, i, k] * R[l, j, k]
                S[l, i, j] = s
    return S


@jit
def _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, want_z):
    """Forward pass of §5 for points p0..p0+nb-1 (transposed block layout).

    Fills, per layer ℓ and point p: ``U[ℓ, :, p] = u_ℓ``, ``Hm[ℓ, :, p] = h_ℓ``
    (1.0 / 0.0, H(0) = 0), ``Tt[ℓ, :, p] = t_ℓ = h⊙u − b``; ``ntr[ℓ]`` = number
    of truncated (point, direction) pairs in the block; ``Z[:, p] = z_L`` when
    ``want_z`` (the Euclidean gradient works in the last layer's frame instead).
    """
    L, M = b.shape
    for p in range(nb):
        for k in range(M):
            Z[k, p] = X[p0 + p, k]
    for l in range(L):
        V = U[l]
        A = R[0] if l == 0 else S[l - 1]
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
                # h ⊙ u − b: equals (u − b if h else −b) for finite u, in one form with C
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
            a = R[L - 1, i, k]
            for p in range(nb):
                Z[k, p] += a * Tt[L - 1, i, p]


@jit
def _forward_scratch(L, M, block):
    """Scratch of :func:`_forward_block`: U, Hm, Tt (L, M, block), Z (M, block), ntr (L,).

    Zero-filled, so the padded tail columns of a partial block stay finite.
    """
    return (np.zeros((L, M, block)), np.zeros((L, M, block)), np.zeros((L, M, block)),
            np.zeros((M, block)), np.zeros(L, dtype=np.int64))


@jit
def _truncate_chunk(R, S, b, X, start, stop, block, out, codes, want_codes):
    L, M = b.shape
    U, Hm, Tt, Z, ntr = _forward_scratch(L, M, block)
    for p0 in range(start, stop, block):
        nb = min(block, stop - p0)
        _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, not want_codes)
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
def truncate_range(R, S, b, X, c_first, c_last, chunk, block, out, codes, want_codes):
    """Forward pass of chunks c_first..c_last-1: τ^(L) rows into ``out`` or codes into ``codes``."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        _truncate_chunk(R, S, b, X, c * chunk, min(N, (c + 1) * chunk), block, out, codes, want_codes)


@jit
def general_chunk(R, S, b, X, labels, T, W, bout, Y, standard, want_grad, start, stop, block,
                  gb, G, gW, gbo):
    """Sequential sum over points start..stop-1 of the §5 contributions.

    ``gb`` (L, M), ``G`` (L, M, M), ``gW`` (P, M), ``gbo`` (P,) must be zero on
    entry (one partial slot per chunk); returns the raw loss Σ ½|residual|².
    Euclidean loss: residual z_L − T[j]; standard loss: W z_L + bout − Y[j]
    and e = Wᵀ·residual.  On return ``gb`` = Σ ∇_b contributions (no 1/N) and
    ``G`` is strictly upper triangular with ``P_A(G) = P_A(Σ G_ℓ contributions)``
    — only the antisymmetric part is ever used (ω = P_A(G)/N) — computed as

        P_A(G)_ik = ½ [ Σ_p (h_i − h_k)(r_i u_k + u_i r_k) + D_i b_k − b_i D_k ],
        D = Σ_p (1 − h) ⊙ r = −(∇_b sum),

    which follows from G = (h⊙r)((1−h)⊙u)ᵀ − ((1−h)⊙r)(h⊙u)ᵀ + ((1−h)⊙r) bᵀ:
    i < k pairs only.  Every sum over points runs in ``ACC_LANES`` interleaved
    partial sums (point p of the chunk feeds lane p mod ACC_LANES), and the
    lanes are added in order at the end of the chunk: a fixed reassociation
    that lets the loop over points vectorise and does not depend on the thread
    count.  Scratch: O(L·M·block) for the forward pass and O(L·M²·ACC_LANES)
    for the pair sums (kept per chunk, never per point).
    """
    L, M = b.shape
    P = W.shape[0]
    npairs = M * (M - 1) // 2
    U, Hm, Tt, Z, ntr = _forward_scratch(L, M, block)
    E = np.empty((M, block))
    Ra = np.zeros((M, block))
    Rb = np.zeros((M, block))
    res = np.empty((P, block))
    Dacc = np.zeros((L, M, ACC_LANES))
    term = np.empty(block)
    # ỹ'_j = R_L ỹ_j: the Euclidean targets in the last layer's frame, once per
    # chunk for at most TARGETS_CACHE_ROWS targets, else per point (one target per
    # point, as in regression: an O(Q) setup per chunk would dominate); same bits
    Q = T.shape[0]
    cache = (not standard) and Q <= TARGETS_CACHE_ROWS
    Ty = np.zeros((Q if cache else 0, M))
    ty = np.empty(M)
    if cache:
        for j in range(Q):
            for i in range(M):
                s = 0.0
                for k in range(M):
                    s += R[L - 1, i, k] * T[j, k]
                Ty[j, i] = s
    Kacc = np.zeros((L, npairs, ACC_LANES))
    loss = 0.0
    for p0 in range(start, stop, block):
        nb = min(block, stop - p0)
        _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, standard)
        # residual, loss and error vector e = g_L (§5)
        if standard:
            for q in range(P):
                for p in range(nb):
                    res[q, p] = bout[q] - Y[labels[p0 + p], q]
                for k in range(M):
                    w = W[q, k]
                    for p in range(nb):
                        res[q, p] += w * Z[k, p]
            for p in range(nb):
                s = 0.0
                for q in range(P):
                    s += res[q, p] * res[q, p]
                loss += 0.5 * s
            if not want_grad:
                continue
            for q in range(P):
                for p in range(nb):
                    rq = res[q, p]
                    gbo[q] += rq
                    for k in range(M):
                        gW[q, k] += rq * Z[k, p]
            for k in range(M):
                for p in range(nb):
                    E[k, p] = 0.0
            for q in range(P):
                for k in range(M):
                    w = W[q, k]
                    for p in range(nb):
                        E[k, p] += w * res[q, p]
        else:
            # Euclidean loss in the last layer's frame: z_L = R_Lᵀ t_L, so
            # e = R_Lᵀ (t_L − R_L ỹ_j), |e| = |t_L − ỹ'_j| and r_L = R_L e = t_L − ỹ'_j
            TL = Tt[L - 1]
            for p in range(nb):
                j = labels[p0 + p]
                if cache:
                    for k in range(M):
                        ty[k] = Ty[j, k]
                else:
                    for i in range(M):
                        s = 0.0
                        for k in range(M):
                            s += R[L - 1, i, k] * T[j, k]
                        ty[i] = s
                s = 0.0
                for k in range(M):
                    d = TL[k, p] - ty[k]
                    E[k, p] = d
                    s += d * d
                loss += 0.5 * s
            if not want_grad:
                continue
        # lowest layer at which some point of the block is truncated: below it
        # every contribution vanishes, so the backward pass can stop there
        lowest = L
        for l in range(L):
            if ntr[l] > 0:
                lowest = l
                break
        if lowest == L:
            continue
        # r_L = R_L e (already in E for the Euclidean loss); columns
        # nb..block-1 of a partial last block stay exactly 0
        for i in range(M):
            for p in range(block):
                Ra[i, p] = 0.0
            if standard:
                for k in range(M):
                    a = R[L - 1, i, k]
                    for p in range(nb):
                        Ra[i, p] += a * E[k, p]
            else:
                for p in range(nb):
                    Ra[i, p] = E[i, p]
        for l in range(L - 1, lowest - 1, -1):
            if ntr[l] > 0:
                H = Hm[l]
                Ul = U[l]
                Dl = Dacc[l]
                Kl = Kacc[l]
                # point p adds into lane p % ACC_LANES (block is a multiple of
                # it); the terms of a row are formed over the whole block first
                # (a loop LLVM vectorises), then added lane by lane in order
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
                            term[p] = (H[i, p] - H[k, p]) * (Ra[i, p] * Ul[k, p] + Ul[i, p] * Ra[k, p])
                        for p8 in range(0, block, ACC_LANES):
                            for q in range(ACC_LANES):
                                Kl[pair, q] += term[p8 + q]
                        pair += 1
                # h ⊙ r: exact (h is 0 or 1), and equal to r where untruncated
                for i in range(M):
                    for p in range(block):
                        Ra[i, p] *= H[i, p]
            if l > lowest:
                # r_{ℓ-1} = S_{ℓ-1}ᵀ (h_ℓ ⊙ r_ℓ)
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
            pair = 0
            for i in range(M):
                for k in range(i + 1, M):
                    s = 0.0
                    for q in range(ACC_LANES):
                        s += Kacc[l, pair, q]
                    G[l, i, k] += s + (Dc[i] * b[l, k] - b[l, i] * Dc[k])
                    pair += 1
    return loss


@jit
def general_range(R, S, b, X, labels, T, W, bout, Y, standard, want_grad, c_first, c_last, chunk, block,
                  slot0, pgb, pG, pgW, pgbo, ploss):
    """Chunks c_first..c_last-1 of §5, each summed into its own partial slot c − slot0."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        s = c - slot0
        pgb[s] = 0.0
        pG[s] = 0.0
        pgW[s] = 0.0
        pgbo[s] = 0.0
        ploss[s] = general_chunk(R, S, b, X, labels, T, W, bout, Y, standard, want_grad,
                                 c * chunk, min(N, (c + 1) * chunk), block, pgb[s], pG[s], pgW[s], pgbo[s])


@jit
def _moments_chunk(R, b, X, labels, start, stop, S0, S1, S2, cnt, lo, hi):
    """Moments of §6 for points start..stop-1, summed point by point in order.

    ``v = R_j x`` (j = label, sum over k in order), ``h = H(v + b_j)``, then
    ``S0_i += h_i``, ``S1_ik += h_i v_k``, ``S2_ik += (h_i v_i) v_k``; a point
    with h_i = 0 adds nothing to row i.  Also the cluster sizes ``cnt`` and the
    coordinate-wise extent ``lo``/``hi`` of v over each cluster (for the
    separation test on boxes, :func:`truncfast._flow.separated.separated_by_boxes`).
    """
    M = X.shape[1]
    v = np.empty(M)
    for n in range(start, stop):
        j = labels[n]
        cnt[j] += 1.0
        for i in range(M):
            s = 0.0
            for k in range(M):
                s += R[j, i, k] * X[n, k]
            v[i] = s
            if s < lo[j, i]:
                lo[j, i] = s
            if s > hi[j, i]:
                hi[j, i] = s
        for i in range(M):
            if v[i] + b[j, i] > 0.0:
                S0[j, i] += 1.0
                vi = v[i]
                for k in range(M):
                    S1[j, i, k] += v[k]
                    S2[j, i, k] += vi * v[k]


@jit
def moments_range(R, b, X, labels, c_first, c_last, chunk, slot0, p0, p1, p2, pn, plo, phi):
    """Raw constrained moments of §6 (cluster j at layer j) per chunk, into slots c − slot0.

    Slots: S0 ``p0`` (Q, M), S1 ``p1`` and S2 ``p2`` (Q, M, M), cluster sizes
    ``pn`` (Q,), extent of v = R_j x ``plo``/``phi`` (Q, M).
    """
    N = X.shape[0]
    for c in range(c_first, c_last):
        s = c - slot0
        p0[s] = 0.0
        p1[s] = 0.0
        p2[s] = 0.0
        pn[s] = 0.0
        plo[s] = np.inf
        phi[s] = -np.inf
        _moments_chunk(R, b, X, labels, c * chunk, min(N, (c + 1) * chunk), p0[s], p1[s], p2[s], pn[s],
                       plo[s], phi[s])


@jit
def _violations_chunk(R, S, b, X, labels, start, stop, block, counts):
    L, M = b.shape
    U, Hm, Tt, Z, ntr = _forward_scratch(L, M, block)
    for p0 in range(start, stop, block):
        nb = min(block, stop - p0)
        _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, False)
        for p in range(nb):
            j = labels[p0 + p]
            for l in range(L):
                if l == j:
                    continue
                for i in range(M):
                    if Hm[l, i, p] == 0.0:
                        counts[j, l] += 1
                        break


@jit
def violations_range(R, S, b, X, labels, c_first, c_last, chunk, block, counts):
    """Add to ``counts`` (Q, L) the points of cluster j truncated at a layer ℓ ≠ j (§6 check)."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        _violations_chunk(R, S, b, X, labels, c * chunk, min(N, (c + 1) * chunk), block, counts)


@jit
def add_slots(total, parts, n):
    """total += parts[0] + parts[1] + … + parts[n-1], added one slot at a time in order."""
    for s in range(n):
        total += parts[s]


@jit
def cluster_sums_range(X, labels, c_first, c_last, chunk, sums):
    """Add Σ x over each cluster (rows of ``sums``, (Q, M)) for chunks c_first..c_last-1."""
    N, M = X.shape
    for n in range(c_first * chunk, min(N, c_last * chunk)):
        j = labels[n]
        for k in range(M):
            sums[j, k] += X[n, k]


@jit
def cluster_radius_range(X, labels, centers, c_first, c_last, chunk, rad):
    """rad[j] = max(rad[j], max |x − centers[j]|² over cluster j) for chunks c_first..c_last-1."""
    N, M = X.shape
    for n in range(c_first * chunk, min(N, c_last * chunk)):
        j = labels[n]
        s = 0.0
        for k in range(M):
            d = X[n, k] - centers[j, k]
            s += d * d
        if s > rad[j]:
            rad[j] = s


# the gradient kernels freeze _config.ACC_LANES into their cached code
_numba_cache.stamp([general_chunk, general_range], [_config])
