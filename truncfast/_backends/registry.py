"""Backend registry and dispatch.

A backend is an object with six methods taking validated, C-contiguous
float64/int64 arrays (THEORY §§2, 5, 6):

``truncate(R, b, X)`` → (N, M); ``codes(R, b, X)`` → (N, L) uint64;
``general(R, b, X, labels, T, W, bout, Y, standard, want_grad)`` →
``(loss, grad_b, omega, grad_W, grad_bout)`` already divided by N, omega
antisymmetrised; ``moments(R, b, X, labels, Q)`` → raw sums (S0, S1, S2);
``moments_box(R, b, X, labels, Q)`` → (S0, S1, S2, counts (Q,), lo, hi (Q, M)),
the moments plus cluster sizes and each cluster's extent in its own frame, in
the same pass (``_separated.checked_moments``);
``violations(R, b, X, labels, Q)`` → (Q, L) int64 counts.

``"numpy"`` is the reference (``_reference``), ``"numba"`` the parallel JIT
kernels (``_kernels_numba``), ``"c"`` the cffi core (``_ccore``, optional).
``"auto"`` picks the fastest one available: see :func:`resolve`.
"""

from __future__ import annotations

import importlib

import numpy as np

from truncfast import _config
from truncfast._errors import BackendUnavailable, InputError

__all__ = ["BACKENDS", "available", "backends", "get", "resolve"]

BACKENDS = ("numpy", "numba", "c")


def _normalise(N, loss, gb, G, gW, gbo, standard):
    omega = 0.5 * (G - np.swapaxes(G, 1, 2)) / N
    if standard:
        return loss / N, gb / N, omega, gW / N, gbo / N
    return loss / N, gb / N, omega, None, None


def _batch(nchunks: int, bytes_per_chunk: int) -> int:
    """Chunks per batch of partial slots: enough to feed every thread, bounded in memory.

    The batch size never changes the result (slots are added in chunk order).
    """
    from truncfast._kernels.parallel import get_num_threads

    threads = get_num_threads()
    cap = _config.PARTIALS_BUDGET_BYTES // max(1, bytes_per_chunk)
    # at least one chunk per thread even if that exceeds the budget a little
    return int(max(1, min(nchunks, max(cap, threads))))


