/*
 * truncfast.c -- C99 + OpenMP port of truncfast/_kernels/numba_kernels.py.
 *
 * The algorithm and the order of every floating-point operation are those of
 * the Numba kernels, so that both give the same bits (the loop structure and
 * the scratch layout are not: see "register tiles" below and DESIGN.md):
 *
 *   - The N points are split into fixed chunks of `chunk` points; a chunk is
 *     processed sequentially by one thread into its own partial sums, and the
 *     partials are added to the totals in chunk order (docs/theory.md §5, DESIGN.md
 *     "Determinism").  Chunks are handed out in batches that bound the memory
 *     of the partials; batching never changes the order of the additions.
 *   - Inside a chunk, points are processed in blocks of TF_BLOCK_SIZE points;
 *     sums over points run in TF_ACC_LANES interleaved lanes (point p of the
 *     chunk feeds lane p % TF_ACC_LANES), added in order.  A block is
 *     walked in register tiles of VL points (TG tiles in lockstep) through all
 *     layers: every matrix-vector product keeps an output row in a vector
 *     register while it sums over k in ascending order -- the same operations
 *     as the Numba kernel's axpys over the block, without reassociating any
 *     sum.  Scratch is stored tile-major (AT() below).
 *   - The forward pass uses transfer matrices S_l = R_{l+1} R_l^T:
 *       v_1 = R_1 x,  v_{l+1} = S_l t_l,  z_L = R_L^T t_L,
 *     and the backward pass r_{l-1} = S_{l-1}^T (h_l . r_l) (docs/theory.md §5).
 *   - Layers at which no point of a block is truncated add nothing to the
 *     gradient and are skipped, as is everything below the lowest truncating
 *     layer of the block (docs/theory.md §5, structural facts).
 *
 * Must be compiled without floating-point contraction (-ffp-contract=off) and
 * without -ffast-math: an FMA or a reassociated sum changes the bits.
 */
#include "truncfast.h"
#include "tf_private.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define B TF_BLOCK_SIZE
/* Upper bound (bytes) of the per-chunk partial sums held at once; it sets the
 * batch size only, never the bits.  Larger than Numba's budget on purpose:
 * every batch ends in a barrier where a thread waits for the slowest one
 * (measured: on a loaded machine the waits cost 20% at M = 64), so the C core
 * prefers few batches -- usually one -- at the price of a few MB. */
#define TF_PARTIALS_BUDGET ((int64_t)64 << 20)


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
    case TF_ERR_NONFINITE: return "an input holds NaN or inf";
    case TF_ERR_NOT_ORTHOGONAL: return "R is not orthogonal (max|R^T R - I| > TF_ORTHOGONALITY_TOL)";
    case TF_ERR_DIVERGED: return "the flow diverged (loss or gradient not finite, or the loss grew); use a smaller dt";
    case TF_ERR_ARG: return "a scalar argument is out of range (dt <= 0 or an unknown method)";
    case TF_ERR_SINGULAR: return "a matrix is singular (no unique polar factor, or a W_l that cannot be inverted)";
    default: return "unknown status";
    }
}

const char *tf_version(void) { return TF_VERSION; }

int tf_abi_version(void) { return TF_ABI_VERSION_MAJOR * 1000 + TF_ABI_VERSION_MINOR; }

int tf_block_size(void) { return B; }

int tf_acc_lanes(void) { return TF_ACC_LANES; }

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
 *   U, Hm (L, M, B + 16; see LSTR): u_l, h_l (1.0 / 0.0);
 *   Tt (min(L, 3), M, B + 16): t_l = h_l . u_l - b_l in slot TSLOT(l): only the next
 *     layer reads t_l, except t_L (loss, z_L), which keeps its own slot;
 *   Z, E, Ra, Rb (M, B): z_L, e, r_l (then h_l . r_l), r_{l-1};  res (P, B): standard residual;
 *   Dacc (L, M, KL), Kacc (L, M(M-1)/2, KL): per-lane sums of (1 - h) . r and of the
 *   antisymmetric pair terms (only when the gradient is wanted; see general_chunk).
 * Blocks are stored tile-major (AT() in tf_kernels.inc); the accumulators are plain
 * row-major, KL lanes per row, so they stay in L1 whatever B is. */
