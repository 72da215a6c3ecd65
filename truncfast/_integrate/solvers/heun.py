"""Heun in Munthe-Kaas form: order 2 with embedded Lie–Euler (order 1), docs/theory.md §12.

    K_1 = −Ω(R, b),                 F_1 = −∇_b C(R, b)
    K_2 = −Ω(e^{h K_1} R, b + h F_1), F_2 likewise
    R ← exp(h (K_1 + K_2)/2) R,     b ← b + h (F_1 + F_2)/2

No dexp⁻¹ correction is needed for order 2.  The embedded solution is the
Lie–Euler step (weights (1, 0)); the error estimate is ``h (K_2 − K_1)/2``
in the algebra and ``h (F_2 − F_1)/2`` for b.  Two evaluations per step.
"""

from __future__ import annotations

from truncfast._integrate.solvers.rkmk import RKMK


class Heun(RKMK):
    """Explicit trapezoidal rule (Heun) with embedded Euler, on O(M)^L via exp."""

    name = "heun"
    order = 2
    embedded_order = 1
    a = ((), (1.0,))
    weights = (0.5, 0.5)
    embedded = (1.0, 0.0)
    dexpinv = False
