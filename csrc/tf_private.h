/*
 * tf_private.h -- declarations shared by the C core's source files, not part
 * of the public API (not installed; hidden from the shared library's symbols).
 */
#ifndef TF_PRIVATE_H
#define TF_PRIVATE_H

#include <stdint.h>

#if defined(__GNUC__) && !defined(_WIN32)
#define TF_HIDDEN __attribute__((visibility("hidden")))
#else
#define TF_HIDDEN
#endif

/* tf_general without its argument checks: the caller guarantees sizes >= 1,
 * valid pointers and labels in 0..Q-1.  Same results, same bits. */
TF_HIDDEN int tf_general_unchecked(const double *R, const double *b, const double *X,
                                   const int64_t *labels, int64_t N, int64_t M, int64_t L, int64_t Q,
                                   const double *T, const double *W, const double *bout,
                                   const double *Y, int64_t P, int standard, int want_grad,
                                   int64_t chunk, int nthreads, double *loss, double *gb, double *G,
                                   double *gW, double *gbo);

#endif /* TF_PRIVATE_H */
