"""The public API on dask arrays: data stay on the workers (issue 8).

``gradient``, ``loss``, ``truncate`` and ``integrate`` route here when ``X`` (or
``labels``) is a ``dask.array.Array``.  Dask is an optional dependency
(``pip install "truncfast[distributed]"``); it is imported only once a dask
collection has actually been passed (:func:`uses_dask` looks at
``sys.modules`` and never imports anything).

One evaluation of the flow (THEORY §5) is one *map* and one *reduction*:

* **map** — every row block of X (a dask chunk, wherever it lives) runs the
  same sequential per-chunk Numba kernel as the local engine
  (``_kernels_numba.general_range``) over its own fixed chunks of
  ``_config.CHUNK_SIZE`` rows and returns one partial sum per chunk;
* **reduction** — the partials are added in a fixed order
  (``_config.DISTRIBUTED_REDUCTION``, or ``TRUNCFAST_DISTRIBUTED_REDUCTION``):

  ``"ordered"`` (default) is a chain of small fold tasks, block after block,
  each adding its block's per-chunk partials one at a time to the running
  total (``_kernels_numba.add_slots``).  That is exactly the local engine's
  summation (zero, then chunk 0, chunk 1, ... in row order), so when every
  dask row-chunk boundary is a multiple of ``CHUNK_SIZE`` the result has the
  *same bits* as the local numba backend.  Otherwise the chunks restart at
  each block start and the result agrees to rounding (≲ 1e-15 relative).
  Only the running total (O(L M²) bytes) travels between workers; the chain
  overlaps with the map, and its latency (one task hop per block) is what
  the cost model in docs/distributed.md calls the reduction latency.

  ``"tree"`` folds each block to one block sum, then adds block sums in a
  fixed k-ary tree by block index (``_config.DISTRIBUTED_TREE_FANIN``,
  children left to right): deterministic (the same bits for any cluster,
  worker count or scheduling), logarithmic depth, but not bitwise equal to
  the local engine (within 1e-12).

The client holds only the small state (R, b, targets): it finishes the
reduction (``_backends._normalise``), takes the solver step and broadcasts the
new state as one small graph literal that every block task depends on.

Validation.  Shapes, dtypes and chunk structure are checked on the client
from metadata (no data move); values (finiteness of X, the range of labels)
are checked inside the first map of each call, on the workers, and reported
as :class:`InputError` naming the argument and the *global* index.  For the
lazy ``truncate`` the check runs when the result is computed.

Resilience.  ``integrate`` persists the (converted) data once; if a worker
dies, dask recomputes its lost blocks from their lineage and the step is
retried (``_config.DISTRIBUTED_RETRIES`` times).  Every task is a pure
function of its block and the state, so a retried step has the same bits.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from typing import Any

import numpy as np

from truncfast._backends import registry as _backends
from truncfast import _config
from truncfast._errors import InputError

__all__ = ["uses_dask", "is_dask_array", "DaskEngine", "loss", "gradient", "truncate", "sector_codes",
           "standard_loss", "standard_gradient", "integrate"]


# ------------------------------------------------------------ detection ---

def is_dask_array(x: Any) -> bool:
    """True if ``x`` is a ``dask.array.Array``; never imports dask.

    A dask array can only exist once ``dask.array`` has been imported, so
    looking it up in ``sys.modules`` is enough and costs nothing for users
    without dask.
    """
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(x, getattr(mod, "Array", ()))


def uses_dask(*arrays: Any) -> bool:
    """True if any argument is a dask array (the API boundary's routing test)."""
    if "dask.array" not in sys.modules:
        return False
    return any(is_dask_array(a) for a in arrays)


def _require_dask():
    try:
        import dask  # noqa: F401
        import dask.array  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only reachable with a broken install
        raise ImportError('dask inputs need the optional dependency: pip install "truncfast[distributed]"') from exc


# ------------------------------------------------------ worker functions ---
# Module-level, picklable by reference: workers import truncfast and run them.
# They receive plain NumPy blocks (the dask chunk) and the small state.

def _block_error(X: np.ndarray, labels: np.ndarray | None, offset: int, Q: int,
                 Q_name: str = "targets") -> str | None:
    """Value checks of one block (CONTRACT.md): the first problem, named, with its global index."""
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
    val = os.environ.get("TRUNCFAST_NUM_THREADS", "").strip()
    return int(val) if val.isdigit() and int(val) > 0 else 1


def _over_chunks(fn, nchunks: int) -> None:
    """Run ``fn(a, c, i)`` over chunks 0..nchunks-1: in this thread, or on ``_parallel``'s pool."""
    if _task_threads() <= 1 or nchunks <= 1:
        fn(0, nchunks, 0)
        return
    from truncfast._kernels import parallel as _parallel

    _parallel.run_ranges(fn, 0, nchunks)


def _ro(*arrays):
    """Read-only views, exactly as the local backend passes them (``_backends._readonly``).

    Numba compiles a separate specialisation for read-only arrays; passing the
    same kind as the local engine reuses its cached machine code (no extra
    compile on every worker) — the code, hence the bits, are the same.
    """
    from truncfast._backends.registry import _readonly

    return _readonly(*arrays)


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
    from truncfast._kernels import numba_kernels as k

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
    chunk_fn, block, context = _backends.general_chunk_kernel(M)  # the local engine's choice
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
    from truncfast._kernels import numba_kernels as k

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
    """Per-block (L, Q, 3) counts of untruncated / partially / fully truncated points (THEORY §2)."""
    from truncfast._kernels import numba_kernels as k
    from truncfast._integrate.trajectory import FULL, PARTIAL, UNTRUNCATED

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
    from truncfast._kernels import numba_kernels as k

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
    from truncfast._kernels import numba_kernels as k

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
    from truncfast._kernels import numba_kernels as k

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


def _reduction_from_env() -> str:
    import os

    return os.environ.get("TRUNCFAST_DISTRIBUTED_REDUCTION", "").strip() or _config.DISTRIBUTED_REDUCTION


class DaskEngine:
    """The backend interface of ``_backends`` (``general``, plus sector ``counts``) over dask arrays.

    ``X`` and ``labels`` passed to the methods are the prepared dask arrays of
    :func:`prepare` (float64 rows in one column chunk, labels chunked like the
    rows of X).  The first map of an engine validates the values; later maps
    skip the check (the data are the same).

    Each evaluation is a hand-built task graph (one literal for the state,
    one map task per block, the reduction tasks) on top of the data's graph:
    building it costs a few microseconds per block, where ``dask.delayed``
    cost ~0.6 ms per task — which would be seconds per step at 10⁴ blocks.
    """

    name = "dask"

    def __init__(self, reduction: str | None = None):
        self.reduction = _reduction_from_env() if reduction is None else reduction
        if self.reduction not in ("ordered", "tree"):
            raise InputError(f"reduction: unknown reduction {self.reduction!r}; choose 'ordered' or 'tree' "
                             "(_config.DISTRIBUTED_REDUCTION or TRUNCFAST_DISTRIBUTED_REDUCTION)")
        self._validated = False
        self._blocks_cache: tuple | None = None
        self._runs_cache: tuple | None = None

    def _blocks(self, X, labels):
        """(X block key, labels block key, global row offset) per row block, cached per data."""
        key = (X.name, labels.name)
        if self._blocks_cache is None or self._blocks_cache[0] != key:
            xs = [row[0] for row in X.__dask_keys__()]
            ls = list(labels.__dask_keys__())
            offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(np.int64).tolist()
            self._blocks_cache = (key, list(zip(xs, ls, offsets)))
        return self._blocks_cache[1]

    def _take_validation(self) -> bool:
        v = not self._validated
        self._validated = True
        return v

    def _raise(self, error: str):
        self._validated = False  # the data were rejected: check again next time
        raise InputError(error)

    @staticmethod
    def _run(X, labels, dsk: dict, root):
        """Compute ``root`` of ``dsk`` (which reads the blocks of X and labels) on the active scheduler."""
        from dask.delayed import Delayed
        from dask.highlevelgraph import HighLevelGraph

        graph = HighLevelGraph.from_collections(root, dsk, dependencies=[X, labels])
        return _compute(Delayed(root, graph))

    @staticmethod
    def _tree(dsk: dict, name: str, keys: list, combine) -> str:
        """Add a fixed k-ary tree over ``keys`` (in row order) to ``dsk``; return the root key."""
        fan = max(2, int(_config.DISTRIBUTED_TREE_FANIN))
        level = 0
        while len(keys) > 1:
            nxt = []
            for i in range(0, len(keys), fan):
                group = keys[i:i + fan]
                if len(group) == 1:
                    nxt.append(group[0])
                    continue
                k = (f"{name}-l{level}", i // fan)
                dsk[k] = (_tree_node, combine, *group)
                nxt.append(k)
            keys = nxt
            level += 1
        return keys[0]

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        """``(loss, grad_b, omega, grad_W, grad_bout)`` divided by N, as ``_backends`` returns them."""
        from truncfast._backends import registry as _backends
        from truncfast._kernels import numba_kernels as k

        S = k.transfer_matrices(R)  # the same function as the local engine: same bits
        tag = uuid.uuid4().hex
        state = f"truncfast-state-{tag}"
        dsk: dict = {state: _State((R, S, b, T, W, bout, Y))}
        validate = self._take_validation()
        tree = self.reduction == "tree"
        parts = []
        for i, (xk, lk, off) in enumerate(self._blocks(X, labels)):
            key = (f"truncfast-map-{tag}", i)
            dsk[key] = (_map_general, xk, lk, state, off, standard, want_grad, validate, tree)
            parts.append(key)
        res = self._run(X, labels, dsk, self._reduce_partials(dsk, tag, parts, X))
        if res.error is not None:
            self._raise(res.error)
        loss, gb, G, gW, gbo = res.arrays
        return _backends._normalise(X.shape[0], loss[0], gb, G, gW, gbo, standard)

    def _runs(self, X) -> list[tuple[int, int]]:
        """Maximal runs ``[i, j)`` of consecutive row blocks held by the same worker, cached per data.

        One fold link of the ordered chain per run instead of per block: the
        summation order is unchanged (so are the bits), but the chain's
        sequential scheduler round trips drop from B (blocks) to about the
        number of workers, since dask places consecutive blocks of a
        persisted array together.  Without a distributed client, or if the
        placement cannot be read, every block is its own run.  The placement
        is read once per engine; if blocks move later (a worker died), the
        grouping only costs transfers, never correctness.
        """
        B = len(X.chunks[0])
        if self._runs_cache is not None and self._runs_cache[0] == X.name:
            return self._runs_cache[1]
        runs = [(i, i + 1) for i in range(B)]
        try:
            from distributed import default_client, futures_of

            futures = futures_of(X)
            who = default_client().who_has(futures) if futures else {}
            where = [tuple(sorted(who.get(row[0], ()))) for row in X.__dask_keys__()]
            if all(where):
                runs, start = [], 0
                for i in range(1, B + 1):
                    if i == B or set(where[i]).isdisjoint(where[i - 1]):
                        runs.append((start, i))
                        start = i
        except Exception:  # no distributed client (local schedulers), or data not persisted: one run per block
            pass
        self._runs_cache = (X.name, runs)
        return runs

    def _reduce_partials(self, dsk: dict, tag: str, parts: list, X):
        """Add the ordered fold chain or the tree over ``parts`` to ``dsk``; return the root key."""
        if self.reduction == "tree":
            return self._tree(dsk, f"truncfast-tree-{tag}", parts, _combine)
        prev = None
        for i, (a, c) in enumerate(self._runs(X)):
            key = (f"truncfast-fold-{tag}", i)
            dsk[key] = (_fold_run, prev, *parts[a:c])
            prev = key
        return prev

    def _exact_map_reduce(self, name: str, map_fn, add_fn, R, b, X, labels, Q: int):
        """One map task per block with (R, S, b) and a tree of exact (integer) sums;
        a validation message from a block is raised here."""
        from truncfast._kernels import numba_kernels as k

        tag = uuid.uuid4().hex
        state = f"truncfast-state-{tag}"
        dsk: dict = {state: _State((R, k.transfer_matrices(R), b))}
        validate = self._take_validation()
        parts = []
        for i, (xk, lk, off) in enumerate(self._blocks(X, labels)):
            key = (f"truncfast-{name}-{tag}", i)
            dsk[key] = (map_fn, xk, lk, state, off, Q, validate)
            parts.append(key)
        out = self._run(X, labels, dsk, self._tree(dsk, f"truncfast-{name}-tree-{tag}", parts, add_fn))
        if isinstance(out, str):
            self._raise(out)
        return out

    def separation(self, R, b, X, labels, Q: int) -> tuple[np.ndarray, np.ndarray]:
        """Cluster sizes N_j (Q,) and violation counts (Q, L) of §6 in one map (integers: exact)."""
        return self._exact_map_reduce("sep", _map_separation, _add_pairs, R, b, X, labels, Q)

    def moments_box(self, R, b, X, labels, Q: int):
        """``(S0, S1, S2, counts, lo, hi)`` of §6 in one map, as ``_backends`` returns them: the raw
        moments summed like ``general`` (same bits when aligned), the cluster sizes and boxes exactly."""
        import operator

        tag = uuid.uuid4().hex
        state = f"truncfast-state-{tag}"
        dsk: dict = {state: _State((R, b))}
        tree = self.reduction == "tree"
        validate = self._take_validation()
        parts, boxes = [], []
        for i, (xk, lk, off) in enumerate(self._blocks(X, labels)):
            key = (f"truncfast-mombox-{tag}", i)
            dsk[key] = (_map_moments, xk, lk, state, off, Q, tree, validate)
            dsk[(f"truncfast-mom-{tag}", i)] = (operator.getitem, key, 0)
            dsk[(f"truncfast-box-{tag}", i)] = (operator.getitem, key, 1)
            parts.append((f"truncfast-mom-{tag}", i))
            boxes.append((f"truncfast-box-{tag}", i))
        root = f"truncfast-momroot-{tag}"
        dsk[root] = (_pair, self._reduce_partials(dsk, tag, parts, X),
                     self._tree(dsk, f"truncfast-boxtree-{tag}", boxes, _combine_boxes))
        mom, box = self._run(X, labels, dsk, root)
        if mom.error is not None:
            self._raise(mom.error)
        return (*mom.arrays, *box)

    def counts(self, R, b, X, labels, Q: int) -> np.ndarray:
        """(L, Q, 3) counts along the composition, summed over blocks (integers: exact)."""
        return self._exact_map_reduce("counts", _map_counts, _add_counts, R, b, X, labels, Q)


# ------------------------------------------------------------ boundary ---

def _prepare_X(X, M: int):
    """Metadata checks of a dask ``X`` and its conversion (lazy) to float64 rows in one column chunk."""
    import dask.array as da

    if X.dtype.kind not in "fiub":
        raise InputError(f"X: expected a real numeric array, got dtype {X.dtype}"
                         + (" (complex values are not supported)" if X.dtype.kind == "c" else ""))
    if X.ndim != 2:
        raise InputError(f"X: expected shape (?, {M}), got shape {X.shape} ({X.ndim}-D)")
    if any(math.isnan(c) for c in X.chunks[0]):
        raise InputError("X: the dask array has unknown chunk sizes; call X.compute_chunk_sizes() first")
    if X.shape[1] != M:
        raise InputError(f"X: expected shape (?, {M}), got {X.shape} (axis 1 is {X.shape[1]}, expected {M})")
    if X.shape[0] == 0:
        raise InputError("X: has no rows (N = 0); at least one point is needed")
    if len(X.chunks[1]) != 1:
        X = X.rechunk({1: -1})  # the kernels need whole rows; moves data between workers only
    if X.dtype != np.float64:
        X = X.astype(np.float64)
    if any(c == 0 for c in X.chunks[0]):  # empty blocks would only cost a task each
        X = X.rechunk({0: tuple(c for c in X.chunks[0] if c)})
    assert isinstance(X, da.Array)
    return X


def _prepare_labels(labels, X, Q: int, Q_name: str = "targets"):
    """Labels as int64 dask array chunked like the rows of X (values are checked in the first map)."""
    import dask.array as da

    N = X.shape[0]
    if is_dask_array(labels):
        if labels.dtype.kind not in "iu":
            raise InputError(f"labels: expected an integer array, got dtype {labels.dtype}")
        if labels.ndim != 1:
            raise InputError(f"labels: expected shape ({N},), got shape {labels.shape}")
        if any(math.isnan(c) for c in labels.chunks[0]):
            raise InputError("labels: the dask array has unknown chunk sizes; call labels.compute_chunk_sizes() first")
        if labels.shape[0] != N:
            raise InputError(f"labels: has {labels.shape[0]} entries but X has {N} rows")
        if labels.chunks[0] != X.chunks[0]:
            labels = labels.rechunk((X.chunks[0],))
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        return labels
    from truncfast._validate import as_labels

    # a NumPy labels array is small next to X: check it here, ship it with the blocks
    lab = as_labels(labels, N, Q, Q_name=Q_name)
    return da.from_array(lab, chunks=(X.chunks[0],), name=False)


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "numba"):
        from truncfast._backends.registry import resolve

        resolve(backend)  # unknown names raise the usual InputError
        raise InputError(f"backend: dask inputs run the Numba chunk kernels on the workers; use 'auto' or "
                         f"'numba', got {backend!r}")
    from truncfast._backends.registry import resolve

    if resolve("numba") != "numba":  # pragma: no cover - numba is a hard dependency
        raise InputError("backend: dask inputs need the numba backend")


def prepare(R, b, X, labels=None, targets=None):
    """Validate the small arguments as the local API does and the dask ones from metadata.

    Returns ``(R, b, X)`` or ``(R, b, X, labels, targets)`` with X, labels
    prepared dask arrays.  Values of X and labels are checked by the first map.
    """
    _require_dask()
    from truncfast._validate import check_state, check_targets

    R, b = check_state(R, b)
    M = R.shape[1]
    X = _prepare_X(X, M)
    if labels is None and targets is None:
        return R, b, X
    if targets is None or labels is None:
        raise InputError("labels and targets must be given together")
    targets = check_targets(targets, M)
    labels = _prepare_labels(labels, X, targets.shape[0])
    return R, b, X, labels, targets


def _local_labels(labels):
    """X is in memory but labels are a dask array: bring the (small) labels here, run locally."""
    return np.asarray(labels.compute()) if is_dask_array(labels) else labels


def _euclid(R, b, X, labels, targets, want_grad):
    M = R.shape[1]
    eng = DaskEngine()
    return eng.general(R, b, X, labels, targets, np.zeros((0, M)), np.zeros(0),
                       np.zeros((targets.shape[0], 0)), False, want_grad)


# -------------------------------------------------------------- public ---

def loss(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, backend: str = "auto") -> float:
    """``truncfast.loss`` on dask data: C_E with the map + ordered reduction (module docstring)."""
    if not is_dask_array(X):
        from truncfast._flow import gradient as _gradient

        return _gradient.loss(R, b, X, _local_labels(labels), targets, backend=backend)
    _check_backend(backend)
    R, b, X, labels, targets = prepare(R, b, X, labels, targets)
    return float(_euclid(R, b, X, labels, targets, False)[0])


def _check_separation(engine: DaskEngine, R, b, X, labels, Q: int) -> np.ndarray:
    """``_separated.check_separation`` for dask data: same errors, always the exact per-point check.

    The fallback of ``_separated.checked_moments`` when the boxes are
    inconclusive.  (The local version first tries a cheap sufficient test on
    enclosing balls; its outcome never changes the result, only the time, so
    it is skipped here.)
    """
    from truncfast._flow.separated import _check_nonempty, _check_one_layer_per_cluster, raise_violations

    _check_one_layer_per_cluster(R.shape[0], Q)
    counts, bad = engine.separation(R, b, X, labels, Q)
    _check_nonempty(counts)
    raise_violations(bad)
    return counts.astype(np.float64)


def gradient(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, form: str = "general",
             backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``truncfast.gradient`` on dask data (``form="general"`` only; see docs/distributed.md)."""
    if not is_dask_array(X):
        from truncfast._flow import gradient as _gradient

        return _gradient.gradient(R, b, X, _local_labels(labels), targets, form=form, backend=backend)
    if form not in ("general", "separated"):
        raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")
    _check_backend(backend)
    R, b, X, labels, targets = prepare(R, b, X, labels, targets)
    if form == "separated":
        from truncfast._flow.separated import assemble, checked_moments

        engine = DaskEngine()
        counts, S0, S1, S2 = checked_moments(engine, R, b, X, labels, targets.shape[0],
                                             fallback=_check_separation)
        return assemble(R, b, targets, counts, S0, S1, S2, X.shape[0])
    _, gb, omega, _, _ = _euclid(R, b, X, labels, targets, True)
    return gb, omega


def _prepare_output_layer(R, b, X, labels, W_out, b_out, Y):
    """Validation of the standard-loss arguments (as ``_gradient._check_output_layer``) for a dask X."""
    from truncfast._validate import check_output_layer

    R, b, X = prepare(R, b, X)
    W_out, b_out, Y = check_output_layer(R.shape[1], W_out, b_out, Y)
    labels = _prepare_labels(labels, X, Y.shape[0], Q_name="Y")
    return R, b, X, labels, W_out, b_out, Y


def _standard(R, b, X, labels, W_out, b_out, Y, backend, want_grad):
    if not is_dask_array(X):
        return None
    _check_backend(backend)
    R, b, X, labels, W_out, b_out, Y = _prepare_output_layer(R, b, X, labels, W_out, b_out, Y)
    return DaskEngine().general(R, b, X, labels, np.zeros((0, R.shape[1])), W_out, b_out, Y, True, want_grad)


def standard_loss(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *,
                  backend: str = "auto") -> float:
    """``truncfast.standard_loss`` on dask data (the general kernel with the output layer)."""
    if not is_dask_array(X):
        from truncfast._flow import gradient as _gradient

        return _gradient.standard_loss(R, b, X, _local_labels(labels), W_out, b_out, Y, backend=backend)
    return float(_standard(R, b, X, labels, W_out, b_out, Y, backend, False)[0])


def standard_gradient(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *,
                      backend: str = "auto"):
    """``truncfast.standard_gradient`` on dask data: ``(grad_b, omega, grad_W_out, grad_b_out)``."""
    if not is_dask_array(X):
        from truncfast._flow import gradient as _gradient

        return _gradient.standard_gradient(R, b, X, _local_labels(labels), W_out, b_out, Y, backend=backend)
    _, gb, omega, gW, gbo = _standard(R, b, X, labels, W_out, b_out, Y, backend, True)
    return gb, omega, gW, gbo


def truncate(R: Any, b: Any, X: Any, *, backend: str = "auto"):
    """``truncfast.truncate`` on a dask ``X``: a lazy (N, M) float64 dask array, chunked like X's rows.

    Non-finite values of X raise :class:`InputError` (naming X and the global
    index) when the result is computed.
    """
    from truncfast._kernels import numba_kernels as k

    _check_backend(backend)
    R, b, X = prepare(R, b, X)
    S = k.transfer_matrices(R)
    return X.map_blocks(_block_forward, R, S, b, False, dtype=np.float64, meta=np.empty((0, 0), dtype=np.float64),
                        name="truncfast-truncate-" + _token(X, R, b))


def sector_codes(R: Any, b: Any, X: Any, *, backend: str = "auto"):
    """``truncfast.sector_codes`` on a dask ``X``: a lazy (N, L) uint64 dask array, chunked like X's rows."""
    from truncfast._kernels import numba_kernels as k

    _check_backend(backend)
    R, b, X = prepare(R, b, X)
    L, M = b.shape
    if M > _config.MAX_CODE_WIDTH:
        raise InputError(f"R: sector codes are uint64 bitmasks and need M ≤ {_config.MAX_CODE_WIDTH}, got M = {M}")
    S = k.transfer_matrices(R)
    return X.map_blocks(_block_forward, R, S, b, True, dtype=np.uint64, chunks=(X.chunks[0], (L,)),
                        meta=np.empty((0, 0), dtype=np.uint64), name="truncfast-codes-" + _token(X, R, b))


def _token(*args) -> str:
    from dask.base import tokenize

    return tokenize(*args)


def integrate(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, dt: float, steps: int,
              method: str = "lie-euler", train_weights: bool = True, train_biases: bool = True,
              record_every: int = 1, backend: str = "auto", progress: bool = False,
              checkpoint=None, checkpoint_every: int | None = None, form: str = "general"):
    """``truncfast.integrate`` on dask data: same loop, same records, same bits (``reduction="ordered"``).

    The data are converted and persisted on the workers once; every step maps
    the chunk kernel over the blocks, reduces, and takes the solver step on the
    client (the state is O(L M²)).  The step loop is the local one
    (``_integrate._Run``) with this module's engine in place of the backend,
    so progress bars, divergence errors and Ctrl-C behave identically.
    Checkpoints work as locally; their data digest is the local one (the same
    data give the same sha256 in memory or in any chunking), computed by one
    pass over the blocks through the client (:func:`data_digest`).
    """
    from truncfast._integrate import api as _integrate

    if not is_dask_array(X):
        return _integrate.integrate(R, b, X, _local_labels(labels), targets, dt=dt, steps=steps, method=method,
                                    train_weights=train_weights, train_biases=train_biases,
                                    record_every=record_every, backend=backend, progress=progress,
                                    checkpoint=checkpoint, checkpoint_every=checkpoint_every, form=form)
    import dask

    from truncfast._integrate.solvers.base import SOLVERS

    R, b, X, labels, targets = prepare(R, b, X, labels, targets)
    dt = _integrate._check_dt(dt)
    steps = _integrate._check_int("steps", steps, 0)
    record_every = _integrate._check_int("record_every", record_every, 1)
    if not isinstance(method, str) or method not in SOLVERS:
        raise InputError(f"method: unknown method {method!r}; choose one of " + ", ".join(map(repr, SOLVERS)))
    if form not in ("general", "separated"):
        raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")
    if SOLVERS[method].needs_moments:
        form = "separated"
    if checkpoint_every is not None:
        checkpoint_every = _integrate._check_int("checkpoint_every", checkpoint_every, 1)
    _integrate._check_checkpoint_path(checkpoint)
    train_weights = _integrate._check_flag("train_weights", train_weights)
    train_biases = _integrate._check_flag("train_biases", train_biases)
    progress = _integrate._check_flag("progress", progress)
    _check_backend(backend)
    N, M = X.shape
    L, Q = R.shape[0], targets.shape[0]
    if form == "separated" and L != Q:
        from truncfast._flow.separated import SeparationShapeError

        raise SeparationShapeError(
            f"targets: method={method!r} / form='separated' needs one layer per cluster (L == Q), "
            f"got L = {L} layers and Q = {Q} clusters")
    X, labels = dask.persist(X, labels)  # once per run: every step reads the blocks where they are
    digest = data_digest(X, labels, targets) if checkpoint is not None else None
    engine = DaskEngine()
    settings = {
        "method": method, "dt": dt, "steps": steps, "record_every": record_every,
        "train_weights": train_weights, "train_biases": train_biases, "backend": "numba",
        "form": form, "N": int(N), "M": int(M), "L": int(L), "Q": int(Q),
        "version": _integrate._version(), "compiled_loop": False,
        "distributed": "dask", "reduction": engine.reduction, "blocks": len(X.chunks[0]),
    }
    R = R.copy()
    b = b.copy()
    reorth0 = 0
    if train_weights:
        R, fixed = _integrate._reorthonormalize_initial(R)
        reorth0 = int(fixed)
    run = _make_run(_integrate, settings, R, b, X, labels, targets, engine, progress, reorth0,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every, digest=digest)
    return run.run()


def data_digest(X, labels, targets) -> str:
    """``_integrate._data_digest`` of the computed data, block by block in row order.

    Hashes the same bytes as the local digest of ``X.compute()`` (float64 rows),
    ``labels.compute()`` (int64) and ``targets``, so a checkpoint written from
    dask data resumes on the same data in memory and the other way round.
    Reads every block once through the client, one block at a time.
    """
    from truncfast._integrate.api import _digest

    def blocks(a):
        return (a.blocks[i].compute() for i in range(a.numblocks[0]))

    return _digest([(np.dtype(X.dtype).str, X.shape, blocks(X)), (np.dtype(labels.dtype).str, labels.shape,
                    blocks(labels)), (targets.dtype.str, targets.shape, [targets])])


def resume(traj, meta: dict, path, X, labels, targets, *, progress: bool, checkpoint, checkpoint_every):
    """``truncfast.resume`` on dask data (called by it once the checkpoint is read)."""
    import dask

    from truncfast._integrate import api as _integrate

    s = dict(traj.settings)
    R, b, X, labels, targets = prepare(traj.R, traj.b, X, labels, targets)
    X, labels = dask.persist(X, labels)
    digest = _integrate._check_resume_data(traj, meta, X, targets, lambda: data_digest(X, labels, targets))
    engine = DaskEngine()
    s.update({"backend": "numba", "compiled_loop": False, "distributed": "dask", "reduction": engine.reduction,
              "blocks": len(X.chunks[0])})
    run = _make_run(_integrate, s, R.copy(), b.copy(), X, labels, targets, engine, progress, 0,
                    checkpoint=path if checkpoint is None else checkpoint, checkpoint_every=checkpoint_every,
                    digest=digest, previous=traj)
    return run.run()


def _make_run(_integrate, settings, R, b, X, labels, targets, engine, progress, reorth0, *,
              checkpoint=None, checkpoint_every=None, digest=None, previous=None):
    """The local step loop (``_integrate._Run``) driving the dask engine instead of a local backend."""

    class _DaskRun(_integrate._Run):
        """``_Run`` whose evaluations and sector counts are maps over the dask blocks."""

        def __init__(self):
            M = R.shape[1]
            # the base class sizes its buffers from these; the data themselves are the dask arrays below
            super().__init__(settings, R, b, np.zeros((0, M)), np.zeros(0, dtype=np.int64), targets,
                             checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress,
                             previous=previous, digest=digest, reorth0=reorth0)
            self.X, self.labels = X, labels
            self.bk = engine

        def evaluate(self, R_, b_):
            """The right-hand side; the separated form (§6) through the engine's moments and checks."""
            if self.form == "general":
                return super().evaluate(R_, b_)
            from truncfast._flow.separated import assemble, checked_moments
            from truncfast._integrate.solvers.base import RHS

            T = self.targets
            Q, N = T.shape[0], self.X.shape[0]
            counts, S0, S1, S2 = checked_moments(engine, R_, b_, self.X, self.labels, Q,
                                                 fallback=_check_separation)
            gb, om = assemble(R_, b_, T, counts, S0, S1, S2, N)
            loss = float(engine.general(R_, b_, self.X, self.labels, T, self._W0, self._bo0, self._Y0,
                                        False, False)[0])
            rhs = RHS(loss, gb, om)
            if self.solver.needs_moments:
                rhs.rate = (counts[:, None] - S0) / N  # π_j (1 − m0_j)
                rhs.target_rot = np.einsum("jik,jk->ji", R_, T)  # ỹ'_j
            return rhs

        def _counts(self, R_, b_):
            L_, M_ = b_.shape
            if M_ > _config.MAX_CODE_WIDTH:
                return np.full((L_, targets.shape[0], 3), -1, dtype=np.int64)
            return engine.counts(R_, b_, self.X, self.labels, targets.shape[0])

    return _DaskRun()
