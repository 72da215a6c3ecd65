"""Issue 18, item 4: no silent NaN at large magnitudes.

Finite inputs whose products overflow float64 (|X|, |targets| ~ 1e154, |b| ~ 1e300) used
to give NaN in ``gradient`` and ``cluster_moments``.  Every public function now either
returns finite results or raises ``InputError`` naming the input that is too large and
the safe magnitude (``_validate.safe_magnitude`` / ``forward_magnitude``); ``integrate``
blames the data when the initial state overflows and dt when a step does.

The message recommends rescaling: the flow is positively homogeneous.  That claim is
checked here independently of the code under test's error path: scaling X, b and the
targets by c = 2^k (exact in floating point) scales the loss by c², grad_b by c and
omega by c², bit for bit, on every backend.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import truncfast as tf
from truncfast import _validate
from conftest import make_problem, separated_problem


def _problem(rng):
    return separated_problem(rng, M=3, Q=3, n_per=30)


CALLS = {
    "loss": lambda p, bk: [tf.loss(*p.euclid, backend=bk)],
    "gradient": lambda p, bk: list(tf.gradient(*p.euclid, backend=bk)),
    "gradient-separated": lambda p, bk: list(tf.gradient(*p.euclid, backend=bk, form="separated")),
    "cluster_moments": lambda p, bk: list(tf.cluster_moments(*p.euclid, backend=bk).values()),
    "truncate": lambda p, bk: [tf.truncate(p.R, p.b, p.X, backend=bk)],
    "standard_loss": lambda p, bk: [tf.standard_loss(*p.standard, backend=bk)],
    "standard_gradient": lambda p, bk: list(tf.standard_gradient(*p.standard, backend=bk)),
    "exact_bias_flow": lambda p, bk: [tf.exact_bias_flow(*p.euclid, [0.0, 1.0, 1e3], backend=bk)],
}

# (scale of X and targets, scale of b, sign of b): the issue's cases and their neighbours
SCALES = [(1e154, 1e154, 1.0), (1e200, 1e200, 1.0), (1.0, 1e300, -1.0), (1.0, 1e300, 1.0), (1e300, 1e300, -1.0),
          (1e307, 1e307, 1.0)]


def _scaled(p, sx, sb, sign):
    p.X = p.X * sx
    p.targets = p.targets * sx
    p.b = p.b * (sign * sb)
    p.Y = p.Y * sx
    p.b_out = p.b_out * sx
    return p


@pytest.mark.parametrize("what", list(CALLS))
@pytest.mark.parametrize("sx,sb,sign", SCALES)
def test_large_inputs_give_finite_results_or_name_the_input(what, sx, sb, sign, backend, rng):
    p = _scaled(_problem(rng), sx, sb, sign)
    try:
        with np.errstate(all="raise"):  # and no RuntimeWarning escapes to the user
            out = CALLS[what](p, backend)
    except tf.InputError as exc:
        msg = str(exc)
        name = msg.split(":", 1)[0]
        assert name in ("X", "b", "targets", "Y", "b_out"), msg
        big = {"X": sx, "targets": sx, "Y": sx, "b_out": sx, "b": sb}[name]
        assert big >= 1e100, msg  # the input named is one of the huge ones
        assert "too large" in msg and "below about" in msg, msg
        return
    except tf.SeparationError:
        return  # huge biases move the cones: separation may fail, which is said, not silent
    for r in out:
        assert np.all(np.isfinite(np.asarray(r))), f"{what}: non-finite result returned silently"


@pytest.mark.parametrize("sx,sb,sign", SCALES)
def test_sector_codes_refuse_data_whose_pre_activations_could_overflow(sx, sb, sign, backend, rng):
    p = _scaled(_problem(rng), sx, sb, sign)
    bound = _validate.forward_magnitude(p.R.shape[1], p.R.shape[0])
    biggest = max(np.abs(p.X).max(), np.abs(p.b).max())
    if biggest > bound:
        with pytest.raises(tf.InputError, match=r"^(X|b): values up to .* too large for sector_codes"):
            tf.sector_codes(p.R, p.b, p.X, backend=backend)
    else:
        codes = tf.sector_codes(p.R, p.b, p.X, backend=backend)
        assert codes.shape == (p.X.shape[0], p.R.shape[0])


def test_the_issue_examples_raise_naming_the_input(rng):
    p = _scaled(_problem(rng), 1e154, 1e154, 1.0)
    with pytest.raises(tf.InputError, match=r"^(X|b|targets): values up to .* gradient overflows float64"):
        tf.gradient(*p.euclid)
    with pytest.raises(tf.InputError, match=r"^(X|b|targets): .* cluster_moments overflows"):
        tf.cluster_moments(*p.euclid)


@pytest.mark.parametrize("k", [-300, -40, 40, 300])
def test_homogeneity_that_the_message_recommends(k, backend, rng):
    """Exact power-of-two scaling: loss·c², grad_b·c, omega·c², moments m1·c, m2·c², bitwise."""
    p = _problem(rng)
    c = math.ldexp(1.0, k)
    loss0 = tf.loss(*p.euclid, backend=backend)
    gb0, om0 = tf.gradient(*p.euclid, backend=backend)
    m0 = tf.cluster_moments(*p.euclid, backend=backend)
    z0 = tf.truncate(p.R, p.b, p.X, backend=backend)
    q = _scaled(p, c, c, 1.0)
    assert tf.loss(*q.euclid, backend=backend) == loss0 * c * c
    gb, om = tf.gradient(*q.euclid, backend=backend)
    np.testing.assert_array_equal(gb, gb0 * c)
    np.testing.assert_array_equal(om, om0 * (c * c))
    m = tf.cluster_moments(*q.euclid, backend=backend)
    for key, power in (("pi", 0), ("m0", 0), ("m1", 1), ("m2", 2), ("tbar", 1), ("target_rotated", 1)):
        np.testing.assert_array_equal(m[key], m0[key] * c**power, err_msg=key)
    np.testing.assert_array_equal(tf.truncate(q.R, q.b, q.X, backend=backend), z0 * c)


def test_below_the_stated_bound_results_are_finite(backend, rng):
    p = _problem(rng)
    N, M = p.X.shape
    s = _validate.safe_magnitude(N, M) / 100.0
    big = max(np.abs(p.X).max(), np.abs(p.b).max(), np.abs(p.targets).max())
    q = _scaled(p, s / big, s / big, 1.0)
    gb, om = tf.gradient(*q.euclid, backend=backend)
    assert np.isfinite(gb).all() and np.isfinite(om).all() and math.isfinite(tf.loss(*q.euclid, backend=backend))


# ------------------------------------------------------------- integrate ---

@pytest.mark.parametrize("method", ["lie-euler", "cayley"])
def test_integrate_blames_the_data_when_the_initial_state_overflows(method, backend, rng):
    p = _scaled(_problem(rng), 1e154, 1e154, 1.0)
    with pytest.raises(tf.InputError, match=r"^(X|b|targets): values up to .* integrate .*initial state"):
        tf.integrate(*p.euclid, dt=0.05, steps=3, method=method, backend=backend)


@pytest.mark.parametrize("dt", [1e150, 1e300])
def test_integrate_blames_dt_when_a_step_overflows(dt, backend, rng):
    p = make_problem(rng, N=40, M=3, L=2, Q=2)
    with pytest.raises(tf.DivergenceError) as info:
        tf.integrate(*p.euclid, dt=dt, steps=3, backend=backend)
    msg = str(info.value)
    assert f"dt = {dt:g}" in msg and "smaller step" in msg, msg
    assert not isinstance(info.value, tf.InputError)  # never "R: contains nan"
    assert info.value.trajectory.last_step == 0 and np.isfinite(info.value.trajectory.R).all()
