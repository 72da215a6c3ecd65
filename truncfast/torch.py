"""PyTorch front end: the Euclidean loss C_E as a differentiable PyTorch operator.

``effective_loss(R, b, X, labels, targets)`` returns the 0-d tensor

    C_E = 1/(2N) Σ_n |τ^(L)(x_n) − ỹ_{labels[n]}|²,   τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0)

(docs/theory.md §§3, 4), computed by truncfast's kernels and differentiable in
``R``, ``b``, ``X`` and ``targets`` through a ``torch.library.custom_op``
(``torch.ops.truncfast.effective_loss``) with a registered backward and a fake
(meta) implementation, so it also runs under ``torch.compile`` and
``torch.library.opcheck``.

Gradients (docs/theory.md §5):

* ``b``: ``∇_b C`` of the backward pass of §5;
* ``R``: the tangent part ``omega_ℓ @ R_ℓ`` of the Euclidean gradient, see
  :func:`effective_loss`;
* ``X``: row n is ``∂C/∂x_n = (1/N) g_0(x_n)``, ``g_0 = P_1 ⋯ P_L e`` with the
  projections ``P_ℓ = R_ℓᵀ diag(h_ℓ) R_ℓ`` and the error ``e = z_L − ỹ_j``;
* ``targets``: ``∂C/∂ỹ_j = −(1/N) Σ_{n in cluster j} (z_L,n − ỹ_j)``.

The loss and the gradients of R and b come from one kernel call in the forward
pass (the kernel computes the loss on the way), and are kept for the backward
pass, which only scales them by the incoming gradient: a backward therefore
costs nothing, and the whole forward + backward costs one ``tf.gradient``.
Data and target gradients are computed only when ``X`` / ``targets`` require
grad (one more pass over the points).  Which gradients are needed is decided
when the loss is evaluated (``requires_grad`` and grad mode at that moment).
The registered operator itself, ``torch.ops.truncfast.effective_loss(R, b, X,
labels, targets, want_state, want_x, want_targets, backend)``, therefore
returns ``(loss, grad_R, grad_b, grad_X, grad_targets)`` — a gradient not
wanted is an empty tensor — and :func:`effective_loss` returns its first
output; call the operator directly only to get those values without autograd.

Tensors: CPU, any floating dtype NumPy knows (float64 and float32 in
practice); they are read without a copy when they are C-contiguous float64
(``tensor.detach().numpy()`` views), converted once otherwise (the kernels
compute in float64).  The loss has the promoted dtype of R, b, X and targets,
every gradient its input's dtype.  ``labels`` is any integer tensor.  Bad input
raises :class:`truncfast.InputError` with the NumPy API's message; CUDA and
meta tensors raise it too, asking to move them to the CPU.  Second derivatives
are not available (the backward pass is a kernel, not a graph).
"""

from __future__ import annotations

import torch
from torch import Tensor

from truncfast._embed import ARG_NAMES, loss_and_gradients
from truncfast._errors import InputError

__all__ = ["effective_loss"]

_OP = "truncfast::effective_loss"


def _loss_dtype(R: Tensor, b: Tensor, X: Tensor, targets: Tensor) -> torch.dtype:
    dtype = R.dtype
    for t in (b, X, targets):
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.float64


def _as_out(a, like: Tensor) -> Tensor:
    """A float64 NumPy result as a tensor of ``like``'s dtype (no copy when that is float64)."""
    return torch.from_numpy(a).to(like.dtype)


