"""Pattern groups kept across steps: the exact pattern form of docs/theory.md §11.

A *group* is the set of points with the same pattern (the L sector codes along
the composition) and the same label; it keeps its count n, mean μ and centred
scatter C.  From the groups, the loss and the gradient of the general flow are
exact (§11, :func:`assemble`); a point's group changes only when one of its
pre-activations changes sign, which the bound of §11 excludes for every point
whose margin exceeds it (:func:`at_risk`); only the others get a new forward
pass (:func:`recheck`).

Interface (arrays in, a :class:`PatternState` out; no validation here — the
evaluator validates once)::

    st = full_pass(R, b, X, labels, Q)          # or None beyond max_groups
    idx = at_risk(st, R, b)                     # sorted int64 point indices
    recheck(st, idx, R, b, X, labels)           # moves points, updates moments
    loss, grad_b, omega = assemble(st, R, b, targets)
    counts(st)                                  # (L, Q, 3) like Trajectory.counts

Group ids are the order of first appearance in row order (deterministic); the
arrays ``st.patterns`` (G, L) uint64, ``st.label`` (G,), ``st.n`` (G,) int64,
``st.mean`` (G, M), ``st.scatter`` (G, M, M) and ``st.group_of`` (N,) int32
are views of the live part.  Groups emptied by moves stay (n = 0) until the next
full pass; the assembly skips them.

**The Lipschitz bound of §11 (a proof, rounding included; for *plain*
generations, those with many groups).**  A point checked at a state θᶜ
(exact pre-activations uᶜ_ℓ) keeps its pattern at θ when
``|u_ℓ − uᶜ_ℓ|_∞ < |uᶜ_ℓ,i|`` for every ℓ, i.  With ε = max ‖R_ℓ − Rᶜ_ℓ‖₂
(≤ the Frobenius norm), β = max |b_ℓ − bᶜ_ℓ|, ν ≥ ‖R_ℓ‖₂, ‖Rᶜ_ℓ‖₂ and
ρ_th ≥ max(|zᶜ_ℓ|, |tᶜ_ℓ|) over ℓ < L, the recursion of §11 written without
the (1 − ε) factor (|z_ℓ − zᶜ_ℓ| ≤ ν |t_ℓ − tᶜ_ℓ| + ε |tᶜ_ℓ|, since
z = Rᵀ t; |t − tᶜ| ≤ |v − vᶜ| + |b − bᶜ| because max is 1-Lipschitz in each
argument) gives

    max_ℓ |u_ℓ − uᶜ_ℓ|_∞ ≤ d = ν^{2L} ((1 + (L − 1)(ν + 1)) ε ρ_th + L β)

(d_1 ≤ ε |x| + β, d_{ℓ+1} ≤ ν² d_ℓ + (ν + 1) ε ρ_th + β; for ν = 1 this is
(2L − 1) ε ρ + L β, exact for L = 1 and below the L (2 ε ρ + β) of §11).

The kernels compute in floating point; the codes compared are those of the
*computed* ũ (the bits of ``tf.sector_codes``).  Since fl(ṽ + b) has the sign
of ṽ + b, only the error of ṽ counts; for the transfer-form forward pass
(sequential dot products, no FMA) it is at most
``3 L (M + 2)² u ν^{2L+2} (S + B)`` per state (u = 2⁻⁵³; S the largest |x|,
|t̃_ℓ| of the point — |ṽ_ℓ| ≤ 1.01 ν² S is folded into the power of ν —,
B = max |b_ℓ|; each layer adds γ_M ‖S̃_ℓ‖_F |t̃| for the product, γ_M M |t̃|
for the rounding of S̃_ℓ = fl(R_{ℓ+1} R_ℓᵀ), 2u (|ṽ| + |b|) for t̃ = fl(fl(ṽ + b) − b),
and propagates the error before it with factor ν²).  With the stored ρ (the computed
max(|x|, |t̃_ℓ|), rounded up to float32) and c = 32 L (M + 2)² u ν^{2L+2}
(covering both states' errors and the exact-vs-computed ρ with a factor 2 to
spare), a point is *safe* when

    d(ρ') + c (ρ' + B) < m · (1 − 10⁻¹⁵),   ρ' = ν (1 + c) ρ + ν c B,

m its stored margin (the computed min |ũᶜ|, rounded down to float32).  This is
affine in ρ: ``A ρ + C0 < m·(1 − 10⁻¹⁵)``, with A and C0 computed per reference
state and rounded up (:func:`bound_coefficients`).  ν comes from the Gram
defect, ‖R‖₂² ≤ 1 + ‖RᵀR − I‖_F; ε, β, B from norms inflated by 10⁻¹¹ for
their rounding.  When ε ≥ ½ nothing is claimed: every point is at risk.  A
point with m = 0 (an exact zero pre-activation) is never safe.

**The pattern-affine bound (a proof, rounding included; used whenever a
generation has at most ``_config.PATTERN_CENTRED_MAX_SLOTS`` groups).**  Inside
a pattern h the forward pass is affine: u_ℓ = K_ℓ(θ) x + k_ℓ(θ) with
K_ℓ = R_ℓ P_{ℓ−1} ⋯ P_1, P_j = R_jᵀ diag(h_j) R_j (§11; exact for any R, it is the
kernels' formula).  For any fixed point c (the group's mean when the generation
was made) and δ = |x − c|,

    u_ℓ(θ) − u_ℓ(θᶜ) = (K_ℓ(θ) − K_ℓ(θᶜ)) (x − c) + [U_ℓ(c; θ) − U_ℓ(c; θᶜ)],

U the pattern-h affine pre-activations evaluated at c (whatever c's own
pattern).  By induction over the layers — layer 1 is affine always; if layers
< ℓ keep h at θ then u_ℓ(θ) is the pattern-h expression — a point keeps its
pattern when κ δ + Δ < margin for κ = (2L − 1) ν^{2L−2} ε ≥ ‖ΔK_ℓ‖₂ and
Δ = max_ℓ |ΔU_ℓ(c)|_∞.  With the rounding of both computed passes of the point
(Ar ρ + Cp, the c(ρ' + B) above) and of c (Ar ρ_c + Cp), the test is

    κ δ + Ar ρ + C_slot < m · (1 − 10⁻¹⁵),   C_slot = Δ (1 + 10⁻¹²) + Ar ρ_c + 2 Cp

(``patterns_risk.slot_constants``).  It moves with the group's own motion
(δ ≈ the group's spread) instead of ε |x| (docs/theory.md §11 for a measurement).
The four computed passes involved (point and centre, both states) each err by
≤ 0.094 c (S + B); with |z(θ)| ≤ ν^{2L} δ + ρ_c and δ ≤ ρ + ρ_c the charged
``Ar ρ + Ar ρ_c + 3 Cp`` covers them with a factor > 2.5 to spare.

**At-risk search without an O(N) scan.**  Points are kept in *generations*
(``patterns_generations``): the points last checked at the same state (one
after a full pass; each :func:`recheck` opens a new one at its state), with
per point an entry (index int32, m float32, ρ float32, δ float32), sorted by
slot (group) and inside a slot by *margin bucket* (float32 bits of m >> 20,
8 buckets per octave; stable counting sorts, thread-count independent), with
per bucket the smallest m and the largest ρ and δ.  The scan
(``patterns_risk.risk_scan``) walks each slot's buckets upwards, stops at the
first whose smallest m beats the slot's bound for its largest δ and ρ, skips
buckets safe for their own largest δ and ρ, and tests entries only in the
others: an evaluation at which nothing is at risk costs O(generations · slots ·
L M²) — independent of N.  A point rechecked moves to the new generation; its
old entry becomes a tombstone (``gen_of[p]`` no longer names that generation).
A generation with fewer live entries than ``_config.PATTERN_COMPACT_FRACTION`` of its entries
is compacted (O(its size)); beyond ``_config.PATTERN_GENERATIONS_MAX`` generations the
smallest are re-checked at the current state and folded into the new one.

Memory per point: group_of int32 + gen_of int32 + one live entry
(int32 + 3 float32) = 24 bytes, plus tombstones until compaction and the
groups (8 (L + M² + M + 2) bytes each).

Determinism: the full pass sums chunks of ``_config.CHUNK_SIZE`` points and
merges them in chunk order; rechecks process points in index order and groups
in id order; the assembly sums fixed blocks of ``_config.PATTERN_ASSEMBLY_BLOCK`` groups and
adds the block sums in order.  Same bits for any thread count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the only imports from the flat modules (re-point them after the move)
from truncfast import _config
from truncfast._kernels import parallel as _parallel
from truncfast._kernels import patterns as _k
from truncfast._kernels import patterns_moments as _m
from truncfast._kernels import patterns_assembly as _a
from truncfast._kernels import patterns_generations as _g
from truncfast._kernels import patterns_risk as _r
from truncfast._kernels.numba_kernels import add_slots, transfer_matrices

__all__ = ["PatternState", "full_pass", "at_risk", "recheck", "assemble", "counts", "bound_coefficients",
           "margins"]

_SHRINK = 1.0 - 1e-15


@dataclass
class PatternState:
    """Groups (pattern, label) → (n, mean, scatter) and the per-point data of the bound.

    Per point: ``group_of`` (N,) int32 and ``gen_of`` (N,) int32, the id of the
    generation holding its live (index, margin, ρ) entry.  Groups: capacity
    arrays ``keys`` (cap, L) uint64, ``labs``, ``tn`` (counts), ``tmean``,
    ``tscat``, of which the first ``G`` are in use (views: ``patterns``,
    ``label``, ``n``, ``mean``, ``scatter``), and the open-addressing table
    ``hslots`` from (pattern, label) to id.  ``gens``: the generations, oldest
    first; ``refs``: their reference states stacked for :func:`at_risk`.
    ``stats``: counters for ``engine_stats``.  Not thread-safe: one evaluator
    owns a state.
    """

    N: int
    M: int
    L: int
    Q: int
    group_of: np.ndarray
    gen_of: np.ndarray
    G: int
    keys: np.ndarray
    labs: np.ndarray
    tn: np.ndarray
    tmean: np.ndarray
    tscat: np.ndarray
    hslots: np.ndarray
    gens: list = field(default_factory=list)
    refs: tuple = ()
    next_gen: int = 0
    stats: dict = field(default_factory=lambda: {"full_passes": 0, "rechecked_points": 0, "moved_points": 0,
                                                  "folded_points": 0, "compactions": 0})

    @property
    def patterns(self) -> np.ndarray:
        return self.keys[:self.G]

    @property
    def label(self) -> np.ndarray:
        return self.labs[:self.G]

    @property
    def n(self) -> np.ndarray:
        return self.tn[:self.G]

    @property
    def mean(self) -> np.ndarray:
        return self.tmean[:self.G]

    @property
    def scatter(self) -> np.ndarray:
        return self.tscat[:self.G]

    @property
    def num_groups(self) -> int:
        """Non-empty groups."""
        return int(np.count_nonzero(self.tn[:self.G]))

    def nbytes(self) -> int:
        per_point = self.group_of.nbytes + self.gen_of.nbytes
        entries = sum(g.idx.nbytes + g.m.nbytes + g.rho.nbytes + g.d.nbytes for g in self.gens)
        groups = sum(a.nbytes for a in (self.keys, self.labs, self.tn, self.tmean, self.tscat, self.hslots))
        return per_point + entries + groups


# ------------------------------------------------------------- helpers ---

def _pow2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def _empty_state(N, M, L, Q, cap=16) -> PatternState:
    st = PatternState(N, M, L, Q, np.empty(N, np.int32), np.zeros(N, np.int32), 0,
                      np.empty((cap, L), np.uint64), np.empty(cap, np.int64), np.zeros(cap, np.int64),
                      np.zeros((cap, M)), np.zeros((cap, M, M)), np.full(_pow2(2 * cap + 2), -1, np.int32))
    return st


def _reserve(st: PatternState, need: int) -> None:
    """Capacity for ``need`` groups (amortised doubling; the hash table stays < half full)."""
    cap = st.keys.shape[0]
    if need <= cap:
        return
    new = max(need, 2 * cap)
    for name in ("keys", "labs", "tn", "tmean", "tscat"):
        old = getattr(st, name)
        arr = np.zeros((new,) + old.shape[1:], dtype=old.dtype)
        arr[:st.G] = old[:st.G]
        setattr(st, name, arr)
    st.hslots = np.full(_pow2(2 * new + 2), -1, np.int32)
    _k.rehash(st.hslots, st.keys, st.labs, st.G)


def _insert(st: PatternState, keys: np.ndarray, labs: np.ndarray) -> tuple[np.ndarray, int]:
    """Global ids of the keys, inserting new ones; returns (gid, number of new groups)."""
    gid, nnew = _k.lookup_keys(st.hslots, st.keys, st.labs, st.G, keys, labs)
    if nnew:
        _reserve(st, st.G + nnew)
        st.G = _k.insert_new(st.hslots, st.keys, st.labs, st.tn, st.tmean, st.tscat, st.G, keys, labs, gid)
    return gid, nnew


def _norm_bound(R: np.ndarray) -> float:
    """ν ≥ max_ℓ ‖R_ℓ‖₂ (``patterns_risk.norm_bound``)."""
    return float(_r.norm_bound(R))


def bound_coefficients(L: int, M: int, nu: float, eps: float, beta: float, bnorm: float) -> tuple[float, float]:
    """(A, C0) of the sufficient test ``A ρ + C0 < m (1 − 10⁻¹⁵)`` (module docstring).

    (inf, inf) when ε ≥ ½ or an input is not finite: nothing is safe.
    """
    return _r.bound_coefficients(L, M, float(nu), float(eps), float(beta), float(bnorm),
                                 _config.PATTERN_ROUNDING_FACTOR)


# ----------------------------------------------------------- interface ---

def _c_kernels():
    from truncfast._kernels import patterns_c

    if not patterns_c.available():
        raise RuntimeError("the C core with the pattern kernels is not built")
    return patterns_c


def full_pass(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, Q: int, *,
              max_groups: int | None = None, backend: str = "numba") -> PatternState | None:
    """Groups, margins and ρ of every point at (R, b) (§11); None when more than ``max_groups`` groups.

    ``max_groups`` defaults to what fits in ``_config.PATTERN_MAX_GROUP_BYTES``.  Inputs:
    C-contiguous float64 R (L, M, M), b (L, M), X (N, M); int64 labels (N,).
    ``backend``: ``"numba"`` or ``"c"`` for the per-point phases (same bits);
    merging, buckets and moves are Numba kernels either way.
    """
    N, M = X.shape
    L = b.shape[0]
    if max_groups is None:
        max_groups = max(1, _config.PATTERN_MAX_GROUP_BYTES // (8 * (L + M * M + M + 2)))
    chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
    S = transfer_matrices(R)
    nchunks = (N + chunk - 1) // chunk
    threads = _parallel.get_num_threads()
    per_chunk = 8 * chunk * (L + 3 + M + M * M)
    batch = int(max(1, min(nchunks, max(threads, _config.PATTERN_LOCALS_BUDGET_BYTES // per_chunk))))
    st = _empty_state(N, M, L, Q)
    m32 = np.empty(N, np.float32)
    rho32 = np.empty(N, np.float32)
    lkeys = np.empty((batch, chunk, L), np.uint64)
    llab = np.empty((batch, chunk), np.int64)
    lcount = np.zeros(batch, np.int64)
    go = st.group_of
    for c0 in range(0, nchunks, batch):
        nb = min(batch, nchunks - c0)
        if backend == "c":
            _c_kernels().pass_chunks(R, b, X, labels, chunk, c0, c0 + nb, go, m32, rho32, lkeys, llab, lcount)
        else:
            _parallel.run_ranges(lambda a, c, _: _k.pass_range(R, S, b, X, labels, a, c, chunk, block, c0, go, m32,
                                                                rho32, lkeys, llab, lcount), c0, c0 + nb, split=4)
        if int(lcount[:nb].max()) > max_groups:
            return None
        loff = np.zeros(nb + 1, np.int64)
        np.cumsum(lcount[:nb], out=loff[1:])
        keys, labs = _k.flatten_locals(lkeys, llab, lcount, nb, loff)
        K = int(loff[nb])
        ln, lmean, lscat = np.empty(K, np.int64), np.empty((K, M)), np.empty((K, M, M))
        if backend == "c":
            _c_kernels().local_moments(X, go, chunk, c0, c0 + nb, loff, ln, lmean, lscat)
        else:
            _parallel.run_ranges(lambda a, c, _: _k.local_moments_range(X, go, a, c, chunk, c0, loff, ln, lmean,
                                                                         lscat), c0, c0 + nb, split=4)
        gid, nnew = _k.lookup_keys(st.hslots, st.keys, st.labs, st.G, keys, labs)
        if st.G + nnew > max_groups:
            return None
        _reserve(st, st.G + nnew)
        st.G = _k.insert_new(st.hslots, st.keys, st.labs, st.tn, st.tmean, st.tscat, st.G, keys, labs, gid)
        _m.merge_moments(st.tn, st.tmean, st.tscat, gid, ln, lmean, lscat)
        _parallel.run_ranges(lambda a, c, _: _m.remap_range(go, gid, loff, a, c, chunk, c0), c0, c0 + nb, split=4)
    gen = _new_generation(st, R, b, m32, rho32, np.empty(0, np.int64), X)
    st.gen_of[:] = gen.gid
    st.gens = [gen]
    _refresh_refs(st)
    st.stats["full_passes"] += 1
    return st


def _new_generation(st: PatternState, R, b, m32, rho32, ids, Xrows):
    gen = _g.make_generation(st, R, b, m32, rho32, ids, Xrows, _config.CHUNK_SIZE, st.next_gen, _norm_bound(R),
                             float(np.sqrt((b * b).sum(axis=1)).max()))
    st.next_gen += 1
    return gen


def _refresh_refs(st: PatternState) -> None:
    """Stack the generations' reference data for :func:`at_risk` (after any change of ``st.gens``)."""
    gens = st.gens
    st.refs = (np.array([g.R for g in gens]).reshape(len(gens), st.L, st.M, st.M),
               np.array([g.b for g in gens]).reshape(len(gens), st.L, st.M),
               np.array([g.nu for g in gens]), np.array([g.bnorm for g in gens]))


