"""Every numeric threshold and tuning constant of truncfast, in one place.

Kernels and the API read these names; nothing else hard-codes a tolerance.
Every environment variable truncfast reads is read through the ``env_*``
functions at the end of this module (at call time, so a change in the
environment of a running process is seen where it matters).
"""

from __future__ import annotations

import os

#: Points per reduction chunk.  Every parallel reduction (Numba and C) sums the
#: points of one chunk sequentially, then adds the chunk partial sums in chunk
#: order.  The chunk boundaries depend on N only, never on the number of threads,
#: so results are bitwise identical for any thread count.
CHUNK_SIZE: int = 4096

#: Points per SIMD block inside a chunk (Numba kernels store a block transposed,
#: (M, BLOCK_SIZE), so matrix–vector products become axpys over the points).
#: Must divide CHUNK_SIZE.
BLOCK_SIZE: int = 64

#: Accumulator lanes of the §5 bias and pair sums (Numba and C): point p of a
#: chunk starting at ``start`` adds into lane ``(p - start) % ACC_LANES``, the
#: lanes are added in order at the end of the chunk.  One AVX-512 vector of
#: doubles: the C core's accumulators for all layers then stay in L1 (with one
#: lane per block point they were 146 kB per chunk at M = L = 8 and came from
#: L2 each block — the change measured 12–15 % of the C gradient).  Must divide
#: BLOCK_SIZE; changing it changes the bits of both backends alike.
ACC_LANES: int = 8

#: Euclidean loss: up to this many targets are rotated into the last layer's
#: frame (ỹ'_j = R_L ỹ_j) once per chunk (Numba) or call (C); with more — one
#: target per point, as in regression — each point's target is rotated on the
#: fly (M² flops per point, no Q-sized temporary), so neither the time nor the
#: memory of a gradient grows with Q.  Same bits either way.  Mirrors
#: ``TF_TARGETS_CACHE_ROWS`` of csrc/truncfast.h.
TARGETS_CACHE_ROWS: int = 4096

#: Layers at least this wide use the GEMM-blocked kernels (``truncfast._kernels.blas_kernels``):
#: their M×M products run in a tuned BLAS instead of hand-written loops.
GEMM_MIN_WIDTH: int = 32

#: ``backend="auto"`` picks Numba (its BLAS-blocked kernels) over the C core
#: from this width on.  Measured (2 threads, min of 3, second session): C
#: faster at M = 32 (85 vs 153 ms, N = 5·10⁴, L = 8), M = 64 (1.1–1.4× in four
#: full benchmark runs) and M = 96 (200 vs 221 ms, N = 2·10⁴, L = 4); Numba
#: faster at M = 128 (305 vs 374 ms, N = 2·10⁴, L = 4).
AUTO_BLAS_MIN_WIDTH: int = 128

#: Points per GEMM sub-block in the wide-layer kernels.
GEMM_BLOCK: int = 512

#: Upper bound (bytes) on the scratch used for per-chunk partial sums at once.
#: Chunks are processed in batches whose partials fit in this budget; the
#: batching does not change the (fixed, chunk-ordered) summation.
PARTIALS_BUDGET_BYTES: int = 8 * 2**20

#: An input rotation R is accepted when max_ℓ max|R_ℓᵀR_ℓ − I| ≤ this.
ORTHOGONALITY_TOL: float = 1e-8

#: An R given in a lower precision than float64 (float32, float16) is accepted
#: when its defect is at most this many units of roundoff of that precision
#: times M (rounding an exactly orthogonal matrix already costs about one unit).
ORTHOGONALITY_ULPS: float = 8.0

#: Integrators re-orthonormalise R (polar decomposition) once the defect
#: max|RᵀR − I| exceeds this.
REORTHONORMALIZE_TOL: float = 1e-12

#: ``integrate`` runs its whole step loop in compiled code (Numba, sequential,
#: ``truncfast._integrate.api._compiled_steps``) when the backend is numba and N is at most
#: this: one reduction chunk, which the parallel kernel could not split anyway,
#: so per-step Python and thread start-up overhead would dominate.
COMPILED_LOOP_MAX_N: int = CHUNK_SIZE

#: Wall-clock target (seconds) of one chunk of integration steps between
#: returns to Python (progress bar updates, Ctrl-C latency).  Never changes results.
INTEGRATE_CHUNK_SECONDS: float = 0.05