def general_chunk_kernel(M: int):
    """The §5 chunk-range kernel for width M: ``(fn, block, context)``.

    ``fn`` has the signature of ``_kernels_numba.general_range``; ``context()``
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
    from contextlib import nullcontext

    from truncfast._kernels import numba_kernels as _kernels_numba

    return _kernels_numba.general_range, _config.BLOCK_SIZE, nullcontext


class NumpyBackend:
    name = "numpy"

    def __init__(self):
        from truncfast._kernels import reference as _reference

        self._ref = _reference

    def truncate(self, R, b, X):
        return self._ref.truncate(R, b, X)

    def codes(self, R, b, X):
        return self._ref.sector_codes(R, b, X)

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        if standard:
            return self._ref.general(R, b, X, labels, None, W, bout, Y)
        return self._ref.general(R, b, X, labels, T)

    def moments(self, R, b, X, labels, Q):
        return self._ref.separated_moments(R, b, X, labels, Q)[1:]

    def moments_box(self, R, b, X, labels, Q):
        counts, S0, S1, S2 = self._ref.separated_moments(R, b, X, labels, Q)
        return (S0, S1, S2, counts, *self._ref.separated_box(R, X, labels, Q))

    def violations(self, R, b, X, labels, Q):
        return self._ref.separation_violations(R, b, X, labels, Q)


def _readonly(*arrays):
    """Read-only views (no copies) of the arrays a Numba kernel only reads.

    Numba types read-only arrays (e.g. memmaps opened with mode 'r') apart from
    writeable ones and compiles every kernel again for them.  Handing the
    kernels read-only views always keeps one specialisation per kernel, so
    read-only inputs cost no second compilation, and no kernel can write into
    an input.
    """
    views = []
    for a in arrays:
        v = a.view()
        v.flags.writeable = False
        views.append(v)
    return views


class NumbaBackend:
    """Sequential GIL-free Numba kernels run over chunk ranges by ``_parallel``."""

    name = "numba"

    def __init__(self):
        from truncfast._kernels import numba_kernels as _kernels_numba
        from truncfast._kernels import parallel as _parallel

        self._k = _kernels_numba
        self._par = _parallel

    def _forward_map(self, R, b, X, want_codes):
        N, M = X.shape
        L = b.shape[0]
        k = self._k
        R, b, X = _readonly(R, b, X)
        (S,) = _readonly(k.transfer_matrices(R))
        chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
        out = np.empty((0 if want_codes else N, M))
        codes = np.empty((N if want_codes else 0, L), dtype=np.uint64)
        nchunks = (N + chunk - 1) // chunk
        self._par.run_ranges(lambda a, c, _: k.truncate_range(R, S, b, X, a, c, chunk, block, out, codes, want_codes),
                             0, nchunks, split=4)
        return codes if want_codes else out

    def truncate(self, R, b, X):
        return self._forward_map(R, b, X, False)

    def codes(self, R, b, X):
        return self._forward_map(R, b, X, True)

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        M = b.shape[1]
        k = self._k
        R, b, X, labels, T, W, bout, Y = _readonly(R, b, X, labels, T, W, bout, Y)
        (S,) = _readonly(k.transfer_matrices(R))
        chunk_fn, block, context = general_chunk_kernel(M)
        with context():
            return self._general(R, S, b, X, labels, T, W, bout, Y, standard, want_grad,
                                 _config.CHUNK_SIZE, block, chunk_fn)

    def _general(self, R, S, b, X, labels, T, W, bout, Y, standard, want_grad, chunk, block, chunk_fn):
        N = X.shape[0]
        L, M = b.shape
        P = W.shape[0]
        k = self._k
        nchunks = (N + chunk - 1) // chunk
        batch = _batch(nchunks, 8 * (L * M * (M + 1) + P * (M + 1) + 1))
        gb, G, gW, gbo, loss = np.zeros((L, M)), np.zeros((L, M, M)), np.zeros((P, M)), np.zeros(P), np.zeros(1)
        pgb, pG = np.empty((batch, L, M)), np.empty((batch, L, M, M))
        pgW, pgbo, ploss = np.empty((batch, P, M)), np.empty((batch, P)), np.empty((batch, 1))
        for c0 in range(0, nchunks, batch):
            nb = min(batch, nchunks - c0)
            self._par.run_ranges(
                lambda a, c, _: chunk_fn(R, S, b, X, labels, T, W, bout, Y, standard, want_grad,
                                         a, c, chunk, block, c0, pgb, pG, pgW, pgbo, ploss[:, 0]),
                c0, c0 + nb, split=4)
            for total, part in ((loss, ploss), (gb, pgb), (G, pG), (gW, pgW), (gbo, pgbo)):
                k.add_slots(total, part, nb)
        return _normalise(N, loss[0], gb, G, gW, gbo, standard)

    def moments(self, R, b, X, labels, Q):
        return self.moments_box(R, b, X, labels, Q)[:3]

    def moments_box(self, R, b, X, labels, Q):
        N, M = X.shape
        k = self._k
        R, b, X, labels = _readonly(R, b, X, labels)
        chunk = _config.CHUNK_SIZE
        nchunks = (N + chunk - 1) // chunk
        batch = _batch(nchunks, 8 * Q * (M * (2 * M + 3) + 1))
        S0, S1, S2, cnt = np.zeros((Q, M)), np.zeros((Q, M, M)), np.zeros((Q, M, M)), np.zeros(Q)
        lo, hi = np.full((Q, M), np.inf), np.full((Q, M), -np.inf)
        p0, p1, p2 = np.empty((batch, Q, M)), np.empty((batch, Q, M, M)), np.empty((batch, Q, M, M))
        pn, plo, phi = np.empty((batch, Q)), np.empty((batch, Q, M)), np.empty((batch, Q, M))
        for c0 in range(0, nchunks, batch):
            nb = min(batch, nchunks - c0)
            self._par.run_ranges(lambda a, c, _: k.moments_range(R, b, X, labels, a, c, chunk, c0, p0, p1, p2,
                                                                 pn, plo, phi),
                                 c0, c0 + nb, split=4)
            for total, part in ((S0, p0), (S1, p1), (S2, p2), (cnt, pn)):
                k.add_slots(total, part, nb)
            np.minimum(lo, plo[:nb].min(axis=0), out=lo)  # min / max: exact in any order
            np.maximum(hi, phi[:nb].max(axis=0), out=hi)
        return S0, S1, S2, cnt, lo, hi

    def violations(self, R, b, X, labels, Q):
        N = X.shape[0]
        L = b.shape[0]
        k = self._k
        R, b, X, labels = _readonly(R, b, X, labels)
        (S,) = _readonly(k.transfer_matrices(R))
        chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
        nchunks = (N + chunk - 1) // chunk
        from truncfast._kernels.parallel import get_num_threads

        # integer counts: any summation order gives the same result
        parts = np.zeros((max(1, min(get_num_threads(), nchunks)), Q, L), dtype=np.int64)
        self._par.run_ranges(
            lambda a, c, i: k.violations_range(R, S, b, X, labels, a, c, chunk, block, parts[i]), 0, nchunks)
        return parts.sum(axis=0)


class CBackend:
    """The cffi core; all calls go through the private ``_ccore`` module."""

    name = "c"

    def __init__(self):
        self._c = importlib.import_module("truncfast._kernels.ccore")
        if not self._c.available():
            raise ImportError(self._c.unavailable_reason())

    def truncate(self, R, b, X):
        return self._c.truncate(R, b, X, _config.CHUNK_SIZE)

    def codes(self, R, b, X):
        return self._c.codes(R, b, X, _config.CHUNK_SIZE)

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        out = self._c.general(R, b, X, labels, T, W, bout, Y, standard, want_grad, _config.CHUNK_SIZE)
        return _normalise(X.shape[0], *out, standard)

    def moments(self, R, b, X, labels, Q):
        return self._c.moments(R, b, X, labels, Q, _config.CHUNK_SIZE)

    def moments_box(self, R, b, X, labels, Q):
        return self._c.moments_box(R, b, X, labels, Q, _config.CHUNK_SIZE)

    def violations(self, R, b, X, labels, Q):
        return self._c.violations(R, b, X, labels, Q, _config.CHUNK_SIZE)


_CLASSES = {"numpy": NumpyBackend, "numba": NumbaBackend, "c": CBackend}
_instances: dict[str, object] = {}
_failures: dict[str, str] = {}


def _load(name: str):
    if name in _instances:
        return _instances[name]
    if name in _failures:
        return None
    try:
        inst = _CLASSES[name]()
    except Exception as exc:  # a missing optional dependency or extension
        _failures[name] = f"{type(exc).__name__}: {exc}"
        return None
    _instances[name] = inst
    return inst


def backends() -> dict[str, str]:
    """Report every backend: ``"available"`` or the reason it is not."""
    report = {}
    for name in BACKENDS:
        report[name] = "available" if _load(name) is not None else f"unavailable ({_failures[name]})"
    return report


def available() -> list[str]:
    """Names of the backends that can run here."""
    return [name for name in BACKENDS if _load(name) is not None]


def resolve(backend: str, *, N: int | None = None, M: int | None = None, L: int | None = None) -> str:
    """Name of the backend to use for ``backend`` (one of BACKENDS or ``"auto"``).

    ``"auto"`` rule (measured, benchmarks/README.md "C core"): the C core when it
    was built, for every problem size; else Numba; else NumPy.  The C core and
    the Numba kernels run the same algorithm with the same bits; measured on
    2 cores, C is as fast or faster at N = 10⁶, M = 8, L = 8 and at
    N = 2·10⁵, M = 64, L = 10 (within noise at large sizes), 5–25 % faster for
    small problems (N ≲ 10⁴), where Numba's dispatch overhead dominates,
    and it needs no JIT: its first call costs milliseconds instead of Numba's
    cache load or compilation (seconds).  ``N``, ``M``, ``L`` are accepted so the
    rule can become size-dependent without changing callers.  One size rule:
    for very wide layers (``M ≥ _config.AUTO_BLAS_MIN_WIDTH`` = 128) the Numba
    backend's BLAS-blocked kernels (``_kernels_blas``) are preferred.  (Until
    the C core's register tiles, that threshold was 32; the measurements that
    moved it are at ``_config.AUTO_BLAS_MIN_WIDTH``.)
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise InputError(f"backend: unknown backend {backend!r}; choose one of 'auto', " + ", ".join(repr(b) for b in BACKENDS))
    if backend == "auto":
        order = ("c", "numba", "numpy")
        if M is not None and M >= _config.AUTO_BLAS_MIN_WIDTH:
            order = ("numba", "c", "numpy")  # BLAS-blocked wide-layer kernels live on the numba side
        for name in order:
            if _load(name) is not None:
                return name
    if _load(backend) is None:
        raise BackendUnavailable(f"backend {backend!r} is not available: {_failures[backend]}")
    return backend


def get(backend: str, **size):
    """The backend object for ``backend`` (after :func:`resolve`)."""
    return _instances[resolve(backend, **size)]