def at_risk(st: PatternState, R: np.ndarray, b: np.ndarray, *, limit: int | None = None) -> np.ndarray | None:
    """Sorted indices of the points whose pattern the bounds of §11 cannot certify at (R, b).

    Every other point provably has, at (R, b), the pattern of its group.  Cost
    when nothing is at risk: O(generations · slots · L M²), independent of N;
    otherwise O(at-risk candidates).  With ``limit``, returns None as soon as
    the re-check that would follow (these points, and the generations it would
    fold) exceeds ``limit`` points: the caller then does a full pass instead.
    """
    Rs, bs, nus, bns = st.refs
    ng = len(st.gens)
    if limit is not None:  # the limit covers the whole re-check that follows, folded points included
        limit -= sum(st.gens[i].live for i in _fold_plan(st))
        if limit < 0:
            return None
    A, C0, kap, Ar, Cp = (np.empty(ng) for _ in range(5))
    _r.reference_coefficients(R, b, Rs, bs, nus, bns, _config.PATTERN_ROUNDING_FACTOR, A, C0, kap, Ar, Cp)
    found = []
    left = -1 if limit is None else int(limit)
    nu_now = None
    for i, gen in enumerate(st.gens):
        if gen.centred:  # the pattern-affine bound, one constant (and κ) per slot
            S = gen.slot_gid.shape[0]
            C, Ad = np.empty(S), np.empty(S)
            exact = S * st.L * st.M ** 3 <= _config.PATTERN_EXACT_KAPPA_WORK
            if nu_now is None:
                nu_now = _norm_bound(R)
            _r.slot_constants(R, b, gen.R, gen.b, gen.centres, gen.keys, float(Ar[i]), float(Cp[i]),
                              max(nu_now, float(nus[i])), float(kap[i]), exact, C, Ad)
            Arho = float(Ar[i])
        else:  # the Lipschitz bound in ρ
            C, Ad, Arho = np.array([C0[i]]), np.zeros(1), float(A[i])
        f = _r.risk_scan(Ad, Arho, C, _SHRINK, *gen.summary, gen.idx, gen.m, gen.rho, gen.d, st.gen_of, gen.gid, left)
        if left >= 0:
            if f.size > left:
                return None
            left -= f.size
        if f.size:
            found.append(f)
    if not found:
        return np.empty(0, np.int64)
    out = np.concatenate(found)
    out.sort()
    return out