#: Adaptive steps (docs/theory.md §12, ``truncfast._integrate.controller``): the PI
#: controller's safety factor, the bounds of the factor between consecutive steps,
#: and its exponents α, β (divided by the order of the error estimate), after
#: Hairer & Wanner II, IV.2.  Error norms below ADAPTIVE_ERR_FLOOR count as it
#: (a step with no measurable error grows by the largest factor, not by inf).
ADAPTIVE_SAFETY: float = 0.9
ADAPTIVE_FACTOR_MIN: float = 0.2
ADAPTIVE_FACTOR_MAX: float = 10.0
ADAPTIVE_PI_ALPHA: float = 0.7
ADAPTIVE_PI_BETA: float = 0.4
ADAPTIVE_ERR_FLOOR: float = 1e-10

#: Smallest rtol accepted (about 50 ulps): below it the error estimate of a step
#: is rounding noise and the steps would shrink without end.
ADAPTIVE_MIN_RTOL: float = 1e-14

#: An adaptive run stops with StepSizeError when the step it needs falls below
#: this fraction of max(|t|, t1): the error cannot be brought under the
#: tolerance any more (rounding, or a right-hand side that is not integrable there).
ADAPTIVE_MIN_STEP: float = 1e-12

#: A step shorter than this fraction of the step size is merged into the step
#: before it when the run lands on a ``saveat`` time or ``t1`` (no sliver steps).
ADAPTIVE_LAND_FRACTION: float = 1e-9

#: Adaptive runs with ``events="crossings"`` locate every sector crossing by
#: bisection to an interval of this fraction of rtol · t and restart the step there.
CROSSING_LOCATE_FRACTION: float = 0.01

#: The crossing bracket is found by regula falsi (Illinois) on the pre-activations of
#: the points whose sector codes changed over the step, in at most this many trial
#: steps (every fourth a bisection); failing that, or with more than
#: CROSSING_SECANT_MAX_POINTS changed points, by plain bisection.
CROSSING_SECANT_STEPS: int = 40
CROSSING_SECANT_MAX_POINTS: int = 4096

#: After this many consecutive located crossings that lie at the very start of
#: their step (a point sliding along a sector boundary, where every step would
#: cross again at once), one step is taken without locating crossings: the
#: step control then treats the jump like any discontinuity.
CROSSING_STALL_STEPS: int = 3

#: ``events="auto"`` locates every sector crossing in adaptive runs of at most this
#: many points (each crossing costs a bisection; beyond this the jumps of the
#: right-hand side are small and many, and the step control handles them).
LOCATE_CROSSINGS_MAX_N: int = 256

#: Collapse times of adaptive runs are located by bisection to an interval of
#: this fraction of rtol · t (docs/theory.md §12).
COLLAPSE_LOCATE_FRACTION: float = 0.1

#: ``integrate`` stops with DivergenceError when a step makes the loss non-finite
#: or larger than this factor times its reference (the loss at step 0, at least
#: DIVERGENCE_LOSS_FLOOR × max|ỹ_j|² + max|b_ℓ(0)|²): a gradient flow never
#: increases its loss, so such growth means the step is unstable.
DIVERGENCE_LOSS_FACTOR: float = 1e3

#: Floor of the reference loss for the divergence test, relative to the squared
#: scale of the targets and initial biases (rounding noise at an equilibrium is
#: ~1e-32 of it, a diverging run reaches many times it).
DIVERGENCE_LOSS_FLOOR: float = 1e-8

#: ``integrate`` reports unstable steps (``_integrate.monitor``) when the loss
#: exceeds the lowest loss so far by this relative amount (plus the divergence
#: test's noise floor).  Measured on the data generators' problems (paper-2d,
#: clusters, iris, digits; 3 seeds; dt = 0.01, 0.05; both retractions; frozen or
#: trained weights): stable runs never rise by more than 1e-5 relative, while
#: every run whose steps do not follow the flow (a different end state at dt/2)
#: rose by 1.6e-3 to 2.4 — and the issue's dt = 1, 2.5, 10 by far more.
INSTABILITY_GROWTH_RTOL: float = 1e-3

