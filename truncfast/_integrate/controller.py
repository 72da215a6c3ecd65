"""Step-size control of adaptive runs: the error norm and a PI controller (docs/theory.md §12).

**Error norm.**  An attempted step from y₀ to y₁ with raw error estimate e
(``Attempt.error``: the Θ-difference for R, differences for b, W, c) is
accepted when

    err = sqrt( mean_over_components (e_k / sc_k)² ) ≤ 1,
    sc_k = atol + rtol · max(|y₀_k|, |y₁_k|)      for b, W_out, b_out,
    sc_k = atol + rtol                              for the angles of e_Θ,

the root-mean-square norm of Hairer, Nørsett & Wanner (I, II.4).  R is on
O(M): its entries are at most 1 and e_Θ is a matrix of angles (radians), so
its scale is that of a quantity of size 1; only the strict upper triangle of
the antisymmetric e_Θ is counted (its independent entries).

**PI controller** (Gustafsson; Hairer & Wanner II, IV.2, eq. (2.43c)): with
k = p̂ + 1 (p̂ the embedded order, the order of the estimate's leading term)
the next step after an accepted one is

    h_new = h · clip( safety · err_n^(−α/k) · err_{n−1}^(β/k), fmin, fmax ),

α = 0.7, β = 0.4 (``_config.ADAPTIVE_PI_ALPHA/BETA``), err_{n−1} the error of the
previous accepted step; a rejected step (err > 1, or not finite) retries with
``h · clip(safety · err^(−1/k), fmin, 1)`` and the step after a rejection may
not grow.  Every constant lives in ``_config``.
"""

from __future__ import annotations

import math

import numpy as np

from truncfast import _config
from truncfast._integrate.solvers.base import State

__all__ = ["error_norm", "PIController"]


def error_norm(e: State, y0: State, y1: State, rtol: float, atol: float) -> float:
    """The scaled RMS norm of the error estimate ``e`` (parts that are None do not move)."""
    total = 0.0
    count = 0
    if e.R is not None:
        L, M, _ = e.R.shape
        iu = np.triu_indices(M, 1)
        r = e.R[:, iu[0], iu[1]] / (atol + rtol)
        total += float(np.sum(r * r))
        count += r.size
    for part, a, b in ((e.b, y0.b, y1.b), (e.W, y0.W, y1.W), (e.c, y0.c, y1.c)):
        if part is None:
            continue
        sc = atol + rtol * np.maximum(np.abs(a), np.abs(b))
        r = part / sc
        total += float(np.sum(r * r))
        count += r.size
    if count == 0:
        return 0.0
    return math.sqrt(total / count)


class PIController:
    """Proposes step sizes from the error norms of the attempted steps (see the module docstring)."""

    def __init__(self, embedded_order: int, err_prev: float = 1.0):
        self.k = float(embedded_order + 1)
        #: error of the last accepted step (1.0 before the first: a plain I controller)
        self.err_prev = float(err_prev)
        self.rejected_last = False

    def accept(self, h: float, err: float) -> float:
        """Step after an accepted step of size h with error norm ``err`` ≤ 1."""
        e = max(err, _config.ADAPTIVE_ERR_FLOOR)
        fac = _config.ADAPTIVE_SAFETY * e ** (-_config.ADAPTIVE_PI_ALPHA / self.k) \
            * max(self.err_prev, _config.ADAPTIVE_ERR_FLOOR) ** (_config.ADAPTIVE_PI_BETA / self.k)
        top = 1.0 if self.rejected_last else _config.ADAPTIVE_FACTOR_MAX
        fac = min(top, max(_config.ADAPTIVE_FACTOR_MIN, fac))
        self.err_prev = e
        self.rejected_last = False
        return h * fac

    def reject(self, h: float, err: float) -> float:
        """Step to retry with after a rejected step (``err`` > 1 or not finite)."""
        self.rejected_last = True
        if not math.isfinite(err):
            return h * _config.ADAPTIVE_FACTOR_MIN
        fac = _config.ADAPTIVE_SAFETY * err ** (-1.0 / self.k)
        return h * min(1.0, max(_config.ADAPTIVE_FACTOR_MIN, fac))
