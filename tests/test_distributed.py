"""The public API on dask arrays against the local engine (issue 8, ``truncfast._backends.dask_backend``).

One real ``LocalCluster`` (2 worker processes, 1 thread each) serves the whole
module.  Data chunked in multiples of ``_config.CHUNK_SIZE`` must give the
*same bits* as the local numba backend (the ordered reduction is the local
summation); other chunkings and the tree reduction agree to 1e-12.  One
test kills a worker process during an integration (dask recomputes the lost
blocks from their lineage; the trajectory keeps its bits), another simulates
a lost connection (the step is retried, same bits).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from truncfast._backends import dask_backend as _distributed
from truncfast._backends import dask_tasks as _dask_tasks
from truncfast._integrate import run as _run

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

CH = _config.CHUNK_SIZE
N, M, L, Q = 5 * CH + 1234, 6, 3, 3  # 5 full chunks and a partial one


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="768MiB",
                                       dashboard_address=":0", silence_logs=50)
    cl = distributed.Client(cluster)
    # compile / load the cached kernels in the workers once, outside the timed checks
    cl.run(lambda: __import__("truncfast._kernels.numba_kernels"))
    yield cl
    cl.close()
    cluster.close()


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(8)
    R = np.stack([np.linalg.qr(rng.normal(size=(M, M)))[0] for _ in range(L)])
    b = 0.5 * rng.normal(size=(L, M))
    X = rng.normal(size=(N, M))
    labels = rng.integers(0, Q, N)
    targets = rng.normal(size=(Q, M))
    return R, b, X, labels, targets


def _dask(X, labels, rows):
    return da.from_array(X, chunks=(rows, X.shape[1])), da.from_array(labels, chunks=rows)


def test_no_dask_import_without_dask_inputs():
    code = ("import sys, numpy as np, truncfast as tf\n"
            "R = np.eye(2)[None]; b = np.zeros((1, 2)); X = np.ones((3, 2))\n"
            "tf.gradient(R, b, X, np.zeros(3, int), np.zeros((1, 2)), backend='numpy')\n"
            "assert 'dask' not in sys.modules, 'dask imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_gradient_and_loss_same_bits_when_chunks_align(client, problem):
    R, b, X, labels, targets = problem
    gb0, om0 = tf.gradient(R, b, X, labels, targets, backend="numba")
    loss0 = tf.loss(R, b, X, labels, targets, backend="numba")
    Xd, ld = _dask(X, labels, 2 * CH)  # blocks of 2 chunks, last block partial
    gb, om = tf.gradient(R, b, Xd, ld, targets)
    assert np.array_equal(gb, gb0) and np.array_equal(om, om0)
    assert tf.loss(R, b, Xd, ld, targets) == loss0
    # labels as a NumPy array next to a dask X, float32 X in several column chunks
    gb1, _ = tf.gradient(R, b, Xd, labels, targets)
    assert np.array_equal(gb1, gb0)
    X32 = X.astype(np.float32)
    gb32, om32 = tf.gradient(R, b, X32, labels, targets, backend="numba")
    gbd, omd = tf.gradient(R, b, da.from_array(X32, chunks=(CH, 4)), da.from_array(labels, chunks=777), targets)
    assert np.array_equal(gbd, gb32) and np.array_equal(omd, om32)


def test_standard_loss_and_gradient_same_bits(client, problem):
    R, b, X, labels, _ = problem
    rng = np.random.default_rng(3)
    W_out, b_out, Y = rng.normal(size=(4, M)), rng.normal(size=4), rng.normal(size=(Q, 4))
    ref = tf.standard_gradient(R, b, X, labels, W_out, b_out, Y, backend="numba")
    got = tf.standard_gradient(R, b, *_dask(X, labels, 2 * CH), W_out, b_out, Y)
    assert all(np.array_equal(g, r) for g, r in zip(got, ref))
    assert tf.standard_loss(R, b, *_dask(X, labels, 2 * CH), W_out, b_out, Y) == \
        tf.standard_loss(R, b, X, labels, W_out, b_out, Y, backend="numba")
    lab = labels.copy()
    lab[7] = -1
    with pytest.raises(tf.InputError, match=r"labels: value -1 at index 7 is out of range 0..2 \(Q = 3 from Y\)"):
        tf.standard_loss(R, b, *_dask(X, lab, CH), W_out, b_out, Y)


@pytest.mark.parametrize("rows, reduction", [(5000, "ordered"), (2 * CH, "tree"), (3001, "tree")])
def test_other_chunkings_and_tree_reduction_agree(client, problem, monkeypatch, rows, reduction):
    R, b, X, labels, targets = problem
    monkeypatch.setattr(_config, "DISTRIBUTED_REDUCTION", reduction)
    gb0, om0 = tf.gradient(R, b, X, labels, targets, backend="numba")
    gb, om = tf.gradient(R, b, *_dask(X, labels, rows), targets)
    scale = max(np.abs(gb0).max(), np.abs(om0).max())
    assert np.abs(gb - gb0).max() <= 1e-12 * scale
    assert np.abs(om - om0).max() <= 1e-12 * scale
    loss0 = tf.loss(R, b, X, labels, targets, backend="numba")
    assert abs(tf.loss(R, b, *_dask(X, labels, rows), targets) - loss0) <= 1e-12 * loss0
    again = tf.gradient(R, b, *_dask(X, labels, rows), targets)  # deterministic run to run
    assert np.array_equal(again[0], gb) and np.array_equal(again[1], om)


def test_truncate_and_sector_codes_are_lazy_and_exact(client, problem):
    R, b, X, _, _ = problem
    Xd = da.from_array(X, chunks=(3001, M))
    out = tf.truncate(R, b, Xd)
    assert isinstance(out, da.Array) and out.shape == X.shape and out.dtype == np.float64
    assert out.chunks == Xd.chunks
    assert np.array_equal(out.compute(), tf.truncate(R, b, X, backend="numba"))
    codes = tf.sector_codes(R, b, Xd)
    assert isinstance(codes, da.Array) and codes.shape == (N, L) and codes.dtype == np.uint64
    assert np.array_equal(codes.compute(), tf.sector_codes(R, b, X, backend="numba"))


@pytest.mark.parametrize("task_threads", ["", "2"])
def test_default_scheduler_without_client(problem, monkeypatch, task_threads):
    """No client: dask's threaded scheduler; with TRUNCFAST_NUM_THREADS a block also uses the thread pool."""
    R, b, X, labels, targets = problem
    gb0, om0 = tf.gradient(R, b, X, labels, targets, backend="numba")
    monkeypatch.setenv("TRUNCFAST_NUM_THREADS", task_threads)
    with dask.config.set(scheduler="threads"):
        gb, om = tf.gradient(R, b, *_dask(X, labels, 3 * CH), targets)
        out = tf.truncate(R, b, da.from_array(X, chunks=(3 * CH, M))).compute()
    assert np.array_equal(gb, gb0) and np.array_equal(om, om0)
    assert np.array_equal(out, tf.truncate(R, b, X, backend="numba"))