#define KL TF_ACC_LANES
/* Stride of one layer in U, Hm, Tt: B points plus 16 points of padding, so that a
 * tile group's rows at consecutive layers fall in different L1 sets (with a
 * stride of exactly M * B = 4 KiB at M = 8 all layers shared 16 sets, and the
 * speed swung by 30 % with the placement of the other scratch arrays). */
#define LSTR(M) ((M) * (B + 16))
#define TSLOT(l, L) ((l) == (L) - 1 ? ((L) < 3 ? (L) - 1 : 2) : (l) & 1)
typedef struct {
    double *U, *Hm, *Tt, *Z, *E, *Ra, *Rb, *res, *Dacc, *Kacc;
    int64_t *ntr; /* (L,) 1 if some point of the block is truncated at layer l, else 0 */
    /* Euclidean loss with more than TF_TARGETS_CACHE_ROWS targets: R_L, by which
     * each point's target is rotated on the fly (T then holds the raw targets);
     * NULL when T holds the rotated targets y'_j = R_L y_j */
    const double *rot;
    double *ty; /* (M,) the rotated target of the current point when rot != NULL */
} work_t;

static size_t work_doubles(int64_t M, int64_t L, int64_t P, int with_grad)
{
    const int64_t acc = with_grad ? L * M * KL + L * (M * (M - 1) / 2) * KL : 0;
    return (size_t)((2 * L + min64(L, 3)) * LSTR(M) + 4 * M * B + P * B + acc + L + M);
}

