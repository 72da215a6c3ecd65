"""Time-stepping solvers: small objects, one per file, registered here by name (docs/theory.md §9)."""

from __future__ import annotations

from truncfast._integrate.solvers.base import Solver
from truncfast._integrate.solvers.bs3 import BS3
from truncfast._integrate.solvers.cayley import Cayley
from truncfast._integrate.solvers.exp_euler import ExpEuler
from truncfast._integrate.solvers.heun import Heun
from truncfast._integrate.solvers.lie_euler import LieEuler

__all__ = ["SOLVERS", "Solver"]

#: Every solver by its ``method`` name.
SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (LieEuler, Cayley, ExpEuler, Heun, BS3)}
