"""The joint standard-loss flow :func:`integrate_standard`, and resuming time-stepped checkpoints (docs/theory.md §12).

The state is ``(R, b, W_out, b_out)``; the flow of C_std is

    ∂_s b = −∇_b C_std,   ∂_s R_ℓ = −Ω_ℓ R_ℓ   (§5 with the error e = W_outᵀ ρ),
    ∂_s W_out = −(1/N) Σ ρ zᵀ,   ∂_s b_out = −(1/N) Σ ρ,   ρ = W_out z + b_out − y_j,  z = τ^(L)(x).

Every run of it goes through the time-stepped loop (``adaptive.StepRun``):
fixed steps (explicit Euler for the output layer, the solver's step for
(R, b)) or adaptive ones (the output layer is one more vector part of the
RKMK stages).  ``train_output=False`` freezes the output layer (bitwise).
"""

from __future__ import annotations

import os
from typing import Any

from truncfast import _config
from truncfast._errors import InputError
from truncfast._flow.engines import check_engine
from truncfast._flow.evaluator import Evaluator, StandardEvaluator
from truncfast._flow.problem import euclid_args, standard_args
from truncfast._integrate import adaptive as _adaptive
from truncfast._integrate.checks import check_checkpoint_path, check_flag, check_int, check_resume_data, \
    check_time_args, resolve_events
from truncfast._integrate.solvers import SOLVERS
from truncfast._integrate.solvers.base import State
from truncfast._integrate.trajectory import Trajectory
from truncfast._kernels import expm as _expm
from truncfast._kernels.polar import orthonormalize
from truncfast._version import __version__

__all__ = ["integrate_standard", "resume_run"]


def integrate_standard(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, *, dt: float,
                       steps: int | None = None, t1: float | None = None, rtol: float | None = None,
                       atol: float | None = None, saveat: Any = None, method: str | None = None,
                       train_weights: bool = True, train_biases: bool = True, train_output: bool = True,
                       record_every: int = 1, backend: str = "auto", progress: bool = False,
                       checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
                       form: str = "general", events: str = "auto", engine: str = "auto") -> Trajectory:
    """Integrate the gradient flow of the standard loss C_std in (R, b, W_out, b_out) (docs/theory.md §12).

    ``C_std = 1/(2N) Σ_n |W_out τ^(L)(x_n) + b_out − y_{labels[n]}|²`` with the
    output layer ``W_out`` (P, M), ``b_out`` (P,) and reference outputs ``Y``
    (Q, P).  The keywords are those of :func:`truncfast.integrate` (fixed or
    adaptive steps, ``t1``, ``saveat``, checkpoints, backends including dask),
    plus ``train_output`` (False: the output layer stays bitwise unchanged).
    With ``method="lie-euler"`` one step is one step of gradient descent on
    C_std in all four parameters, with the exponential retraction for R.
    ``"exp-euler"`` and ``form="separated"`` belong to the Euclidean loss and
    are refused.  ``engine`` is accepted and recorded like :func:`truncfast.integrate`'s,
    but C_std has no pattern form yet (docs/theory.md §11 is written for C_E): every
    engine evaluates per point, and ``Trajectory.engine_stats["fallback"]`` says so.

    Returns a :class:`Trajectory` whose ``loss`` is C_std, with the final
    ``W_out``, ``b_out`` and the recorded ``W_outs``, ``b_outs``.  Resume a
    checkpoint with ``truncfast.resume(path, X, labels, Y)``.
    """
    p = standard_args(R, b, X, labels, W_out, b_out, Y, backend)
    engine = check_engine(engine)
    ta = check_time_args(method, dt, steps, t1, rtol, atol, saveat, record_every, SOLVERS)
    method = ta["method"]
    if SOLVERS[method].needs_moments:
        raise InputError(f"method: {method!r} is a step of the separated Euclidean bias flow; the standard loss "
                         "takes 'lie-euler', 'cayley', 'heun' or 'bs3'")
    if form != "general":
        raise InputError(f"form: the standard loss has only the general form (docs/theory.md §5), got {form!r}")
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    train_weights = check_flag("train_weights", train_weights)
    train_biases = check_flag("train_biases", train_biases)
    train_output = check_flag("train_output", train_output)
    progress = check_flag("progress", progress)
    check_checkpoint_path(checkpoint)
    N, M = p.X.shape
    L = p.R.shape[0]
    Q, P = p.Y.shape
    bk = p.bk
    X, labels = bk.persist(p.X, p.labels)
    settings = {
        "method": method, "dt": ta["dt"], "steps": ta["steps"], "record_every": ta["record_every"],
        "train_weights": train_weights, "train_biases": train_biases, "train_output": train_output,
        "backend": bk.name, "form": "general", "N": int(N), "M": int(M), "L": int(L), "Q": int(Q), "P": int(P),
        "version": __version__, "compiled_loop": False, "engine": engine, **bk.run_settings(X),
        "loop": "stepper", "loss": "standard", **{key: ta[key] for key in ("t1", "rtol", "atol", "saveat")},
        "events": resolve_events(events, ta["rtol"] is not None, N, M, bk.name),
    }
    R0 = p.R.copy()  # never alias the caller's arrays
    reorth0 = 0
    if train_weights and _expm.defect(R0) > _config.REORTHONORMALIZE_TOL:
        R0, reorth0 = orthonormalize(R0), 1
    digest = bk.digest(X, labels, p.Y) if checkpoint is not None else None
    ev = StandardEvaluator(bk, X, labels, p.Y)
    y = State(R0, p.b.copy(), p.W_out.copy(), p.b_out.copy())
    return _adaptive.StepRun(settings, y, ev, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                             progress=progress, digest=digest, reorth0=reorth0).run()


def resume_run(traj: Trajectory, header: dict, X: Any, labels: Any, targets: Any, *, backend: str | None,
               progress: bool, checkpoint, checkpoint_every) -> Trajectory:
    """Continue a time-stepped checkpoint (called by :func:`truncfast.resume`; ``targets`` is Y for C_std)."""
    meta = header["checkpoint"]
    s = dict(traj.settings)
    name = s["backend"] if backend is None else backend
    if s.get("loss") == "standard":
        if traj.W_out is None or traj.b_out is None:
            raise InputError("path: the checkpoint of a standard-loss run holds no output layer (corrupted?)")
        p = standard_args(traj.R, traj.b, X, labels, traj.W_out, traj.b_out, targets, name)
        bk = p.bk
        Xp, lp = bk.persist(p.X, p.labels)
        digest = check_resume_data(s, meta, Xp, p.Y, lambda: bk.digest(Xp, lp, p.Y))
        ev: Evaluator = StandardEvaluator(bk, Xp, lp, p.Y)
        y = State(p.R.copy(), p.b.copy(), p.W_out.copy(), p.b_out.copy())
    else:
        p = euclid_args(traj.R, traj.b, X, labels, targets, name)
        bk = p.bk
        Xp, lp = bk.persist(p.X, p.labels)
        digest = check_resume_data(s, meta, Xp, p.targets, lambda: bk.digest(Xp, lp, p.targets))
        ev = Evaluator(bk, Xp, lp, p.targets, form=s["form"], needs_moments=SOLVERS[s["method"]].needs_moments,
                       engine=s.get("engine", "direct"))
        y = State(p.R.copy(), p.b.copy())
    for key in ("distributed", "reduction", "blocks"):
        s.pop(key, None)
    s.update({"backend": bk.name, **bk.run_settings(Xp)})
    return _adaptive.StepRun(s, y, ev, checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress,
                             previous=traj, meta=meta.get("stepper"), digest=digest).run()
