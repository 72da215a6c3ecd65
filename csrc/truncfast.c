/*
 * truncfast.c -- C99 + OpenMP port of truncfast/_kernels_numba.py.
 *
 * The algorithm and the order of every floating-point operation are those of
 * the Numba kernels, so that both give the same bits (the loop structure and
 * the scratch layout are not: see "register tiles" below and DESIGN.md):
 *
 *   - The N points are split into fixed chunks of `chunk` points; a chunk is
 *     processed sequentially by one thread into its own partial sums, and the
 *     partials are added to the totals in chunk order (THEORY 5, DESIGN.md
 *     "Determinism").  Chunks are handed out in batches that bound the memory
 *     of the partials; batching never changes the order of the additions.
 *   - Inside a chunk, points are processed in blocks of TF_BLOCK_SIZE points;
 *     sums over points run in one lane per point of the block.  A block is
 *     walked in register tiles of VL points (TG tiles in lockstep) through all
 *     layers: every matrix-vector product keeps an output row in a vector
 *     register while it sums over k in ascending order -- the same operations
 *     as the Numba kernel's axpys over the block, without reassociating any
 *     sum.  Scratch is stored tile-major (AT() below).
 *   - The forward pass uses transfer matrices S_l = R_{l+1} R_l^T:
 *       v_1 = R_1 x,  v_{l+1} = S_l t_l,  z_L = R_L^T t_L,
 *     and the backward pass r_{l-1} = S_{l-1}^T (h_l . r_l) (THEORY 5).
 *   - Layers at which no point of a block is truncated add nothing to the
 *     gradient and are skipped, as is everything below the lowest truncating
 *     layer of the block (THEORY 5, structural facts).
 *
 * Must be compiled without floating-point contraction (-ffp-contract=off) and
 * without -ffast-math: an FMA or a reassociated sum changes the bits.
 */
#include "truncfast.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define B TF_BLOCK_SIZE
/* Points per register tile inside a block: one AVX-512 vector of doubles (two
 * AVX2 or four SSE2 vectors in the other clones).  The hot loops are written
 * with GCC/Clang vector extensions, so every tile operation is one vector
 * instruction on an accumulator held in a register; element-wise vector
 * arithmetic without contraction is exactly the scalar arithmetic, lane by
 * lane, so the bits do not change. */
#define VL 8
/* Tiles processed in lockstep: their sums over k are independent, so they
 * interleave and hide the latency of each tile's chain of additions. */
#ifndef TG
#define TG 2
#endif
#if B % (VL * TG) != 0
#error "TF_BLOCK_SIZE must be a multiple of VL * TG"
#endif
#if !defined(__GNUC__)
#error "the C core needs GCC or Clang vector extensions (the Numba backend works without it)"
#endif
typedef double vd __attribute__((vector_size(VL * sizeof(double)), aligned(sizeof(double)), may_alias));
typedef int64_t vi __attribute__((vector_size(VL * sizeof(int64_t)), aligned(sizeof(int64_t)), may_alias));
#define VLOAD(p) (*(const vd *)(p))
#define VSTORE(p, v) (*(vd *)(p) = (v))
/* Scratch arrays of `rows` x B points are stored tile-major, (B / VL, rows, VL):
 * the VL points of a tile are contiguous per row and the rows of a tile are
 * contiguous, so a tile's working set is a few consecutive cache lines.
 * (Row-major (rows, B) put consecutive rows 512 bytes apart; their loads and
 * stores then collide in the same L1 sets and in 4 KiB store-forwarding
 * aliasing, measured 2x slower.)  AT(rows, r, p) is element (r, p). */
#define AT(rows, r, p) ((((int64_t)(p) / VL) * (rows) + (r)) * VL + (int64_t)(p) % VL)
/* Bitwise select: m ? x : y for a lane mask m of all-ones / all-zeros. */
static inline vd vselect(vi m, vd x, vd y) { return (vd)(((vi)x & m) | ((vi)y & ~m)); }

/* Upper bound (bytes) of the per-chunk partial sums held at once; it sets the
 * batch size only, never the bits.  Larger than Numba's budget on purpose:
 * every batch ends in a barrier where a thread waits for the slowest one
 * (measured: on a loaded machine the waits cost 20% at M = 64), so the C core
 * prefers few batches -- usually one -- at the price of a few MB. */
#define TF_PARTIALS_BUDGET ((int64_t)64 << 20)

/* Hot loops get AVX-512 (x86-64-v4) and AVX2 (x86-64-v3) clones next to the
 * baseline one on x86-64 with GCC, selected at load time for the running CPU:
 * portable binaries that still use wide vectors (measured: 1.6x faster than
 * baseline SSE2 at M = 8).  The clones compute exactly the same bits, since
 * -ffp-contract=off forbids FMA contraction and no sum is reassociated. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(TF_NO_CLONES) \
    && (__GNUC__ >= 12)
#define TF_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(TF_NO_CLONES) \
    && (__GNUC__ >= 6)
#define TF_HOT __attribute__((target_clones("avx2", "default")))
#else
#define TF_HOT
#endif

/* Kernel bodies inlined into their specialised, cloned callers. */
#if defined(__GNUC__)
#define TF_INLINE static inline __attribute__((always_inline))
#else
#define TF_INLINE static inline
#endif

#ifdef _OPENMP
#define TF_THREAD() omp_get_thread_num()
#define TF_MAXTHREADS() omp_get_max_threads()
#else
#define TF_THREAD() 0
#define TF_MAXTHREADS() 1
#endif

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ------------------------------------------------------------ info helpers */

