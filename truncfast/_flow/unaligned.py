"""The flow with general invertible cumulative weights (docs/theory.md §13): validation, maps, loss, gradient.

State: ``W`` (L, M, M), each W_ℓ = W^(ℓ) ∈ GL(M), and the cumulative biases ``b``
(L, M).  The truncation maps are the oblique projections
``τ_ℓ(z) = W_ℓ⁻¹(σ(W_ℓ z + b_ℓ) − b_ℓ)``, the loss is C_E of §3, and the
gradients are the plain Euclidean ones in the entries of W_ℓ and b_ℓ.

Conditioning.  τ_ℓ applies W_ℓ⁻¹, so every result loses about log10 cond(W_ℓ)
digits.  An input W whose condition number (σ_max/σ_min, from the SVD)
exceeds ``_config.UNALIGNED_MAX_CONDITION`` is refused with an InputError that
gives it; :func:`truncfast.unaligned.integrate` applies the same limit along the
flow (DivergenceError).

Backends.  The numpy, numba and c backends run the optional unaligned
operations of the Backend protocol (``Backend.unaligned_forward``,
``Backend.unaligned_general``); dask raises BackendUnavailable (docs/DESIGN.md,
"Unaligned weights").
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from truncfast import _config
from truncfast._arrays import as_host_array
from truncfast._backends.protocol import FULL, PARTIAL, UNTRUNCATED, Backend
from truncfast._backends.registry import select
from truncfast._errors import InputError
from truncfast._flow.problem import rows_hint
from truncfast._validate import as_float_array, check_finite, check_targets

__all__ = ["Unaligned", "check_weights", "condition_numbers", "conditions", "unaligned_args", "truncate", "sector_codes",
           "loss", "gradient", "alignment_defect", "counts"]


class Unaligned(NamedTuple):
    """A validated unaligned problem and its backend (``labels``/``targets`` None for the maps)."""

    bk: Backend
    W: np.ndarray
    b: np.ndarray
    X: Any
    labels: Any
    targets: np.ndarray | None


def condition_numbers(W: Any) -> np.ndarray:
    """(L,) condition numbers σ_max/σ_min of the W_ℓ (inf for a singular one); no limit is applied."""
    return conditions(_square_stack("W", W))


def conditions(W: np.ndarray) -> np.ndarray:
    """:func:`condition_numbers` of an already validated (L, M, M) float64 stack."""
    s = np.linalg.svd(W, compute_uv=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(s[:, -1] > 0, s[:, 0] / np.where(s[:, -1] > 0, s[:, -1], 1.0), np.inf)


def _square_stack(name: str, W: Any) -> np.ndarray:
    arr = as_host_array(W, name)
    if getattr(arr, "ndim", None) != 3 or arr.shape[1] != arr.shape[2]:
        raise InputError(f"{name}: expected an (L, M, M) stack of square matrices, got shape {getattr(arr, 'shape', None)}")
    W = as_float_array(name, arr, 3)
    if W.shape[0] < 1 or W.shape[1] < 1:
        raise InputError(f"{name}: needs at least one layer and width ≥ 1, got shape {W.shape}")
    check_finite(name, W)
    return W


def check_weights(W: Any, *, name: str = "W", limit: float | None = None) -> np.ndarray:
    """Validate an (L, M, M) stack of invertible, well-conditioned cumulative weights.

    Raises InputError naming ``name`` for a wrong shape or dtype, NaN/inf, or a
    layer whose condition number exceeds ``limit`` (``_config.UNALIGNED_MAX_CONDITION``).
    """
    W = _square_stack(name, W)
    limit = _config.UNALIGNED_MAX_CONDITION if limit is None else limit
    cond = conditions(W)
    worst = int(np.argmax(cond))
    if not cond[worst] <= limit:
        what = "singular" if not np.isfinite(cond[worst]) else "ill-conditioned"
        raise InputError(f"{name}: layer {worst} is {what}: condition number {float(cond[worst]):.3g} > "
                         f"{limit:.3g} (truncation maps apply W_ℓ⁻¹, docs/theory.md §13)")
    return W


def _state(W: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    W = check_weights(W)
    L, M, _ = W.shape
    b = as_float_array("b", b, 2, (L, M))
    check_finite("b", b)
    return W, b




def unaligned_args(W: Any, b: Any, X: Any, labels: Any = None, targets: Any = None, backend: str = "auto", *,
                   with_labels: bool = True) -> Unaligned:
    """Validate ``(W, b, X[, labels, targets])`` in argument order and pick the backend."""
    if with_labels and (labels is None or targets is None):
        raise InputError("labels and targets must be given together")
    W, b = _state(W, b)
    L, M = b.shape
    bk = select(backend, X, M=M, L=L, N=rows_hint(X))
    X = bk.prepare_X(X, M)
    if not with_labels:
        return Unaligned(bk, W, b, X, None, None)
    targets = check_targets(targets, M)
    labels = bk.prepare_labels(labels, X, targets.shape[0])
    return Unaligned(bk, W, b, X, labels, targets)


def truncate(W: Any, b: Any, X: Any, *, backend: str = "auto") -> np.ndarray:
    """τ^(L)(x) for every row of X with general invertible weights (docs/theory.md §13).

    ``τ_ℓ(z) = W_ℓ⁻¹(σ(W_ℓ z + b_ℓ) − b_ℓ)``, the oblique projection onto the cone
    ``{W_ℓ z + b_ℓ ≥ 0}`` (Jacobian ``W_ℓ⁻¹ diag(h_ℓ) W_ℓ``); ``τ^(L) = τ_L ∘ ⋯ ∘ τ_1``.
    With ``W = R`` orthogonal this is :func:`truncfast.truncate`.  Returns (N, M).
    """
    p = unaligned_args(W, b, X, backend=backend, with_labels=False)
    return p.bk.unaligned_forward(p.W, p.b, p.X, False)


def sector_codes(W: Any, b: Any, X: Any, *, backend: str = "auto") -> np.ndarray:
    """(N, L) uint64: bit i of ``[n, ℓ]`` is ``H((W_ℓ τ^(ℓ−1)(x_n) + b_ℓ)_i)`` (docs/theory.md §§2, 13); M ≤ 64."""
    p = unaligned_args(W, b, X, backend=backend, with_labels=False)
    M = p.W.shape[1]
    if M > _config.MAX_CODE_WIDTH:
        raise InputError(f"W: sector codes are uint64 bitmasks and need M ≤ {_config.MAX_CODE_WIDTH}, got M = {M}")
    return p.bk.unaligned_forward(p.W, p.b, p.X, True)


def loss(W: Any, b: Any, X: Any, labels: Any, targets: Any, *, backend: str = "auto") -> float:
    """``C_E = 1/(2N) Σ_n |τ^(L)(x_n) − ỹ_{labels[n]}|²`` with general invertible W (docs/theory.md §§3, 13)."""
    p = unaligned_args(W, b, X, labels, targets, backend)
    return float(p.bk.unaligned_general(p.W, p.b, p.X, p.labels, p.targets, False)[0])


def gradient(W: Any, b: Any, X: Any, labels: Any, targets: Any, *,
             backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Plain Euclidean gradients of C_E in (b, W): ``(grad_b (L, M), grad_W (L, M, M))`` (docs/theory.md §13).

    Per point, with ``u_ℓ = W_ℓ z_{ℓ−1} + b_ℓ``, ``h_ℓ = H(u_ℓ)``, ``z_ℓ = W_ℓ⁻¹(h_ℓ ⊙ u_ℓ − b_ℓ)``,
    ``g_L = z_L − ỹ_j`` and ``r_ℓ = W_ℓ⁻ᵀ g_ℓ``, ``g_{ℓ−1} = W_ℓᵀ (h_ℓ ⊙ r_ℓ)``:

        ∇_{W_ℓ} C = 1/N Σ (h_ℓ ⊙ r_ℓ) z_{ℓ−1}ᵀ − r_ℓ z_ℓᵀ,    ∇_{b_ℓ} C = −1/N Σ (1 − h_ℓ) ⊙ r_ℓ.

    The gradient flow is ``∂_s W = −grad_W``, ``∂_s b = −grad_b``.  With W = R
    orthogonal, ``P_A(grad_W Rᵀ)`` is the ``omega`` of :func:`truncfast.gradient`.
    """
    p = unaligned_args(W, b, X, labels, targets, backend)
    _, gb, gW = p.bk.unaligned_general(p.W, p.b, p.X, p.labels, p.targets, True)
    return gb, gW


