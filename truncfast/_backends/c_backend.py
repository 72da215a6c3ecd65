"""The C core through cffi (``truncfast._kernels.ccore``): same algorithm and bits as Numba,
no JIT latency; optional (``BackendUnavailable`` when it was not built)."""

from __future__ import annotations

from truncfast import _config
from truncfast._backends.local import LocalBackend, normalise
from truncfast._kernels import ccore as _c

__all__ = ["CBackend"]


class CBackend(LocalBackend):
    name = "c"
    # The moments engine runs the Numba pattern kernels here too (same bits as
    # the C ones): measured at N = 10⁶ the Numba full pass was 1.3–2× faster,
    # and the engine's many tiny calls (assembly of a few groups, re-checks of a
    # few points) would each wake OpenMP threads that then spin against the
    # Numba pool on a busy machine (docs/DESIGN.md, "Engines").
    pattern_kernels = "numba"

    def __init__(self):
        if not _c.available():
            raise ImportError(_c.unavailable_reason())

    def truncate(self, R, b, X):
        return _c.truncate(R, b, X, _config.CHUNK_SIZE)

    def codes(self, R, b, X):
        return _c.codes(R, b, X, _config.CHUNK_SIZE)

    def general(self, R, b, X, labels, T, W, bout, Y, standard, want_grad):
        out = _c.general(R, b, X, labels, T, W, bout, Y, standard, want_grad, _config.CHUNK_SIZE)
        return normalise(X.shape[0], *out, standard)

    def moments(self, R, b, X, labels, Q):
        return _c.moments(R, b, X, labels, Q, _config.CHUNK_SIZE)

    def moments_box(self, R, b, X, labels, Q):
        return _c.moments_box(R, b, X, labels, Q, _config.CHUNK_SIZE)

    def violations(self, R, b, X, labels, Q):
        return _c.violations(R, b, X, labels, Q, _config.CHUNK_SIZE)

    def unaligned_forward(self, W, b, X, want_codes):
        return _c.unaligned_forward(W, b, X, want_codes, _config.CHUNK_SIZE)

    def unaligned_general(self, W, b, X, labels, T, want_grad):
        loss, gb, gW = _c.unaligned_general(W, b, X, labels, T, want_grad, _config.CHUNK_SIZE)
        N = X.shape[0]
        return loss / N, gb / N, gW / N
