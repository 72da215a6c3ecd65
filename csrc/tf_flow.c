/*
 * tf_flow.c -- the whole fixed-step effective gradient flow in C: the
 * retractions of truncfast/_expm.py (exp by scaling and squaring with a Pade
 * approximant, Cayley), the Lie-Euler / Cayley step loop of
 * truncfast/_integrate.py (_Run) with its re-orthonormalisation and
 * divergence rules, and the checks of the Python API as status codes.
 *
 * Bits.  Every floating-point operation of the retractions, of the bias step
 * and of the normalisation of the gradient is the one of the Python/Numba code,
 * in the same order (products summed over k ascending, no BLAS), and the
 * gradient is tf_general itself, so an integration that never
 * re-orthonormalises gives the same bits as truncfast.integrate(...,
 * backend="c").  The polar factor of a re-orthonormalisation is computed by
 * Newton iterations instead of an SVD (LAPACK's bits cannot be reproduced
 * here); both give the polar factor to rounding (~1e-16), and
 * truncfast/_polar.py is the Numba twin of these iterations (same bits).
 *
 * Must be compiled with -ffp-contract=off, like truncfast.c.
 */
#include "truncfast.h"
#include "tf_private.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Sizes are bounded so that every array of the run is addressable in bytes
 * (a C caller's bad size must give TF_ERR_SIZE, never an overflowed malloc). */
#define TF_MAX_ELEMS (INT64_MAX / 256)

/* a * b <= TF_MAX_ELEMS for a, b >= 1 (no overflow) */
static int fits(int64_t a, int64_t b) { return a <= TF_MAX_ELEMS / b; }

/* ------------------------------------------------- retractions (_expm.py) -- */

/* Higham (2005), Table 2.3: the largest |A|_1 for which r_m reaches unit roundoff. */
static const double THETA[5] = {1.495585217958292e-2, 2.539398330063230e-1, 9.504178996162932e-1,
                                2.097847961257068e0, 5.371920351148152e0};
static const int DEGREES[5] = {3, 5, 7, 9, 13};
/* Pade coefficients b_0..b_m of degrees 3, 5, 7, 9, 13 (zero-padded rows). */
static const double PADE[5][14] = {
    {120.0, 60.0, 12.0, 1.0},
    {30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0},
    {17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0},
    {17643225600.0, 8821612800.0, 2075673600.0, 302702400.0, 30270240.0, 2162160.0, 110880.0,
     3960.0, 90.0, 1.0},
    {64764752532480000.0, 32382376266240000.0, 7771770303897600.0, 1187353796428800.0,
     129060195264000.0, 10559470521600.0, 670442572800.0, 33522128640.0, 1323241920.0,
     40840800.0, 960960.0, 16380.0, 182.0, 1.0},
};

/* Scratch doubles of one retraction of an n x n matrix (expm: 8 matrices). */
static size_t retraction_doubles(int64_t n) { return (size_t)(8 * n * n); }

/* out (n, p) = A (n, m) @ B (m, p), each entry summed over k in ascending order
 * (_expm._matmul: out[i, j] starts at 0.0 and accumulates a[i, k] * B[k, j]). */
static void matmul(const double *A, const double *Bm, double *out, int64_t n, int64_t m, int64_t p)
{
    for (int64_t i = 0; i < n; i++) {
        double *o = out + i * p;
        for (int64_t j = 0; j < p; j++) o[j] = 0.0;
        for (int64_t k = 0; k < m; k++) {
            const double a = A[i * m + k];
            const double *bk = Bm + k * p;
            for (int64_t j = 0; j < p; j++) o[j] += a * bk[j];
        }
    }
}

/* Solve A X = B (A n x n, B n x p) by LU with partial pivoting; A and B are
 * overwritten, X in B (_expm._solve, operation for operation). */
static void solve(double *A, double *Bm, int64_t n, int64_t p)
{
    for (int64_t c = 0; c < n; c++) {
        int64_t piv = c;
        double best = fabs(A[c * n + c]);
        for (int64_t r = c + 1; r < n; r++) {
            const double v = fabs(A[r * n + c]);
            if (v > best) {
                best = v;
                piv = r;
            }
        }
        if (piv != c) {
            for (int64_t k = 0; k < n; k++) {
                const double t = A[c * n + k];
                A[c * n + k] = A[piv * n + k];
                A[piv * n + k] = t;
            }
            for (int64_t k = 0; k < p; k++) {
                const double t = Bm[c * p + k];
                Bm[c * p + k] = Bm[piv * p + k];
                Bm[piv * p + k] = t;
            }
        }
        const double d = A[c * n + c];
        for (int64_t r = c + 1; r < n; r++) {
            const double f = A[r * n + c] / d;
            if (f != 0.0) {
                for (int64_t k = c + 1; k < n; k++) A[r * n + k] -= f * A[c * n + k];
                for (int64_t k = 0; k < p; k++) Bm[r * p + k] -= f * Bm[c * p + k];
            }
        }
    }
    for (int64_t c = n - 1; c >= 0; c--) {
        const double d = A[c * n + c];
        for (int64_t k = 0; k < p; k++) {
            double s = Bm[c * p + k];
            for (int64_t j = c + 1; j < n; j++) s -= A[c * n + j] * Bm[j * p + k];
            Bm[c * p + k] = s / d;
        }
    }
}

/* |A|_1: the largest column sum of |A| (_expm._norm1). */
static double norm1(const double *A, int64_t n)
{
    double best = 0.0;
    for (int64_t j = 0; j < n; j++) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += fabs(A[i * n + j]);
        if (s > best) best = s;
    }
    return best;
}

