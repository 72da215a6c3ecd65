"""Trajectory records, files, checkpoints and resume (bitwise), Ctrl-C handling."""

from __future__ import annotations

import _thread
import os
import threading
import zipfile

import numpy as np
import pytest

import truncfast as tf
from conftest import TRAJECTORY_FIELDS as FIELDS, assert_trajectories_bitwise, make_problem
from truncfast import _config
from truncfast._integrate import run as _run

assert_bitwise = assert_trajectories_bitwise


@pytest.fixture
def problem(rng):
    return make_problem(rng, N=60, M=3, L=2, Q=2)


# ------------------------------------------------------------- records ---

@pytest.mark.parametrize("steps, every, expected", [
    (10, 3, [0, 3, 6, 9, 10]), (9, 3, [0, 3, 6, 9]), (0, 5, [0]), (4, 100, [0, 4]), (3, 1, [0, 1, 2, 3]),
])
def test_record_every_semantics(problem, steps, every, expected):
    dt = 0.03
    tr = tf.integrate(*problem.euclid, dt=dt, steps=steps, record_every=every)
    assert tr.steps.dtype == np.int64 and list(tr.steps) == expected
    assert np.array_equal(tr.times, np.array(expected) * dt)
    K = len(expected)
    L, M = problem.b.shape
    assert tr.loss.shape == tr.grad_b_norm.shape == tr.omega_norm.shape == tr.ortho_defect.shape == (K,)
    assert tr.Rs.shape == (K, L, M, M) and tr.bs.shape == (K, L, M) and tr.counts.shape == (K, L, 2, 3)
    assert np.array_equal(tr.Rs[0], problem.R) and np.array_equal(tr.bs[0], problem.b)
    assert np.array_equal(tr.Rs[-1], tr.R) and np.array_equal(tr.bs[-1], tr.b)
    assert tr.last_step == steps and tr.complete
    assert tr.loss[-1] == tf.loss(tr.R, tr.b, *problem.euclid[2:])
    gb, om = tf.gradient(tr.R, tr.b, *problem.euclid[2:])
    assert tr.grad_b_norm[-1] == pytest.approx(np.linalg.norm(gb), rel=1e-12)
    assert tr.omega_norm[-1] == pytest.approx(np.linalg.norm(om), rel=1e-12)
    s = tr.settings
    assert (s["method"], s["dt"], s["steps"], s["record_every"], s["form"]) == ("lie-euler", dt, steps, every, "general")
    assert (s["N"], s["M"], s["L"], s["Q"]) == (60, M, L, 2) and s["version"] == tf.__version__
    assert s["backend"] in ("numpy", "numba", "c") and s["train_weights"] and s["train_biases"]


def test_counts_from_sector_codes(rng):
    p = make_problem(rng, N=80, M=3, L=3, Q=3)
    tr = tf.integrate(*p.euclid, dt=0.1, steps=6, record_every=3)
    full = (1 << 3) - 1
    for k in range(len(tr.steps)):
        codes = tf.sector_codes(tr.Rs[k], tr.bs[k], p.X).astype(np.int64)
        for l in range(3):
            for j in range(3):
                c = codes[p.labels == j, l]
                assert list(tr.counts[k, l, j]) == [(c == full).sum(), ((c != full) & (c != 0)).sum(), (c == 0).sum()]


def test_counts_unavailable_above_64_directions(rng):
    p = make_problem(rng, N=8, M=65, L=1, Q=2)
    tr = tf.integrate(*p.euclid, dt=0.01, steps=1)
    assert np.all(tr.counts == -1) and np.all(np.isnan(tr.collapse_times))


def test_collapse_times():
    """Cluster 0 sits in the negative sector of layer 0 from the start; cluster 1 never collapses."""
    R = np.stack([np.eye(2), np.eye(2)])
    b = np.array([[0.0, 0.0], [20.0, 20.0]])
    X = np.array([[-1.0, -1.0], [-1.1, -0.9], [3.0, 3.0], [3.1, 2.9]])
    labels = np.array([0, 0, 1, 1])
    targets = np.array([[-1.0, -1.0], [3.0, 3.0]])
    tr = tf.integrate(R, b, X, labels, targets, dt=0.1, steps=4, train_weights=False)
    ct = tr.collapse_times
    assert ct[0] == 0.0 and np.isnan(ct[1])


