"""Run directories: execute a resolved config, write every output atomically, never lose a run.

A run directory holds

* ``config.toml``    — the resolved configuration (every key, defaults filled in);
* ``checkpoint.npz`` — while the run is going: its state every
  ``integrate.checkpoint_every`` steps (and at Ctrl-C); ``truncfast run --resume DIR``
  continues from it, bitwise as if never interrupted.  Removed once the run is complete;
* ``trajectory.npz`` — :meth:`truncfast.Trajectory.save` of the run (partial if it failed);
* ``summary.json``   — status (``complete``, ``interrupted``, ``diverged``, ``unstable``,
  ``separation_error``), the error if any, sizes, backend, wall time, losses, collapse
  times, counts, warnings;
* ``figdata.npz``    — what the figures need besides the trajectory (a
  deterministic subsample of the data, targets, cluster sizes, names), so
  ``truncfast plot`` redraws without regenerating or reloading 10⁷ points;
* the figures of :mod:`truncfast._app.plots`.

Order (:func:`execute`): check the directory, build the problem and check every
setting that can be checked before integrating (config errors name the key and
come before anything is written), write ``config.toml``, integrate with
checkpoints, then the outputs.  On Ctrl-C, divergence, unstable steps (with
``on_instability = "raise"``) or a separation error the partial trajectory and a
summary saying what happened are written before the error reaches the CLI.
Every file is written to a temporary name in the same directory and moved into
place with ``os.replace``, so an interrupted run never leaves half a file; a
non-empty directory is only reused with ``force`` (or continued with ``resume``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any, Callable

import numpy as np

from truncfast._app import config_file as _config_file
from truncfast._atomic import atomic_write, file_mode, remove_leftovers
from truncfast._app.config_file import ConfigError
from truncfast._errors import DivergenceError, InputError, SeparationError

__all__ = ["RunDirError", "prepare_dir", "atomic_write", "build_problem", "execute", "figure_data", "summary",
           "preflight", "CHECKPOINT", "integrate_config"]


_FILE_MODE = file_mode()

#: The checkpoint of a CLI run, inside its directory.
CHECKPOINT = "checkpoint.npz"

#: Files a run (or the demo, at its top level) writes; ``--force`` removes exactly these.
OUTPUT_FILES = ("config.toml", "trajectory.npz", "summary.json", "figdata.npz", "loss.png", "truncation.png",
                "sectors.png", "collapse.gif", "overview.png", CHECKPOINT)


class RunDirError(RuntimeError):
    """The output directory cannot be used (exists and is not empty without ``force``, cannot be created)."""


def _occupied(path: str) -> str:
    """Why a non-empty ``path`` is refused, and what to do (--resume for an unfinished run)."""
    ck = os.path.join(path, CHECKPOINT)
    status = None
    try:
        with open(os.path.join(path, "summary.json"), encoding="utf-8") as fh:
            status = json.load(fh).get("status")
    except (OSError, ValueError, AttributeError):
        pass
    if os.path.isfile(ck) and status != "complete":
        why = f" ({status})" if status else ""
        return (f"output directory {path!r} holds an unfinished run{why} with a checkpoint; continue it with "
                f"'truncfast run --resume {path}', or pass --force to start over")
    if sorted(os.listdir(path)) == ["config.toml"]:
        return (f"output directory {path!r} holds only the config.toml of a run that stopped before its first "
                "checkpoint; pass --force to start over")
    if status not in (None, "complete"):
        return (f"output directory {path!r} holds a run that stopped ({status}, see its summary.json) without a "
                "checkpoint to resume; pass --force to start over")
    return f"output directory {path!r} exists and is not empty; pass --force to overwrite it"


def prepare_dir(path: str, force: bool) -> str:
    """Create ``path`` (and parents); refuse a non-empty one unless ``force``."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise RunDirError(f"output path {path!r} exists and is not a directory")
        if os.listdir(path) and not force:
            raise RunDirError(_occupied(path))
        # a forced rerun must not leave the previous run's results next to the new
        # config if it fails half-way: remove our own outputs (never other files)
        for name in OUTPUT_FILES:
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
            remove_leftovers(os.path.join(path, name))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:  # a parent is a file (--out under a file), no permission, ...
        raise RunDirError(f"cannot create the output directory {path!r}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise RunDirError(f"output directory {path!r} is not writable")
    return path


def write_text(path: str, text: str) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, w)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, w)


