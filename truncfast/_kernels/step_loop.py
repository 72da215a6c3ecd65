"""The integrator's compiled step loop (Numba, sequential): arrays in, arrays out.

For small problems (N ≤ ``_config.COMPILED_LOOP_MAX_N``, one reduction chunk)
per-step Python and thread start-up overhead would dominate, so a whole chunk
of Lie–Euler / Cayley steps runs here without returning to Python.  The
evaluation reuses the per-chunk kernel ``numba_kernels.general_chunk`` with the
same chunk-ordered reduction as the parallel backend and the same ``expm``
code, so its iterates are bitwise equal to the Python loop's
(docs/theory.md §5, §9).
"""

from __future__ import annotations

import math

import numpy as np
from truncfast._kernels.numba_cache import jit

from truncfast import _config
from truncfast._kernels import expm as _expm
from truncfast._kernels import numba_cache as _numba_cache
from truncfast._kernels import numba_kernels as _kn

__all__ = ["evaluate_seq", "compiled_steps", "counts_seq", "DONE", "REORTH", "DIVERGED"]

_general_chunk = _kn.general_chunk
_transfer_matrices = _kn.transfer_matrices

#: statuses returned by :func:`compiled_steps`
DONE, REORTH, DIVERGED = 0, 1, 2

@jit
def evaluate_seq(R, b, X, labels, T, W, bout, Y, chunk, block, gb, omega, G, pgb, pG, pgW, pgbo):
    """Loss and (grad_b, omega) of the general Euclidean flow (docs/theory.md §5), sequentially.

    The exact reduction of ``general_kernel`` + ``truncfast._backends.registry._normalise``: chunk
    partials (``general_chunk``) added to zeroed totals in chunk order, then
    ``loss/N``, ``gb/N``, ``omega = 0.5 (G − Gᵀ)/N`` — the same operations in
    the same order, hence the same bits.  Writes gb and omega, returns the loss.
    """
    N = X.shape[0]
    L, M = b.shape
    S = _transfer_matrices(R)
    nchunks = (N + chunk - 1) // chunk
    gb[:] = 0.0
    G[:] = 0.0
    loss = 0.0
    for c in range(nchunks):
        pgb[:] = 0.0
        pG[:] = 0.0
        pgW[:] = 0.0
        pgbo[:] = 0.0
        ploss = _general_chunk(R, S, b, X, labels, T, W, bout, Y, False, True, c * chunk,
                               min(N, (c + 1) * chunk), block, pgb, pG, pgW, pgbo)
        loss += ploss
        gb += pgb
        G += pG
    for l in range(L):
        for i in range(M):
            gb[l, i] = gb[l, i] / N
            for k in range(M):
                omega[l, i, k] = 0.5 * (G[l, i, k] - G[l, k, i]) / N
    return loss / N


@jit
def compiled_steps(R, b, gb, omega, X, labels, T, W, bout, Y, chunk, block, dt, method,
                    train_w, train_b, nsteps, tol, Rprev, bprev, loss_limit, losses):
    """Up to ``nsteps`` Lie–Euler / Cayley steps without leaving compiled code.

    On entry (R, b) is state k and (gb, omega) its right-hand side; on return
    (status DONE) they are state k + done and its right-hand side.  Stops early
    with REORTH after a step whose orthogonality defect exceeds ``tol`` (the
    caller re-orthonormalises and re-evaluates, exactly like the Python loop),
    or with DIVERGED when the new loss or gradient is not finite or the loss
    exceeds ``loss_limit`` (Rprev, bprev then hold the last good state).
    ``losses[i]`` receives the loss after step i + 1 of the call (for the run's
    instability monitor; not written for a step that returns REORTH).
    Returns ``(status, done, loss)``.
    """
    L, M = b.shape
    P = W.shape[0]
    G = np.empty((L, M, M))
    pgb = np.empty((L, M))
    pG = np.empty((L, M, M))
    pgW = np.empty((P, M))
    pgbo = np.empty(P)
    loss = 0.0
    for it in range(nsteps):
        Rprev[:] = R
        bprev[:] = b
        if train_w:
            _expm.rotate_layers(Rprev, omega, dt, method, R)
        if train_b:
            for l in range(L):
                for i in range(M):
                    b[l, i] = bprev[l, i] - dt * gb[l, i]
        if train_w and _expm.defect(R) > tol:
            return REORTH, it + 1, loss
        loss = evaluate_seq(R, b, X, labels, T, W, bout, Y, chunk, block, gb, omega, G, pgb, pG, pgW, pgbo)
        losses[it] = loss
        s = loss
        for l in range(L):
            for i in range(M):
                s += gb[l, i] * gb[l, i]
                for k in range(M):
                    s += omega[l, i, k] * omega[l, i, k]
        if not math.isfinite(s) or loss > loss_limit:
            return DIVERGED, it + 1, loss
    return DONE, nsteps, loss


@jit
def counts_seq(R, b, X, labels, Q, chunk, block, out):
    """out[ℓ, j] = [untruncated, partial, fully truncated] points of cluster j at layer ℓ.

    Sector codes along the composition from the numba backend's own kernel
    (``truncate_range``), so the counts agree bit for bit with
    ``tf.sector_codes(..., backend="numba")``; one sequential call instead of
    a round of NumPy reductions per record.  Needs M ≤ 64.
    """
    N, M = X.shape
    L = b.shape[0]
    S = _transfer_matrices(R)
    codes = np.empty((N, L), dtype=np.uint64)
    dummy = np.empty((0, M))
    _kn.truncate_range(R, S, b, X, 0, (N + chunk - 1) // chunk, chunk, block, dummy, codes, True)
    ones = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - M)
    out[:] = 0
    for n in range(N):
        j = labels[n]
        for l in range(L):
            c = codes[n, l]
            if c == ones:
                out[l, j, 0] += 1
            elif c == 0:
                out[l, j, 2] += 1
            else:
                out[l, j, 1] += 1


# the compiled loops link the kernels of _kernels_numba / _expm and the
# constants of _config into their cached code (see _numba_cache)
_numba_cache.stamp([evaluate_seq, compiled_steps, counts_seq], [_kn, _expm, _config])


