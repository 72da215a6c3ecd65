"""Truncation maps and sector codes (docs/theory.md §§2, 4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from truncfast import _config
from truncfast._errors import InputError
from truncfast._flow.problem import state_and_data
from truncfast._validate import check_forward_magnitude, check_results_finite, forward_magnitude

__all__ = ["truncate", "sector_codes"]


def truncate(R: Any, b: Any, X: Any, *, backend: str = "auto") -> np.ndarray:
    """Apply the composed truncation map τ^(L) to every row of X.

    ``τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0)`` (docs/theory.md §4) is the Euclidean
    projection onto the cone ``{R_ℓ z + b_ℓ ≥ 0}``; ``τ^(L) = τ_L ∘ ⋯ ∘ τ_1``.

    Parameters
    ----------
    R : (L, M, M) orthogonal, b : (L, M), X : (N, M)
    backend : "auto", "numpy", "numba" or "c"

    Returns
    -------
    (N, M) float64, a new array; a lazy dask array, chunked like X's rows, when
    X is a dask array (docs/distributed.md).
    """
    bk, R, b, X = state_and_data(R, b, X, backend)
    with np.errstate(all="ignore"):  # an overflow is reported below, not as RuntimeWarnings
        out = bk.truncate(R, b, X)
    L, M = b.shape
    check_results_finite("truncate", [out], dict(X=X, b=b), X.shape[0], M, scaled="X and b",
                         bound=forward_magnitude(M, L), formula="max float64 / (2·sqrt(M)·(2L + 3))")
    return out


def sector_codes(R: Any, b: Any, X: Any, *, backend: str = "auto") -> np.ndarray:
    """Sector code of every point at every layer, along the composition (docs/theory.md §2).

    Entry ``[n, ℓ]`` is a uint64 whose bit i is ``h_ℓ,i = H((R_ℓ z_{ℓ-1} + b_ℓ)_i)``
    with ``z_{ℓ-1} = τ^(ℓ-1)(x_n)`` and ``H(0) = 0``: the activation pattern of
    the point in hidden layer ℓ.  All bits set = untruncated, none = fully
    truncated.  Needs M ≤ 64.  A dask X gives a lazy dask array (docs/distributed.md).
    """
    bk, R, b, X = state_and_data(R, b, X, backend)
    M = R.shape[1]
    if M > _config.MAX_CODE_WIDTH:
        raise InputError(f"R: sector codes are uint64 bitmasks and need M ≤ {_config.MAX_CODE_WIDTH}, got M = {M}")
    # an overflowing pre-activation would silently read as "truncated": refuse such data up front
    check_forward_magnitude("sector_codes", b, X)
    return bk.codes(R, b, X)
