"""The NumPy reference backend: docs/theory.md §§2–6 written as directly as possible.

Vectorised over points in bounded chunks (never an N × L × M array): for each
chunk the per-layer forward quantities v_ℓ, u_ℓ, h_ℓ, t_ℓ of §5 are kept, the
error is formed, and the backward recursion accumulates ∇_b C and G_ℓ.  This
module is the readable specification the fast kernels are tested against; it
favours clarity over speed.
"""

from __future__ import annotations

import numpy as np

from truncfast import _config

__all__ = ["truncate", "sector_codes", "general", "separated_moments", "separation_violations"]

_ROWS = 1 << 14  # points per vectorised block (bounded scratch)


def _ordered_product(A, T):
    """``T @ Aᵀ`` (rows of T are points) with every entry summed over k in ascending
    order, ``((a_0 t_0 + a_1 t_1) + a_2 t_2) + …`` — the order of the Numba and C
    kernels' loops (no BLAS blocking, no FMA), hence their bits."""
    out = T[:, 0:1] * A[:, 0]
    for k in range(1, A.shape[1]):
        out += T[:, k : k + 1] * A[:, k]
    return out


def _matvec(A, T):
    """``T @ Aᵀ``: in the kernels' order for M < GEMM_MIN_WIDTH, else a matrix product."""
    if T.shape[0] == 0:
        return T @ A.T
    return _ordered_product(A, T) if A.shape[1] < _config.GEMM_MIN_WIDTH else T @ A.T


def _transfer(R):
    """``S_ℓ = R_{ℓ+1} R_ℓᵀ`` summed in the kernels' order (``numba_kernels.transfer_matrices``)."""
    return [_ordered_product(R[l], R[l + 1]) for l in range(R.shape[0] - 1)]


def _forward(R, b, X):
    """Forward pass of §5 for a block of points (rows of X).

    Returns (z_L, [(v_ℓ, u_ℓ, h_ℓ, t_ℓ) for ℓ = 1..L]) with h_ℓ = H(u_ℓ), H(0) = 0.

    The pre-activations are computed exactly as the Numba and C kernels compute
    them (for M < ``_config.GEMM_MIN_WIDTH``, where those two agree bitwise): in
    the transfer form ``v_1 = R_1 x``, ``v_{ℓ+1} = S_ℓ t̂_ℓ`` with
    ``t̂_ℓ = h⊙u − b`` and ``S_ℓ = R_{ℓ+1} R_ℓᵀ``, every sum in ascending order
    (:func:`_ordered_product`).  So a point that lies on a sector boundary up to
    rounding gets the same H in every backend (docs/api.md, "Backends"); wider
    layers use plain matrix products (the Numba kernels then use BLAS too).
    """
    L, M = b.shape
    ordered = M < _config.GEMM_MIN_WIDTH
    S = _transfer(R) if ordered else [R[l + 1] @ R[l].T for l in range(L - 1)]
    layers = []
    that = X
    for l in range(L):
        bl = b[l]
        if ordered:
            v = _ordered_product(R[0] if l == 0 else S[l - 1], that)
        else:
            v = that @ (R[0] if l == 0 else S[l - 1]).T
        u = v + bl
        h = (u > 0).astype(np.float64)
        that = u * h - bl  # t̂_ℓ = R_ℓ z_ℓ, formed as the kernels form it (propagated)
        # t_ℓ for G_ℓ: v where h = 1, −b where h = 0 — the same value as t̂_ℓ up to the
        # rounding of (v + b) − b, which must not reach G_ℓ: an untruncated point adds
        # exactly nothing to G_ℓ (Prop. 4.1 equilibria give exact zeros).
        t = np.where(h > 0, v, -bl)
        layers.append((v, u, h, t))
    RL = R[L - 1]
    z = _ordered_product(RL.T, that) if ordered else that @ RL  # z_L = R_Lᵀ t̂_L
    return z, layers


def truncate(R, b, X):
    """τ^(L)(x) for every row of X (docs/theory.md §2, §4)."""
    out = np.empty_like(X)
    for s in range(0, X.shape[0], _ROWS):
        out[s : s + _ROWS] = _forward(R, b, X[s : s + _ROWS])[0]
    return out