#: ... or when the loss rose (by more than this relative amount over the step
#: before) in at least INSTABILITY_RISES of the last INSTABILITY_WINDOW steps:
#: a period-2 oscillation rises every other step.  Above the chatter of a flow
#: sliding along a sector boundary, whose fixed steps zig-zag across it with
#: loss wiggles of 5e-8 (dt = 0.01) to 3e-7 (dt = 0.05) relative.
INSTABILITY_RISE_RTOL: float = 1e-5
INSTABILITY_WINDOW: int = 16
INSTABILITY_RISES: int = 6

#: ``integrate`` records truncation counts from the sector codes of this many
#: points at a time (bounded scratch, independent of N).
COUNTS_ROWS: int = 4 * CHUNK_SIZE

#: Most worker threads one call may use (``tf.set_num_threads`` refuses more,
#: ``TRUNCFAST_NUM_THREADS`` is clamped to it).  Mirrors ``TF_MAX_THREADS`` of
#: ``csrc/truncfast.h``, which the C core clamps every ``nthreads`` to (a test
#: checks they are equal): far above any useful count, far below the counts at
#: which creating OpenMP threads fails and aborts the process.
MAX_THREADS: int = 1024

#: Largest width for which sector codes fit a uint64 bitmask.
MAX_CODE_WIDTH: int = 64

#: How dask inputs (``truncfast._backends.dask_backend``) add the per-block partial sums:
#: ``"ordered"`` — a chain of fold tasks in row order, the local engine's exact
#: summation (same bits when every dask row-chunk boundary is a multiple of
#: CHUNK_SIZE), latency one task hop per block; ``"tree"`` — block sums added in
#: a fixed binary tree by block index (deterministic, log depth, within 1e-12).
DISTRIBUTED_REDUCTION: str = "ordered"

#: ``data.make_problem`` with more layers than clusters: layer ℓ ≥ Q repeats cluster
#: ℓ mod Q and has its cone's apex moved back along the cone's axis by this × the
#: centre separation × (ℓ // Q), so that points an earlier copy projected onto its
#: boundary are strictly inside (no ties at sector boundaries in generated states).
REPEAT_APEX_SHIFT: float = 1e-2

#: ``data.make_problem`` refuses a separation, spread or target_shift larger than
#: this in magnitude: losses are squared distances (summed over N points), and
#: must stay far below the float64 maximum ~1.8e308.
GENERATOR_MAX_SCALE: float = 1e100

#: Rows per chunk of the data generators (``truncfast.data``) and of the file
#: loaders' scans.  Each generated chunk draws from its own generator seeded by
#: (seed, chunk index), so the values depend on the seed only — never on how
#: many rows are produced at once or on the machine's memory.
GEN_CHUNK_ROWS: int = 1 << 16

#: Rows per block when in-memory data run on the dask backend (``backend="dask"``):
#: a multiple of CHUNK_SIZE, so the ordered reduction gives the numba backend's bits.
DASK_BLOCK_ROWS: int = 64 * CHUNK_SIZE

#: A distributed step whose computation fails because a worker or connection was
#: lost is recomputed (tasks are pure: same bits) at most this many times.
DISTRIBUTED_RETRIES: int = 3

#: Fan-in of the ``"tree"`` reduction of dask inputs (children added left to
#: right, by block index): fewer tasks than a binary tree, depth log_k(blocks).
DISTRIBUTED_TREE_FANIN: int = 8

#: Rounding margin (relative to the magnitudes involved) of the sufficient
#: separation tests on balls and boxes (docs/theory.md §6): a pre-activation
#: must exceed it to count as provably untruncated; otherwise the exact
#: per-point check decides.
SEPARATION_MARGIN: float = 1e-9

#: The enclosing ball of a cluster gets its radius enlarged by this relative
#: amount, so that rounding in the distance computation can only enlarge it.
BALL_RADIUS_SLACK: float = 1e-12

#: Rows per chunk of the enclosing-ball passes (cluster sums and radii).
BALL_CHUNK_ROWS: int = 1 << 16