def _fold_plan(st: PatternState) -> list[int]:
    """Generations the next :func:`recheck` folds (re-checks) to stay within ``PATTERN_GENERATIONS_MAX``: the smallest."""
    extra = len(st.gens) + 1 - _config.PATTERN_GENERATIONS_MAX
    if extra <= 0:
        return []
    return sorted(range(len(st.gens)), key=lambda i: st.gens[i].live)[:extra]


def recheck(st: PatternState, idx: np.ndarray, R: np.ndarray, b: np.ndarray, X: np.ndarray,
            labels: np.ndarray, *, backend: str = "numba") -> int:
    """Forward pass of the points ``idx`` at (R, b): move those whose pattern changed, update the moments.

    The points (and, beyond ``_config.PATTERN_GENERATIONS_MAX``, the live points of the
    smallest older generations) form a new generation with reference (R, b).
    ``idx`` must hold distinct indices; returns the number of points that
    changed group.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size > 1 and not (idx[1:] > idx[:-1]).all():  # at_risk's output is sorted already
        idx = np.unique(idx)
    fold = _fold_plan(st)
    if fold:
        extra = [_g.live_entries(st.gens[i].idx, st.gen_of, st.gens[i].gid) for i in fold]
        st.stats["folded_points"] += int(sum(e.size for e in extra))
        idx = np.unique(np.concatenate([idx] + extra))
    K = idx.size
    if K == 0:
        return 0
    chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
    Xg = np.ascontiguousarray(X[idx], dtype=np.float64)
    labs = np.ascontiguousarray(labels[idx], dtype=np.int64)
    S = transfer_matrices(R)
    codes = np.empty((K, st.L), np.uint64)
    m32 = np.empty(K, np.float32)
    rho32 = np.empty(K, np.float32)
    nch = (K + chunk - 1) // chunk
    if backend == "c":
        _c_kernels().stats(R, b, Xg, chunk, codes, m32, rho32)
    else:
        _parallel.run_ranges(lambda a, c, _: _k.stats_range(R, S, b, Xg, a, c, chunk, block, codes, m32, rho32),
                             0, nch, split=4)
    gid, _ = _insert(st, codes, labs)
    moved = _m.move_points(Xg, idx, gid, st.group_of, st.tn, st.tmean, st.tscat)
    # leave the old generations (their entries become tombstones), open the new one
    cnt = np.bincount(st.gen_of[idx], minlength=st.next_gen)
    left = {g.gid: int(cnt[g.gid]) for g in st.gens}
    gen = _new_generation(st, R, b, m32, rho32, idx, Xg)
    st.gen_of[idx] = gen.gid
    kept = []
    for g in st.gens:
        g.live -= left.get(g.gid, 0)
        if g.live <= 0:
            continue
        if g.live < _config.PATTERN_COMPACT_FRACTION * g.idx.size:
            _g.compact(g, st.gen_of)
            st.stats["compactions"] += 1
        kept.append(g)
    st.gens = kept + [gen]
    _refresh_refs(st)
    st.stats["rechecked_points"] += K
    st.stats["moved_points"] += int(moved)
    return int(moved)


def assemble(st: PatternState, R: np.ndarray, b: np.ndarray, targets: np.ndarray, *,
             backend: str = "numba", counts: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """(loss, grad_b, omega) of the Euclidean loss from the groups (§11), as ``tf.gradient`` returns them.

    ``counts`` (capacity-sized int64, default ``st.tn``) replaces the groups'
    counts: groups given 0 are left out (the hybrid evaluation sums them per point).

    ``C_E = 1/(2N) Σ [n |ē|² + tr(A_L C A_Lᵀ)]``, ``grad_b = −1/N Σ n (1 − h_ℓ) ⊙ r̄_ℓ``,
    ``omega = P_A(G)/N`` with ``G_ℓ = Σ n ((h ⊙ r̄) v̄ᵀ − r̄ t̄ᵀ) + [D_ℓ, F_r C F_vᵀ]``.
    """
    L, M = st.L, st.M
    G = st.G
    blk = _config.PATTERN_ASSEMBLY_BLOCK
    N = st.N
    tn = st.tn if counts is None else counts
    if backend == "c":
        loss, gb, Gm = _c_kernels().assemble(R, b, targets, st.keys, st.labs, tn, st.tmean, st.tscat, G, blk)
        return loss / N, gb / N, 0.5 * (Gm - np.swapaxes(Gm, 1, 2)) / N
    nblk = max(1, (G + blk - 1) // blk)
    ploss, pgb, pG = np.empty((nblk, 1)), np.empty((nblk, L, M)), np.empty((nblk, L, M, M))

    def run(a, c, _):
        _a.assemble_range(R, b, targets, st.keys, st.labs, tn, st.tmean, st.tscat, G, a, c, blk, 0,
                          ploss[:, 0], pgb, pG)

    if nblk == 1:
        run(0, 1, 0)
    else:
        _parallel.run_ranges(run, 0, nblk, split=4)
    loss, gb, Gm = np.zeros(1), np.zeros((L, M)), np.zeros((L, M, M))
    add_slots(loss, ploss, nblk)
    add_slots(gb, pgb, nblk)
    add_slots(Gm, pG, nblk)
    omega = 0.5 * (Gm - np.swapaxes(Gm, 1, 2)) / N
    return float(loss[0]) / N, gb / N, omega


def counts(st: PatternState) -> np.ndarray:
    """(L, Q, 3) int64 untruncated / partial / fully truncated counts per layer and cluster (§2)."""
    return _a.counts_from_groups(st.keys, st.labs, st.tn, st.G, st.M, st.Q)


def margins(st: PatternState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-order (margin, ρ, reference generation id) of every point, for tests and diagnostics."""
    m = np.empty(st.N, np.float32)
    rho = np.empty(st.N, np.float32)
    for g in st.gens:
        live = st.gen_of[g.idx] == g.gid
        m[g.idx[live]] = g.m[live]
        rho[g.idx[live]] = g.rho[live]
    return m, rho, st.gen_of.copy()
