"""Watch the loss of a run for unstable steps (docs/theory.md §9): a gradient flow never increases its loss.

The exact flow has ``dC/ds = −|∇C|² ≤ 0``; explicit steps with a stable dt keep
the loss non-increasing up to rounding and to the chatter of points crossing a
sector boundary within a step (C is piecewise quadratic, its gradient jumps
there; a flow sliding along a boundary makes fixed steps zig-zag across it,
with loss wiggles of relative size O(dt·jump), measured ≤ 3e-7 at dt = 0.05).  A loss that rises clearly above the lowest value seen
so far, or that rises again and again, means the steps no longer follow the
flow: the run may end "complete" in a state the flow never reaches.  The
:class:`LossMonitor` sees the loss after every step (in the Python loop and in
the compiled one) and reports the first such event:

* **growth**: ``C_k > C_best·(1 + INSTABILITY_GROWTH_RTOL) + floor``, C_best the
  lowest loss so far;
* **oscillation**: in the last ``INSTABILITY_WINDOW`` steps the loss rose
  (above ``C_{k−1}·(1 + INSTABILITY_RISE_RTOL) + floor``) at least
  ``INSTABILITY_RISES`` times — a period-2 oscillation rises every other step,
  an isolated boundary crossing does not;

with ``floor = DIVERGENCE_LOSS_FLOOR × scale²`` (the divergence test's noise
floor, so a run at an exact equilibrium is never flagged).  The thresholds live
in ``_config``.  ``on_instability`` decides what happens: ``"warn"`` (default)
warns once (:class:`truncfast.InstabilityWarning`) and records the message in
``Trajectory.warnings``; ``"raise"`` raises :class:`truncfast.DivergenceError`
with the run up to the last step before the rise; ``"ignore"`` checks nothing.
Detection depends only on the sequence of losses, which is bitwise the same for
any chunking, thread count or resume, so the result does too.  The suggested
step is ``min(dt/2, 1)`` (the bias relaxation rate π_j(1 − m0) is at most 1).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from typing import Any, Iterable

from truncfast import _config
from truncfast._errors import InputError, InstabilityWarning

__all__ = ["ON_INSTABILITY", "check_on_instability", "LossMonitor"]

#: Accepted values of ``integrate(..., on_instability=...)``.
ON_INSTABILITY = ("warn", "raise", "ignore")


def check_on_instability(value: Any) -> str:
    """``"warn"``, ``"raise"`` or ``"ignore"`` (InputError naming ``on_instability`` otherwise)."""
    if not isinstance(value, str) or value not in ON_INSTABILITY:
        raise InputError(f"on_instability: expected one of {', '.join(map(repr, ON_INSTABILITY))}, got {value!r}")
    return value


def suggested_dt(dt: float) -> float:
    """The step to try after an unstable or diverging run."""
    return min(dt / 2.0, 1.0)


class LossMonitor:
    """The instability test of one run; its state survives checkpoints (:meth:`state`)."""

    def __init__(self, mode: str, dt: float, scale2: float, state: dict | None = None):
        self.mode = mode
        self.dt = float(dt)
        self.floor = _config.DIVERGENCE_LOSS_FLOOR * float(scale2)
        self.best = math.inf
        self.prev = math.inf
        self.rises: deque = deque(maxlen=_config.INSTABILITY_WINDOW)
        self.nrises = 0  # sum(self.rises), kept as the window slides (observe runs once per step)
        self.event: dict | None = None
        if state:
            self.best = _from_json(state.get("best"))
            self.prev = _from_json(state.get("prev"))
            self.rises.extend(bool(x) for x in state.get("rises", []))
            self.nrises = int(sum(self.rises))
            self.event = state.get("event")

    def start(self, loss: float) -> None:
        """The loss at step 0 of a fresh run: the first "lowest so far"."""
        if math.isfinite(loss) and self.best == math.inf:
            self.best = self.prev = float(loss)

    def state(self) -> dict:
        """JSON-able state for a checkpoint (a resumed run then detects exactly what an uninterrupted one does)."""
        return {"best": _json_float(self.best), "prev": _json_float(self.prev), "rises": [int(x) for x in self.rises],
                "event": self.event}

    def observe(self, first_step: int, losses: Iterable[float]) -> dict | None:
        """Feed the losses after steps ``first_step, first_step + 1, …``; return the first event
        of the run if it happens among them (once per run), else None."""
        if self.mode == "ignore":
            return None
        found = None
        rises, window = self.rises, self.rises.maxlen
        rise_f, growth_f = 1.0 + _config.INSTABILITY_RISE_RTOL, 1.0 + _config.INSTABILITY_GROWTH_RTOL
        need, floor, isfinite = _config.INSTABILITY_RISES, self.floor, math.isfinite
        for i, loss in enumerate(losses):
            loss = float(loss)
            if not isfinite(loss):
                continue  # non-finite losses are the divergence test's business
            rise = loss > self.prev * rise_f + floor
            if len(rises) == window:
                self.nrises -= rises[0]
            rises.append(rise)
            self.nrises += rise
            if self.event is None and found is None:
                if loss > self.best * growth_f + floor:
                    found = {"step": first_step + i, "kind": "growth", "loss": loss, "best": self.best}
                elif self.nrises >= need:
                    found = {"step": first_step + i, "kind": "oscillation", "loss": loss, "best": self.best,
                             "rises": int(self.nrises)}
            if loss < self.best:
                self.best = loss
            self.prev = loss
        if found is not None:
            found["suggested_dt"] = suggested_dt(self.dt)
            found["message"] = self.message(found)
            self.event = found
        return found

    def message(self, ev: dict) -> str:
        dt = self.dt
        if ev["kind"] == "growth":
            what = f"rose from {ev['best']:.6g} (the lowest so far) to {ev['loss']:.6g}"
        else:
            what = (f"oscillates: it rose in {ev['rises']} of the last {_config.INSTABILITY_WINDOW} steps "
                    f"(now {ev['loss']:.6g}, lowest so far {ev['best']:.6g})")
        return (f"integrate: the loss {what} at step {ev['step']} (time {ev['step'] * dt:g}) with dt = {dt:g}. "
                "A gradient flow never increases its loss: the steps are unstable and the trajectory may not "
                f"follow the flow; use a smaller step, e.g. dt = {ev['suggested_dt']:g}")

    def warn(self, ev: dict) -> None:
        warnings.warn(ev["message"] + " (on_instability='raise' makes this an error, 'ignore' silences it)",
                      InstabilityWarning, stacklevel=4)


def _json_float(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def _from_json(x: Any) -> float:
    return math.inf if x is None else float(x)