/* exp(A) of an antisymmetric n x n matrix (_expm.expm_antisym); w: retraction_doubles(n). */
static void expm_antisym(const double *A, int64_t n, double *out, double *w)
{
    const int64_t nn = n * n;
    if (n == 1) {
        out[0] = 1.0; /* the only antisymmetric 1 x 1 matrix is 0 */
        return;
    }
    if (n == 2) {
        const double th = 0.5 * (A[2] - A[1]); /* = A[1][0] when A is antisymmetric */
        const double c = cos(th), s = sin(th);
        out[0] = c;
        out[1] = -s;
        out[2] = s;
        out[3] = c;
        return;
    }
    const double nrm = norm1(A, n);
    if (!(nrm <= DBL_MAX)) {
        /* |A|_1 overflowed (dt * omega beyond double range): no meaningful rotation;
         * NaN makes the next evaluation report the divergence */
        for (int64_t e = 0; e < nn; e++) out[e] = NAN;
        return;
    }
    /* Pade degree: the lowest whose theta_m bounds |A|_1, else 13 after scaling by 2^-s */
    int deg = 4;
    for (int idx = 0; idx < 4; idx++)
        if (nrm <= THETA[idx]) {
            deg = idx;
            break;
        }
    int squarings = 0;
    if (nrm > THETA[4]) squarings = (int)ceil(log2(nrm / THETA[4]));
    const double scale = ldexp(1.0, -squarings); /* 0.5 ** squarings, exact */
    const int half = DEGREES[deg] / 2;
    double *As = w, *A2 = w + nn, *P = w + 2 * nn, *Uin = w + 3 * nn, *V = w + 4 * nn,
           *tmp = w + 5 * nn, *U = w + 6 * nn, *D = w + 7 * nn;
    for (int64_t e = 0; e < nn; e++) As[e] = A[e] * scale;
    matmul(As, As, A2, n, n, n);
    for (int64_t e = 0; e < nn; e++) {
        P[e] = 0.0;
        Uin[e] = 0.0;
        V[e] = 0.0;
    }
    for (int64_t i = 0; i < n; i++) P[i * n + i] = 1.0;
    /* U = As sum_k c_{2k+1} A2^k,  V = sum_k c_{2k} A2^k  (P = A2^k) */
    for (int k = 0; k <= half; k++) {
        const double c_odd = PADE[deg][2 * k + 1], c_even = PADE[deg][2 * k];
        for (int64_t e = 0; e < nn; e++) {
            Uin[e] += c_odd * P[e];
            V[e] += c_even * P[e];
        }
        if (k < half) {
            matmul(P, A2, tmp, n, n, n);
            memcpy(P, tmp, (size_t)nn * sizeof(double));
        }
    }
    matmul(As, Uin, U, n, n, n);
    /* r = (V - U)^-1 (V + U), orthogonal in exact arithmetic for antisymmetric A */
    for (int64_t e = 0; e < nn; e++) {
        D[e] = V[e] - U[e];
        out[e] = V[e] + U[e];
    }
    solve(D, out, n, n);
    for (int s = 0; s < squarings; s++) {
        matmul(out, out, tmp, n, n, n);
        memcpy(out, tmp, (size_t)nn * sizeof(double));
    }
}

