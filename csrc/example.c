/*
 * example.c -- using the truncfast C core from C (build: make -C csrc example).
 *
 * Builds a random problem (Haar-like orthogonal R_l by Gram-Schmidt, Gaussian
 * biases and data), calls the library and checks known identities of
 * docs/theory.md:
 *   1. an untruncated configuration (every pre-activation > 0) leaves the data
 *      fixed (tau = id, [2.14]) and gives an exactly zero gradient (section 5);
 *   2. the gradient of the Euclidean loss matches central finite differences
 *      in a bias b_{l,i} and along a rotation exp(eps A) R_l, A = E_ij - E_ji,
 *      for which dC/deps = <omega_l, A> = 2 omega_l[i, j] (section 5);
 *   3. the standard-loss gradient in the output bias matches finite differences;
 *   4. bad input gives a status code, not an abort;
 *   5. tf_integrate, the whole flow in C (docs/theory.md §9): the loss decreases, R stays
 *      orthogonal, the first Lie-Euler step equals b - dt grad_b and
 *      exp(-dt omega) R computed here by an independent Taylor series, the first
 *      Cayley step solves (I + dt omega/2) R_1 = (I - dt omega/2) R_0, frozen
 *      weights stay bitwise unchanged, a too large dt stops with
 *      TF_ERR_DIVERGED and the last good state, bad sizes give status codes.
 * Exit status 0 when every check passes.
 *
 * Against an installed copy (make -C csrc install PREFIX=$HOME/.local):
 *   cc example.c $(pkg-config --cflags --libs truncfast) -lm -o example
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "truncfast.h"

#define N 3000
#define M 5
#define L 3
#define Q 2
#define P 4
#define CHUNK 4096

static unsigned long long rng_state = 12345u;

static double uniform(void)
{ /* 64-bit LCG (Knuth), top 53 bits */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static double gauss(void)
{ /* Box-Muller */
    return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform());
}

/* Orthogonal M x M matrix: modified Gram-Schmidt of the rows of a Gaussian matrix. */
static void random_orthogonal(double *Rl)
{
    for (int i = 0; i < M * M; i++) Rl[i] = gauss();
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < i; j++) {
            double d = 0.0;
            for (int k = 0; k < M; k++) d += Rl[i * M + k] * Rl[j * M + k];
            for (int k = 0; k < M; k++) Rl[i * M + k] -= d * Rl[j * M + k];
        }
        double n = 0.0;
        for (int k = 0; k < M; k++) n += Rl[i * M + k] * Rl[i * M + k];
        n = sqrt(n);
        for (int k = 0; k < M; k++) Rl[i * M + k] /= n;
    }
}

static double R[L * M * M], b[L * M], X[N * M], T[Q * M];
static double W[P * M], bout[P], Y[Q * P];
static int64_t labels[N];
static double gb[L * M], G[L * M * M], gW[P * M], gbo[P];
static int failures = 0;

static void check(int ok, const char *what)
{
    printf("%-62s %s\n", what, ok ? "ok" : "FAILED");
    if (!ok) failures++;
}

static void must(int status, const char *call)
{
    if (status != TF_OK) {
        fprintf(stderr, "%s: %s\n", call, tf_status_string(status));
        exit(2);
    }
}

/* Euclidean loss C_E = loss_sum / N (docs/theory.md §3). */
static double loss_E(void)
{
    double s;
    must(tf_general(R, b, X, labels, N, M, L, Q, T, NULL, NULL, NULL, 0, 0, 0, CHUNK, 0,
                    &s, gb, G, NULL, NULL), "tf_general");
    return s / N;
}

static double loss_std(void)
{
    double s;
    must(tf_general(R, b, X, labels, N, M, L, Q, NULL, W, bout, Y, P, 1, 0, CHUNK, 0,
                    &s, gb, G, gW, gbo), "tf_general");
    return s / N;
}

/* R_l <- exp(eps A) R_l with A = E_ij - E_ji (a Givens rotation of rows i, j). */
static void rotate(int l, int i, int j, double eps)
{
    double c = cos(eps), s = sin(eps);
    for (int k = 0; k < M; k++) {
        double ri = R[(l * M + i) * M + k], rj = R[(l * M + j) * M + k];
        R[(l * M + i) * M + k] = c * ri + s * rj;
        R[(l * M + j) * M + k] = -s * ri + c * rj;
    }
}