def sector_codes(R, b, X):
    """Bitmasks of h_ℓ along the composition: bit i of [n, ℓ] is H(u_ℓ,i) of point n."""
    L, M, _ = R.shape
    codes = np.zeros((X.shape[0], L), dtype=np.uint64)
    weights = np.uint64(1) << np.arange(M, dtype=np.uint64)
    for s in range(0, X.shape[0], _ROWS):
        _, layers = _forward(R, b, X[s : s + _ROWS])
        for l, (_, _, h, _) in enumerate(layers):
            codes[s : s + _ROWS, l] = (h.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return codes


def general(R, b, X, labels, targets=None, W_out=None, b_out=None, Y=None):
    """Loss and gradient of the general flow (docs/theory.md §5).

    Euclidean loss when ``targets`` is given (e = z_L − ỹ_j); standard loss when
    ``W_out, b_out, Y`` are given (e = W_outᵀ (W_out z_L + b_out − y_j)).

    Returns ``(loss, grad_b, omega, grad_W_out, grad_b_out)`` (the last two None
    for the Euclidean loss), all divided by N as in §3.
    """
    N = X.shape[0]
    L, M, _ = R.shape
    standard = targets is None
    loss = 0.0
    grad_b = np.zeros((L, M))
    G = np.zeros((L, M, M))
    if standard:
        gW = np.zeros_like(W_out)
        gbo = np.zeros_like(b_out)
    for s in range(0, N, _ROWS):
        zL, layers = _forward(R, b, X[s : s + _ROWS])
        lab = labels[s : s + _ROWS]
        if standard:
            res = zL @ W_out.T + b_out - Y[lab]
            loss += 0.5 * np.sum(res * res)
            gW += res.T @ zL
            gbo += res.sum(axis=0)
            g = res @ W_out
        else:
            g = zL - targets[lab]
            loss += 0.5 * np.sum(g * g)
        for l in range(L - 1, -1, -1):
            v, _, h, t = layers[l]
            r = g @ R[l].T  # r_ℓ = R_ℓ g_ℓ
            grad_b[l] -= ((1.0 - h) * r).sum(axis=0)
            G[l] += (h * r).T @ v - r.T @ t
            g = (h * r) @ R[l]  # g_{ℓ-1} = R_ℓᵀ (h ⊙ r)
    omega = 0.5 * (G - np.swapaxes(G, 1, 2)) / N
    if standard:
        return loss / N, grad_b / N, omega, gW / N, gbo / N
    return loss / N, grad_b / N, omega, None, None


def separated_moments(R, b, X, labels, Q):
    """Raw sums of the constrained moments of §6 for cluster j at layer j.

    Returns ``(counts (Q,), S0 (Q, M), S1 (Q, M, M), S2 (Q, M, M))`` with
    S0_i = Σ h_i, S1_ik = Σ h_i v_k, S2_ik = Σ h_i v_i v_k over the points of
    cluster j, v = R_j x, h = H(v + b_j).
    """
    L, M, _ = R.shape
    counts = np.bincount(labels, minlength=Q).astype(np.float64)
    S0 = np.zeros((Q, M))
    S1 = np.zeros((Q, M, M))
    S2 = np.zeros((Q, M, M))
    for j in range(Q):
        for s in range(0, X.shape[0], _ROWS):
            Xj = X[s : s + _ROWS][labels[s : s + _ROWS] == j]
            v = _matvec(R[j], Xj)  # as the kernels form v = R_j x: the same h at a tie
            h = (v + b[j] > 0).astype(np.float64)
            S0[j] += h.sum(axis=0)
            S1[j] += h.T @ v
            S2[j] += (h * v).T @ v
    return counts, S0, S1, S2


def separated_box(R, X, labels, Q):
    """Coordinate-wise extent of v = R_j x over each cluster j: ``(lo, hi)``, (Q, M) each.

    Empty clusters give +inf / −inf.
    """
    M = X.shape[1]
    lo = np.full((Q, M), np.inf)
    hi = np.full((Q, M), -np.inf)
    for j in range(Q):
        for s in range(0, X.shape[0], _ROWS):
            v = _matvec(R[j], X[s : s + _ROWS][labels[s : s + _ROWS] == j])
            if v.shape[0]:
                lo[j] = np.minimum(lo[j], v.min(axis=0))
                hi[j] = np.maximum(hi[j], v.max(axis=0))
    return lo, hi


def separation_violations(R, b, X, labels, Q):
    """(Q, L) counts: points of cluster j truncated (along the composition) at layer ℓ ≠ j."""
    L, M, _ = R.shape
    counts = np.zeros((Q, L), dtype=np.int64)
    for s in range(0, X.shape[0], _ROWS):
        _, layers = _forward(R, b, X[s : s + _ROWS])
        lab = labels[s : s + _ROWS]
        for l, (_, _, h, _) in enumerate(layers):
            bad = h.min(axis=1) == 0.0
            np.add.at(counts[:, l], lab[bad], 1)
    for j in range(min(Q, L)):
        counts[j, j] = 0
    return counts
