/*
 * truncfast.h -- the C core of truncfast: truncation maps and the effective
 * gradient flow of deep ReLU networks in input space (docs: THEORY.md).
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
 *     a call; nthreads <= 0 means the OpenMP default (OMP_NUM_THREADS).  With the same `chunk`, the results have the same
 *     bits as truncfast's Numba kernels.
 *   - Gradient sums are returned raw (not divided by N, G not antisymmetrised):
 *     the effective flow is grad_b = gb / N, omega_l = (G_l - G_l^T) / (2 N),
 *     loss = loss_sum / N (THEORY.md section 5).
 *
 * Thread safety: every function is reentrant (no global state).
 */
#ifndef TRUNCFAST_H
#define TRUNCFAST_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* BEGIN CDEF: from here to END CDEF, only integer #defines and prototypes
 * (truncfast/_build_ccore.py feeds this region to cffi). */

/* ------------------------------------------------------------------ status */
#define TF_OK 0
#define TF_ERR_SIZE 1     /* a size is out of range (M < 1, L < 1, N < 0, chunk < 1, ...) */
#define TF_ERR_NULL 2     /* a required pointer is NULL */
#define TF_ERR_NOMEM 3    /* scratch memory could not be allocated */
#define TF_ERR_LABEL 4    /* a label is outside 0..Q-1 */
#define TF_ERR_WIDTH 5    /* sector codes need M <= 64 */

/* Points per SIMD block inside a chunk (must equal truncfast's _config.BLOCK_SIZE
 * for bitwise agreement with the Numba kernels: layers where no point of a block
 * is truncated are skipped, which leaves finite sums unchanged). */
#define TF_BLOCK_SIZE 64

/* Accumulator lanes of the bias and pair sums of tf_general (must equal
 * truncfast's _config.ACC_LANES for bitwise agreement): point p of a chunk
 * adds into lane (p - chunk start) % TF_ACC_LANES; lanes are added in order. */
#define TF_ACC_LANES 8

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
 * Truncation map tau^(L) = tau_L o ... o tau_1 of every row of X (THEORY 2, 4):
 *   tau_l(z) = R_l^T ( max(R_l z + b_l, 0) - b_l ).
 * out: (N, M).
 */
int tf_truncate(const double *R, const double *b, const double *X,
                int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads, double *out);

/*
 * Sector codes along the composition (THEORY 2): bit i of codes[n*L + l] is
 * H((R_l tau^(l-1)(x_n) + b_l)_i).  Needs M <= 64.  codes: (N, L).
 */
int tf_codes(const double *R, const double *b, const double *X,
             int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads, uint64_t *codes);

/*
 * Loss and gradient sums of the general effective flow (THEORY 5).
 *
 * standard == 0 (Euclidean loss, THEORY 3): residual z_L - T[labels[n]],
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
 * Raw constrained moments of the separated form (THEORY 6): cluster j is
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
 * Separation check (THEORY 6): counts[j, l] = number of points of cluster j
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

/* ------------------------------ pattern form (docs/theory.md section 11) --
 * Kernels of the groups kept across steps (csrc/tf_patterns.c); the merging of
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