# --- the pattern form across steps (docs/theory.md §11; _kernels/pattern_state.py)
#: Groups summed sequentially into one partial sum of the assembly.
PATTERN_ASSEMBLY_BLOCK: int = 64
#: At most this many generations (reference states of the margin bound) are kept.
PATTERN_GENERATIONS_MAX: int = 16
#: A generation is compacted when its live entries drop below this share.
PATTERN_COMPACT_FRACTION: float = 0.5
#: Scratch budget (bytes) of the chunk-local groups of one batch of the full pass.  (64 MB
#: until the moments engine used it: 16 MB measured as fast — paper-2d 10⁶ 60 vs 63 ms, random
#: M = L = 8, 3·10⁵ points 249 vs 236 ms — and keeps the engine's peak memory bounded.)
PATTERN_LOCALS_BUDGET_BYTES: int = 16 * 2**20
#: Default cap on the memory of the groups (the full pass gives up beyond it).
PATTERN_MAX_GROUP_BYTES: int = 2**30
#: Safety factor of the rounding term of the margin bound (pattern_state docstring).
PATTERN_ROUNDING_FACTOR: float = 32.0
#: A generation whose points fall in at most this many groups uses the pattern-affine
#: bound (one centre per group, ``patterns_generations``); with more it is *plain*
#: (the Lipschitz bound of docs/theory.md §11 in ρ).  Each at-risk search costs
#: O(slots · L M²) per generation.
PATTERN_CENTRED_MAX_SLOTS: int = 1024
#: A new generation is sorted by (slot, margin bucket) in one counting sort when
#: slots × 2048 buckets stay within this many keys (else: by bucket, then by slot).
PATTERN_SORT_KEYS_MAX: int = 1 << 16
#: The at-risk search computes each slot's ‖K_ℓ(θ) − K_ℓ(θᶜ)‖ exactly (instead of the
#: bound (2L − 1) ν^{2L−2} ε) while slots · L · M³ stays below this (flops per generation
#: and state: ~2 per unit).  Exact κ is 3× smaller for a group fully truncated at layer 1.
PATTERN_EXACT_KAPPA_WORK: int = 1 << 18

# --- engines of the right-hand side (docs/theory.md §11; _flow/engines.py) ---
#: engine="moments"/"auto": a full pass instead of re-checks when more than this
#: share of the points is at risk (re-checking a point costs ~5× its share of a
#: full pass, and a pass also renews every reference state of the bound).
ENGINE_RECHECK_SHARE: float = 0.05
#: The groups' moments are rebuilt from the data (a full pass) once they have
#: served this many evaluations after the first move since the last pass: moves
#: update the moments by adding and removing points (Chan's update), which
#: drifts in the last bits; without moves nothing drifts.
#: Measured drift of the right-hand side between rebuilds: docs/DESIGN.md, "Engines".
ENGINE_REBUILD_EVERY: int = 500
#: engine="auto" runs per point below this many points — with the numba backend
#: that is the integrator's compiled loop (N ≤ COMPILED_LOOP_MAX_N), faster than
#: the moments engine's Python-level evaluation there.  Measured (2 cores, load
#: 2–3, µs per step of 1,000 Lie–Euler steps, compiled loop / moments): paper-2d
#: N = 1000: 14 / 64, 2000: 30 / 36, 4096: 55 / 38; three clusters in R³
#: N = 1000: 25 / 54, 4096: 99 / 78; above one chunk the per-point evaluation
#: runs through the thread pool and moments wins (N = 8192: 197–287 vs 48–127).
ENGINE_AUTO_MIN_N: int = COMPILED_LOOP_MAX_N + 1
#: engine="auto" keeps groups only while assembling them costs at most this share
#: of one per-point evaluation (the full pass gives up beyond that many groups).
ENGINE_AUTO_GROUP_SHARE: float = 0.5
#: engine="auto" looks at the patterns of this many rows (spread evenly) before a
#: full pass, to skip passes that would find too many groups or go stale too soon (``_flow/engine_probe.py``).
ENGINE_PROBE_ROWS: int = 2048
#: engine="auto" after a full pass that did not pay for itself: this many per-point
#: evaluations before the next attempt, doubling after every further failure up to
#: ENGINE_AUTO_BACKOFF_MAX (reset by a pass that paid).  Bounds what failed
#: attempts can cost: at most one (partial) pass per back-off window.
ENGINE_AUTO_BACKOFF_MIN: int = 4
ENGINE_AUTO_BACKOFF_MAX: int = 256
#: Cost model of engine="auto" (nanoseconds; only ratios matter).  Measured with
#: ``python benchmarks/bench_engine.py --calibrate`` at N = 10⁶ (2 threads, load 1.0–1.1,
#: three clusters in R^M, M = L ∈ {2, 4, 8}, spread 0.3 and 3), per point: direct numba
#: 8.9 / 27.8 / 157, C 6.2 / 17.7 / 76–78, full pass 38.5 / 87.6 / 163–365, re-check 158 / 142 /
#: 220–235 ns (250–270 inside runs, with folds and compactions); per group: assembly 1.06 /
#: 2.9 / 3.6–5.4 µs, at-risk search ~1.7 µs per group at M = 8.  On a loaded machine the
#: per-point kernels slow down 2–3× more than the rest (the cost model then favours per point).
#: per-point evaluation, per point a·L·M² + c, by backend (others: numba's)
ENGINE_COST_DIRECT: dict = {"numba": (0.29, 7.0), "c": (0.14, 6.0)}
#: full pass (groups, margins, buckets), per point: a·L·M² + c
ENGINE_COST_PASS: tuple = (0.25, 40.0)
#: re-check (gather, forward pass, moves, new generation): per point a·L·M² + c, plus a fixed cost
ENGINE_COST_RECHECK: tuple = (0.15, 230.0, 1.0e5)
#: assembly and at-risk search, per group: a·L·M³ + c
ENGINE_COST_GROUP: tuple = (1.5, 1200.0)
#: fixed cost of one evaluation from the groups (at-risk search, calls from Python)
ENGINE_COST_FIXED: float = 4.0e4
#: hybrid evaluation (``_flow/engine_hybrid.py``): finding the small groups' points, per point
#: of the data; gathering them, per small-group point; the extra per-point call
ENGINE_COST_SPLIT: tuple = (1.5, 15.0, 3.0e4)
#: engine="auto" lets a full pass keep up to this share of N groups (the probe before it
#: still needs the sample to show fewer than the pure assembly's cap): the hybrid
#: evaluation uses states with many small groups.
ENGINE_HYBRID_GROUP_SHARE: float = 0.25