def test_dask_labels_with_numpy_X_run_locally(problem):
    R, b, X, labels, targets = problem
    gb0, _ = tf.gradient(R, b, X, labels, targets, backend="numba")
    with dask.config.set(scheduler="sync"):
        gb, _ = tf.gradient(R, b, X, da.from_array(labels, chunks=CH), targets, backend="numba")
    assert np.array_equal(gb, gb0)


def test_validation_names_argument_and_global_index(client, problem):
    R, b, X, labels, targets = problem
    bad = X.copy()
    bad[CH * 3 + 17, 2] = np.nan
    with pytest.raises(tf.InputError, match=rf"X: contains nan at index \[{CH * 3 + 17}, 2\]"):
        tf.gradient(R, b, *_dask(bad, labels, CH), targets)
    with pytest.raises(tf.InputError, match=rf"X: contains nan at index \[{CH * 3 + 17}, 2\]"):
        tf.truncate(R, b, da.from_array(bad, chunks=(5000, M))).compute()
    lab = labels.copy()
    lab[N - 3] = Q
    with pytest.raises(tf.InputError, match=rf"labels: value {Q} at index {N - 3} is out of range"):
        tf.loss(R, b, *_dask(X, lab, CH), targets)
    with pytest.raises(tf.InputError, match=r"X: expected shape \(\?, 6\)"):
        tf.gradient(R, b, da.zeros((10, 5), chunks=5), da.zeros(10, dtype=int, chunks=5), targets)
    with pytest.raises(tf.InputError, match="labels: expected an integer array"):
        tf.gradient(R, b, da.from_array(X, chunks=(CH, M)), da.zeros(N, chunks=CH), targets)
    with pytest.raises(tf.InputError, match="labels: has 9 entries but X has"):
        tf.gradient(R, b, da.from_array(X, chunks=(CH, M)), da.zeros(9, dtype=int, chunks=3), targets)
    with pytest.raises(tf.InputError, match="X: expected a real numeric array"):
        tf.truncate(R, b, da.from_array(X.astype(complex), chunks=(CH, M)))
    with pytest.raises(tf.SeparationError, match="L == Q"):
        tf.gradient(R[:2], b[:2], *_dask(X[:, :M], labels, CH), targets, form="separated")
    with pytest.raises(tf.InputError, match="backend: dask inputs run the Numba"):
        tf.loss(R, b, *_dask(X, labels, CH), targets, backend="numpy")


