/*
 * truncfast.h -- the C core of truncfast: truncation maps and the effective
 * gradient flow of deep ReLU networks in input space (docs: docs/theory.md).
 *
 * Stable C API.  Conventions shared by every function:
 *
 *   - Arrays are passed as pointers plus sizes, C order (row-major), float64
 *     (labels int64, sector codes uint64).  Inputs are never modified.
 *       R      (L, M, M)  orthogonal matrices R_l (aligned cumulative weights)
 *       b      (L, M)     cumulative biases b_l
 *       X      (N, M)     data, one point a row
 *       labels (N,)       cluster of each point, in 0..Q-1
 *   - Every function returns a status code (TF_OK == 0 on success) and never
 *     aborts; on error the outputs are unspecified.
 *   - H(0) = 0: a pre-activation exactly 0 counts as truncated.
 *   - Determinism: the N points are split into fixed chunks of `chunk` points
 *     (truncfast uses 4096).  A chunk is summed sequentially, chunk partial
 *     sums are added in chunk order, so the results are bitwise independent of
 *     the number of threads.  `nthreads` is the number of OpenMP threads of
 *     a call; nthreads <= 0 means the OpenMP default (OMP_NUM_THREADS).  Any
 *     int is safe: a call uses at most TF_MAX_THREADS threads, at most 8 per
 *     CPU, at most OMP_THREAD_LIMIT, and never more than it has chunks of work.  With the
 *     same `chunk`, the results have the same bits as truncfast's Numba kernels.
 *   - Gradient sums are returned raw (not divided by N, G not antisymmetrised):
 *     the effective flow is grad_b = gb / N, omega_l = (G_l - G_l^T) / (2 N),
 *     loss = loss_sum / N (docs/theory.md section 5).
 *
 * Thread safety: every function is reentrant (no global state).
 *
 * Versions.  tf_version() is the truncfast release the library was built from
 * (TF_VERSION).  The ABI version TF_ABI_VERSION_MAJOR.TF_ABI_VERSION_MINOR
 * numbers the binary interface: the minor number grows when functions or
 * status codes are added (old callers keep working), the major number when a
 * signature, a struct or the meaning of an argument changes.  The shared
 * library's soname carries the major number (libtruncfast.so.1), so a program
 * linked against ABI 1 never loads an incompatible library.  A caller that
 * loads the library at run time (dlopen, ctypes, Julia's ccall, Rust's
 * libloading) should check tf_abi_version() / 1000 == TF_ABI_VERSION_MAJOR.
 */
#ifndef TRUNCFAST_H
#define TRUNCFAST_H

#include <stdint.h>

/* Release of truncfast this header belongs to (tf_version() returns the
 * library's).  The floating-point constants of tf_integrate (outside the cffi
 * region below, which holds integer constants only): */
#define TF_VERSION "0.1.0"
/* An input R is accepted when max_l max|R_l^T R_l - I| <= this. */
#define TF_ORTHOGONALITY_TOL 1e-8
/* tf_integrate re-orthonormalises R (polar factor) once the defect exceeds this. */
#define TF_REORTHONORMALIZE_TOL 1e-12
/* tf_integrate stops with TF_ERR_DIVERGED when the loss exceeds this factor
 * times its reference max(C(0), TF_DIVERGENCE_LOSS_FLOOR * scale^2), scale^2 =
 * max_j |targets_j|^2 + max_l |b_l(0)|^2 (a gradient flow never increases its loss). */
#define TF_DIVERGENCE_LOSS_FACTOR 1e3
#define TF_DIVERGENCE_LOSS_FLOOR 1e-8

