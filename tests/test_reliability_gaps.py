"""Issue 18, item 10 (and the dense helpers of item 4): the smaller gaps, one test each.

* ``integrate(train_weights=False, train_biases=False)`` is refused (nothing would move);
* ``collapsed_output_flow`` / ``positive_sector_output_flow`` refuse ``steps=True``,
  ``steps=2.0``, ``dt=True`` and raise ``DivergenceError`` instead of running into NaN;
* ``aligned_from_cumulative`` of singular (e.g. zero) weights is an ``InputError``;
* ``exact_bias_flow(check_separation="no")`` is refused;
* ``Trajectory.save`` into a missing directory names the path, not the temp file;
* kill -9 leftovers ``.tmp-*`` next to a checkpoint are removed by ``resume`` and by
  the next checkpoint write;
* ``make_problem`` errors name the argument (``n='10'``, ``dim=2.5``, ``seed=-1``,
  ``seed=1.5``, ``separation=0``, …);
* the dense helpers (layer maps, pull-back, output-layer formulas) never return inf or
  NaN from finite inputs.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import truncfast as tf
from truncfast import data
from conftest import make_problem


def _collapsed():
    return (np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]]), np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3]]),
            np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0.5, 0.5]))


def _positive(rng):
    X = rng.standard_normal((12, 3)) + 3.0
    return np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]]), np.zeros(2), X, np.arange(12) % 2, np.eye(2)


def test_integrate_refuses_freezing_everything(rng):
    p = make_problem(rng, N=10)
    with pytest.raises(tf.InputError, match=r"^train_weights: .*train_biases.*nothing would move"):
        tf.integrate(*p.euclid, dt=0.1, steps=2, train_weights=False, train_biases=False)


@pytest.mark.parametrize("flow", ["collapsed", "positive"])
@pytest.mark.parametrize("kw,arg", [(dict(steps=True), "steps"), (dict(steps=2.0), "steps"),
                                    (dict(steps=np.float64(3)), "steps"), (dict(dt=True), "dt"),
                                    (dict(dt=np.bool_(True)), "dt"), (dict(record_every=1.0), "record_every"),
                                    (dict(record_every=False), "record_every"), (dict(steps="3"), "steps")])
def test_output_flows_refuse_bools_and_floats_as_counts(flow, kw, arg, rng):
    args = {"dt": 0.1, "steps": 3}
    args.update(kw)
    fn = (lambda: tf.collapsed_output_flow(*_collapsed(), **args)) if flow == "collapsed" else \
        (lambda: tf.positive_sector_output_flow(*_positive(rng), **args))
    with pytest.raises(tf.InputError, match=rf"^{arg}: "):
        fn()


@pytest.mark.parametrize("flow", ["collapsed", "positive"])
def test_output_flows_accept_numpy_integers(flow, rng):
    args = dict(dt=np.float32(0.1), steps=np.int64(3), record_every=np.int32(1))
    out = tf.collapsed_output_flow(*_collapsed(), **args) if flow == "collapsed" else \
        tf.positive_sector_output_flow(*_positive(rng), **args)
    assert len(out.times) == 4 and np.isfinite(out.loss).all()


@pytest.mark.parametrize("method", ["euler", "rk4"])
@pytest.mark.parametrize("flow", ["collapsed", "positive"])
def test_output_flows_report_divergence_instead_of_nan(flow, method, rng):
    fn = (lambda dt: tf.collapsed_output_flow(*_collapsed(), dt=dt, steps=200, method=method)) \
        if flow == "collapsed" else \
        (lambda dt: tf.positive_sector_output_flow(*_positive(rng), dt=dt, steps=200, method=method))
    with pytest.raises(tf.DivergenceError, match="smaller dt") as info:
        fn(50.0)
    assert info.value.step >= 1 and info.value.suggested_dt < 50.0
    ok = fn(0.01)  # a stable step: no error, a non-increasing loss
    assert np.isfinite(ok.loss).all() and np.all(np.diff(ok.loss) <= 1e-12 * ok.loss[0])


@pytest.mark.parametrize("Wc", [np.zeros((2, 3, 3)), np.array([np.eye(3), np.diag([2.0, 0.0, 1.0])]),
                                np.array([np.eye(3), -np.zeros((3, 3))])])
def test_aligned_from_cumulative_refuses_singular_weights(Wc):
    with pytest.raises(tf.InputError, match=r"^Wc: layer \d is singular"):
        tf.aligned_from_cumulative(Wc, np.ones((2, 3)))


@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None, "False"])
def test_exact_bias_flow_refuses_non_bool_check_separation(value, rng):
    p = make_problem(rng, N=10, L=2, Q=2)
    with pytest.raises(tf.InputError, match=r"^check_separation: expected True or False"):
        tf.exact_bias_flow(*p.euclid, [0.0, 1.0], check_separation=value)


def test_trajectory_save_into_a_missing_directory_names_the_path(rng, tmp_path):
    p = make_problem(rng, N=10)
    tr = tf.integrate(*p.euclid, dt=0.1, steps=2, backend="numpy")
    target = tmp_path / "no" / "such" / "dir" / "run.npz"
    with pytest.raises(tf.InputError) as info:
        tr.save(target)
    msg = str(info.value)
    assert msg.startswith("path: ") and str(target.parent) in msg and ".tmp-" not in msg, msg
    (tmp_path / "file").write_text("x")
    with pytest.raises(tf.InputError, match=r"^path: .*not a directory"):
        tr.save(tmp_path / "file" / "run.npz")


def _kill9_leftovers(ck):
    """What kill -9 during an atomic write leaves: temp files named like _atomic's, next to the target."""
    folder = os.path.dirname(ck)
    names = [f".tmp-{os.path.basename(ck)}-abc123", f".tmp-{os.path.basename(ck)}-zz9_x"]
    for n in names:
        with open(os.path.join(folder, n), "wb") as fh:
            fh.write(b"PK\x03\x04 half a zip")
    other = os.path.join(folder, ".tmp-somebody-elses-file-1")
    open(other, "w").close()
    return [os.path.join(folder, n) for n in names], other


