"""How a run that stops early hands back what it has (both loops: ``run.Run`` and ``adaptive.StepRun``).

Ctrl-C writes a last checkpoint and re-raises ``KeyboardInterrupt`` with the
partial trajectory attached (``exc.trajectory``) and a note saying where it
stopped; a :class:`SeparationError` gets the trajectory and the step too.
"""

from __future__ import annotations

import math
from typing import Any

from truncfast import _config
from truncfast._errors import DivergenceError

__all__ = ["on_interrupt", "on_separation", "loss_trouble", "divergence_error"]


def on_interrupt(exc: BaseException, run: Any, where: str) -> None:
    """Checkpoint ``run`` and attach its partial trajectory and a note to the ``KeyboardInterrupt``."""
    run.write_checkpoint()
    exc.trajectory = run.trajectory()  # type: ignore[attr-defined]
    note = f"truncfast.integrate interrupted at {where}; the partial trajectory is in exc.trajectory"
    if run.checkpoint is not None:
        note += f"; checkpoint written to {run.checkpoint!r} (continue with truncfast.resume)"
    if hasattr(exc, "add_note"):
        exc.add_note(note)


def on_separation(exc: BaseException, run: Any, step: int) -> None:
    """Attach ``run``'s trajectory and the step to a :class:`SeparationError` raised during it."""
    exc.trajectory = run.trajectory()  # type: ignore[attr-defined]
    exc.step = step  # type: ignore[attr-defined]


def loss_trouble(loss: float, loss_limit: float) -> str:
    """What went wrong with the loss of a diverging step, for the DivergenceError message."""
    if not math.isfinite(loss):
        return f"became {float(loss)!r}"
    if loss > loss_limit:
        return (f"grew to {float(loss)!r}, more than {_config.DIVERGENCE_LOSS_FACTOR:g} × its reference "
                f"{loss_limit / _config.DIVERGENCE_LOSS_FACTOR:.6g} (a gradient flow never increases its loss),")
    return f"is {float(loss)!r} but the gradient became non-finite"


def divergence_error(message: str, step: int, loss: float, suggested: float, trajectory: Any) -> DivergenceError:
    """The DivergenceError of a run, carrying ``step``, ``loss``, ``suggested_dt`` and the partial ``trajectory``."""
    err = DivergenceError(message)
    err.step = step  # type: ignore[attr-defined]
    err.loss = loss  # type: ignore[attr-defined]
    err.suggested_dt = suggested  # type: ignore[attr-defined]
    err.trajectory = trajectory  # type: ignore[attr-defined]
    return err
