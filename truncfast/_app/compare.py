"""``truncfast compare``: the effective flow against PyTorch on the same data (issue 6).

Three trainers start from the same state on the same data (built by
:func:`truncfast.data.make_problem`):

* **effective flow** — :func:`truncfast.integrate` (lie-euler, Euclidean loss C_E
  at the fixed output layer);
* **autograd (R, b)** — :func:`truncfast.backprop.cumulative_gd`: the same loss
  and the same step in PyTorch; its curve lies on the flow's (a correctness
  check that costs nothing to show);
* **backprop (layers)** — :func:`truncfast.backprop.train_backprop`: ordinary
  full-batch gradient descent on every layer weight and the output layer, on
  the standard loss C_std.  With the default identity output layer C_std = C_E
  at the start, so the curves begin at the same value.

Written to the run directory (atomically, like ``truncfast run``):
``compare.json`` (wall time per step, time to reach the loss threshold, final
loss, agreement of the two C_E trainers; and, trajectory level (issue 17,
``compare_trajectory``): ``alignment_defect``, ``pattern_agreement``,
``collapse_times`` and ``neural_collapse`` of the flow, the unaligned flow and
backprop at matched flow times), ``compare.npz`` (the curves) and
``compare.png`` (loss against step and against wall time, truncation counts
per layer side by side, and the trajectory-level measures against flow time).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any, Callable

import numpy as np

from truncfast._app.config_file import ConfigError

__all__ = ["COMPARE_FILES", "run_compare", "compare_figure", "time_to_threshold"]

COMPARE_FILES = ("compare.json", "compare.npz", "compare.png")

#: Curve colours (effective flow, autograd in (R, b), backprop in layer weights).
STYLE = {
    "effective flow": dict(color="#1f77b4", lw=2.2, ls="-"),
    "autograd (R, b)": dict(color="#ff7f0e", lw=1.4, ls=(0, (4, 3))),
    "backprop (layers)": dict(color="#d62728", lw=1.8, ls="-"),
}


def time_to_threshold(steps: np.ndarray, loss: np.ndarray, wall: np.ndarray, threshold: float):
    """``(step, seconds)`` of the first recorded state with loss ≤ threshold, or ``(None, None)``."""
    hit = np.flatnonzero(np.asarray(loss) <= threshold)
    if hit.size == 0:
        return None, None
    i = int(hit[0])
    return int(steps[i]), float(wall[i])


def _check(key: str, ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(f"compare.{key}", f"--{key.replace('_', '-')}: {msg}")


def run_compare(out: str, *, source: str = "clusters", n: int = 2000, dim: int = 4, clusters: int = 4,
                layers: int = 0, init: str = "auto", spread: float = 1.0, seed: int = 0, steps: int = 200, dt: float = 0.05,
                lr: float | None = None, threshold: float | None = None, record_every: int = 1,
                backend: str = "auto", force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Run the three trainers and write the comparison into ``out``; returns the summary dict.

    ``threshold`` defaults to 10 % of the initial loss; ``lr`` (backprop's
    learning rate) defaults to ``dt / 5``.  Bad values raise :class:`ConfigError`
    (exit status 2 on the command line) before anything is written.
    """
    _check("steps", steps >= 1, f"must be ≥ 1, got {steps}")
    _check("dt", np.isfinite(dt) and dt > 0, f"must be a positive number, got {dt}")
    _check("lr", lr is None or (np.isfinite(lr) and lr > 0), f"must be a positive number, got {lr}")
    _check("n", n >= 2, f"must be ≥ 2, got {n}")
    _check("record_every", record_every >= 1, f"must be ≥ 1, got {record_every}")
    _check("threshold", threshold is None or threshold >= 0, f"must be ≥ 0, got {threshold}")
    from truncfast._backends import registry as _backends
    from truncfast import backprop as bp
    from truncfast import data
    from truncfast._errors import InputError
    from truncfast._app.runs import prepare_dir, write_npz, write_text

    bp.require_torch()  # fail before any work when PyTorch is missing
    try:
        backend_name = _backends.resolve(backend)
    except Exception as exc:  # noqa: BLE001 - an unknown or unavailable backend is a usage error
        raise ConfigError("compare.backend", f"--backend: {exc}") from None
    try:
        p = data.make_problem(source, n=n, dim=dim, clusters=clusters, layers=layers, spread=spread, seed=seed,
                              init=init)
    except InputError as exc:
        arg = str(exc).split(":", 1)[0].strip()
        raise ConfigError(f"compare.{arg}", f"--{arg}: {str(exc).split(':', 1)[-1].strip()}") from None
    out = prepare_dir(out, force)
    for name in COMPARE_FILES:  # --force: never leave an earlier comparison next to a failed one
        try:
            os.unlink(os.path.join(out, name))
        except FileNotFoundError:
            pass
    # GD in layer weights is a different dynamics with its own stable step: on the
    # default data (centres 10 apart) lr = dt = 0.05 blows up and kills every unit
    # in a few steps, lr = dt/5 trains well (measured); pass --lr to choose
    lr = 0.2 * dt if lr is None else lr
    R0, b0, X, labels, T = p.R0, p.b0, p.X, p.labels, p.targets
    log(f"{p.description}: N = {p.N}, M = {p.M}, L = {p.L}; {steps} steps of dt = {dt:g} (backprop lr = {lr:g})")

    from truncfast._integrate.api import integrate

    integrate(R0, b0, X[:64], labels[:64], T, dt=dt, steps=2, backend=backend_name)  # JIT / cache load
    t0 = time.perf_counter()
    traj = integrate(R0, b0, X, labels, T, dt=dt, steps=steps, record_every=record_every, backend=backend_name)
    flow_wall = time.perf_counter() - t0
    flow_steps = np.rint(traj.times / dt).astype(np.int64)
    # integrate records no wall clock per step: its steps all cost the same, so
    # the time to reach a state is estimated as steps × (total / steps)
    flow = dict(steps=flow_steps, loss=np.asarray(traj.loss), wall=flow_steps * (flow_wall / steps),
                counts=np.asarray(traj.counts).sum(axis=2), seconds_per_step=flow_wall / steps)
    log(f"effective flow ({backend_name}): {flow['seconds_per_step'] * 1e3:.3f} ms/step")

    # PyTorch on one thread: these full-batch steps are tiny (N·M ~ 10⁴), and with two threads
    # on a busy host each step measured up to 35× slower (OpenMP workers waiting for a core)
    torch = bp.require_torch()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref, back, matched = _torch_runs(bp, p, R0, b0, X, labels, T, traj, dt=dt, lr=lr, steps=steps,
                                         record_every=record_every, backend=backend_name, log=log)
    finally:
        torch.set_num_threads(torch_threads)

    curves = {
        "effective flow": flow,
        "autograd (R, b)": dict(steps=ref.steps, loss=ref.loss, wall=ref.wall, counts=ref.counts,
                                seconds_per_step=ref.seconds_per_step),
        "backprop (layers)": dict(steps=back.steps, loss=back.loss, wall=back.wall, counts=back.counts,
                                  seconds_per_step=back.seconds_per_step),
    }
    loss0 = float(flow["loss"][0])
    thr = 0.1 * loss0 if threshold is None else float(threshold)
    methods = {}
    for name, c in curves.items():
        k, s = time_to_threshold(c["steps"], c["loss"], c["wall"], thr)
        methods[name] = {
            "seconds_per_step": c["seconds_per_step"],
            "final_loss": float(c["loss"][-1]),
            "steps_to_threshold": k,
            "seconds_to_threshold": s,
            "loss": "C_std (layer weights and output layer trained)" if name.startswith("backprop")
            else "C_E (fixed output layer)",
        }
    n_cmp = min(len(ref.loss), len(flow["loss"]))
    same = flow["steps"][:n_cmp] == ref.steps[:n_cmp]
    agreement = float(np.max(np.abs(flow["loss"][:n_cmp][same] - ref.loss[:n_cmp][same]) / max(loss0, 1e-300)))
    summary = {
        "problem": {"source": source, "description": p.description, "N": p.N, "M": p.M, "L": p.L, "Q": p.Q,
                    "seed": seed, "init": init},
        "steps": steps, "dt": dt, "lr": lr, "backend": backend_name, "threshold": thr,
        "initial_loss": loss0, "methods": methods,
        "speedup_vs_autograd": ref.seconds_per_step / flow["seconds_per_step"],
        "speedup_vs_backprop": back.seconds_per_step / flow["seconds_per_step"],
        "flow_vs_autograd_max_rel_loss_difference": agreement,
        "backprop_diverged": bool(back.info["diverged"]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "torch_threads": 1,
        **matched,
    }
    arrays = {}
    for key, c in zip(("flow", "autograd", "backprop"), curves.values()):
        for f in ("steps", "loss", "wall", "counts"):
            arrays[f"{key}_{f}"] = np.asarray(c[f])
    write_npz(os.path.join(out, "compare.npz"), arrays)
    compare_figure(os.path.join(out, "compare.png"), curves, summary)
    write_text(os.path.join(out, "compare.json"), json.dumps(summary, indent=2) + "\n")
    for name, m in methods.items():
        t = "not reached" if m["seconds_to_threshold"] is None else f"{m['seconds_to_threshold']:.3g} s"
        log(f"  {name:18s} {m['seconds_per_step'] * 1e3:9.3f} ms/step   final loss {m['final_loss']:.4g}"
            f"   to loss ≤ {thr:.3g}: {t}")
    return summary


def _torch_runs(bp, p, R0, b0, X, labels, T, traj, *, dt, lr, steps, record_every, backend, log):
    """The PyTorch trainers: autograd in (R, b), backprop in layer weights, and the trajectory level."""
    ref = bp.cumulative_gd(R0, b0, X, labels, T, dt=dt, steps=steps, record_every=record_every)
    log(f"autograd (R, b): {ref.seconds_per_step * 1e3:.3f} ms/step")
    net = bp.ReLUNetwork.from_cumulative(R0, b0, p.W_out, p.b_out)
    back = bp.train_backprop(net, X, labels, p.Y, lr=lr, steps=steps, record_every=record_every)
    log(f"backprop (layers): {back.seconds_per_step * 1e3:.3f} ms/step"
        + (" (diverged: lower --lr)" if back.info["diverged"] else ""))

    t_traj = time.perf_counter()
    matched = _trajectory_level(bp, p, R0, b0, X, labels, T, traj, dt=dt, lr=lr, steps=steps,
                                record_every=record_every, backend=backend, log=log)
    log(f"trajectory-level measures (unaligned flow, backprop at matched flow times): "
        f"{time.perf_counter() - t_traj:.1f} s")

    return ref, back, matched


def _trajectory_level(bp, p, R0, b0, X, labels, T, traj, *, dt, lr, steps, record_every, backend, log) -> dict:
    """The unaligned flow from the same start and backprop at matched flow times (k·lr), measured by
    ``compare_trajectory.measure`` (issue 17): the ``alignment_defect``, ``pattern_agreement``,
    ``collapse_times`` and ``neural_collapse`` entries of compare.json."""
    import truncfast.unaligned as tu
    from truncfast._app import compare_trajectory as ct
    from truncfast._errors import DivergenceError

    # explicit Euler on the cumulative weights is stiff: ∇²_W C grows like |x|², and steps above
    # ~1/max|x|² oscillate or diverge (measured, docs/alignment_experiment.md); so the unaligned
    # flow takes `sub` steps of dt/sub per flow step and is recorded at the same times
    sub = max(1, math.ceil(dt * float(np.max(np.einsum("ij,ij->i", X, X)))))
    note = None
    try:
        unal = tu.integrate(R0, b0, X, labels, T, dt=dt / sub, steps=steps * sub, record_every=record_every * sub,
                            backend="auto" if backend == "dask" else backend)
    except DivergenceError as exc:  # keep what ran, and say why it stopped
        unal, note = exc.trajectory, str(exc)
        log(f"unaligned flow stopped: {note}")
    ratio = dt / lr
    net = bp.ReLUNetwork.from_cumulative(R0, b0, p.W_out, p.b_out)
    back = bp.train_backprop(net, X, labels, p.Y, lr=lr, steps=max(1, int(round(steps * ratio))),
                             record_every=max(1, int(round(record_every * ratio))), record_networks=True)
    out = ct.measure(X, labels, T, p.Y, traj, unal, back.info["networks"], back.steps * lr)
    out["trajectory_level"] = {"matched_time": "flow time s = step·dt (flows), step·lr (backprop)",
                               "backprop_steps": int(back.steps[-1]), "unaligned_dt": dt / sub,
                               "unaligned_flow_stopped": note}
    return out


def compare_figure(path: str, curves: dict[str, dict[str, Any]], summary: dict, dpi: int = 110) -> str:
    """Loss vs step, loss vs wall time, truncated points per layer (flow | backprop), and, when the
    summary has them, the trajectory-level panels of ``compare_trajectory.draw_panels``."""
    from matplotlib.figure import Figure

    from truncfast._app.plot_style import LOSS_FLOOR, _save, colour

    rows = [["loss", "wall"], ["flowc", "backc"]]
    if "alignment_defect" in summary:
        rows += [["defect", "agree"], ["nc1", "nc234"]]
    fig = Figure(figsize=(15, 4.2 * len(rows)), layout="constrained")
    axs = fig.subplot_mosaic(rows)
    thr = summary["threshold"]
    for name, c in curves.items():
        st = STYLE[name]
        y = np.maximum(c["loss"], LOSS_FLOOR)
        lab = f"{name}: {c['seconds_per_step'] * 1e3:.3g} ms/step"
        axs["loss"].semilogy(c["steps"], y, label=lab, **st)
        pos = c["wall"] > 0  # the flow's step 0 is at time 0, which a log axis cannot show
        axs["wall"].loglog(c["wall"][pos], y[pos], label=name, **st)
    for key in ("loss", "wall"):
        axs[key].axhline(thr, color="0.4", lw=0.8, ls=":", label=f"threshold {thr:.3g}")
        axs[key].grid(True, which="major", alpha=0.3)
        axs[key].set_ylabel("loss")
    axs["loss"].set_xlabel("step")
    axs["loss"].set_title("Loss per step (C_E for flow and autograd; C_std for backprop)")
    axs["loss"].legend(fontsize=9)
    axs["wall"].set_xlabel("wall time (s, log)")
    axs["wall"].set_title("Loss against wall time")
    axs["wall"].legend(fontsize=9)
    P = summary["problem"]
    N = P["N"]
    panels = (("flowc", "effective flow"), ("backc", "backprop (layers)"))
    ymax = 1.05 * N
    for key, name in panels:
        ax = axs[key]
        c = curves[name]
        counts = np.asarray(c["counts"])  # (K, L, 3)
        for l in range(counts.shape[1]):
            ax.plot(c["steps"], counts[:, l, 1], color=colour(l), lw=1.6, ls="-",
                    label=f"layer {l + 1} partially" if key == "flowc" else None)
            ax.plot(c["steps"], counts[:, l, 2], color=colour(l), lw=1.6, ls="--",
                    label=f"layer {l + 1} fully" if key == "flowc" else None)
        ax.set_ylim(-0.02 * N, ymax)
        ax.set_xlabel("step")
        ax.set_ylabel("points")
        ax.grid(True, alpha=0.3)
        ax.set_title(f"Truncated points per layer: {name}")
    axs["flowc"].legend(fontsize=8, ncol=2, title="solid: partially, dashed: fully truncated", title_fontsize=8)
    if "alignment_defect" in summary:
        from truncfast._app.compare_trajectory import draw_panels

        draw_panels(axs, summary)
    fig.suptitle(f"truncfast compare — {P['description']}: N = {N}, M = {P['M']}, L = {P['L']}\n"
                 f"{summary['steps']} steps, dt = {summary['dt']:g}, backprop lr = {summary['lr']:g}; "
                 f"flow per step: {summary['speedup_vs_autograd']:.1f}× faster than autograd, "
                 f"{summary['speedup_vs_backprop']:.1f}× than backprop", fontsize=11)
    return _save(fig, path, dpi)
