"""Figures of a run: loss and truncation counts over time, and the drivers that draw a run directory.

Everything draws on explicit :class:`matplotlib.figure.Figure` objects with the
Agg canvas — no pyplot, no global backend switch — so it works on machines
without a screen and does not disturb a user's interactive matplotlib session.
Each file is written atomically (``truncfast._atomic.atomic_write``); drawings in input space are in ``plots_space``.

Inputs are a trajectory (``times``, ``loss``, ``counts`` (K, L, Q, 3),
``Rs``, ``bs``, ``collapse_times``, ``settings``) and the ``figdata`` arrays of
``runs.figure_data`` (subsampled data, targets, sizes, names).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from truncfast._app.plot_style import LOSS_FLOOR, LOSS_SIZE, _names, _run_label, _save, _str, colour, truncation_size

__all__ = ["draw_run", "draw_overview", "loss_figure", "truncation_figure"]


def cluster_losses(traj, fd: dict, max_records: int = 400) -> tuple[np.ndarray, np.ndarray, bool]:
    """Each cluster's share of the loss, ``C_j = (1/2N) Σ_{i∈j} |τ^(L)(x_i) − ỹ_j|²``.

    Computed from the figure subsample (exact when it holds every point, else an
    unbiased estimate scaled by N_j) at up to ``max_records`` recorded states.
    Returns ``(times, C (K', Q), exact)``.
    """
    from truncfast._flow.truncation import truncate

    t = np.asarray(traj.times, dtype=float)
    pick = np.unique(np.linspace(0, len(t) - 1, min(len(t), max_records)).astype(int))
    X, labels, targets = fd["X"], fd["labels"], fd["targets"]
    sizes = np.asarray(fd["sizes"], dtype=float)
    Q = targets.shape[0]
    in_sample = np.bincount(labels, minlength=Q).astype(float)
    weight = sizes / np.maximum(in_sample, 1) / (2 * sizes.sum())  # per sampled point of cluster j
    Rs, bs = np.asarray(traj.Rs), np.asarray(traj.bs)
    out = np.empty((len(pick), Q))
    for r, k in enumerate(pick):
        sq = ((truncate(Rs[k], bs[k], X) - targets[labels]) ** 2).sum(axis=1)
        out[r] = np.bincount(labels, weights=sq, minlength=Q) * weight
    return t[pick], out, bool(np.all(in_sample == sizes))


def _loss_axes(ax, traj, fd: dict, *, legend: bool = True, title: str | None = None) -> None:
    t = np.asarray(traj.times, dtype=float)
    loss = np.maximum(np.asarray(traj.loss, dtype=float), LOSS_FLOOR)
    ax.semilogy(t, loss, color="black", lw=2.2, label="loss $C_E(s)$", zorder=3)
    names = _names(fd)
    tc, share, exact = cluster_losses(traj, fd)
    for j in range(share.shape[1]):
        ax.semilogy(tc, np.maximum(share[:, j], LOSS_FLOOR), color=colour(j), lw=1.2, alpha=0.9, zorder=2,
                    label=f"{names[j]}'s share" + ("" if exact else " (from a subsample)"))
    if "exact_loss" in fd:
        ax.semilogy(fd["exact_times"], np.maximum(fd["exact_loss"], LOSS_FLOOR), ls=":", color="#ff7f0e", lw=2.4,
                    label="exact solution at fixed R (docs/theory.md §7)", zorder=4)
    sizes = np.asarray(fd["sizes"], dtype=float)
    pi = sizes / sizes.sum()
    ct = np.asarray(traj.collapse_times, dtype=float)
    # collapse-phase rate (Prop. 4.2): once cluster j is fully truncated, b_j → −R_j ỹ_j at
    # rate π_j = N_j/N, so its share of the loss decays like exp(−2 π_j (s − s₀)).
    theory_label = False
    for j, c in enumerate(ct):
        if not np.isfinite(c):
            continue
        ax.axvline(c, color=colour(j), ls=(0, (1, 2)), lw=1.2)
        k0 = int(np.searchsorted(tc, c))
        if k0 >= len(tc) - 1 or share[k0, j] <= LOSS_FLOOR * 1e3:
            continue
        ss = np.linspace(tc[k0], tc[-1], 300)
        ref = share[k0, j] * np.exp(-2 * pi[j] * (ss - tc[k0]))
        keep = ref > LOSS_FLOOR
        ax.semilogy(ss[keep], ref[keep], ls="--", color=colour(j), lw=1.6, alpha=0.8, zorder=4,
                    label=None if theory_label else
                    r"theory after the collapse at $s_0$ (dotted): $\propto e^{-2\pi_j (s - s_0)}$, $\pi_j = N_j/N$")
        theory_label = True
    ax.set_xlabel("flow time $s$")
    ax.set_ylabel("loss (log scale)")
    lo = max(LOSS_FLOOR, loss.min() / 10)
    ax.set_ylim(lo, loss.max() * 5)
    ax.grid(True, which="major", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)


def loss_figure(traj, fd: dict) -> Figure:
    """Loss over time (log scale) with collapse times and the theoretical rates."""
    fig = Figure(figsize=LOSS_SIZE, layout="constrained")
    ax = fig.add_subplot()
    _loss_axes(ax, traj, fd)
    fig.suptitle(f"Loss along the effective gradient flow — {_run_label(traj)}\n{_str(fd['title'])}", fontsize=10)
    return fig


# --------------------------------------------------------------------------- counts


def truncation_figure(traj, fd: dict) -> Figure:
    """Fraction of each cluster partially / fully truncated by each layer, over time."""
    counts = np.asarray(traj.counts)
    t = np.asarray(traj.times, dtype=float)
    names = _names(fd)
    if counts.ndim != 4 or (counts < 0).any():
        fig = Figure(figsize=(6, 2), layout="constrained")
        fig.text(0.5, 0.5, "no truncation counts recorded (M > 64)", ha="center", va="center")
        return fig
    K, L, Q, _ = counts.shape
    shown = min(L, 6)
    fig = Figure(figsize=truncation_size(L), layout="constrained")
    axes = fig.subplots((shown + 2) // 3, min(shown, 3), squeeze=False).ravel()
    pos = t[t > 0]
    ct = np.asarray(traj.collapse_times, dtype=float)
    for l in range(shown):
        ax = axes[l]
        for j in range(Q):
            n = counts[:, l, j].sum(axis=1).astype(float)
            n[n == 0] = 1
            ax.plot(t, counts[:, l, j, 2] / n, color=colour(j), lw=2, label=f"{names[j]}: fully")
            ax.plot(t, counts[:, l, j, 1] / n, color=colour(j), lw=1.4, ls="--", label=f"{names[j]}: partially")
            if np.isfinite(ct[j]):
                ax.axvline(ct[j], color=colour(j), ls=(0, (1, 2)), lw=1)
        if pos.size:
            # linear up to the first recorded step, logarithmic after: s = 0 stays visible
            # and the early events (collapse in finite time) are not squeezed against it
            ax.set_xscale("symlog", linthresh=pos[0], linscale=0.5)
            ax.set_xlim(0, t[-1] * 1.05)
            lo, hi = int(np.ceil(np.log10(pos[0]))), int(np.floor(np.log10(t[-1])))
            ax.set_xticks([0.0] + [10.0 ** k for k in range(lo, hi + 1)])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("flow time $s$ (log scale after the first step)")
        ax.set_ylabel("fraction of the cluster's points")
        ax.set_title(rf"layer {l + 1}: truncated by $\tau_{{{l + 1}}}$", fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes[shown:]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=colour(j), lw=2, label=names[j]) for j in range(Q)]
    handles += [Line2D([], [], color="grey", lw=2, label="fully truncated"),
                Line2D([], [], color="grey", lw=1.4, ls="--", label="partially truncated"),
                Line2D([], [], color="grey", lw=1, ls=(0, (1, 2)), label="collapse time $s_0$")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    extra = f" (first {shown} of {L} layers)" if shown < L else ""
    fig.suptitle(f"Truncated points per cluster{extra} at each layer — {_run_label(traj)}\n{_str(fd['title'])}",
                 fontsize=10)
    return fig


# --------------------------------------------------------------------------- drivers


def load_figdata(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def draw_run(run_dir: str, *, traj=None, fig: dict | None = None, cfg: dict | None = None) -> list[str]:
    """Draw every figure of a run directory (loading what is not passed in)."""
    from truncfast._app import config_file as _config_file
    from truncfast._app.plots_space import animation, sectors_figure
    from truncfast._integrate.trajectory import Trajectory

    if cfg is None:
        cfg = _config_file.load(os.path.join(run_dir, "config.toml"))
    if traj is None:
        traj = Trajectory.load(os.path.join(run_dir, "trajectory.npz"))
    if fig is None:
        fig = load_figdata(os.path.join(run_dir, "figdata.npz"))
    out = cfg["output"]
    written = []
    if out["figures"]:
        written.append(_save(loss_figure(traj, fig), os.path.join(run_dir, "loss.png"), out["dpi"]))
        written.append(_save(truncation_figure(traj, fig), os.path.join(run_dir, "truncation.png"), out["dpi"]))
        written.append(_save(sectors_figure(traj, fig, out["snapshots"]), os.path.join(run_dir, "sectors.png"),
                             out["dpi"]))
    if out["animation"]:
        written.append(animation(traj, fig, os.path.join(run_dir, "collapse.gif"), out["frames"]))
    return written


def draw_overview(path: str, runs: dict[str, tuple[Any, dict]], dpi: int = 100, title: str | None = None) -> str:
    """Side-by-side comparison of several runs: final state in input space above, loss below."""
    from truncfast._app.plots_space import _add_zooms, _draw_state, _legend_handles, _View

    n = len(runs)
    fig = Figure(figsize=(5.2 * n, 9.4), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False, height_ratios=[1.25, 1])
    first_fd = None
    for col, (name, (traj, fd)) in enumerate(runs.items()):
        first_fd = first_fd or fd
        view = _View(fd["X"], fd["targets"], fd.get("axis_names", ()))
        drawing = _draw_state(axes[0, col], view, fd, np.asarray(traj.Rs)[-1], np.asarray(traj.bs)[-1])
        _add_zooms(axes[0, col], drawing, view, fd, np.asarray(traj.Rs)[-1], np.asarray(traj.bs)[-1])
        axes[0, col].set_title(f"{_run_label(traj)}\nfinal state, s = {traj.times[-1]:.3g}, "
                               f"loss = {traj.loss[-1]:.2e}", fontsize=10)
        _loss_axes(axes[1, col], traj, fd, title="loss over time")
    fig.legend(handles=_legend_handles(first_fd, first_fd["X"].shape[1]), loc="outside lower center",
               ncol=5, fontsize=8, frameon=False)
    fig.suptitle(title or _str(first_fd["title"]), fontsize=11)
    return _save(fig, path, dpi)