const char *tf_status_string(int status)
{
    switch (status) {
    case TF_OK: return "ok";
    case TF_ERR_SIZE: return "a size argument is out of range";
    case TF_ERR_NULL: return "a required pointer is NULL";
    case TF_ERR_NOMEM: return "out of memory";
    case TF_ERR_LABEL: return "a label is outside 0..Q-1";
    case TF_ERR_WIDTH: return "sector codes need M <= 64";
    default: return "unknown status";
    }
}

int tf_block_size(void) { return B; }

int tf_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int tf_max_threads(void) { return TF_MAXTHREADS(); }

/* ------------------------------------------------------------- scratch ---- */

/* Per-thread scratch of one chunk: O(L M block), never O(N).
 *   U, Hm, Tt (L, M, B): u_l, h_l (1.0 / 0.0), t_l = h_l . u_l - b_l;
 *   Z, E, Ra, Rb (M, B): z_L, e, r_l (then h_l . r_l), r_{l-1};  res (P, B): standard residual;
 *   Dacc (L, M, B), Kacc (L, M(M-1)/2, B): per-lane sums of (1 - h) . r and of the
 *   antisymmetric pair terms (only when the gradient is wanted; see general_chunk). */
typedef struct {
    double *U, *Hm, *Tt, *Z, *E, *Ra, *Rb, *res, *Dacc, *Kacc;
    int64_t *ntr; /* (L,) 1 if some point of the block is truncated at layer l, else 0 */
} work_t;

static size_t work_doubles(int64_t M, int64_t L, int64_t P, int with_grad)
{
    const int64_t acc = with_grad ? L * M * B + L * (M * (M - 1) / 2) * B : 0;
    return (size_t)(3 * L * M * B + 4 * M * B + P * B + acc + L);
}

static void work_bind(work_t *w, double *base, int64_t M, int64_t L, int64_t P, int with_grad)
{
    double *q = base;
    w->U = q; q += L * M * B;
    w->Hm = q; q += L * M * B;
    w->Tt = q; q += L * M * B;
    w->Z = q; q += M * B;
    w->E = q; q += M * B;
    w->Ra = q; q += M * B;
    w->Rb = q; q += M * B;
    w->res = q; q += P * B;
    w->Dacc = q; q += with_grad ? L * M * B : 0;
    w->Kacc = q; q += with_grad ? L * (M * (M - 1) / 2) * B : 0;
    w->ntr = (int64_t *)q; /* L slots, sizeof(int64_t) == sizeof(double) */
}

/* ------------------------------------------------------ common pieces ---- */

static int check_common(const double *R, const double *b, const double *X,
                        int64_t N, int64_t M, int64_t L, int64_t chunk)
{
    if (M < 1 || L < 1 || N < 0 || chunk < 1) return TF_ERR_SIZE;
    if (!R || !b || (N > 0 && !X)) return TF_ERR_NULL;
    return TF_OK;
}

static int check_labels(const int64_t *labels, int64_t N, int64_t Q)
{
    if (N > 0 && !labels) return TF_ERR_NULL;
    for (int64_t n = 0; n < N; n++)
        if (labels[n] < 0 || labels[n] >= Q) return TF_ERR_LABEL;
    return TF_OK;
}

/* S_l = R_{l+1} R_l^T for l = 0..L-2 (sequential sums over k, as Numba). */
static double *transfer_matrices(const double *R, int64_t M, int64_t L)
{
    size_t n = (size_t)(L > 1 ? L - 1 : 1) * (size_t)(M * M);
    double *S = (double *)malloc(n * sizeof(double));
    if (!S) return NULL;
    for (int64_t l = 0; l + 1 < L; l++) {
        const double *Ra = R + (l + 1) * M * M, *Rl = R + l * M * M;
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < M; j++) {
                double s = 0.0;
                for (int64_t k = 0; k < M; k++) s += Ra[i * M + k] * Rl[j * M + k];
                S[l * M * M + i * M + j] = s;
            }
    }
    return S;
}

/* Threads of a call: nthreads > 0 as asked (1 without OpenMP), else the OpenMP default. */
static int threads_for(int nthreads)
{
#ifdef _OPENMP
    return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    (void)nthreads;
    return 1;
#endif
}

/* Batch of chunks whose partials are held at once: as many as the memory
 * budget allows, at least one per thread (the bits never depend on it). */
static int64_t batch_size(int64_t nchunks, int64_t bytes_per_chunk, int64_t threads)
{
    int64_t cap = TF_PARTIALS_BUDGET / max64(1, bytes_per_chunk);
    return max64(1, min64(nchunks, max64(cap, threads)));
}

/*
 * Forward pass of THEORY 5 for the nb points p0.. of a block (transposed):
 *   v = A src, u = v + b_l, h = H(u), t = h ? u - b_l : -b_l,  z_L = R_L^T t_L
 * (z_L only when want_z: the Euclidean gradient works in the last layer's frame).
 *
 * The block is walked in groups of TG tiles of VL points through all L layers,
 * each output row held in a VL-wide register accumulator per tile while k
 * runs: the sum over k is the same sequence of operations as the axpy form of
 * the Numba kernel (0.0 + a_0 s_0 + a_1 s_1 + ...), so the bits are equal, but
 * the row is loaded and stored once instead of M times.  Lanes beyond nb (in
 * the last tile or group) compute on stale but finite scratch (Z is zeroed at
 * the start of each chunk) and are never counted; their r is 0 in the
 * backward pass, so they add exactly nothing.
 */
