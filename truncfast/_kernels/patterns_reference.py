"""NumPy reference of the pattern form (docs/theory.md §11): slow, written as the section reads.

Groups are found with ``np.unique`` over the rows (pattern codes, label), their
moments with ``np.mean`` and a matrix product; the assembly builds the affine
maps of §11 explicitly — ``P_ℓ = R_ℓᵀ D_ℓ R_ℓ``, ``A_ℓ = P_ℓ A_{ℓ-1}``,
``a_ℓ = P_ℓ a_{ℓ-1} − R_ℓᵀ((1 − h_ℓ) ⊙ b_ℓ)``, ``B_{ℓ-1} = P_ℓ B_ℓ``,
``F_r = R_ℓ B_ℓ A_L``, ``F_v = R_ℓ A_{ℓ-1}`` — and evaluates the formulas with
them, one group at a time.  The Numba kernels (``patterns``) organise the same
computation differently (transfer of Γ_ℓ = B_ℓ A_L C, values at μ by a forced
forward pass); tests compare both, and both against the per-point kernel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["group_moments", "assemble", "counts"]


def group_moments(codes: np.ndarray, labels: np.ndarray, X: np.ndarray):
    """Groups of equal (codes row, label), numbered by first appearance in row order.

    Returns ``(group_of (N,), patterns (G, L), label (G,), n (G,), mean (G, M), scatter (G, M, M))``.
    """
    N, L = codes.shape
    keys = np.concatenate([codes.astype(np.uint64), labels.astype(np.uint64)[:, None]], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first)  # unique ids → ids by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group_of = rank[inverse]
    G = order.size
    M = X.shape[1]
    n = np.zeros(G, np.int64)
    mean = np.zeros((G, M))
    scatter = np.zeros((G, M, M))
    for g in range(G):
        pts = X[group_of == g]
        n[g] = pts.shape[0]
        mean[g] = pts.mean(axis=0)
        d = pts - mean[g]
        scatter[g] = d.T @ d
    return group_of, codes[first[order]], labels[first[order]], n, mean, scatter


def _bits(code, M):
    return np.array([(int(code) >> i) & 1 for i in range(M)], dtype=np.float64)


def assemble(R, b, targets, patterns, label, n, mean, scatter, N):
    """(loss, grad_b, omega) from the group moments by the formulas of §11."""
    L, M, _ = R.shape
    loss = 0.0
    gb = np.zeros((L, M))
    G = np.zeros((L, M, M))
    I = np.eye(M)
    for p, j, cnt, mu, C in zip(patterns, label, n, mean, scatter):
        if cnt == 0:
            continue
        h = [_bits(p[l], M) for l in range(L)]
        D = [np.diag(hl) for hl in h]
        P = [R[l].T @ D[l] @ R[l] for l in range(L)]
        A = [I]
        a = [np.zeros(M)]
        for l in range(L):
            A.append(P[l] @ A[l])
            a.append(P[l] @ a[l] - R[l].T @ ((1.0 - h[l]) * b[l]))
        # B_ℓ = P_{ℓ+1} ⋯ P_L (B_L = I), indexed by ℓ = 1..L as B[ℓ-1]
        B = [None] * L
        B[L - 1] = I
        for l in range(L - 1, 0, -1):
            B[l - 1] = P[l] @ B[l]
        e_mu = A[L] @ mu + a[L] - targets[j]
        loss += cnt * (e_mu @ e_mu) + np.trace(A[L] @ C @ A[L].T)
        for l in range(L):
            g_mu = B[l] @ e_mu
            r_mu = R[l] @ g_mu
            z_prev = A[l] @ mu + a[l]
            v_mu = R[l] @ z_prev
            t_mu = R[l] @ (A[l + 1] @ mu + a[l + 1])
            Fr = R[l] @ B[l] @ A[L]
            Fv = R[l] @ A[l]
            K = Fr @ C @ Fv.T
            gb[l] += -cnt * (1.0 - h[l]) * r_mu
            G[l] += cnt * (np.outer(h[l] * r_mu, v_mu) - np.outer(r_mu, t_mu)) + (D[l] @ K - K @ D[l])
    omega = 0.5 * (G - np.swapaxes(G, 1, 2)) / N
    return 0.5 * loss / N, gb / N, omega


def counts(patterns, label, n, M, Q):
    """(L, Q, 3): untruncated / partial / fully truncated point counts per layer and cluster."""
    L = patterns.shape[1]
    full = (1 << M) - 1
    out = np.zeros((L, Q, 3), np.int64)
    for p, j, cnt in zip(patterns, label, n):
        for l in range(L):
            c = int(p[l])
            out[l, j, 0 if c == full else 2 if c == 0 else 1] += cnt
    return out