# --------------------------------------------------------------- files ---

def test_save_load_round_trip(problem, tmp_path):
    tr = tf.integrate(*problem.euclid, dt=0.05, steps=11, record_every=4)
    path = tmp_path / "run.npz"
    tr.save(path)
    back = tf.Trajectory.load(path)
    assert_bitwise(tr, back)
    assert back.settings == tr.settings
    assert [f for f in os.listdir(tmp_path)] == ["run.npz"]  # no temp file left behind
    tr.save(str(path))  # overwrite in place (str path)
    assert_bitwise(tr, tf.Trajectory.load(str(path)))


def test_corrupted_files_are_detected(problem, tmp_path):
    tr = tf.integrate(*problem.euclid, dt=0.05, steps=5)
    path = tmp_path / "run.npz"
    tr.save(path)
    raw = bytearray(path.read_bytes())
    # 1. a flipped byte somewhere in the data
    bad = tmp_path / "flipped.npz"
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(tf.InputError, match="path"):
        tf.Trajectory.load(bad)
    # 2. a truncated file
    bad.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(tf.InputError, match="corrupted|truncated"):
        tf.Trajectory.load(bad)
    # 3. a well-formed archive whose array was changed (zip CRCs fine): the sha256 catches it
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["loss"] = data["loss"] + 1e-16 * 0 + np.where(np.arange(len(data["loss"])) == 0, 1e-3, 0.0)
    np.savez(bad, **data)
    with pytest.raises(tf.InputError, match="checksum"):
        tf.Trajectory.load(bad)
    # 4. not a trajectory at all
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(tf.InputError, match="missing"):
        tf.Trajectory.load(bad)
    with pytest.raises(tf.InputError, match="no trajectory file"):
        tf.Trajectory.load(tmp_path / "absent.npz")


def test_saved_file_needs_no_pickle(problem, tmp_path):
    path = tmp_path / "run.npz"
    tf.integrate(*problem.euclid, dt=0.05, steps=2).save(path)
    with zipfile.ZipFile(path) as z:
        assert "header.npy" in z.namelist()
    with np.load(path, allow_pickle=False) as z:
        assert z["header"].dtype == np.uint8


# --------------------------------------------------------- checkpoints ---

def interrupt_at(monkeypatch, step):
    def hook(k):
        if k >= step:
            raise KeyboardInterrupt

    monkeypatch.setattr(_run, "_after_boundary", hook)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("stop_at", [10, 23])
def test_interrupted_then_resumed_run_is_bitwise_equal(monkeypatch, problem, tmp_path, compiled, stop_at):
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", 10**9 if compiled else -1)
    monkeypatch.setattr(_config, "REORTHONORMALIZE_TOL", 2e-16)  # include polar repairs in the state
    kw = dict(dt=0.05, steps=47, record_every=7, backend="numba")
    full = tf.integrate(*problem.euclid, **kw)
    assert full.settings["compiled_loop"] == compiled
    ck = tmp_path / "ck.npz"
    interrupt_at(monkeypatch, stop_at)
    with pytest.raises(KeyboardInterrupt) as info:
        tf.integrate(*problem.euclid, checkpoint=ck, checkpoint_every=5, **kw)
    part = info.value.trajectory
    assert not part.complete and part.last_step >= stop_at and part.steps[-1] <= part.last_step
    assert ck.exists()
    monkeypatch.setattr(_run, "_after_boundary", None)
    resumed = tf.resume(ck, *problem.euclid[2:])
    assert resumed.complete
    assert_bitwise(resumed, full)
    assert full.reorthonormalizations > 0
    # the checkpoint now holds the completed run; resuming it again is a no-op
    assert_bitwise(tf.resume(ck, *problem.euclid[2:]), full)