TF_INLINE
void forward_block(const double *restrict R, const double *restrict S,
                          const double *restrict b, const double *restrict X,
                          int64_t M, int64_t L, int64_t p0, int nb, work_t *w, int want_z)
{
    double *Z = w->Z; /* not restrict: read again below as src of layer 0 */
    const vd zero = {0.0}, one = zero + 1.0;
    for (int64_t l = 0; l < L; l++) w->ntr[l] = 0;
    for (int q0 = 0; q0 < nb; q0 += VL * TG) {
        vi valid[TG]; /* lanes of real points */
        for (int g = 0; g < TG; g++)
            for (int q = 0; q < VL; q++) valid[g][q] = q0 + g * VL + q < nb ? -1 : 0;
        for (int q = q0; q < nb && q < q0 + VL * TG; q++)
            for (int64_t k = 0; k < M; k++) Z[AT(M, k, q)] = X[(p0 + q) * M + k];
        for (int64_t l = 0; l < L; l++) {
            double *restrict V = w->U + l * M * B + q0 * M;
            double *restrict Hl = w->Hm + l * M * B + q0 * M;
            double *restrict Tl = w->Tt + l * M * B + q0 * M;
            const double *restrict A = l == 0 ? R : S + (l - 1) * M * M;
            const double *src = (l == 0 ? Z : w->Tt + (l - 1) * M * B) + q0 * M;
            vi trunc = {0}; /* lanes truncated in some direction */
            for (int64_t i = 0; i < M; i++) {
                vd acc[TG];
                for (int g = 0; g < TG; g++) acc[g] = zero;
                for (int64_t k = 0; k < M; k++) {
                    const double a = A[i * M + k];
                    for (int g = 0; g < TG; g++) acc[g] += a * VLOAD(src + g * M * VL + k * VL);
                }
                const double bi = b[l * M + i];
                for (int g = 0; g < TG; g++) {
                    const vd u = acc[g] + bi;
                    const vi pos = u > zero; /* H(0) = 0 */
                    const int64_t o = g * M * VL + i * VL;
                    VSTORE(V + o, u);
                    VSTORE(Hl + o, vselect(pos, one, zero));
                    VSTORE(Tl + o, vselect(pos, u - bi, zero - bi));
                    trunc |= ~pos & valid[g];
                }
            }
            int64_t any = 0;
            for (int q = 0; q < VL; q++) any |= trunc[q];
            w->ntr[l] |= any != 0;
        }
        if (!want_z) continue;
        const double *restrict RL = R + (L - 1) * M * M;
        const double *restrict TL = w->Tt + (L - 1) * M * B + q0 * M;
        for (int64_t k = 0; k < M; k++) {
            vd acc[TG];
            for (int g = 0; g < TG; g++) acc[g] = zero;
            for (int64_t i = 0; i < M; i++) {
                const double a = RL[i * M + k];
                for (int g = 0; g < TG; g++) acc[g] += a * VLOAD(TL + g * M * VL + i * VL);
            }
            for (int g = 0; g < TG; g++) VSTORE(Z + (q0 + g * VL) * M + k * VL, acc[g]);
        }
    }
}

/* forward_block for the truncate / codes / violations passes, specialised likewise. */
TF_HOT
static void forward_any(const double *restrict R, const double *restrict S,
                        const double *restrict b, const double *restrict X,
                        int64_t M, int64_t L, int64_t p0, int nb, work_t *w, int want_z)
{
    switch (M) {
    case 2: forward_block(R, S, b, X, 2, L, p0, nb, w, want_z); break;
    case 4: forward_block(R, S, b, X, 4, L, p0, nb, w, want_z); break;
    case 8: forward_block(R, S, b, X, 8, L, p0, nb, w, want_z); break;
    case 16: forward_block(R, S, b, X, 16, L, p0, nb, w, want_z); break;
    default: forward_block(R, S, b, X, M, L, p0, nb, w, want_z);
    }
}

/* ------------------------------------------------------ truncate / codes -- */

static void truncate_chunk(const double *R, const double *S, const double *b, const double *X,
                           int64_t M, int64_t L, int64_t start, int64_t stop, work_t *w,
                           double *out, uint64_t *codes)
{
    for (int64_t p0 = start; p0 < stop; p0 += B) {
        const int nb = (int)min64(B, stop - p0);
        forward_any(R, S, b, X, M, L, p0, nb, w, codes == NULL);
        if (codes) {
            for (int p = 0; p < nb; p++)
                for (int64_t l = 0; l < L; l++) {
                    uint64_t c = 0;
                    for (int64_t i = 0; i < M; i++)
                        if (w->Hm[l * M * B + AT(M, i, p)] > 0.0) c |= (uint64_t)1 << i;
                    codes[(p0 + p) * L + l] = c;
                }
        } else {
            for (int p = 0; p < nb; p++)
                for (int64_t k = 0; k < M; k++) out[(p0 + p) * M + k] = w->Z[AT(M, k, p)];
        }
    }
}

static int truncate_or_codes(const double *R, const double *b, const double *X,
                             int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads,
                             double *out, uint64_t *codes)
{
    const int64_t nchunks = (N + chunk - 1) / chunk;
    nthreads = threads_for(nthreads);
    const size_t wsz = work_doubles(M, L, 0, 0);
    double *S = transfer_matrices(R, M, L);
    double *ws = (double *)malloc((size_t)nthreads * wsz * sizeof(double));
    if (!S || !ws) {
        free(S);
        free(ws);
        return TF_ERR_NOMEM;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nchunks > 1)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        work_t w;
        work_bind(&w, ws + (size_t)TF_THREAD() * wsz, M, L, 0, 0);
        truncate_chunk(R, S, b, X, M, L, c * chunk, min64(N, (c + 1) * chunk), &w, out, codes);
    }
    free(S);
    free(ws);
    return TF_OK;
}

int tf_truncate(const double *R, const double *b, const double *X,
                int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads, double *out)
{
    int st = check_common(R, b, X, N, M, L, chunk);
    if (st) return st;
    if (N > 0 && !out) return TF_ERR_NULL;
    return truncate_or_codes(R, b, X, N, M, L, chunk, nthreads, out, NULL);
}

