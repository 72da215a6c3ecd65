"""Losses and gradients of the effective flow (docs/theory.md §§3, 5, 6).

Sign convention (docs/api.md): ``∂_s b = −grad_b``, ``∂_s R = −omega @ R`` with
omega antisymmetric; every loss carries the factor 1/(2N).  One code path for
every backend (``problem`` validates and picks it; dask data run on dask).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast._errors import InputError
from truncfast._flow import separated as _separated
from truncfast._flow.problem import euclid_args, standard_args
from truncfast._validate import check_results_finite

__all__ = ["loss", "gradient", "standard_loss", "standard_gradient", "cluster_moments", "euclid_general"]


def euclid_general(bk, R, b, X, labels, targets, want_grad: bool):
    """The §5 kernel of the Euclidean loss: ``(loss, grad_b, omega, None, None)`` divided by N."""
    M = R.shape[1]
    return bk.general(R, b, X, labels, targets, np.zeros((0, M)), np.zeros(0), np.zeros((targets.shape[0], 0)),
                      False, want_grad)


def loss(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, backend: str = "auto") -> float:
    """Euclidean loss in input space (docs/theory.md §3, [2.26]).

    ``C_E = 1/(2N) Σ_n |τ^(L)(x_n) − ỹ_{labels[n]}|²``.
    Dask arrays for X run on the dask cluster (docs/distributed.md).
    """
    p = euclid_args(R, b, X, labels, targets, backend)
    with np.errstate(all="ignore"):  # an overflow is reported by _finite, not as RuntimeWarnings
        value = float(euclid_general(p.bk, p.R, p.b, p.X, p.labels, p.targets, False)[0])
    _finite("loss", [value], p)
    return value


def _finite(what: str, results, p) -> None:
    """Never a silent NaN: a non-finite result from finite inputs names the input that is too large."""
    check_results_finite(what, results, dict(X=p.X, b=p.b, targets=p.targets), p.X.shape[0], p.R.shape[1])


def _finite_std(what: str, results, p) -> None:
    check_results_finite(what, results, dict(X=p.X, b=p.b, W_out=p.W_out, b_out=p.b_out, Y=p.Y),
                         p.X.shape[0], p.R.shape[1], scaled="X, b, b_out and Y")


def gradient(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, form: str = "general",
             backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Right-hand side of the effective gradient flow of C_E (docs/theory.md §5, §6).

    Returns ``(grad_b (L, M), omega (L, M, M))`` with ``∂_s b = −grad_b`` and
    ``∂_s R_ℓ = −omega_ℓ R_ℓ``; ``omega_ℓ = P_A(∇_{R_ℓ} C · R_ℓᵀ)``.

    ``form="general"`` (§5) is exact for any data, L and Q.  ``form="separated"``
    (§6) needs L == Q and layer j acting on cluster j only; it checks that
    assumption first and raises :class:`SeparationError` naming the clusters and
    layers that break it.

    Dask arrays for X run on the dask cluster (docs/distributed.md).
    """
    if form not in ("general", "separated"):
        raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")
    p = euclid_args(R, b, X, labels, targets, backend)
    with np.errstate(all="ignore"):  # an overflow is reported below, not as RuntimeWarnings
        if form == "general":
            _, gb, omega, _, _ = euclid_general(p.bk, p.R, p.b, p.X, p.labels, p.targets, True)
        else:
            counts, S0, S1, S2 = _separated.checked_moments(p.bk, p.R, p.b, p.X, p.labels, p.targets.shape[0])
            gb, omega = _separated.assemble(p.R, p.b, p.targets, counts, S0, S1, S2, p.X.shape[0])
    _finite("gradient", (gb, omega), p)
    return gb, omega


def cluster_moments(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, backend: str = "auto") -> dict:
    """Constrained moments of every cluster at its own layer (docs/theory.md §6).

    Returns a dict of arrays: ``pi`` (Q,), ``m0`` (Q, M), ``m1``, ``m2`` (Q, M, M),
    ``tbar`` (Q, M) and ``target_rotated`` ỹ' (Q, M).  Needs L == Q and
    non-empty clusters; does not check separation (see :func:`gradient`).
    """
    p = euclid_args(R, b, X, labels, targets, backend)
    Q = p.targets.shape[0]
    if p.R.shape[0] != Q:
        raise _separated.SeparationShapeError(f"targets: moments need L == Q, got L = {p.R.shape[0]}, Q = {Q}")
    with np.errstate(all="ignore"):  # an overflow is reported below, not as RuntimeWarnings
        S0, S1, S2, counts, _, _ = p.bk.moments_box(p.R, p.b, p.X, p.labels, Q)
        _separated.check_nonempty(counts)
        out = _separated.normalised_moments(p.R, p.b, p.targets, counts, S0, S1, S2, p.X.shape[0])
    _finite("cluster_moments", list(out.values()), p)
    return out


def _standard(p, want_grad):
    with np.errstate(all="ignore"):  # an overflow is reported by _finite_std, not as RuntimeWarnings
        return p.bk.general(p.R, p.b, p.X, p.labels, np.zeros((0, p.R.shape[1])), p.W_out, p.b_out, p.Y, True, want_grad)


def standard_loss(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *,
                  backend: str = "auto") -> float:
    """Standard loss ``C_std = 1/(2N) Σ_n |W_out τ^(L)(x_n) + b_out − y_{labels[n]}|²`` (docs/theory.md §3).

    ``W_out`` (P, M) and ``b_out`` (P,) are the cumulative output weight and bias
    W^(L+1), b^(L+1); ``Y`` (Q, P) holds the reference outputs.
    """
    p = standard_args(R, b, X, labels, W_out, b_out, Y, backend)
    value = float(_standard(p, False)[0])
    _finite_std("standard_loss", [value], p)
    return value


def standard_gradient(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *,
                      backend: str = "auto"):
    """Gradient of C_std (docs/theory.md §5 with e = W_outᵀ(W_out z_L + b_out − y_j)).

    Returns ``(grad_b (L, M), omega (L, M, M), grad_W_out (P, M), grad_b_out (P,))``
    where the last two are the plain Euclidean gradients of C_std with respect
    to W_out and b_out: ``(1/N) Σ ρ_n z_nᵀ`` and ``(1/N) Σ ρ_n`` with residual
    ``ρ_n = W_out z_n + b_out − y_{j(n)}`` and ``z_n = τ^(L)(x_n)``.
    """
    p = standard_args(R, b, X, labels, W_out, b_out, Y, backend)
    _, gb, omega, gW, gbo = _standard(p, True)
    _finite_std("standard_gradient", (gb, omega, gW, gbo), p)
    return gb, omega, gW, gbo
