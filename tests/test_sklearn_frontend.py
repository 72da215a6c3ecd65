"""truncfast.sklearn.TruncationFlowClassifier: scikit-learn's estimator checks and the flow it runs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")

import naive
from conftest import RTOL, assert_rel
from sklearn.utils.estimator_checks import parametrize_with_checks

import truncfast as tf
from truncfast.data import toward_frames
from truncfast.sklearn import EXPECTED_FAILED_CHECKS, TruncationFlowClassifier


@parametrize_with_checks(
    [TruncationFlowClassifier(), TruncationFlowClassifier(n_layers=3, method="cayley", steps=30)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_estimator_checks(estimator, check):
    """Every check of scikit-learn's suite (EXPECTED_FAILED_CHECKS is empty).

    scikit-learn itself skips ``check_array_api_input`` unless the environment
    variable SCIPY_ARRAY_API=1 is set before SciPy is imported, and the pandas
    checks when pandas is absent; with both, every check runs and passes.
    """
    check(estimator)


def test_random_init_is_seeded(rng):
    X, y = blobs(rng)
    a = TruncationFlowClassifier(init="random", random_state=3, steps=10).fit(X, y)
    b = TruncationFlowClassifier(init="random", random_state=3, steps=10).fit(X, y)
    c = TruncationFlowClassifier(init="random", random_state=4, steps=10).fit(X, y)
    np.testing.assert_array_equal(a.R_, b.R_)
    assert not np.allclose(a.R_, c.R_)


def blobs(rng, n=60, M=3, Q=3, spread=0.6):
    centres = 3.0 * rng.standard_normal((Q, M))
    y = np.arange(n) % Q
    return centres[y] + spread * rng.standard_normal((n, M)), y


def test_fit_is_the_documented_flow(rng):
    """Same state as tf.integrate on the normalised data from the documented initial state."""
    X, y = blobs(rng)
    X = 5.0 * X + 2.0  # any scale and offset
    clf = TruncationFlowClassifier(dt=0.3, steps=25).fit(X, y)
    means = np.array([X[y == j].mean(axis=0) for j in range(3)])
    c = X.mean(axis=0)
    s = np.sqrt(np.mean(np.sum((X - means[y]) ** 2, axis=1)))
    Tn = (means - c) / s
    R0 = toward_frames(Tn, 3)
    b0 = -np.einsum("lij,lj->li", R0, Tn)
    traj = tf.integrate(R0, b0, (X - c) / s, y, Tn, dt=0.3, steps=25)
    assert_rel(clf.R_, traj.R, RTOL, "R")
    assert_rel(clf.targets_, means, RTOL, "targets = class means")
    assert clf.scale_ == pytest.approx(s, rel=1e-14)
    # the fitted state in input coordinates reproduces the normalised map: τ(x) = c + s τ'((x − c)/s)
    assert_rel(clf.transform(X), c + s * tf.truncate(traj.R, traj.b, (X - c) / s), 1e-12, "transform")
    assert_rel(clf.transform(X[:7]), naive.truncate(clf.R_, clf.b_, X[:7]), 1e-12, "transform vs naive")
    assert clf.loss_ == pytest.approx(traj.loss[-1] * s**2, rel=1e-12)
    assert clf.effective_loss(X, y) == pytest.approx(clf.loss_, rel=1e-10)
    assert traj.loss[-1] < traj.loss[0]  # the flow did something


def test_predict_is_nearest_target_of_the_transform(rng):
    X, y = blobs(rng, n=45)
    labels = np.array(["a", "b", "c"])[y]
    clf = TruncationFlowClassifier(steps=20).fit(X, labels)
    Z = clf.transform(X)
    d = ((Z[:, None, :] - clf.targets_[None]) ** 2).sum(axis=-1)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[d.argmin(axis=1)])
    np.testing.assert_allclose(clf.decision_function(X), -d, rtol=1e-12)
    binary = TruncationFlowClassifier(steps=20).fit(X[y < 2], labels[y < 2])
    dec = binary.decision_function(X[y < 2])
    assert dec.shape == (int((y < 2).sum()),)
    np.testing.assert_array_equal(binary.predict(X[y < 2]), binary.classes_[(dec > 0).astype(int)])


def test_flow_improves_on_the_initial_map(rng):
    """Training accuracy and loss after the flow against the initial state (steps = 0)."""
    X, y = blobs(rng, n=300, M=4, Q=4, spread=1.5)
    start = TruncationFlowClassifier(steps=0).fit(X, y)
    trained = TruncationFlowClassifier(steps=200).fit(X, y)
    assert trained.loss_ < start.loss_
    assert trained.score(X, y) >= start.score(X, y)


def test_parameters_are_checked_at_fit(rng):
    X, y = blobs(rng)
    for bad, match in (({"n_layers": 0}, "n_layers"), ({"init": "zeros"}, "init"), ({"method": "rk4"}, "method"),
                       ({"integrate_options": {"dt": 1.0}}, "integrate_options"),
                       ({"init": "random", "random_state": "seed"}, "random_state")):
        with pytest.raises(ValueError, match=match):
            TruncationFlowClassifier(**bad).fit(X, y)
    with pytest.raises(TypeError, match="integrate_options"):
        TruncationFlowClassifier(integrate_options=[("record_every", 2)]).fit(X, y)
    with pytest.raises(tf.InputError, match="dt"):
        TruncationFlowClassifier(dt=-1.0).fit(X, y)


def test_integrate_options_pass_through(rng):
    X, y = blobs(rng)
    clf = TruncationFlowClassifier(steps=10, integrate_options={"record_every": 2}).fit(X, y)
    np.testing.assert_array_equal(clf.trajectory_.steps, [0, 2, 4, 6, 8, 10])