int tf_codes(const double *R, const double *b, const double *X,
             int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads, uint64_t *codes)
{
    int st = check_common(R, b, X, N, M, L, chunk);
    if (st) return st;
    if (M > 64) return TF_ERR_WIDTH;
    if (N > 0 && !codes) return TF_ERR_NULL;
    return truncate_or_codes(R, b, X, N, M, L, chunk, nthreads, NULL, codes);
}

/* ---------------------------------------------------------------- general -- */

/*
 * Sequential sum over points start..stop-1 of the THEORY 5 contributions
 * (port of _kernels_numba.general_chunk, same operation order).  gb, G, gW,
 * gbo must be zero on entry; returns the raw loss sum of |res|^2 / 2.  G comes
 * back strictly upper triangular with P_A(G) equal to P_A of the sum of the
 * per-point G_l contributions:
 *   P_A(G)_ik = 1/2 [ sum_p (h_i - h_k)(r_i u_k + u_i r_k) + D_i b_k - b_i D_k ],
 *   D = sum_p (1 - h) . r = -(grad_b sum).
 * Each sum over points runs in B interleaved lanes (point p of a block feeds
 * lane p) added in order at the end of the chunk: vectorisable, and the same
 * bits for any thread count.
 */
TF_INLINE
double general_chunk_impl(const double *restrict R, const double *restrict S,
                            const double *restrict b, const double *restrict X,
                            const int64_t *restrict labels, const double *restrict T,
                            const double *restrict W, const double *restrict bout,
                            const double *restrict Y, int64_t M, int64_t L, int64_t P,
                            int standard, int want_grad, int64_t start, int64_t stop, work_t *w,
                            double *restrict gb, double *restrict G, double *restrict gW,
                            double *restrict gbo)
{
    double *Z = w->Z; /* written by forward_block through w: not restrict */
    double *restrict E = w->E, *restrict res = w->res;
    const int64_t npairs = M * (M - 1) / 2;
    double loss = 0.0;
    /* zero-filled so that the padded tail columns of a partial block stay finite */
    memset(w->U, 0, (size_t)(L * M * B) * sizeof(double));
    memset(w->Hm, 0, (size_t)(L * M * B) * sizeof(double));
    memset(w->Z, 0, (size_t)(M * B) * sizeof(double)); /* finite tail lanes of a partial tile */
    if (want_grad) {
        memset(w->Dacc, 0, (size_t)(L * M * B) * sizeof(double));
        memset(w->Kacc, 0, (size_t)(L * npairs * B) * sizeof(double));
    }
    for (int64_t p0 = start; p0 < stop; p0 += B) {
        const int nb = (int)min64(B, stop - p0);
        forward_block(R, S, b, X, M, L, p0, nb, w, standard);
        /* residual, loss and error vector e = g_L */
        if (standard) {
            for (int64_t q = 0; q < P; q++) {
                double *restrict rq = res + q * B;
                for (int p = 0; p < nb; p++) rq[p] = bout[q] - Y[labels[p0 + p] * P + q];
                for (int64_t k = 0; k < M; k++) {
                    const double wq = W[q * M + k];
                    for (int p = 0; p < nb; p++) rq[p] += wq * Z[AT(M, k, p)];
                }
            }
            for (int p = 0; p < nb; p++) {
                double s = 0.0;
                for (int64_t q = 0; q < P; q++) s += res[q * B + p] * res[q * B + p];
                loss += 0.5 * s;
            }
            if (!want_grad) continue;
            for (int64_t q = 0; q < P; q++)
                for (int p = 0; p < nb; p++) {
                    const double rq = res[q * B + p];
                    gbo[q] += rq;
                    for (int64_t k = 0; k < M; k++) gW[q * M + k] += rq * Z[AT(M, k, p)];
                }
            for (int64_t k = 0; k < M; k++)
                for (int p = 0; p < nb; p++) E[AT(M, k, p)] = 0.0;
            for (int64_t q = 0; q < P; q++)
                for (int64_t k = 0; k < M; k++) {
                    const double wq = W[q * M + k];
                    for (int p = 0; p < nb; p++) E[AT(M, k, p)] += wq * res[q * B + p];
                }
        } else {
            /* Euclidean loss in the last layer's frame: T holds y'_j = R_L y_j
             * (see tf_general), z_L = R_L^T t_L, so |e| = |t_L - y'_j| and
             * r_L = R_L e = t_L - y'_j */
            const double *restrict TL = w->Tt + (L - 1) * M * B;
            for (int p = 0; p < nb; p++) {
                const double *restrict Tj = T + labels[p0 + p] * M;
                double s = 0.0;
                for (int64_t k = 0; k < M; k++) {
                    const double d = TL[AT(M, k, p)] - Tj[k];
                    E[AT(M, k, p)] = d;
                    s += d * d;
                }
                loss += 0.5 * s;
            }
            if (!want_grad) continue;
        }
        /* below the lowest truncating layer every contribution vanishes */
        int64_t lowest = L;
        for (int64_t l = 0; l < L; l++)
            if (w->ntr[l] > 0) {
                lowest = l;
                break;
            }
        if (lowest == L) continue;
        /* Backward pass tile by tile (VL points), through every layer from L
         * down to the lowest truncating one, with r held in an (M, VL) tile.
         * The per-lane accumulators Dacc/Kacc and every sum over i or k receive
         * the same operations in the same order as the Numba kernel's block-wide
         * loops (lanes are independent), and the layer skips are decided per
         * block as there, so the bits are equal. */
        double *Ra = w->Ra, *Rb = w->Rb; /* (M, VL) tiles, swapped per layer: not restrict */
        const vd zero = {0.0}, one = zero + 1.0;
        const double *restrict RL = R + (L - 1) * M * M;
        for (int q0 = 0; q0 < nb; q0 += VL * TG) {
            /* r_L = R_L e (already in E for the Euclidean loss); lanes of no point are 0 */
            for (int g = 0; g < TG; g++) {
                const int t0 = q0 + g * VL, nq = nb - t0 < 0 ? 0 : nb - t0 < VL ? nb - t0 : VL;
                double *Rg = Ra + g * M * VL;
                for (int64_t i = 0; i < M; i++) {
                    double acc[VL];
                    for (int q = 0; q < VL; q++) acc[q] = 0.0;
                    if (standard) {
                        for (int64_t k = 0; k < M; k++) {
                            const double a = RL[i * M + k];
                            for (int q = 0; q < nq; q++) acc[q] += a * E[AT(M, k, t0 + q)];
                        }
                    } else {
                        for (int q = 0; q < nq; q++) acc[q] = E[AT(M, i, t0 + q)];
                    }
                    for (int q = 0; q < VL; q++) Rg[i * VL + q] = acc[q];
                }
            }
            for (int64_t l = L - 1; l >= lowest; l--) {
                if (w->ntr[l] > 0) {
                    for (int g = 0; g < TG; g++) {
                        const int64_t t0 = q0 + g * VL;
                        const double *Hl = w->Hm + l * M * B + t0 * M;
                        const double *Ul = w->U + l * M * B + t0 * M;
                        double *Dl = w->Dacc + l * M * B + t0 * M;
                        double *Kl = w->Kacc + l * npairs * B + t0 * npairs;
                        double *Rg = Ra + g * M * VL;
                        for (int64_t i = 0; i < M; i++)
                            VSTORE(Dl + i * VL, VLOAD(Dl + i * VL) + (one - VLOAD(Hl + i * VL)) * VLOAD(Rg + i * VL));
                        int64_t pair = 0;
                        for (int64_t i = 0; i < M; i++) {
                            const vd hi = VLOAD(Hl + i * VL), ui = VLOAD(Ul + i * VL), ri = VLOAD(Rg + i * VL);
                            for (int64_t k = i + 1; k < M; k++, pair++) {
                                const vd hk = VLOAD(Hl + k * VL), uk = VLOAD(Ul + k * VL), rk = VLOAD(Rg + k * VL);
                                VSTORE(Kl + pair * VL, VLOAD(Kl + pair * VL) + (hi - hk) * (ri * uk + ui * rk));
                            }
                        }
                        /* h . r: exact (h is 0 or 1), and equal to r where untruncated */
                        for (int64_t i = 0; i < M; i++) VSTORE(Rg + i * VL, VLOAD(Rg + i * VL) * VLOAD(Hl + i * VL));
                    }
                }
                if (l > lowest) {
                    /* r_{l-1} = S_{l-1}^T (h_l . r_l), summed over i in order; the TG
                     * tiles' independent sums interleave to hide the add latency */
                    const double *restrict Sl = S + (l - 1) * M * M;
                    for (int64_t j = 0; j < M; j++) {
                        vd acc[TG];
                        for (int g = 0; g < TG; g++) acc[g] = zero;
                        for (int64_t i = 0; i < M; i++) {
                            const double a = Sl[i * M + j];
                            for (int g = 0; g < TG; g++) acc[g] += a * VLOAD(Ra + g * M * VL + i * VL);
                        }
                        for (int g = 0; g < TG; g++) VSTORE(Rb + g * M * VL + j * VL, acc[g]);
                    }
                    double *tmp = Ra;
                    Ra = Rb;
                    Rb = tmp;
                }
            }
        }
    }
    if (want_grad) {
        for (int64_t l = 0; l < L; l++) {
            const double *restrict Dl = w->Dacc + l * M * B;
            const double *restrict Kl = w->Kacc + l * npairs * B;
            const double *restrict bl = b + l * M;
            double *restrict Gl = G + l * M * M;
            double *restrict Dc = w->E; /* reuse: e is dead here */
            for (int64_t i = 0; i < M; i++) {
                double acc = 0.0;
                for (int q = 0; q < B; q++) acc += Dl[AT(M, i, q)];
                Dc[i] = acc;
                gb[l * M + i] -= acc;
            }
            int64_t pair = 0;
            for (int64_t i = 0; i < M; i++)
                for (int64_t k = i + 1; k < M; k++, pair++) {
                    double acc = 0.0;
                    for (int q = 0; q < B; q++) acc += Kl[AT(npairs, pair, q)];
                    Gl[i * M + k] += acc + (Dc[i] * bl[k] - bl[i] * Dc[k]);
                }
        }
    }
    return loss;
}