#ifdef __cplusplus
extern "C" {
#endif

/* BEGIN CDEF: from here to END CDEF, only integer #defines and prototypes
 * (truncfast/_kernels/build_ccore.py feeds this region to cffi). */

/* ------------------------------------------------------------------ status */
#define TF_OK 0
#define TF_ERR_SIZE 1     /* a size is out of range (M < 1, L < 1, N < 0, chunk < 1, ...) */
#define TF_ERR_NULL 2     /* a required pointer is NULL */
#define TF_ERR_NOMEM 3    /* scratch memory could not be allocated */
#define TF_ERR_LABEL 4    /* a label is outside 0..Q-1 */
#define TF_ERR_WIDTH 5    /* sector codes need M <= 64 */
#define TF_ERR_NONFINITE 6 /* an input array or dt holds NaN or +-inf */
#define TF_ERR_NOT_ORTHOGONAL 7 /* some R_l has max|R_l^T R_l - I| > TF_ORTHOGONALITY_TOL */
#define TF_ERR_DIVERGED 8 /* tf_integrate: the flow diverged (outputs: the last good state) */
#define TF_ERR_ARG 9      /* a scalar argument is out of range (dt <= 0, unknown method) */
#define TF_ERR_SINGULAR 10 /* a matrix is singular (tf_orthonormalize: no unique polar factor;
                            tf_unaligned_*: some W_l has an exactly zero pivot) */

/* ----------------------------------------------------------------- versions */
#define TF_ABI_VERSION_MAJOR 1
#define TF_ABI_VERSION_MINOR 1
/* TF_ABI_VERSION_MAJOR * 1000 + TF_ABI_VERSION_MINOR of this header
 * (1.1: the tf_unaligned_* functions were added) */
#define TF_ABI_VERSION 1001

/* Release of truncfast the library was built from, e.g. "0.1.0" (static storage). */
const char *tf_version(void);

/* ABI version of the library: major * 1000 + minor (see "Versions" above). */
int tf_abi_version(void);

/* Chunk size of truncfast's Python package (_config.CHUNK_SIZE): pass it as
 * `chunk` to get the same bits as truncfast's Python API. */
#define TF_CHUNK_SIZE 4096

/* Points per SIMD block inside a chunk (must equal truncfast's _config.BLOCK_SIZE
 * for bitwise agreement with the Numba kernels: layers where no point of a block
 * is truncated are skipped, which leaves finite sums unchanged). */
#define TF_BLOCK_SIZE 64

/* Euclidean loss: up to this many targets are rotated into the last layer's
 * frame once per call (Q x M doubles); with more (one target per point, as in
 * regression) each point's target is rotated on the fly, so neither the time nor
 * the memory of a call grows with Q.  Same bits either way.  Mirrors
 * truncfast's _config.TARGETS_CACHE_ROWS. */
#define TF_TARGETS_CACHE_ROWS 4096

/* Accumulator lanes of the bias and pair sums of tf_general (must equal
 * truncfast's _config.ACC_LANES for bitwise agreement): point p of a chunk
 * adds into lane (p - chunk start) % TF_ACC_LANES; lanes are added in order. */
#define TF_ACC_LANES 8

/* Most OpenMP threads one call uses (larger `nthreads` are clamped to it);
 * truncfast's _config.MAX_THREADS, which tf.set_num_threads accepts at most. */
#define TF_MAX_THREADS 1024

/* Human-readable text of a status code (static storage). */
const char *tf_status_string(int status);

/* TF_BLOCK_SIZE, as compiled. */
int tf_block_size(void);

/* TF_ACC_LANES, as compiled. */
int tf_acc_lanes(void);

/* Points per register tile of the kernels in use on this CPU: 8 (AVX-512),
 * 4 (AVX2 + FMA) or 2; TRUNCFAST_C_VL (2, 4, 8) can lower it.  Every width
 * gives the same bits. */
int tf_kernel_width(void);

/* 1 if the library was compiled with OpenMP, else 0. */
int tf_has_openmp(void);

/* Threads a parallel call would use now (1 without OpenMP). */
int tf_max_threads(void);

/*
 * Truncation map tau^(L) = tau_L o ... o tau_1 of every row of X (docs/theory.md §2, 4):
 *   tau_l(z) = R_l^T ( max(R_l z + b_l, 0) - b_l ).
 * out: (N, M).
 */
