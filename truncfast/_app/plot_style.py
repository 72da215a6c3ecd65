"""What every figure shares: cluster colours, the loss floor of log axes, atomic PNG writes, run labels."""

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
