"""Numba kernels of the pattern form (docs/theory.md §11): the full pass, the group table, moves.

Arrays and scalars in, arrays out; no validation (``pattern_state`` calls them
on validated, C-contiguous float64 / int64 arrays).  The design is described
in :mod:`truncfast._kernels.pattern_state`; the assembly is in
``patterns_assembly``, the margin buckets and the at-risk scan in
``patterns_risk``.

* **Full pass** (``pass_range`` then ``local_moments_range``): for every point
  its pattern (L uint64 sector codes, from the per-point forward kernel
  ``numba_kernels._forward_block``, so the codes have the bits of
  ``tf.sector_codes``), its margin ``m = min_{ℓ,i} |u_ℓ,i|`` stored as float32
  rounded *down*, and ``ρ = max(|x|, |t_1|, …, |t_{L-1}|)`` stored as float32
  rounded *up* (|t_ℓ| = |z_ℓ| for orthogonal R).  Each chunk of
  ``_config.CHUNK_SIZE`` points numbers its distinct (pattern, label) keys in
  order of first appearance (a per-chunk hash table) and computes their count,
  mean and centred scatter with the two-pass algorithm.  ``lookup_keys`` /
  ``insert_new`` / ``patterns_moments.merge_moments`` then fold the chunk groups into the global
  groups **in chunk order** (Chan's pairwise update), so global ids are the
  order of first appearance in row order and every moment has the same bits
  for any thread count.
* **Moves** (``patterns_moments``: ``group_add`` / ``group_remove`` / ``move_points``): a batch of
  points enters or leaves a group through Chan's update and its inverse
  (single points: Welford's).  Removal subtracts, so the scatter of a group
  that lost most of its spread keeps an absolute error of order
  ``u · ‖C_before‖`` (u = 2⁻⁵³): the drift is relative to the largest scatter
  the group had, not to the current one (measured in tests/test_patterns.py).
"""

from __future__ import annotations

import numpy as np

from truncfast._kernels.numba_kernels import _forward_block, _forward_scratch
from truncfast._kernels.numba_cache import jit

__all__ = [
    "pass_range", "stats_range", "flatten_locals", "local_moments_range", "lookup_keys", "insert_new",
    "rehash",
]

_F32_MIN_NORMAL = 1.1754943508222875e-38
_F32_MAX = 3.4028234663852886e38
_RHO_FLOOR = 2.0 ** -120


# ------------------------------------------------------------ rounding ---

@jit(inline="always")
def _down32(x):
    """A float32 ≤ x (x ≥ 0): the nearest one, or the next one below it.

    Both candidates are formed and one is selected (no branch: the nearest
    rounds up about half the time, and a mispredicted branch per point cost
    more than the rest of the statistics).  x (1 − 2⁻²²) lies more than half a
    float32 ulp below x, so its nearest float32 is < x.
    """
    f = np.float32(x)
    below = np.float32(x * (1.0 - 2.0 ** -22))
    r = below if np.float64(f) > x else f
    r = np.float32(0.0) if x < _F32_MIN_NORMAL else r
    return np.float32(_F32_MAX) if x >= _F32_MAX else r


@jit(inline="always")
def _up32(x):
    """A float32 ≥ x (x ≥ 0), possibly +inf (selects, as :func:`_down32`)."""
    f = np.float32(x)
    above = np.float32(x * (1.0 + 2.0 ** -22))
    r = above if np.float64(f) < x else f
    return np.float32(_RHO_FLOOR) if x < _RHO_FLOOR else r


# ------------------------------------------------------------- hashing ---

@jit(inline="always")
def _hash(keys, row, lab):
    h = np.uint64(lab) * np.uint64(0x9E3779B97F4A7C15)
    for l in range(keys.shape[1]):
        h = (h ^ keys[row, l]) * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(31))
    return h


@jit(inline="always")
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


@jit
def rehash(hslots, keys, labs, G):
    """Rebuild the table ``hslots`` (a power of two > 2 G) for ids 0..G-1."""
    hslots[:] = -1
    for g in range(G):
        f = _find(hslots, keys, labs, keys, g, labs[g])
        hslots[-1 - f] = g


# ----------------------------------------------------------- full pass ---

@jit
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


@jit
def _stats_scratch(L, M, block):
    return (np.empty(block, dtype=np.uint64), np.empty(block), np.empty(block),
            np.empty((block, L), dtype=np.uint64))


@jit
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


@jit
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


@jit
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


@jit
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


@jit
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


@jit
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


# the kernels link numba_kernels' forward pass and freeze _config's constants into
# their cached code: key their cache on those files too (see numba_cache)
def _stamp() -> None:
    from truncfast import _config
    from truncfast._kernels import numba_cache, numba_kernels

    kernels = [v for v in globals().values() if hasattr(v, "py_func") and hasattr(v, "_cache")]
    numba_cache.stamp(kernels, [numba_kernels, _config])


_stamp()
