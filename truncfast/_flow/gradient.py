"""Losses and gradients of the effective flow (THEORY §§3, 5, 6).

Sign convention (CONTRACT.md): ``∂_s b = −grad_b``, ``∂_s R = −omega @ R`` with
omega antisymmetric; every loss carries the factor 1/(2N).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast._backends import registry as _backends
from truncfast._flow import separated as _separated
from truncfast._backends.dask_backend import uses_dask
from truncfast._errors import InputError
from truncfast._validate import as_labels, check_output_layer, check_problem

__all__ = ["loss", "gradient", "standard_loss", "standard_gradient", "cluster_moments"]

_EMPTY = np.zeros((0, 0))


def _euclid(R, b, X, labels, targets, backend, want_grad):
    bk = _backends.get(backend, M=R.shape[1])
    M = R.shape[1]
    W = np.zeros((0, M))
    out = bk.general(R, b, X, labels, targets, W, np.zeros(0), np.zeros((targets.shape[0], 0)), False, want_grad)
    return out


def loss(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, backend: str = "auto") -> float:
    """Euclidean loss in input space (THEORY §3, [2.26]).

    ``C_E = 1/(2N) Σ_n |τ^(L)(x_n) − ỹ_{labels[n]}|²``.
    Dask arrays for X / labels run on the dask cluster (docs/distributed.md).
    """
    if uses_dask(X, labels):
        from truncfast._backends import dask_backend as _distributed

        return _distributed.loss(R, b, X, labels, targets, backend=backend)
    R, b, X, labels, targets = check_problem(R, b, X, labels, targets)
    return float(_euclid(R, b, X, labels, targets, backend, False)[0])


def gradient(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, form: str = "general",
             backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Right-hand side of the effective gradient flow of C_E (THEORY §5, §6).

    Returns ``(grad_b (L, M), omega (L, M, M))`` with ``∂_s b = −grad_b`` and
    ``∂_s R_ℓ = −omega_ℓ R_ℓ``; ``omega_ℓ = P_A(∇_{R_ℓ} C · R_ℓᵀ)``.

    ``form="general"`` (§5) is exact for any data, L and Q.  ``form="separated"``
    (§6) needs L == Q and layer j acting on cluster j only; it checks that
    assumption first and raises :class:`SeparationError` naming the clusters and
    layers that break it.

    Dask arrays for X / labels run on the dask cluster (docs/distributed.md).
    """
    if uses_dask(X, labels):
        from truncfast._backends import dask_backend as _distributed

        return _distributed.gradient(R, b, X, labels, targets, form=form, backend=backend)
    R, b, X, labels, targets = check_problem(R, b, X, labels, targets)
    if form == "general":
        _, gb, omega, _, _ = _euclid(R, b, X, labels, targets, backend, True)
        return gb, omega
    if form == "separated":
        bk = _backends.get(backend, M=R.shape[1])
        Q = targets.shape[0]
        counts, S0, S1, S2 = _separated.checked_moments(bk, R, b, X, labels, Q)
        return _separated.assemble(R, b, targets, counts, S0, S1, S2, X.shape[0])
    raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")


def cluster_moments(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, backend: str = "auto") -> dict:
    """Constrained moments of every cluster at its own layer (THEORY §6).

    Returns a dict of arrays: ``pi`` (Q,), ``m0`` (Q, M), ``m1``, ``m2`` (Q, M, M),
    ``tbar`` (Q, M) and ``target_rotated`` ỹ' (Q, M).  Needs L == Q and
    non-empty clusters; does not check separation (see :func:`gradient`).
    """
    R, b, X, labels, targets = check_problem(R, b, X, labels, targets)
    Q = targets.shape[0]
    if R.shape[0] != Q:
        raise _separated.SeparationShapeError(f"targets: moments need L == Q, got L = {R.shape[0]}, Q = {Q}")
    counts = np.bincount(labels, minlength=Q).astype(np.float64)
    if (counts == 0).any():
        raise InputError(f"labels: cluster(s) {np.flatnonzero(counts == 0).tolist()} have no points")
    S0, S1, S2 = _backends.get(backend, M=R.shape[1]).moments(R, b, X, labels, Q)
    return _separated.normalised_moments(R, b, targets, counts, S0, S1, S2, X.shape[0])


def _check_output_layer(R, b, X, labels, W_out, b_out, Y):
    R, b, X = check_problem(R, b, X)
    W_out, b_out, Y = check_output_layer(R.shape[1], W_out, b_out, Y)
    labels = as_labels(labels, X.shape[0], Y.shape[0], Q_name="Y")
    return R, b, X, labels, W_out, b_out, Y


def _standard(R, b, X, labels, W_out, b_out, Y, backend, want_grad):
    return _backends.get(backend, M=R.shape[1]).general(R, b, X, labels, np.zeros((0, R.shape[1])), W_out, b_out, Y, True, want_grad)


def standard_loss(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *,
                  backend: str = "auto") -> float:
    """Standard loss ``C_std = 1/(2N) Σ_n |W_out τ^(L)(x_n) + b_out − y_{labels[n]}|²`` (THEORY §3).

    ``W_out`` (P, M) and ``b_out`` (P,) are the cumulative output weight and bias
    W^(L+1), b^(L+1); ``Y`` (Q, P) holds the reference outputs.
    """
    if uses_dask(X, labels):
        from truncfast._backends import dask_backend as _distributed

        return _distributed.standard_loss(R, b, X, labels, W_out, b_out, Y, backend=backend)
    args = _check_output_layer(R, b, X, labels, W_out, b_out, Y)
    return float(_standard(*args, backend, False)[0])


def standard_gradient(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *,
                      backend: str = "auto"):
    """Gradient of C_std (THEORY §5 with e = W_outᵀ(W_out z_L + b_out − y_j)).

    Returns ``(grad_b (L, M), omega (L, M, M), grad_W_out (P, M), grad_b_out (P,))``
    where the last two are the plain Euclidean gradients of C_std with respect
    to W_out and b_out: ``(1/N) Σ ρ_n z_nᵀ`` and ``(1/N) Σ ρ_n`` with residual
    ``ρ_n = W_out z_n + b_out − y_{j(n)}`` and ``z_n = τ^(L)(x_n)``.
    """
    if uses_dask(X, labels):
        from truncfast._backends import dask_backend as _distributed

        return _distributed.standard_gradient(R, b, X, labels, W_out, b_out, Y, backend=backend)
    args = _check_output_layer(R, b, X, labels, W_out, b_out, Y)
    _, gb, omega, gW, gbo = _standard(*args, backend, True)
    return gb, omega, gW, gbo
