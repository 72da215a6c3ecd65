"""Issue 18, item 5: unstable steps are detected, reported and recorded.

A gradient flow never increases its loss.  With dt = 1, 2.5 or 10 on a small
clustered problem the loss used to rise and ``integrate`` returned normally.  Now
(``_integrate/monitor.py``) the first rise is reported: a warning with a suggested dt by
default (and the message in ``Trajectory.warnings``, saved in the file), a
``DivergenceError`` with ``on_instability="raise"``, nothing with ``"ignore"``.

The oracle for *when* it fires is the rule itself, recomputed here from the recorded
losses (record_every = 1): the first step whose loss exceeds the lowest loss before it
by more than ``INSTABILITY_GROWTH_RTOL`` (relative) plus the noise floor.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config, data
from truncfast._integrate import run as _run
from truncfast._integrate.trajectory import _checksum


def _small():
    return data.make_problem("clusters", n=300, dim=2, clusters=2, seed=1)


def _run_it(p, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, **kw)
    return tr, [w for w in caught if issubclass(w.category, tf.InstabilityWarning)]


def _first_growth(loss, floor):
    best = loss[0]
    for k in range(1, len(loss)):
        if loss[k] > best * (1 + _config.INSTABILITY_GROWTH_RTOL) + floor:
            return k
        best = min(best, loss[k])
    return None


def _floor(p):
    T, b0 = p.targets, p.b0
    return _config.DIVERGENCE_LOSS_FLOOR * (np.max(np.sum(T * T, 1)) + np.max(np.sum(b0 * b0, 1)))


@pytest.mark.parametrize("dt", [1.0, 2.5, 10.0])
def test_the_issue_examples_warn_once_and_record(dt, backend):
    p = _small()
    tr, caught = _run_it(p, dt=dt, steps=60, backend=backend)
    assert tr.complete  # the run goes on (default "warn") ...
    assert len(caught) == 1 and len(tr.warnings) == 1  # ... but says so, once
    msg = str(caught[0].message)
    suggest = min(dt / 2, 1.0)
    assert f"dt = {dt:g}" in msg and f"e.g. dt = {suggest:g}" in msg and "never increases its loss" in msg
    k = _first_growth(tr.loss, _floor(p))  # the rule, recomputed from the recorded losses
    assert k is not None and f"at step {k} " in msg
    assert tr.warnings[0] in msg


@pytest.mark.parametrize("dt", [1.0, 2.5])
def test_raise_stops_at_the_step_before_the_rise(dt, backend):
    p = _small()
    ref, _ = _run_it(p, dt=dt, steps=60, backend=backend, on_instability="ignore")
    k = _first_growth(ref.loss, _floor(p))
    with pytest.raises(tf.DivergenceError, match="on_instability='raise'") as info:
        tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=dt, steps=60, backend=backend,
                     on_instability="raise")
    err = info.value
    assert err.step == k and err.suggested_dt == min(dt / 2, 1.0)
    assert err.trajectory.last_step == k - 1
    np.testing.assert_array_equal(err.trajectory.R, ref.Rs[k - 1])  # the state before the rise, exactly
    np.testing.assert_array_equal(err.trajectory.b, ref.bs[k - 1])


def test_ignore_checks_nothing(backend):
    tr, caught = _run_it(_small(), dt=2.5, steps=40, backend=backend, on_instability="ignore")
    assert not caught and tr.warnings == [] and tr.complete


@pytest.mark.parametrize("source,kw", [("paper-2d", dict(n=200)), ("clusters", dict(n=300, dim=3, clusters=4)),
                                       ("iris", dict(dim=2)), ("clusters", dict(n=400, dim=4, clusters=3,
                                                                                spread=1.0))])
@pytest.mark.parametrize("train_weights", [True, False])
def test_stable_steps_are_not_flagged(source, kw, train_weights):
    """dt = 0.05 on the generators' problems: the recorded loss never rises above the
    rounding / boundary-chatter level (the oracle), and nothing is reported."""
    p = data.make_problem(source, seed=0, **kw)
    tr, caught = _run_it(p, dt=0.05, steps=600, train_weights=train_weights, backend="numba")
    best = np.minimum.accumulate(tr.loss)
    assert np.max((tr.loss[1:] - best[:-1]) / best[:-1]) < 1e-5
    assert not caught and tr.warnings == []


def test_oscillation_is_detected():
    """A loss that rises every other step by a little (each rise below the growth
    threshold) is an oscillation: fed straight to the monitor."""
    from truncfast._integrate.monitor import LossMonitor

    mon = LossMonitor("warn", 0.5, 1.0)
    mon.start(1.0)
    seq = [1.0 - 0.001 * k + (0.0015 if k % 2 else 0.0) for k in range(1, 40)]  # rises 5e-4 at odd steps
    ev = mon.observe(1, seq)
    assert ev is not None and ev["kind"] == "oscillation"
    assert ev["step"] == 2 * _config.INSTABILITY_RISES - 1  # the 6th rise: steps 1, 3, 5, 7, 9, 11
    mono = LossMonitor("warn", 0.5, 1.0)
    mono.start(1.0)
    assert mono.observe(1, [1.0 - 0.001 * k for k in range(1, 40)]) is None


def test_compiled_and_python_loops_report_the_same(monkeypatch):
    p = _small()
    out = []
    for limit in (10**9, -1):  # compiled step loop, then the Python loop
        monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", limit)
        tr, caught = _run_it(p, dt=1.0, steps=60, backend="numba")
        out.append((tr.warnings, tr.loss.tobytes()))
    assert out[0] == out[1] and out[0][0]


def test_warnings_survive_save_load_and_resume(tmp_path):
    p = _small()
    full, _ = _run_it(p, dt=1.0, steps=60, backend="numpy")
    full.save(tmp_path / "t.npz")
    assert tf.Trajectory.load(tmp_path / "t.npz").warnings == full.warnings
    # interrupted after the event, then resumed: the same single warning
    ck = tmp_path / "ck.npz"
    k = _first_growth(full.loss, _floor(p))

    def stop(step):
        if step >= k + 3:
            raise KeyboardInterrupt

    _run.__dict__["_after_boundary"] = stop
    try:
        with pytest.raises(KeyboardInterrupt):
            _run_it(p, dt=1.0, steps=60, backend="numpy", checkpoint=ck, checkpoint_every=1)
    finally:
        _run.__dict__["_after_boundary"] = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = tf.resume(ck, p.X, p.labels, p.targets)
    assert res.warnings == full.warnings and not caught  # reported once, in the first part
    # interrupted before the event: the resumed part reports it, identically
    ck2 = tmp_path / "ck2.npz"
    _run.__dict__["_after_boundary"] = lambda step: (_ for _ in ()).throw(KeyboardInterrupt) if step >= k - 1 else None
    try:
        with pytest.raises(KeyboardInterrupt):
            _run_it(p, dt=1.0, steps=60, backend="numpy", checkpoint=ck2, checkpoint_every=1)
    finally:
        _run.__dict__["_after_boundary"] = None
    res2 = tf.resume(ck2, p.X, p.labels, p.targets)
    assert res2.warnings == full.warnings


def test_files_without_warnings_still_load(tmp_path):
    """A file written before Trajectory.warnings existed (no "warnings" in its header)."""
    p = _small()
    tr, _ = _run_it(p, dt=0.05, steps=3, backend="numpy")
    tr.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("header").tobytes())
    header.pop("warnings")
    arrays.pop("checksum")
    hb = json.dumps(header, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, header=np.frombuffer(hb, dtype=np.uint8),
             checksum=np.frombuffer(_checksum(hb, arrays).encode(), dtype=np.uint8), **arrays)
    (tmp_path / "old.npz").write_bytes(buf.getvalue())
    old = tf.Trajectory.load(tmp_path / "old.npz")
    assert old.warnings == [] and old.last_step == 3


@pytest.mark.parametrize("value", ["error", "Warn", None, True, 1])
def test_on_instability_is_validated(value):
    p = _small()
    with pytest.raises(tf.InputError, match=r"^on_instability: "):
        tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.1, steps=2, on_instability=value)
