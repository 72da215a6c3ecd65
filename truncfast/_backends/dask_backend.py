"""The dask backend: data stay on the workers (docs/distributed.md).

Every public function runs here when ``X`` is a ``dask.array.Array``
(``registry.select``): the same code path as the local backends, with this
backend's operations in place of theirs.  Dask is an optional dependency
(``pip install "truncfast[distributed]"``); it is imported only once a dask
collection has actually been passed (``local.is_dask_array`` looks at
``sys.modules`` and never imports anything).  Worker-side tasks live in
``dask_tasks``.

One evaluation of the flow (docs/theory.md §5) is one *map* and one *reduction*:

* **map** — every row block of X (a dask chunk, wherever it lives) runs the
  same sequential per-chunk Numba kernel as the local engine
  (``truncfast._kernels.numba_kernels.general_range``) over its own fixed chunks of
  ``_config.CHUNK_SIZE`` rows and returns one partial sum per chunk;
* **reduction** — the partials are added in a fixed order
  (``_config.DISTRIBUTED_REDUCTION``, or ``TRUNCFAST_DISTRIBUTED_REDUCTION``):

  ``"ordered"`` (default) is a chain of small fold tasks, block after block,
  each adding its block's per-chunk partials one at a time to the running
  total (``truncfast._kernels.numba_kernels.add_slots``).  That is exactly the local engine's
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
reduction (``local.normalise``), takes the solver step and broadcasts the
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
import operator
import uuid

import numpy as np

from truncfast import _config
from truncfast._backends.digest import digest_pieces
from truncfast._backends.local import check_data, is_dask_array, normalise
from truncfast._backends.protocol import Backend
from truncfast._backends.dask_tasks import (
    _add_counts, _add_pairs, _block_forward, _combine, _combine_boxes, _compute, _fold_run, _map_counts,
    _map_general, _map_moments, _map_separation, _pair, _State, _tree_node,
)
from truncfast._errors import InputError
from truncfast._kernels import numba_kernels as k
from truncfast._validate import as_labels

__all__ = ["DaskBackend"]


class DaskBackend(Backend):
    """The backend protocol over dask arrays.

    ``X`` and ``labels`` passed to the kernel methods are the dask arrays of
    :meth:`prepare_X` / :meth:`prepare_labels` (float64 rows in one column
    chunk, labels int64 chunked like the rows of X).  The first map of an engine validates the values; later maps
    skip the check (the data are the same).

    Each evaluation is a hand-built task graph (one literal for the state,
    one map task per block, the reduction tasks) on top of the data's graph:
    building it costs a few microseconds per block, where ``dask.delayed``
    cost ~0.6 ms per task — which would be seconds per step at 10⁴ blocks.
    """

    name = "dask"

    def __init__(self, reduction: str | None = None):
        self.reduction = _config.env_distributed_reduction() if reduction is None else reduction
        if self.reduction not in ("ordered", "tree"):
            raise InputError(f"reduction: unknown reduction {self.reduction!r}; choose 'ordered' or 'tree' "
                             "(_config.DISTRIBUTED_REDUCTION or TRUNCFAST_DISTRIBUTED_REDUCTION)")
        self._validated = False
        self._in_memory = False  # X came as a NumPy array (backend="dask"): compute lazy results
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
        """``(loss, grad_b, omega, grad_W, grad_bout)`` divided by N, as the protocol returns them."""
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
        return normalise(X.shape[0], loss[0], gb, G, gW, gbo, standard)

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
        """Cluster sizes N_j (Q,) and violation counts (Q, L) of §6 in one map (integers: exact).

        Always the exact per-point check: the local backends' cheaper sufficient
        test on enclosing balls would cost a pass over the blocks of its own."""
        sizes, bad = self._exact_map_reduce("sep", _map_separation, _add_pairs, R, b, X, labels, Q)
        return sizes.astype(np.float64), bad

    def moments_box(self, R, b, X, labels, Q: int):
        """``(S0, S1, S2, counts, lo, hi)`` of §6 in one map, as the protocol returns them: the raw
        moments summed like ``general`` (same bits when aligned), the cluster sizes and boxes exactly."""
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
    def prepare_X(self, X, M: int):
        """Metadata checks of a dask ``X`` and its conversion (lazy) to float64 rows in one column chunk.

        Values (finiteness) are checked by the first map of the call, on the workers.
        In-memory data (``backend="dask"`` with a NumPy ``X``) are checked here like
        the local backends do, then cut into blocks of ``_config.DASK_BLOCK_ROWS``
        rows (a multiple of ``CHUNK_SIZE``: the same bits as the numba backend);
        results that would be lazy for a dask ``X`` are then computed.
        """
        import dask.array as da

        if not is_dask_array(X):
            X = check_data(X, M)
            self._in_memory = True
            self._validated = True  # checked just now
            return da.from_array(X, chunks=(_config.DASK_BLOCK_ROWS, M), name=False)

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

    def prepare_labels(self, labels, X, Q: int, Q_name: str = "targets"):
        """Labels as an int64 dask array chunked like the rows of X (values are checked in the first map)."""
        import dask.array as da

        N = X.shape[0]
        if is_dask_array(labels):
            if labels.dtype.kind not in "iu":
                raise InputError(f"labels: expected an integer array, got dtype {labels.dtype}")
            if labels.ndim != 1:
                raise InputError(f"labels: expected shape ({N},), got shape {labels.shape}")
            if any(math.isnan(c) for c in labels.chunks[0]):
                raise InputError("labels: the dask array has unknown chunk sizes; call "
                                 "labels.compute_chunk_sizes() first")
            if labels.shape[0] != N:
                raise InputError(f"labels: has {labels.shape[0]} entries but X has {N} rows")
            if labels.chunks[0] != X.chunks[0]:
                labels = labels.rechunk((X.chunks[0],))
            if labels.dtype != np.int64:
                labels = labels.astype(np.int64)
            return labels
        # a NumPy labels array is small next to X: check it here, ship it with the blocks
        lab = as_labels(labels, N, Q, Q_name=Q_name)
        return da.from_array(lab, chunks=(X.chunks[0],), name=False)

    def persist(self, X, labels):
        """Persist the (converted) data on the workers once per run: every step reads the blocks where they are."""
        import dask

        return dask.persist(X, labels)

    def run_settings(self, X) -> dict:
        return {"distributed": "dask", "reduction": self.reduction, "blocks": len(X.chunks[0])}

    def digest(self, X, labels, targets) -> str:
        """The local digest of the computed data, block by block in row order.

        Hashes the same bytes as the digest of ``X.compute()`` (float64 rows),
        ``labels.compute()`` (int64) and ``targets``, so a checkpoint written from
        dask data resumes on the same data in memory and the other way round.
        Reads every block once through the client, one block at a time.
        """
        def blocks(a):
            return (a.blocks[i].compute() for i in range(a.numblocks[0]))

        return digest_pieces([(np.dtype(X.dtype).str, X.shape, blocks(X)),
                              (np.dtype(labels.dtype).str, labels.shape, blocks(labels)),
                              (targets.dtype.str, targets.shape, [targets])])

    # ------------------------------------------------------- lazy per-point maps ---
    def truncate(self, R, b, X):
        """A lazy (N, M) float64 dask array, chunked like X's rows; non-finite values of X
        raise :class:`InputError` (naming X and the global index) when it is computed."""
        S = k.transfer_matrices(R)
        out = X.map_blocks(_block_forward, R, S, b, False, dtype=np.float64,
                           meta=np.empty((0, 0), dtype=np.float64), name="truncfast-truncate-" + _token(X, R, b))
        return _compute(out) if self._in_memory else out

    def codes(self, R, b, X):
        """A lazy (N, L) uint64 dask array, chunked like X's rows."""
        L = b.shape[0]
        S = k.transfer_matrices(R)
        out = X.map_blocks(_block_forward, R, S, b, True, dtype=np.uint64, chunks=(X.chunks[0], (L,)),
                           meta=np.empty((0, 0), dtype=np.uint64), name="truncfast-codes-" + _token(X, R, b))
        return _compute(out) if self._in_memory else out

    def rows_of(self, X, labels, j: int) -> np.ndarray:
        """Cluster j's rows brought to the client (block by block, row order)."""
        parts = [np.asarray(_compute(X.blocks[i]))[np.asarray(_compute(labels.blocks[i])) == j]
                 for i in range(X.numblocks[0])]
        return np.concatenate(parts) if parts else np.zeros((0, X.shape[1]))


def _token(*args) -> str:
    from dask.base import tokenize

    return tokenize(*args)
