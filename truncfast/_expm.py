"""Retractions on O(M) for the integrators (THEORY §9): exp and Cayley maps.

Everything here is ``@njit(cache=True)`` so that the same machine code serves
the Python step loop and the compiled small-problem loop of ``_integrate`` —
which is what makes the two paths bitwise equal.

* :func:`expm_antisym` — ``exp(A)`` of an antisymmetric ``A``.  ``M = 1``: 1.
  ``M = 2``: closed form (Rodrigues), ``A = [[0, −θ], [θ, 0]]`` ↦
  ``[[cos θ, −sin θ], [sin θ, cos θ]]``.  ``M ≥ 3``: scaling and squaring with
  the diagonal Padé approximants r_m, m ∈ {3, 5, 7, 9, 13}, of Higham (SIAM J.
  Matrix Anal. Appl. 26, 2005), chosen from ‖A‖₁.  For antisymmetric A the
  denominator is the transpose of the numerator, ``r_m(A) = (P(A)ᵀ)⁻¹ P(A)``,
  an orthogonal matrix in exact arithmetic: the retraction stays on O(M) to
  rounding (checked against ``scipy.linalg.expm`` in the tests).
* :func:`cayley` — ``(I + A/2)⁻¹ (I − A/2)``, also orthogonal for antisymmetric A.
* :func:`rotate_layers` — ``out_ℓ = F(−h Ω_ℓ) R_ℓ`` for every layer (one
  Lie–Euler or Cayley step of the weights).
* :func:`defect` — ``max_ℓ max|R_ℓᵀ R_ℓ − I|``.

Products are plain loops summing in ascending index order (no BLAS), so the
bits never depend on the BLAS build or the number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["expm_antisym", "cayley", "rotate_layers", "defect", "LIE_EULER", "CAYLEY"]

#: Method codes understood by :func:`rotate_layers` (kernels take no strings).
LIE_EULER = 0
CAYLEY = 1

# Higham (2005), Table 2.3: the largest ‖A‖₁ for which r_m reaches unit roundoff.
_THETA = np.array([1.495585217958292e-2, 2.539398330063230e-1, 9.504178996162932e-1,
                   2.097847961257068e0, 5.371920351148152e0])
# Padé coefficients of degrees 3, 5, 7, 9 (rows, zero-padded to a 2-D array so
# that compiled code can index them by the chosen degree).
_PADE = np.zeros((4, 10))
_PADE[0, :4] = [120.0, 60.0, 12.0, 1.0]
_PADE[1, :6] = [30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0]
_PADE[2, :8] = [17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0]
_PADE[3, :10] = [17643225600.0, 8821612800.0, 2075673600.0, 302702400.0, 30270240.0,
                 2162160.0, 110880.0, 3960.0, 90.0, 1.0]
_PADE13 = np.array([64764752532480000.0, 32382376266240000.0, 7771770303897600.0,
                    1187353796428800.0, 129060195264000.0, 10559470521600.0,
                    670442572800.0, 33522128640.0, 1323241920.0, 40840800.0,
                    960960.0, 16380.0, 182.0, 1.0])


@njit(cache=True, nogil=True)
def _matmul(A, B, out):
    """out = A @ B, each entry summed over k in ascending order."""
    n, m = A.shape
    p = B.shape[1]
    for i in range(n):
        for j in range(p):
            out[i, j] = 0.0
        for k in range(m):
            a = A[i, k]
            for j in range(p):
                out[i, j] += a * B[k, j]


@njit(cache=True, nogil=True)
def _solve(A, B):
    """Solve A X = B (A square, B matrix) by LU with partial pivoting; A, B overwritten, X in B."""
    n = A.shape[0]
    p = B.shape[1]
    for c in range(n):
        piv = c
        best = abs(A[c, c])
        for r in range(c + 1, n):
            v = abs(A[r, c])
            if v > best:
                best = v
                piv = r
        if piv != c:
            for k in range(n):
                t = A[c, k]
                A[c, k] = A[piv, k]
                A[piv, k] = t
            for k in range(p):
                t = B[c, k]
                B[c, k] = B[piv, k]
                B[piv, k] = t
        d = A[c, c]
        for r in range(c + 1, n):
            f = A[r, c] / d
            if f != 0.0:
                for k in range(c + 1, n):
                    A[r, k] -= f * A[c, k]
                for k in range(p):
                    B[r, k] -= f * B[c, k]
    for c in range(n - 1, -1, -1):
        d = A[c, c]
        for k in range(p):
            s = B[c, k]
            for j in range(c + 1, n):
                s -= A[c, j] * B[j, k]
            B[c, k] = s / d


@njit(cache=True, nogil=True)
def _norm1(A):
    n = A.shape[0]
    best = 0.0
    for j in range(n):
        s = 0.0
        for i in range(n):
            s += abs(A[i, j])
        if s > best:
            best = s
    return best


@njit(cache=True, nogil=True)
def expm_antisym(A):
    """exp(A) for an antisymmetric (M, M) matrix A (see the module docstring)."""
    n = A.shape[0]
    out = np.zeros((n, n))
    if n == 1:
        out[0, 0] = 1.0  # the only antisymmetric 1×1 matrix is 0
        return out
    if n == 2:
        th = 0.5 * (A[1, 0] - A[0, 1])  # = A[1, 0] exactly when A is antisymmetric
        c = math.cos(th)
        s = math.sin(th)
        out[0, 0] = c
        out[0, 1] = -s
        out[1, 0] = s
        out[1, 1] = c
        return out
    nrm = _norm1(A)
    if nrm == 0.0:
        for i in range(n):
            out[i, i] = 1.0
        return out
    # choose the Padé degree, or degree 13 with scaling by 2^-s
    deg = -1
    for idx in range(4):
        if nrm <= _THETA[idx]:
            deg = idx
            break
    s = 0
    if deg < 0:
        s = max(0, int(math.ceil(math.log2(nrm / _THETA[4]))))
    scale = 0.5 ** s
    As = A * scale
    A2 = np.empty((n, n))
    _matmul(As, As, A2)
    U = np.zeros((n, n))
    V = np.zeros((n, n))
    tmp = np.empty((n, n))
    if deg >= 0:
        c = _PADE[deg]
        m = 2 * deg + 3  # degree 3, 5, 7, 9
        # U = A Σ_k c_{2k+1} A^{2k},  V = Σ_k c_{2k} A^{2k}
        P = np.eye(n)
        Uin = np.zeros((n, n))
        for k in range(m // 2 + 1):
            for i in range(n):
                for j in range(n):
                    Uin[i, j] += c[2 * k + 1] * P[i, j]
                    V[i, j] += c[2 * k] * P[i, j]
            if k < m // 2:
                _matmul(P, A2, tmp)
                P[:, :] = tmp
        _matmul(As, Uin, U)
    else:
        c = _PADE13
        A4 = np.empty((n, n))
        A6 = np.empty((n, n))
        _matmul(A2, A2, A4)
        _matmul(A4, A2, A6)
        W1 = np.empty((n, n))
        W2 = np.empty((n, n))
        Z1 = np.empty((n, n))
        Z2 = np.empty((n, n))
        for i in range(n):
            for j in range(n):
                e = 1.0 if i == j else 0.0
                W1[i, j] = c[13] * A6[i, j] + c[11] * A4[i, j] + c[9] * A2[i, j]
                W2[i, j] = c[7] * A6[i, j] + c[5] * A4[i, j] + c[3] * A2[i, j] + c[1] * e
                Z1[i, j] = c[12] * A6[i, j] + c[10] * A4[i, j] + c[8] * A2[i, j]
                Z2[i, j] = c[6] * A6[i, j] + c[4] * A4[i, j] + c[2] * A2[i, j] + c[0] * e
        _matmul(A6, W1, tmp)
        for i in range(n):
            for j in range(n):
                tmp[i, j] += W2[i, j]
        _matmul(As, tmp, U)
        _matmul(A6, Z1, V)
        for i in range(n):
            for j in range(n):
                V[i, j] += Z2[i, j]
    # r = (V − U)⁻¹ (V + U)
    D = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = V[i, j] - U[i, j]
            out[i, j] = V[i, j] + U[i, j]
    _solve(D, out)
    for _ in range(s):
        _matmul(out, out, tmp)
        out[:, :] = tmp
    return out


@njit(cache=True, nogil=True)
def cayley(A):
    """Cayley map ``(I − A/2)⁻¹ (I + A/2)`` of an antisymmetric A.

    With ``A = −hΩ`` this is ``(I + hΩ/2)⁻¹ (I − hΩ/2)``, the Cayley step of
    THEORY §9; it agrees with exp(A) to O(‖A‖³).
    """
    n = A.shape[0]
    D = np.empty((n, n))
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            e = 1.0 if i == j else 0.0
            D[i, j] = e - 0.5 * A[i, j]
            out[i, j] = e + 0.5 * A[i, j]
    _solve(D, out)
    return out


@njit(cache=True, nogil=True)
def rotate_layers(R, omega, h, method, out):
    """``out_ℓ = F(−h Ω_ℓ) R_ℓ`` for every layer, F = exp (method 0) or Cayley (1)."""
    L, M, _ = R.shape
    A = np.empty((M, M))
    for l in range(L):
        for i in range(M):
            for j in range(M):
                A[i, j] = -h * omega[l, i, j]
        E = expm_antisym(A) if method == LIE_EULER else cayley(A)
        _matmul(E, R[l], out[l])


@njit(cache=True, nogil=True)
def defect(R):
    """Orthogonality defect ``max_ℓ max_ik |(R_ℓᵀ R_ℓ − I)_ik|`` of an (L, M, M) stack."""
    L, M, _ = R.shape
    worst = 0.0
    for l in range(L):
        for i in range(M):
            for k in range(i, M):
                s = 0.0
                for m in range(M):
                    s += R[l, m, i] * R[l, m, k]
                if i == k:
                    s -= 1.0
                s = abs(s)
                if s > worst:
                    worst = s
    return worst
