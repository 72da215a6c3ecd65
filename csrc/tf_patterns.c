/*
 * tf_patterns.c -- C kernels of the pattern form of the general flow
 * (THEORY 11): the two per-chunk phases of the full pass, the forward
 * statistics of re-checked points, and the assembly from the groups.
 *
 * Port of truncfast/_kernels/patterns.py with the same floating-point
 * operations in the same order, so both give the same bits:
 *   - forward pass in the transfer form (v_1 = R_1 x, v_{l+1} = S_l t_l,
 *     S_l = R_{l+1} R_l^T), every dot product summed over k in ascending
 *     order from 0.0, u = v + b, t = u h - b (h = 1.0 / 0.0, H(0) = 0);
 *   - margin min |u| rounded down to float, rho = max(|x|, |t_1|..|t_{L-1}|)
 *     times (1 + 2^-40) rounded up to float;
 *   - chunk-local groups numbered by first appearance (any hash table gives
 *     the same numbers); moments shifted by each group's first point;
 *   - assembly group by group in blocks of `blk`, block sums added in order.
 * Chunks (and assembly blocks) are independent: OpenMP hands them out, the
 * bits never depend on the thread count.  Compiled like truncfast.c (no FMA
 * contraction, no fast-math).
 */
#include "truncfast.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int64_t pt_min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int pt_threads(int nthreads)
{
#ifdef _OPENMP
    return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
    (void)nthreads;
    return 1;
#endif
}

/* S_l = R_{l+1} R_l^T (same sums as _kernels_numba.transfer_matrices). */
static double *pt_transfer(const double *R, int64_t M, int64_t L)
{
    size_t n = (size_t)(L > 1 ? L - 1 : 1) * (size_t)(M * M);
    double *S = (double *)malloc(n * sizeof(double));
    if (!S) return NULL;
    for (int64_t l = 0; l + 1 < L; l++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < M; j++) {
                double s = 0.0;
                for (int64_t k = 0; k < M; k++) s += R[(l + 1) * M * M + i * M + k] * R[l * M * M + j * M + k];
                S[l * M * M + i * M + j] = s;
            }
    return S;
}

static float pt_down32(double x)
{
    if (x < 1.1754943508222875e-38) return 0.0f;
    if (x >= 3.4028234663852886e38) return 3.4028234663852886e38f;
    float f = (float)x;
    if ((double)f > x) f = (float)(x * (1.0 - 0x1p-22));
    return f;
}

static float pt_up32(double x)
{
    if (x < 0x1p-120) return 0x1p-120f;
    float f = (float)x;
    if ((double)f < x) f = (float)(x * (1.0 + 0x1p-22));
    return f;
}

/* Forward pass of one point: codes (L), margin, rho.  w: scratch of 2 M doubles. */
static void pt_point(const double *restrict R, const double *restrict S, const double *restrict b,
                     const double *restrict x, int64_t M, int64_t L, double *restrict w,
                     uint64_t *restrict codes, float *restrict m32, float *restrict rho32)
{
    double *in = w, *t = w + M;
    double mn = INFINITY, r2 = 0.0;
    for (int64_t k = 0; k < M; k++) r2 += x[k] * x[k];
    for (int64_t l = 0; l < L; l++) {
        const double *A = l == 0 ? R : S + (l - 1) * M * M;
        const double *src = l == 0 ? x : in;
        uint64_t c = 0;
        for (int64_t i = 0; i < M; i++) {
            double v = 0.0;
            for (int64_t k = 0; k < M; k++) v += A[i * M + k] * src[k];
            const double bi = b[l * M + i];
            const double u = v + bi;
            const double h = u > 0.0 ? 1.0 : 0.0;
            if (u > 0.0) c |= (uint64_t)1 << i;
            const double a = fabs(u);
            if (a < mn) mn = a;
            t[i] = u * h - bi;
        }
        codes[l] = c;
        if (l < L - 1) {
            double s = 0.0;
            for (int64_t i = 0; i < M; i++) s += t[i] * t[i];
            if (s > r2) r2 = s;
        }
        memcpy(in, t, (size_t)M * sizeof(double));
    }
    *m32 = pt_down32(mn);
    *rho32 = pt_up32(sqrt(r2) * (1.0 + 0x1p-40));
}