def test_integrate_20_steps_same_bits(client, problem):
    R, b, X, labels, targets = problem
    # dask data run the per-point kernel (no pattern kernels on the workers): compare with numba's
    ref = tf.integrate(R, b, X, labels, targets, dt=0.2, steps=20, record_every=4, backend="numba", engine="direct")
    traj = tf.integrate(R, b, *_dask(X, labels, 2 * CH), targets, dt=0.2, steps=20, record_every=4)
    assert traj.engine_stats["engine"] == "direct" and "dask" in traj.engine_stats["fallback"]
    for name in ("R", "b", "times", "loss", "grad_b_norm", "omega_norm", "ortho_defect", "counts", "Rs", "bs"):
        assert np.array_equal(getattr(traj, name), getattr(ref, name)), name
    assert traj.settings["distributed"] == "dask" and traj.last_step == 20


def test_checkpoint_interrupt_and_resume_on_dask_or_in_memory(client, problem, monkeypatch, tmp_path):
    """A dask run interrupted after step 9 leaves a checkpoint; resuming it on the dask data
    and on the same data in memory both give the uninterrupted run's bits (aligned chunks)."""
    R, b, X, labels, targets = problem
    kw = dict(dt=0.2, steps=15, record_every=4)
    full = tf.integrate(R, b, X, labels, targets, backend="numba", engine="direct", **kw)
    ck = tmp_path / "ck.npz"

    def stop(k):
        if k >= 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(_run, "_after_boundary", stop)
    with pytest.raises(KeyboardInterrupt):
        tf.integrate(R, b, *_dask(X, labels, 2 * CH), targets, checkpoint=ck, checkpoint_every=3, **kw)
    monkeypatch.setattr(_run, "_after_boundary", None)
    part = tf.Trajectory.load(ck)
    assert 9 <= part.last_step < 15 and part.settings["distributed"] == "dask"
    mid = ck.read_bytes()
    for data in (_dask(X, labels, CH), (X, labels)):  # other chunking; in memory
        ck.write_bytes(mid)
        done = tf.resume(ck, *data, targets)
        assert done.complete and done.last_step == 15
        for name in ("R", "b", "times", "loss", "grad_b_norm", "omega_norm", "counts", "Rs", "bs"):
            assert np.array_equal(getattr(done, name), getattr(full, name)), name
    with pytest.raises(tf.InputError, match="sha256"):
        tf.resume(ck, *_dask(X[::-1].copy(), labels, CH), targets)


