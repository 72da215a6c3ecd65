"""Polar factors by Newton iterations: the Numba twin of the C core's ``tf_orthonormalize``.

The integrators re-orthonormalise R by its polar factor ``U Vᵀ`` (``R = U S Vᵀ``,
docs/theory.md §9).  ``_model.orthonormalize`` takes it from LAPACK's SVD, whose
bits the C library (``csrc/tf_flow.c``) cannot reproduce; after one projection a
Python run and ``tf_integrate`` then differ by ~1e-16, which an unstable step
(large dt) amplifies beyond 1e-12.  This module computes the polar factor with
exactly the operations of ``csrc/tf_flow.c`` (``polar1``), so an integrator that
projects with :func:`orthonormalize` gives the C library's bits — and bits that
no longer depend on the LAPACK build.

Per layer X, until converged (at most 200 iterations):

* Newton ``X ← (X + X⁻ᵀ)/2`` while ``M · defect ≥ 1/2`` (globally convergent
  for non-singular X; X⁻ᵀ by ``_expm._solve``);
* then Newton–Schulz ``X ← 1.5 X − 0.5 X (XᵀX)`` (converges for ‖XᵀX − I‖₂ < 1,
  which ``M · defect < 1/2`` guarantees), stopped when the defect
  ``max|XᵀX − I|`` stops decreasing (rounding level).

Both keep the singular vectors and drive the singular values to 1, so the
limit is the polar factor; it agrees with the SVD's to ~1e-16.
"""

from __future__ import annotations

import math

import numpy as np
from truncfast._kernels.numba_cache import jit

from truncfast._kernels import expm as _expm
from truncfast._kernels import numba_cache as _numba_cache

__all__ = ["orthonormalize", "polar_layers"]


@jit
def _defect1(X):
    """max_{i ≤ k} |(XᵀX − I)_ik| (the inner loops of ``_expm.defect``)."""
    M = X.shape[0]
    worst = 0.0
    for i in range(M):
        for k in range(i, M):
            s = 0.0
            for m in range(M):
                s += X[m, i] * X[m, k]
            if i == k:
                s -= 1.0
            s = abs(s)
            if s > worst:
                worst = s
    return worst


@jit
def _polar1(X):
    """X ← its polar factor, in place; False when X is singular or not finite."""
    M = X.shape[0]
    Y = np.empty((M, M))
    G = np.empty((M, M))
    Xt = np.empty((M, M))
    Inv = np.empty((M, M))
    T = np.empty((M, M))
    d = _defect1(X)
    for _ in range(200):
        if not d <= 1.7976931348623157e308:  # NaN or inf
            return False
        newton = M * d >= 0.5
        if newton:
            for i in range(M):
                for k in range(M):
                    Xt[i, k] = X[k, i]
                    Inv[i, k] = 1.0 if i == k else 0.0
            _expm._solve(Xt, Inv)
            for i in range(M):
                for k in range(M):
                    Y[i, k] = 0.5 * (X[i, k] + Inv[i, k])
        else:
            for i in range(M):
                for k in range(M):
                    s = 0.0
                    for m in range(M):
                        s += X[m, i] * X[m, k]
                    G[i, k] = s
            _expm._matmul(X, G, T)
            for i in range(M):
                for k in range(M):
                    Y[i, k] = 1.5 * X[i, k] - 0.5 * T[i, k]
        for i in range(M):
            for k in range(M):
                if not math.isfinite(Y[i, k]):  # _defect1 does not see NaN
                    return False
        dn = _defect1(Y)
        if not newton and not dn < d:
            return True  # converged: rounding level reached
        for i in range(M):  # explicit loops: a slice assignment costs Numba 5 s of compile
            for k in range(M):
                X[i, k] = Y[i, k]
        d = dn
    return d <= 1.7976931348623157e308 and M * d < 0.5


@jit
def polar_layers(R):
    """Every R_ℓ of an (L, M, M) stack replaced by its polar factor, in place.

    Returns False (and fills R with NaN, as the C core) if some layer has none.
    """
    L, M, _ = R.shape
    for l in range(L):
        if not _polar1(R[l]):
            for j in range(L):
                for i in range(M):
                    for k in range(M):
                        R[j, i, k] = np.nan
            return False
    return True


_numba_cache.stamp([_polar1, polar_layers], [_expm])


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """Polar factors of a validated float64 (L, M, M) stack, as a new array (the
    drop-in for ``_model.orthonormalize`` inside the integrators); NaN where a
    layer is singular, as the C core (an integrator then reports divergence)."""
    out = np.array(R, dtype=np.float64, order="C", copy=True)
    try:
        polar_layers(out)
    except ZeroDivisionError:  # an exactly singular layer (Numba raises where C gets inf)
        out[...] = np.nan
    return out