/* Cayley map (I - A/2)^-1 (I + A/2) (_expm.cayley); w: retraction_doubles(n). */
static void cayley(const double *A, int64_t n, double *out, double *w)
{
    double *D = w;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            const double e = i == j ? 1.0 : 0.0;
            D[i * n + j] = e - 0.5 * A[i * n + j];
            out[i * n + j] = e + 0.5 * A[i * n + j];
        }
    solve(D, out, n, n);
}

static void retract(const double *A, int64_t n, int method, double *out, double *w)
{
    if (method == TF_LIE_EULER)
        expm_antisym(A, n, out, w);
    else
        cayley(A, n, out, w);
}

int tf_retraction(const double *A, int64_t M, int method, double *out)
{
    if (M < 1 || !fits(M, M)) return TF_ERR_SIZE;
    if (!A || !out) return TF_ERR_NULL;
    if (method != TF_LIE_EULER && method != TF_CAYLEY) return TF_ERR_ARG;
    if (tf_any_nonfinite(A, M * M, 1)) return TF_ERR_NONFINITE;
    double *w = (double *)malloc(retraction_doubles(M) * sizeof(double));
    if (!w) return TF_ERR_NOMEM;
    retract(A, M, method, out, w);
    free(w);
    return TF_OK;
}

/* out_l = F(-h omega_l) R_l for every layer (_expm.rotate_layers); w: M*M + M*M + retraction. */
static void rotate_layers(const double *R, const double *omega, double h, int method, int64_t M,
                          int64_t L, double *out, double *w)
{
    const int64_t MM = M * M;
    double *A = w, *E = w + MM, *rw = w + 2 * MM;
    for (int64_t l = 0; l < L; l++) {
        for (int64_t e = 0; e < MM; e++) A[e] = -h * omega[l * MM + e];
        retract(A, M, method, E, rw);
        matmul(E, R + l * MM, out + l * MM, M, M, M);
    }
}

/* max_ik |(R^T R - I)_ik| of one M x M matrix, i <= k (_expm.defect's inner loops). */
static double defect1(const double *R, int64_t M)
{
    double worst = 0.0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t k = i; k < M; k++) {
            double s = 0.0;
            for (int64_t m = 0; m < M; m++) s += R[m * M + i] * R[m * M + k];
            if (i == k) s -= 1.0;
            s = fabs(s);
            if (s > worst) worst = s;
        }
    return worst;
}

/* Orthogonality defect max_l max|R_l^T R_l - I| of an (L, M, M) stack (_expm.defect).
 * NaN entries are not reported (as in Python: NaN > worst is false); the
 * evaluation that follows reports them. */
static double defect(const double *R, int64_t M, int64_t L)
{
    double worst = 0.0;
    for (int64_t l = 0; l < L; l++) {
        const double d = defect1(R + l * M * M, M);
        if (d > worst) worst = d;
    }
    return worst;
}

/* ------------------------------------------------------ polar projection -- */

/* Scratch doubles of polar1. */
static size_t polar_doubles(int64_t M) { return (size_t)(5 * M * M); }

/*
 * X <- its polar factor (the orthogonal U V^T of X = U S V^T; truncfast's
 * _model.orthonormalize takes it from an SVD).  Both iterations below keep
 * the singular vectors and drive every singular value to 1:
 *   Newton:         X <- (X + X^-T) / 2       (globally convergent, used while far)
 *   Newton-Schulz:  X <- X (3 I - X^T X) / 2  (no inverse; converges for |X^T X - I|_2 < 1)
 * Newton-Schulz is used once M * defect < 1/2 (|X^T X - I|_2 <= M * max-entry
 * defect), and stops when the defect no longer decreases (rounding level).
 * Returns 0, or -1 when X is singular or not finite (no polar factor).
 */