@pytest.mark.parametrize("how", ["resume", "next checkpoint"])
def test_kill9_temp_files_are_cleaned(how, rng, tmp_path):
    p = make_problem(rng, N=10)
    ck = str(tmp_path / "ck.npz")
    if how == "resume":
        with pytest.raises(KeyboardInterrupt):
            from truncfast._integrate import run as _run

            def stop(k):
                if k >= 2:
                    raise KeyboardInterrupt

            _run._after_boundary = stop
            try:
                tf.integrate(*p.euclid, dt=0.1, steps=6, record_every=1, checkpoint=ck, checkpoint_every=1,
                             backend="numpy")
            finally:
                _run._after_boundary = None
        leftovers, other = _kill9_leftovers(ck)
        tr = tf.resume(ck, p.X, p.labels, p.targets)
        assert tr.complete
    else:
        leftovers, other = _kill9_leftovers(ck)
        tf.integrate(*p.euclid, dt=0.1, steps=4, checkpoint=ck, checkpoint_every=2, backend="numpy")
    assert not any(os.path.exists(f) for f in leftovers)
    assert os.path.exists(other)  # only this checkpoint's own leftovers are touched


@pytest.mark.parametrize("kw,arg", [
    (dict(n="10"), "n"), (dict(n=10.0), "n"), (dict(n=True), "n"), (dict(n=0), "n"), (dict(n=-4), "n"),
    (dict(dim=2.5), "dim"), (dict(dim=0), "dim"), (dict(dim="2"), "dim"),
    (dict(clusters=2.0), "clusters"), (dict(clusters=0), "clusters"),
    (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed="0"), "seed"), (dict(seed=True), "seed"),
    (dict(separation=0), "separation"), (dict(separation=-1.0), "separation"),
    (dict(separation=float("nan")), "separation"), (dict(separation="10"), "separation"),
    (dict(spread=-0.1), "spread"), (dict(spread=float("inf")), "spread"), (dict(spread="0.1"), "spread"),
    (dict(target_shift=float("nan")), "target_shift"), (dict(layers=-1), "layers"), (dict(layers=1.5), "layers"),
])
@pytest.mark.parametrize("source", ["clusters", "paper-2d"])
def test_make_problem_errors_name_the_argument(source, kw, arg):
    if source == "paper-2d" and arg in ("dim", "clusters", "separation", "layers", "target_shift"):
        pytest.skip("paper-2d has fixed geometry")
    with pytest.raises(tf.InputError, match=rf"^{arg}: "):
        data.make_problem(source, **kw)


# ------------------------------------------------- dense helpers: no inf/NaN ---

@pytest.mark.parametrize("call", [
    lambda: tf.layers_to_cumulative(np.array([np.eye(2) * 1e200] * 2), np.ones((2, 2))),
    lambda: tf.cumulative_to_layers(np.array([np.eye(2) * 1e-200, np.eye(2) * 1e200]), np.ones((2, 2))),
    lambda: tf.pullback_targets(np.eye(2) * 1e-300, np.zeros(2), np.ones((2, 2)) * 1e10),
    lambda: tf.aligned_from_cumulative(np.array([np.eye(3) * 1e-310, np.eye(3)]), np.ones((2, 3))),
    lambda: tf.collapsed_output_loss(np.eye(2) * 1e200, np.eye(2) * 1e200, np.eye(2), np.ones(2)),
    lambda: tf.collapsed_output_rhs(np.eye(2) * 1e200, np.eye(2) * 1e200, np.eye(2), np.ones(2)),
    lambda: tf.conserved_gram(np.eye(2) * 1e200, np.eye(2)),
    lambda: tf.spectral_gap_bound(np.eye(2) * 1e200, np.eye(2), np.eye(2), np.ones(2), [0.0, 1.0]),
    lambda: tf.positive_sector_output_solution(np.eye(2), np.zeros(2), np.ones((4, 2)) * 1e200,
                                               np.arange(4) % 2, np.eye(2), [0.0, 1.0]),
])
def test_dense_helpers_refuse_overflow(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no RuntimeWarning on the way
        with pytest.raises(tf.InputError, match=r"^\w+: .*(too large|overflows float64)"):
            call()


def test_cumulative_gd_stops_at_a_non_finite_loss():
    """truncfast.backprop.cumulative_gd (public): a diverging dt is reported, not a run of NaN."""
    pytest.importorskip("torch")
    from truncfast import backprop as bp

    p = data.make_problem("clusters", n=60, dim=2, clusters=2, seed=0)
    r = bp.cumulative_gd(p.R0, p.b0, p.X, p.labels, p.targets, dt=1e10, steps=20)
    assert r.info["diverged"] and not np.isfinite(r.loss[-1]) and np.isfinite(r.loss[:-1]).all()
    ok = bp.cumulative_gd(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=5)
    assert not ok.info["diverged"] and np.isfinite(ok.loss).all()
