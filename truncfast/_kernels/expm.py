"""Retractions on O(M) for the integrators (docs/theory.md §9): exp and Cayley maps.

Everything here is ``@jit`` (``numba_cache.jit``: cached, GIL-free) so that the same machine code serves
the Python step loop and the compiled small-problem loop of ``truncfast._integrate.api.api`` —
which is what makes the two paths bitwise equal.

* :func:`expm_antisym` — ``exp(A)`` of an antisymmetric ``A``.  ``M = 1``: 1.
  ``M = 2``: closed form (Rodrigues), ``A = [[0, −θ], [θ, 0]]`` ↦
  ``[[cos θ, −sin θ], [sin θ, cos θ]]``.  ``M ≥ 3``: scaling and squaring with
  the diagonal Padé approximants r_m, m ∈ {3, 5, 7, 9, 13}, and the degree
  thresholds θ_m of Higham (SIAM J. Matrix Anal. Appl. 26, 2005), chosen from
  ‖A‖₁; the polynomials are evaluated by plain powers of A² (one code path:
  ~2 s cold compile instead of ~14 s for Higham's separate m = 13 scheme).  For antisymmetric A the
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
from truncfast._kernels.numba_cache import jit

__all__ = ["expm_antisym", "cayley", "rotate_layers", "defect", "LIE_EULER", "CAYLEY"]

#: Method codes understood by :func:`rotate_layers` (kernels take no strings).
LIE_EULER = 0
CAYLEY = 1

# Higham (2005), Table 2.3: the largest ‖A‖₁ for which r_m reaches unit roundoff.
_THETA = np.array([1.495585217958292e-2, 2.539398330063230e-1, 9.504178996162932e-1,
                   2.097847961257068e0, 5.371920351148152e0])
# Padé coefficients b_0..b_m of degrees m = 3, 5, 7, 9, 13 (rows, zero-padded to
# one 2-D array so that compiled code indexes them by the chosen degree).
_DEGREES = np.array([3, 5, 7, 9, 13])
_PADE = np.zeros((5, 14))
_PADE[0, :4] = [120.0, 60.0, 12.0, 1.0]
_PADE[1, :6] = [30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0]
_PADE[2, :8] = [17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0]
_PADE[3, :10] = [17643225600.0, 8821612800.0, 2075673600.0, 302702400.0, 30270240.0,
                 2162160.0, 110880.0, 3960.0, 90.0, 1.0]
_PADE[4, :] = [64764752532480000.0, 32382376266240000.0, 7771770303897600.0,
               1187353796428800.0, 129060195264000.0, 10559470521600.0,
               670442572800.0, 33522128640.0, 1323241920.0, 40840800.0,
               960960.0, 16380.0, 182.0, 1.0]


@jit
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


@jit
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


@jit
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


@jit
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
    # Padé degree: the lowest whose θ_m bounds ‖A‖₁, else 13 after scaling by 2^-s
    deg = 4
    for idx in range(4):
        if nrm <= _THETA[idx]:
            deg = idx
            break
    squarings = 0
    if nrm > _THETA[4]:
        squarings = int(math.ceil(math.log2(nrm / _THETA[4])))
    scale = 0.5 ** squarings
    half = _DEGREES[deg] // 2
    # U = As Σ_k c_{2k+1} A2^k,  V = Σ_k c_{2k} A2^k  (A2 = As², powers P = A2^k).
    # Textbook evaluation (one product per power): a single loop keeps the
    # compiled code small (Higham's 6-product scheme for m = 13 saves one product).
    As = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            As[i, j] = A[i, j] * scale
    A2 = np.empty((n, n))
    _matmul(As, As, A2)
    P = np.zeros((n, n))
    for i in range(n):
        P[i, i] = 1.0
    Uin = np.zeros((n, n))
    V = np.zeros((n, n))
    tmp = np.empty((n, n))
    for k in range(half + 1):
        c_odd = _PADE[deg, 2 * k + 1]
        c_even = _PADE[deg, 2 * k]
        for i in range(n):
            for j in range(n):
                Uin[i, j] += c_odd * P[i, j]
                V[i, j] += c_even * P[i, j]
        if k < half:
            _matmul(P, A2, tmp)
            for i in range(n):
                for j in range(n):
                    P[i, j] = tmp[i, j]
    U = np.empty((n, n))
    _matmul(As, Uin, U)
    # r = (V − U)⁻¹ (V + U) = (P(A)ᵀ)⁻¹ P(A) for antisymmetric A: orthogonal in exact arithmetic
    D = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = V[i, j] - U[i, j]
            out[i, j] = V[i, j] + U[i, j]
    _solve(D, out)
    for _ in range(squarings):
        _matmul(out, out, tmp)
        for i in range(n):
            for j in range(n):
                out[i, j] = tmp[i, j]
    return out


@jit
def cayley(A):
    """Cayley map ``(I − A/2)⁻¹ (I + A/2)`` of an antisymmetric A.

    With ``A = −hΩ`` this is ``(I + hΩ/2)⁻¹ (I − hΩ/2)``, the Cayley step of
    docs/theory.md §9; it agrees with exp(A) to O(‖A‖³).
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


@jit
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


@jit
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
