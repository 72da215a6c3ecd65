"""Every numeric threshold and tuning constant of truncfast, in one place.

Kernels and the API read these names; nothing else hard-codes a tolerance.
"""

from __future__ import annotations

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

#: Layers at least this wide use the GEMM-blocked kernels (``_kernels_blas``):
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
#: ``_integrate._compiled_steps``) when the backend is numba and N is at most
#: this: one reduction chunk, which the parallel kernel could not split anyway,
#: so per-step Python and thread start-up overhead would dominate.
COMPILED_LOOP_MAX_N: int = CHUNK_SIZE

#: Wall-clock target (seconds) of one chunk of integration steps between
#: returns to Python (progress bar updates, Ctrl-C latency).  Never changes results.
INTEGRATE_CHUNK_SECONDS: float = 0.05

#: ``integrate`` stops with DivergenceError when a step makes the loss non-finite
#: or larger than this factor times its reference (the loss at step 0, at least
#: DIVERGENCE_LOSS_FLOOR × max|ỹ_j|² + max|b_ℓ(0)|²): a gradient flow never
#: increases its loss, so such growth means the step is unstable.
DIVERGENCE_LOSS_FACTOR: float = 1e3

#: Floor of the reference loss for the divergence test, relative to the squared
#: scale of the targets and initial biases (rounding noise at an equilibrium is
#: ~1e-32 of it, a diverging run reaches many times it).
DIVERGENCE_LOSS_FLOOR: float = 1e-8

#: ``integrate`` records truncation counts from the sector codes of this many
#: points at a time (bounded scratch, independent of N).
COUNTS_ROWS: int = 4 * CHUNK_SIZE

#: Largest width for which sector codes fit a uint64 bitmask.
MAX_CODE_WIDTH: int = 64

#: How dask inputs (``_distributed``) add the per-block partial sums:
#: ``"ordered"`` — a chain of fold tasks in row order, the local engine's exact
#: summation (same bits when every dask row-chunk boundary is a multiple of
#: CHUNK_SIZE), latency one task hop per block; ``"tree"`` — block sums added in
#: a fixed binary tree by block index (deterministic, log depth, within 1e-12).
DISTRIBUTED_REDUCTION: str = "ordered"

#: A distributed step whose computation fails because a worker or connection was
#: lost is recomputed (tasks are pure: same bits) at most this many times.
DISTRIBUTED_RETRIES: int = 3

#: Fan-in of the ``"tree"`` reduction of dask inputs (children added left to
#: right, by block index): fewer tasks than a binary tree, depth log_k(blocks).
DISTRIBUTED_TREE_FANIN: int = 8
