"""The hybrid evaluation of ``engine="auto"``: big groups from their moments, small groups per point (docs/theory.md §11).

A group of n points costs O(L M³) from its moments and O(n L M²) per point,
so groups below ``CostModel.small_group()`` points are cheaper per point.
After a full pass, :class:`SmallGroups` classifies the groups by size (groups
made later by re-checks count as small); a hybrid evaluation then assembles
the big groups from their moments (the small ones' counts set to 0) and runs
the per-point kernel on the gathered rows of the small groups, and adds the
two:

    C = C_big + (N_small / N) C_small,   likewise grad_b and omega,

each part normalised by its own number of points.  Every point is in exactly
one part, since the groups are exact (the margin bound); the rows of the small
part are gathered again only after points moved or groups were created.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast._flow.gradient import euclid_general

__all__ = ["SmallGroups"]


class SmallGroups:
    """Which groups run per point, and their rows (gathered when they change)."""

    def __init__(self, st, threshold: int):
        self.small = st.n < threshold          # classification at the pass, by group id
        self._seen = (-1, -1)                  # (G, moved points) when the rows were gathered
        self.rows = np.zeros(0, np.int64)
        self.X = self.labels = None

    def mask(self, st) -> np.ndarray:
        """Small-group flags for every group id (groups made after the pass are small)."""
        G = st.G
        if self.small.shape[0] < G:
            self.small = np.concatenate([self.small, np.ones(G - self.small.shape[0], bool)])
        return self.small[:G]

    def sizes(self, st) -> tuple[int, int]:
        """(live big groups, points in small groups) at the current membership."""
        small = self.mask(st)
        n = st.n
        return int(np.count_nonzero(n[~small])), int(n[small].sum())

    def stale(self, st) -> bool:
        """True when the gathered rows no longer match the membership."""
        return self._seen != (st.G, int(st.stats["moved_points"]))

    def evaluate(self, bk, st, R, b, X: Any, labels: Any, targets: np.ndarray):
        """``(loss, grad_b, omega)`` divided by N: big groups from their moments, small ones per point."""
        small = self.mask(st)
        if self.stale(st):
            self.rows = np.flatnonzero(small[st.group_of])
            self.X = np.ascontiguousarray(X[self.rows])
            self.labels = np.ascontiguousarray(labels[self.rows])
            self._seen = (st.G, int(st.stats["moved_points"]))
        counts = st.tn.copy()
        counts[:st.G][small] = 0
        loss, gb, om = bk.pattern_assemble(st, R, b, targets, counts)
        k = self.rows.shape[0]
        if k:
            l2, gb2, om2, _, _ = euclid_general(bk, R, b, self.X, self.labels, targets, True)
            w = k / st.N
            loss, gb, om = loss + w * float(l2), gb + w * gb2, om + w * om2
        return float(loss), gb, om
