"""The public integrators: :func:`integrate` and :func:`resume` (docs/theory.md §§5, 6, 9).

Both check their arguments once at the boundary, pick the backend (dask data
select the dask backend; one path for all), build the evaluator of the
right-hand side (``_flow.evaluator``) and hand over to the run loop
(``run.Run``).  Checkpoints: with ``checkpoint=PATH`` the run state (current
step, state, every record so far, a sha256 of the data and of the file) is
written atomically every ``checkpoint_every`` steps, at the end, and when the
run is interrupted (Ctrl-C); :func:`resume` continues such a file to the
originally requested number of steps, bitwise equal to an uninterrupted run
on the same backend.
"""

from __future__ import annotations

import os
from typing import Any

from truncfast import _config
from truncfast._errors import InputError
from truncfast._flow import separated as _separated
from truncfast._flow.engines import check_engine
from truncfast._flow.evaluator import Evaluator
from truncfast._kernels.polar import orthonormalize
from truncfast._flow.problem import euclid_args
from truncfast._integrate.checks import (check_checkpoint_path, check_dt, check_flag, check_int,
                                         check_resume_data)
from truncfast._integrate.run import Run
from truncfast._integrate.solvers import SOLVERS
from truncfast._integrate.trajectory import Trajectory
from truncfast._kernels import expm as _expm
from truncfast._version import __version__

__all__ = ["integrate", "resume"]


def integrate(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, dt: float, steps: int,
              method: str = "lie-euler", train_weights: bool = True, train_biases: bool = True,
              record_every: int = 1, backend: str = "auto", progress: bool = False,
              checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
              form: str = "general", engine: str = "auto") -> Trajectory:
    """Integrate the effective gradient flow with a fixed step (docs/theory.md §§5, 6, 9).

    State ``(R, b)`` ∈ O(M)^L × R^{L×M}; flow ``∂_s b = −∇_b C``,
    ``∂_s R_ℓ = −Ω_ℓ R_ℓ`` of the Euclidean loss C_E (docs/theory.md §3).

    Parameters
    ----------
    dt, steps
        Step size h > 0 and number of steps ≥ 0 (final time ``steps·dt``).
    method
        ``"lie-euler"``: ``b ← b − h ∇_b C``, ``R_ℓ ← expm(−h Ω_ℓ) R_ℓ`` with the
        right-hand side at the state before the step — one gradient-descent
        step with the exponential retraction.  ``"cayley"``: same, with
        ``R ← (I + hΩ/2)⁻¹(I − hΩ/2) R``.  ``"exp-euler"``: the exact
        exponential bias step of the separated form
        ``b_j ← −ỹ'_j + e^{−h π_j (1 − m0_j)} ⊙ (b_j + ỹ'_j)`` plus Lie–Euler for R;
        needs L == Q and cluster-separated truncations (implies ``form="separated"``).
    train_weights, train_biases
        Freeze R or b: a frozen part stays bitwise unchanged.
    record_every
        Record steps 0, k, 2k, … and always the last step.
    backend
        As in :func:`truncfast.gradient`; for small problems on the numba
        backend the whole step loop runs compiled (``_config.COMPILED_LOOP_MAX_N``).
    progress
        Show a tqdm progress bar.
    checkpoint, checkpoint_every
        Write the run state atomically to ``checkpoint`` every
        ``checkpoint_every`` steps (if given), at the end, and on Ctrl-C;
        continue with :func:`truncfast.resume`.
    form
        ``"general"`` (docs/theory.md §5, exact for any data) or ``"separated"`` (§6).
    engine
        How the right-hand side is computed (docs/theory.md §11): ``"direct"``
        runs the per-point kernel over all N points at every step; ``"moments"``
        keeps the pattern groups across steps and re-checks only the points the
        margin bound cannot certify; ``"auto"`` picks, per evaluation, whichever
        is predicted cheaper.  All agree with ``"direct"`` to rounding
        (``Trajectory.engine_stats`` says what ran).  ``"direct"`` runs resume
        bitwise; the others within rounding (a resumed run rebuilds its groups).

    Returns
    -------
    Trajectory

    Raises
    ------
    InputError
        Bad arguments (named in the message).
    DivergenceError
        The loss became non-finite; ``err.trajectory`` holds the run up to the
        last good state, ``err.step``, ``err.loss`` and ``err.suggested_dt`` say
        where and what to try.
    SeparationError
        ``form="separated"`` / ``"exp-euler"`` and the truncations stop being
        cluster-separated (``err.trajectory``, ``err.step``).
    KeyboardInterrupt
        Re-raised after Ctrl-C, with the partial run in ``exc.trajectory``
        (and a last checkpoint written when checkpointing).

    Dask arrays for X run on the dask cluster (docs/distributed.md), through
    the same loop.
    """
    p = euclid_args(R, b, X, labels, targets, backend, loop=True)
    dt = check_dt(dt)
    steps = check_int("steps", steps, 0)
    record_every = check_int("record_every", record_every, 1)
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    if not isinstance(method, str) or method not in SOLVERS:
        raise InputError(f"method: unknown method {method!r}; choose one of " + ", ".join(map(repr, SOLVERS)))
    if form not in ("general", "separated"):
        raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")
    engine = check_engine(engine)
    train_weights = check_flag("train_weights", train_weights)
    train_biases = check_flag("train_biases", train_biases)
    progress = check_flag("progress", progress)
    check_checkpoint_path(checkpoint)
    N, M = p.X.shape
    L = p.R.shape[0]
    Q = p.targets.shape[0]
    solver_cls = SOLVERS[method]
    if solver_cls.needs_moments:
        form = "separated"
    if form == "separated" and L != Q:
        raise _separated.SeparationShapeError(
            f"targets: method={method!r} / form='separated' needs one layer per cluster (L == Q), "
            f"got L = {L} layers and Q = {Q} clusters")
    bk = p.bk
    X, labels = bk.persist(p.X, p.labels)  # dask: once per run, every step reads the blocks where they are
    settings = {
        "method": method, "dt": dt, "steps": steps, "record_every": record_every,
        "train_weights": train_weights, "train_biases": train_biases, "backend": bk.name,
        "form": form, "N": int(N), "M": int(M), "L": int(L), "Q": int(Q), "version": __version__,
        "compiled_loop": _compiled(bk, engine, N, M, form, solver_cls.code), "engine": engine, **bk.run_settings(X),
    }
    R = p.R.copy()  # never alias the caller's arrays
    b = p.b.copy()
    reorth0 = 0
    if train_weights and _expm.defect(R) > _config.REORTHONORMALIZE_TOL:
        # an input R that passed the looser ORTHOGONALITY_TOL of validation is
        # projected onto O(M) once, so that steps do not re-project every time
        R, reorth0 = orthonormalize(R), 1
    digest = bk.digest(X, labels, p.targets) if checkpoint is not None else None
    ev = Evaluator(bk, X, labels, p.targets, form=form, needs_moments=solver_cls.needs_moments,
                   engine="direct" if settings["compiled_loop"] else engine)
    run = Run(settings, R, b, ev, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
              progress=progress, digest=digest, reorth0=reorth0)
    return run.run()


