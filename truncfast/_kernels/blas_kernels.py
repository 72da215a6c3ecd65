"""GEMM-blocked kernels for wide layers (M ≥ ``_config.GEMM_MIN_WIDTH``), docs/theory.md §5.

For wide layers the per-point work of §5 is dominated by M×M products, which a
tuned BLAS runs an order of magnitude faster than hand-written loops.  These
kernels process the points of a chunk in sub-blocks of ``_config.GEMM_BLOCK``
rows (points as rows, so every product is one ``(nb, M) @ (M, M)`` GEMM):

    forward    v_1 = x R_1ᵀ,  u = v + b,  h = H(u),  t = h⊙u − b,  v_{ℓ+1} = t S_ℓᵀ,  z_L = t_L R_L
    backward   r_L = e R_Lᵀ,  r_{ℓ-1} = (h⊙r) S_{ℓ-1}       (S_ℓ = R_{ℓ+1} R_ℓᵀ)
    weights    F_ℓ += (h⊙r)ᵀ ((1−h)⊙u) + (h⊙u)ᵀ ((1−h)⊙r),   D_ℓ += Σ (1−h)⊙r

and per chunk ``G_ℓ = F_ℓ + D_ℓ b_ℓᵀ``, ``grad_b = −D``: P_A(G) is the P_A of
the §5 sum (see ``truncfast._kernels.numba_kernels.general_chunk``; the masked factors keep the
contribution of an untruncated or fully truncated point exactly zero).  The
chunking and the chunk-ordered reduction are those of every other backend; a
BLAS GEMM never splits its inner dimension across threads, so results do not
depend on the thread count.  Scratch: O(L · GEMM_BLOCK · M) per chunk.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

__all__ = ["blas_single_threaded", "general_chunk_gemm", "general_range_gemm"]

_limit_lock = threading.Lock()
_limit_depth = 0
_limiter = None


@contextmanager
def blas_single_threaded():
    """Run the body with the BLAS limited to one thread (threadpoolctl).

    The limit is process-wide, so it is taken once while any worker needs it
    and restored when the last one leaves.
    """
    global _limit_depth, _limiter
    with _limit_lock:
        if _limit_depth == 0:
            try:
                from threadpoolctl import threadpool_limits

                _limiter = threadpool_limits(limits=1, user_api="blas")
            except ImportError:  # pragma: no cover - threadpoolctl is a dependency
                _limiter = None
        _limit_depth += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_depth -= 1
            if _limit_depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None


def general_chunk_gemm(R, S, b, X, labels, T, W, bout, Y, standard, want_grad, start, stop, block,
                       gb, G, gW, gbo) -> float:
    """Same contract as ``truncfast._kernels.numba_kernels.general_chunk`` (G full, not triangular)."""
    L, M = b.shape
    loss = 0.0
    for s0 in range(start, stop, block):
        s1 = min(stop, s0 + block)
        lab = labels[s0:s1]
        v = X[s0:s1] @ R[0].T
        us, hs = [], []
        for l in range(L):
            u = v + b[l]
            h = u > 0.0
            t = np.where(h, v, -b[l])
            us.append(u)
            hs.append(h)
            if l + 1 < L:
                v = t @ S[l].T
        z = t @ R[L - 1]
        if standard:
            res = z @ W.T + bout - Y[lab]
            loss += 0.5 * float(np.einsum("ij,ij->", res, res))
            if not want_grad:
                continue
            gW += res.T @ z
            gbo += res.sum(axis=0)
            e = res @ W
        else:
            e = z - T[lab]
            loss += 0.5 * float(np.einsum("ij,ij->", e, e))
            if not want_grad:
                continue
        trunc = [not h.all() for h in hs]
        if not any(trunc):
            continue
        lowest = trunc.index(True)
        r = e @ R[L - 1].T
        for l in range(L - 1, lowest - 1, -1):
            h = hs[l]
            if trunc[l]:
                u = us[l]
                hr = np.where(h, r, 0.0)
                d = r - hr
                gb[l] -= d.sum(axis=0)
                G[l] += hr.T @ np.where(h, 0.0, u) + np.where(h, u, 0.0).T @ d
                r = hr
            if l > lowest:
                r = r @ S[l - 1]
    if want_grad:
        G += (-gb)[:, :, None] * b[:, None, :]  # Σ d bᵀ: gb = −Σ d over this chunk (zero on entry)
    return loss


def general_range_gemm(R, S, b, X, labels, T, W, bout, Y, standard, want_grad, c_first, c_last, chunk, block,
                       slot0, pgb, pG, pgW, pgbo, ploss) -> None:
    """Chunks c_first..c_last-1, each into its own zeroed partial slot (as ``general_range``)."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        s = c - slot0
        pgb[s] = 0.0
        pG[s] = 0.0
        pgW[s] = 0.0
        pgbo[s] = 0.0
        ploss[s] = general_chunk_gemm(R, S, b, X, labels, T, W, bout, Y, standard, want_grad,
                                      c * chunk, min(N, (c + 1) * chunk), block, pgb[s], pG[s], pgW[s], pgbo[s])
