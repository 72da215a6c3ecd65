import numpy as np

import truncfast as tf


def test_backends_report_numpy_available():
    assert tf.backends()["numpy"] == "available"


def test_identity_rotation_untruncated_points_are_fixed():
    R = np.eye(2)[None]
    b = np.array([[1.0, 1.0]])
    X = np.array([[0.5, 0.25], [-2.0, 0.5]])
    out = tf.truncate(R, b, X, backend="numpy")
    np.testing.assert_array_equal(out[0], X[0])
    np.testing.assert_array_equal(out[1], [-1.0, 0.5])