# --------------------------------------------------------------------------- problem


def build_problem(cfg: dict[str, dict[str, Any]]):
    """The :class:`truncfast.data.Problem` a resolved config describes.

    Argument errors from :mod:`truncfast.data` (an :class:`InputError` whose
    message starts with the argument name) become :class:`ConfigError` naming
    the config key.
    """
    from truncfast import data

    d, m = cfg["data"], cfg["model"]
    kwargs = dict(
        n=d["n"], dim=d["dim"], clusters=d["clusters"], spread=d["spread"], separation=d["separation"],
        weights=d["weights"] or None, seed=d["seed"], path=d["path"] or None, label_column=d["label_column"],
        labels_path=d["labels_path"] or None, layers=m["layers"], init=m["init"],
        target_shift=m["target_shift"], output=m["output"], data_file=d["data_file"] or None,
    )
    try:
        return data.make_problem(d["source"], **kwargs)
    except InputError as exc:
        msg = str(exc)
        arg = msg.split(":", 1)[0].strip()
        for sec in ("data", "model"):
            if arg in cfg[sec]:
                raise ConfigError(f"{sec}.{arg}", f"config key '{sec}.{arg}': {msg.split(':', 1)[1].strip()}") from None
        if arg == "source":
            raise ConfigError("data.source", f"config key 'data.source': {msg.split(':', 1)[1].strip()}") from None
        raise


# --------------------------------------------------------------------------- outputs


def _nan_to_none(a: Any) -> Any:
    arr = np.asarray(a, dtype=np.float64)
    return [None if not math.isfinite(x) else float(x) for x in arr.ravel()]


def summary(problem, traj, cfg, wall_time: float, status: str = "complete",
            error: str | None = None) -> dict[str, Any]:
    """The ``summary.json`` record of a run (status, sizes, timing, losses, collapse, counts, warnings)."""
    from truncfast._version import __version__

    head = {"status": status, "error": error, "truncfast_version": __version__, "data": problem.name,
            "N": problem.N, "M": problem.M, "L": problem.L, "Q": problem.Q,
            "steps_requested": cfg["integrate"]["steps"]}
    if traj is None or len(traj.times) == 0:  # failed before the first record
        return {**head, "steps": 0, "records": 0, "wall_time_s": round(float(wall_time), 4), "warnings": []}
    s = traj.settings
    counts = np.asarray(traj.counts)
    sizes = problem.cluster_sizes()
    own = {}
    if counts.ndim == 4 and counts.shape[1] == problem.Q and (counts >= 0).all():
        # cluster j at its own layer j: the numbers of docs/theory.md §§6-7
        fin = counts[-1]
        own = {
            "untruncated": [int(fin[j, j, 0]) for j in range(problem.Q)],
            "partially_truncated": [int(fin[j, j, 1]) for j in range(problem.Q)],
            "fully_truncated": [int(fin[j, j, 2]) for j in range(problem.Q)],
        }
    return {
        "status": status,
        "error": error,
        "truncfast_version": __version__,
        "data": problem.name,
        "description": problem.description,
        "N": problem.N, "M": problem.M, "L": problem.L, "Q": problem.Q,
        "cluster_sizes": [int(x) for x in sizes],
        "backend": s.get("backend", cfg["integrate"]["backend"]),
        "method": s.get("method", cfg["integrate"]["method"]),
        "form": s.get("form", cfg["integrate"]["form"]),
        "engine": s.get("engine", cfg["integrate"]["engine"]),
        "engine_stats": dict(getattr(traj, "engine_stats", {}) or {}),
        "train_weights": bool(cfg["integrate"]["train_weights"]),
        "train_biases": bool(cfg["integrate"]["train_biases"]),
        "loss": cfg["integrate"].get("loss", "euclidean"),
        "dt": cfg["integrate"]["dt"],
        "rtol": cfg["integrate"].get("rtol", 0.0),
        "steps": int(getattr(traj, "last_step", traj.steps[-1])),
        "rejected_steps": int(traj.rejected_steps) if hasattr(traj, "rejected_steps") else 0,
        "steps_requested": cfg["integrate"]["steps"],
        "records": int(len(traj.times)),
        "final_time": float(traj.times[-1]),
        "wall_time_s": round(float(wall_time), 4),
        "initial_loss": float(traj.loss[0]),
        "final_loss": float(traj.loss[-1]),
        "collapse_times": _nan_to_none(traj.collapse_times),
        "final_counts": counts[-1].tolist() if counts.ndim == 4 else [],
        "final_counts_layout": "[layer][cluster][untruncated, partially truncated, fully truncated]",
        "final_counts_own_layer": own,
        "reorthonormalizations": int(getattr(traj, "reorthonormalizations", 0)),
        "final_ortho_defect": float(np.asarray(traj.ortho_defect)[-1]) if len(traj.ortho_defect) else 0.0,
        "warnings": list(getattr(traj, "warnings", [])),
        "python": platform.python_version(),
        **({"final_W_out": np.asarray(traj.W_out).tolist(), "final_b_out": np.asarray(traj.b_out).tolist()}
           if getattr(traj, "W_out", None) is not None else {}),
    }