static int polar1(double *X, int64_t M, double *w)
{
    const int64_t MM = M * M;
    double *Y = w, *G = w + MM, *Xt = w + 2 * MM, *Inv = w + 3 * MM, *T = w + 4 * MM;
    double d = defect1(X, M);
    for (int it = 0; it < 200; it++) {
        if (!(d <= DBL_MAX)) return -1;
        const int newton = (double)M * d >= 0.5;
        if (newton) {
            /* X^-T = (X^T)^-1: solve X^T Inv = I */
            for (int64_t i = 0; i < M; i++)
                for (int64_t k = 0; k < M; k++) {
                    Xt[i * M + k] = X[k * M + i];
                    Inv[i * M + k] = i == k ? 1.0 : 0.0;
                }
            solve(Xt, Inv, M, M);
            for (int64_t e = 0; e < MM; e++) Y[e] = 0.5 * (X[e] + Inv[e]);
        } else {
            /* G = X^T X, T = X G, Y = 1.5 X - 0.5 T */
            for (int64_t i = 0; i < M; i++)
                for (int64_t k = 0; k < M; k++) {
                    double s = 0.0;
                    for (int64_t m = 0; m < M; m++) s += X[m * M + i] * X[m * M + k];
                    G[i * M + k] = s;
                }
            matmul(X, G, T, M, M, M);
            for (int64_t e = 0; e < MM; e++) Y[e] = 1.5 * X[e] - 0.5 * T[e];
        }
        for (int64_t e = 0; e < MM; e++) /* defect1 does not see NaN (as _expm.defect) */
            if (!isfinite(Y[e])) return -1;
        const double dn = defect1(Y, M);
        if (!newton && !(dn < d)) return 0; /* converged: rounding level reached */
        memcpy(X, Y, (size_t)MM * sizeof(double));
        d = dn;
    }
    return d <= DBL_MAX && (double)M * d < 0.5 ? 0 : -1;
}

/* Every R_l replaced by its polar factor (all layers, as _model.orthonormalize);
 * -1 if some layer has none (then R is filled with NaN: the run diverges). */
static int polar_layers(double *R, int64_t M, int64_t L, double *w)
{
    for (int64_t l = 0; l < L; l++)
        if (polar1(R + l * M * M, M, w)) {
            for (int64_t e = 0; e < L * M * M; e++) R[e] = NAN;
            return -1;
        }
    return 0;
}

int tf_orthonormalize(const double *R, int64_t L, int64_t M, double *out)
{
    if (L < 1 || M < 1 || !fits(M, M) || !fits(L, M * M)) return TF_ERR_SIZE;
    if (!R || !out) return TF_ERR_NULL;
    if (tf_any_nonfinite(R, L * M * M, 1)) return TF_ERR_NONFINITE;
    double *w = (double *)malloc(polar_doubles(M) * sizeof(double));
    if (!w) return TF_ERR_NOMEM;
    if (out != R) memcpy(out, R, (size_t)(L * M * M) * sizeof(double));
    const int st = polar_layers(out, M, L, w) ? TF_ERR_SINGULAR : TF_OK;
    free(w);
    return st;
}

/* ------------------------------------------------------------ the loop --- */

typedef struct {
    const double *X, *targets;
    const int64_t *labels;
    int64_t N, M, L, Q, chunk;
    int nthreads;
    double *G; /* (L, M, M) scratch of the raw gradient sums */
} problem_t;

/* Loss and (grad_b, omega) at (R, b): tf_general normalised exactly like
 * truncfast._backends._normalise: loss / N, gb / N, 0.5 * (G - G^T) / N. */
