"""Numba kernel: gradients of C_E with respect to the data and the targets (docs/theory.md §§3, 5).

For the Euclidean loss ``C = 1/(2N) Σ_n |z_L,n − ỹ_{j(n)}|²`` (z_L,n = τ^(L)(x_n)):

* data: the Jacobian of τ^(L) at x is ``P_L ⋯ P_1`` (docs/theory.md §4: τ_ℓ is the
  projection onto a cone, its Jacobian the orthogonal projection
  ``P_ℓ = R_ℓᵀ diag(h_ℓ) R_ℓ``, symmetric), so

      ∂C/∂x_n = (1/N) P_1 ⋯ P_L e_n = (1/N) g_0,     e_n = z_L,n − ỹ_{j(n)},

  the ``g_0`` the backward pass of §5 reaches at layer 0 (it stops at layer 1
  for the weights and never forms it);
* targets: ``∂C/∂ỹ_j = −(1/N) Σ_{n : j(n) = j} e_n`` (one term of the square
  per point, the derivative of ½|z − ỹ|² in ỹ is −(z − ỹ)).

Both come from one forward pass and, for the data, one backward pass per point
(no G_ℓ sums): cost about 4 L M² per point against 10 L M² for the weights.
This is a separate pass for now; it is meant to be fused into the §5 gradient
kernel, which already holds r_ℓ for every point.

Conventions of ``_kernels.numba_kernels`` (and its forward pass, reused as is): points
in blocks stored transposed ``(M, block)``; the transfer form
``r_{ℓ-1} = S_{ℓ-1}ᵀ (h_ℓ ⊙ r_ℓ)``, ``g_0 = R_1ᵀ (h_1 ⊙ r_1)``; the Euclidean
residual in the last layer's frame, ``r_L = t_L − R_L ỹ_j``.  Rows of the data
gradient depend on their own point only (same bits for any chunking); the
per-cluster sums run point by point in order within a chunk, one partial slot
per chunk, slots added in chunk order: the same bits for any thread count.
"""

from __future__ import annotations

import numpy as np

from truncfast import _config
from truncfast._kernels import numba_cache as _numba_cache
from truncfast._kernels import numba_kernels as _kernels_numba
from truncfast._kernels import parallel as _parallel
from truncfast._kernels.numba_kernels import _forward_block, _forward_scratch
from truncfast._kernels.numba_cache import jit

__all__ = ["data_target_gradients", "data_target_range"]


@jit
def _data_target_chunk(R, S, b, X, labels, Ty, start, stop, block, inv_n, want_x, want_t, gX, acc):
    """Points start..stop-1: rows of ``gX`` (= g_0 / N) and the residual sums ``acc`` (Q, M).

    ``acc[j]`` receives Σ r_L over the chunk's points of cluster j, in the last
    layer's frame (r_L = R_L e); ``acc`` must be zero on entry.
    """
    L, M = b.shape
    U, Hm, Tt, Z, ntr = _forward_scratch(L, M, block)
    Ra = np.zeros((M, block))
    Rb = np.zeros((M, block))
    for p0 in range(start, stop, block):
        nb = min(block, stop - p0)
        _forward_block(R, S, b, X, p0, nb, U, Hm, Tt, Z, ntr, False)
        TL = Tt[L - 1]
        # r_L = t_L − ỹ'_j; columns nb..block-1 of a partial block are set to 0
        for i in range(M):
            for p in range(block):
                Ra[i, p] = 0.0
            for p in range(nb):
                Ra[i, p] = TL[i, p] - Ty[labels[p0 + p], i]
        if want_t:
            for p in range(nb):
                j = labels[p0 + p]
                for i in range(M):
                    acc[j, i] += Ra[i, p]
        if not want_x:
            continue
        for l in range(L - 1, -1, -1):
            H = Hm[l]
            if ntr[l] > 0:  # h ⊙ r: the identity where no point of the block is truncated
                for i in range(M):
                    for p in range(block):
                        Ra[i, p] *= H[i, p]
            A = S[l - 1] if l > 0 else R[0]  # r_{ℓ-1} = S_{ℓ-1}ᵀ (h⊙r);  g_0 = R_1ᵀ (h_1⊙r_1)
            for j in range(M):
                for p in range(block):
                    Rb[j, p] = 0.0
            for i in range(M):
                for j in range(M):
                    a = A[i, j]
                    for p in range(block):
                        Rb[j, p] += a * Ra[i, p]
            Ra, Rb = Rb, Ra
        for p in range(nb):
            for k in range(M):
                gX[p0 + p, k] = Ra[k, p] * inv_n