static double rel(double a, double e) { return fabs(a - e) / fmax(fabs(e), 1e-12); }

/* ------------------------------------------------------------ the flow -- */

#define STEPS 60

/* max_l max|R_l^T R_l - I| */
static double defect(const double *Rs)
{
    double worst = 0.0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < M; i++)
            for (int k = 0; k < M; k++) {
                double s = 0.0;
                for (int m = 0; m < M; m++) s += Rs[(l * M + m) * M + i] * Rs[(l * M + m) * M + k];
                worst = fmax(worst, fabs(s - (i == k)));
            }
    return worst;
}

/* out = exp(A) by its Taylor series after scaling by 2^-s (an oracle independent
 * of the library's Pade approximant): s with |A| 2^-s < 1/2, 30 terms, s squarings. */
static void expm_taylor(const double *A, double *out)
{
    double nrm = 0.0, As[M * M], term[M * M], tmp[M * M];
    for (int i = 0; i < M * M; i++) nrm = fmax(nrm, fabs(A[i]) * M);
    int s = 0;
    while (nrm * ldexp(1.0, -s) > 0.5) s++;
    for (int i = 0; i < M * M; i++) {
        As[i] = A[i] * ldexp(1.0, -s);
        out[i] = term[i] = (i % (M + 1) == 0);
    }
    for (int n = 1; n <= 30; n++) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < M; j++) {
                double acc = 0.0;
                for (int k = 0; k < M; k++) acc += term[i * M + k] * As[k * M + j];
                tmp[i * M + j] = acc / n;
            }
        for (int i = 0; i < M * M; i++) {
            term[i] = tmp[i];
            out[i] += term[i];
        }
    }
    for (; s > 0; s--) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < M; j++) {
                double acc = 0.0;
                for (int k = 0; k < M; k++) acc += out[i * M + k] * out[k * M + j];
                tmp[i * M + j] = acc;
            }
        memcpy(out, tmp, sizeof tmp);
    }
}