def figure_data(problem, max_points: int) -> dict[str, np.ndarray]:
    """Arrays the figures need besides the trajectory (subsampled data, targets, names)."""
    from truncfast.data import subsample

    idx = subsample(problem.labels, max_points)
    X = np.asarray(problem.X[idx], dtype=np.float64)
    names = problem.class_names or [f"cluster {j + 1}" for j in range(problem.Q)]
    return {
        "X": X,
        "labels": np.asarray(problem.labels[idx], dtype=np.int64),
        "targets": np.asarray(problem.targets, dtype=np.float64),
        "centres": np.asarray(problem.centres, dtype=np.float64),
        "sizes": problem.cluster_sizes(),
        "names": np.array(names, dtype=str),
        "title": np.array(problem.description or problem.name, dtype=str),
        "axis_names": np.array(problem.axis_names, dtype=str),
    }


def preflight(cfg: dict[str, dict[str, Any]], problem) -> None:
    """Every check that can run before integrating, as :class:`ConfigError` naming the key:
    the separated form / exp-euler need L == Q, the records must fit in memory, the figures
    must be drawable (so a run never fails after hours on its last, cheapest step)."""
    from truncfast._integrate.checks import human_bytes, n_records, record_memory

    ic, L, M, Q = cfg["integrate"], problem.L, problem.M, problem.Q
    if (ic["method"] == "exp-euler" or ic["form"] == "separated") and L != Q:
        key = "integrate.method" if ic["method"] == "exp-euler" else "integrate.form"
        raise ConfigError(key, f"config key '{key}' = \"{ic[key.split('.')[1]]}\" needs one layer per cluster, "
                               f"but the problem has L = {L} layers (model.layers) and Q = {Q} clusters")
    bad = record_memory(ic["steps"], ic["record_every"], L, M, Q)
    if bad is not None:
        n, per, avail, k = bad
        raise ConfigError("integrate.record_every", (
            f"config keys 'integrate.steps' = {ic['steps']} and 'integrate.record_every' = {ic['record_every']} "
            f"keep {n:.3g} records of {per} bytes in memory, more than half of the {human_bytes(avail)} "
            f"available; set integrate.record_every ≥ {k} or run fewer steps"))
    from truncfast._validate import max_abs, safe_magnitude

    # data too large for float64 (a file; the generators bound their scales): one pass over X
    big = max(max_abs(problem.X), max_abs(problem.targets), max_abs(problem.b0))
    if big > safe_magnitude(problem.N, M):
        key = "data.path" if cfg["data"]["source"] == "file" else "data.separation"
        raise ConfigError(key, f"config key '{key}': the data reach {big:.3g} in magnitude; the losses of "
                               f"N = {problem.N} points in R^{M} overflow float64 above about "
                               f"{safe_magnitude(problem.N, M):.2g} — rescale the data")
    out = cfg["output"]
    if out["figures"] or out["animation"]:
        from truncfast._app.plot_style import check_settings

        bad_fig = check_settings(out, L, n_records(ic["steps"], ic["record_every"]))
        if bad_fig is not None:
            raise ConfigError(*bad_fig)


