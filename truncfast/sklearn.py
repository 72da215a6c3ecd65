"""scikit-learn front end: a classifier trained by the effective gradient flow.

:class:`TruncationFlowClassifier` learns the state (R, b) of L aligned ReLU
layers of width M (the number of features) by integrating the effective
gradient flow of the Euclidean loss (docs/theory.md §§3, 5, 9) with
:func:`truncfast.integrate`, and classifies a point by the class target
nearest to its image τ^(L)(x) under the learned truncation map.

Targets (the documented choice).  Class j's target is its class mean
``ỹ_j = μ_j`` — the pulled-back label of an identity output layer
(``W_out = I``, ``b_out = 0``, labels ``y_j = μ_j``; docs/theory.md §3).  Why
means rather than one-hot labels through a fixed output layer:

* τ^(L) is a composition of projections onto cones (§4), a contraction that
  can only move points *towards* the layers' cones, never push classes apart.
  Targets must therefore sit where the classes already are: at τ = identity
  the classifier is the nearest-centroid rule, and the flow improves on it by
  collapsing each class towards its mean (Prop. 4.2).  With one-hot targets
  W_out⁺ e_j of a fixed output layer, the targets are unrelated to the data's
  geometry (min-norm preimages in the span of W_out's rows), the first part of
  the flow is spent moving clusters across space, and a poor W_out cannot be
  repaired (the output layer is frozen in C_E).
* The loss C_E with class-mean targets is the within-class scatter of the
  transformed data, a quantity that is meaningful on its own.

Initial state.  Layer ℓ serves class ℓ mod Q: its cone's apex −R_ℓᵀ b_ℓ sits at
that class's mean, so the class is partially truncated and the flow has work
to do (as :func:`truncfast.data.make_problem` does for real data);
``init="toward"`` takes the frames of :func:`truncfast.data.toward_frames`
(the cone opens towards the other classes, so they are truncated as little as
the geometry allows), ``init="random"`` Haar-random frames from
``random_state``.  Random frames truncate other classes heavily and often do
worse (measured on blobs and digits); "toward" is the default and uses no
randomness.

Units.  The flow runs on the normalised data ``x' = (x − c)/s`` (c the mean of
the data, s the root-mean-square distance of a point to its class mean), so the
loss at τ = identity is ½ and ``dt`` means the same for data of any scale.
The family of maps is invariant under this change: the fitted state is
expressed in the input coordinates, ``R_`` unchanged and
``b_ = s b' − R_ c`` (``τ_ℓ(x) = x − R_ℓᵀ min(R_ℓ x + b_ℓ, 0)`` then equals
``c + s τ'_ℓ((x − c)/s)``), so :meth:`transform` is τ^(L) on the data as given.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from truncfast._data.generators import toward_frames
from truncfast._flow import gradient as _gradient
from truncfast._flow import truncation as _truncation
from truncfast._integrate import api as _integrate

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, OneToOneFeatureMixin, TransformerMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"truncfast.sklearn needs scikit-learn ≥ 1.6 ({exc}); install it with: pip install \"scikit-learn>=1.6\""
    ) from None

__all__ = ["EXPECTED_FAILED_CHECKS", "TruncationFlowClassifier"]

#: Checks of ``sklearn.utils.estimator_checks`` that cannot apply to this
#: estimator, with the reason (passed as ``expected_failed_checks`` in
#: tests/test_sklearn_frontend.py).  Empty: every check passes.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}

_METHODS = ("lie-euler", "cayley", "exp-euler")
_INITS = ("toward", "random")
_OWN_KEYS = {"dt", "steps", "method", "train_weights", "train_biases", "backend"}


def _haar(rng: np.random.Generator, L: int, M: int) -> np.ndarray:
    """Haar-random orthogonal matrices (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((L, M, M)))
    return q * np.sign(np.einsum("lii->li", r))[:, None, :]


