"""Predictions of ``engine="auto"`` before a full pass, from a fixed sample of the data (docs/theory.md §11).

A full pass costs a few per-point evaluations; it pays only if the groups it
builds are many fewer than the points and stay valid for a while.  Both are
estimated on ``_config.ENGINE_PROBE_ROWS`` rows spread evenly over the data
(gathered once), for well under 1 % of a per-point evaluation at N = 10⁶:

* :meth:`Probe.too_many_groups`: two points drawn at random share a group
  with probability P = Σ p_g² (p_g the share of group g), and G ≥ 1/P
  (Cauchy–Schwarz).  From the C colliding pairs among the s sample rows,
  P ≲ (C + 3) / (s(s − 1)/2); when even that gives G > cap, no pass is tried.
* :meth:`Probe.share_at_risk`: the sample's margins, groups and centres at
  the current state, and the pattern-affine bound of the last step's motion
  (from the previous evaluated state), extrapolated linearly over the steps a
  pass needs to pay for itself: the share of sample points the bound would
  flag by then.  Above ``_config.ENGINE_RECHECK_SHARE`` the groups would go
  stale first, and auto stays per point.

Both are predictions (they decide cost, never correctness).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast import _config
from truncfast._kernels import patterns as _k
from truncfast._kernels import patterns_risk as _r
from truncfast._kernels.numba_kernels import transfer_matrices

__all__ = ["Probe"]


class Probe:
    """A fixed sample of the rows (evenly spaced, first included) and the predictions made on it."""

    def __init__(self, X: Any, labels: Any):
        N = int(X.shape[0])
        s = min(N, _config.ENGINE_PROBE_ROWS)
        rows = (np.arange(s, dtype=np.int64) * N) // s
        self.X = np.ascontiguousarray(X[rows], dtype=np.float64)
        self.labels = np.ascontiguousarray(labels[rows], dtype=np.int64)

    def too_many_groups(self, bk, R, b, cap: int) -> bool:
        """True when the sample shows that the data have more than ``cap`` groups (module docstring)."""
        s = self.X.shape[0]
        if s < 2:
            return False
        codes = np.asarray(bk.codes(R, b, self.X))
        keys = np.concatenate([codes, self.labels.astype(np.uint64)[:, None]], axis=1)
        _, c = np.unique(keys, axis=0, return_counts=True)
        pairs = float((c * (c - 1) // 2).sum())
        return (pairs + 3.0) * cap < s * (s - 1) / 2.0

    def share_at_risk(self, R, b, R_prev, b_prev, steps: int) -> float:
        """Predicted share of points at risk ``steps`` evaluations after a pass at (R, b), if the state
        keeps moving per step as it did from (R_prev, b_prev) to (R, b)."""
        K = self.X.shape[0]
        L, M = b.shape
        if K == 0:
            return 0.0
        codes = np.empty((K, L), np.uint64)
        m32, rho32 = np.empty(K, np.float32), np.empty(K, np.float32)
        chunk = _config.CHUNK_SIZE
        _k.stats_range(R, transfer_matrices(R), b, self.X, 0, (K + chunk - 1) // chunk, chunk, _config.BLOCK_SIZE,
                       codes, m32, rho32)
        keys = np.concatenate([codes, self.labels.astype(np.uint64)[:, None]], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        G = uniq.shape[0]
        cnt = np.bincount(inv, minlength=G).astype(np.float64)
        centres = np.zeros((G, M))
        np.add.at(centres, inv, self.X)
        centres /= cnt[:, None]
        delta = np.linalg.norm(self.X - centres[inv], axis=1)
        eps = float(np.linalg.norm(R - R_prev, axis=(1, 2)).max())
        kappa = (2 * L - 1) * eps
        move, kap = np.empty(G), np.empty(G)
        _r.slot_constants(R, b, R_prev, b_prev, centres, np.ascontiguousarray(uniq[:, :L]), 0.0, 0.0, 1.0, kappa,
                          False, move, kap)
        bound = steps * (kappa * delta + move[inv])
        return float(np.mean(m32 <= bound))
