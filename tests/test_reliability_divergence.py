"""Issue 7.2: a diverging integration stops with DivergenceError (step, loss, a
stable dt from docs/theory.md §9, the last good state in ``err.trajectory``) — for a
non-finite loss (tests/test_integrate.py) and, here, for a loss that grows by
more than ``_config.DIVERGENCE_LOSS_FACTOR`` (a gradient flow never increases
its loss)."""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from conftest import AVAILABLE_BACKENDS


def _far_cluster(rng, N=50):
    """One cluster far inside the negative sector of an untrained frame (R = I, b = 0).

    It is fully truncated, so only the biases move: ∂_s b = −(b + ỹ') with rate 1.
    Explicit Euler with dt = 3 multiplies b + ỹ' by −2 every step (unstable for
    dt > 2), and the loss by 4, until b passes the points at −1000.
    """
    X = 0.1 * rng.standard_normal((N, 2)) - 1000.0
    return np.eye(2)[None], np.zeros((1, 2)), X, np.zeros(N, dtype=np.int64), np.array([[1.0, 1.0]])


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_growing_loss_stops_with_the_last_good_state(monkeypatch, rng, backend, compiled):
    if compiled and backend != "numba":
        pytest.skip("the compiled loop is numba-only")
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", 10**9 if compiled else -1)
    R, b, X, labels, T = _far_cluster(rng)
    kw = dict(dt=3.0, steps=40, train_weights=False, backend=backend, record_every=1)
    with pytest.raises(tf.DivergenceError) as info:
        tf.integrate(R, b, X, labels, T, **kw)
    err = info.value
    assert isinstance(err, FloatingPointError)
    msg = str(err)
    # loss 1, 4, 16, 64, 256, 1024 > 1000 × 1: step 5 is the first bad one
    assert err.step == 5 and err.loss == 1024.0
    assert "at step 5" in msg and "grew to 1024.0" in msg and "dt < 2" in msg
    assert f"try dt = {err.suggested_dt:g}" in msg and 0 < err.suggested_dt <= 1.0
    tr = err.trajectory
    assert tr.last_step == 4 and not tr.complete
    np.testing.assert_array_equal(tr.loss, [1.0, 4.0, 16.0, 64.0, 256.0])
    # the kept state is bitwise the state after 4 steps of an uninterrupted run
    ref = tf.integrate(R, b, X, labels, T, **dict(kw, steps=4))
    np.testing.assert_array_equal(tr.b, ref.b)
    np.testing.assert_array_equal(tr.R, ref.R)
    assert "step 4" in msg and "err.trajectory" in msg
    # the suggested step is stable: monotone loss, converges to the collapse
    ok = tf.integrate(R, b, X, labels, T, **dict(kw, dt=err.suggested_dt))
    assert np.all(np.diff(ok.loss) <= 1e-12) and ok.loss[-1] < 1e-20


def test_tolerance_is_configurable(monkeypatch, rng):
    R, b, X, labels, T = _far_cluster(rng)
    monkeypatch.setattr(_config, "DIVERGENCE_LOSS_FACTOR", 10.0)
    with pytest.raises(tf.DivergenceError, match="more than 10 ×") as info:
        tf.integrate(R, b, X, labels, T, dt=3.0, steps=40, train_weights=False)
    assert info.value.step == 2 and info.value.loss == 16.0


def test_stable_runs_are_not_flagged_near_an_exact_equilibrium(rng):
    """Started at the collapse equilibrium (loss ~ rounding), rounding noise must not trip the test."""
    R, b, X, labels, T = _far_cluster(rng)
    b_eq = -T.copy() + 1e-15  # b = −ỹ' up to rounding: loss ~ 1e-30
    tr = tf.integrate(R, b_eq, X, labels, T, dt=1.9, steps=50)
    assert tr.complete and tr.loss.max() < 1e-20


def test_divergence_during_a_checkpointed_run_keeps_a_resumable_state(rng, tmp_path):
    """The DivergenceError trajectory can be saved and its state continued with a stable dt."""
    R, b, X, labels, T = _far_cluster(rng)
    with pytest.raises(tf.DivergenceError) as info:
        tf.integrate(R, b, X, labels, T, dt=3.0, steps=40, train_weights=False,
                     checkpoint=tmp_path / "ck.npz", checkpoint_every=2)
    good = info.value.trajectory
    good.save(tmp_path / "good.npz")
    back = tf.Trajectory.load(tmp_path / "good.npz")
    np.testing.assert_array_equal(back.b, good.b)
    cont = tf.integrate(back.R, back.b, X, labels, T, dt=info.value.suggested_dt, steps=30, train_weights=False)
    assert cont.loss[-1] < 1e-20
