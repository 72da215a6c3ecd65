"""The Numba backend: sequential GIL-free kernels run over fixed chunk ranges by the thread pool.

Kernels in ``truncfast._kernels.numba_kernels`` (narrow layers) and
``blas_kernels`` (M ≥ ``_config.GEMM_MIN_WIDTH``); chunk partials are added in
chunk order, so results are bitwise independent of the thread count
(docs/DESIGN.md, "Determinism").  Small problems can run the integrator's
whole step loop compiled (``truncfast._kernels.step_loop``).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from truncfast import _config
from truncfast._backends.local import LocalBackend, batch, normalise, readonly
from truncfast._kernels import numba_kernels as _k
from truncfast._kernels import parallel as _par

__all__ = ["NumbaBackend", "general_chunk_kernel"]


def general_chunk_kernel(M: int):
    """The §5 chunk-range kernel for width M: ``(fn, block, context)``.

    ``fn`` has the signature of ``numba_kernels.general_range``; ``context()``
    must be held while it runs.  Narrow layers use the Numba loops; wide layers
    (M ≥ ``_config.GEMM_MIN_WIDTH``) the BLAS-blocked kernels, with the BLAS held
    to one thread because the caller's pool already uses every core (a
    multi-threaded BLAS inside each worker measured 10–100× slower on a busy
    machine).  Every caller (local pool, dask blocks) uses this one choice, so
    local and distributed runs share their bits.
    """
    if M >= _config.GEMM_MIN_WIDTH:
        from truncfast._kernels.blas_kernels import blas_single_threaded, general_range_gemm

        return general_range_gemm, _config.GEMM_BLOCK, blas_single_threaded
    return _k.general_range, _config.BLOCK_SIZE, nullcontext


class NumbaBackend(LocalBackend):
    name = "numba"
    pattern_kernels = "numba"

    def _forward_map(self, R, b, X, want_codes):
        N, M = X.shape
        L = b.shape[0]
        R, b, X = readonly(R, b, X)
        (S,) = readonly(_k.transfer_matrices(R))
        chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
        out = np.empty((0 if want_codes else N, M))
        codes = np.empty((N if want_codes else 0, L), dtype=np.uint64)
        nchunks = (N + chunk - 1) // chunk
        _par.run_ranges(lambda a, c, _: _k.truncate_range(R, S, b, X, a, c, chunk, block, out, codes, want_codes),
                        0, nchunks, split=4)
        return codes if want_codes else out

    def truncate(self, R, b, X):
        return self._forward_map(R, b, X, False)

    def codes(self, R, b, X):
        return self._forward_map(R, b, X, True)

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        M = b.shape[1]
        R, b, X, labels, T, W, bout, Y = readonly(R, b, X, labels, T, W, bout, Y)
        (S,) = readonly(_k.transfer_matrices(R))
        chunk_fn, block, context = general_chunk_kernel(M)
        with context():
            return self._general(R, S, b, X, labels, T, W, bout, Y, standard, want_grad,
                                 _config.CHUNK_SIZE, block, chunk_fn)

    def _general(self, R, S, b, X, labels, T, W, bout, Y, standard, want_grad, chunk, block, chunk_fn):
        N = X.shape[0]
        L, M = b.shape
        P = W.shape[0]
        nchunks = (N + chunk - 1) // chunk
        nb_max = batch(nchunks, 8 * (L * M * (M + 1) + P * (M + 1) + 1))
        gb, G, gW, gbo, loss = np.zeros((L, M)), np.zeros((L, M, M)), np.zeros((P, M)), np.zeros(P), np.zeros(1)
        pgb, pG = np.empty((nb_max, L, M)), np.empty((nb_max, L, M, M))
        pgW, pgbo, ploss = np.empty((nb_max, P, M)), np.empty((nb_max, P)), np.empty((nb_max, 1))
        for c0 in range(0, nchunks, nb_max):
            nb = min(nb_max, nchunks - c0)
            _par.run_ranges(
                lambda a, c, _: chunk_fn(R, S, b, X, labels, T, W, bout, Y, standard, want_grad,
                                         a, c, chunk, block, c0, pgb, pG, pgW, pgbo, ploss[:, 0]),
                c0, c0 + nb, split=4)
            for total, part in ((loss, ploss), (gb, pgb), (G, pG), (gW, pgW), (gbo, pgbo)):
                _k.add_slots(total, part, nb)
        return normalise(N, loss[0], gb, G, gW, gbo, standard)

    def moments_box(self, R, b, X, labels, Q):
        N, M = X.shape
        R, b, X, labels = readonly(R, b, X, labels)
        chunk = _config.CHUNK_SIZE
        nchunks = (N + chunk - 1) // chunk
        nb_max = batch(nchunks, 8 * Q * (M * (2 * M + 3) + 1))
        S0, S1, S2, cnt = np.zeros((Q, M)), np.zeros((Q, M, M)), np.zeros((Q, M, M)), np.zeros(Q)
        lo, hi = np.full((Q, M), np.inf), np.full((Q, M), -np.inf)
        p0, p1, p2 = np.empty((nb_max, Q, M)), np.empty((nb_max, Q, M, M)), np.empty((nb_max, Q, M, M))
        pn, plo, phi = np.empty((nb_max, Q)), np.empty((nb_max, Q, M)), np.empty((nb_max, Q, M))
        for c0 in range(0, nchunks, nb_max):
            nb = min(nb_max, nchunks - c0)
            _par.run_ranges(lambda a, c, _: _k.moments_range(R, b, X, labels, a, c, chunk, c0, p0, p1, p2,
                                                             pn, plo, phi),
                            c0, c0 + nb, split=4)
            for total, part in ((S0, p0), (S1, p1), (S2, p2), (cnt, pn)):
                _k.add_slots(total, part, nb)
            np.minimum(lo, plo[:nb].min(axis=0), out=lo)  # min / max: exact in any order
            np.maximum(hi, phi[:nb].max(axis=0), out=hi)
        return S0, S1, S2, cnt, lo, hi

    def violations(self, R, b, X, labels, Q):
        N = X.shape[0]
        L = b.shape[0]
        R, b, X, labels = readonly(R, b, X, labels)
        (S,) = readonly(_k.transfer_matrices(R))
        chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
        nchunks = (N + chunk - 1) // chunk
        # integer counts: any summation order gives the same result
        threads = _par.get_num_threads()  # read once: the slots must match the ranges
        parts = np.zeros((max(1, min(threads, nchunks)), Q, L), dtype=np.int64)
        _par.run_ranges(
            lambda a, c, i: _k.violations_range(R, S, b, X, labels, a, c, chunk, block, parts[i]), 0, nchunks,
            threads=threads)
        return parts.sum(axis=0)

    def counts(self, R, b, X, labels, Q):
        # one compiled call per row block instead of a round of NumPy reductions
        # (integer counts: the blocking cannot change the result)
        from truncfast._kernels.step_loop import counts_seq

        L, M = b.shape
        out = np.zeros((L, Q, 3), dtype=np.int64)
        part = np.empty((L, Q, 3), dtype=np.int64)
        rows = _config.COUNTS_ROWS
        for s in range(0, X.shape[0], rows):
            counts_seq(R, b, X[s:s + rows], labels[s:s + rows], Q, _config.CHUNK_SIZE, _config.BLOCK_SIZE, part)
            out += part
        return out

    # ------------------------------------------ unaligned weights (§13) ---
    @staticmethod
    def _unaligned_ops(W):
        """``(Winv, S, Zt)`` of ``unaligned_numba.operators`` (once per call, O(L M³))."""
        from truncfast._kernels import unaligned_numba as _u

        L, M, _ = W.shape
        Winv = np.empty((L, M, M))
        bad = _u.inverse(W, Winv)
        if bad >= 0:
            raise ValueError(f"numba backend: W_{bad} has an exactly zero pivot (singular)")
        S, Zt = np.zeros((max(L - 1, 0), M, M)), np.empty((M, M))
        _u.operators(W, Winv, S, Zt)
        return readonly(Winv, S, Zt)

    def unaligned_forward(self, W, b, X, want_codes):
        from truncfast._kernels import unaligned_numba as _u

        N, M = X.shape
        L = b.shape[0]
        W, b, X = readonly(W, b, X)
        _, S, Zt = self._unaligned_ops(W)
        chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
        out = np.empty((0 if want_codes else N, M))
        codes = np.empty((N if want_codes else 0, L), dtype=np.uint64)
        _par.run_ranges(lambda a, c, _: _u.truncate_range(W, S, Zt, b, X, a, c, chunk, block, out, codes, want_codes),
                        0, (N + chunk - 1) // chunk, split=4)
        return codes if want_codes else out

    def unaligned_general(self, W, b, X, labels, T, want_grad):
        from truncfast._kernels import unaligned_numba as _u

        N = X.shape[0]
        L, M = b.shape
        W, b, X, labels, T = readonly(W, b, X, labels, T)
        Winv, S, Zt = self._unaligned_ops(W)
        chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
        nchunks = (N + chunk - 1) // chunk
        nb_max = batch(nchunks, 8 * (L * M * (M + 1) + 1))
        gb, G, loss = np.zeros((L, M)), np.zeros((L, M, M)), np.zeros(1)
        pgb, pG, ploss = np.empty((nb_max, L, M)), np.empty((nb_max, L, M, M)), np.empty((nb_max, 1))
        for c0 in range(0, nchunks, nb_max):
            nb = min(nb_max, nchunks - c0)
            _par.run_ranges(
                lambda a, c, _: _u.general_range(W, S, Zt, b, X, labels, T, want_grad, a, c, chunk, block, c0,
                                                 pgb, pG, ploss[:, 0]),
                c0, c0 + nb, split=4)
            for total, part in ((loss, ploss), (gb, pgb), (G, pG)):  # chunk order, as the C core
                _k.add_slots(total, part, nb)
        gW = np.zeros((L, M, M))
        if want_grad:
            _u.finish_grad_w(G, Winv, gW)
        return loss[0] / N, gb / N, gW / N

    # -------------------------------------------------- compiled step loop ---
    def runs_compiled_loop(self, N, form, method_code):
        return form == "general" and method_code is not None and N <= _config.COMPILED_LOOP_MAX_N

    @staticmethod
    def compiled_steps(R, b, gb, omega, X, labels, T, W, bout, Y, dt, method_code, train_w, train_b, nsteps,
                       tol, Rprev, bprev, loss_limit, losses):
        """Up to ``nsteps`` steps in compiled code (``step_loop.compiled_steps``): ``(status, done, loss)``;
        the loss after each step goes to ``losses``."""
        from truncfast._kernels.step_loop import compiled_steps

        return compiled_steps(R, b, gb, omega, X, labels, T, W, bout, Y, _config.CHUNK_SIZE, _config.BLOCK_SIZE,
                              dt, method_code, train_w, train_b, nsteps, tol, Rprev, bprev, loss_limit, losses)

    @staticmethod
    def evaluate_seq(R, b, X, labels, T, gb, omega) -> float:
        """Loss, and (grad_b, omega) written in place, with the compiled loop's exact reduction."""
        from truncfast._kernels.step_loop import evaluate_seq

        M = R.shape[1]
        return evaluate_seq(R, b, X, labels, T, np.empty((0, M)), np.empty(0), np.empty((T.shape[0], 0)),
                            _config.CHUNK_SIZE, _config.BLOCK_SIZE, gb, omega, np.empty_like(omega),
                            np.empty_like(gb), np.empty_like(omega), np.empty((0, M)), np.empty(0))
