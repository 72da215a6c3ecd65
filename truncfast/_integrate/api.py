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

Runs with a final time ``t1``, adaptive steps (``rtol``/``atol``), ``saveat``
or a multi-stage method go through the time-stepped loop
(``adaptive.StepRun``, docs/theory.md §12) instead of ``run.Run``, whose
fixed-step path stays as it was.
"""

from __future__ import annotations

import os
from typing import Any

from truncfast import _config
from truncfast._atomic import remove_leftovers
from truncfast._errors import InputError
from truncfast._flow import separated as _separated
from truncfast._flow.engines import check_engine
from truncfast._flow.evaluator import Evaluator
from truncfast._kernels.polar import orthonormalize
from truncfast._flow.problem import euclid_args
from truncfast._integrate.checks import (check_checkpoint_path, check_flag, check_int, check_resume_data,
                                         check_time_args, resolve_events, wants_stepper)
from truncfast._integrate.monitor import check_on_instability
from truncfast._integrate.run import Run
from truncfast._integrate import adaptive as _adaptive
from truncfast._integrate.standard import resume_run
from truncfast._integrate.solvers.base import State
from truncfast._integrate.solvers import SOLVERS
from truncfast._integrate.trajectory import Trajectory
from truncfast._kernels import expm as _expm
from truncfast._version import __version__

__all__ = ["integrate", "resume"]


def integrate(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, dt: float, steps: int | None = None,
              method: str | None = None, train_weights: bool = True, train_biases: bool = True,
              record_every: int = 1, backend: str = "auto", progress: bool = False,
              checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
              form: str = "general", t1: float | None = None, rtol: float | None = None,
              atol: float | None = None, saveat: Any = None, events: str = "auto",
              on_instability: str = "warn", engine: str = "auto") -> Trajectory:
    """Integrate the effective gradient flow, with a fixed step or to a tolerance (docs/theory.md §§5, 6, 9, 12).

    State ``(R, b)`` ∈ O(M)^L × R^{L×M}; flow ``∂_s b = −∇_b C``,
    ``∂_s R_ℓ = −Ω_ℓ R_ℓ`` of the Euclidean loss C_E (docs/theory.md §3).

    Parameters
    ----------
    dt, steps, t1
        Step size h > 0 (the first step when adaptive) and either a number of
        steps ≥ 0 (final time ``steps·dt``) or a final flow time ``t1`` > 0:
        exactly one of ``steps`` and ``t1``.
    rtol, atol
        Giving either selects adaptive steps (docs/theory.md §12; the other
        defaults to the same value; needs ``t1`` and ``method="heun"`` or
        ``"bs3"``, the default then): a step is accepted when the RMS of its
        error estimate over ``atol + rtol·|state|`` is at most 1.  Collapse
        times are then located to the tolerance.
    saveat
        Increasing flow times in [0, t1] at which the state is recorded exactly
        (steps land on them; no interpolation).  The records are then 0, the
        saveat times and t1.
    method
        Default ``"lie-euler"``, or ``"bs3"`` when adaptive.
        ``"lie-euler"``: ``b ← b − h ∇_b C``, ``R_ℓ ← expm(−h Ω_ℓ) R_ℓ`` with the
        right-hand side at the state before the step — one gradient-descent
        step with the exponential retraction.  ``"cayley"``: same, with
        ``R ← (I + hΩ/2)⁻¹(I − hΩ/2) R``.  ``"exp-euler"``: the exact
        exponential bias step of the separated form
        ``b_j ← −ỹ'_j + e^{−h π_j (1 − m0_j)} ⊙ (b_j + ỹ'_j)`` plus Lie–Euler for R;
        needs L == Q and cluster-separated truncations (implies ``form="separated"``).
        ``"heun"`` (order 2, embedded Euler) and ``"bs3"`` (Bogacki–Shampine,
        order 3, embedded 2): Runge–Kutta–Munthe-Kaas, stages at ``exp(Θ) R``
        (docs/theory.md §12); with a fixed step or adaptive.
    train_weights, train_biases
        Freeze R or b: a frozen part stays bitwise unchanged.
    record_every
        Record steps 0, k, 2k, … and always the last step (accepted steps in
        adaptive runs; must stay 1 with ``saveat``).
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
    on_instability
        What to do when the loss rises or oscillates (``_integrate.monitor``: a
        gradient flow never increases its loss, so the steps are unstable):
        ``"warn"`` (default: one :class:`truncfast.InstabilityWarning` with a
        suggested dt, and the message in ``Trajectory.warnings``), ``"raise"``
        (:class:`DivergenceError`, the run up to the step before in
        ``err.trajectory``) or ``"ignore"``.  Fixed-step runs of ``run.Run``
        only: the time-stepped loop (``t1``, adaptive steps, multi-stage
        methods) controls its error by the tolerance instead.
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
    StepSizeError
        Adaptive runs: the step needed to meet the tolerance fell below
        ``_config.ADAPTIVE_MIN_STEP``·t1 (``err.trajectory``, ``err.time``, ``err.h``).
    KeyboardInterrupt
        Re-raised after Ctrl-C, with the partial run in ``exc.trajectory``
        (and a last checkpoint written when checkpointing).

    Dask arrays for X run on the dask cluster (docs/distributed.md), through
    the same loop.
    """
    stepped = wants_stepper(method, t1, rtol, atol, saveat, SOLVERS)
    p = euclid_args(R, b, X, labels, targets, backend, loop=not stepped)
    ta = check_time_args(method, dt, steps, t1, rtol, atol, saveat, record_every, SOLVERS)
    dt, steps, method, record_every = ta["dt"], ta["steps"], ta["method"], ta["record_every"]
    if checkpoint_every is not None:
        checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
    if form not in ("general", "separated"):
        raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")
    engine = check_engine(engine)
    train_weights = check_flag("train_weights", train_weights)
    train_biases = check_flag("train_biases", train_biases)
    if not (train_weights or train_biases):
        raise InputError("train_weights: train_weights=False and train_biases=False freeze the whole state: "
                         "nothing would move (use tf.loss / tf.gradient to evaluate a fixed state)")
    progress = check_flag("progress", progress)
    on_instability = check_on_instability(on_instability)
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
        "on_instability": on_instability,
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
    if stepped:
        settings.update(loop="stepper", loss="euclidean", compiled_loop=False,
                        events=resolve_events(events, ta["rtol"] is not None, N, M, bk.name),
                        **{key: ta[key] for key in ("t1", "rtol", "atol", "saveat")})
        return _adaptive.StepRun(settings, State(R, b), ev, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                                 progress=progress, digest=digest, reorth0=reorth0).run()
    run = Run(settings, R, b, ev, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
              progress=progress, digest=digest, reorth0=reorth0)
    return run.run()


def resume(path: str | os.PathLike, X: Any, labels: Any, targets: Any, *, backend: str | None = None,
           progress: bool = False, checkpoint: str | os.PathLike | None = None,
           checkpoint_every: int | None = None, on_instability: str | None = None) -> Trajectory:
    """Continue a checkpointed :func:`integrate` (or :func:`integrate_standard`) run to its requested
    number of steps or final time ``t1``.

    ``X, labels, targets`` must be the data of the original run (checked by
    sha256; for a checkpoint of :func:`truncfast.integrate_standard` pass the
    reference outputs Y as ``targets``); they may be dask arrays (also for a run that was local, and the
    other way round: the digest does not depend on where the data live).  The
    result is bitwise equal to an uninterrupted run when the same backend is
    used (the default: the backend recorded in the checkpoint).
    Checkpoints keep being written to ``checkpoint`` (default: ``path``) every
    ``checkpoint_every`` steps (default: the original setting); ``on_instability``
    defaults to the original setting too.
    """
    traj, header = Trajectory._load_with_header(path)
    remove_leftovers(path)  # what a kill -9 during a checkpoint write left next to it
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
    if on_instability is not None:
        s["on_instability"] = check_on_instability(on_instability)
    if s.get("loop") == "stepper":
        return resume_run(traj, header, X, labels, targets, backend=backend, progress=progress,
                          checkpoint=path if checkpoint is None else checkpoint,
                          checkpoint_every=checkpoint_every)
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
              checkpoint_every=checkpoint_every, progress=progress, previous=traj, digest=digest,
              monitor_state=header.get("monitor"))
    return run.run()


def _compiled(bk, engine: str, N: int, M: int, form: str, code) -> bool:
    """Whether the whole step loop runs compiled: the backend offers it and the engine is per point —
    ``"auto"`` always takes it (~10 µs per step, faster than any engine there), ``"moments"`` never."""
    if engine == "moments" or not bk.runs_compiled_loop(N, form, code):
        return False
    return engine == "direct" or engine == "auto"
