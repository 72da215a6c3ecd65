"""``tf.FlowEvaluator`` (docs/api.md): values of tf.loss / tf.gradient, stats, data guard, bad input.

Oracles: ``tf.loss`` and ``tf.gradient`` at the same state (the per-point
kernels); the caller's arrays compared byte for byte before and after.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from truncfast._integrate import trajectory as _trajectory
from truncfast.data import make_problem as data_problem
from conftest import AVAILABLE_BACKENDS, assert_rel, make_problem

LOCAL = [b for b in AVAILABLE_BACKENDS if b != "dask"]


def _flow_states(p, steps=25, dt=0.05):
    """A short Lie–Euler path of states (R, b) from the problem's start."""
    tr = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=dt, steps=steps, engine="direct")
    return list(zip(tr.Rs, tr.bs))


@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("engine", ["direct", "moments", "auto"])
def test_values_equal_loss_and_gradient_along_a_path(monkeypatch, backend, engine):
    monkeypatch.setattr(_config, "ENGINE_AUTO_MIN_N", 0)
    monkeypatch.setattr(_config, "ENGINE_COST_FIXED", 0.0)  # let auto use groups at this size
    monkeypatch.setattr(_config, "ENGINE_COST_RECHECK", _config.ENGINE_COST_RECHECK[:2] + (0.0,))
    monkeypatch.setattr(_config, "ENGINE_COST_DIRECT", {"numba": (1.0, 100.0), "c": (1.0, 100.0)})
    p = data_problem("clusters", n=3000, dim=3, clusters=3, seed=1)
    fe = tf.FlowEvaluator(p.X, p.labels, p.targets, engine=engine, backend=backend)
    assert fe.backend == backend
    for R, b in _flow_states(p):
        gb, om = fe.gradient(R, b)
        loss = fe.loss(R, b)  # same state: served from the last evaluation
        gb0, om0 = tf.gradient(R, b, p.X, p.labels, p.targets, backend=backend)
        assert_rel(loss, tf.loss(R, b, p.X, p.labels, p.targets, backend=backend), 1e-10, "loss")
        assert_rel(gb, gb0, 1e-10, "grad_b")
        assert_rel(om, om0, 1e-10, "omega")
    st = fe.stats
    assert st["direct_evaluations"] + st["moment_evaluations"] == 26
    if engine != "direct" and backend != "numpy":
        assert st["moment_evaluations"] > 0 and st["groups"] > 0 and st["rebuilds"] >= 1
    else:
        assert st["moment_evaluations"] == 0
    if backend == "numpy" and engine != "direct":
        assert "numpy" in st["fallback"]


def test_loss_alone_and_repeated_calls(rng):
    p = make_problem(rng, N=500, M=3, L=2, Q=2)
    fe = tf.FlowEvaluator(p.X, p.labels, p.targets, engine="moments")
    assert_rel(fe.loss(p.R, p.b), tf.loss(*p.euclid), 1e-10)
    g1 = fe.gradient(p.R, p.b)
    g1[0][...] = 7.0  # the caller's copy: the evaluator's cache is not touched
    gb, om = fe.gradient(p.R, p.b)
    assert_rel(gb, tf.gradient(*p.euclid)[0], 1e-10)
    assert fe.stats["moment_evaluations"] == 1  # three calls, one evaluation
    assert "moments" in repr(fe)


def test_keeps_references_and_never_modifies_the_data(rng):
    p = make_problem(rng, N=400, M=3, L=2, Q=2)
    X, labels, T = p.X, p.labels.astype(np.int64), p.targets
    snap = [a.tobytes() for a in (X, labels, T)]
    fe = tf.FlowEvaluator(X, labels, T, engine="moments")
    assert np.shares_memory(fe._engine.X, X) and np.shares_memory(fe._engine.labels, labels)
    fe.gradient(p.R, p.b)
    fe.loss(p.R, p.b + 0.1)
    assert [a.tobytes() for a in (X, labels, T)] == snap
    assert X.flags.writeable and labels.flags.writeable
    # read-only and float32 / int32 inputs are accepted (a converted copy is held)
    Xr = X.astype(np.float32)
    Xr.flags.writeable = False
    fe2 = tf.FlowEvaluator(Xr, labels.astype(np.int32), T, engine="moments")
    assert_rel(fe2.loss(p.R, p.b), tf.loss(p.R, p.b, Xr, labels, T), 1e-10)


