"""The one place where the embedding front ends (``truncfast.torch``, ``truncfast.jax``) reach the engine.

:func:`loss_and_gradients` validates host arrays exactly as the NumPy API does
(same :class:`~truncfast.InputError` messages) and returns the Euclidean loss
C_E and every gradient a front end may ask for, from one §5 kernel call plus,
only when asked, the data/target pass of ``_kernels.grad_x``.  The public
``tf.gradient`` cannot serve here: it drops the loss, which the same kernel
call computes for free, and a separate ``tf.loss`` would cost a second
forward pass over all N points.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from truncfast._arrays import as_host_array
from truncfast._flow.gradient import euclid_general
from truncfast._flow.problem import euclid_args
from truncfast._kernels.grad_x import data_target_gradients

__all__ = ["Gradients", "host_arrays", "loss_and_gradients"]

ARG_NAMES = ("R", "b", "X", "labels", "targets")


class Gradients(NamedTuple):
    """C_E and its gradients (docs/theory.md §§3, 5); a gradient not asked for is None."""

    loss: float
    #: ∂C/∂R restricted to the tangent space of O(M)^L: omega_ℓ R_ℓ, (L, M, M)
    R: np.ndarray | None
    #: ∂C/∂b (L, M)
    b: np.ndarray | None
    #: ∂C/∂X (N, M), row n = (1/N) P_1 ⋯ P_L e_n
    X: np.ndarray | None
    #: ∂C/∂targets (Q, M), row j = −(1/N) Σ_{n in cluster j} e_n
    targets: np.ndarray | None


def host_arrays(*arrays: Any) -> list[np.ndarray]:
    """(R, b, X, labels, targets) as host NumPy arrays, views where possible (``_arrays.as_host_array``)."""
    return [as_host_array(a, name) for a, name in zip(arrays, ARG_NAMES)]


def loss_and_gradients(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, want_state: bool = True,
                       want_x: bool = False, want_targets: bool = False, backend: str = "auto") -> Gradients:
    """C_E and the requested gradients, in float64.

    ``want_state``: ∂C/∂b and the tangent part ``omega_ℓ R_ℓ`` of ∂C/∂R_ℓ
    (``omega = P_A(G)``, docs/theory.md §5) — one §5 kernel call that also returns
    the loss; without it the call is the forward pass only.  ``want_x`` /
    ``want_targets``: one more pass (``_kernels.grad_x``, Numba).
    """
    p = euclid_args(*host_arrays(R, b, X, labels, targets), backend)
    R, b, X, labels, targets = p.R, p.b, p.X, p.labels, p.targets
    loss, gb, omega, _, _ = euclid_general(p.bk, R, b, X, labels, targets, want_state)
    gR = omega @ R if want_state else None
    gX, gT = data_target_gradients(R, b, X, labels, targets, want_x=want_x, want_targets=want_targets)
    return Gradients(float(loss), gR, gb if want_state else None, gX, gT)
