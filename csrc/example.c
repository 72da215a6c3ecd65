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
 *   4. bad input gives a status code, not an abort.
 * Exit status 0 when every check passes.
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

int main(void)
{
    printf("truncfast C core: OpenMP %s, %d thread(s), block %d\n",
           tf_has_openmp() ? "on" : "off", tf_max_threads(), tf_block_size());
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

    printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
    return failures ? 1 : 0;
}
