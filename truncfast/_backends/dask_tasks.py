"""Worker-side tasks of the dask backend: one row block of X in, partial sums out.

Module-level functions, picklable by reference: workers import truncfast and
run them on plain NumPy blocks (the dask chunks) and the small state.  Every
task is a pure function of its block and the state, so a retried task has the
same bits.  Validation of values (finiteness of X, the range of labels) runs
in the first map of a call and comes back as an error string naming the
argument and the *global* index (docs/distributed.md).
"""

from __future__ import annotations

import time

import numpy as np

from truncfast import _config
from truncfast._backends.local import readonly
from truncfast._backends.numba_backend import general_chunk_kernel
from truncfast._backends.protocol import FULL, PARTIAL, UNTRUNCATED
from truncfast._errors import InputError
from truncfast._kernels import numba_kernels as k


def _block_error(X: np.ndarray, labels: np.ndarray | None, offset: int, Q: int,
                 Q_name: str = "targets") -> str | None:
    """Value checks of one block (docs/api.md): the first problem, named, with its global index."""
    if X.size:
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(X.reshape(-1))
        if not np.isfinite(total):
            bad = ~np.isfinite(X)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                count = int(bad.sum())
                more = f" (and {count - 1} more non-finite values in rows {offset}..{offset + X.shape[0] - 1})" \
                    if count > 1 else ""
                return (f"X: contains {float(X[r, c])!r} at index [{offset + int(r)}, {int(c)}]{more}; "
                        "all values must be finite")
    if labels is not None and labels.size:
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= Q:
            i = int(np.flatnonzero((labels < 0) | (labels >= Q))[0])
            return (f"labels: value {int(labels[i])} at index {offset + i} is out of range 0..{Q - 1}"
                    f" (Q = {Q} from {Q_name})")
    return None


def _task_threads() -> int:
    """Threads one block task may use: ``TRUNCFAST_NUM_THREADS`` if set in the worker's environment, else 1.

    By default dask's own worker threads provide the parallelism (one block
    per thread, sequential kernel).  A deployment with *one* dask thread per
    node and ``TRUNCFAST_NUM_THREADS=<cores>`` instead runs each (large) block
    on the node's cores with the local engine's thread pool — far fewer
    tasks per step, which is what the cost model in docs/distributed.md asks
    for at scale.  Chunk partial slots do not depend on the thread count, so
    neither do the bits.
    """
    return _config.env_num_threads() or 1


def _over_chunks(fn, nchunks: int) -> None:
    """Run ``fn(a, c, i)`` over chunks 0..nchunks-1: in this thread, or on ``truncfast._kernels.parallel``'s pool."""
    if _task_threads() <= 1 or nchunks <= 1:
        fn(0, nchunks, 0)
        return
    from truncfast._kernels import parallel as _parallel

    _parallel.run_ranges(fn, 0, nchunks)


def _ro(*arrays):
    """Read-only views, exactly as the local backend passes them (``local.readonly``).

    Numba compiles a separate specialisation for read-only arrays; passing the
    same kind as the local engine reuses its cached machine code (no extra
    compile on every worker) — the code, hence the bits, are the same.
    """
    return readonly(*arrays)


class _Partials:
    """Partial sums of §5 travelling between tasks, or the first validation error.

    ``arrays`` = (loss (1,), gb (L, M), G (L, M, M), gW (P, M), gbo (P,)), each
    with a leading axis of ``n`` per-chunk slots when ``n > 0`` (a map result
    of the ordered reduction), or plain totals when ``n == 0``.
    """

    __slots__ = ("arrays", "n", "error")

    def __init__(self, arrays, n: int, error: str | None = None):
        self.arrays = arrays
        self.n = n
        self.error = error