def resume(path: str | os.PathLike, X: Any, labels: Any, targets: Any, *, backend: str | None = None,
           progress: bool = False, checkpoint: str | os.PathLike | None = None,
           checkpoint_every: int | None = None) -> Trajectory:
    """Continue a checkpointed :func:`integrate` run to its requested number of steps.

    ``X, labels, targets`` must be the data of the original run (checked by
    sha256); they may be dask arrays (also for a run that was local, and the
    other way round: the digest does not depend on where the data live).  The
    result is bitwise equal to an uninterrupted run when the same backend is
    used (the default: the backend recorded in the checkpoint).
    Checkpoints keep being written to ``checkpoint`` (default: ``path``) every
    ``checkpoint_every`` steps (default: the original setting).
    """
    traj, header = Trajectory._load_with_header(path)
    meta = header.get("checkpoint")
    if not isinstance(meta, dict):
        raise InputError(f"path: {os.fspath(path)!r} is a saved trajectory, not a checkpoint "
                         "(write one with integrate(..., checkpoint=PATH))")
    if checkpoint_every is None:
        checkpoint_every = meta.get("checkpoint_every")
    else:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    progress = check_flag("progress", progress)
    check_checkpoint_path(path if checkpoint is None else checkpoint)
    s = dict(traj.settings)
    p = euclid_args(traj.R, traj.b, X, labels, targets, s["backend"] if backend is None else backend)
    bk = p.bk
    X, labels = bk.persist(p.X, p.labels)
    digest = check_resume_data(s, meta, X, p.targets, lambda: bk.digest(X, labels, p.targets))
    solver_cls = SOLVERS[s["method"]]
    for key in ("distributed", "reduction", "blocks"):
        s.pop(key, None)
    engine = s.get("engine", "direct")  # checkpoints written before engines ran per point
    if traj.engine_stats.get("engine") == "direct":
        engine = "direct"  # the run fell back to per point (backend, size): continue it so, bitwise
    s.update({"backend": bk.name, **bk.run_settings(X),
              "compiled_loop": bool(s["compiled_loop"]) and _compiled(bk, engine, s["N"], s["M"], s["form"],
                                                                     solver_cls.code)})
    ev = Evaluator(bk, X, labels, p.targets, form=s["form"], needs_moments=solver_cls.needs_moments,
                   engine="direct" if s["compiled_loop"] else engine)
    run = Run(s, p.R.copy(), p.b.copy(), ev, checkpoint=path if checkpoint is None else checkpoint,
              checkpoint_every=checkpoint_every, progress=progress, previous=traj, digest=digest)
    return run.run()


def _compiled(bk, engine: str, N: int, M: int, form: str, code) -> bool:
    """Whether the whole step loop runs compiled: the backend offers it and the engine is per point —
    ``"auto"`` always takes it (~10 µs per step, faster than any engine there), ``"moments"`` never."""
    if engine == "moments" or not bk.runs_compiled_loop(N, form, code):
        return False
    return engine == "direct" or engine == "auto"