class TruncationFlowClassifier(ClassifierMixin, TransformerMixin, OneToOneFeatureMixin, BaseEstimator):
    """Classifier whose hidden layers are trained by the effective gradient flow (docs/theory.md §§3–9).

    ``fit(X, y)`` integrates the flow of C_E = 1/(2N) Σ |τ^(L)(x_n) − μ_{y_n}|²
    (class means as targets, see the module docstring) from the initial state
    given by ``init``; ``predict`` returns the class whose mean is nearest to
    τ^(L)(x); ``decision_function`` is minus the squared distances (for two
    classes, the difference ``|τ(x) − μ_0|² − |τ(x) − μ_1|²``, positive for
    ``classes_[1]``); ``transform`` is τ^(L) itself, a map of R^M onto R^M.

    Parameters
    ----------
    n_layers : int or None, default=None
        L, the number of layers; None = one per class (the paper's L = Q).
    dt : float, default=0.5
        Step of the integrator, in the normalised units of the module docstring.
    steps : int, default=100
        Number of steps (flow time ``steps·dt``).
    method : {"lie-euler", "cayley", "exp-euler"}, default="lie-euler"
        As in :func:`truncfast.integrate`.
    init : {"toward", "random"}, default="toward"
        Initial frames (module docstring).
    train_weights, train_biases : bool, default=True
        Freeze R or b.
    backend : str, default="auto"
        As in :func:`truncfast.gradient`; used for fitting and prediction.
    random_state : int, numpy Generator/RandomState or None, default=None
        Seeds ``init="random"``; unused by ``init="toward"``.
    integrate_options : dict or None, default=None
        More keywords for :func:`truncfast.integrate` (e.g. ``record_every``,
        ``form``, ``engine`` where available); may not repeat the ones above.

    Attributes
    ----------
    classes_ : (Q,) array
    n_features_in_ : int
    feature_names_in_ : (M,) array of str, when X has feature names
    R_ : (L, M, M) array, b_ : (L, M) array
        The learned state, in input coordinates.
    targets_ : (Q, M) array
        Class means μ_j (the targets ỹ_j).
    center_ : (M,) array, scale_ : float
        c and s of the normalisation used while integrating.
    loss_ : float
        C_E at the end of the flow, in input units (normalised loss × s²).
    trajectory_ : truncfast.Trajectory
        The run, in normalised coordinates (records: first and last step
        unless ``integrate_options["record_every"]`` says otherwise).
    """

    def __init__(self, n_layers: int | None = None, dt: float = 0.5, steps: int = 100, method: str = "lie-euler",
                 init: str = "toward", train_weights: bool = True, train_biases: bool = True,
                 backend: str = "auto", random_state: Any = None, integrate_options: dict | None = None):
        self.n_layers = n_layers
        self.dt = dt
        self.steps = steps
        self.method = method
        self.init = init
        self.train_weights = train_weights
        self.train_biases = train_biases
        self.backend = backend
        self.random_state = random_state
        self.integrate_options = integrate_options

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64"]  # the kernels compute in float64
        return tags

    # ------------------------------------------------------------------ fit ---
    def _check_params(self) -> dict:
        if self.n_layers is not None and (not isinstance(self.n_layers, numbers.Integral)
                                          or isinstance(self.n_layers, bool) or self.n_layers < 1):
            raise ValueError(f"n_layers: expected None or an integer ≥ 1, got {self.n_layers!r}")
        if self.init not in _INITS:
            raise ValueError(f"init: expected one of {_INITS}, got {self.init!r}")
        if self.method not in _METHODS:
            raise ValueError(f"method: expected one of {_METHODS}, got {self.method!r}")
        if self.integrate_options is not None and not isinstance(self.integrate_options, dict):
            raise TypeError(f"integrate_options: expected a dict or None, got {type(self.integrate_options).__name__}")
        extra = dict(self.integrate_options or {})
        clash = sorted(_OWN_KEYS & set(extra))
        if clash:
            raise ValueError(f"integrate_options: {clash} are parameters of the estimator; set them there")
        return extra

    def fit(self, X, y):
        """Integrate the flow from the initial state towards the class means of ``(X, y)``."""
        extra = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        yi = np.ascontiguousarray(yi, dtype=np.int64)
        Q, M = len(self.classes_), X.shape[1]
        L = Q if self.n_layers is None else int(self.n_layers)

        means = np.zeros((Q, M))
        np.add.at(means, yi, X)
        means /= np.bincount(yi, minlength=Q)[:, None]
        center = X.mean(axis=0)
        scale = float(np.sqrt(np.mean(np.sum((X - means[yi]) ** 2, axis=1))))
        if not np.isfinite(scale) or scale <= 0.0:
            scale = 1.0  # every point on its class mean: nothing to learn, any unit will do
        Xn = (X - center) / scale
        Tn = (means - center) / scale

        if self.init == "toward":
            R0 = toward_frames(Tn, L)
        else:
            R0 = _haar(_generator(self.random_state), L, M)
        own = np.arange(L) % Q
        b0 = -np.einsum("lij,lj->li", R0, Tn[own])  # apex of layer ℓ at the mean of class ℓ mod Q

        steps = int(self.steps)
        extra.setdefault("record_every", max(steps, 1))
        traj = _integrate.integrate(R0, b0, Xn, yi, Tn, dt=self.dt, steps=steps, method=self.method,
                                    train_weights=self.train_weights, train_biases=self.train_biases,
                                    backend=self.backend, **extra)
        self.R_ = traj.R
        self.b_ = scale * traj.b - np.einsum("lij,j->li", traj.R, center)
        self.targets_ = means
        self.center_ = center
        self.scale_ = scale
        self.loss_ = float(traj.loss[-1]) * scale**2
        self.trajectory_ = traj
        return self

    # -------------------------------------------------------------- predict ---
    def transform(self, X):
        """τ^(L)(X): every row through the learned truncation maps (docs/theory.md §2), (n, M) float64."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return _truncation.truncate(self.R_, self.b_, X, backend=self.backend)

    def _sq_distances(self, X) -> np.ndarray:
        Z = self.transform(X)
        d = np.empty((Z.shape[0], self.targets_.shape[0]))
        for j, t in enumerate(self.targets_):  # (n, M) scratch per class, never (n, Q, M)
            diff = Z - t
            d[:, j] = np.einsum("ij,ij->i", diff, diff)
        return d

    def decision_function(self, X):
        """Minus the squared distance of τ^(L)(x) to each class mean, (n, Q); for Q = 2 the (n,) margin
        ``|τ(x) − μ_0|² − |τ(x) − μ_1|²`` (positive means ``classes_[1]``)."""
        check_is_fitted(self)
        d = self._sq_distances(X)
        if d.shape[1] == 2:
            return d[:, 0] - d[:, 1]
        return -d

    def predict(self, X):
        """The class whose mean is nearest to τ^(L)(x) (ties: the first class in ``classes_``)."""
        check_is_fitted(self)
        return self.classes_[np.argmin(self._sq_distances(X), axis=1)]

    def effective_loss(self, X, y) -> float:
        """C_E of the fitted map on ``(X, y)`` with the class means as targets (classes of ``y`` must be known)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        index = {c: j for j, c in enumerate(self.classes_.tolist())}
        try:
            yi = np.array([index[c] for c in np.asarray(y).tolist()], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"y: class {exc.args[0]!r} was not seen in fit") from None
        return _gradient.loss(self.R_, self.b_, X, yi, self.targets_, backend=self.backend)


def _generator(random_state: Any) -> np.random.Generator:
    """A NumPy Generator from scikit-learn's random_state conventions (None, int, RandomState, Generator)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.default_rng(random_state)
    raise ValueError(f"random_state: expected None, an int, a RandomState or a Generator, got {random_state!r}")