def _partials_general(X, labels, state, offset: int, standard: bool, want_grad: bool, validate: bool,
                      fold_block: bool) -> _Partials:
    """Map step of one block: per-chunk partials of the §5 sums (raw, not divided by N)."""
    R, S, b, T, W, bout, Y = state
    X = np.ascontiguousarray(X, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    R, S, b, X, labels, T, W, bout, Y = _ro(R, S, b, X, labels, T, W, bout, Y)
    if validate:
        err = (_block_error(X, labels, offset, Y.shape[0], "Y") if standard
               else _block_error(X, labels, offset, T.shape[0]))
        if err is not None:
            return _Partials(None, 0, err)
    n = X.shape[0]
    L, M = b.shape
    P = W.shape[0]
    chunk = _config.CHUNK_SIZE
    chunk_fn, block, context = general_chunk_kernel(M)  # the local engine's choice
    nch = (n + chunk - 1) // chunk
    ploss, pgb, pG = np.empty((nch, 1)), np.empty((nch, L, M)), np.empty((nch, L, M, M))
    pgW, pgbo = np.empty((nch, P, M)), np.empty((nch, P))
    with context():
        _over_chunks(lambda a, c, _: chunk_fn(R, S, b, X, labels, T, W, bout, Y, standard, want_grad, a, c,
                                              chunk, block, 0, pgb, pG, pgW, pgbo, ploss[:, 0]), nch)
    parts = (ploss, pgb, pG, pgW, pgbo)
    if fold_block:  # tree mode: this block's sum, chunk by chunk from zero
        sums = tuple(np.zeros(p.shape[1:]) for p in parts)
        for tot, p in zip(sums, parts):
            k.add_slots(tot, p, nch)
        return _Partials(sums, 0)
    return _Partials(parts, nch)


def _fold(total: _Partials | None, part: _Partials) -> _Partials:
    """One link of the ordered chain: ``total + part[0] + part[1] + …``, one slot at a time.

    ``total`` is None for the first block (the sum starts from zeros, as the
    local engine's does).  The first validation error in row order wins.
    """
    if total is not None and total.error is not None:
        return total
    if part.error is not None:
        return part
    if total is None:
        acc = tuple(np.zeros(p.shape[1:]) for p in part.arrays)
    else:
        acc = tuple(a.copy() for a in total.arrays)  # never mutate a task's input
    for a, p in zip(acc, part.arrays):
        k.add_slots(a, p, part.n)
    return _Partials(acc, 0)


def _fold_run(total: _Partials | None, *parts: _Partials) -> _Partials:
    """One link of the ordered chain over a run of consecutive blocks: ``_fold`` them in row order."""
    for part in parts:
        total = _fold(total, part)
    return total


def _combine(a: _Partials, b: _Partials) -> _Partials:
    """One node of the tree reduction: block sums ``a + b`` (a holds the earlier rows)."""
    if a.error is not None:
        return a
    if b.error is not None:
        return b
    return _Partials(tuple(x + y for x, y in zip(a.arrays, b.arrays)), 0)


def _block_counts(X, labels, state, offset: int, Q: int, validate: bool):
    """Per-block (L, Q, 3) counts of untruncated / partially / fully truncated points (docs/theory.md §2)."""

    R, S, b = state
    X = np.ascontiguousarray(X, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    R, S, b, X = _ro(R, S, b, X)
    if validate:
        err = _block_error(X, labels, offset, Q)
        if err is not None:
            return err
    n = X.shape[0]
    L, M = b.shape
    chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
    codes = np.empty((n, L), dtype=np.uint64)
    nowhere = np.empty((0, M))
    _over_chunks(lambda a, c, _: k.truncate_range(R, S, b, X, a, c, chunk, block, nowhere, codes, True),
                 (n + chunk - 1) // chunk)
    ones = np.uint64((1 << M) - 1)
    cat = np.where(codes == ones, UNTRUNCATED, np.where(codes == 0, FULL, PARTIAL))
    out = np.empty((L, Q, 3), dtype=np.int64)
    for l in range(L):
        out[l] = np.bincount(labels * 3 + cat[:, l], minlength=3 * Q).reshape(Q, 3)
    return out


def _map_moments(X, labels, state, offset: int, Q: int, fold_block: bool, validate: bool):
    """Per-chunk raw constrained moments (S0, S1, S2) of §6 for one block, and the block's
    cluster sizes and boxes ``(counts (Q,), lo (Q, M), hi (Q, M))`` (exact: sums of integers,
    minima, maxima).  With ``validate`` a bad block gives its error (in both parts) instead."""
    R, b = state.arrays
    X = np.ascontiguousarray(X, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    R, b, X, labels = _ro(R, b, X, labels)
    if validate:
        err = _block_error(X, labels, offset, Q)
        if err is not None:
            return _Partials(None, 0, err), err
    M = X.shape[1]
    chunk = _config.CHUNK_SIZE
    nch = (X.shape[0] + chunk - 1) // chunk
    p0, p1, p2 = np.empty((nch, Q, M)), np.empty((nch, Q, M, M)), np.empty((nch, Q, M, M))
    pn, plo, phi = np.empty((nch, Q)), np.empty((nch, Q, M)), np.empty((nch, Q, M))
    _over_chunks(lambda a, c, _: k.moments_range(R, b, X, labels, a, c, chunk, 0, p0, p1, p2, pn, plo, phi), nch)
    box = (pn.sum(axis=0), plo.min(axis=0, initial=np.inf), phi.max(axis=0, initial=-np.inf))
    parts = (p0, p1, p2)
    if fold_block:
        sums = tuple(np.zeros(p.shape[1:]) for p in parts)
        for tot, p in zip(sums, parts):
            k.add_slots(tot, p, nch)
        return _Partials(sums, 0), box
    return _Partials(parts, nch), box


def _combine_boxes(a, b):
    """Cluster sizes added, boxes joined (exact in any order); a string is an error (first one wins)."""
    if isinstance(a, str):
        return a
    if isinstance(b, str):
        return b
    return a[0] + b[0], np.minimum(a[1], b[1]), np.maximum(a[2], b[2])


def _pair(a, b):
    return a, b


def _map_separation(X, labels, state, offset: int, Q: int, validate: bool):
    """Cluster sizes (Q,) and separation violations (Q, L) of one block (integers), or an error string."""
    R, S, b = state.arrays
    X = np.ascontiguousarray(X, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    R, S, b, X, labels = _ro(R, S, b, X, labels)
    if validate:
        err = _block_error(X, labels, offset, Q)
        if err is not None:
            return err
    chunk = _config.CHUNK_SIZE
    viol = np.zeros((Q, b.shape[0]), dtype=np.int64)
    k.violations_range(R, S, b, X, labels, 0, (X.shape[0] + chunk - 1) // chunk, chunk, _config.BLOCK_SIZE, viol)
    return np.bincount(labels, minlength=Q).astype(np.int64), viol


def _add_pairs(a, b):
    """Sum of (sizes, violations) pairs; a string is a validation error (first one wins)."""
    if isinstance(a, str):
        return a
    if isinstance(b, str):
        return b
    return a[0] + b[0], a[1] + b[1]


def _add_counts(a, b):
    """Integer counts: exact in any order.  A string is a validation error (first one wins)."""
    if isinstance(a, str):
        return a
    if isinstance(b, str):
        return b
    return a + b


def _block_forward(X, R, S, b, want_codes, block_info=None):
    """Lazy ``truncate`` (rows × M float64) or ``sector_codes`` (rows × L uint64) of one block.

    Per point, so the chunking never changes a bit.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    R, S, b, X = _ro(R, S, b, X)
    offset = block_info[0]["array-location"][0][0] if block_info else 0
    err = _block_error(X, None, offset, 0)
    if err is not None:
        raise InputError(err)
    n, M = X.shape
    L = b.shape[0]
    chunk, block = _config.CHUNK_SIZE, _config.BLOCK_SIZE
    out = np.empty((0 if want_codes else n, M))
    codes = np.empty((n if want_codes else 0, L), dtype=np.uint64)
    _over_chunks(lambda a, c, _: k.truncate_range(R, S, b, X, a, c, chunk, block, out, codes, want_codes),
                 (n + chunk - 1) // chunk)
    return codes if want_codes else out


# ---------------------------------------------------------- the engine ---

def _retryable_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "a worker or connection was lost", not "the computation is wrong"."""
    errs: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from distributed import KilledWorker
        from distributed.comm.core import CommClosedError

        errs += [KilledWorker, CommClosedError]
    except ImportError:  # only the local schedulers: nothing to retry
        pass
    try:
        from concurrent.futures import CancelledError

        errs.append(CancelledError)
        from distributed.client import FutureCancelledError  # type: ignore[attr-defined]

        errs.append(FutureCancelledError)
    except ImportError:
        pass
    return tuple(errs)


def _compute(obj):
    """``dask.compute`` on the active scheduler, retried after a lost worker (same bits: tasks are pure)."""
    import dask

    retryable = _retryable_errors()
    attempt = 0
    while True:
        try:
            return dask.compute(obj)[0]
        except retryable:
            attempt += 1
            if attempt > _config.DISTRIBUTED_RETRIES:
                raise
            time.sleep(min(0.2 * 2 ** attempt, 5.0))  # let the nanny restart the worker


class _State:
    """The small state broadcast to every block task of one evaluation (one graph literal)."""

    __slots__ = ("arrays",)

    def __init__(self, arrays):
        self.arrays = arrays


def _map_general(X, labels, state: _State, offset, standard, want_grad, validate, fold_block):
    return _partials_general(X, labels, state.arrays, offset, standard, want_grad, validate, fold_block)


def _map_counts(X, labels, state: _State, offset, Q, validate):
    return _block_counts(X, labels, state.arrays, offset, Q, validate)


def _tree_node(combine, *children):
    """k-ary tree node: children (consecutive row ranges) added left to right."""
    acc = children[0]
    for c in children[1:]:
        acc = combine(acc, c)
    return acc
