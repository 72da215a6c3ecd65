"""Numba kernels (THEORY §§2, 5, 6).  Arrays and scalars in, arrays out.

Kernels never validate (the API boundary does) and are compiled lazily on
first use with ``cache=True``.  Parallel reductions follow one scheme
(``_config.CHUNK_SIZE``): points are split into fixed-size chunks; each chunk is
summed sequentially into its own partial buffer (``prange`` over the chunks of
a batch); the partials are then added to the total in chunk order.  The
chunking depends on N only, so the bits of every result are the same for any
number of threads.

Per point, the forward and backward passes of §5 use O(L·M) scratch and exploit
the structure of the flow:

* a layer where the point is untruncated (h = 1…1) leaves z unchanged in the
  forward pass, is skipped entirely in the backward pass (P_ℓ = I) and adds
  nothing to ∇_b C or G_ℓ;
* a layer where it is fully truncated (h = 0…0) sends z to the precomputed
  point −R_ℓᵀ b_ℓ and ends the backward pass (g_{ℓ-1} = 0);
* for a partially truncated layer the G_ℓ update
  ``(h⊙r) vᵀ − r tᵀ = (h⊙r)((1−h)⊙u)ᵀ − ((1−h)⊙r) tᵀ``
  touches only the rows of truncated directions and, in the other rows, only
  the columns of truncated directions: O(M·k) work for k truncated directions.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "truncate_kernel",
    "codes_kernel",
    "general_kernel",
    "moments_kernel",
    "violations_kernel",
]

_UNTRUNCATED = 1
_PARTIAL = 0
_FULL = 2


@njit(cache=True, nogil=True)
def _full_points(R, b):
    """zfull[ℓ] = −R_ℓᵀ b_ℓ, where fully truncated points land (THEORY §2)."""
    L, M = b.shape
    zfull = np.zeros((L, M))
    for l in range(L):
        for i in range(M):
            bi = -b[l, i]
            for k in range(M):
                zfull[l, k] += R[l, i, k] * bi
    return zfull


@njit(cache=True, nogil=True, inline="always")
def _forward_point(R, b, zfull, x, z, vs, us, ts, hs, tidx, ntr, state):
    """Forward pass of one point; fills the per-layer scratch, leaves z = z_L."""
    L, M = b.shape
    for k in range(M):
        z[k] = x[k]
    for l in range(L):
        n = 0
        for i in range(M):
            s = 0.0
            for k in range(M):
                s += R[l, i, k] * z[k]
            vs[l, i] = s
            u = s + b[l, i]
            us[l, i] = u
            if u > 0.0:
                hs[l, i] = 1.0
                ts[l, i] = u - b[l, i]  # t = h⊙u − b, as written in §5
            else:
                hs[l, i] = 0.0
                ts[l, i] = -b[l, i]
                tidx[l, n] = i
                n += 1
        ntr[l] = n
        if n == 0:
            state[l] = _UNTRUNCATED  # z_ℓ = z_{ℓ-1}
        elif n == M:
            state[l] = _FULL
            for k in range(M):
                z[k] = zfull[l, k]
        else:
            state[l] = _PARTIAL
            for k in range(M):
                z[k] = 0.0
            for i in range(M):
                ti = ts[l, i]
                for k in range(M):
                    z[k] += R[l, i, k] * ti


@njit(cache=True, nogil=True)
def _truncate_chunk(R, b, zfull, X, out, start, stop, codes, want_codes):
    L, M = b.shape
    z = np.empty(M)
    vs = np.empty((L, M))
    us = np.empty((L, M))
    ts = np.empty((L, M))
    hs = np.empty((L, M))
    tidx = np.empty((L, M), dtype=np.int64)
    ntr = np.empty(L, dtype=np.int64)
    state = np.empty(L, dtype=np.int64)
    for n in range(start, stop):
        _forward_point(R, b, zfull, X[n], z, vs, us, ts, hs, tidx, ntr, state)
        if want_codes:
            for l in range(L):
                c = np.uint64(0)
                for i in range(M):
                    if hs[l, i] > 0.0:
                        c |= np.uint64(1) << np.uint64(i)
                codes[n, l] = c
        else:
            for k in range(M):
                out[n, k] = z[k]


@njit(cache=True, parallel=True)
def truncate_kernel(R, b, X, chunk):
    """τ^(L)(x) for every row of X."""
    N, M = X.shape
    L = b.shape[0]
    zfull = _full_points(R, b)
    out = np.empty((N, M))
    codes = np.empty((0, L), dtype=np.uint64)
    nchunks = (N + chunk - 1) // chunk
    for c in prange(nchunks):
        _truncate_chunk(R, b, zfull, X, out, c * chunk, min(N, (c + 1) * chunk), codes, False)
    return out


@njit(cache=True, parallel=True)
def codes_kernel(R, b, X, chunk):
    """Sector codes (N, L) uint64 along the composition (bit i = h_ℓ,i)."""
    N, M = X.shape
    L = b.shape[0]
    zfull = _full_points(R, b)
    out = np.empty((0, M))
    codes = np.empty((N, L), dtype=np.uint64)
    nchunks = (N + chunk - 1) // chunk
    for c in prange(nchunks):
        _truncate_chunk(R, b, zfull, X, out, c * chunk, min(N, (c + 1) * chunk), codes, True)
    return codes


@njit(cache=True, nogil=True)
def _general_chunk(R, b, zfull, X, labels, T, W, bout, Y, standard, start, stop,
                   gb, G, gW, gbo, want_grad):
    """Sequential sum over points start..stop-1 of the §5 contributions.

    Accumulates raw sums (no 1/N) into gb (L, M), G (L, M, M), gW (P, M),
    gbo (P); returns the raw loss sum Σ ½|residual|².
    """
    L, M = b.shape
    P = W.shape[0]
    z = np.empty(M)
    vs = np.empty((L, M))
    us = np.empty((L, M))
    ts = np.empty((L, M))
    hs = np.empty((L, M))
    tidx = np.empty((L, M), dtype=np.int64)
    ntr = np.empty(L, dtype=np.int64)
    state = np.empty(L, dtype=np.int64)
    g = np.empty(M)
    r = np.empty(M)
    res = np.empty(P)
    loss = 0.0
    for n in range(start, stop):
        _forward_point(R, b, zfull, X[n], z, vs, us, ts, hs, tidx, ntr, state)
        j = labels[n]
        # error vector e = g_L (§5)
        if standard:
            for p in range(P):
                s = bout[p] - Y[j, p]
                for k in range(M):
                    s += W[p, k] * z[k]
                res[p] = s
                loss += 0.5 * s * s
            if not want_grad:
                continue
            for k in range(M):
                g[k] = 0.0
            for p in range(P):
                rp = res[p]
                gbo[p] += rp
                for k in range(M):
                    gW[p, k] += rp * z[k]
                    g[k] += W[p, k] * rp
        else:
            for k in range(M):
                d = z[k] - T[j, k]
                g[k] = d
                loss += 0.5 * d * d
            if not want_grad:
                continue
        # backward: g_ℓ = P_{ℓ+1} ⋯ P_L e
        for l in range(L - 1, -1, -1):
            st = state[l]
            if st == _UNTRUNCATED:
                continue  # P_ℓ = I and no contribution to layer ℓ
            for i in range(M):
                s = 0.0
                for k in range(M):
                    s += R[l, i, k] * g[k]
                r[i] = s
            if st == _FULL:
                # t = −b: G += r bᵀ, ∇_b −= r, and g_{ℓ-1} = 0 ends the pass
                for i in range(M):
                    ri = r[i]
                    gb[l, i] -= ri
                    for k in range(M):
                        G[l, i, k] += ri * b[l, k]
                break
            nt = ntr[l]
            for i in range(M):
                ri = r[i]
                if hs[l, i] > 0.0:
                    for q in range(nt):
                        k = tidx[l, q]
                        G[l, i, k] += ri * us[l, k]
                else:
                    gb[l, i] -= ri
                    for k in range(M):
                        G[l, i, k] -= ri * ts[l, k]
            # g_{ℓ-1} = R_ℓᵀ (h ⊙ r)
            for k in range(M):
                g[k] = 0.0
            for i in range(M):
                if hs[l, i] > 0.0:
                    ri = r[i]
                    for k in range(M):
                        g[k] += R[l, i, k] * ri
    return loss


@njit(cache=True, parallel=True)
def general_kernel(R, b, X, labels, T, W, bout, Y, standard, want_grad, chunk, batch):
    """Loss and gradient sums of THEORY §5 over all points, chunk-deterministic.

    Returns raw sums ``(loss, gb (L, M), G (L, M, M), gW (P, M), gbo (P,))``;
    the caller divides by N and antisymmetrises G.
    """
    N, M = X.shape
    L = b.shape[0]
    P = W.shape[0]
    zfull = _full_points(R, b)
    nchunks = (N + chunk - 1) // chunk
    gb = np.zeros((L, M))
    G = np.zeros((L, M, M))
    gW = np.zeros((P, M))
    gbo = np.zeros(P)
    loss = 0.0
    pgb = np.empty((batch, L, M))
    pG = np.empty((batch, L, M, M))
    pgW = np.empty((batch, P, M))
    pgbo = np.empty((batch, P))
    ploss = np.empty(batch)
    for c0 in range(0, nchunks, batch):
        nb = min(batch, nchunks - c0)
        for s in prange(nb):
            pgb[s] = 0.0
            pG[s] = 0.0
            pgW[s] = 0.0
            pgbo[s] = 0.0
            c = c0 + s
            ploss[s] = _general_chunk(R, b, zfull, X, labels, T, W, bout, Y, standard,
                                      c * chunk, min(N, (c + 1) * chunk),
                                      pgb[s], pG[s], pgW[s], pgbo[s], want_grad)
        for s in range(nb):  # fixed chunk order: thread-count independent bits
            loss += ploss[s]
            gb += pgb[s]
            G += pG[s]
            gW += pgW[s]
            gbo += pgbo[s]
    return loss, gb, G, gW, gbo


@njit(cache=True, nogil=True)
def _moments_chunk(R, b, X, labels, start, stop, S0, S1, S2):
    M = X.shape[1]
    v = np.empty(M)
    for n in range(start, stop):
        j = labels[n]
        for i in range(M):
            s = 0.0
            for k in range(M):
                s += R[j, i, k] * X[n, k]
            v[i] = s
        for i in range(M):
            if v[i] + b[j, i] > 0.0:
                S0[j, i] += 1.0
                vi = v[i]
                for k in range(M):
                    S1[j, i, k] += v[k]
                    S2[j, i, k] += vi * v[k]


@njit(cache=True, parallel=True)
def moments_kernel(R, b, X, labels, Q, chunk, batch):
    """Raw constrained moments of §6: S0 (Q, M), S1, S2 (Q, M, M), cluster j at layer j."""
    N, M = X.shape
    nchunks = (N + chunk - 1) // chunk
    S0 = np.zeros((Q, M))
    S1 = np.zeros((Q, M, M))
    S2 = np.zeros((Q, M, M))
    p0 = np.empty((batch, Q, M))
    p1 = np.empty((batch, Q, M, M))
    p2 = np.empty((batch, Q, M, M))
    for c0 in range(0, nchunks, batch):
        nb = min(batch, nchunks - c0)
        for s in prange(nb):
            p0[s] = 0.0
            p1[s] = 0.0
            p2[s] = 0.0
            c = c0 + s
            _moments_chunk(R, b, X, labels, c * chunk, min(N, (c + 1) * chunk), p0[s], p1[s], p2[s])
        for s in range(nb):
            S0 += p0[s]
            S1 += p1[s]
            S2 += p2[s]
    return S0, S1, S2


@njit(cache=True, nogil=True)
def _violations_chunk(R, b, zfull, X, labels, start, stop, counts):
    L, M = b.shape
    z = np.empty(M)
    vs = np.empty((L, M))
    us = np.empty((L, M))
    ts = np.empty((L, M))
    hs = np.empty((L, M))
    tidx = np.empty((L, M), dtype=np.int64)
    ntr = np.empty(L, dtype=np.int64)
    state = np.empty(L, dtype=np.int64)
    for n in range(start, stop):
        _forward_point(R, b, zfull, X[n], z, vs, us, ts, hs, tidx, ntr, state)
        j = labels[n]
        for l in range(L):
            if l != j and ntr[l] > 0:
                counts[j, l] += 1


@njit(cache=True, parallel=True)
def violations_kernel(R, b, X, labels, Q, chunk):
    """(Q, L) counts of points of cluster j truncated at a layer ℓ ≠ j (§6 check)."""
    N, M = X.shape
    L = b.shape[0]
    zfull = _full_points(R, b)
    nchunks = (N + chunk - 1) // chunk
    part = np.zeros((nchunks, Q, L), dtype=np.int64)
    for c in prange(nchunks):
        _violations_chunk(R, b, zfull, X, labels, c * chunk, min(N, (c + 1) * chunk), part[c])
    return part.sum(axis=0)