static uint64_t pt_hash(const uint64_t *key, int64_t L, int64_t lab)
{
    uint64_t h = (uint64_t)lab * 0x9E3779B97F4A7C15ULL;
    for (int64_t l = 0; l < L; l++) {
        h = (h ^ key[l]) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
    }
    return h;
}

int tf_pattern_pass(const double *R, const double *b, const double *X, const int64_t *labels,
                    int64_t N, int64_t M, int64_t L, int64_t chunk, int64_t c_first, int64_t c_last,
                    int nthreads, int32_t *group_of, float *m32, float *rho32,
                    uint64_t *lkeys, int64_t *llab, int64_t *lcount)
{
    if (M < 1 || M > 64 || L < 1 || N < 0 || chunk < 1 || c_first < 0 || c_last < c_first) return TF_ERR_SIZE;
    if (!R || !b || (N > 0 && (!X || !labels || !group_of || !m32 || !rho32)) || !lkeys || !llab || !lcount)
        return TF_ERR_NULL;
    nthreads = pt_threads(nthreads);
    int64_t cap = 1;
    while (cap < 2 * chunk) cap *= 2;
    const size_t per = (size_t)cap * sizeof(int32_t) + (size_t)(2 * M) * sizeof(double) + (size_t)L * sizeof(uint64_t);
    double *S = pt_transfer(R, M, L);
    char *scratch = (char *)malloc((size_t)nthreads * per);
    if (!S || !scratch) {
        free(S);
        free(scratch);
        return TF_ERR_NOMEM;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (c_last - c_first > 1)
#endif
    for (int64_t c = c_first; c < c_last; c++) {
#ifdef _OPENMP
        char *mine = scratch + (size_t)omp_get_thread_num() * per;
#else
        char *mine = scratch;
#endif
        double *w = (double *)mine;
        uint64_t *cb = (uint64_t *)(w + 2 * M);
        int32_t *ht = (int32_t *)(cb + L);
        const int64_t s = c - c_first;
        uint64_t *keys = lkeys + s * chunk * L;
        int64_t *labs = llab + s * chunk;
        for (int64_t q = 0; q < cap; q++) ht[q] = -1;
        int64_t nloc = 0;
        const int64_t stop = pt_min64(N, (c + 1) * chunk);
        for (int64_t n = c * chunk; n < stop; n++) {
            pt_point(R, S, b, X + n * M, M, L, w, cb, m32 + n, rho32 + n);
            const int64_t lab = labels[n];
            int64_t q = (int64_t)(pt_hash(cb, L, lab) & (uint64_t)(cap - 1));
            int64_t g;
            for (;;) {
                g = ht[q];
                if (g < 0) {
                    g = nloc++;
                    ht[q] = (int32_t)g;
                    memcpy(keys + g * L, cb, (size_t)L * sizeof(uint64_t));
                    labs[g] = lab;
                    break;
                }
                if (labs[g] == lab && memcmp(keys + g * L, cb, (size_t)L * sizeof(uint64_t)) == 0) break;
                q = (q + 1) & (cap - 1);
            }
            group_of[n] = (int32_t)g;
        }
        lcount[s] = nloc;
    }
    free(S);
    free(scratch);
    return TF_OK;
}

int tf_pattern_stats(const double *R, const double *b, const double *X, int64_t K, int64_t M, int64_t L,
                     int64_t chunk, int nthreads, uint64_t *codes, float *m32, float *rho32)
{
    if (M < 1 || M > 64 || L < 1 || K < 0 || chunk < 1) return TF_ERR_SIZE;
    if (!R || !b || (K > 0 && (!X || !codes || !m32 || !rho32))) return TF_ERR_NULL;
    nthreads = pt_threads(nthreads);
    const int64_t nchunks = (K + chunk - 1) / chunk;
    double *S = pt_transfer(R, M, L);
    double *ws = (double *)malloc((size_t)nthreads * (size_t)(2 * M) * sizeof(double));
    if (!S || !ws) {
        free(S);
        free(ws);
        return TF_ERR_NOMEM;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nchunks > 1)
#endif
    for (int64_t c = 0; c < nchunks; c++) {
#ifdef _OPENMP
        double *w = ws + (size_t)omp_get_thread_num() * (size_t)(2 * M);
#else
        double *w = ws;
#endif
        for (int64_t n = c * chunk; n < pt_min64(K, (c + 1) * chunk); n++)
            pt_point(R, S, b, X + n * M, M, L, w, codes + n * L, m32 + n, rho32 + n);
    }
    free(S);
    free(ws);
    return TF_OK;
}

int tf_pattern_local_moments(const double *X, const int32_t *group_of, int64_t N, int64_t M, int64_t chunk,
                             int64_t c_first, int64_t c_last, int nthreads, const int64_t *loff,
                             int64_t *ln, double *lmean, double *lscat)
{
    if (M < 1 || N < 0 || chunk < 1 || c_first < 0 || c_last < c_first) return TF_ERR_SIZE;
    if ((N > 0 && (!X || !group_of)) || !loff) return TF_ERR_NULL;
    nthreads = pt_threads(nthreads);
    const int64_t MM = M * M;
    double *ds = (double *)malloc((size_t)nthreads * (size_t)M * sizeof(double));
    if (!ds) return TF_ERR_NOMEM;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (c_last - c_first > 1)
#endif
    for (int64_t c = c_first; c < c_last; c++) {
#ifdef _OPENMP
        double *d = ds + (size_t)omp_get_thread_num() * (size_t)M;
#else
        double *d = ds;
#endif
        const int64_t s = c - c_first, o = loff[s], e = loff[s + 1];
        for (int64_t j = o; j < e; j++) {
            ln[j] = 0;
            memset(lscat + j * MM, 0, (size_t)MM * sizeof(double));
        }
        const int64_t start = c * chunk, stop = pt_min64(N, start + chunk);
        for (int64_t n = start; n < stop; n++) {
            const int64_t j = o + group_of[n];
            const double *x = X + n * M;
            double *mu = lmean + j * M, *acc = lscat + j * MM;
            if (ln[j] == 0)
                for (int64_t k = 0; k < M; k++) mu[k] = x[k];
            ln[j] += 1;
            for (int64_t k = 0; k < M; k++) acc[k] += x[k] - mu[k];
        }
        for (int64_t j = o; j < e; j++) {
            const double inv = 1.0 / (double)ln[j];
            for (int64_t k = 0; k < M; k++) {
                lmean[j * M + k] += lscat[j * MM + k] * inv;
                lscat[j * MM + k] = 0.0;
            }
        }
        for (int64_t n = start; n < stop; n++) {
            const int64_t j = o + group_of[n];
            const double *x = X + n * M, *mu = lmean + j * M;
            double *C = lscat + j * MM;
            for (int64_t k = 0; k < M; k++) d[k] = x[k] - mu[k];
            for (int64_t i = 0; i < M; i++) {
                const double di = d[i];
                for (int64_t k = i; k < M; k++) C[i * M + k] += di * d[k];
            }
        }
        for (int64_t j = o; j < e; j++)
            for (int64_t i = 0; i < M; i++)
                for (int64_t k = i + 1; k < M; k++) lscat[j * MM + k * M + i] = lscat[j * MM + i * M + k];
    }
    free(ds);
    return TF_OK;
}

/* One group's terms of THEORY 11 (port of patterns._group_terms, same order). */
typedef struct {
    double *hh, *Vb, *Tb, *Fv, *A, *A2, *W, *Gam, *RG, *z, *r, *g;
} asm_t;

static size_t asm_doubles(int64_t M, int64_t L) { return (size_t)(3 * L * M + L * M * M + 5 * M * M + 3 * M); }

static void asm_bind(asm_t *a, double *q, int64_t M, int64_t L)
{
    a->hh = q; q += L * M;
    a->Vb = q; q += L * M;
    a->Tb = q; q += L * M;
    a->Fv = q; q += L * M * M;
    a->A = q; q += M * M;
    a->A2 = q; q += M * M;
    a->W = q; q += M * M;
    a->Gam = q; q += M * M;
    a->RG = q; q += M * M;
    a->z = q; q += M;
    a->r = q; q += M;
    a->g = q;
}

static double pt_group(const double *restrict R, const double *restrict b, const double *restrict T,
                       const uint64_t *restrict code, int64_t lab, double nf, const double *restrict mu,
                       const double *restrict C, int64_t M, int64_t L, double *restrict gb,
                       double *restrict Gacc, asm_t *w)
{
    const int64_t MM = M * M;
    double *hh = w->hh, *Vb = w->Vb, *Tb = w->Tb, *Fv = w->Fv, *A = w->A, *A2 = w->A2, *W = w->W;
    double *Gam = w->Gam, *RG = w->RG, *z = w->z, *r = w->r, *g = w->g;
    int second = 0;
    for (int64_t e = 0; e < MM; e++)
        if (C[e] != 0.0) second = 1;
    for (int64_t k = 0; k < M; k++) z[k] = mu[k];
    if (second) {
        memset(A, 0, (size_t)MM * sizeof(double));
        for (int64_t i = 0; i < M; i++) A[i * M + i] = 1.0;
    }
    for (int64_t l = 0; l < L; l++) {
        const double *Rl = R + l * MM;
        const uint64_t c = code[l];
        for (int64_t i = 0; i < M; i++) hh[l * M + i] = ((c >> i) & 1) ? 1.0 : 0.0;
        for (int64_t i = 0; i < M; i++) {
            double s = 0.0;
            for (int64_t k = 0; k < M; k++) s += Rl[i * M + k] * z[k];
            Vb[l * M + i] = s;
            Tb[l * M + i] = hh[l * M + i] > 0.0 ? s : -b[l * M + i];
        }
        for (int64_t k = 0; k < M; k++) {
            double s = 0.0;
            for (int64_t i = 0; i < M; i++) s += Rl[i * M + k] * Tb[l * M + i];
            z[k] = s;
        }
        if (second) {
            double *F = Fv + l * MM;
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < M; j++) {
                    double s = 0.0;
                    for (int64_t k = 0; k < M; k++) s += Rl[i * M + k] * A[k * M + j];
                    F[i * M + j] = s;
                }
            for (int64_t k = 0; k < M; k++)
                for (int64_t j = 0; j < M; j++) {
                    double s = 0.0;
                    for (int64_t i = 0; i < M; i++)
                        if (hh[l * M + i] > 0.0) s += Rl[i * M + k] * F[i * M + j];
                    A2[k * M + j] = s;
                }
            memcpy(A, A2, (size_t)MM * sizeof(double));
        }
    }
    double e2 = 0.0;
    for (int64_t k = 0; k < M; k++) {
        g[k] = z[k] - T[lab * M + k];
        e2 += g[k] * g[k];
    }
    double quad = 0.0;
    if (second) {
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < M; j++) {
                double s = 0.0;
                for (int64_t k = 0; k < M; k++) s += A[i * M + k] * C[k * M + j];
                W[i * M + j] = s;
                quad += s * A[i * M + j];
            }
        memcpy(Gam, W, (size_t)MM * sizeof(double));
    }
    const double loss = 0.5 * (nf * e2 + quad);
    for (int64_t l = L - 1; l >= 0; l--) {
        const double *Rl = R + l * MM, *h = hh + l * M;
        for (int64_t i = 0; i < M; i++) {
            double s = 0.0;
            for (int64_t k = 0; k < M; k++) s += Rl[i * M + k] * g[k];
            r[i] = s;
        }
        int64_t nh = 0;
        for (int64_t i = 0; i < M; i++) nh += h[i] > 0.0;
        if (second)
            for (int64_t i = 0; i < M; i++)
                for (int64_t j = 0; j < M; j++) {
                    double s = 0.0;
                    for (int64_t k = 0; k < M; k++) s += Rl[i * M + k] * Gam[k * M + j];
                    RG[i * M + j] = s;
                }
        if (nh < M) {
            double *Gl = Gacc + l * MM;
            for (int64_t i = 0; i < M; i++)
                if (h[i] == 0.0) gb[l * M + i] -= nf * r[i];
            for (int64_t i = 0; i < M; i++) {
                const double hr = h[i] * r[i];
                for (int64_t k = 0; k < M; k++) Gl[i * M + k] += nf * (hr * Vb[l * M + k] - r[i] * Tb[l * M + k]);
            }
            if (second && nh > 0) {
                const double *F = Fv + l * MM;
                for (int64_t i = 0; i < M; i++)
                    for (int64_t k = 0; k < M; k++) {
                        const double dh = h[i] - h[k];
                        if (dh != 0.0) {
                            double s = 0.0;
                            for (int64_t j = 0; j < M; j++) s += RG[i * M + j] * F[k * M + j];
                            Gl[i * M + k] += dh * s;
                        }
                    }
            }
        }
        if (nh == 0) break;
        for (int64_t k = 0; k < M; k++) {
            double s = 0.0;
            for (int64_t i = 0; i < M; i++)
                if (h[i] > 0.0) s += Rl[i * M + k] * r[i];
            g[k] = s;
        }
        if (second)
            for (int64_t k = 0; k < M; k++)
                for (int64_t j = 0; j < M; j++) {
                    double s = 0.0;
                    for (int64_t i = 0; i < M; i++)
                        if (h[i] > 0.0) s += Rl[i * M + k] * RG[i * M + j];
                    Gam[k * M + j] = s;
                }
    }
    return loss;
}