int tf_truncate(const double *R, const double *b, const double *X,
                int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads, double *out);

/*
 * Sector codes along the composition (docs/theory.md §2): bit i of codes[n*L + l] is
 * H((R_l tau^(l-1)(x_n) + b_l)_i).  Needs M <= 64.  codes: (N, L).
 */
int tf_codes(const double *R, const double *b, const double *X,
             int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads, uint64_t *codes);

/*
 * Loss and gradient sums of the general effective flow (docs/theory.md §5).
 *
 * standard == 0 (Euclidean loss, docs/theory.md §3): residual z_L - T[labels[n]],
 *   T is (Q, M); W, bout, Y are ignored (may be NULL, P may be 0).
 * standard != 0 (standard loss): residual W z_L + bout - Y[labels[n]],
 *   W (P, M), bout (P,), Y (Q, P); error vector e = W^T residual; T ignored.
 *
 * Outputs (raw sums over the N points):
 *   loss  (scalar)   sum of |residual|^2 / 2
 *   gb    (L, M)     sum of -(1 - h_l) . r_l
 *   G     (L, M, M)  a matrix with the antisymmetric part of the sum of
 *                    (h_l . r_l) v_l^T - r_l t_l^T (returned strictly upper
 *                    triangular; only (G - G^T)/2 is meaningful)
 *   gW    (P, M)     sum of residual z_L^T            (standard only; may be NULL otherwise)
 *   gbo   (P,)       sum of residual                  (standard only; may be NULL otherwise)
 * want_grad == 0 computes the loss only (gb, G, gW, gbo are then left zero).
 */
int tf_general(const double *R, const double *b, const double *X, const int64_t *labels,
               int64_t N, int64_t M, int64_t L, int64_t Q,
               const double *T, const double *W, const double *bout, const double *Y, int64_t P,
               int standard, int want_grad, int64_t chunk, int nthreads,
               double *loss, double *gb, double *G, double *gW, double *gbo);

/*
 * Raw constrained moments of the separated form (docs/theory.md §6): cluster j is
 * rotated by layer j (needs Q <= L), v = R_j x, h = H(v + b_j):
 *   S0[j, i] = sum h_i,  S1[j, i, k] = sum h_i v_k,  S2[j, i, k] = sum h_i v_i v_k.
 * S0 (Q, M), S1 and S2 (Q, M, M).
 */
int tf_moments(const double *R, const double *b, const double *X, const int64_t *labels,
               int64_t N, int64_t M, int64_t L, int64_t Q, int64_t chunk, int nthreads,
               double *S0, double *S1, double *S2);

/*
 * tf_moments plus, in the same pass, counts[j] = N_j (Q,) and the coordinate-
 * wise extent of v = R_j x over cluster j, lo/hi (Q, M) (+inf / -inf for an
 * empty cluster).  counts, lo and hi may each be NULL.  The box lets the
 * caller prove separation without another pass (truncfast._separated).
 */
int tf_moments_box(const double *R, const double *b, const double *X, const int64_t *labels,
                   int64_t N, int64_t M, int64_t L, int64_t Q, int64_t chunk, int nthreads,
                   double *S0, double *S1, double *S2, double *counts, double *lo, double *hi);

/*
 * Separation check (docs/theory.md §6): counts[j, l] = number of points of cluster j
 * truncated in some direction at a layer l != j (along the composition).
 * counts: (Q, L).
 */
int tf_violations(const double *R, const double *b, const double *X, const int64_t *labels,
                  int64_t N, int64_t M, int64_t L, int64_t Q, int64_t chunk, int nthreads,
                  int64_t *counts);

/*
 * 1 if x[0..n-1] holds a NaN or an infinity, else 0 (exponent bits all set;
 * integer max over the bits, OpenMP over the array).  For input validation.
 */
int tf_any_nonfinite(const double *x, int64_t n, int nthreads);

