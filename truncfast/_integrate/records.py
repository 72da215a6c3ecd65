"""Record buffers of the time-stepped loop: one row per recorded state, grown by doubling.

A record holds what :class:`truncfast.Trajectory` keeps per recorded state
(time, step, loss, norms of the right-hand side, orthogonality defect,
truncation counts, the state) and, for the standard loss, the output layer
``W_outs``, ``b_outs``.  Growing builds the new buffers first and swaps them in
with one assignment, so a Ctrl-C in between leaves the old, valid ones.
"""

from __future__ import annotations

import math

import numpy as np

from truncfast._flow.evaluator import RHS
from truncfast._integrate.solvers.base import State
from truncfast._kernels import expm as _expm

__all__ = ["Records"]


class Records:
    """Growable record buffers (the caller keeps the number of rows written)."""

    def __init__(self, L: int, M: int, Q: int, P: int | None, capacity: int = 256, previous=None):
        shapes = {
            "times": ((), np.float64), "steps": ((), np.int64), "loss": ((), np.float64),
            "grad_b_norm": ((), np.float64), "omega_norm": ((), np.float64), "ortho_defect": ((), np.float64),
            "counts": ((L, Q, 3), np.int64), "Rs": ((L, M, M), np.float64), "bs": ((L, M), np.float64),
        }
        if P is not None:
            shapes["W_outs"] = ((P, M), np.float64)
            shapes["b_outs"] = ((P,), np.float64)
        n = 0 if previous is None else len(previous.steps)
        cap = n + capacity
        self.buf = {name: np.zeros((cap,) + shp, dtype=dt) for name, (shp, dt) in shapes.items()}
        if previous is not None:
            for name, arr in self.buf.items():
                arr[:n] = getattr(previous, name)

    def append(self, i: int, t: float, k: int, y: State, rhs: RHS, counts: np.ndarray) -> None:
        """Write record ``i`` (the caller commits the new count of records)."""
        buf = self.buf
        cap = len(buf["steps"])
        if i >= cap:
            grown = {}
            for name, arr in buf.items():
                g = np.zeros((2 * cap,) + arr.shape[1:], dtype=arr.dtype)
                g[:cap] = arr
                grown[name] = g
            self.buf = buf = grown
        buf["times"][i] = t
        buf["steps"][i] = k
        buf["loss"][i] = rhs.loss
        buf["grad_b_norm"][i] = math.sqrt(float(np.dot(rhs.grad_b.ravel(), rhs.grad_b.ravel())))
        buf["omega_norm"][i] = math.sqrt(float(np.dot(rhs.omega.ravel(), rhs.omega.ravel())))
        buf["ortho_defect"][i] = _expm.defect(y.R)
        buf["counts"][i] = counts
        buf["Rs"][i] = y.R
        buf["bs"][i] = y.b
        if "W_outs" in buf:
            buf["W_outs"][i] = y.W
            buf["b_outs"][i] = y.c

    def arrays(self, n: int) -> dict[str, np.ndarray]:
        """Copies of the first ``n`` records."""
        return {name: arr[:n].copy() for name, arr in self.buf.items()}