def test_integrate_survives_killed_workers(client, problem, monkeypatch):
    """Kill a worker process while step 6 runs: its blocks are recomputed elsewhere, same trajectory bits.

    (One kill keeps the test short: killing the second worker too would wait
    for the first one's restart, ~10 s on a busy 2-core machine.)
    """
    R, b, X, labels, targets = problem
    ref = tf.integrate(R, b, X, labels, targets, dt=0.2, steps=20, backend="numba", method="cayley", engine="direct")
    pids = list(client.run(os.getpid).values())
    assert len(pids) == 2
    killed = []

    def kill(pid):
        os.kill(pid, signal.SIGKILL)  # the nanny restarts the process; its blocks are gone
        killed.append(pid)

    def hook(k):
        if k == 5:  # most likely while step 6 runs: its tasks and the lost persisted blocks are redone
            threading.Timer(0.01, kill, args=(pids[0],)).start()

    monkeypatch.setattr(_run, "_after_boundary", hook)
    traj = tf.integrate(R, b, *_dask(X, labels, CH), targets, dt=0.2, steps=20, method="cayley")
    assert killed == [pids[0]]
    for name in ("R", "b", "loss", "counts", "Rs", "bs"):
        assert np.array_equal(getattr(traj, name), getattr(ref, name)), name


def test_lost_connection_is_retried_with_same_bits(problem, monkeypatch):
    """A step whose computation fails like a lost worker (OSError) is recomputed; tasks are pure."""
    R, b, X, labels, targets = problem
    gb0, om0 = tf.gradient(R, b, X, labels, targets, backend="numba")
    real, calls = dask.compute, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("connection to worker lost (simulated)")
        return real(*args, **kw)

    monkeypatch.setattr(dask, "compute", flaky)
    monkeypatch.setattr(_dask_tasks.time, "sleep", lambda s: None)
    with dask.config.set(scheduler="threads"):
        gb, om = tf.gradient(R, b, *_dask(X, labels, 2 * CH), targets)
    assert len(calls) == 2
    assert np.array_equal(gb, gb0) and np.array_equal(om, om0)
    calls.clear()
    monkeypatch.setattr(_config, "DISTRIBUTED_RETRIES", 0)
    with dask.config.set(scheduler="threads"), pytest.raises(OSError, match="simulated"):
        tf.gradient(R, b, *_dask(X, labels, 2 * CH), targets)


def _two_clusters(n=9000):
    """docs/theory.md §7's two clusters with opposite frames: cluster-separated truncations (L = Q = 2)."""
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(0.0, 0.1, (n, 2)), rng.normal(10.0, 0.1, (n, 2))])
    labels = np.repeat([0, 1], n)
    R = np.stack([np.eye(2), -np.eye(2)])
    b = np.array([[0.0, 0.0], [10.0, 10.0]])
    T = np.array([[2.0, 2.0], [8.0, 8.0]])
    return R, b, X, labels, T


def test_separated_form_and_exp_euler_same_bits(client, monkeypatch):
    R, b, X, labels, T = _two_clusters()
    Xd, ld = _dask(X, labels, 2 * CH)
    exact_checks = []
    real = _distributed.DaskBackend.separation
    monkeypatch.setattr(_distributed.DaskBackend, "separation",
                        lambda self, *a: exact_checks.append(1) or real(self, *a))
    ref = tf.gradient(R, b, X, labels, T, form="separated", backend="numba")
    got = tf.gradient(R, b, Xd, ld, T, form="separated")
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    assert not exact_checks  # the clusters' boxes proved the separation in the moments' map
    bad = X.copy()
    bad[2 * CH + 5, 1] = np.inf  # the moments' map is the first map over the data: it validates
    with pytest.raises(tf.InputError, match=rf"X: contains inf at index \[{2 * CH + 5}, 1\]"):
        tf.gradient(R, b, *_dask(bad, labels, 2 * CH), T, form="separated")
    tref = tf.integrate(R, b, X, labels, T, dt=0.5, steps=20, record_every=5, method="exp-euler", backend="numba",
                        engine="direct")
    traj = tf.integrate(R, b, Xd, ld, T, dt=0.5, steps=20, record_every=5, method="exp-euler")
    for name in ("R", "b", "loss", "counts", "Rs", "bs"):
        assert np.array_equal(getattr(traj, name), getattr(tref, name)), name
    bad_b = b.copy()
    bad_b[1] = [-10.0, -10.0]  # layer 1 now truncates cluster 0 as well
    with pytest.raises(tf.SeparationError, match="cluster 0 truncated by layer 1"):
        tf.gradient(R, bad_b, Xd, ld, T, form="separated")
    assert exact_checks  # boxes inconclusive: the exact per-point check decided