#: summary.json status of each way a run can stop early
_STATUS = ((KeyboardInterrupt, "interrupted"), (SeparationError, "separation_error"), (DivergenceError, "diverged"))


def execute(cfg: dict[str, dict[str, Any]], out_dir: str, *, force: bool = False, quiet: bool = False,
            log: Callable[[str], None] = print, header: str = "", resume: bool = False) -> dict[str, Any]:
    """Run one configured simulation into ``out_dir`` (or continue it: ``resume``); return its summary.

    Order: check the directory, build the problem and :func:`preflight` it (config
    errors surface before anything is written), write ``config.toml``, integrate
    with checkpoints, then the trajectory, summary, figure data and figures.  A
    run that stops early writes its partial trajectory and summary, then re-raises.
    """
    from truncfast._integrate.api import resume as resume_run

    ic = cfg["integrate"]
    if resume:
        out_dir = os.path.abspath(out_dir)
        ck = os.path.join(out_dir, CHECKPOINT)
        if not os.path.isfile(ck):
            raise RunDirError(f"nothing to resume in {out_dir!r}: no {CHECKPOINT} (the run finished, or it stopped "
                              "before its first checkpoint; start it again with --force)")
    else:
        out_dir = prepare_dir(out_dir, force)
        ck = os.path.join(out_dir, CHECKPOINT) if ic["checkpoint_every"] else None
    problem = build_problem(cfg)
    preflight(cfg, problem)
    if not resume:
        write_text(os.path.join(out_dir, "config.toml"), _config_file.dumps(cfg, header))
    if not quiet:
        span = f"to s = {ic['t1']:g}" if ic["t1"] > 0 else f"{ic['steps']} steps"
        step = f"rtol = {ic['rtol']:g}" if ic["rtol"] > 0 or ic["atol"] > 0 else f"dt = {ic['dt']:g}"
        log(f"{problem.description or problem.name}: N = {problem.N}, M = {problem.M}, L = {problem.L}, "
            f"Q = {problem.Q}; {ic['loss']} loss, {span} of {ic['method']} ({step}, "
            f"weights {'trained' if ic['train_weights'] else 'frozen'})" + (" — resumed" if resume else ""))
    t0 = time.perf_counter()
    try:
        if resume:
            try:
                targets = problem.Y if ic["loss"] == "standard" else problem.targets
                traj = resume_run(ck, problem.X, problem.labels, targets, progress=not quiet)
            except InputError as exc:  # a damaged checkpoint, or data that changed since
                raise RunDirError(f"cannot resume from {ck!r}: {exc}") from None
        else:
            traj = integrate_config(problem, ic, progress=not quiet, checkpoint=ck,
                                    checkpoint_every=ic["checkpoint_every"] or None)
    except BaseException as exc:
        status = next((st for kind, st in _STATUS if isinstance(exc, kind)), None)
        if status is not None:
            if status == "diverged" and "on_instability" in str(exc):
                status = "unstable"
            _write_partial(out_dir, problem, getattr(exc, "trajectory", None), cfg, time.perf_counter() - t0,
                           status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    wall = time.perf_counter() - t0
    traj.save(os.path.join(out_dir, "trajectory.npz"))
    os.chmod(os.path.join(out_dir, "trajectory.npz"), _FILE_MODE)
    summ = summary(problem, traj, cfg, wall)
    write_text(os.path.join(out_dir, "summary.json"), json.dumps(summ, indent=2) + "\n")
    fd = figure_data(problem, cfg["output"]["max_points"])
    fd.update(_theory_curves(problem, traj, cfg))
    write_npz(os.path.join(out_dir, "figdata.npz"), fd)
    if ck is not None and os.path.exists(ck):
        os.unlink(ck)  # the complete trajectory supersedes it
    if not quiet:
        ct = ", ".join("never" if c is None else f"s = {c:g}" for c in summ["collapse_times"])
        es = summ["engine_stats"]
        ran = (f", engine {summ['engine']}: {es.get('moment_evaluations', 0)} evaluations from pattern groups, "
               f"{es.get('direct_evaluations', 0)} per point" if es else "")
        log(f"done in {wall:.2f} s on backend {summ['backend']}{ran}: loss {summ['initial_loss']:.4g} → "
            f"{summ['final_loss']:.4g}; collapse times: {ct}")
    if cfg["output"]["figures"] or cfg["output"]["animation"]:
        from truncfast._app import plots as _plots

        written = _plots.draw_run(out_dir, traj=traj, fig=fd, cfg=cfg)
        if not quiet:
            log("wrote " + ", ".join(os.path.basename(p) for p in written))
    return summ


def _write_partial(out_dir: str, problem, traj, cfg, wall: float, status: str, error: str) -> None:
    """The partial trajectory (if any step was recorded) and a summary saying how the run stopped."""
    if traj is not None and len(traj.times):
        traj.save(os.path.join(out_dir, "trajectory.npz"))
        # what `truncfast plot DIR` needs to draw the partial run
        write_npz(os.path.join(out_dir, "figdata.npz"), figure_data(problem, cfg["output"]["max_points"]))
    summ = summary(problem, traj, cfg, wall, status=status, error=error)
    write_text(os.path.join(out_dir, "summary.json"), json.dumps(summ, indent=2) + "\n")


def integrate_config(problem, ic: dict[str, Any], *, progress: bool = False, checkpoint: str | None = None,
                     checkpoint_every: int | None = None):
    """Integrate ``problem`` as the resolved ``[integrate]`` table says: C_E with ``tf.integrate``, or
    C_std with ``tf.integrate_standard`` from the problem's output layer (W_out, b_out, Y); checkpointed
    to ``checkpoint`` every ``checkpoint_every`` steps when given."""
    from truncfast._integrate.api import integrate
    from truncfast._integrate.standard import integrate_standard

    kw = dict(dt=ic["dt"], method=ic["method"], train_weights=ic["train_weights"], train_biases=ic["train_biases"],
              record_every=ic["record_every"], backend=ic["backend"], progress=progress, form=ic["form"],
              checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    if ic["t1"] > 0:
        kw["t1"] = ic["t1"]
    else:
        kw["steps"] = ic["steps"]
    if ic["rtol"] > 0 or ic["atol"] > 0:
        kw["rtol"] = ic["rtol"] or ic["atol"]
        kw["atol"] = ic["atol"] or ic["rtol"]
    if ic["loss"] == "standard":
        return integrate_standard(problem.R0, problem.b0, problem.X, problem.labels, problem.W_out, problem.b_out,
                                  problem.Y, train_output=ic["train_output"], **kw)
    return integrate(problem.R0, problem.b0, problem.X, problem.labels, problem.targets,
                     on_instability=ic["on_instability"], engine=ic["engine"], **kw)


def _theory_curves(problem, traj, cfg) -> dict[str, np.ndarray]:
    """Exact reference curves for the loss figure, when the theory gives one.

    For the biases-only flow (R frozen) with one layer per cluster, docs/theory.md §7's
    event-driven solution :func:`truncfast.exact_bias_flow` gives b(s) exactly;
    its loss at the recorded times is drawn under the integrated one.  Skipped
    (silently: it is a figure overlay, not a result) when the assumptions fail.
    """
    from truncfast._flow.exact import exact_bias_flow
    from truncfast._flow.gradient import loss

    ic = cfg["integrate"]
    if ic["train_weights"] or ic.get("loss") == "standard" or problem.L != problem.Q or problem.N > 2_000_000:
        return {}
    try:
        times = np.asarray(traj.times)
        pick = np.unique(np.linspace(0, len(times) - 1, min(len(times), 200)).astype(int))
        bex = exact_bias_flow(problem.R0, problem.b0, problem.X, problem.labels, problem.targets, times[pick])
        lex = np.array([loss(problem.R0, bk, problem.X, problem.labels, problem.targets) for bk in bex])
        return {"exact_times": times[pick], "exact_loss": lex}
    except Exception:  # noqa: BLE001 - an optional overlay never fails a run
        return {}
