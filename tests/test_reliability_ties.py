"""Issue 18, item 6: ties at sector boundaries.

H is discontinuous, so backends can only agree on a point whose pre-activation is not
within rounding of 0 — the precondition of "backends agree to 1e-12" (docs/api.md,
docs/guarantees.md).  Three things are checked:

* the data generators never build a state that violates it (``make_problem(init="toward")``
  with more layers than clusters used to repeat a layer exactly, ``R0[0] == R0[2]``,
  putting every point the first copy projected exactly on the second copy's boundary);
  the oracle is ``naive.boundary_margin``, the smallest relative pre-activation along the
  composition, computed point by point without truncfast;
* on such generated states every backend agrees with the others to 1e-12;
* where a point *does* sit on a boundary up to rounding (a layer repeated on purpose),
  the NumPy reference now forms the pre-activations in the Numba/C kernels' order
  (transfer matrices, ascending sums), so for M < GEMM_MIN_WIDTH the sector codes and
  τ agree bitwise and the gradients to 1e-12 even there.
"""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config, data
from conftest import AVAILABLE_BACKENDS, assert_rel, random_orthogonal
from naive import boundary_margin

CONFIGS = [
    dict(source="clusters", n=120, dim=2, clusters=2, layers=4, init="toward"),  # the case
    dict(source="clusters", n=120, dim=2, clusters=2, layers=3, init="toward"),
    dict(source="clusters", n=120, dim=3, clusters=2, layers=5, init="random"),
    dict(source="clusters", n=150, dim=2, clusters=5, layers=3, init="toward"),
    dict(source="clusters", n=150, dim=3, clusters=3, layers=7, init="toward", spread=1.0),
    dict(source="clusters", n=150, dim=4, clusters=3, init="separated"),
    dict(source="clusters", n=150, dim=2, clusters=1, layers=3, init="toward"),
    dict(source="paper-2d", n=100),
    dict(source="iris", dim=2, layers=5),
    dict(source="iris", dim=3, layers=3, init="random"),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_generated_states_have_no_point_on_a_boundary(cfg, seed):
    p = data.make_problem(seed=seed, **cfg)
    assert boundary_margin(p.R0, p.b0, p.X) > 1e-9
    if p.L > p.Q:  # the repeated layers are no longer copies of the first ones
        for l in range(p.Q, p.L):
            assert not (np.array_equal(p.R0[l], p.R0[l % p.Q]) and np.array_equal(p.b0[l], p.b0[l % p.Q]))


@pytest.mark.parametrize("cfg", CONFIGS[:5], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_backends_agree_on_generated_states(cfg, backend):
    p = data.make_problem(seed=1, **cfg)
    args = (p.R0, p.b0, p.X, p.labels, p.targets)
    gb, om = tf.gradient(*args, backend=backend)
    gb0, om0 = tf.gradient(*args, backend="numpy")
    assert_rel(gb, gb0, what="grad_b")
    assert_rel(om, om0, what="omega")
    np.testing.assert_array_equal(tf.sector_codes(p.R0, p.b0, p.X, backend=backend),
                                  tf.sector_codes(p.R0, p.b0, p.X, backend="numpy"))


def _tied(rng, M, N=400):
    """A state with points on a boundary up to rounding: layer 1 is a copy of layer 0, so
    every point layer 0 truncated is on layer 1's boundary, decided by rounding (Haar R:
    the rounding is not exact as with signed permutations)."""
    R0 = random_orthogonal(rng, M)
    R = np.array([R0, R0, random_orthogonal(rng, M)])
    b = 0.3 * rng.standard_normal((3, M))
    b[1] = b[0]
    X = rng.standard_normal((N, M))
    labels = rng.integers(0, 2, N)
    return R, b, X, labels, rng.standard_normal((2, M))


@pytest.mark.parametrize("M", [2, 3, 8, _config.GEMM_MIN_WIDTH - 1])
def test_ties_agree_between_the_reference_and_the_kernels(M, backend, rng):
    R, b, X, labels, T = _tied(rng, M)
    assert boundary_margin(R, b, X) < 1e-12  # the state really has ties
    np.testing.assert_array_equal(tf.sector_codes(R, b, X, backend=backend) if M <= 64 else 0,
                                  tf.sector_codes(R, b, X, backend="numpy") if M <= 64 else 0)
    np.testing.assert_array_equal(tf.truncate(R, b, X, backend=backend), tf.truncate(R, b, X, backend="numpy"))
    gb, om = tf.gradient(R, b, X, labels, T, backend=backend)
    gb0, om0 = tf.gradient(R, b, X, labels, T, backend="numpy")
    assert_rel(gb, gb0, what="grad_b")
    assert_rel(om, om0, what="omega")


def test_reference_pre_activations_follow_the_kernels_order(rng):
    """White-box: the reference's ordered product is the left-to-right sum the kernels use
    (compared with an explicit scalar loop), and differs from BLAS in the last bits."""
    from truncfast._kernels import reference

    A = rng.standard_normal((7, 7))
    T = rng.standard_normal((50, 7))
    out = reference._ordered_product(A, T)
    for n in range(5):
        for i in range(7):
            s = 0.0
            for k in range(7):
                s += A[i, k] * T[n, k]
            assert out[n, i] == s
