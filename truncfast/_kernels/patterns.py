"""Numba kernels of the pattern form of the general flow (docs/theory.md §11).

Arrays and scalars in, arrays out; no validation (``pattern_state`` calls them
on validated, C-contiguous float64 / int64 arrays).  The design, including the
at-risk search, is described in :mod:`truncfast._kernels.pattern_state`; this
module holds the compiled pieces:

* **Full pass** (``pass_range`` then ``local_moments_range``): for every point
  its pattern (L uint64 sector codes, computed by the per-point forward kernel
  ``_kernels_numba._forward_block``, so the codes have the bits of
  ``tf.sector_codes``), its margin ``m = min_{ℓ,i} |u_ℓ,i|`` stored as float32
  rounded *down*, and ``ρ = max(|x|, |t_1|, …, |t_{L-1}|)`` stored as float32
  rounded *up* (|t_ℓ| = |z_ℓ| for orthogonal R).  Each chunk of
  ``_config.CHUNK_SIZE`` points numbers its distinct (pattern, label) keys in
  order of first appearance (a per-chunk hash table) and computes their count,
  mean and centred scatter with the two-pass algorithm.  ``lookup_keys`` /
  ``insert_new`` / ``merge_moments`` then fold the chunk groups into the global
  groups **in chunk order** (Chan's pairwise update), so global ids are the
  order of first appearance in row order and every moment has the same bits
  for any thread count.
* **Moves** (``group_add`` / ``group_remove`` / ``move_points``): a batch of
  points enters or leaves a group through Chan's update and its inverse
  (single points: Welford's).  Removal subtracts, so the scatter of a group
  that lost most of its spread keeps an absolute error of order
  ``u · ‖C_before‖`` (u = 2⁻⁵³): the drift is relative to the largest scatter
  the group had, not to the current one (measured in tests/test_patterns.py).
* **Assembly** (``assemble_range``): loss and (∇_b C, G_ℓ) from the groups by
  the formulas of §11, O(L M³) per group, groups summed in fixed blocks of
  ``block`` groups whose partial sums are added in block order (thread-count
  independent bits).
* **Buckets and the at-risk scan** (``bucket_stats_range``,
  ``bucket_scatter_range``, ``bucket_summary``, ``risk_scan``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# the only imports from the flat kernel modules (re-point them after the move)
from .._kernels_numba import _forward_block, _forward_scratch

__all__ = [
    "NBUCKETS", "BUCKET_SHIFT",
    "pass_range", "stats_range", "flatten_locals", "local_moments_range", "lookup_keys", "insert_new",
    "rehash", "merge_moments", "remap_range", "group_add", "group_remove", "move_points",
    "bucket_stats_range", "bucket_scatter_range", "bucket_summary", "risk_scan", "live_entries",
    "compact_entries", "assemble_range", "counts_from_groups",
]

#: Margin buckets: the float32 bits of m shifted right by this (8 exponent bits
#: and the top 3 mantissa bits: 8 buckets per octave, monotone in m).
BUCKET_SHIFT = 20
NBUCKETS = 1 << (31 - BUCKET_SHIFT)

_F32_MIN_NORMAL = 1.1754943508222875e-38
_F32_MAX = 3.4028234663852886e38
_RHO_FLOOR = 2.0 ** -120


# ------------------------------------------------------------ rounding ---

@njit(cache=True, nogil=True, inline="always")
def _down32(x):
    """A float32 ≤ x (x ≥ 0): the nearest one, or the next one below it."""
    if x < _F32_MIN_NORMAL:
        return np.float32(0.0)
    if x >= _F32_MAX:
        return np.float32(_F32_MAX)
    f = np.float32(x)
    if np.float64(f) > x:
        # x (1 − 2⁻²²) lies more than half a float32 ulp below x: its nearest float32 is < x
        f = np.float32(x * (1.0 - 2.0 ** -22))
    return f


@njit(cache=True, nogil=True, inline="always")
def _up32(x):
    """A float32 ≥ x (x ≥ 0), possibly +inf."""
    if x < _RHO_FLOOR:
        return np.float32(_RHO_FLOOR)
    f = np.float32(x)
    if np.float64(f) < x:
        f = np.float32(x * (1.0 + 2.0 ** -22))
    return f


# ------------------------------------------------------------- hashing ---

@njit(cache=True, nogil=True, inline="always")
def _hash(keys, row, lab):
    h = np.uint64(lab) * np.uint64(0x9E3779B97F4A7C15)
    for l in range(keys.shape[1]):
        h = (h ^ keys[row, l]) * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(31))
    return h


@njit(cache=True, nogil=True, inline="always")
def _find(hslots, tkeys, tlabs, keys, row, lab):
    """Id g ≥ 0 of key (keys[row], lab) in the open-addressing table, else −1 − (free slot)."""
    mask = hslots.shape[0] - 1
    s = np.int64(_hash(keys, row, lab) & np.uint64(mask))
    L = keys.shape[1]
    while True:
        g = hslots[s]
        if g < 0:
            return -1 - s
        if tlabs[g] == lab:
            same = True
            for l in range(L):
                if tkeys[g, l] != keys[row, l]:
                    same = False
                    break
            if same:
                return np.int64(g)
        s = (s + 1) & mask


@njit(cache=True, nogil=True)
def rehash(hslots, keys, labs, G):
    """Rebuild the table ``hslots`` (a power of two > 2 G) for ids 0..G-1."""
    hslots[:] = -1
    for g in range(G):
        f = _find(hslots, keys, labs, keys, g, labs[g])
        hslots[-1 - f] = g


# ----------------------------------------------------------- full pass ---

@njit(cache=True, nogil=True)
def _block_stats(p0, nb, L, M, U, Tt, Z, codes, crow0, m32, rho32, cl, mn, r2):
    """Codes, margins and ρ of the nb block points after ``_forward_block``; loops over the block.

    Codes into codes[crow0 + p] (bit i of layer ℓ: u_ℓ,i > 0, the test of the
    forward kernel's h), margin min |u_ℓ,i| rounded down and
    ρ = max(|x|, |t_1|, …, |t_{L-1}|) rounded up, as float32, into m32 / rho32
    at p0 + p.  ``Z`` still holds the block's x (transposed): the forward pass
    only overwrites it with z_L when asked to.
    """
    for l in range(L):
        for p in range(nb):
            cl[p] = 0
        for i in range(M):
            bit = np.uint64(1) << np.uint64(i)
            for p in range(nb):
                cl[p] |= bit if U[l, i, p] > 0.0 else np.uint64(0)
        for p in range(nb):
            codes[crow0 + p, l] = cl[p]
    for p in range(nb):
        mn[p] = np.inf
        r2[p] = 0.0
    for l in range(L):
        for i in range(M):
            for p in range(nb):
                mn[p] = min(mn[p], abs(U[l, i, p]))
    for k in range(M):
        for p in range(nb):
            r2[p] += Z[k, p] * Z[k, p]
    for l in range(L - 1):
        for p in range(nb):
            s = 0.0
            for i in range(M):
                s += Tt[l, i, p] * Tt[l, i, p]
            r2[p] = max(r2[p], s)
    for p in range(nb):
        m32[p0 + p] = _down32(mn[p])
        # (1 + 2⁻⁴⁰) covers the rounding of the norm (M ≤ 64 terms), _up32 the rest
        rho32[p0 + p] = _up32(np.sqrt(r2[p]) * (1.0 + 2.0 ** -40))


@njit(cache=True, nogil=True)
def _stats_scratch(L, M, block):
    return (np.empty(block, dtype=np.uint64), np.empty(block), np.empty(block),
            np.empty((block, L), dtype=np.uint64))


@njit(cache=True, nogil=True)
def pass_range(R, S, b, X, labels, c_first, c_last, chunk, block, c0, group_of, m32, rho32,
               lkeys, llab, lcount):
    """Full pass, phase 1, chunks c_first..c_last-1 (slot c − c0 of the local arrays).

    Per point n: ``group_of[n]`` = its chunk-local group (first appearance in
    the chunk), ``m32[n]``, ``rho32[n]``; per chunk slot s: local keys
    ``lkeys[s, :lcount[s]]`` (L codes) and labels ``llab[s, :lcount[s]]``.
    A point with the key of the previous point skips the hash table.
    """
    N = X.shape[0]
    L, M = b.shape
    U, Hm, Tt, Z, ntr = _forward_scratch(L, M, block)
    cl, mn, r2, cb = _stats_scratch(L, M, block)
    cap = 1
    while cap < 2 * chunk:
        cap *= 2
    ht = np.empty(cap, dtype=np.int32)
    for c in range(c_first, c_last):
        s = c - c0
        keys = lkeys[s]
        labs = llab[s]
        ht[:] = -1
        nloc = 0
        last = -1
        start = c * chunk
        stop = min(N, start + chunk)
        for p0 in range(start, stop, block):
            nb = min(block, stop - p0)
            _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, False)
            _block_stats(p0, nb, L, M, U, Tt, Z, cb, 0, m32, rho32, cl, mn, r2)
            for p in range(nb):
                n = p0 + p
                lab = labels[n]
                if last >= 0 and labs[last] == lab:
                    same = True
                    for l in range(L):
                        if keys[last, l] != cb[p, l]:
                            same = False
                            break
                    if same:
                        group_of[n] = last
                        continue
                f = _find(ht, keys, labs, cb, p, lab)
                if f >= 0:
                    g = f
                else:
                    g = nloc
                    ht[-1 - f] = g
                    for l in range(L):
                        keys[g, l] = cb[p, l]
                    labs[g] = lab
                    nloc += 1
                group_of[n] = g
                last = g
        lcount[s] = nloc


@njit(cache=True, nogil=True)
def stats_range(R, S, b, X, c_first, c_last, chunk, block, codes, m32, rho32):
    """Codes (K, L), margins and ρ of the rows of X (gathered points), chunks c_first..c_last-1."""
    N = X.shape[0]
    L, M = b.shape
    U, Hm, Tt, Z, ntr = _forward_scratch(L, M, block)
    cl, mn, r2, cb = _stats_scratch(L, M, block)
    for c in range(c_first, c_last):
        stop = min(N, (c + 1) * chunk)
        for p0 in range(c * chunk, stop, block):
            nb = min(block, stop - p0)
            _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, False)
            _block_stats(p0, nb, L, M, U, Tt, Z, codes, p0, m32, rho32, cl, mn, r2)


@njit(cache=True, nogil=True)
def flatten_locals(lkeys, llab, lcount, nslots, loff):
    """The local keys of slots 0..nslots-1 as flat (K, L) keys and (K,) labels, in slot order."""
    K = loff[nslots]
    L = lkeys.shape[2]
    keys = np.empty((K, L), dtype=np.uint64)
    labs = np.empty(K, dtype=np.int64)
    for s in range(nslots):
        for g in range(lcount[s]):
            for l in range(L):
                keys[loff[s] + g, l] = lkeys[s, g, l]
            labs[loff[s] + g] = llab[s, g]
    return keys, labs


@njit(cache=True, nogil=True)
def local_moments_range(X, group_of, c_first, c_last, chunk, c0, loff, ln, lmean, lscat):
    """Full pass, phase 2: count, mean and centred scatter of every chunk-local group.

    Two passes per chunk (sums, then Σ (x − μ)(x − μ)ᵀ in row order); local group
    g of slot s is entry loff[s] + g.  The mean is the group's first point x₀
    plus the mean of x − x₀: for a tight cluster far from the origin the sum
    then rounds relative to its spread, not to |x| (near collapse the gradient
    is a small difference at μ, and an error of a few ulps of μ showed as
    1.6·10⁻¹¹ relative in omega at N = 10⁶).  The scatter is symmetric exactly
    (upper triangle mirrored).
    """
    N, M = X.shape
    d = np.empty(M)
    for c in range(c_first, c_last):
        s = c - c0
        o = loff[s]
        for j in range(o, loff[s + 1]):
            ln[j] = 0
            lscat[j, :, :] = 0.0
        start = c * chunk
        stop = min(N, start + chunk)
        for n in range(start, stop):
            j = o + group_of[n]
            if ln[j] == 0:  # the group's first point: its shift (lscat row 0 holds the sum meanwhile)
                for k in range(M):
                    lmean[j, k] = X[n, k]
            ln[j] += 1
            for k in range(M):
                lscat[j, 0, k] += X[n, k] - lmean[j, k]
        for j in range(o, loff[s + 1]):
            inv = 1.0 / ln[j]
            for k in range(M):
                lmean[j, k] += lscat[j, 0, k] * inv
                lscat[j, 0, k] = 0.0
        for n in range(start, stop):
            j = o + group_of[n]
            for k in range(M):
                d[k] = X[n, k] - lmean[j, k]
            for i in range(M):
                di = d[i]
                for k in range(i, M):
                    lscat[j, i, k] += di * d[k]
        for j in range(o, loff[s + 1]):
            for i in range(M):
                for k in range(i + 1, M):
                    lscat[j, k, i] = lscat[j, i, k]


@njit(cache=True, nogil=True)
def lookup_keys(hslots, tkeys, tlabs, G, keys, labs):
    """Global id of every key (keys[k], labs[k]); keys not in the table get G, G+1, …

    in order of first appearance (a temporary table deduplicates them).
    Returns ``(gid (K,) int64, number of new keys)``.
    """
    K = keys.shape[0]
    gid = np.empty(K, dtype=np.int64)
    cap = 1
    while cap < 2 * K + 2:
        cap *= 2
    tmp = np.empty(cap, dtype=np.int32)
    tmp[:] = -1
    first = np.empty(K, dtype=np.int64)  # row of each new key's first appearance
    nnew = 0
    for k in range(K):
        f = _find(hslots, tkeys, tlabs, keys, k, labs[k])
        if f >= 0:
            gid[k] = f
            continue
        # look among the new keys: their rows are keys[first[t]]
        mask = cap - 1
        s = np.int64(_hash(keys, k, labs[k]) & np.uint64(mask))
        while True:
            t = tmp[s]
            if t < 0:
                tmp[s] = nnew
                first[nnew] = k
                gid[k] = G + nnew
                nnew += 1
                break
            r = first[t]
            if labs[r] == labs[k]:
                same = True
                for l in range(keys.shape[1]):
                    if keys[r, l] != keys[k, l]:
                        same = False
                        break
                if same:
                    gid[k] = G + t
                    break
            s = (s + 1) & mask
    return gid, nnew


@njit(cache=True, nogil=True)
def insert_new(hslots, tkeys, tlabs, tn, tmean, tscat, G, keys, labs, gid):
    """Insert the keys with gid ≥ G (from :func:`lookup_keys`) as empty groups; returns the new G."""
    newG = G
    for k in range(keys.shape[0]):
        g = gid[k]
        if g == newG:  # first appearance of a new key (ids were handed out in this order)
            for l in range(keys.shape[1]):
                tkeys[g, l] = keys[k, l]
            tlabs[g] = labs[k]
            tn[g] = 0
            tmean[g, :] = 0.0
            tscat[g, :, :] = 0.0
            f = _find(hslots, tkeys, tlabs, keys, k, labs[k])
            hslots[-1 - f] = g
            newG += 1
    return newG


@njit(cache=True, nogil=True)
def _chan(tn, tmean, tscat, g, nb, mb, Cb, d):
    """Group g ∪= a batch (nb points, mean mb, scatter Cb): Chan's pairwise update."""
    na = tn[g]
    n = na + nb
    M = mb.shape[0]
    if nb == 0:
        return
    if na == 0:
        tn[g] = nb
        tmean[g, :] = mb
        tscat[g, :, :] = Cb
        return
    for i in range(M):
        d[i] = mb[i] - tmean[g, i]
    f = nb / n
    w = (na * 1.0) * nb / n
    for i in range(M):
        tmean[g, i] += d[i] * f
    for i in range(M):
        wi = w * d[i]
        for k in range(i, M):
            v = tscat[g, i, k] + Cb[i, k] + wi * d[k]
            tscat[g, i, k] = v
            tscat[g, k, i] = v
    tn[g] = n


@njit(cache=True, nogil=True)
def _chan_remove(tn, tmean, tscat, g, nb, mb, Cb, d):
    """Group g −= a batch it contains (nb points, mean mb, scatter Cb): Chan's update inverted."""
    n = tn[g]
    na = n - nb
    M = mb.shape[0]
    if nb == 0:
        return
    if na <= 0:  # emptied: exact zeros, not the remainder of a cancellation
        tn[g] = 0
        tmean[g, :] = 0.0
        tscat[g, :, :] = 0.0
        return
    # n μ = na μa + nb μb  ⇒  μa = μ + (μ − μb) nb / na
    f = nb / na
    for i in range(M):
        tmean[g, i] += (tmean[g, i] - mb[i]) * f
    for i in range(M):
        d[i] = mb[i] - tmean[g, i]
    w = (na * 1.0) * nb / n
    for i in range(M):
        wi = w * d[i]
        for k in range(i, M):
            v = tscat[g, i, k] - Cb[i, k] - wi * d[k]
            tscat[g, i, k] = v
            tscat[g, k, i] = v
    tn[g] = na


@njit(cache=True, nogil=True)
def merge_moments(tn, tmean, tscat, gid, ln, lmean, lscat):
    """Fold the local groups j = 0, 1, … (in this order) into the global groups gid[j]."""
    d = np.empty(tmean.shape[1])
    for j in range(gid.shape[0]):
        _chan(tn, tmean, tscat, gid[j], ln[j], lmean[j], lscat[j], d)


@njit(cache=True, nogil=True)
def remap_range(group_of, gid, loff, c_first, c_last, chunk, c0):
    """Chunk-local group ids → global ids for the rows of chunks c_first..c_last-1."""
    N = group_of.shape[0]
    for c in range(c_first, c_last):
        o = loff[c - c0]
        for n in range(c * chunk, min(N, (c + 1) * chunk)):
            group_of[n] = gid[o + group_of[n]]


@njit(cache=True, nogil=True)
def _rows_moments(X, rows, mean, scat):
    """Two-pass mean (shifted by the first point, as in :func:`local_moments_range`) and centred scatter of X[rows]."""
    M = X.shape[1]
    scat[:, :] = 0.0
    r0 = rows[0]
    for r in rows:
        for k in range(M):
            scat[0, k] += X[r, k] - X[r0, k]
    inv = 1.0 / rows.shape[0]
    for k in range(M):
        mean[k] = X[r0, k] + scat[0, k] * inv
        scat[0, k] = 0.0
    d = np.empty(M)
    for r in rows:
        for k in range(M):
            d[k] = X[r, k] - mean[k]
        for i in range(M):
            for k in range(i, M):
                scat[i, k] += d[i] * d[k]
    for i in range(M):
        for k in range(i + 1, M):
            scat[k, i] = scat[i, k]


@njit(cache=True, nogil=True)
def group_add(tn, tmean, tscat, g, X, rows):
    """Add the points X[rows] to group g (batch moments, then Chan's update)."""
    if rows.shape[0] == 0:
        return
    M = X.shape[1]
    mb = np.empty(M)
    Cb = np.empty((M, M))
    _rows_moments(X, rows, mb, Cb)
    _chan(tn, tmean, tscat, g, rows.shape[0], mb, Cb, np.empty(M))


@njit(cache=True, nogil=True)
def group_remove(tn, tmean, tscat, g, X, rows):
    """Remove the points X[rows] (members of group g) from it (Chan's update inverted)."""
    if rows.shape[0] == 0:
        return
    M = X.shape[1]
    mb = np.empty(M)
    Cb = np.empty((M, M))
    _rows_moments(X, rows, mb, Cb)
    _chan_remove(tn, tmean, tscat, g, rows.shape[0], mb, Cb, np.empty(M))


@njit(cache=True, nogil=True)
def move_points(Xg, idx, gid, group_of, tn, tmean, tscat):
    """Move the points idx[k] (rows Xg[k]) whose new group gid[k] differs from group_of[idx[k]].

    Deterministic order: every source group loses its leavers in one batch
    (groups by increasing id, points in the order of idx), then every target
    group gains its arrivals likewise.  Returns the number of moved points.
    """
    K = idx.shape[0]
    moved = np.empty(K, dtype=np.int64)
    nm = 0
    for k in range(K):
        if gid[k] != group_of[idx[k]]:
            moved[nm] = k
            nm += 1
    moved = moved[:nm]
    if nm == 0:
        return 0
    for phase in range(2):
        key = np.empty(nm, dtype=np.int64)
        for q in range(nm):
            key[q] = group_of[idx[moved[q]]] if phase == 0 else gid[moved[q]]
        order = np.argsort(key, kind="mergesort")  # stable: idx order inside a group
        a = 0
        while a < nm:
            g = key[order[a]]
            e = a
            while e < nm and key[order[e]] == g:
                e += 1
            rows = np.empty(e - a, dtype=np.int64)
            for q in range(a, e):
                rows[q - a] = moved[order[q]]
            if phase == 0:
                group_remove(tn, tmean, tscat, g, Xg, rows)
            else:
                group_add(tn, tmean, tscat, g, Xg, rows)
            a = e
    for q in range(nm):
        group_of[idx[moved[q]]] = gid[moved[q]]
    return nm


# ------------------------------------------------------------- buckets ---

@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def risk_scan(A, C0, shrink, starts, bmin, bmax, rhomax, idx, m, rho, gen_of, gen_id):
    """Points of one generation that the bound cannot prove safe.

    Entry s is safe when ``A ρ_s + C0 < m_s · shrink``.  Buckets come in
    increasing m; the scan stops at the first bucket whose smallest margin
    beats the bound for the generation's largest ρ (every later bucket is then
    safe), skips buckets safe for their own largest ρ, and tests the entries
    of the others one by one.  Tombstones (entries whose point moved to
    another generation, gen_of ≠ gen_id) are skipped.
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
    return out[:no]


@njit(cache=True, nogil=True)
def live_entries(idx, gen_of, gen_id):
    """Point ids of the live entries of a generation, in entry order."""
    out = np.empty(idx.shape[0], dtype=np.int64)
    no = 0
    for s in range(idx.shape[0]):
        if gen_of[idx[s]] == gen_id:
            out[no] = idx[s]
            no += 1
    return out[:no]


@njit(cache=True, nogil=True)
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


# ------------------------------------------------------------ assembly ---

@njit(cache=True, nogil=True)
def _group_terms(R, b, T, code, lab, nf, mu, C, gb, Gacc, hh, Vb, Tb, Fv, A, A2, W, Gam, RG, K,
                 z, r, g):
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


@njit(cache=True, nogil=True)
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
    K = np.empty((M, M))
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
                                     pgb[s], pG[s], hh, Vb, Tb, Fv, A, A2, W, Gam, RG, K, z, r, g)


@njit(cache=True, nogil=True)
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
