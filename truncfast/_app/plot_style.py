"""What every figure shares: cluster colours, the loss floor of log axes, atomic PNG writes, run labels, sizes and their check."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["COLOURS", "LOSS_FLOOR", "colour"]

#: Colour of cluster j (and of the layer built around it): matplotlib's tab10.
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

#: Losses below this are drawn at this value (a log axis cannot show 0, and
#: values near 1e-30 are rounding noise of a collapsed cluster anyway).
LOSS_FLOOR = 1e-30


def colour(j: int) -> str:
    return COLOURS[j % len(COLOURS)]


def _save(fig: Figure, path: str, dpi: int) -> str:
    from truncfast._atomic import atomic_write

    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), suffix=".png")
    return path


def _str(a: Any) -> str:
    return str(np.asarray(a).item()) if np.asarray(a).shape == () else str(a)


def _names(fd: dict) -> list[str]:
    return [str(x) for x in np.asarray(fd["names"]).ravel()]


def _run_label(traj) -> str:
    s = traj.settings
    parts = []
    if not s.get("train_weights", True):
        parts.append("biases only (R frozen)")
    elif not s.get("train_biases", True):
        parts.append("weights only (b frozen)")
    else:
        parts.append("full flow (R and b)")
    parts.append(f"{s.get('method', '?')}, dt = {s.get('dt', '?')}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- loss


# --------------------------------------------------------------------------- sizes
# Figure sizes in inches, one place: the figures use them and ``check_settings``
# checks a config against them before a run integrates (not after).

LOSS_SIZE = (7.5, 4.6)
GIF_SIZE, GIF_DPI = (5.4, 6.2), 80
#: Agg cannot draw 2^16 pixels a side; above MAX_PIXELS one figure needs > 400 MB.
MAX_SIDE, MAX_PIXELS = 2**16 - 1, 10**8
#: GIF frames are kept in memory until written (about 0.2 MB each).
MAX_FRAMES = 1000


def truncation_size(L: int) -> tuple[float, float]:
    shown = min(L, 6)
    return 4.2 * min(shown, 3), 3.4 * ((shown + 2) // 3)


def sectors_size(n: int) -> tuple[float, float]:
    return 3.6 * n + 0.5, 5.4


def check_settings(out: dict, L: int, n_records: int) -> tuple[str, str] | None:
    """``(config key, message)`` when the ``[output]`` settings cannot be drawn, else None."""
    if out["animation"] and out["frames"] > MAX_FRAMES:
        return "output.frames", (f"config key 'output.frames' = {out['frames']} is more than {MAX_FRAMES} "
                                 "(every frame of the GIF is held in memory)")
    if not out["figures"]:
        return None
    dpi = out["dpi"]
    for name, (w, h), key in (("loss.png", LOSS_SIZE, "output.dpi"), ("truncation.png", truncation_size(L), "output.dpi"),
                              ("sectors.png", sectors_size(min(out["snapshots"], n_records)), "output.snapshots")):
        wp, hp = w * dpi, h * dpi
        if wp > MAX_SIDE or hp > MAX_SIDE or wp * hp > MAX_PIXELS:
            if key == "output.snapshots" and LOSS_SIZE[0] * dpi <= MAX_SIDE and sectors_size(1)[0] * dpi <= MAX_SIDE \
                    and sectors_size(1)[0] * sectors_size(1)[1] * dpi * dpi <= MAX_PIXELS:
                return key, (f"config key 'output.snapshots' = {out['snapshots']} makes sectors.png "
                             f"{wp:.0f} × {hp:.0f} pixels at output.dpi = {dpi}; use fewer snapshots")
            return "output.dpi", (f"config key 'output.dpi' = {dpi} makes {name} {wp:.0f} × {hp:.0f} pixels "
                                  f"(at most {MAX_SIDE} a side and {MAX_PIXELS:.0e} in all); use a smaller dpi")
    return None