#: ``tf.FlowEvaluator`` compares the bytes of this many rows (spread evenly, first
#: and last included) of X and labels at every call, to catch data changed behind
#: its back (~10 µs at M = 8).
FLOW_EVALUATOR_GUARD_ROWS: int = 256

#: The OpenMP threads of the C core wait *passively* (sleep) between parallel
#: regions instead of spinning: unless ``OMP_WAIT_POLICY`` is already set,
#: truncfast sets it to this value just before it loads the C core (None: leave
#: the environment alone).  Spinning workers took the core that the Python
#: thread and the Numba pool needed between calls; measured on the shared 2-core
#: machine (load 2–3), one direct-engine step of paper-2d on the C backend:
#: N = 8192 0.32–0.62 → 0.12 ms, N = 10⁵ 4.5–5.9 → 2.2 ms, N = 10⁶ 33.8 → 16.8 ms.
#: The OpenMP runtime reads the variable once, when it is first loaded: no effect
#: if another library loaded it earlier, and OpenMP libraries loaded later in the
#: same process wait passively too (docs/DESIGN.md, "Engines").
OMP_WAIT_POLICY: str | None = "passive"

#: General (unaligned) cumulative weights W_ℓ (docs/theory.md §13): an input W
#: whose condition number σ_max/σ_min exceeds this in some layer is refused
#: (InputError), and ``truncfast.unaligned.integrate`` stops with
#: DivergenceError when a step takes some W_ℓ beyond it.  τ_ℓ applies W_ℓ⁻¹, so
#: results lose about log10(cond) of float64's 16 digits: at 1e10 about 6 are left.
UNALIGNED_MAX_CONDITION: float = 1e10

#: ``tf.check_prop42``: default smallness constant ε of the hypotheses [4.14]
#: (mass of the positive sector ≤ ε) and [4.15] (off-diagonal first moments
#: ≤ ε relative to the cluster's rms pre-activation); docs/theory.md §7.
PROP42_EPS: float = 0.1

#: ``tf.neural_collapse``: singular values of Σ_B below this (relative) count as
#: zero in the pseudo-inverse of NC1 (Σ_B has rank ≤ C − 1 < M in general).
NC_PINV_RCOND: float = 1e-12

#: ``tf.sector_moments`` and ``tf.check_prop42``: rows per block of the grouped
#: second-moment sums (bounded scratch of ROWS × M² doubles).
SECTOR_MOMENT_ROWS: int = 1 << 13

