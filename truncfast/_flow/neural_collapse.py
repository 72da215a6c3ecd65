"""Neural-collapse metrics NC1–NC4 (Papyan, Han and Donoho 2020) of a set of features (NumPy).

For features h_n (N, M) with classes y_n ∈ {0..C−1} (all present), class means
μ_c, global mean μ_G = (1/N) Σ_n h_n, centred means μ̃_c = μ_c − μ_G:

    Σ_W = (1/N) Σ_n (h_n − μ_{y_n})(h_n − μ_{y_n})ᵀ,      Σ_B = (1/C) Σ_c μ̃_c μ̃_cᵀ,
    NC1 = (1/C) tr(Σ_W Σ_B⁺)                                   within-class variability collapse
    NC2 equinorm     = std_c |μ̃_c| / mean_c |μ̃_c|              class means of equal length
    NC2 equiangular  = std_{c≠c'} cos(μ̃_c, μ̃_c')               equal angles
    NC2 max-angle    = mean_{c≠c'} |cos(μ̃_c, μ̃_c') + 1/(C−1)|  the simplex ETF's angle
    NC3 = ‖ W̃/‖W̃‖_F − M̃/‖M̃‖_F ‖_F²                            self-duality of classifier and means
    NC4 = (1/N) #{n : ŷ_n ≠ argmin_c |h_n − μ_c|}               the classifier is nearest-class-centre

(std and mean are population statistics over the C classes, resp. the C(C−1)
ordered pairs).  M̃ stacks the μ̃_c as rows, W̃ the classifier's rows w_c minus
their class-size weighted mean Σ_c (N_c/N) w_c (an affine classifier's
decisions do not change when one vector is subtracted from every row, and with
this centring NC3 = 0 when the features collapse onto the rows w_c themselves).
For the effective flow the classifier is nearest-target, w_c = ỹ_c (h = τ^(L)(x));
for a network trained on squared loss to outputs y_c through an output layer
(W_{L+1}, b_{L+1}) it is the nearest-output rule, whose linear part on the last
hidden layer has rows w_c = W_{L+1}ᵀ y_c.  NC1–NC3 → 0 and NC4 → 0 at neural
collapse; undefined values (C < 2, zero-length means) are NaN.
"""

from __future__ import annotations

import numpy as np

from truncfast import _config
from truncfast._arrays import as_host_array
from truncfast._errors import InputError
from truncfast._validate import as_float_array, as_labels, check_finite

__all__ = ["neural_collapse", "nearest_target", "NC_KEYS"]

#: The keys of :func:`neural_collapse`'s result, in order.
NC_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3", "nc4")


def neural_collapse(features, labels, classifier=None, predictions=None) -> dict[str, float]:
    """NC1–NC4 of ``features`` (N, M) with ``labels`` (N,) in 0..C−1 (module docstring).

    ``classifier`` (C, M): rows w_c (needed for NC3, NaN without it);
    ``predictions`` (N,): the model's class of every point (needed for NC4).
    Classes are 0..max(labels); an empty class gives NaN everywhere.
    """
    H = as_float_array("features", features, 2)
    check_finite("features", H)
    N, M = H.shape
    if N == 0:
        raise InputError("features: has no rows (N = 0)")
    raw = as_host_array(labels, "labels")
    C = int(raw.max()) + 1 if raw.dtype.kind in "iu" and raw.size and raw.max() >= 0 else 1
    y = as_labels(labels, N, max(C, 1), Q_name="labels")
    Wc = pred = None
    if classifier is not None:
        Wc = as_float_array("classifier", classifier, 2, (C, M))
        check_finite("classifier", Wc)
    if predictions is not None:
        pred = as_host_array(predictions, "predictions")
        if pred.dtype.kind not in "iu" or pred.shape != (N,):
            raise InputError(f"predictions: expected ({N},) integers, got {_kind(pred)} of shape {pred.shape}")
    out = dict.fromkeys(NC_KEYS, float("nan"))
    sizes = np.bincount(y, minlength=C).astype(np.float64)
    if C < 2 or np.any(sizes == 0):
        return out
    mu = np.zeros((C, M))
    np.add.at(mu, y, H)
    mu /= sizes[:, None]
    mu_g = H.mean(axis=0)
    Mt = mu - mu_g
    D = H - mu[y]
    Sw = D.T @ D / N
    Sb = Mt.T @ Mt / C
    out["nc1"] = float(np.trace(Sw @ np.linalg.pinv(Sb, rcond=_config.NC_PINV_RCOND, hermitian=True)) / C)
    norms = np.linalg.norm(Mt, axis=1)
    if np.all(norms > 0):
        out["nc2_equinorm"] = float(norms.std() / norms.mean())
        U = Mt / norms[:, None]
        cos = (U @ U.T)[~np.eye(C, dtype=bool)]
        out["nc2_equiangular"] = float(cos.std())
        out["nc2_maxangle"] = float(np.mean(np.abs(cos + 1.0 / (C - 1))))
    if Wc is not None:
        Wt = Wc - (sizes / N) @ Wc
        nw, nm = np.linalg.norm(Wt), np.linalg.norm(Mt)
        if nw > 0 and nm > 0:
            out["nc3"] = float(np.sum((Wt / nw - Mt / nm) ** 2))
    if pred is not None:
        out["nc4"] = float(np.mean(pred != _nearest(H, mu)))
    return out


def _kind(a) -> str:
    return f"dtype {a.dtype}"


def _nearest(H: np.ndarray, mu: np.ndarray, rows: int = 1 << 14) -> np.ndarray:
    """argmin_c |h − μ_c| in bounded row blocks."""
    out = np.empty(H.shape[0], dtype=np.int64)
    for s in range(0, H.shape[0], rows):
        d2 = ((H[s:s + rows, None, :] - mu[None]) ** 2).sum(axis=2)
        out[s:s + rows] = np.argmin(d2, axis=1)
    return out


def nearest_target(features, targets) -> np.ndarray:
    """argmin_c |h_n − ỹ_c| for every row (the effective flow's classifier)."""
    return _nearest(np.asarray(features, dtype=np.float64), np.asarray(targets, dtype=np.float64))