static void integrate_checks(void)
{
    static double R1[L * M * M], b1[L * M], loss[STEPS + 1];
    int64_t done = -2, reorth = -2;
    const double dt = 0.5;

    /* a run: the loss decreases, R stays on O(M) */
    must(tf_integrate(R, b, X, labels, T, N, M, L, Q, dt, STEPS, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                      R1, b1, loss, &done, &reorth), "tf_integrate");
    printf("  Lie-Euler, dt = %g: loss %.6f -> %.6f in %lld steps (%lld re-orthonormalisations)\n", dt,
           loss[0], loss[STEPS], (long long)done, (long long)reorth);
    check(done == STEPS && loss[STEPS] < loss[0], "tf_integrate: the loss decreases");
    check(defect(R1) <= TF_REORTHONORMALIZE_TOL, "tf_integrate: R stays orthogonal");
    check(loss[0] == loss_E(), "tf_integrate: loss[0] = C_E of the initial state");

    /* one Lie-Euler step against b - dt grad_b and a Taylor exp(-dt omega) R */
    must(tf_integrate(R, b, X, labels, T, N, M, L, Q, dt, 1, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                      R1, b1, loss, &done, NULL), "tf_integrate");
    double s;
    must(tf_general(R, b, X, labels, N, M, L, Q, T, NULL, NULL, NULL, 0, 0, 1, CHUNK, 0,
                    &s, gb, G, NULL, NULL), "tf_general");
    double worst_b = 0.0, worst_R = 0.0;
    for (int i = 0; i < L * M; i++) worst_b = fmax(worst_b, fabs(b1[i] - (b[i] - dt * (gb[i] / N))));
    for (int l = 0; l < L; l++) {
        double A[M * M], E[M * M];
        for (int i = 0; i < M; i++)
            for (int k = 0; k < M; k++)
                A[i * M + k] = -dt * (G[(l * M + i) * M + k] - G[(l * M + k) * M + i]) / (2.0 * N);
        expm_taylor(A, E);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < M; j++) {
                double acc = 0.0;
                for (int k = 0; k < M; k++) acc += E[i * M + k] * R[(l * M + k) * M + j];
                worst_R = fmax(worst_R, fabs(R1[(l * M + i) * M + j] - acc));
            }
    }
    printf("  first step: |b_1 - (b - dt grad_b)| = %.1e, |R_1 - exp(-dt omega) R| = %.1e\n", worst_b, worst_R);
    check(worst_b == 0.0 && worst_R < 1e-13, "Lie-Euler step = b - dt grad_b, exp(-dt omega) R");

    /* one Cayley step: (I + dt omega/2) R_1 = (I - dt omega/2) R_0 */
    must(tf_integrate(R, b, X, labels, T, N, M, L, Q, dt, 1, TF_CAYLEY, 1, 1, TF_CHUNK_SIZE, 0,
                      R1, b1, loss, &done, NULL), "tf_integrate");
    worst_R = 0.0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < M; j++) {
                double lhs = R1[(l * M + i) * M + j], rhs = R[(l * M + i) * M + j];
                for (int k = 0; k < M; k++) {
                    const double om = (G[(l * M + i) * M + k] - G[(l * M + k) * M + i]) / (2.0 * N);
                    lhs += 0.5 * dt * om * R1[(l * M + k) * M + j];
                    rhs -= 0.5 * dt * om * R[(l * M + k) * M + j];
                }
                worst_R = fmax(worst_R, fabs(lhs - rhs));
            }
    printf("  Cayley step residual: %.1e\n", worst_R);
    check(worst_R < 1e-13, "Cayley step = (I + dt omega/2)^-1 (I - dt omega/2) R");

    /* frozen weights stay bitwise unchanged */
    must(tf_integrate(R, b, X, labels, T, N, M, L, Q, dt, 10, TF_CAYLEY, 0, 1, TF_CHUNK_SIZE, 0,
                      R1, b1, loss, &done, NULL), "tf_integrate");
    check(memcmp(R1, R, sizeof R1) == 0, "train_weights = 0: R unchanged");

    /* a far too large step diverges: status, the last good state, NaN after the offending loss */
    int st = tf_integrate(R, b, X, labels, T, N, M, L, Q, 1e4, STEPS, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                          R1, b1, loss, &done, NULL);
    printf("  dt = 1e4: status %d, last good step %lld, loss %.3g -> %.3g\n", st, (long long)done,
           loss[0], done >= 0 ? loss[done + 1] : loss[0]);
    check(st == TF_ERR_DIVERGED && done >= 0 && done < STEPS && isfinite(loss[done]) && isnan(loss[STEPS]),
          "dt = 1e4 -> TF_ERR_DIVERGED with the last good step");

    /* bad input: status codes */
    check(tf_integrate(R, b, X, labels, T, N, 0, L, Q, dt, 1, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                       R1, b1, loss, &done, NULL) == TF_ERR_SIZE, "tf_integrate: M = 0 -> TF_ERR_SIZE");
    check(tf_integrate(R, b, NULL, labels, T, N, M, L, Q, dt, 1, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                       R1, b1, loss, &done, NULL) == TF_ERR_NULL, "tf_integrate: X = NULL -> TF_ERR_NULL");
    check(tf_integrate(R, b, X, labels, T, N, M, L, Q, -dt, 1, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                       R1, b1, loss, &done, NULL) == TF_ERR_ARG, "tf_integrate: dt < 0 -> TF_ERR_ARG");
    const double keep = b[3];
    b[3] = NAN;
    check(tf_integrate(R, b, X, labels, T, N, M, L, Q, dt, 1, TF_LIE_EULER, 1, 1, TF_CHUNK_SIZE, 0,
                       R1, b1, loss, &done, NULL) == TF_ERR_NONFINITE, "tf_integrate: NaN in b -> TF_ERR_NONFINITE");
    b[3] = keep;
}

