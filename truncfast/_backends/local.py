"""What the in-memory backends (numpy, numba, c) share.

Data are NumPy arrays in this process: validated eagerly at the boundary
(``truncfast._validate``), hashed in one piece, and counted from sector codes
in bounded row blocks.  The separation check first tries a sufficient test on
enclosing balls (no pass over the data beyond the balls themselves) and runs
the exact per-point check only when that is inconclusive.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._backends.digest import data_digest
from truncfast._backends.protocol import FULL, PARTIAL, UNTRUNCATED, Backend
from truncfast._validate import as_float_array, as_labels, check_finite
from truncfast._errors import InputError

__all__ = ["LocalBackend", "check_data", "is_dask_array", "normalise", "batch", "readonly", "cluster_balls",
           "separated_by_balls"]


def normalise(N: int, loss, gb, G, gW, gbo, standard: bool):
    """Raw kernel sums → ``(loss, grad_b, omega, grad_W, grad_bout)`` divided by N, omega = P_A(G)."""
    omega = 0.5 * (G - np.swapaxes(G, 1, 2)) / N
    if standard:
        return loss / N, gb / N, omega, gW / N, gbo / N
    return loss / N, gb / N, omega, None, None


def batch(nchunks: int, bytes_per_chunk: int) -> int:
    """Chunks per batch of partial slots: enough to feed every thread, bounded in memory.

    The batch size never changes the result (slots are added in chunk order).
    """
    from truncfast._kernels.parallel import get_num_threads

    threads = get_num_threads()
    cap = _config.PARTIALS_BUDGET_BYTES // max(1, bytes_per_chunk)
    # at least one chunk per thread even if that exceeds the budget a little
    return int(max(1, min(nchunks, max(cap, threads))))


def readonly(*arrays):
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


def is_dask_array(x: Any) -> bool:
    """True if ``x`` is a ``dask.array.Array``; never imports dask.

    A dask array can only exist once ``dask.array`` has been imported, so
    looking it up in ``sys.modules`` is enough and costs nothing for users
    without dask.
    """
    mod = sys.modules.get("dask.array")
    return mod is not None and isinstance(x, getattr(mod, "Array", ()))


def check_data(X: Any, M: int) -> np.ndarray:
    """In-memory data ``X`` (N, M): C-contiguous float64, at least one row, finite (named errors)."""
    X = as_float_array("X", X, 2, (None, M))
    if X.shape[0] == 0:
        raise InputError("X: has no rows (N = 0); at least one point is needed")
    check_finite("X", X)
    return X


class LocalBackend(Backend):
    """Base class of the backends whose data are NumPy arrays in this process."""

    def prepare_X(self, X: Any, M: int) -> np.ndarray:
        return check_data(X, M)

    def prepare_labels(self, labels: Any, X: np.ndarray, Q: int, Q_name: str = "targets") -> np.ndarray:
        if is_dask_array(labels):  # X is in memory: bring the (small) labels here
            labels = np.asarray(labels.compute())
        return as_labels(labels, X.shape[0], Q, Q_name=Q_name)

    def digest(self, X, labels, targets) -> str:
        return data_digest(X, labels, targets)

    def rows_of(self, X, labels, j: int) -> np.ndarray:
        return X[labels == j]

    def counts(self, R, b, X, labels, Q: int) -> np.ndarray:
        # rows in bounded blocks: the codes of all N points at once would be an (N, L)
        # array plus temporaries, growing with N like X itself (integer counts: the
        # blocking cannot change the result)
        L, M = b.shape
        out = np.zeros((L, Q, 3), dtype=np.int64)
        ones = np.uint64((1 << M) - 1)
        rows = _config.COUNTS_ROWS
        for s in range(0, X.shape[0], rows):
            codes = np.asarray(self.codes(R, b, X[s:s + rows]))
            lab = labels[s:s + rows]
            cat = np.where(codes == ones, UNTRUNCATED, np.where(codes == 0, FULL, PARTIAL))
            for l in range(L):
                out[l] += np.bincount(lab * 3 + cat[:, l], minlength=3 * Q).reshape(Q, 3)
        return out

    # the pattern form (§11): the kernels named by ``pattern_kernels`` (None: not offered)
    def pattern_pass(self, R, b, X, labels, Q: int, max_groups: int | None):
        from truncfast._kernels import pattern_state

        return pattern_state.full_pass(R, b, X, labels, Q, max_groups=max_groups, backend=self._patterns())

    def pattern_at_risk(self, state, R, b, limit: int | None):
        from truncfast._kernels import pattern_state

        return pattern_state.at_risk(state, R, b, limit=limit)

    def pattern_recheck(self, state, idx, R, b, X, labels) -> int:
        from truncfast._kernels import pattern_state

        return pattern_state.recheck(state, idx, R, b, X, labels, backend=self._patterns())

    def pattern_assemble(self, state, R, b, targets, counts=None):
        from truncfast._kernels import pattern_state

        return pattern_state.assemble(state, R, b, targets, backend=self._patterns(), counts=counts)

    def pattern_counts(self, state) -> np.ndarray:
        from truncfast._kernels import pattern_state

        return pattern_state.counts(state)

    def _patterns(self) -> str:
        if self.pattern_kernels is None:
            raise NotImplementedError(f"backend {self.name!r} has no pattern kernels")
        return self.pattern_kernels

    def separation(self, R, b, X, labels, Q: int):
        sizes = np.bincount(labels, minlength=Q).astype(np.float64)
        if (sizes > 0).all() and separated_by_balls(R, b, *cluster_balls(X, labels, Q)):
            return sizes, np.zeros((Q, R.shape[0]), dtype=np.int64)
        return sizes, np.asarray(self.violations(R, b, X, labels, Q), dtype=np.int64)

    def violations(self, R, b, X, labels, Q: int) -> np.ndarray:
        """(Q, L) points of cluster j truncated by layer ℓ ≠ j along the composition."""
        raise NotImplementedError


def cluster_balls(X, labels, Q: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (Q, M) and radius (Q,) of a ball containing each cluster.

    The centre is the cluster mean; the radius the largest distance to it,
    enlarged by ``_config.BALL_RADIUS_SLACK`` (relative) so that rounding can
    only make it larger.  Two passes over X, O(N M), no N-sized temporaries.
    """
    from truncfast._kernels import numba_kernels as k
    from truncfast._kernels import parallel

    N, M = X.shape
    counts = np.bincount(labels, minlength=Q).astype(np.float64)
    chunk = _config.BALL_CHUNK_ROWS
    nchunks = (N + chunk - 1) // chunk
    threads = parallel.get_num_threads()  # read once: the slots must match the ranges
    slots = max(1, min(threads, nchunks))
    parts = np.zeros((slots, Q, M))
    n = parallel.run_ranges(lambda a, c, i: k.cluster_sums_range(X, labels, a, c, chunk, parts[i]), 0, nchunks,
                            threads=threads)
    sums = np.zeros((Q, M))
    k.add_slots(sums, parts, n)
    centers = sums / np.maximum(counts, 1.0)[:, None]
    rparts = np.zeros((slots, Q))
    parallel.run_ranges(lambda a, c, i: k.cluster_radius_range(X, labels, centers, a, c, chunk, rparts[i]),
                        0, nchunks, threads=threads)
    rad2 = rparts.max(axis=0)  # a max is exact in any order
    radius = np.sqrt(rad2) * (1.0 + _config.BALL_RADIUS_SLACK) + 1e-300
    return centers, radius


def separated_by_balls(R, b, centers, radius) -> bool:
    """Sufficient condition for cluster separation, O(Q L M²), no pass over the data.

    Cluster j lies in the ball B(c_j, r_j).  For ℓ < j the points reach layer ℓ
    unchanged, for ℓ > j as τ_j(x) with |τ_j(x) − τ_j(c_j)| ≤ r_j because τ_j is a
    projection onto a convex set (1-Lipschitz, docs/theory.md §4).  So if every
    coordinate of R_ℓ z + b_ℓ at the centre z exceeds r_j (plus a rounding
    margin ``_config.SEPARATION_MARGIN``) the whole cluster is untruncated by
    τ_ℓ.  Returns False when the test is inconclusive.
    """
    L = R.shape[0]
    eps = _config.SEPARATION_MARGIN
    for j in range(L):
        z = centers[j]
        r = radius[j]
        for l in range(L):
            u = R[l] @ z + b[l]
            if l == j:
                z = z - R[l].T @ np.minimum(u, 0.0)  # τ_j(c_j)
                continue
            margin = eps * (np.abs(u).max() + np.abs(b[l]).max() + r + 1.0)
            if u.min() <= r + margin:
                return False
    return True