def alignment_defect(W: Any) -> np.ndarray:
    """(L,) ``‖offdiag(S_ℓ)‖_F / ‖S_ℓ‖_F`` of the polar factor ``S_ℓ = (W_ℓ W_ℓᵀ)^{1/2}`` (docs/theory.md §13).

    ``W_ℓ = S_ℓ U_ℓ`` with S_ℓ symmetric positive semi-definite and U_ℓ orthogonal;
    the weight is aligned with the activation exactly when S_ℓ is diagonal
    (defect 0).  Unchanged by reordering (or flipping the signs of) the rows of
    W_ℓ, which conjugates S_ℓ by a signed permutation.  Any finite square W is
    accepted (a singular one too: S_ℓ is still defined); a zero W_ℓ has defect 0.
    """
    W = _square_stack("W", W)
    U, s, _ = np.linalg.svd(W)
    S = np.einsum("lik,lk,ljk->lij", U, s, U)
    S = 0.5 * (S + np.swapaxes(S, 1, 2))  # symmetric up to rounding; make it exactly so
    total = np.sqrt(np.einsum("lij,lij->l", S, S))
    offd = S * (1.0 - np.eye(S.shape[1]))  # the off-diagonal part, summed directly (no cancellation)
    off = np.sqrt(np.einsum("lij,lij->l", offd, offd))
    return np.where(total > 0, off / np.where(total > 0, total, 1.0), 0.0)


def counts(bk: Backend, W: np.ndarray, b: np.ndarray, X: Any, labels: Any, Q: int) -> np.ndarray:
    """(L, Q, 3) int64 untruncated / partial / full points of cluster j at layer ℓ (−1 when M > 64)."""
    L, M = b.shape
    if M > _config.MAX_CODE_WIDTH:
        return np.full((L, Q, 3), -1, dtype=np.int64)
    out = np.zeros((L, Q, 3), dtype=np.int64)
    ones = np.uint64((1 << M) - 1) if M < 64 else np.uint64(2**64 - 1)
    rows = _config.COUNTS_ROWS
    for s in range(0, X.shape[0], rows):  # bounded blocks; integer counts do not depend on them
        codes = np.asarray(bk.unaligned_forward(W, b, X[s:s + rows], True))
        cat = np.where(codes == ones, UNTRUNCATED, np.where(codes == 0, FULL, PARTIAL))
        lab = labels[s:s + rows]
        for l in range(L):
            out[l] += np.bincount(lab * 3 + cat[:, l], minlength=3 * Q).reshape(Q, 3)
    return out