/* general_chunk_impl with M a compile-time constant for the common narrow
 * widths, so the compiler can unroll the loops over rows (the signature is
 * the impl's: a dispatcher, not a second kernel).  Same operations, same bits. */
TF_HOT
static double general_chunk(const double *restrict R, const double *restrict S,
                            const double *restrict b, const double *restrict X,
                            const int64_t *restrict labels, const double *restrict T,
                            const double *restrict W, const double *restrict bout,
                            const double *restrict Y, int64_t M, int64_t L, int64_t P,
                            int standard, int want_grad, int64_t start, int64_t stop, work_t *w,
                            double *restrict gb, double *restrict G, double *restrict gW,
                            double *restrict gbo)
{
#define TF_CASE(m)                                                                                  \
    case m:                                                                                         \
        return general_chunk_impl(R, S, b, X, labels, T, W, bout, Y, m, L, P, standard, want_grad, \
                                  start, stop, w, gb, G, gW, gbo);
    switch (M) {
        TF_CASE(2)
        TF_CASE(4)
        TF_CASE(8)
        TF_CASE(16)
    default:
        return general_chunk_impl(R, S, b, X, labels, T, W, bout, Y, M, L, P, standard, want_grad,
                                  start, stop, w, gb, G, gW, gbo);
    }
#undef TF_CASE
}