@pytest.mark.parametrize("what", ["X", "labels"])
def test_data_changed_behind_its_back_is_rejected(rng, what):
    p = make_problem(rng, N=300, M=3, L=2, Q=3)
    X, labels = p.X.copy(), p.labels.astype(np.int64)
    fe = tf.FlowEvaluator(X, labels, p.targets, engine="moments")
    fe.loss(p.R, p.b)
    if what == "X":
        X[-1, 0] += 1.0  # the last row is always in the sample
    else:
        labels[0] = (labels[0] + 1) % 3
    with pytest.raises(tf.InputError, match=f"^{what}: the data changed"):
        fe.loss(p.R, p.b)
    # a converted copy is held for float32 data; the caller's array is still watched
    X32 = p.X.astype(np.float32)
    fe = tf.FlowEvaluator(X32, p.labels, p.targets)
    X32[0, 0] += 1.0
    with pytest.raises(tf.InputError, match="^X: the data changed"):
        fe.gradient(p.R, p.b)


def test_resized_data_are_rejected(rng):
    p = make_problem(rng, N=50, M=2, L=1, Q=2)
    X = p.X.copy()
    fe = tf.FlowEvaluator(X, p.labels, p.targets)
    X.resize((40, 2), refcheck=False)
    with pytest.raises(tf.InputError, match="^X: its shape"):
        fe.loss(p.R, p.b)


@pytest.mark.parametrize("kw,arg", [
    (dict(engine="fast"), "engine"), (dict(engine=None), "engine"), (dict(backend="gpu"), "backend"),
    (dict(X=np.zeros(5)), "X"), (dict(X=np.zeros((0, 3))), "X"), (dict(X=np.full((4, 3), np.nan)), "X"),
    (dict(labels=np.zeros(3, np.int64)), "labels"), (dict(labels=np.full(4, 7)), "labels"),
    (dict(targets=np.zeros((2, 4))), "targets"), (dict(labels=None), "labels"),
])
def test_bad_construction_is_named(kw, arg):
    args = dict(X=np.ones((4, 3)), labels=np.array([0, 1, 0, 1]), targets=np.zeros((2, 3)))
    args.update(kw)
    extra = {k: args.pop(k) for k in ("engine", "backend") if k in args}
    with pytest.raises(tf.InputError, match=f"^{arg}|labels and targets"):
        tf.FlowEvaluator(args["X"], args["labels"], args["targets"], **extra)


def test_bad_state_is_named(rng):
    p = make_problem(rng, N=30, M=3, L=2, Q=2)
    fe = tf.FlowEvaluator(p.X, p.labels, p.targets)
    with pytest.raises(tf.InputError, match="^R"):
        fe.loss(2.0 * p.R, p.b)
    with pytest.raises(tf.InputError, match="^b"):
        fe.gradient(p.R, p.b[:, :2])
    q = make_problem(rng, N=30, M=2, L=2, Q=2)
    with pytest.raises(tf.InputError, match="^b: layers of width 2"):
        fe.gradient(q.R, q.b)
    with pytest.raises(tf.InputError, match="^b"):
        fe.loss(p.R, np.full_like(p.b, np.inf))


def test_wide_layers_fall_back_to_direct(rng):
    p = make_problem(rng, N=60, M=65, L=1, Q=2)
    fe = tf.FlowEvaluator(p.X, p.labels, p.targets, engine="moments", backend="numba")
    assert_rel(fe.gradient(p.R, p.b)[1], tf.gradient(*p.euclid)[1], 1e-10)
    assert fe.stats["engine"] == "direct" and "uint64" in fe.stats["fallback"]


def test_engine_stats_are_saved_and_old_files_load(tmp_path, rng):
    p = make_problem(rng, N=300, M=2, L=2, Q=2)
    tr = tf.integrate(*p.euclid, dt=0.05, steps=10, engine="moments")
    tr.save(tmp_path / "t.npz")
    back = tf.Trajectory.load(tmp_path / "t.npz")
    assert back.engine_stats == tr.engine_stats and back.engine_stats["moment_evaluations"] == 11
    assert back.settings["engine"] == "moments"
    # a file written before engines existed: no engine_stats in the header
    with np.load(tmp_path / "t.npz") as z:
        data = {k: z[k] for k in z.files}
    header = json.loads(data.pop("header").tobytes())
    data.pop("checksum")
    del header["engine_stats"]
    del header["settings"]["engine"]
    hb = json.dumps(header, sort_keys=True).encode()
    digest = _trajectory._checksum(hb, data)
    np.savez(tmp_path / "old.npz", header=np.frombuffer(hb, np.uint8),
             checksum=np.frombuffer(digest.encode(), np.uint8), **data)
    old = tf.Trajectory.load(tmp_path / "old.npz")
    assert old.engine_stats == {} and np.array_equal(old.R, tr.R)
