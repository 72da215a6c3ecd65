"""Run directories: execute a resolved config, write every output atomically.

A run directory holds

* ``config.toml``   — the resolved configuration (every key, defaults filled in);
* ``trajectory.npz`` — :meth:`truncfast.Trajectory.save` of the run;
* ``summary.json``  — sizes, backend, wall time, losses, collapse times, counts;
* ``figdata.npz``   — what the figures need besides the trajectory (a
  deterministic subsample of the data, targets, cluster sizes, names), so
  ``truncfast plot`` redraws without regenerating or reloading 10⁷ points;
* the figures of :mod:`truncfast._app.plots`.

Every file is written to a temporary name in the same directory and moved into
place with ``os.replace``, so an interrupted run never leaves half a file; a
non-empty directory is only reused when the caller passes ``force``.
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
from truncfast._atomic import atomic_write, file_mode
from truncfast._app.config_file import ConfigError
from truncfast._errors import InputError

__all__ = ["RunDirError", "prepare_dir", "atomic_write", "build_problem", "execute", "figure_data", "summary"]


_FILE_MODE = file_mode()


#: Files a run (or the demo, at its top level) writes; ``--force`` removes exactly these.
OUTPUT_FILES = ("config.toml", "trajectory.npz", "summary.json", "figdata.npz", "loss.png", "truncation.png",
                "sectors.png", "collapse.gif", "overview.png")


class RunDirError(RuntimeError):
    """The output directory cannot be used (exists and is not empty without ``force``)."""


def prepare_dir(path: str, force: bool) -> str:
    """Create ``path`` (and parents); refuse a non-empty one unless ``force``."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise RunDirError(f"output path {path!r} exists and is not a directory")
        if os.listdir(path) and not force:
            raise RunDirError(f"output directory {path!r} exists and is not empty; pass --force to overwrite it")
        # a forced rerun must not leave the previous run's results next to the new
        # config if it fails half-way: remove our own outputs (never other files)
        for name in OUTPUT_FILES:
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
    os.makedirs(path, exist_ok=True)
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


def summary(problem, traj, cfg, wall_time: float) -> dict[str, Any]:
    """The ``summary.json`` record of a run (sizes, timing, losses, collapse, counts)."""
    from truncfast._version import __version__

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
        "dt": cfg["integrate"]["dt"],
        "steps": int(getattr(traj, "last_step", traj.steps[-1])),
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
        "python": platform.python_version(),
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


def execute(cfg: dict[str, dict[str, Any]], out_dir: str, *, force: bool = False, quiet: bool = False,
            log: Callable[[str], None] = print, header: str = "") -> dict[str, Any]:
    """Run one configured simulation into ``out_dir``; return its summary.

    Order: check the directory, build the problem (config errors surface before
    anything is written), write ``config.toml``, integrate, then the trajectory,
    summary, figure data and figures.
    """
    from truncfast._integrate.api import integrate

    out_dir = prepare_dir(out_dir, force)
    problem = build_problem(cfg)
    write_text(os.path.join(out_dir, "config.toml"), _config_file.dumps(cfg, header))
    ic = cfg["integrate"]
    if not quiet:
        log(f"{problem.description or problem.name}: N = {problem.N}, M = {problem.M}, L = {problem.L}, "
            f"Q = {problem.Q}; {ic['steps']} steps of {ic['method']} (dt = {ic['dt']:g}, "
            f"weights {'trained' if ic['train_weights'] else 'frozen'})")
    t0 = time.perf_counter()
    traj = integrate(
        problem.R0, problem.b0, problem.X, problem.labels, problem.targets,
        dt=ic["dt"], steps=ic["steps"], method=ic["method"], train_weights=ic["train_weights"],
        train_biases=ic["train_biases"], record_every=ic["record_every"], backend=ic["backend"],
        progress=not quiet, form=ic["form"], engine=ic["engine"],
    )
    wall = time.perf_counter() - t0
    traj.save(os.path.join(out_dir, "trajectory.npz"))
    os.chmod(os.path.join(out_dir, "trajectory.npz"), _FILE_MODE)
    summ = summary(problem, traj, cfg, wall)
    write_text(os.path.join(out_dir, "summary.json"), json.dumps(summ, indent=2) + "\n")
    fd = figure_data(problem, cfg["output"]["max_points"])
    fd.update(_theory_curves(problem, traj, cfg))
    write_npz(os.path.join(out_dir, "figdata.npz"), fd)
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
    if ic["train_weights"] or problem.L != problem.Q or problem.N > 2_000_000:
        return {}
    try:
        times = np.asarray(traj.times)
        pick = np.unique(np.linspace(0, len(times) - 1, min(len(times), 200)).astype(int))
        bex = exact_bias_flow(problem.R0, problem.b0, problem.X, problem.labels, problem.targets, times[pick])
        lex = np.array([loss(problem.R0, bk, problem.X, problem.labels, problem.targets) for bk in bex])
        return {"exact_times": times[pick], "exact_loss": lex}
    except Exception:  # noqa: BLE001 - an optional overlay never fails a run
        return {}