@torch.library.custom_op(_OP, mutates_args=())
def _effective_loss_op(R: Tensor, b: Tensor, X: Tensor, labels: Tensor, targets: Tensor, want_state: bool,
                       want_x: bool, want_targets: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(loss, grad_R, grad_b, grad_X, grad_targets)``; a gradient not wanted is an empty tensor (0,)."""
    g = loss_and_gradients(R, b, X, labels, targets, want_state=want_state, want_x=want_x,
                           want_targets=want_targets, backend=backend)
    return (
        torch.tensor(g.loss, dtype=_loss_dtype(R, b, X, targets)),
        _as_out(g.R, R) if want_state else R.new_empty(0),
        _as_out(g.b, b) if want_state else R.new_empty(0),
        _as_out(g.X, X) if want_x else R.new_empty(0),
        _as_out(g.targets, targets) if want_targets else R.new_empty(0),
    )


@_effective_loss_op.register_fake
def _effective_loss_fake(R, b, X, labels, targets, want_state, want_x, want_targets, backend):
    return (
        R.new_empty((), dtype=_loss_dtype(R, b, X, targets)),
        torch.empty_like(R, memory_format=torch.contiguous_format) if want_state else R.new_empty(0),
        torch.empty_like(b, memory_format=torch.contiguous_format) if want_state else R.new_empty(0),
        torch.empty_like(X, memory_format=torch.contiguous_format) if want_x else R.new_empty(0),
        torch.empty_like(targets, memory_format=torch.contiguous_format) if want_targets else R.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    ctx.wanted = inputs[5:8]
    grads = output[1:]
    ctx.save_for_backward(*grads)
    ctx.mark_non_differentiable(*grads)  # values for the backward pass, not functions of the inputs


@torch.autograd.function.once_differentiable
def _backward(ctx, grad_loss, *_unused):
    gR, gb, gX, gT = ctx.saved_tensors
    want_state, want_x, want_targets = ctx.wanted
    need = ctx.needs_input_grad
    out: list[Tensor | None] = [None] * 9
    for i, (g, wanted) in enumerate(((gR, want_state), (gb, want_state), (gX, want_x), (None, False), (gT, want_targets))):
        if not need[i] or g is None:
            continue
        if not wanted:
            raise RuntimeError(
                f"truncfast.torch: the gradient of {ARG_NAMES[i]} was not computed in the forward pass "
                f"(call truncfast.torch.effective_loss, which asks for every gradient that is required)"
            )
        out[i] = grad_loss.to(g.dtype) * g
    return tuple(out)


torch.library.register_autograd(_OP, _backward, setup_context=_setup_context)


def _check_args(args: tuple) -> None:
    """Tensors, and on the CPU: everything else is checked by the engine's validation."""
    for t, name in zip(args, ARG_NAMES):
        if not isinstance(t, Tensor):
            raise InputError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type == "meta":
            raise InputError(f"{name}: is a meta tensor (shape only, no data); truncfast needs a CPU tensor with values")
        if t.device.type != "cpu":
            raise InputError(f"{name}: tensor is on device {t.device}; truncfast computes on the CPU, "
                             f"move it there first ({name}.cpu())")


def effective_loss(R: Tensor, b: Tensor, X: Tensor, labels: Tensor, targets: Tensor, *,
                   backend: str = "auto") -> Tensor:
    """The Euclidean loss C_E (docs/theory.md §3) as a differentiable 0-d tensor.

    Parameters
    ----------
    R : (L, M, M) tensor
        Orthogonal matrices (checked: max|R_ℓᵀR_ℓ − I| ≤ 1e-8 in float64).
    b : (L, M) tensor
    X : (N, M) tensor
    labels : (N,) integer tensor, values in 0..Q-1
    targets : (Q, M) tensor
        ỹ_j, the labels pulled back to input space.
    backend : str
        As in :func:`truncfast.gradient`.

    The gradient for R
    ------------------
    The loss is defined on O(M)^L: the engine refuses a non-orthogonal R.  On
    O(M) write the Euclidean gradient of any smooth extension (for instance
    the formula τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0) evaluated for any matrix)
    as ``∇_{R_ℓ} C = G_ℓ R_ℓ`` (``G_ℓ = ∇_{R_ℓ} C · R_ℓᵀ``, the matrix the
    backward pass of docs/theory.md §5 accumulates).  The tangent space is
    ``T_R O(M) = {Ω R : Ω antisymmetric}`` and its Frobenius-orthogonal
    complement ``{S R : S symmetric}``, so the projection of the gradient onto
    the tangent space is

        P_T(∇_{R_ℓ} C) = omega_ℓ R_ℓ,   omega_ℓ = P_A(G_ℓ) = (G_ℓ − G_ℓᵀ)/2,

    the ``omega`` of :func:`truncfast.gradient`; this is what the operator
    returns for R.  The normal part ``P_S(G_ℓ) R_ℓ`` depends on how the loss is
    extended off O(M) and never matters when R stays on O(M): for any
    parametrisation ``R = φ(θ)`` with values in O(M) —
    ``torch.nn.utils.parametrizations.orthogonal``, geotorch, ``R = expm(A) R₀``
    with A antisymmetric — the differential ``Dφ(θ)`` maps into the tangent
    space, so the chain rule ``∇_θ C = Dφ(θ)*[∇_R C]`` annihilates the normal
    part and the θ-gradient autograd assembles from ``omega @ R`` is exact.  A
    plain SGD step on an unconstrained R would leave O(M); the flow's own step
    is ``R ← expm(−dt·omega) R`` (``truncfast.integrate``, method "lie-euler"),
    which SGD reproduces exactly with the parametrisation ``R = expm((W − Wᵀ)/2) R_k``
    at W = 0, re-based after every step (tests/test_torch_frontend.py).

    Returns
    -------
    0-d tensor in the promoted dtype of R, b, X and targets.

    Raises
    ------
    truncfast.InputError
        Bad shapes, dtypes, values, non-orthogonal R, labels out of range,
        tensors not on the CPU — named as by the NumPy API.
    """
    args = (R, b, X, labels, targets)
    _check_args(args)
    grad_on = torch.is_grad_enabled()
    want_state = grad_on and (R.requires_grad or b.requires_grad)
    want_x = grad_on and X.requires_grad
    want_targets = grad_on and targets.requires_grad
    return torch.ops.truncfast.effective_loss(R, b, X, labels, targets, want_state, want_x, want_targets,
                                              backend)[0]
