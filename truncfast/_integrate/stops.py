"""How a run that stops early hands back what it has (both loops: ``run.Run`` and ``adaptive.StepRun``).

Ctrl-C writes a last checkpoint and re-raises ``KeyboardInterrupt`` with the
partial trajectory attached (``exc.trajectory``) and a note saying where it
stopped; a :class:`SeparationError` gets the trajectory and the step too.
"""

from __future__ import annotations

from typing import Any

__all__ = ["on_interrupt", "on_separation"]


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