static void work_bind(work_t *w, double *base, int64_t M, int64_t L, int64_t P, int with_grad)
{
    double *q = base;
    w->U = q; q += L * LSTR(M);
    w->Hm = q; q += L * LSTR(M);
    w->Tt = q; q += min64(L, 3) * LSTR(M);
    w->Z = q; q += M * B;
    w->E = q; q += M * B;
    w->Ra = q; q += M * B;
    w->Rb = q; q += M * B;
    w->res = q; q += P * B;
    w->Dacc = q; q += with_grad ? L * M * KL : 0;
    w->Kacc = q; q += with_grad ? L * (M * (M - 1) / 2) * KL : 0;
    w->ntr = (int64_t *)q; /* L slots, sizeof(int64_t) == sizeof(double) */
    q += L;
    w->ty = q;
    w->rot = NULL;
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

/* Threads of a call: nthreads > 0 as asked, else the OpenMP default; never
 * more than TF_MAX_THREADS, 8 per CPU, OMP_THREAD_LIMIT or the `items` of work there are
 * (idle threads cost their scratch and their creation; libgomp aborts the
 * process when it cannot create the threads asked for).  1 without OpenMP.
 * The count never changes the bits. */
static int threads_for(int nthreads, int64_t items)
{
#ifdef _OPENMP
    int n = nthreads > 0 ? nthreads : omp_get_max_threads();
    if (n > TF_MAX_THREADS) n = TF_MAX_THREADS;
    const int procs = omp_get_num_procs(); /* more than 8 threads a CPU only oversubscribes */
    if (procs > 0 && n > 8 * procs) n = 8 * procs;
    const int limit = omp_get_thread_limit();
    if (limit > 0 && n > limit) n = limit;
    if (items < n) n = (int)max64(1, items);
    return n < 1 ? 1 : n;
#else
    (void)nthreads;
    (void)items;
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

/* ------------------------------------------------------------- kernels ---- */

/* Tiles processed in lockstep: their sums over k are independent, so they
 * interleave and hide the latency of each tile's chain of additions. */
#ifndef TG
#define TG 2
#endif
/* Layers at most this wide keep a tile's rows in registers (the forward
 * inputs; h, u, r in the pair sums): 3 * 8 vectors fit AVX-512's 32. */
#ifndef TF_RMAX
#define TF_RMAX 8
#endif
#if !defined(__GNUC__)
#error "the C core needs GCC or Clang vector extensions (the Numba backend works without it)"
#endif

/* The kernels are compiled once per x86-64 level with that level's native
 * vector width (GCC, x86-64, unless TF_NO_MULTI) and picked at run time by
 * kernel_vl(); elsewhere once, 2 doubles wide (SSE2 / NEON). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(TF_NO_MULTI)
#define TF_MULTI 1
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,avx512f,avx512dq,avx512bw,avx512vl,avx512cd")
#define VL 8
#define TF_SFX v8
#include "tf_kernels.inc"
#undef VL
#undef TF_SFX
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
#define VL 4
#define TF_SFX v4
#include "tf_kernels.inc"
#undef VL
#undef TF_SFX
#pragma GCC pop_options
#else
#define TF_MULTI 0
#endif
#define VL 2
#define TF_SFX v2
#include "tf_kernels.inc"
#undef VL
#undef TF_SFX

/* Element (r, p) of a (rows, B) scratch array stored tile-major with tiles of vl points. */
static inline int64_t at_vl(int64_t vl, int64_t rows, int64_t r, int64_t p)
{
    return ((p / vl) * rows + r) * vl + p % vl;
}

/* The kernel width for this CPU: 8 (AVX-512), 4 (AVX2 + FMA) or 2; the
 * environment variable TRUNCFAST_C_VL may lower it (2, 4 or 8; for tests and
 * for comparing speeds -- every width gives the same bits). */
static int kernel_vl(void)
{
    static int vl = 0; /* computed once; a racy first call stores the same value */
    if (vl == 0) {
        int best = 2;
#if TF_MULTI
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
            best = 8;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            best = 4;
#endif
        const char *env = getenv("TRUNCFAST_C_VL");
        const int want = env ? atoi(env) : 0;
        vl = (want == 2 || want == 4 || want == 8) && want <= best ? want : best;
    }
    return vl;
}

int tf_kernel_width(void) { return kernel_vl(); }

static void forward_any(const double *restrict R, const double *restrict S,
                        const double *restrict b, const double *restrict X,
                        int64_t M, int64_t L, int64_t p0, int nb, work_t *w, int want_z)
{
#if TF_MULTI
    if (kernel_vl() == 8) {
        forward_any_v8(R, S, b, X, M, L, p0, nb, w, want_z);
        return;
    }
    if (kernel_vl() == 4) {
        forward_any_v4(R, S, b, X, M, L, p0, nb, w, want_z);
        return;
    }
#endif
    forward_any_v2(R, S, b, X, M, L, p0, nb, w, want_z);
}

static double general_chunk(const double *restrict R, const double *restrict S,
                            const double *restrict b, const double *restrict X,
                            const int64_t *restrict labels, const double *restrict T,
                            const double *restrict W, const double *restrict bout,
                            const double *restrict Y, int64_t M, int64_t L, int64_t P,
                            int standard, int want_grad, int64_t start, int64_t stop, work_t *w,
                            double *restrict gb, double *restrict G, double *restrict gW,
                            double *restrict gbo)
{
#if TF_MULTI
    if (kernel_vl() == 8)
        return general_chunk_v8(R, S, b, X, labels, T, W, bout, Y, M, L, P, standard, want_grad, start,
                                stop, w, gb, G, gW, gbo);
    if (kernel_vl() == 4)
        return general_chunk_v4(R, S, b, X, labels, T, W, bout, Y, M, L, P, standard, want_grad, start,
                                stop, w, gb, G, gW, gbo);
#endif
    return general_chunk_v2(R, S, b, X, labels, T, W, bout, Y, M, L, P, standard, want_grad, start, stop,
                            w, gb, G, gW, gbo);
}

static void moments_chunk(const double *restrict RT, const double *restrict b,
                          const double *restrict X, const int64_t *restrict labels, int64_t M,
                          int64_t start, int64_t stop, double *restrict v, double *restrict hv,
                          double *restrict S0, double *restrict S1, double *restrict S2,
                          double *restrict cnt, double *restrict lo, double *restrict hi)
{
#if TF_MULTI
    if (kernel_vl() == 8) {
        moments_chunk_v8(RT, b, X, labels, M, start, stop, v, hv, S0, S1, S2, cnt, lo, hi);
        return;
    }
    if (kernel_vl() == 4) {
        moments_chunk_v4(RT, b, X, labels, M, start, stop, v, hv, S0, S1, S2, cnt, lo, hi);
        return;
    }
#endif
    moments_chunk_v2(RT, b, X, labels, M, start, stop, v, hv, S0, S1, S2, cnt, lo, hi);
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
                        if (w->Hm[l * LSTR(M) + at_vl(kernel_vl(), M, i, p)] > 0.0) c |= (uint64_t)1 << i;
                    codes[(p0 + p) * L + l] = c;
                }
        } else {
            for (int p = 0; p < nb; p++)
                for (int64_t k = 0; k < M; k++) out[(p0 + p) * M + k] = w->Z[at_vl(kernel_vl(), M, k, p)];
        }
    }
}