# ----------------------------------------------------------- environment ---
#: The environment variables truncfast reads (``truncfast info`` lists them).
ENV_VARIABLES = (
    "TRUNCFAST_NUM_THREADS",            # worker threads of the kernels (after tf.set_num_threads)
    "TRUNCFAST_NO_CEXT",                # 1: build and run without the C core
    "TRUNCFAST_DISTRIBUTED_REDUCTION",  # 'ordered' or 'tree' for dask inputs
    "TRUNCFAST_NUMBA_WIDE_VECTORS",     # 0: keep Numba's default vector width
    "TRUNCFAST_DEBUG",                  # 1: the CLI prints tracebacks
    "TRUNCFAST_C_VL",                   # force a narrower C kernel width (read by the C core itself)
    "OMP_WAIT_POLICY",                  # set to OMP_WAIT_POLICY above unless given (read by the OpenMP runtime)
)


def env_raw(name: str) -> str:
    """The stripped value of an environment variable ('' when unset)."""
    return os.environ.get(name, "").strip()


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable: '', '0', 'false', 'no' (any case) are false."""
    val = env_raw(name)
    if not val:
        return default
    return val.lower() not in ("0", "false", "no", "off")


def env_positive_int(name: str) -> int | None:
    """A positive integer from the environment, or None when unset or not a positive integer."""
    val = env_raw(name)
    return int(val) if val.isdigit() and int(val) > 0 else None


_warned_env: set = set()


def _warn_env_once(name: str, value: str, what: str) -> None:
    """One warning per (variable, value) and process: a bad setting is reported, not repeated per call."""
    if (name, value) in _warned_env:
        return
    _warned_env.add((name, value))
    import warnings

    warnings.warn(f"{name}={value!r} {what}", RuntimeWarning, stacklevel=3)


def env_num_threads() -> int | None:
    """``TRUNCFAST_NUM_THREADS``: a positive integer, at most :data:`MAX_THREADS`.

    Unset: None.  Not a positive integer: None and one ``RuntimeWarning``
    (the next source of the thread count is used).  Above MAX_THREADS:
    MAX_THREADS and one warning.  Never raises: a bad environment must not
    break every call of the library.
    """
    val = env_raw("TRUNCFAST_NUM_THREADS")
    if not val:
        return None
    if not (val.isdigit() and int(val) > 0):
        _warn_env_once("TRUNCFAST_NUM_THREADS", val, "is not a positive integer; ignored (truncfast uses "
                       "NUMBA_NUM_THREADS, OMP_NUM_THREADS or the CPU count)")
        return None
    n = int(val)
    if n > MAX_THREADS:
        _warn_env_once("TRUNCFAST_NUM_THREADS", val, f"exceeds truncfast's maximum of {MAX_THREADS} threads; "
                       f"using {MAX_THREADS}")
        return MAX_THREADS
    return n


def env_default_threads() -> int | None:
    """The thread count from the environment: ``TRUNCFAST_NUM_THREADS`` (:func:`env_num_threads`),
    else the first positive integer among NUMBA_NUM_THREADS, OMP_NUM_THREADS (other libraries'
    variables: invalid values are theirs to report and skipped here), at most :data:`MAX_THREADS`."""
    n = env_num_threads()
    if n is not None:
        return n
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        n = env_positive_int(var)
        if n is not None:
            return min(n, MAX_THREADS)
    return None


def env_no_cext() -> bool:
    """``TRUNCFAST_NO_CEXT`` set: run without the C core."""
    return env_flag("TRUNCFAST_NO_CEXT")


def env_distributed_reduction() -> str:
    """``TRUNCFAST_DISTRIBUTED_REDUCTION`` or :data:`DISTRIBUTED_REDUCTION`."""
    return env_raw("TRUNCFAST_DISTRIBUTED_REDUCTION") or DISTRIBUTED_REDUCTION


def env_numba_wide_vectors() -> bool:
    """``TRUNCFAST_NUMBA_WIDE_VECTORS`` (default on): let Numba use 512-bit vectors on AVX-512 hosts."""
    return env_raw("TRUNCFAST_NUMBA_WIDE_VECTORS") != "0"


def env_debug() -> bool:
    """``TRUNCFAST_DEBUG`` set: the CLI prints full tracebacks."""
    return env_flag("TRUNCFAST_DEBUG")


def apply_omp_wait_policy() -> None:
    """Set ``OMP_WAIT_POLICY`` to :data:`OMP_WAIT_POLICY` unless the user set it (before the C core loads)."""
    if OMP_WAIT_POLICY and not env_raw("OMP_WAIT_POLICY"):
        os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