int tf_general(const double *R, const double *b, const double *X, const int64_t *labels,
               int64_t N, int64_t M, int64_t L, int64_t Q,
               const double *T, const double *W, const double *bout, const double *Y, int64_t P,
               int standard, int want_grad, int64_t chunk, int nthreads,
               double *loss, double *gb, double *G, double *gW, double *gbo)
{
    int st = check_common(R, b, X, N, M, L, chunk);
    if (st) return st;
    if (Q < 1 || P < 0) return TF_ERR_SIZE;
    if (!standard) P = 0; /* no output layer in the Euclidean loss */
    if (!loss || !gb || !G) return TF_ERR_NULL;
    if (standard && (P > 0 && (!W || !bout || !Y || !gW || !gbo))) return TF_ERR_NULL;
    if (!standard && !T) return TF_ERR_NULL;
    if ((st = check_labels(labels, N, Q))) return st;

    const int64_t LM = L * M, LMM = L * M * M, PM = P * M;
    memset(gb, 0, (size_t)LM * sizeof(double));
    memset(G, 0, (size_t)LMM * sizeof(double));
    if (P > 0) {
        memset(gW, 0, (size_t)PM * sizeof(double));
        memset(gbo, 0, (size_t)P * sizeof(double));
    }
    *loss = 0.0;
    if (N == 0) return TF_OK;

    const int64_t nchunks = (N + chunk - 1) / chunk;
    /* one partial record per chunk of the batch: loss, gb, G, gW, gbo */
    const int64_t rec = 1 + LM + LMM + PM + P;
    nthreads = threads_for(nthreads);
    const int64_t batch = batch_size(nchunks, 8 * rec, nthreads);
    const size_t wsz = work_doubles(M, L, P, want_grad);
    /* Euclidean loss: targets in the last layer's frame, y'_j = R_L y_j (same
     * operation order as _kernels_numba.general_chunk) */
    double *Ty = NULL;
    if (!standard) {
        Ty = (double *)malloc((size_t)(Q * M) * sizeof(double));
        if (!Ty) return TF_ERR_NOMEM;
        const double *RLast = R + (L - 1) * M * M;
        for (int64_t j = 0; j < Q; j++)
            for (int64_t i = 0; i < M; i++) {
                double acc = 0.0;
                for (int64_t k = 0; k < M; k++) acc += RLast[i * M + k] * T[j * M + k];
                Ty[j * M + i] = acc;
            }
        T = Ty;
    }
    double *S = transfer_matrices(R, M, L);
    double *ws = (double *)malloc((size_t)nthreads * wsz * sizeof(double));
    double *part = (double *)malloc((size_t)batch * (size_t)rec * sizeof(double));
    if (!S || !ws || !part) {
        free(S);
        free(ws);
        free(part);
        free(Ty);
        return TF_ERR_NOMEM;
    }
    double total_loss = 0.0;
    for (int64_t c0 = 0; c0 < nchunks; c0 += batch) {
        const int64_t nbatch = min64(batch, nchunks - c0);
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nbatch > 1)
#endif
        {
            work_t w;
            work_bind(&w, ws + (size_t)TF_THREAD() * wsz, M, L, P, want_grad);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t s = 0; s < nbatch; s++) {
                double *pr = part + s * rec;
                memset(pr, 0, (size_t)rec * sizeof(double));
                const int64_t c = c0 + s;
                pr[0] = general_chunk(R, S, b, X, labels, T, W, bout, Y, M, L, P, standard,
                                      want_grad, c * chunk, min64(N, (c + 1) * chunk), &w,
                                      pr + 1, pr + 1 + LM, pr + 1 + LM + LMM,
                                      pr + 1 + LM + LMM + PM);
            }
        }
        /* fixed chunk order: thread-count independent bits */
        for (int64_t s = 0; s < nbatch; s++) {
            const double *pr = part + s * rec;
            total_loss += pr[0];
            if (!want_grad) continue;
            for (int64_t e = 0; e < LM; e++) gb[e] += pr[1 + e];
            for (int64_t e = 0; e < LMM; e++) G[e] += pr[1 + LM + e];
            for (int64_t e = 0; e < PM; e++) gW[e] += pr[1 + LM + LMM + e];
            for (int64_t e = 0; e < P; e++) gbo[e] += pr[1 + LM + LMM + PM + e];
        }
    }
    *loss = total_loss;
    free(S);
    free(ws);
    free(part);
    free(Ty);
    return TF_OK;
}

/* ---------------------------------------------------------------- moments -- */

/* Port of _kernels_numba._moments_chunk, point by point in order: v = R_j x
 * (j = label) as v = sum_k x_k (R_j^T)_k, which is the same sum over k in
 * the same order as the dot products of the Numba kernel but vectorises over
 * i; rows with h_i = 0 add exactly nothing (selects, not products, so even an
 * infinite v would leave them untouched).  Same bits as Numba.  Also the
 * cluster sizes and the coordinate-wise extent lo/hi of v. */
