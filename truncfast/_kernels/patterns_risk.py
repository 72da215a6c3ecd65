"""Numba kernels of the at-risk search (docs/theory.md §11): margin buckets and the bound scan.

A generation's entries (point index, margin m, ρ) are stable-counting-sorted by
bucket — the float32 bits of m shifted right by ``BUCKET_SHIFT`` (8 exponent
bits and the top 3 mantissa bits: 8 buckets per octave, monotone in m) — with
the smallest m and the largest ρ of each bucket.  ``risk_scan`` then visits
only the prefix of buckets the bound can reach (see ``pattern_state``);
``reference_coefficients`` gives the bound's coefficients for every reference
state at once (the derivation is in ``pattern_state``'s docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from truncfast._kernels import parallel
from truncfast._kernels.numba_cache import jit

__all__ = ["NBUCKETS", "BUCKET_SHIFT", "bucket_stats_range", "bucket_scatter_range", "bucket_summary",
           "risk_scan", "live_entries", "compact_entries", "bound_coefficients", "norm_bound",
           "reference_coefficients"]

#: Margin buckets: the float32 bits of m shifted right by this.
BUCKET_SHIFT = 20
NBUCKETS = 1 << (31 - BUCKET_SHIFT)


@jit
def bucket_stats_range(mbits, rho, lo, hi, hist, bmin, bmax, mvals):
    """Histogram of bucket keys (mbits >> BUCKET_SHIFT) of entries lo..hi-1, with per-bucket min m and max ρ."""
    for n in range(lo, hi):
        q = mbits[n] >> BUCKET_SHIFT
        hist[q] += 1
        m = np.float64(mvals[n])
        if m < bmin[q]:
            bmin[q] = m
        r = np.float64(rho[n])
        if r > bmax[q]:
            bmax[q] = r


@jit
def bucket_scatter_range(mbits, m, rho, ids, lo, hi, pos, out_idx, out_m, out_rho):
    """Stable counting-sort scatter of entries lo..hi-1 by bucket; ``pos`` = next free position per bucket.

    The entry's point id is ids[n], or n itself when ids is empty.
    """
    ident = ids.shape[0] == 0
    for n in range(lo, hi):
        q = mbits[n] >> BUCKET_SHIFT
        j = pos[q]
        pos[q] = j + 1
        out_idx[j] = n if ident else ids[n]
        out_m[j] = m[n]
        out_rho[j] = rho[n]


@jit
def bucket_summary(mbits, m, rho):
    """For bucket-sorted entries: (starts (nb+1,), min m (nb,), max ρ (nb,)) of the non-empty buckets."""
    K = m.shape[0]
    starts = np.empty(K + 1, dtype=np.int64)
    bmin = np.empty(K)
    bmax = np.empty(K)
    nb = 0
    prev = np.uint32(0xFFFFFFFF)
    for n in range(K):
        q = mbits[n] >> BUCKET_SHIFT
        if nb == 0 or q != prev:
            starts[nb] = n
            bmin[nb] = np.float64(m[n])
            bmax[nb] = np.float64(rho[n])
            nb += 1
            prev = q
        else:
            if m[n] < bmin[nb - 1]:
                bmin[nb - 1] = np.float64(m[n])
            if rho[n] > bmax[nb - 1]:
                bmax[nb - 1] = np.float64(rho[n])
    starts[nb] = K
    return starts[:nb + 1].copy(), bmin[:nb].copy(), bmax[:nb].copy()


@jit
def risk_scan(A, C0, shrink, starts, bmin, bmax, rhomax, idx, m, rho, gen_of, gen_id, limit):
    """Points of one generation that the bound cannot prove safe.

    Entry s is safe when ``A ρ_s + C0 < m_s · shrink``.  Buckets come in
    increasing m; the scan stops at the first bucket whose smallest margin
    beats the bound for the generation's largest ρ (every later bucket is then
    safe), skips buckets safe for their own largest ρ, and tests the entries
    of the others one by one.  Tombstones (entries whose point moved to
    another generation, gen_of ≠ gen_id) are skipped.  Stops after
    ``limit + 1`` points when ``limit ≥ 0``.
    """
    lim = A * rhomax + C0
    nbk = starts.shape[0] - 1
    q_end = 0
    while q_end < nbk and not (lim < bmin[q_end] * shrink):
        q_end += 1
    out = np.empty(starts[q_end], dtype=np.int64)
    no = 0
    for q in range(q_end):
        if A * bmax[q] + C0 < bmin[q] * shrink:
            continue
        for s in range(starts[q], starts[q + 1]):
            p = idx[s]
            if gen_of[p] != gen_id:
                continue
            if not (A * np.float64(rho[s]) + C0 < np.float64(m[s]) * shrink):
                out[no] = p
                no += 1
                if no == limit + 1:
                    return out[:no]
    return out[:no]


@jit
def live_entries(idx, gen_of, gen_id):
    """Point ids of the live entries of a generation, in entry order."""
    out = np.empty(idx.shape[0], dtype=np.int64)
    no = 0
    for s in range(idx.shape[0]):
        if gen_of[idx[s]] == gen_id:
            out[no] = idx[s]
            no += 1
    return out[:no]


@jit
def compact_entries(idx, m, rho, gen_of, gen_id):
    """The live entries (order kept, hence still bucket-sorted)."""
    K = idx.shape[0]
    keep = np.empty(K, dtype=np.bool_)
    n = 0
    for s in range(K):
        keep[s] = gen_of[idx[s]] == gen_id
        n += keep[s]
    oi = np.empty(n, dtype=idx.dtype)
    om = np.empty(n, dtype=m.dtype)
    orho = np.empty(n, dtype=rho.dtype)
    j = 0
    for s in range(K):
        if keep[s]:
            oi[j] = idx[s]
            om[j] = m[s]
            orho[j] = rho[s]
            j += 1
    return oi, om, orho


# --------------------------------------------------------------- bound ---

_U = 2.0 ** -53
#: Relative inflation of computed norms (their rounding: ≤ (M² + 3) u, M ≤ 64).
INFLATE = 1.0 + 1e-11


@jit
def bound_coefficients(L, M, nu, eps, beta, bnorm, rounding):
    """(A, C0) of the sufficient test ``A ρ + C0 < m (1 − 10⁻¹⁵)``; (inf, inf) when ε ≥ ½ or not finite.

    ``rounding`` is the safety factor of the floating-point term (see
    ``pattern_state``): c = rounding · L (M + 2)² u ν^{2L+2}.
    """
    if not (eps < 0.5):
        return np.inf, np.inf
    p = nu ** (2 * L)
    c = rounding * L * (M + 2) ** 2 * _U * p * nu * nu
    a1 = nu * (1.0 + c)
    a0 = nu * c * bnorm
    # d_1 ≤ ε ρ + β, d_{ℓ+1} ≤ ν² d_ℓ + (ν + 1) ε ρ + β  ⇒  d_L ≤ ν^{2L} ((1 + (L − 1)(ν + 1)) ε ρ + L β)
    k1 = p * (1.0 + (L - 1) * (nu + 1.0)) * eps
    k0 = L * p * beta
    A = (k1 + c) * a1 * (1.0 + 1e-12)
    C0 = (k1 * a0 + k0 + c * (a0 + bnorm)) * (1.0 + 1e-12)
    if not (np.isfinite(A) and np.isfinite(C0)):
        return np.inf, np.inf
    return A, C0


@jit
def norm_bound(R):
    """ν ≥ max_ℓ ‖R_ℓ‖₂ from the Gram defect: ‖R‖₂² ≤ 1 + ‖RᵀR − I‖_F, plus the Gram's rounding.

    The computed Gram entries are off by ≤ γ_M (|R|ᵀ|R|)_ij, whose Frobenius
    norm is ≤ ‖R‖_F² ≤ M ν²: hence the division by 1 − 4 M² u.
    """
    L, M, _ = R.shape
    dmax = 0.0
    for l in range(L):
        d2 = 0.0
        for i in range(M):
            for j in range(M):
                s = 0.0
                for k in range(M):
                    s += R[l, k, i] * R[l, k, j]
                if i == j:
                    s -= 1.0
                d2 += s * s
        dmax = max(dmax, np.sqrt(d2))
    return np.sqrt((1.0 + dmax * INFLATE) / (1.0 - 4.0 * M * M * _U)) * INFLATE


@jit
def _bnorm(b):
    m = 0.0
    for l in range(b.shape[0]):
        s = 0.0
        for i in range(b.shape[1]):
            s += b[l, i] * b[l, i]
        m = max(m, np.sqrt(s))
    return m


@jit
def reference_coefficients(R, b, Rs, bs, nus, bns, rounding, A, C0):
    """(A[g], C0[g]) of the bound between the state (R, b) and each reference (Rs[g], bs[g]).

    ε = max_ℓ ‖R_ℓ − Rs[g]_ℓ‖_F, β = max_ℓ |b_ℓ − bs[g]_ℓ|, ν and B the larger of
    the two states' (ν of the references precomputed in ``nus``, B in ``bns``),
    every norm inflated by ``INFLATE`` for its rounding.
    """
    L, M = b.shape
    nu_now = norm_bound(R)
    bnow = _bnorm(b)
    for g in range(Rs.shape[0]):
        eps = 0.0
        beta = 0.0
        for l in range(L):
            s = 0.0
            for i in range(M):
                for k in range(M):
                    d = R[l, i, k] - Rs[g, l, i, k]
                    s += d * d
            eps = max(eps, np.sqrt(s))
            s = 0.0
            for i in range(M):
                d = b[l, i] - bs[g, l, i]
                s += d * d
            beta = max(beta, np.sqrt(s))
        A[g], C0[g] = bound_coefficients(L, M, max(nu_now, nus[g]), eps * INFLATE, beta * INFLATE,
                                         max(bnow, bns[g]) * INFLATE, rounding)


# ------------------------------------------------------- generations ---

@dataclass
class _Generation:
    """Points last checked at the reference state (R, b), sorted by margin bucket."""

    gid: int
    R: np.ndarray
    b: np.ndarray
    idx: np.ndarray
    m: np.ndarray
    rho: np.ndarray
    starts: np.ndarray
    bmin: np.ndarray
    bmax: np.ndarray
    live: int
    nu: float = 1.0
    bnorm: float = 0.0
    rhomax: float = 0.0


def chunk_pieces(nchunks: int, chunk: int, N: int) -> np.ndarray:
    """Row bounds of contiguous pieces of whole chunks (enough to feed the pool)."""
    pieces = max(1, min(nchunks, 4 * parallel.get_num_threads()))
    cb = [(nchunks * i) // pieces for i in range(pieces + 1)]
    return np.array([min(N, c * chunk) for c in cb], dtype=np.int64)


def make_generation(st, R, b, m32, rho32, ids, chunk: int) -> _Generation:
    """Bucket-sort the entries (ids[k] or k, m32[k], rho32[k]) into a new generation at (R, b)."""
    K = m32.shape[0]
    mbits = m32.view(np.uint32)
    bounds = chunk_pieces(max(1, (K + chunk - 1) // chunk), chunk, K)
    P = bounds.shape[0] - 1
    nbk = NBUCKETS
    hist = np.zeros((P, nbk), np.int64)
    bmin = np.full((P, nbk), np.inf)
    bmax = np.zeros((P, nbk))

    def stats(a, c, _):
        for r in range(a, c):
            bucket_stats_range(mbits, rho32, bounds[r], bounds[r + 1], hist[r], bmin[r], bmax[r], m32)

    parallel.run_ranges(stats, 0, P)
    total = hist.sum(axis=0)
    start = np.concatenate(([0], np.cumsum(total)[:-1]))
    pos = start[None, :] + np.cumsum(hist, axis=0) - hist  # stable: pieces in row order
    idx = np.empty(K, np.int32)
    m = np.empty(K, np.float32)
    rho = np.empty(K, np.float32)

    def scatter(a, c, _):
        for r in range(a, c):
            bucket_scatter_range(mbits, m32, rho32, ids, bounds[r], bounds[r + 1], pos[r], idx, m, rho)

    parallel.run_ranges(scatter, 0, P)
    nonempty = np.flatnonzero(total)
    starts = np.append(start[nonempty], K).astype(np.int64)
    gmax = bmax.max(axis=0)[nonempty]
    gen = _Generation(st.next_gen, R.copy(), b.copy(), idx, m, rho, starts, bmin.min(axis=0)[nonempty], gmax, K,
                      float(norm_bound(R)), float(np.sqrt((b * b).sum(axis=1)).max()),
                      float(gmax.max()) if gmax.size else 0.0)
    st.next_gen += 1
    return gen
