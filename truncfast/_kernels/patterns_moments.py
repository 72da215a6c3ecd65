"""Moments of the pattern groups updated in place: merge, add, remove, move (docs/theory.md §11).

Each group keeps count n, mean μ and centred scatter C = Σ (x − μ)(x − μ)ᵀ.
Two sets combine by Chan's pairwise update (n = n_a + n_b, δ = μ_b − μ_a,
μ = μ_a + δ n_b/n, C = C_a + C_b + δδᵀ n_a n_b/n) and are separated by its
inverse; moving re-checked points between groups is a removal and an
addition.  Arrays in, arrays out (Numba), in a fixed order of points.
"""

from __future__ import annotations

import numpy as np
from truncfast._kernels.numba_cache import jit

__all__ = ["merge_moments", "remap_range", "group_add", "group_remove", "move_points"]


@jit
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


@jit
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


@jit
def merge_moments(tn, tmean, tscat, gid, ln, lmean, lscat):
    """Fold the local groups j = 0, 1, … (in this order) into the global groups gid[j]."""
    d = np.empty(tmean.shape[1])
    for j in range(gid.shape[0]):
        _chan(tn, tmean, tscat, gid[j], ln[j], lmean[j], lscat[j], d)


@jit
def remap_range(group_of, gid, loff, c_first, c_last, chunk, c0):
    """Chunk-local group ids → global ids for the rows of chunks c_first..c_last-1."""
    N = group_of.shape[0]
    for c in range(c_first, c_last):
        o = loff[c - c0]
        for n in range(c * chunk, min(N, (c + 1) * chunk)):
            group_of[n] = gid[o + group_of[n]]


@jit
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


@jit
def group_add(tn, tmean, tscat, g, X, rows):
    """Add the points X[rows] to group g (batch moments, then Chan's update)."""
    if rows.shape[0] == 0:
        return
    M = X.shape[1]
    mb = np.empty(M)
    Cb = np.empty((M, M))
    _rows_moments(X, rows, mb, Cb)
    _chan(tn, tmean, tscat, g, rows.shape[0], mb, Cb, np.empty(M))


@jit
def group_remove(tn, tmean, tscat, g, X, rows):
    """Remove the points X[rows] (members of group g) from it (Chan's update inverted)."""
    if rows.shape[0] == 0:
        return
    M = X.shape[1]
    mb = np.empty(M)
    Cb = np.empty((M, M))
    _rows_moments(X, rows, mb, Cb)
    _chan_remove(tn, tmean, tscat, g, rows.shape[0], mb, Cb, np.empty(M))


@jit
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