@jit
def data_target_range(R, S, b, X, labels, Ty, c_first, c_last, chunk, block, inv_n, want_x, want_t, slot0,
                      gX, pacc):
    """Chunks c_first..c_last-1: rows of ``gX``; residual sums of chunk c into slot ``pacc[c − slot0]``."""
    N = X.shape[0]
    for c in range(c_first, c_last):
        s = c - slot0
        pacc[s] = 0.0
        _data_target_chunk(R, S, b, X, labels, Ty, c * chunk, min(N, (c + 1) * chunk), block, inv_n,
                           want_x, want_t, gX, pacc[s])


# the kernel links _forward_block from _kernels_numba and freezes _config's constants
_numba_cache.stamp([_data_target_chunk, data_target_range], [_kernels_numba, _config])


def data_target_gradients(R: np.ndarray, b: np.ndarray, X: np.ndarray, labels: np.ndarray, targets: np.ndarray,
                          *, want_x: bool = True, want_targets: bool = True):
    """``(∂C/∂X (N, M) or None, ∂C/∂targets (Q, M) or None)`` of C_E, see the module docstring.

    Arguments must be validated, C-contiguous float64 (labels int64), as the
    backends receive them.  Runs on the thread pool of ``_parallel`` over
    fixed chunks (``_config.CHUNK_SIZE``): deterministic for any thread count.
    """
    N, M = X.shape
    L = b.shape[0]
    Q = targets.shape[0]
    if not (want_x or want_targets):
        return None, None
    views = []
    for a in (R, b, X, labels):  # read-only views: one Numba specialisation (see _backends._readonly)
        v = a.view()
        v.flags.writeable = False
        views.append(v)
    R, b, X, labels = views
    S = _kernels_numba.transfer_matrices(R)
    S.flags.writeable = False  # same type as R[0] where the kernel picks one of them
    Ty = targets @ R[L - 1].T  # ỹ'_j = R_L ỹ_j, row j
    chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
    nchunks = (N + chunk - 1) // chunk
    gX = np.empty((N, M) if want_x else (0, M))
    # partial slots for the cluster sums, in batches of bounded memory (the batching never changes the sum)
    per_slot = 8 * Q * M
    batch = max(1, min(nchunks, max(_config.PARTIALS_BUDGET_BYTES // max(per_slot, 1), _parallel.get_num_threads())))
    pacc = np.empty((batch, Q, M) if want_targets else (batch, 0, M))
    acc = np.zeros((Q, M))
    for c0 in range(0, nchunks, batch):
        nb = min(batch, nchunks - c0)
        _parallel.run_ranges(
            lambda a, c, _, c0=c0: data_target_range(R, S, b, X, labels, Ty, a, c, chunk, block, 1.0 / N, want_x,
                                              want_targets, c0, gX, pacc),
            c0, c0 + nb, split=4)
        if want_targets:
            _kernels_numba.add_slots(acc, pacc, nb)
    gT = None
    if want_targets:
        # Σ e = R_Lᵀ Σ r_L, then ∂C/∂ỹ_j = −(1/N) Σ_{n in j} e_n
        gT = -(acc @ R[L - 1]) / N
    return (gX if want_x else None), gT
