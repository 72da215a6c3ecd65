"""NumPy reference of the unaligned flow: docs/theory.md §13 written as directly as possible.

State: cumulative weights ``W_ℓ`` ∈ GL(M) and biases ``b_ℓ``.  Per point,

    u_ℓ = W_ℓ z_{ℓ−1} + b_ℓ,   h_ℓ = H(u_ℓ),   t_ℓ = h_ℓ ⊙ u_ℓ − b_ℓ,   z_ℓ = W_ℓ⁻¹ t_ℓ,

so τ_ℓ(z) = W_ℓ⁻¹(σ(W_ℓ z + b_ℓ) − b_ℓ) (an oblique projection onto the cone
``W_ℓ z + b_ℓ ≥ 0``), and the backward pass of the Euclidean loss, with
``g_L = e = z_L − ỹ_j``, is

    r_ℓ = W_ℓ⁻ᵀ g_ℓ,   ∇_{W_ℓ} C += (h_ℓ ⊙ r_ℓ) z_{ℓ−1}ᵀ − r_ℓ z_ℓᵀ,
    ∇_{b_ℓ} C += −(1 − h_ℓ) ⊙ r_ℓ,   g_{ℓ−1} = W_ℓᵀ (h_ℓ ⊙ r_ℓ)

(sums over the points, then divided by N).  Points are vectorised in bounded
blocks; the inverses come from ``np.linalg.inv``.  The fast kernels
(``unaligned_numba``, the C core) use another, algebraically equal
arrangement and are tested against this one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["truncate", "sector_codes", "general"]

_ROWS = 1 << 14  # points per vectorised block (bounded scratch)


def _forward(W, Winv, b, X):
    """Forward pass for a block of rows: ``(z_L, [(z_{ℓ−1}, u_ℓ, h_ℓ, z_ℓ)])``, H(0) = 0."""
    z = X
    layers = []
    for Wl, Wi, bl in zip(W, Winv, b):
        v = z @ Wl.T  # W_ℓ z_{ℓ−1}
        u = v + bl
        h = (u > 0).astype(np.float64)
        # t = h⊙u − b, formed as v where h = 1 and −b where h = 0 (same value, and an
        # untruncated point keeps z_ℓ = W⁻¹ W z_{ℓ−1} up to the rounding of the inverse)
        t = np.where(h > 0, v, -bl)
        z_new = t @ Wi.T  # z_ℓ = W_ℓ⁻¹ t_ℓ
        layers.append((z, u, h, z_new))
        z = z_new
    return z, layers


def truncate(W, b, X):
    """τ^(L)(x) for every row of X with general invertible W (docs/theory.md §13)."""
    Winv = np.linalg.inv(W)
    out = np.empty_like(X)
    for s in range(0, X.shape[0], _ROWS):
        out[s : s + _ROWS] = _forward(W, Winv, b, X[s : s + _ROWS])[0]
    return out


def sector_codes(W, b, X):
    """Bitmasks of h_ℓ along the composition (docs/theory.md §§2, 13), (N, L) uint64."""
    L, M, _ = W.shape
    Winv = np.linalg.inv(W)
    codes = np.zeros((X.shape[0], L), dtype=np.uint64)
    weights = np.uint64(1) << np.arange(M, dtype=np.uint64)
    for s in range(0, X.shape[0], _ROWS):
        _, layers = _forward(W, Winv, b, X[s : s + _ROWS])
        for l, (_, _, h, _) in enumerate(layers):
            codes[s : s + _ROWS, l] = (h.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return codes


def general(W, b, X, labels, targets):
    """``(loss, grad_b (L, M), grad_W (L, M, M))`` of C_E, all divided by N (docs/theory.md §13).

    ``loss = 1/(2N) Σ |τ^(L)(x_n) − ỹ_{labels[n]}|²``; the gradients are the plain
    Euclidean gradients in the entries of b_ℓ and W_ℓ.
    """
    N = X.shape[0]
    L, M, _ = W.shape
    Winv = np.linalg.inv(W)
    loss = 0.0
    grad_b = np.zeros((L, M))
    grad_W = np.zeros((L, M, M))
    for s in range(0, N, _ROWS):
        zL, layers = _forward(W, Winv, b, X[s : s + _ROWS])
        g = zL - targets[labels[s : s + _ROWS]]
        loss += 0.5 * np.sum(g * g)
        for l in range(L - 1, -1, -1):
            z_prev, _, h, z = layers[l]
            r = g @ Winv[l]  # r_ℓ = W_ℓ⁻ᵀ g_ℓ (rows)
            grad_b[l] -= ((1.0 - h) * r).sum(axis=0)
            grad_W[l] += (h * r).T @ z_prev - r.T @ z
            g = (h * r) @ W[l]  # g_{ℓ−1} = W_ℓᵀ (h ⊙ r)
    return loss / N, grad_b / N, grad_W / N