static int evaluate(const problem_t *p, const double *R, const double *b, double *loss, double *gb,
                    double *omega)
{
    const int64_t M = p->M, L = p->L;
    const double Nd = (double)p->N;
    double s;
    int st = tf_general_unchecked(R, b, p->X, p->labels, p->N, M, L, p->Q, p->targets, NULL, NULL,
                                  NULL, 0, 0, 1, p->chunk, p->nthreads, &s, gb, p->G, NULL, NULL);
    if (st) return st;
    *loss = s / Nd;
    for (int64_t e = 0; e < L * M; e++) gb[e] = gb[e] / Nd;
    const double *G = p->G;
    for (int64_t l = 0; l < L; l++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t k = 0; k < M; k++)
                omega[(l * M + i) * M + k] = 0.5 * (G[(l * M + i) * M + k] - G[(l * M + k) * M + i]) / Nd;
    return TF_OK;
}

static int all_finite(double loss, const double *gb, const double *omega, int64_t M, int64_t L)
{
    if (!isfinite(loss)) return 0;
    for (int64_t e = 0; e < L * M; e++)
        if (!isfinite(gb[e])) return 0;
    for (int64_t e = 0; e < L * M * M; e++)
        if (!isfinite(omega[e])) return 0;
    return 1;
}

/* Largest loss a step may reach (truncfast._integrate._Run._loss_limit):
 * DIVERGENCE_LOSS_FACTOR * max(C(0), DIVERGENCE_LOSS_FLOOR * scale^2), +inf if
 * that reference is 0.  (The row sums run sequentially here, NumPy sums rows of
 * 8 or more pairwise: the limit may differ in its last bit, a threshold far
 * from any loss a run reaches, never a result.) */
static double loss_limit(double loss0, const double *targets, const double *b0, int64_t M, int64_t L,
                         int64_t Q)
{
    double tmax = 0.0, bmax = 0.0;
    for (int64_t j = 0; j < Q; j++) {
        double s = 0.0;
        for (int64_t i = 0; i < M; i++) s += targets[j * M + i] * targets[j * M + i];
        if (s > tmax) tmax = s;
    }
    for (int64_t l = 0; l < L; l++) {
        double s = 0.0;
        for (int64_t i = 0; i < M; i++) s += b0[l * M + i] * b0[l * M + i];
        if (s > bmax) bmax = s;
    }
    const double floor = TF_DIVERGENCE_LOSS_FLOOR * (tmax + bmax);
    const double ref = loss0 >= floor ? loss0 : floor;
    return ref > 0.0 ? TF_DIVERGENCE_LOSS_FACTOR * ref : HUGE_VAL;
}

static int check_integrate_args(const double *R, const double *b, const double *X,
                                const int64_t *labels, const double *targets, int64_t N, int64_t M,
                                int64_t L, int64_t Q, double dt, int64_t steps, int method,
                                int64_t chunk, int nthreads, const double *R_out,
                                const double *b_out, const double *loss)
{
    if (N < 1 || M < 1 || L < 1 || Q < 1 || steps < 0 || chunk < 1) return TF_ERR_SIZE;
    if (!fits(M, M) || !fits(L, M * M) || !fits(N, M) || !fits(Q, M) || steps >= TF_MAX_ELEMS)
        return TF_ERR_SIZE;
    if (!R || !b || !X || !labels || !targets || !R_out || !b_out || !loss) return TF_ERR_NULL;
    if (isnan(dt) || isinf(dt)) return TF_ERR_NONFINITE;
    if (!(dt > 0.0) || (method != TF_LIE_EULER && method != TF_CAYLEY)) return TF_ERR_ARG;
    if (tf_any_nonfinite(R, L * M * M, 1) || tf_any_nonfinite(b, L * M, 1) ||
        tf_any_nonfinite(X, N * M, nthreads) || tf_any_nonfinite(targets, Q * M, 1))
        return TF_ERR_NONFINITE;
    for (int64_t n = 0; n < N; n++)
        if (labels[n] < 0 || labels[n] >= Q) return TF_ERR_LABEL;
    if (defect(R, M, L) > TF_ORTHOGONALITY_TOL) return TF_ERR_NOT_ORTHOGONAL;
    return TF_OK;
}

