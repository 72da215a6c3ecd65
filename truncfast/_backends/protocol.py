"""The one contract every backend implements (docs/DESIGN.md, "Backends").

The flow (``truncfast._flow``) and the integrator (``truncfast._integrate.api.api``)
talk to the data only through these operations, so a new backend is one new
file: a subclass of :class:`Backend` registered in ``registry``.  Every
backend runs the same mathematics (docs/theory.md §§2, 5, 6) and the local
ones agree to 1e-12 relative (bitwise for ``numba`` and ``c`` with M < 32).

Arrays handed to the kernel operations have passed the backend's own
``prepare_*`` (for in-memory backends: C-contiguous float64 data, int64
labels; for dask: prepared dask arrays) and R, b, targets, W_out, b_out, Y
are validated C-contiguous float64 NumPy arrays.  Kernel operations never
validate the small arguments and never modify any input.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from truncfast._errors import BackendUnavailable

__all__ = ["Backend", "UNTRUNCATED", "PARTIAL", "FULL"]

#: Categories of the truncation counts ``counts[ℓ, j, c]`` (docs/theory.md §2).
UNTRUNCATED, PARTIAL, FULL = 0, 1, 2


class Backend(abc.ABC):
    """What the flow needs from a place where the data live and kernels run."""

    #: Registry name (``"numpy"``, ``"numba"``, ``"c"``, ``"dask"``).
    name: ClassVar[str]

    # ------------------------------------------------- data at the boundary ---
    @abc.abstractmethod
    def prepare_X(self, X: Any, M: int) -> Any:
        """Check the data ``X`` (N, M) and return it in the form the kernels read.

        Raises :class:`truncfast.InputError` naming ``X`` (shape, dtype, no
        rows, NaN/inf and where).  Never modifies ``X``; copies only to convert.
        """

    @abc.abstractmethod
    def prepare_labels(self, labels: Any, X: Any, Q: int, Q_name: str = "targets") -> Any:
        """Check ``labels`` (N,) integers in 0..Q-1 against the prepared ``X``."""

    def persist(self, X: Any, labels: Any) -> tuple[Any, Any]:
        """Place the data once before a run of many evaluations (dask: persist on the workers)."""
        return X, labels

    def run_settings(self, X: Any) -> dict:
        """Extra entries for ``Trajectory.settings`` describing where a run's data live."""
        return {}

    @abc.abstractmethod
    def digest(self, X: Any, labels: Any, targets: np.ndarray) -> str:
        """sha256 of the data (a checkpoint resumes only on the same data).

        The same bytes on every backend: float64 rows of X, int64 labels,
        targets (``digest.data_digest``), so a checkpoint moves between
        backends and between in-memory and dask data.
        """

    # ------------------------------------------------------------- kernels ---
    @abc.abstractmethod
    def truncate(self, R: np.ndarray, b: np.ndarray, X: Any) -> Any:
        """τ^(L)(x) for every row (N, M) (docs/theory.md §2, §4)."""

    @abc.abstractmethod
    def codes(self, R: np.ndarray, b: np.ndarray, X: Any) -> Any:
        """Sector codes along the composition, (N, L) uint64 (M ≤ 64; docs/theory.md §2)."""

    @abc.abstractmethod
    def general(self, R, b, X, labels, T, W, bout, Y, standard: bool, want_grad: bool):
        """The per-point kernel of docs/theory.md §5.

        Returns ``(loss, grad_b, omega, grad_W, grad_bout)`` divided by N, omega
        antisymmetric; the last two are None unless ``standard`` (the standard
        loss with output layer ``W``, ``bout``, reference outputs ``Y``; else
        the Euclidean loss with targets ``T``).
        """

    @abc.abstractmethod
    def moments_box(self, R, b, X, labels, Q: int):
        """Raw separated moments and boxes in one pass (docs/theory.md §6).

        ``(S0 (Q, M), S1 (Q, M, M), S2 (Q, M, M), counts (Q,), lo (Q, M), hi (Q, M))``:
        cluster j's constrained sums at its own layer j, its size, and the
        extent of its points in its own frame ``v = R_j x``.
        """

    def moments(self, R, b, X, labels, Q: int):
        """``(S0, S1, S2)`` of :meth:`moments_box`."""
        return self.moments_box(R, b, X, labels, Q)[:3]

    @abc.abstractmethod
    def separation(self, R, b, X, labels, Q: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact separation check of docs/theory.md §6 (needs L == Q).

        Returns ``(sizes (Q,) float64, violations (Q, L) int64)``: the cluster
        sizes and, for every cluster j and layer ℓ ≠ j, how many points of j
        layer ℓ truncates along the composition.
        """

    @abc.abstractmethod
    def counts(self, R, b, X, labels, Q: int) -> np.ndarray:
        """(L, Q, 3) int64: untruncated / partially / fully truncated points of
        cluster j at layer ℓ along the composition (M ≤ 64)."""

    @abc.abstractmethod
    def rows_of(self, X: Any, labels: Any, j: int) -> np.ndarray:
        """The rows of cluster j, in row order, as an in-memory float64 array (N_j, M)."""

    # ------------------------------------------ unaligned weights (§13) ---
    # Optional: general invertible cumulative weights W (docs/theory.md §13).  The
    # in-memory backends implement both; a backend that does not raises
    # BackendUnavailable naming the ones that do (dask data: docs/distributed.md).
    def unaligned_forward(self, W: np.ndarray, b: np.ndarray, X: Any, want_codes: bool) -> Any:
        """τ^(L)(x) (N, M), or the sector codes (N, L) uint64 (M ≤ 64), with ``τ_ℓ(z) =
        W_ℓ⁻¹(σ(W_ℓ z + b_ℓ) − b_ℓ)`` (docs/theory.md §13).  W is validated and invertible."""
        raise BackendUnavailable(self._no_unaligned())

    def unaligned_general(self, W: np.ndarray, b: np.ndarray, X: Any, labels: Any, T: np.ndarray,
                          want_grad: bool) -> tuple[float, np.ndarray, np.ndarray]:
        """``(loss, grad_b (L, M), grad_W (L, M, M))`` of C_E in (W, b), divided by N
        (docs/theory.md §13); the gradients are zero unless ``want_grad``."""
        raise BackendUnavailable(self._no_unaligned())

    def _no_unaligned(self) -> str:
        return (f"backend {self.name!r} does not run unaligned weights (truncfast.unaligned, docs/theory.md §13); "
                "use backend='numpy', 'numba' or 'c' with in-memory data")

    # ------------------------------------------- pattern form (§11), optional ---
    #: Name of the pattern kernels (``_kernels.pattern_state``, its ``backend=``)
    #: that run on this backend's data, or None: the engines ``"moments"`` and
    #: ``"auto"`` (``_flow.engines``) then evaluate per point, like ``"direct"``.
    pattern_kernels: ClassVar[str | None] = None

    def pattern_pass(self, R, b, X, labels, Q: int, max_groups: int | None):
        """Groups of (pattern, label) with count, mean, scatter, and every point's margin (docs/theory.md §11).

        A ``pattern_state.PatternState`` exact at (R, b), or None beyond
        ``max_groups`` groups.  The state belongs to one caller (not thread-safe).
        """
        raise NotImplementedError(f"backend {self.name!r} has no pattern kernels")

    def pattern_at_risk(self, state, R, b, limit: int | None):
        """Sorted indices of the points whose pattern the bound of §11 cannot certify at (R, b);
        None when more than ``limit`` (then a new pass is cheaper)."""
        raise NotImplementedError(f"backend {self.name!r} has no pattern kernels")

    def pattern_recheck(self, state, idx, R, b, X, labels) -> int:
        """New forward pass of the points ``idx`` at (R, b), moving those whose pattern changed;
        returns how many moved."""
        raise NotImplementedError(f"backend {self.name!r} has no pattern kernels")

    def pattern_assemble(self, state, R, b, targets, counts=None):
        """``(loss, grad_b, omega)`` of the Euclidean loss from the groups, divided by N (§11);
        ``counts`` replaces the groups' counts (0 leaves a group out)."""
        raise NotImplementedError(f"backend {self.name!r} has no pattern kernels")

    def pattern_counts(self, state) -> np.ndarray:
        """(L, Q, 3) truncation counts from the groups (as :meth:`counts`)."""
        raise NotImplementedError(f"backend {self.name!r} has no pattern kernels")

    # -------------------------------------------------- compiled step loop ---
    def runs_compiled_loop(self, N: int, form: str, method_code: int | None) -> bool:
        """True when a whole chunk of integrator steps can run in compiled code here."""
        return False