static int truncate_or_codes(const double *R, const double *b, const double *X,
                             int64_t N, int64_t M, int64_t L, int64_t chunk, int nthreads,
                             double *out, uint64_t *codes)
{
    const int64_t nchunks = (N + chunk - 1) / chunk;
    nthreads = threads_for(nthreads, nchunks);
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
    return tf_general_unchecked(R, b, X, labels, N, M, L, Q, T, W, bout, Y, P, standard, want_grad,
                                chunk, nthreads, loss, gb, G, gW, gbo);
}

/* tf_general after its argument checks (tf_integrate checks once, then calls this every step). */
int tf_general_unchecked(const double *R, const double *b, const double *X, const int64_t *labels,
                         int64_t N, int64_t M, int64_t L, int64_t Q,
                         const double *T, const double *W, const double *bout, const double *Y, int64_t P,
                         int standard, int want_grad, int64_t chunk, int nthreads,
                         double *loss, double *gb, double *G, double *gW, double *gbo)
{
    if (!standard) P = 0;
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
    nthreads = threads_for(nthreads, nchunks);
    const int64_t batch = batch_size(nchunks, 8 * rec, nthreads);
    const size_t wsz = work_doubles(M, L, P, want_grad);
    /* Euclidean loss: targets in the last layer's frame, y'_j = R_L y_j (same
     * operation order as numba_kernels.general_chunk), computed once per call for
     * at most TF_TARGETS_CACHE_ROWS targets, else per point inside the chunks:
     * neither the time nor the memory of a call grows with Q */
    double *Ty = NULL;
    const double *rot = NULL;
    if (!standard && Q > TF_TARGETS_CACHE_ROWS) {
        rot = R + (L - 1) * M * M;
    } else if (!standard) {
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
            w.rot = rot;
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
    nthreads = threads_for(nthreads, nchunks);
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
    nthreads = threads_for(nthreads, n >> 12); /* at least 4096 numbers a thread */
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
    nthreads = threads_for(nthreads, nchunks);
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
                        if (w.Hm[l * LSTR(M) + at_vl(kernel_vl(), M, i, p)] == 0.0) {
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

/* ------------------------ pattern form (docs/theory.md section 11) ---- */
#include "tf_patterns.inc"

/* --------------------------------------------- unaligned weights (§13) -- */

#include "tf_unaligned.inc"
