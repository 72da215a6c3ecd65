"""The NumPy reference backend: readable, chunked, the oracle the others are checked against.

Kernels in ``truncfast._kernels.reference`` (docs/theory.md §§2, 5, 6) and
``unaligned_reference`` (§13).
"""

from __future__ import annotations

import numpy as np

from truncfast._backends.local import LocalBackend
from truncfast._kernels import reference as _ref
from truncfast._kernels import unaligned_reference as _uref

__all__ = ["NumpyBackend"]


class NumpyBackend(LocalBackend):
    name = "numpy"

    def truncate(self, R, b, X):
        return _ref.truncate(R, b, X)

    def codes(self, R, b, X):
        return _ref.sector_codes(R, b, X)

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        if standard:
            return _ref.general(R, b, X, labels, None, W, bout, Y)
        return _ref.general(R, b, X, labels, T)

    def moments(self, R, b, X, labels, Q):
        return _ref.separated_moments(R, b, X, labels, Q)[1:]

    def moments_box(self, R, b, X, labels, Q):
        counts, S0, S1, S2 = _ref.separated_moments(R, b, X, labels, Q)
        return (S0, S1, S2, counts, *_ref.separated_box(R, X, labels, Q))

    def violations(self, R, b, X, labels, Q):
        return _ref.separation_violations(R, b, X, labels, Q)

    def unaligned_forward(self, W, b, X, want_codes):
        return _uref.sector_codes(W, b, X) if want_codes else _uref.truncate(W, b, X)

    def unaligned_general(self, W, b, X, labels, T, want_grad):
        loss, gb, gW = _uref.general(W, b, X, labels, T)
        if not want_grad:
            gb, gW = np.zeros_like(gb), np.zeros_like(gW)
        return loss, gb, gW
