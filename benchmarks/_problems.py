"""Benchmark problems: random data and cluster-separated data."""

from __future__ import annotations

import numpy as np


def random_rotations(rng: np.random.Generator, L: int, M: int) -> np.ndarray:
    """Haar-distributed orthogonal matrices (QR of a Gaussian, signs fixed)."""
    A = rng.standard_normal((L, M, M))
    Qm, Rm = np.linalg.qr(A)
    return Qm * np.sign(np.einsum("lii->li", Rm))[:, None, :]


def random_problem(N: int, M: int, L: int, Q: int | None = None, seed: int = 0):
    """Gaussian data, Haar rotations, biases of scale 0.5: most points partially truncated."""
    rng = np.random.default_rng(seed)
    Q = L if Q is None else Q
    R = random_rotations(rng, L, M)
    b = 0.5 * rng.standard_normal((L, M))
    X = rng.standard_normal((N, M))
    labels = rng.integers(0, Q, N)
    targets = rng.standard_normal((Q, M))
    return R, b, X, labels, targets
