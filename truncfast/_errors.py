"""Exceptions raised at truncfast's API boundary (see docs/api.md)."""

from __future__ import annotations

__all__ = ["InputError", "SeparationError", "BackendUnavailable", "DivergenceError", "InstabilityWarning",
           "StepSizeError"]


class InputError(ValueError):
    """Bad input: the message names the argument and what is wrong with it."""


class SeparationError(ValueError):
    """The cluster-separation assumption of docs/theory.md §6 does not hold.

    Attributes
    ----------
    violations : list of (cluster, layer, count)
        Every (cluster j, layer ℓ ≠ j) pair in which ``count`` points of cluster j
        are truncated by τ_ℓ although the separated form needs τ_ℓ to act as the
        identity on them.
    """

    def __init__(self, message: str, violations: list[tuple[int, int, int]]):
        super().__init__(message)
        self.violations = violations


class BackendUnavailable(RuntimeError):
    """A backend was requested by name but cannot run here (the message says why)."""


class DivergenceError(FloatingPointError):
    """An integration step produced a non-finite or exploding loss."""


class InstabilityWarning(RuntimeWarning):
    """``integrate``: the loss rose or oscillated — the steps are unstable (a gradient flow never
    increases its loss); the message suggests a smaller dt (``_integrate.monitor``)."""


class StepSizeError(FloatingPointError):
    """An adaptive run needed a step below ``_config.ADAPTIVE_MIN_STEP`` × max(|t|, t1).

    The error estimate could not be brought under the tolerance (a tolerance
    below rounding, or a right-hand side that jumps back and forth there).
    Attributes like :class:`DivergenceError`: ``trajectory`` (the run up to the
    last accepted step), ``step`` (accepted steps so far), ``time`` and ``h``
    (the step size that underflowed).
    """