int main(void)
{
    printf("truncfast C core %s (ABI %d.%d): OpenMP %s, %d thread(s), block %d\n", tf_version(),
           tf_abi_version() / 1000, tf_abi_version() % 1000, tf_has_openmp() ? "on" : "off",
           tf_max_threads(), tf_block_size());
    if (tf_abi_version() / 1000 != TF_ABI_VERSION_MAJOR) {
        fprintf(stderr, "library ABI %d does not match the header's %d\n", tf_abi_version(), TF_ABI_VERSION);
        return 2;
    }
    for (int l = 0; l < L; l++) random_orthogonal(R + l * M * M);
    for (int n = 0; n < N; n++) {
        labels[n] = n % Q;
        for (int k = 0; k < M; k++) X[n * M + k] = gauss();
    }
    for (int i = 0; i < Q * M; i++) T[i] = gauss();
    for (int i = 0; i < P * M; i++) W[i] = gauss();
    for (int i = 0; i < P; i++) bout[i] = gauss();
    for (int i = 0; i < Q * P; i++) Y[i] = gauss();

    /* 1. untruncated: b large, every u = R z + b > 0 */
    static double Z[N * M];
    for (int i = 0; i < L * M; i++) b[i] = 100.0;
    must(tf_truncate(R, b, X, N, M, L, CHUNK, 0, Z), "tf_truncate");
    double dmax = 0.0;
    for (int i = 0; i < N * M; i++) dmax = fmax(dmax, fabs(Z[i] - X[i]));
    check(dmax < 1e-12, "untruncated: tau(x) = x");
    double s;
    must(tf_general(R, b, X, labels, N, M, L, Q, T, NULL, NULL, NULL, 0, 0, 1, CHUNK, 0,
                    &s, gb, G, NULL, NULL), "tf_general");
    int zero = 1;
    for (int i = 0; i < L * M; i++) zero &= gb[i] == 0.0;
    for (int i = 0; i < L * M * M; i++) zero &= G[i] == 0.0;
    check(zero, "untruncated: gradient exactly zero");

    /* 2. mixed sectors: finite differences of C_E */
    for (int i = 0; i < L * M; i++) b[i] = 0.7 * gauss();
    must(tf_general(R, b, X, labels, N, M, L, Q, T, NULL, NULL, NULL, 0, 0, 1, CHUNK, 0,
                    &s, gb, G, NULL, NULL), "tf_general");
    static double gb0[L * M], G0[L * M * M];
    memcpy(gb0, gb, sizeof gb);
    memcpy(G0, G, sizeof G);
    const double h = 1e-6;
    double worst = 0.0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < M; i++) {
            b[l * M + i] += h;
            double cp = loss_E();
            b[l * M + i] -= 2 * h;
            double cm = loss_E();
            b[l * M + i] += h;
            worst = fmax(worst, rel((cp - cm) / (2 * h), gb0[l * M + i] / N));
        }
    printf("  worst relative error, bias derivatives: %.2e\n", worst);
    check(worst < 1e-5, "finite differences: dC_E/db = grad_b");
    worst = 0.0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < M; i++)
            for (int j = i + 1; j < M; j++) {
                rotate(l, i, j, h);
                double cp = loss_E();
                rotate(l, i, j, -2 * h);
                double cm = loss_E();
                rotate(l, i, j, h);
                /* omega = (G - G^T) / (2N);  dC/deps = 2 omega[i, j] */
                double om = (G0[(l * M + i) * M + j] - G0[(l * M + j) * M + i]) / (2.0 * N);
                worst = fmax(worst, rel((cp - cm) / (2 * h), 2.0 * om));
            }
    printf("  worst relative error, rotation derivatives: %.2e\n", worst);
    check(worst < 1e-5, "finite differences: dC_E/deps = <omega, A>");

    /* 3. standard loss: output bias */
    must(tf_general(R, b, X, labels, N, M, L, Q, NULL, W, bout, Y, P, 1, 1, CHUNK, 0,
                    &s, gb, G, gW, gbo), "tf_general");
    static double gbo0[P];
    memcpy(gbo0, gbo, sizeof gbo);
    worst = 0.0;
    for (int q = 0; q < P; q++) {
        bout[q] += h;
        double cp = loss_std();
        bout[q] -= 2 * h;
        double cm = loss_std();
        bout[q] += h;
        worst = fmax(worst, rel((cp - cm) / (2 * h), gbo0[q] / N));
    }
    printf("  worst relative error, output-bias derivatives: %.2e\n", worst);
    check(worst < 1e-5, "finite differences: dC_std/db_out = grad_b_out");

    /* 4. status codes instead of aborts */
    labels[7] = Q;
    check(tf_general(R, b, X, labels, N, M, L, Q, T, NULL, NULL, NULL, 0, 0, 1, CHUNK, 0,
                     &s, gb, G, NULL, NULL) == TF_ERR_LABEL, "bad label -> TF_ERR_LABEL");
    labels[7] = 7 % Q;
    check(tf_truncate(R, b, X, N, M, L, 0, 0, Z) == TF_ERR_SIZE, "chunk 0 -> TF_ERR_SIZE");

    integrate_checks();

    printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}