/* ------------------------------------------------ unaligned weights (§13) */
/*
 * General invertible cumulative weights W (L, M, M) instead of orthogonal R
 * (docs/theory.md §13): tau_l(z) = W_l^{-1} ( max(W_l z + b_l, 0) - b_l ), an
 * oblique projection onto the cone W_l z + b_l >= 0.  Each call inverts every
 * W_l by Gauss-Jordan elimination with partial pivoting (the same loops as
 * truncfast's Numba kernels, so both give the same bits, and no LAPACK) and
 * returns TF_ERR_SINGULAR if some pivot is exactly 0.  Nothing here checks the
 * condition number: truncfast's Python API refuses W with cond > 1e10
 * (_config.UNALIGNED_MAX_CONDITION); results lose about log10(cond) digits.
 */

/* Winv (L, M, M) = the inverse of every W_l (Gauss-Jordan, partial pivoting). */
int tf_unaligned_inverse(const double *W, int64_t M, int64_t L, double *Winv);

/* tau^(L) of every row of X, out (N, M) (unaligned form of tf_truncate). */
int tf_unaligned_truncate(const double *W, const double *b, const double *X, int64_t N, int64_t M, int64_t L,
                          int64_t chunk, int nthreads, double *out);

/* Sector codes along the composition, codes (N, L): bit i of codes[n*L + l] is
 * H((W_l tau^(l-1)(x_n) + b_l)_i).  Needs M <= 64. */
int tf_unaligned_codes(const double *W, const double *b, const double *X, int64_t N, int64_t M, int64_t L,
                       int64_t chunk, int nthreads, uint64_t *codes);

/*
 * Euclidean loss and its plain gradients in (W, b) (docs/theory.md §13), raw sums
 * over the N points (divide by N):
 *   loss (scalar)  sum |tau^(L)(x_n) - T[labels[n]]|^2 / 2,   T (Q, M)
 *   gb   (L, M)    sum -(1 - h_l) . r_l                       (r_l = W_l^{-T} g_l)
 *   gW   (L, M, M) sum (h_l . r_l) z_{l-1}^T - r_l z_l^T
 * want_grad == 0 computes the loss only (gb, gW are then zero).
 */
int tf_unaligned_general(const double *W, const double *b, const double *X, const int64_t *labels,
                         int64_t N, int64_t M, int64_t L, int64_t Q, const double *T, int want_grad,
                         int64_t chunk, int nthreads, double *loss, double *gb, double *gW);

/* ------------------------------------------------------------ the flow */

/* Methods of tf_integrate and tf_retraction. */
#define TF_LIE_EULER 0    /* R_l <- exp(-dt omega_l) R_l      (exponential map) */
#define TF_CAYLEY 1       /* R_l <- (I + dt omega_l/2)^-1 (I - dt omega_l/2) R_l */

/*
 * The retraction F(A) of an antisymmetric M x M matrix A (docs/theory.md §9), row-major:
 *   method TF_LIE_EULER: out = exp(A).  M = 1: 1;  M = 2: the rotation by
 *     theta = (A[1][0] - A[0][1]) / 2;  M >= 3: scaling and squaring with the
 *     diagonal Pade approximant r_m, m in {3, 5, 7, 9, 13} chosen from |A|_1 by
 *     Higham's thresholds (SIAM J. Matrix Anal. Appl. 26, 2005), solved by LU
 *     with partial pivoting;
 *   method TF_CAYLEY: out = (I - A/2)^-1 (I + A/2).
 * Both are orthogonal to rounding for antisymmetric A (not checked: the
 * antisymmetric part of A is not taken).  The same operations in the same order
 * as truncfast's Python integrators (truncfast/_expm.py), hence the same bits.
 * Returns TF_ERR_SIZE (M < 1 or too large), TF_ERR_NULL, TF_ERR_ARG (method),
 * TF_ERR_NONFINITE (A not finite), TF_ERR_NOMEM.  out must not overlap A.
 */
int tf_retraction(const double *A, int64_t M, int method, double *out);

