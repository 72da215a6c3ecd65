"""Generations of the at-risk search (docs/theory.md §11): entries sorted by slot, then by margin bucket.

A *generation* holds the points last checked at one reference state (R, b):
per point an entry (index int32, margin m float32 rounded down, ρ float32
rounded up, δ float32 rounded up).  A *slot* is one group present in the
generation, with a centre c — the group's mean when the generation was made —
and δ = |x − c| is the point's distance to its slot's centre, the quantity the
pattern-affine bound multiplies by ‖K(θ) − K(θᶜ)‖ (``pattern_state``).
Entries are sorted by slot and, inside a slot, stably by *margin bucket*: the
float32 bits of m shifted right by ``BUCKET_SHIFT`` (8 exponent bits and the
top 3 mantissa bits: 8 buckets per octave, monotone in m); per bucket the
smallest m and the largest ρ and δ, per slot the largest ρ and δ.  A
generation with more than ``_config.PATTERN_CENTRED_MAX_SLOTS`` groups is
*plain*: one slot, no centre, δ = 0 (the Lipschitz bound in ρ alone).

The bucket sort is a stable counting sort over pieces of whole chunks
(parallel, thread-count independent), the slot sort a sequential stable
counting sort: O(K + slots + buckets) for K entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from truncfast import _config
from truncfast._kernels import parallel
from truncfast._kernels.numba_cache import jit

__all__ = ["NBUCKETS", "BUCKET_SHIFT", "Generation", "make_generation", "live_entries", "compact",
           "chunk_pieces"]

#: Margin buckets: the float32 bits of m shifted right by this.
BUCKET_SHIFT = 20
NBUCKETS = 1 << (31 - BUCKET_SHIFT)


@dataclass
class Generation:
    """Points last checked at the reference state (R, b), sorted by slot and margin bucket."""

    gid: int
    R: np.ndarray
    b: np.ndarray
    idx: np.ndarray
    m: np.ndarray
    rho: np.ndarray
    d: np.ndarray
    centred: bool
    slot_gid: np.ndarray                 # (S,) group id of each slot (centred only)
    centres: np.ndarray                  # (S, M) slot centres (centred only)
    keys: np.ndarray                     # (S, L) the slots' patterns (centred only)
    live: int
    nu: float = 1.0
    bnorm: float = 0.0
    rhomax: float = 0.0
    summary: tuple = field(default_factory=tuple)  # (starts, bmin, bmaxr, bmaxd, slot_b, srho, sd)


# --------------------------------------------------------------- kernels ---

@jit
def _up32(x):
    """A float32 ≥ x ≥ 0 (x (1 + 2⁻²²) lies more than half a float32 ulp above x)."""
    f = np.float32(x * (1.0 + 2.0 ** -22))
    return f if np.float64(f) >= x else np.float32(np.inf)


@jit
def delta_range(X, ids, gids, slot_of, centres, lo, hi, d32):
    """d32[k] ≥ |X[ids[k] or k] − centres[slot_of[gids[k]]]| for entries lo..hi-1 (float32, rounded up).

    The float64 distance is off by ≤ (M + 4) u relative; the factor 1 + 10⁻¹²
    covers it for M ≤ 64 before rounding up to float32.
    """
    M = X.shape[1]
    ident = ids.shape[0] == 0
    for k in range(lo, hi):
        row = k if ident else ids[k]
        c = slot_of[gids[k]]
        s = 0.0
        for i in range(M):
            t = X[row, i] - centres[c, i]
            s += t * t
        d32[k] = _up32(np.sqrt(s) * (1.0 + 1e-12))


@jit
def _hist_range(mbits, lo, hi, hist):
    for n in range(lo, hi):
        hist[mbits[n] >> BUCKET_SHIFT] += 1


@jit
def _scatter_range(mbits, m, rho, d, slot, ids, lo, hi, pos, oi, om, orho, od, oslot):
    """Stable counting-sort scatter by bucket of entries lo..hi-1 (point id ids[n], or n when ids is empty)."""
    ident = ids.shape[0] == 0
    for n in range(lo, hi):
        j = pos[mbits[n] >> BUCKET_SHIFT]
        pos[mbits[n] >> BUCKET_SHIFT] = j + 1
        oi[j] = n if ident else ids[n]
        om[j] = m[n]
        orho[j] = rho[n]
        od[j] = d[n]
        oslot[j] = slot[n]


@jit
def _key_range(X, gids, slot_of, centres, centred, mbits, lo, hi, hist, d32, keys):
    """Entries lo..hi-1: δ (when ``centred``) and the sort key slot·NBUCKETS + bucket, counted in ``hist``."""
    M = X.shape[1]
    for k in range(lo, hi):
        s = slot_of[gids[k]] if centred else 0
        if centred:
            acc = 0.0
            for i in range(M):
                t = X[k, i] - centres[s, i]
                acc += t * t
            d32[k] = _up32(np.sqrt(acc) * (1.0 + 1e-12))
        key = s * NBUCKETS + (mbits[k] >> BUCKET_SHIFT)
        keys[k] = key
        hist[key] += 1


@jit
def _scatter_keys(keys, m, rho, d, ids, lo, hi, pos, oi, om, orho, od):
    """Stable counting-sort scatter by key of entries lo..hi-1 (point id ids[n], or n when ids is empty)."""
    ident = ids.shape[0] == 0
    for n in range(lo, hi):
        j = pos[keys[n]]
        pos[keys[n]] = j + 1
        oi[j] = n if ident else ids[n]
        om[j] = m[n]
        orho[j] = rho[n]
        od[j] = d[n]


@jit
def _sort_by_slot(S, idx, m, rho, d, slot):
    """Stable counting sort of the (bucket-sorted) entries by slot; returns the sorted arrays and slot starts."""
    K = idx.shape[0]
    cnt = np.zeros(S + 1, np.int64)
    for k in range(K):
        cnt[slot[k] + 1] += 1
    for s in range(S):
        cnt[s + 1] += cnt[s]
    start = cnt.copy()
    oi, om, orho, od = np.empty_like(idx), np.empty_like(m), np.empty_like(rho), np.empty_like(d)
    for k in range(K):
        j = cnt[slot[k]]
        cnt[slot[k]] = j + 1
        oi[j] = idx[k]
        om[j] = m[k]
        orho[j] = rho[k]
        od[j] = d[k]
    return oi, om, orho, od, start


@jit
def summarise(m, rho, d, sstart):
    """Buckets of the slot- and bucket-sorted entries: (starts, bmin, bmaxr, bmaxd, slot_b, srho, sd).

    Bucket q covers entries starts[q]..starts[q+1]-1 (never across a slot),
    slot s the buckets slot_b[s]..slot_b[s+1]-1; srho / sd are the slots' largest ρ / δ.
    """
    K = m.shape[0]
    S = sstart.shape[0] - 1
    mbits = m.view(np.uint32)
    starts = np.empty(K + 1, np.int64)
    bmin, bmaxr, bmaxd = np.empty(K), np.empty(K), np.empty(K)
    slot_b = np.empty(S + 1, np.int64)
    srho, sd = np.zeros(S), np.zeros(S)
    nb = 0
    for s in range(S):
        slot_b[s] = nb
        prev = np.uint32(0xFFFFFFFF)
        for k in range(sstart[s], sstart[s + 1]):
            q = mbits[k] >> BUCKET_SHIFT
            r = np.float64(rho[k])
            dd = np.float64(d[k])
            if k == sstart[s] or q != prev:
                starts[nb] = k
                bmin[nb] = np.float64(m[k])
                bmaxr[nb] = r
                bmaxd[nb] = dd
                nb += 1
                prev = q
            else:
                bmin[nb - 1] = min(bmin[nb - 1], np.float64(m[k]))
                bmaxr[nb - 1] = max(bmaxr[nb - 1], r)
                bmaxd[nb - 1] = max(bmaxd[nb - 1], dd)
            srho[s] = max(srho[s], r)
            sd[s] = max(sd[s], dd)
    slot_b[S] = nb
    starts[nb] = K
    return starts[:nb + 1].copy(), bmin[:nb].copy(), bmaxr[:nb].copy(), bmaxd[:nb].copy(), slot_b, srho, sd


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
def _compact(idx, m, rho, d, gen_of, gen_id, sstart_old, S):
    """The live entries (order kept: still slot- and bucket-sorted) and the new slot starts."""
    K = idx.shape[0]
    n = 0
    for s in range(K):
        n += gen_of[idx[s]] == gen_id
    oi, om = np.empty(n, dtype=idx.dtype), np.empty(n, dtype=m.dtype)
    orho, od = np.empty(n, dtype=rho.dtype), np.empty(n, dtype=d.dtype)
    sstart = np.zeros(S + 1, np.int64)
    j = 0
    for s in range(S):
        sstart[s] = j
        for k in range(sstart_old[s], sstart_old[s + 1]):
            if gen_of[idx[k]] == gen_id:
                oi[j], om[j], orho[j], od[j] = idx[k], m[k], rho[k], d[k]
                j += 1
    sstart[S] = j
    return oi, om, orho, od, sstart


# ------------------------------------------------------------ building ---

def chunk_pieces(nchunks: int, chunk: int, N: int) -> np.ndarray:
    """Row bounds of contiguous pieces of whole chunks (enough to feed the pool)."""
    pieces = max(1, min(nchunks, 4 * parallel.get_num_threads()))
    cb = [(nchunks * i) // pieces for i in range(pieces + 1)]
    return np.array([min(N, c * chunk) for c in cb], dtype=np.int64)


def _slot_starts(summary) -> np.ndarray:
    starts, slot_b = summary[0], summary[4]
    return starts[slot_b]


def make_generation(st, R, b, m32, rho32, ids, Xrows, chunk: int, gen_id: int, nu: float, bnorm: float) -> Generation:
    """A generation at (R, b) of the entries (ids[k] or k, m32[k], rho32[k]); ``Xrows[k]`` is the point's row.

    Slots are the groups ``st.group_of`` gives the entries now (after any moves).
    """
    K = m32.shape[0]
    gids = st.group_of if ids.shape[0] == 0 else st.group_of[ids]
    present = np.flatnonzero(np.bincount(gids, minlength=st.G)) if K else np.zeros(0, np.int64)
    centred = 0 < present.size <= _config.PATTERN_CENTRED_MAX_SLOTS
    S = present.size if centred else 1
    slot_of = np.zeros(max(st.G, 1), np.int32)
    bounds = chunk_pieces(max(1, (K + chunk - 1) // chunk), chunk, K)
    P = bounds.shape[0] - 1
    d32 = np.zeros(K, np.float32)
    mbits = m32.view(np.uint32)
    idx, m, rho, d = np.empty(K, np.int32), np.empty(K, np.float32), np.empty(K, np.float32), np.empty(K, np.float32)
    if centred:
        slot_of[present] = np.arange(S, dtype=np.int32)
        centres = st.tmean[present].copy()
    else:
        centres = np.zeros((1, st.M))
    if S * NBUCKETS <= _config.PATTERN_SORT_KEYS_MAX:
        # one stable counting sort on (slot, bucket), fused with the distances to the centres
        keys = np.empty(K, np.int32)  # < PATTERN_SORT_KEYS_MAX
        hist = np.zeros((P, S * NBUCKETS), np.int64)
        parallel.run_ranges(lambda a, c, _: [_key_range(Xrows, gids, slot_of, centres, centred, mbits, bounds[r],
                                                        bounds[r + 1], hist[r], d32, keys) for r in range(a, c)], 0, P)
        total = hist.sum(axis=0)
        first = np.concatenate(([0], np.cumsum(total)[:-1]))
        pos = first[None, :] + np.cumsum(hist, axis=0) - hist
        parallel.run_ranges(lambda a, c, _: [_scatter_keys(keys, m32, rho32, d32, ids, bounds[r], bounds[r + 1],
                                                            pos[r], idx, m, rho, d) for r in range(a, c)], 0, P)
        sstart = np.append(first[::NBUCKETS], K).astype(np.int64)
    else:
        if centred:
            def dist(a, c, _):
                for r in range(a, c):
                    delta_range(Xrows, np.empty(0, np.int64), gids, slot_of, centres, bounds[r], bounds[r + 1], d32)

            parallel.run_ranges(dist, 0, P)
            slot = slot_of[gids]
        else:
            slot = np.zeros(K, np.int32)
        hist = np.zeros((P, NBUCKETS), np.int64)
        parallel.run_ranges(lambda a, c, _: [_hist_range(mbits, bounds[r], bounds[r + 1], hist[r])
                                             for r in range(a, c)], 0, P)
        total = hist.sum(axis=0)
        pos = np.concatenate(([0], np.cumsum(total)[:-1]))[None, :] + np.cumsum(hist, axis=0) - hist
        oslot = np.empty(K, np.int32)
        parallel.run_ranges(lambda a, c, _: [_scatter_range(mbits, m32, rho32, d32, slot, ids, bounds[r],
                                                             bounds[r + 1], pos[r], idx, m, rho, d, oslot)
                                             for r in range(a, c)], 0, P)
        idx, m, rho, d, sstart = _sort_by_slot(S, idx, m, rho, d, oslot)
    if not centred:
        centres = np.zeros((0, st.M))
    summary = summarise(m, rho, d, sstart)
    return Generation(gen_id, R.copy(), b.copy(), idx, m, rho, d, centred,
                      present.astype(np.int64) if centred else np.zeros(0, np.int64), centres,
                      st.keys[present].copy() if centred else np.zeros((0, st.L), np.uint64), K, nu, bnorm,
                      float(summary[5].max()) if S and K else 0.0, summary)


def compact(g: Generation, gen_of: np.ndarray) -> None:
    """Drop the tombstones of generation ``g`` (entries whose point moved to a newer generation)."""
    S = g.summary[4].shape[0] - 1
    g.idx, g.m, g.rho, g.d, sstart = _compact(g.idx, g.m, g.rho, g.d, gen_of, g.gid, _slot_starts(g.summary), S)
    g.summary = summarise(g.m, g.rho, g.d, sstart)
    g.rhomax = float(g.summary[5].max()) if S and g.idx.size else 0.0
