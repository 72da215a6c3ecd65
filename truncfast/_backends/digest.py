"""The data digest of checkpoints: one byte layout for every backend.

sha256 over ``(dtype str, shape)`` of each array followed by the bytes of its
row pieces in order: one piece for in-memory data, the blocks of a dask array
one after another — the same digest for the same data wherever they live.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

__all__ = ["digest_pieces", "data_digest"]


def digest_pieces(arrays: Iterable[tuple[str, tuple, Iterable[np.ndarray]]]) -> str:
    """sha256 over ``(dtype str, shape, pieces)`` per array, pieces in row order."""
    h = hashlib.sha256()
    for dtype, shape, pieces in arrays:
        h.update(repr((dtype, tuple(shape))).encode())
        for piece in pieces:
            h.update(memoryview(np.ascontiguousarray(piece)).cast("B"))
    return h.hexdigest()


def data_digest(X: np.ndarray, labels: np.ndarray, targets: np.ndarray) -> str:
    """sha256 of validated in-memory data (float64 X, int64 labels, float64 targets)."""
    return digest_pieces((a.dtype.str, a.shape, [a]) for a in (X, labels, targets))