int tf_pattern_assemble(const double *R, const double *b, const double *T, const uint64_t *keys,
                        const int64_t *labs, const int64_t *tn, const double *tmean, const double *tscat,
                        int64_t G, int64_t M, int64_t L, int64_t blk, int nthreads,
                        double *loss, double *gb, double *Gm)
{
    if (M < 1 || M > 64 || L < 1 || G < 0 || blk < 1) return TF_ERR_SIZE;
    if (!R || !b || !loss || !gb || !Gm || (G > 0 && (!T || !keys || !labs || !tn || !tmean || !tscat)))
        return TF_ERR_NULL;
    const int64_t LM = L * M, LMM = L * M * M, rec = 1 + LM + LMM;
    const int64_t nblk = G > 0 ? (G + blk - 1) / blk : 1;
    nthreads = pt_threads(nthreads);
    const size_t wsz = asm_doubles(M, L);
    double *part = (double *)malloc((size_t)nblk * (size_t)rec * sizeof(double));
    double *ws = (double *)malloc((size_t)nthreads * wsz * sizeof(double));
    if (!part || !ws) {
        free(part);
        free(ws);
        return TF_ERR_NOMEM;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nblk > 1)
#endif
    for (int64_t q = 0; q < nblk; q++) {
        asm_t w;
#ifdef _OPENMP
        asm_bind(&w, ws + (size_t)omp_get_thread_num() * wsz, M, L);
#else
        asm_bind(&w, ws, M, L);
#endif
        double *pr = part + q * rec;
        memset(pr, 0, (size_t)rec * sizeof(double));
        for (int64_t gi = q * blk; gi < pt_min64(G, (q + 1) * blk); gi++) {
            if (tn[gi] == 0) continue;
            pr[0] += pt_group(R, b, T, keys + gi * L, labs[gi], (double)tn[gi], tmean + gi * M,
                              tscat + gi * M * M, M, L, pr + 1, pr + 1 + LM, &w);
        }
    }
    /* block order: the same sums as _kernels_numba.add_slots from zero */
    *loss = 0.0;
    memset(gb, 0, (size_t)LM * sizeof(double));
    memset(Gm, 0, (size_t)LMM * sizeof(double));
    for (int64_t q = 0; q < nblk; q++) {
        const double *pr = part + q * rec;
        *loss += pr[0];
        for (int64_t e = 0; e < LM; e++) gb[e] += pr[1 + e];
        for (int64_t e = 0; e < LMM; e++) Gm[e] += pr[1 + LM + e];
    }
    free(part);
    free(ws);
    return TF_OK;
}