int tf_integrate(const double *R, const double *b, const double *X, const int64_t *labels,
                 const double *targets, int64_t N, int64_t M, int64_t L, int64_t Q,
                 double dt, int64_t steps, int method, int train_weights, int train_biases,
                 int64_t chunk, int nthreads,
                 double *R_out, double *b_out, double *loss, int64_t *steps_done,
                 int64_t *reorthonormalizations)
{
    int st = check_integrate_args(R, b, X, labels, targets, N, M, L, Q, dt, steps, method, chunk,
                                  nthreads, R_out, b_out, loss);
    if (st) return st;
    const int64_t MM = M * M, LM = L * M, LMM = L * MM;
    /* state k (Rc, bc) and k + 1 (Rn, bn), right-hand side, gradient sums, scratch */
    const size_t wrot = (size_t)(2 * MM) + retraction_doubles(M);
    const size_t wpol = polar_doubles(M);
    const size_t wsz = wrot > wpol ? wrot : wpol;
    const size_t total = (size_t)(2 * LMM + 2 * LM + LM + 2 * LMM) + wsz;
    double *mem = (double *)malloc(total * sizeof(double));
    if (!mem) return TF_ERR_NOMEM;
    double *Rc = mem, *Rn = Rc + LMM, *bc = Rn + LMM, *bn = bc + LM, *gb = bn + LM,
           *omega = gb + LM, *G = omega + LMM, *w = G + LMM;
    problem_t p = {X, targets, labels, N, M, L, Q, chunk, nthreads, G};

    memcpy(Rc, R, (size_t)LMM * sizeof(double));
    memcpy(bc, b, (size_t)LM * sizeof(double));
    const int tw = train_weights != 0, tb = train_biases != 0;
    int64_t reorth = 0, k = 0;
    /* the initial R passed the looser TF_ORTHOGONALITY_TOL: project it once
     * (truncfast._integrate._reorthonormalize_initial) */
    if (tw && defect(Rc, M, L) > TF_REORTHONORMALIZE_TOL) {
        polar_layers(Rc, M, L, w);
        reorth = 1;
    }
    double lossk;
    if ((st = evaluate(&p, Rc, bc, &lossk, gb, omega))) goto done;
    loss[0] = lossk;
    int64_t bad = -1; /* the step whose state diverged, if any */
    if (!all_finite(lossk, gb, omega, M, L)) {
        bad = 0;
    } else {
        const double limit = loss_limit(lossk, targets, bc, M, L, Q);
        for (; k < steps; k++) {
            /* step k -> k + 1 with the right-hand side at k (gb, omega) */
            double *Rk1 = Rc, *bk1 = bc;
            if (tw) {
                rotate_layers(Rc, omega, dt, method, M, L, Rn, w);
                Rk1 = Rn;
            }
            if (tb) {
                for (int64_t e = 0; e < LM; e++) bn[e] = bc[e] - dt * gb[e];
                bk1 = bn;
            }
            int fixed = 0;
            if (tw && defect(Rk1, M, L) > TF_REORTHONORMALIZE_TOL) {
                polar_layers(Rk1, M, L, w); /* failure leaves NaN: reported just below */
                fixed = 1;
            }
            double loss1;
            if ((st = evaluate(&p, Rk1, bk1, &loss1, gb, omega))) goto done;
            loss[k + 1] = loss1;
            if (!all_finite(loss1, gb, omega, M, L) || loss1 > limit) {
                bad = k + 1; /* (Rc, bc) is still state k, the last good one */
                break;
            }
            if (tw) {
                double *t = Rc;
                Rc = Rn;
                Rn = t;
            }
            if (tb) {
                double *t = bc;
                bc = bn;
                bn = t;
            }
            reorth += fixed;
        }
    }
    if (bad >= 0) {
        for (int64_t e = bad + 1; e <= steps; e++) loss[e] = NAN;
        k = bad - 1;
        st = TF_ERR_DIVERGED;
    }
    memcpy(R_out, Rc, (size_t)LMM * sizeof(double));
    memcpy(b_out, bc, (size_t)LM * sizeof(double));
    if (steps_done) *steps_done = k;
    if (reorthonormalizations) *reorthonormalizations = reorth;
done:
    free(mem);
    return st;
}
