"""JAX front end: the Euclidean loss C_E with a custom VJP over truncfast's kernels.

``effective_loss(R, b, X, labels, targets)`` returns the scalar

    C_E = 1/(2N) Σ_n |τ^(L)(x_n) − ỹ_{labels[n]}|²,   τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0)

(docs/theory.md §§3, 4), computed on the host by ``jax.pure_callback`` and
differentiable in ``R``, ``b``, ``X`` and ``targets`` through ``jax.custom_vjp``,
with the gradients of ``truncfast.torch`` (docs/theory.md §5): ``∇_b C``; for R
the tangent part ``omega_ℓ R_ℓ`` of the Euclidean gradient, exact for every
parametrisation that keeps R on O(M) (the reason is given in
``truncfast.torch.effective_loss``); ``∂C/∂x_n = (1/N) P_1 ⋯ P_L e_n``;
``∂C/∂ỹ_j = −(1/N) Σ_{n in j} e_n``.

The forward rule learns from JAX which inputs are differentiated
(``symbolic_zeros``) and makes one host call that returns the loss and exactly
those gradients — the loss and the R, b gradients come from one kernel call,
as in ``tf.gradient``; data and target gradients cost one more pass when asked
for.  The backward rule only scales them.  Works under ``jit``, ``grad``,
``value_and_grad`` and ``vmap`` (sequential host calls); second derivatives
are not available.

Dtypes.  truncfast computes in float64.  JAX uses float32 unless 64-bit mode is
enabled, and this module does *not* switch it on behind the caller's back
(that is a process-wide setting): call ``jax.config.update("jax_enable_x64",
True)`` to get float64 in and out; in the default mode float32 arrays go in,
are converted to float64 on the host, and results come back as float32.  Use
the process-wide setting, not the thread-local ``jax.enable_x64`` context
manager: under ``jit`` XLA may run the host callback on one of its own
threads, where JAX would narrow float64 results to float32 and reject them.
``labels``: any integer array.

Arrays live where JAX put them; the callback receives host copies from XLA
(CPU arrays need no device transfer; on an accelerator JAX moves them to the
host for every call, which is slow — keep these arrays on the CPU).

Errors.  Shapes and dtypes are checked when the function is traced and raise
:class:`truncfast.InputError` with the NumPy API's message.  Values (NaN, a
non-orthogonal R, labels out of range) are only known when the host call runs:
called eagerly, it raises that InputError too; inside ``jax.jit`` JAX reports
it as its own runtime error whose message contains the InputError's.
"""

from __future__ import annotations

import logging
import threading
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from truncfast._embed import ARG_NAMES, loss_and_gradients
from truncfast._errors import InputError
from truncfast._validate import check_problem

__all__ = ["effective_loss"]


# The host call stashes the InputError it raises, so that a call that runs at once (eager, or
# under grad without jit) can re-raise it as itself instead of JAX's wrapper; the stash is keyed
# by the message, which JAX's runtime error repeats.
_stash_lock = threading.Lock()
_stashed: dict[str, InputError] = {}