/*
 * Nearest orthogonal matrices: out_l = the polar factor U_l V_l^T of
 * R_l = U_l S_l V_l^T for each of the L row-major M x M matrices R_l (to
 * repair rotations that drifted; tf_integrate projects this way).  Computed
 * by Newton iterations X <- (X + X^-T)/2 while far from O(M), then
 * Newton-Schulz X <- X (3I - X^T X)/2 to rounding (|out^T out - I| ~ 1e-16).
 * out may be R itself.  Returns TF_ERR_SIZE (L < 1, M < 1, too large), TF_ERR_NULL,
 * TF_ERR_NONFINITE (R not finite), TF_ERR_SINGULAR (some R_l singular or too
 * ill-conditioned; out is then unspecified), TF_ERR_NOMEM.
 */
int tf_orthonormalize(const double *R, int64_t L, int64_t M, double *out);

/*
 * The whole fixed-step effective gradient flow of the Euclidean loss
 * C_E = (1/2N) sum_n |tau^(L)(x_n) - targets[labels[n]]|^2 (docs/theory.md §3, 5, 9):
 *   d b/ds = -grad_b,   d R_l/ds = -omega_l R_l,
 * with (grad_b, omega) = the general-form gradient of tf_general normalised
 * (grad_b = gb / N, omega_l = (G_l - G_l^T) / (2 N)).  Step k -> k + 1, with
 * the right-hand side at step k:
 *   b   <- b - dt * grad_b                      (if train_biases)
 *   R_l <- F(-dt * omega_l) R_l for every l      (if train_weights; F as in
 *                                                 tf_retraction)
 * then, if train_weights and max_l max|R_l^T R_l - I| > TF_REORTHONORMALIZE_TOL,
 * every R_l is replaced by its polar factor (tf_orthonormalize; also done once
 * to the initial R).  This is truncfast.integrate(..., backend="c") step for
 * step: the same bits while no re-orthonormalisation runs; truncfast's Python
 * integrator takes the polar factor from an SVD, so after a projection the
 * two differ by rounding (~1e-16), which stable steps keep at that level.
 *
 * Inputs (row-major float64 unless stated; never modified):
 *   R        (L, M, M)  initial orthogonal R_l, max|R_l^T R_l - I| <= TF_ORTHOGONALITY_TOL
 *   b        (L, M)     initial biases
 *   X        (N, M)     data, one point a row
 *   labels   (N,)       int64 cluster of each point, in 0..Q-1
 *   targets  (Q, M)     pulled-back labels (row j: cluster j's target)
 *   N, M, L, Q          sizes, all >= 1
 *   dt                  step size, finite and > 0
 *   steps               number of steps, >= 0
 *   method              TF_LIE_EULER or TF_CAYLEY
 *   train_weights       0: R stays bitwise unchanged (and is not re-orthonormalised)
 *   train_biases        0: b stays bitwise unchanged
 *   chunk               points per reduction chunk (TF_CHUNK_SIZE for truncfast's bits), >= 1
 *   nthreads            OpenMP threads of the gradient (<= 0: the default); never changes the bits
 * Outputs (caller-owned):
 *   R_out    (L, M, M)  final R (may be R itself: it is written only at the end)
 *   b_out    (L, M)     final b (may be b itself)
 *   loss     (steps+1,) loss[k] = C_E at step k
 *   steps_done          (may be NULL) number of steps completed
 *   reorthonormalizations  (may be NULL) how many times R was re-orthonormalised
 *
 * Returns TF_OK, or without touching the outputs: TF_ERR_SIZE (a size out of
 * range or too large to address), TF_ERR_NULL, TF_ERR_ARG (dt <= 0, unknown
 * method), TF_ERR_NONFINITE (NaN or +-inf in R, b, X, targets or dt),
 * TF_ERR_LABEL, TF_ERR_NOT_ORTHOGONAL, TF_ERR_NOMEM.
 * Divergence: when the loss or the gradient at step s is not finite, or the
 * loss exceeds TF_DIVERGENCE_LOSS_FACTOR times its reference, the run stops
 * with TF_ERR_DIVERGED; then R_out, b_out hold the last good state (step s - 1),
 * *steps_done = s - 1, loss[0..s] are written (loss[s] is the offending value)
 * and loss[s+1..steps] are NaN.  s = 0 (the initial state already has a
 * non-finite loss or gradient, *steps_done = -1) leaves the initial state in
 * R_out, b_out.  A smaller dt is the remedy: explicit Euler on the biases needs
 * dt < 2.  TF_ERR_NOMEM can also occur mid-run (then the outputs are unspecified).
 */