TF_INLINE
void moments_chunk_impl(const double *restrict RT, const double *restrict b,
                        const double *restrict X, const int64_t *restrict labels, int64_t M,
                        int64_t start, int64_t stop, double *restrict v, double *restrict hv,
                        double *restrict S0, double *restrict S1, double *restrict S2,
                        double *restrict cnt, double *restrict lo, double *restrict hi)
{
    for (int64_t n = start; n < stop; n++) {
        const int64_t j = labels[n];
        const double *restrict Rj = RT + j * M * M, *restrict x = X + n * M;
        const double *restrict bj = b + j * M;
        double *restrict s0 = S0 + j * M, *restrict loj = lo + j * M, *restrict hij = hi + j * M;
        cnt[j] += 1.0;
        for (int64_t i = 0; i < M; i++) v[i] = 0.0;
        for (int64_t k = 0; k < M; k++) {
            const double xk = x[k];
            for (int64_t i = 0; i < M; i++) v[i] += Rj[k * M + i] * xk;
        }
        for (int64_t i = 0; i < M; i++) {
            const double vi = v[i];
            const int h = vi + bj[i] > 0.0;
            loj[i] = vi < loj[i] ? vi : loj[i];
            hij[i] = vi > hij[i] ? vi : hij[i];
            s0[i] += h ? 1.0 : 0.0;
            hv[i] = h ? vi : 0.0; /* only read where h = 1 */
            v[M + i] = h ? 1.0 : 0.0;
        }
        for (int64_t i = 0; i < M; i++) {
            const int h = v[M + i] != 0.0;
            const double vi = hv[i];
            double *restrict s1 = S1 + (j * M + i) * M, *restrict s2 = S2 + (j * M + i) * M;
            for (int64_t k = 0; k < M; k++) {
                s1[k] += h ? v[k] : 0.0;
                s2[k] += h ? vi * v[k] : 0.0;
            }
        }
    }
}

/* moments_chunk_impl for M == VL, one point's row in one vector register:
 * the same operations lane by lane (v as a sum over k in order, selects for
 * h_i = 0), hence the same bits, without the compiler's guesswork. */
static inline void moments_chunk_vl(const double *restrict RT, const double *restrict b,
                                    const double *restrict X, const int64_t *restrict labels,
                                    int64_t start, int64_t stop, double *restrict S0,
                                    double *restrict S1, double *restrict S2,
                                    double *restrict cnt, double *restrict lo, double *restrict hi)
{
    const vd zero = {0.0}, one = zero + 1.0;
    for (int64_t n = start; n < stop; n++) {
        const int64_t j = labels[n];
        const double *restrict Rj = RT + j * VL * VL, *restrict x = X + n * VL;
        cnt[j] += 1.0;
        vd v = zero;
        for (int k = 0; k < VL; k++) v += VLOAD(Rj + k * VL) * x[k];
        const vi pos = v + VLOAD(b + j * VL) > zero;
        VSTORE(lo + j * VL, vselect(v < VLOAD(lo + j * VL), v, VLOAD(lo + j * VL)));
        VSTORE(hi + j * VL, vselect(v > VLOAD(hi + j * VL), v, VLOAD(hi + j * VL)));
        VSTORE(S0 + j * VL, VLOAD(S0 + j * VL) + vselect(pos, one, zero));
        double *restrict s1 = S1 + j * VL * VL, *restrict s2 = S2 + j * VL * VL;
        for (int i = 0; i < VL; i++) {
            const vi m = (vi){0} + pos[i];
            VSTORE(s1 + i * VL, VLOAD(s1 + i * VL) + vselect(m, v, zero));
            VSTORE(s2 + i * VL, VLOAD(s2 + i * VL) + vselect(m, v[i] * v, zero));
        }
    }
}

/* moments_chunk_impl with M a compile-time constant for the narrow widths. */
TF_HOT
static void moments_chunk(const double *restrict RT, const double *restrict b,
                          const double *restrict X, const int64_t *restrict labels, int64_t M,
                          int64_t start, int64_t stop, double *restrict v, double *restrict hv,
                          double *restrict S0, double *restrict S1, double *restrict S2,
                          double *restrict cnt, double *restrict lo, double *restrict hi)
{
    switch (M) {
#define TF_CASE(m) \
    case m: moments_chunk_impl(RT, b, X, labels, m, start, stop, v, hv, S0, S1, S2, cnt, lo, hi); break;
        TF_CASE(2)
        TF_CASE(4)
        TF_CASE(16)
#undef TF_CASE
    case VL: moments_chunk_vl(RT, b, X, labels, start, stop, S0, S1, S2, cnt, lo, hi); break;
    default: moments_chunk_impl(RT, b, X, labels, M, start, stop, v, hv, S0, S1, S2, cnt, lo, hi);
    }
}

