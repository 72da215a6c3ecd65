"""Arguments of the flow at the API boundary: validated, with the backend that will run them.

Every public function of the flow starts here, whatever the backend: the
small arguments (R, b, targets, the output layer) are checked by
``truncfast._validate``, the data by the backend that holds them
(``Backend.prepare_X`` / ``prepare_labels``: eagerly for in-memory data,
from metadata and then in the first map for dask).  Dask data select the dask
backend (``registry.select``); there is no other fork.  The order of the
checks is the order of the arguments, so the first bad one is named.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from truncfast._backends.protocol import Backend
from truncfast._backends.registry import select
from truncfast._errors import InputError
from truncfast._validate import check_output_layer, check_state, check_targets

__all__ = ["Euclid", "Standard", "euclid_args", "state_and_data", "standard_args"]


class Euclid(NamedTuple):
    """A validated Euclidean-loss problem (docs/theory.md §3) and its backend."""

    bk: Backend
    R: np.ndarray
    b: np.ndarray
    X: Any
    labels: Any
    targets: np.ndarray


class Standard(NamedTuple):
    """A validated standard-loss problem (docs/theory.md §3) and its backend."""

    bk: Backend
    R: np.ndarray
    b: np.ndarray
    X: Any
    labels: Any
    W_out: np.ndarray
    b_out: np.ndarray
    Y: np.ndarray


def state_and_data(R: Any, b: Any, X: Any, backend: str) -> tuple[Backend, np.ndarray, np.ndarray, Any]:
    """``(bk, R, b, X)``: the state (R orthogonal, b) and the data, checked."""
    R, b = check_state(R, b)
    L, M = b.shape
    bk = select(backend, X, M=M, L=L, N=rows_hint(X))
    return bk, R, b, bk.prepare_X(X, M)


def euclid_args(R: Any, b: Any, X: Any, labels: Any, targets: Any, backend: str, *, loop: bool = False) -> Euclid:
    """Validate ``(R, b, X, labels, targets)`` and pick the backend (``loop``: for a whole integration)."""
    if labels is None or targets is None:
        raise InputError("labels and targets must be given together")
    R, b = check_state(R, b)
    L, M = b.shape
    bk = select(backend, X, M=M, L=L, N=rows_hint(X), loop=loop)
    X = bk.prepare_X(X, M)
    targets = check_targets(targets, M)
    labels = bk.prepare_labels(labels, X, targets.shape[0])
    return Euclid(bk, R, b, X, labels, targets)


def standard_args(R: Any, b: Any, X: Any, labels: Any, W_out: Any, b_out: Any, Y: Any, backend: str) -> Standard:
    """Validate the arguments of the standard loss (output layer ``W_out`` (P, M), ``b_out`` (P,), ``Y`` (Q, P))."""
    R, b = check_state(R, b)
    L, M = b.shape
    bk = select(backend, X, M=M, L=L, N=rows_hint(X))
    X = bk.prepare_X(X, M)
    W_out, b_out, Y = check_output_layer(M, W_out, b_out, Y)
    labels = bk.prepare_labels(labels, X, Y.shape[0], Q_name="Y")
    return Standard(bk, R, b, X, labels, W_out, b_out, Y)


def rows_hint(X: Any) -> int | None:
    """N when X says it cheaply (for size-dependent backend choices), else None."""
    shape = getattr(X, "shape", None)
    try:
        return int(shape[0]) if shape else None
    except (TypeError, ValueError, IndexError):
        return None
