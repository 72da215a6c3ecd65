"""Figures in input space: the data after τ^(L), the cones of every layer, snapshots and the GIF.

The view is the plane of the data (2-D) or of its two leading principal
directions; each layer's cone {R_ℓ z + b_ℓ ≥ 0} is shaded in its cluster's
colour (docs/theory.md §2, §4).  Drawn on explicit Agg figures like
``plots``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon

from truncfast._app.plot_style import GIF_DPI, GIF_SIZE, _names, _run_label, _str, colour, sectors_size

__all__ = ["sectors_figure", "animation", "pick_records"]


# --------------------------------------------------------------------------- input space


class _View:
    """The plane the input-space figures draw: identity for M = 2, else the first two PCs."""

    def __init__(self, X: np.ndarray, targets: np.ndarray, axis_names: Any = ()):
        M = X.shape[1]
        self.M = M
        names = [str(a) for a in np.asarray(axis_names).ravel()]
        if M == 1:
            self.mean, self.P = np.zeros(1), np.array([[1.0], [0.0]])
            self.xlabel, self.ylabel = (names or ["$x_1$"])[0], ""
        elif M == 2:
            self.mean, self.P = np.zeros(2), np.eye(2)
            self.xlabel, self.ylabel = names[:2] if len(names) >= 2 else ("$x_1$", "$x_2$")
        else:
            self.mean = X.mean(axis=0)
            _, sv, Vt = np.linalg.svd(X - self.mean, full_matrices=False)
            self.P = Vt[:2]
            var = sv ** 2 / max((sv ** 2).sum(), 1e-300)
            self.xlabel = f"principal component 1 ({100 * var[0]:.0f}% of variance)"
            self.ylabel = f"principal component 2 ({100 * var[1]:.0f}% of variance)"
        pts = np.vstack([self.project(X), self.project(targets)])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = np.maximum(hi - lo, 1e-9)
        pad = 0.12 * span.max()
        centre = (lo + hi) / 2
        half = span.max() / 2 + pad  # square box: equal aspect without squashing
        self.xlim = (centre[0] - half, centre[0] + half)
        self.ylim = (centre[1] - half, centre[1] + half) if M > 1 else (-half, half)

    def project(self, Z: np.ndarray) -> np.ndarray:
        return (np.atleast_2d(Z) - self.mean) @ self.P.T

    def direction(self, v: np.ndarray) -> np.ndarray:
        return self.P @ v


class _StateDrawing:
    """Artists showing one state (R, b): τ^(L) of the data, the cones, the targets.

    Created once per axes; :meth:`update` moves the points and cones to another
    state without rebuilding anything, which keeps a 40-frame GIF to seconds.
    Cone ℓ = {R_ℓ z + b_ℓ ≥ 0} = apex + R_ℓᵀ(R^M_+), apex −R_ℓᵀ b_ℓ, edges along
    the rows of R_ℓ: drawn exactly (shaded, with its two edges) for M = 2, by
    its projected apex and M edges (dashed) in higher dimension.
    """

    def __init__(self, ax, view: _View, fd: dict, L: int, *, faint: bool = True):
        self.ax, self.view, self.fd = ax, view, fd
        X, labels, targets = fd["X"], fd["labels"], fd["targets"]
        self.Q = targets.shape[0]
        self.M = X.shape[1]
        Xp, Tp = view.project(X), view.project(targets)
        self.sel = [labels == j for j in range(self.Q)]
        self.far = 4 * (view.xlim[1] - view.xlim[0])
        self.cones = []
        for l in range(L):
            c = colour(l % self.Q)
            poly = None
            if self.M == 2:
                poly = Polygon(np.zeros((4, 2)), closed=True, facecolor=c, alpha=0.07, edgecolor="none", zorder=0)
                ax.add_patch(poly)
            edges = [ax.plot([], [], color=c, lw=1.3 if self.M == 2 else 1.0, ls="-" if self.M == 2 else "--",
                             alpha=0.85, zorder=1)[0] for _ in range(2 if self.M == 2 else self.M)]
            apex = ax.plot([], [], marker="o", ms=4, mfc="white", mec=c, ls="none", zorder=2)[0]
            self.cones.append((poly, edges, apex))
        self.points = []
        for j in range(self.Q):
            if faint:
                ax.scatter(Xp[self.sel[j], 0], Xp[self.sel[j], 1], s=6, color=colour(j), alpha=0.18, lw=0, zorder=2)
            # hollow star: a collapsed cluster (one dot) stays visible at its target
            ax.plot(*Tp[j], marker="*", ms=17, mfc="none", mec=colour(j), mew=1.6, zorder=4)
            ax.plot(*Tp[j], marker="*", ms=19, mfc="none", mec="black", mew=0.6, zorder=4)
            self.points.append(ax.scatter([], [], s=10, color=colour(j), alpha=0.85, lw=0, zorder=5))
        ax.set_xlim(*view.xlim)
        ax.set_ylim(*view.ylim)
        ax.set_aspect("equal")
        ax.set_xlabel(view.xlabel)
        ax.set_ylabel(view.ylabel)

    def update(self, R: np.ndarray, b: np.ndarray) -> None:
        from truncfast._flow.truncation import truncate

        Zp = self.view.project(truncate(R, b, self.fd["X"]))
        for j, pts in enumerate(self.points):
            pts.set_offsets(Zp[self.sel[j]])
        length = 0.35 * (self.view.xlim[1] - self.view.xlim[0])
        for l, (poly, edges, apex_line) in enumerate(self.cones):
            apex = -R[l].T @ b[l]
            a2 = self.view.project(apex)[0]
            apex_line.set_data([a2[0]], [a2[1]])
            if self.M == 2:
                e0, e1 = R[l][0], R[l][1]
                poly.set_xy(np.array([apex, apex + self.far * e0, apex + self.far * (e0 + e1), apex + self.far * e1]))
                for line, e in zip(edges, (e0, e1)):
                    q = apex + self.far * e
                    line.set_data([apex[0], q[0]], [apex[1], q[1]])
            else:
                for line, row in zip(edges, R[l]):
                    d = self.view.direction(row)
                    line.set_data([a2[0], a2[0] + length * d[0]], [a2[1], a2[1] + length * d[1]])


def _draw_state(ax, view: _View, fd: dict, R: np.ndarray, b: np.ndarray, *, faint: bool = True) -> _StateDrawing:
    d = _StateDrawing(ax, view, fd, R.shape[0], faint=faint)
    d.update(R, b)
    return d


def _legend_handles(fd: dict, M: int) -> list:
    names = _names(fd)
    h = []
    for j, name in enumerate(names):
        h.append(Line2D([], [], color=colour(j), marker="o", ls="none", ms=5, label=rf"{name}: $\tau^{{(L)}}(x)$"))
    h.append(Line2D([], [], color="grey", marker="o", ls="none", ms=5, alpha=0.3, label="data $x$ (faint)"))
    h.append(Line2D([], [], color="grey", marker="*", mfc="none", mec="black", ls="none", ms=13,
                    label=r"target $\tilde y_j$ (pulled-back label)"))
    h.append(Line2D([], [], color="grey", lw=1.3, ls="-" if M == 2 else "--",
                    label=r"cone $\{R_\ell z + b_\ell \geq 0\}$: $\tau_\ell$ projects onto it" + ("" if M == 2 else " (edges, projected)")))
    return h


def pick_records(times: np.ndarray, count: int) -> np.ndarray:
    """``count`` record indices from 0 to the last, spaced evenly in log time.

    The flow does most of its visible work early (collapse in finite time, then
    exponential convergence), so log spacing shows the events and the end state.
    """
    t = np.asarray(times, dtype=float)
    K = len(t)
    if K <= count:
        return np.arange(K)
    pos = t[t > 0]
    if pos.size == 0 or count < 3:
        return np.unique(np.linspace(0, K - 1, count).astype(int))
    # count − 1 points after 0, the first one step of the log grid past the first record
    grid = np.geomspace(pos[0], t[-1], count)[1:]
    idx = np.searchsorted(t, grid).clip(0, K - 1)
    idx = np.unique(np.concatenate([[0], idx, [K - 1]]))
    # fill up duplicates with evenly spaced extras so the count holds when possible
    if len(idx) < count:
        extra = np.setdiff1d(np.linspace(0, K - 1, count * 2).astype(int), idx)
        idx = np.unique(np.concatenate([idx, extra[np.linspace(0, len(extra) - 1, count - len(idx)).astype(int)]]))
    return idx


def sectors_figure(traj, fd: dict, snapshots: int = 4) -> Figure:
    """The data in input space at several times, with the cone of every truncation map."""
    Rs, bs, t = np.asarray(traj.Rs), np.asarray(traj.bs), np.asarray(traj.times)
    view = _View(fd["X"], fd["targets"], fd.get("axis_names", ()))
    idx = pick_records(t, snapshots)
    n = len(idx)
    fig = Figure(figsize=sectors_size(n), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False).ravel()
    for ax, k in zip(axes, idx):
        _draw_state(ax, view, fd, Rs[k], bs[k])
        ax.set_title(f"s = {t[k]:.3g},  loss = {traj.loss[k]:.2e}", fontsize=10)
        if ax is not axes[0]:
            ax.set_ylabel("")
    M = fd["X"].shape[1]
    fig.legend(handles=_legend_handles(fd, M), loc="outside lower center", ncol=min(6, len(_names(fd)) + 3),
               fontsize=8, frameon=False)
    where = "input space" if M <= 2 else f"input space R^{M}, projected onto its first two principal components"
    fig.suptitle(f"{_str(fd['title'])} — {where}\n{_run_label(traj)}: data truncated by "
                 r"$\tau^{(L)}$ (dark) at several flow times", fontsize=10)
    return fig


def animation(traj, fd: dict, path: str, frames: int = 40, dpi: int = GIF_DPI) -> str:
    """GIF of τ^(L) applied to the data at the recorded states: the clusters collapsing."""
    from PIL import Image  # Pillow: a dependency of matplotlib

    from truncfast._atomic import atomic_write

    Rs, bs, t = np.asarray(traj.Rs), np.asarray(traj.bs), np.asarray(traj.times)
    view = _View(fd["X"], fd["targets"], fd.get("axis_names", ()))
    idx = pick_records(t, frames)
    M = fd["X"].shape[1]
    fig = Figure(figsize=GIF_SIZE, layout="constrained", dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawing = _draw_state(ax, view, fd, Rs[0], bs[0])
    fig.suptitle(f"{_str(fd['title'])}\n{_run_label(traj)}", fontsize=8)
    title = ax.set_title(f"s = {t[-1]:.3g},  loss = {traj.loss[0]:.2e}", fontsize=10)
    fig.legend(handles=_legend_handles(fd, M), loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    # lay the figure out once, then freeze it: re-running the layout engine for
    # every frame costs ten times more than drawing the frame
    fig.canvas.draw()
    fig.set_layout_engine("none")

    # Blitting: the axes, labels and faint data are rendered once; each frame
    # restores that background and redraws only the moving artists (points,
    # cones, title).  Text rendering dominates a full redraw, so this is ~20x
    # faster than PillowWriter.grab_frame, which re-renders the whole figure.
    moving = [title, *drawing.points]
    for poly, edges, apex in drawing.cones:
        moving += ([poly] if poly is not None else []) + edges + [apex]
    for a in moving:
        a.set_animated(True)
    canvas = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    images = []
    for k in idx:
        drawing.update(Rs[k], bs[k])
        title.set_text(f"s = {t[k]:.3g},  loss = {traj.loss[k]:.2e}")
        canvas.restore_region(background)
        for a in sorted(moving, key=lambda a: a.get_zorder()):
            fig.draw_artist(a)
        w, h = canvas.get_width_height()
        rgba = Image.frombuffer("RGBA", (w, h), bytes(canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
        images.append(rgba.convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE))
    durations = [125] * (len(images) - 1) + [1500]  # hold the final state

    def write(tmp: str) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)

    atomic_write(path, write, suffix=".gif")
    return path


def _add_zooms(ax, drawing: _StateDrawing, view: _View, fd: dict, R: np.ndarray, b: np.ndarray) -> None:
    """Magnified insets around each target, in the emptiest corners of ``ax``.

    A collapsed cluster is a single point and a partially collapsed one a short
    segment through its target (docs/theory.md §7); at the scale of the whole data both
    hide behind the target marker, so the overview zooms in.  Only for 2-D data
    and at most three clusters (one corner each, the fourth stays free).
    """
    Q = fd["targets"].shape[0]
    if fd["X"].shape[1] != 2 or Q > 3:
        return
    width = view.xlim[1] - view.xlim[0]
    pts = np.vstack([view.project(fd["X"]), view.project(fd["targets"])] + [p.get_offsets() for p in drawing.points])
    corners = {(0.04, 0.6): (0.2, 0.8), (0.61, 0.04): (0.8, 0.2), (0.04, 0.04): (0.2, 0.2), (0.61, 0.6): (0.8, 0.8)}
    # rank corners by their distance to the nearest drawn point (in axes fractions)
    frac = (pts - [view.xlim[0], view.ylim[0]]) / width
    free = sorted(corners, key=lambda c: -np.min(np.linalg.norm(frac - corners[c], axis=1)))
    for j in range(Q):
        img = np.asarray(drawing.points[j].get_offsets())
        tj = view.project(fd["targets"][j])[0]
        r = max(np.abs(img - tj).max() if len(img) else 0.0, 3 * float(np.std(fd["X"][fd["labels"] == j])), 1e-6 * width)
        r *= 1.3
        if r > 0.08 * width:
            continue  # visible without a zoom
        x0, y0 = free[j]
        ins = ax.inset_axes([x0, y0, 0.35, 0.35])
        sub = _StateDrawing(ins, view, fd, R.shape[0], faint=False)
        sub.update(R, b)
        ins.set_xlim(tj[0] - r, tj[0] + r)
        ins.set_ylim(tj[1] - r, tj[1] + r)
        ins.set_xlabel("")
        ins.set_ylabel("")
        ins.set_xticks([])
        ins.set_yticks([])
        ins.set_title(f"zoom ×{width / (2 * r):.0f} at target {j + 1}", fontsize=7, pad=2)
        for side in ins.spines.values():
            side.set_edgecolor(colour(j))
        ax.indicate_inset_zoom(ins, edgecolor=colour(j), alpha=0.6)