int tf_moments_box(const double *R, const double *b, const double *X, const int64_t *labels,
                   int64_t N, int64_t M, int64_t L, int64_t Q, int64_t chunk, int nthreads,
                   double *S0, double *S1, double *S2, double *counts, double *lo, double *hi)
{
    int st = check_common(R, b, X, N, M, L, chunk);
    if (st) return st;
    if (Q < 1 || Q > L) return TF_ERR_SIZE; /* cluster j uses layer j */
    if (!S0 || !S1 || !S2) return TF_ERR_NULL;
    if ((st = check_labels(labels, N, Q))) return st;
    const int64_t QM = Q * M, QMM = Q * M * M;
    memset(S0, 0, (size_t)QM * sizeof(double));
    memset(S1, 0, (size_t)QMM * sizeof(double));
    memset(S2, 0, (size_t)QMM * sizeof(double));
    if (counts) memset(counts, 0, (size_t)Q * sizeof(double));
    for (int64_t e = 0; e < QM; e++) {
        if (lo) lo[e] = HUGE_VAL;
        if (hi) hi[e] = -HUGE_VAL;
    }
    if (N == 0) return TF_OK;

    const int64_t nchunks = (N + chunk - 1) / chunk;
    /* one record per chunk: S0, S1, S2, counts, lo, hi */
    const int64_t rec = QM + 2 * QMM + Q + 2 * QM;
    nthreads = threads_for(nthreads);
    const int64_t batch = batch_size(nchunks, 8 * rec, nthreads);
    double *part = (double *)malloc((size_t)batch * (size_t)rec * sizeof(double));
    double *vs = (double *)malloc((size_t)nthreads * (size_t)(3 * M) * sizeof(double));
    double *RT = (double *)malloc((size_t)QMM * sizeof(double));
    if (!part || !vs || !RT) {
        free(part);
        free(vs);
        free(RT);
        return TF_ERR_NOMEM;
    }
    for (int64_t j = 0; j < Q; j++) /* (R_j^T)[k][i] = R_j[i][k] */
        for (int64_t i = 0; i < M; i++)
            for (int64_t k = 0; k < M; k++) RT[(j * M + k) * M + i] = R[(j * M + i) * M + k];
    for (int64_t c0 = 0; c0 < nchunks; c0 += batch) {
        const int64_t nbatch = min64(batch, nchunks - c0);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nbatch > 1)
#endif
        for (int64_t s = 0; s < nbatch; s++) {
            double *pr = part + s * rec;
            memset(pr, 0, (size_t)(QM + 2 * QMM + Q) * sizeof(double));
            double *plo = pr + QM + 2 * QMM + Q, *phi = plo + QM;
            for (int64_t e = 0; e < QM; e++) {
                plo[e] = HUGE_VAL;
                phi[e] = -HUGE_VAL;
            }
            const int64_t c = c0 + s;
            double *v = vs + (size_t)TF_THREAD() * (size_t)(3 * M);
            moments_chunk(RT, b, X, labels, M, c * chunk, min64(N, (c + 1) * chunk), v, v + 2 * M,
                          pr, pr + QM, pr + QM + QMM, pr + QM + 2 * QMM, plo, phi);
        }
        for (int64_t s = 0; s < nbatch; s++) { /* chunk order */
            const double *pr = part + s * rec;
            const double *plo = pr + QM + 2 * QMM + Q, *phi = plo + QM;
            for (int64_t e = 0; e < QM; e++) S0[e] += pr[e];
            for (int64_t e = 0; e < QMM; e++) S1[e] += pr[QM + e];
            for (int64_t e = 0; e < QMM; e++) S2[e] += pr[QM + QMM + e];
            if (counts)
                for (int64_t e = 0; e < Q; e++) counts[e] += pr[QM + 2 * QMM + e];
            for (int64_t e = 0; e < QM; e++) { /* min / max: exact in any order */
                if (lo && plo[e] < lo[e]) lo[e] = plo[e];
                if (hi && phi[e] > hi[e]) hi[e] = phi[e];
            }
        }
    }
    free(part);
    free(vs);
    free(RT);
    return TF_OK;
}

int tf_moments(const double *R, const double *b, const double *X, const int64_t *labels,
               int64_t N, int64_t M, int64_t L, int64_t Q, int64_t chunk, int nthreads,
               double *S0, double *S1, double *S2)
{
    return tf_moments_box(R, b, X, labels, N, M, L, Q, chunk, nthreads, S0, S1, S2, NULL, NULL, NULL);
}

/* ------------------------------------------------------------ validation -- */

int tf_any_nonfinite(const double *x, int64_t n, int nthreads)
{
    if (n <= 0) return 0;
    if (!x) return 0;
    const uint64_t expo = 0x7FF0000000000000ULL;
    uint64_t m = 0;
    nthreads = threads_for(nthreads);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(max : m) num_threads(nthreads) if (n >= (1 << 16))
#endif
    for (int64_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, x + i, sizeof bits);
        bits &= expo;
        m = bits > m ? bits : m;
    }
    return m == expo;
}

/* ------------------------------------------------------------- violations -- */

int tf_violations(const double *R, const double *b, const double *X, const int64_t *labels,
                  int64_t N, int64_t M, int64_t L, int64_t Q, int64_t chunk, int nthreads,
                  int64_t *counts)
{
    int st = check_common(R, b, X, N, M, L, chunk);
    if (st) return st;
    if (Q < 1) return TF_ERR_SIZE;
    if (!counts) return TF_ERR_NULL;
    if ((st = check_labels(labels, N, Q))) return st;
    const int64_t QL = Q * L;
    memset(counts, 0, (size_t)QL * sizeof(int64_t));
    if (N == 0) return TF_OK;

    const int64_t nchunks = (N + chunk - 1) / chunk;
    nthreads = threads_for(nthreads);
    const size_t wsz = work_doubles(M, L, 0, 0);
    double *S = transfer_matrices(R, M, L);
    double *ws = (double *)malloc((size_t)nthreads * wsz * sizeof(double));
    /* integer counts: the order of the sum does not matter, one row per thread */
    int64_t *part = (int64_t *)calloc((size_t)nthreads * (size_t)QL, sizeof(int64_t));
    if (!S || !ws || !part) {
        free(S);
        free(ws);
        free(part);
        return TF_ERR_NOMEM;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nchunks > 1)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
        const int t = TF_THREAD();
        work_t w;
        work_bind(&w, ws + (size_t)t * wsz, M, L, 0, 0);
        int64_t *cnt = part + (size_t)t * QL;
        const int64_t stop = min64(N, (c + 1) * chunk);
        for (int64_t p0 = c * chunk; p0 < stop; p0 += B) {
            const int nb = (int)min64(B, stop - p0);
            forward_any(R, S, b, X, M, L, p0, nb, &w, 0);
            for (int p = 0; p < nb; p++) {
                const int64_t j = labels[p0 + p];
                for (int64_t l = 0; l < L; l++) {
                    if (l == j) continue;
                    for (int64_t i = 0; i < M; i++)
                        if (w.Hm[l * M * B + AT(M, i, p)] == 0.0) {
                            cnt[j * L + l] += 1;
                            break;
                        }
                }
            }
        }
    }
    for (int t = 0; t < nthreads; t++)
        for (int64_t e = 0; e < QL; e++) counts[e] += part[(size_t)t * QL + e];
    free(S);
    free(ws);
    free(part);
    return TF_OK;
}