def test_periodic_checkpoint_can_be_resumed(monkeypatch, problem, tmp_path):
    """A checkpoint written by checkpoint_every (not by an interrupt) resumes bitwise."""
    kw = dict(dt=0.05, steps=30, record_every=4)
    full = tf.integrate(*problem.euclid, **kw)
    ck = tmp_path / "ck.npz"
    snapshots = {}

    def hook(k):
        if k == 20:
            snapshots[k] = ck.read_bytes()

    monkeypatch.setattr(_run, "_after_boundary", hook)
    tf.integrate(*problem.euclid, checkpoint=ck, checkpoint_every=10, **kw)
    monkeypatch.setattr(_run, "_after_boundary", None)
    mid = tmp_path / "mid.npz"
    mid.write_bytes(snapshots[20])
    assert tf.Trajectory.load(mid).last_step == 20
    assert_bitwise(tf.resume(mid, *problem.euclid[2:]), full)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_real_ctrl_c_during_integrate(problem, tmp_path, backend):
    """A KeyboardInterrupt delivered asynchronously (as by Ctrl-C), in the Python or the compiled loop.

    The run is far too long to finish, so the interrupt lands inside integrate;
    the partial trajectory and the checkpoint are consistent: bitwise equal to
    an uninterrupted run stopped at the same step, and resumable.
    """
    kw = dict(dt=1e-4, record_every=50, backend=backend)
    ck = tmp_path / "ck.npz"
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            tf.integrate(*problem.euclid, steps=10**9, checkpoint=ck, **kw)
    finally:
        timer.cancel()
    part = info.value.trajectory
    assert 0 < part.last_step < 10**9
    saved = tf.Trajectory.load(ck)
    assert_bitwise(saved, part)
    ref = tf.integrate(*problem.euclid, steps=part.last_step, **kw)
    assert np.array_equal(ref.R, part.R) and np.array_equal(ref.b, part.b)
    n = len(part.steps)  # the reference also records its last step
    for name in FIELDS[2:]:
        assert np.array_equal(getattr(ref, name)[:n], getattr(part, name)), name


def test_resume_checks_its_input(problem, tmp_path, rng):
    ck = tmp_path / "ck.npz"
    tf.integrate(*problem.euclid, dt=0.05, steps=3, checkpoint=ck)
    X2 = problem.X.copy()
    X2[0, 0] += 1.0
    with pytest.raises(tf.InputError, match="sha256"):
        tf.resume(ck, X2, problem.labels, problem.targets)
    with pytest.raises(tf.InputError, match="N = 60"):
        tf.resume(ck, problem.X[:10], problem.labels[:10], problem.targets)
    saved = tmp_path / "plain.npz"
    tf.integrate(*problem.euclid, dt=0.05, steps=3).save(saved)
    with pytest.raises(tf.InputError, match="not a checkpoint"):
        tf.resume(saved, *problem.euclid[2:])
    raw = bytearray(ck.read_bytes())
    raw[-200] ^= 0x01
    ck.write_bytes(bytes(raw))
    with pytest.raises(tf.InputError):
        tf.resume(ck, *problem.euclid[2:])


def test_progress_bar(problem, capsys):
    tr = tf.integrate(*problem.euclid, dt=0.05, steps=20, progress=True)
    assert tr.complete
    err = capsys.readouterr().err
    assert "20/20" in err


def test_record_buffers_grow(problem):
    """Records are kept in buffers that double on demand (no up-front allocation for huge runs)."""
    tr = tf.integrate(*problem.euclid, dt=1e-3, steps=700, record_every=1)
    assert np.array_equal(tr.steps, np.arange(701))
    assert np.array_equal(tr.Rs[-1], tr.R) and np.array_equal(tr.bs[-1], tr.b)
    assert np.all(tr.counts.sum(axis=3) == np.bincount(problem.labels)[None, None, :])


def test_checkpoint_path_is_checked_up_front(problem, tmp_path):
    with pytest.raises(tf.InputError, match="checkpoint: the directory"):
        tf.integrate(*problem.euclid, dt=0.1, steps=2, checkpoint=tmp_path / "absent" / "ck.npz")
    with pytest.raises(tf.InputError, match="checkpoint: .* is a directory"):
        tf.integrate(*problem.euclid, dt=0.1, steps=2, checkpoint=tmp_path)
    with pytest.raises(tf.InputError, match="checkpoint: expected a file path"):
        tf.integrate(*problem.euclid, dt=0.1, steps=2, checkpoint=3)
