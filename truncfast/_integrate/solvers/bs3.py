"""Bogacki–Shampine 3(2) in Munthe-Kaas form, docs/theory.md §12.

Tableau (Bogacki & Shampine 1989; MATLAB's ode23, diffrax's Bosh3):

    c = (0, 1/2, 3/4, 1)
    a = 1/2
        0    3/4
        2/9  1/3  4/9
    w = (2/9, 1/3, 4/9, 0)          order 3 (propagated)
    ŵ = (7/24, 1/4, 1/3, 1/8)       order 2 (embedded)

Stages at ``exp(Θ_i) R`` with the first dexp⁻¹ correction
``K̃_i = K_i − ½[Θ_i, K_i]`` (order 3 needs it when so(M) is not abelian,
M ≥ 3).  The last stage is the new state (FSAL), so an accepted step costs
three evaluations.
"""

from __future__ import annotations

from truncfast._integrate.solvers.rkmk import RKMK


class BS3(RKMK):
    """Bogacki–Shampine 3(2), FSAL, with the dexp⁻¹ correction."""

    name = "bs3"
    order = 3
    embedded_order = 2
    a = ((), (0.5,), (0.0, 0.75), (2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0))
    weights = (2.0 / 9.0, 1.0 / 3.0, 4.0 / 9.0, 0.0)
    embedded = (7.0 / 24.0, 0.25, 1.0 / 3.0, 0.125)
    dexpinv = True