int tf_integrate(const double *R, const double *b, const double *X, const int64_t *labels,
                 const double *targets, int64_t N, int64_t M, int64_t L, int64_t Q,
                 double dt, int64_t steps, int method, int train_weights, int train_biases,
                 int64_t chunk, int nthreads,
                 double *R_out, double *b_out, double *loss, int64_t *steps_done,
                 int64_t *reorthonormalizations);

/* ------------------------------ pattern form (docs/theory.md section 11) --
 * Kernels of the groups kept across steps (csrc/tf_patterns.inc); the merging of
 * chunk groups, the margin buckets and the moves live in truncfast's Numba
 * module truncfast/_kernels/patterns.py, whose bits these reproduce.
 */

/*
 * Full pass, phase 1, over chunks c_first..c_last-1 of `chunk` points (slot
 * s = c - c_first): per point n its chunk-local group group_of[n] (groups of
 * equal (codes, label) numbered by first appearance in the chunk), its margin
 * min_{l,i} |u_{l,i}| rounded down to float (m32[n]) and
 * rho = max(|x|, |t_1|, .., |t_{L-1}|) rounded up (rho32[n]); per slot the
 * local keys lkeys (slots, chunk, L), labels llab (slots, chunk) and count
 * lcount (slots).  M <= 64.
 */
int tf_pattern_pass(const double *R, const double *b, const double *X, const int64_t *labels,
                    int64_t N, int64_t M, int64_t L, int64_t chunk, int64_t c_first, int64_t c_last,
                    int nthreads, int32_t *group_of, float *m32, float *rho32,
                    uint64_t *lkeys, int64_t *llab, int64_t *lcount);

/* Codes (K, L), margins and rho (K,) of the K rows of X (re-checked points). */
int tf_pattern_stats(const double *R, const double *b, const double *X, int64_t K, int64_t M, int64_t L,
                     int64_t chunk, int nthreads, uint64_t *codes, float *m32, float *rho32);

/*
 * Full pass, phase 2: count ln, mean lmean (M) and centred scatter lscat (M, M)
 * of every chunk-local group; local group g of slot s is entry loff[s] + g.
 */
int tf_pattern_local_moments(const double *X, const int32_t *group_of, int64_t N, int64_t M, int64_t chunk,
                             int64_t c_first, int64_t c_last, int nthreads, const int64_t *loff,
                             int64_t *ln, double *lmean, double *lscat);

/*
 * Loss and gradient sums of the Euclidean loss from G groups (docs/theory.md 11):
 * keys (G, L) patterns, labs (G,), tn (G,) counts (0: skipped), tmean (G, M),
 * tscat (G, M, M), targets T (Q, M).  Raw sums like tf_general: loss = sum of
 * n|e|^2/2 + tr(A C A^T)/2, gb (L, M), G (L, M, M) (not antisymmetrised);
 * groups summed in blocks of blk, block sums added in order.
 */
int tf_pattern_assemble(const double *R, const double *b, const double *T, const uint64_t *keys,
                        const int64_t *labs, const int64_t *tn, const double *tmean, const double *tscat,
                        int64_t G, int64_t M, int64_t L, int64_t blk, int nthreads,
                        double *loss, double *gb, double *Gm);

/* END CDEF */

#ifdef __cplusplus
}
#endif

#endif /* TRUNCFAST_H */
