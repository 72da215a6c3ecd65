"""General invertible cumulative weights: the flow beyond the alignment hypothesis (docs/theory.md §13).

The paper assumes the cumulative weights are aligned with the activation,
``W^(ℓ) = D_ℓ R_ℓ`` with D_ℓ diagonal (docs/theory.md §4).  This module drops
that assumption: the state is any ``W`` (L, M, M) of invertible, well-conditioned
cumulative weights and the cumulative biases ``b`` (L, M), with truncation maps
``τ_ℓ(z) = W_ℓ⁻¹(σ(W_ℓ z + b_ℓ) − b_ℓ)`` (oblique projections)::

    import truncfast.unaligned as tu
    tu.truncate(W, b, X)                             # τ^(L)(x), (N, M)
    tu.loss(W, b, X, labels, targets)                # C_E
    grad_b, grad_W = tu.gradient(W, b, X, labels, targets)   # plain Euclidean gradients
    traj = tu.integrate(W, b, X, labels, targets, dt=0.05, steps=200)
    tu.alignment_defect(W)                           # (L,): 0 when aligned

A singular or ill-conditioned W is refused (InputError with the condition
number); :func:`integrate` stops with DivergenceError if the flow runs into
singularity.  Backends: ``"numpy"``, ``"numba"``, ``"c"`` (``"auto"`` as for the
aligned engine); dask data are not supported here.
"""

from __future__ import annotations

from truncfast._flow.unaligned import alignment_defect as alignment_defect
from truncfast._flow.unaligned import condition_numbers as condition_numbers
from truncfast._flow.unaligned import gradient as gradient
from truncfast._flow.unaligned import loss as loss
from truncfast._flow.unaligned import sector_codes as sector_codes
from truncfast._flow.unaligned import truncate as truncate
from truncfast._integrate.unaligned import UnalignedTrajectory as UnalignedTrajectory
from truncfast._integrate.unaligned import integrate as integrate

__all__ = ["truncate", "sector_codes", "loss", "gradient", "integrate", "alignment_defect", "condition_numbers",
           "UnalignedTrajectory"]