class _QuietInputErrors(logging.Filter):
    """JAX logs every exception of a callback with its traceback before re-raising it;
    ours are bad input, reported to the caller as InputError, not a crash worth a log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], InputError))


logging.getLogger("jax._src.callback").addFilter(_QuietInputErrors())


def _loss_dtype(R, b, X, targets):
    dtype = jnp.result_type(R.dtype, b.dtype, X.dtype, targets.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)  # float64 in 64-bit mode, float32 otherwise
    return np.dtype(dtype)


def _host_call(backend: str, want: tuple[bool, bool, bool], R, b, X, labels, targets):
    """One ``pure_callback``: ``(loss, [grad_R, grad_b], [grad_X], [grad_targets])`` as wanted."""
    want_state, want_x, want_targets = want
    loss_dtype = _loss_dtype(R, b, X, targets)
    shapes = [jax.ShapeDtypeStruct((), loss_dtype)]
    if want_state:
        shapes += [jax.ShapeDtypeStruct(R.shape, R.dtype), jax.ShapeDtypeStruct(b.shape, b.dtype)]
    if want_x:
        shapes.append(jax.ShapeDtypeStruct(X.shape, X.dtype))
    if want_targets:
        shapes.append(jax.ShapeDtypeStruct(targets.shape, targets.dtype))
    dtypes = [s.dtype for s in shapes]

    def host(R, b, X, labels, targets):
        try:
            g = loss_and_gradients(R, b, X, labels, targets, want_state=want_state, want_x=want_x,
                                   want_targets=want_targets, backend=backend)
        except InputError as exc:
            with _stash_lock:
                _stashed.clear()  # only the latest one can belong to a call still being unwound
                _stashed[str(exc)] = exc
            raise
        outs = [g.loss]
        if want_state:
            outs += [g.R, g.b]
        if want_x:
            outs.append(g.X)
        if want_targets:
            outs.append(g.targets)
        return tuple(np.asarray(o, dtype=d) for o, d in zip(outs, dtypes))

    return jax.pure_callback(host, tuple(shapes), R, b, X, labels, targets, vmap_method="sequential")


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _loss(R, b, X, labels, targets, backend):
    return _host_call(backend, (False, False, False), R, b, X, labels, targets)[0]


def _loss_fwd(R, b, X, labels, targets, backend):
    want = (R.perturbed or b.perturbed, X.perturbed, targets.perturbed)
    out = list(_host_call(backend, want, R.value, b.value, X.value, labels.value, targets.value))
    loss = out.pop(0)
    gR, gb = (out.pop(0), out.pop(0)) if want[0] else (None, None)
    gX = out.pop(0) if want[1] else None
    gT = out.pop(0) if want[2] else None
    return loss, (want, gR, gb, gX, gT)


def _loss_bwd(backend, res, g):
    (want_state, want_x, want_targets), gR, gb, gX, gT = res

    def scaled(grad, wanted):
        return g.astype(grad.dtype) * grad if wanted else None

    return (scaled(gR, want_state), scaled(gb, want_state), scaled(gX, want_x), None, scaled(gT, want_targets))


_loss.defvjp(_loss_fwd, _loss_bwd, symbolic_zeros=True)


def _check_static(args) -> None:
    """Shapes and dtypes at trace time, with the NumPy API's messages.

    Consistent shapes cost nothing.  Otherwise the same validation as
    ``tf.loss`` runs on stand-in arrays of the given shapes and dtypes (zero
    strides, values that pass every value check), so the message is the one
    the NumPy API would give for these shapes.
    """
    for a, name in zip(args, ARG_NAMES):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise InputError(f"{name}: expected a JAX or NumPy array, got {type(a).__name__}")
    R, b, X, labels, targets = args
    kinds = [np.dtype(a.dtype).kind for a in args]
    ok = (
        len(R.shape) == 3 and R.shape[1] == R.shape[2] and R.shape[0] >= 1 and R.shape[1] >= 1
        and tuple(b.shape) == tuple(R.shape[:2])
        and len(X.shape) == 2 and X.shape[1] == R.shape[1] and X.shape[0] >= 1
        and len(targets.shape) == 2 and targets.shape[1] == R.shape[1] and targets.shape[0] >= 1
        and tuple(labels.shape) == (X.shape[0],)
        and all(k in "fiub" for k in kinds[:3] + kinds[4:]) and kinds[3] in "iu"
    )
    if ok:
        return
    stand_ins = []
    for a, name in zip(args, ARG_NAMES):
        dtype = np.dtype(a.dtype)
        fill = np.zeros((), dtype=dtype)
        if name == "R" and len(a.shape) == 3 and a.shape[1] == a.shape[2]:
            stand_ins.append(np.broadcast_to(np.eye(a.shape[1], dtype=dtype), tuple(a.shape)))
        else:
            stand_ins.append(np.broadcast_to(fill, tuple(a.shape)))
    check_problem(*stand_ins)
    raise InputError("arguments: inconsistent shapes or dtypes: "  # pragma: no cover - a safety net
                     + ", ".join(f"{n} {tuple(a.shape)} {np.dtype(a.dtype)}" for a, n in zip(args, ARG_NAMES)))


def effective_loss(R, b, X, labels, targets, *, backend: str = "auto") -> jax.Array:
    """The Euclidean loss C_E (docs/theory.md §3) as a differentiable JAX scalar.

    Parameters
    ----------
    R : (L, M, M) array, orthogonal matrices
    b : (L, M) array
    X : (N, M) array
    labels : (N,) integer array, values in 0..Q-1
    targets : (Q, M) array, ỹ_j
    backend : str
        As in :func:`truncfast.gradient` (static: one trace per backend).

    Returns
    -------
    A 0-d array in the promoted dtype of R, b, X and targets.  ``jax.grad``
    returns ``omega_ℓ R_ℓ`` for R (the tangent part, see the module docstring),
    ``∇_b C``, the data and the target gradients.
    """
    args = (R, b, X, labels, targets)
    _check_static(args)
    try:
        return _loss(R, b, X, labels, targets, backend)
    except jax.errors.JaxRuntimeError as exc:
        with _stash_lock:
            own = [e for msg, e in _stashed.items() if msg in str(exc)]
            _stashed.clear()
        if own:
            raise own[0] from None
        raise
