"""Issue 7.7: concurrent calls from several Python threads give the same bits as
sequential calls (every backend: the Numba kernels release the GIL and share one
worker pool, the C core runs OpenMP regions from several threads at once, the
compiled integration loop runs GIL-free)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from conftest import AVAILABLE_BACKENDS, make_problem

THREADS = 4
CALLS = 10


def _problem(t: int, i: int):
    # different data for every call; every 3rd call spans several reduction chunks
    rng = np.random.default_rng(1000 * t + i)
    N = 2 * _config.CHUNK_SIZE + 17 * i + 1 if i % 3 == 0 else 50 + 13 * i
    return make_problem(rng, N=N, M=3, L=2, Q=3)


def _work(t: int, i: int, backend: str, tmp):
    p = _problem(t, i)
    z = tf.truncate(p.R, p.b, p.X, backend=backend)
    gb, om = tf.gradient(*p.euclid, backend=backend)
    loss = tf.loss(*p.euclid, backend=backend)
    kw = dict(dt=0.05, steps=4, record_every=2, backend=backend)
    if tmp is not None and i % 5 == 0:  # some runs also checkpoint, each to its own file
        kw.update(checkpoint=tmp / f"ck-{backend}-{t}-{i}.npz", checkpoint_every=2)
    tr = tf.integrate(*p.euclid, **kw)
    return [z, gb, om, np.float64(loss), tr.R, tr.b, tr.loss, tr.counts]


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_concurrent_calls_equal_sequential_calls(backend, tmp_path):
    old = tf.get_num_threads()
    tf.set_num_threads(2)  # every call also uses the shared worker pool / OpenMP team
    try:
        want = {(t, i): _work(t, i, backend, None) for t in range(THREADS) for i in range(CALLS)}
        got: dict = {}
        errors: list = []
        barrier = threading.Barrier(THREADS)

        def worker(t):
            try:
                barrier.wait()
                for i in range(CALLS):
                    got[(t, i)] = _work(t, i, backend, tmp_path)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append((t, exc))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=600)
        assert not any(th.is_alive() for th in threads), "a worker hung"
        assert not errors, errors
    finally:
        tf.set_num_threads(old)
    for key, w in want.items():
        for a, b in zip(got[key], w):
            np.testing.assert_array_equal(a, b, err_msg=f"{backend} thread/call {key}")
    # the checkpoints written concurrently are complete and load
    for f in tmp_path.glob("ck-*.npz"):
        assert tf.Trajectory.load(f).complete


def test_concurrent_calls_on_different_backends_at_once():
    """Threads mixing backends (numba pool, OpenMP, NumPy/BLAS) at the same time."""
    jobs = [(t, i, AVAILABLE_BACKENDS[(t + i) % len(AVAILABLE_BACKENDS)]) for t in range(THREADS) for i in range(4)]
    want = {j: _work(*j, None) for j in jobs}
    got = {}
    errors = []

    def worker(t):
        try:
            for job in jobs:
                if job[0] == t:
                    got[job] = _work(*job, None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not errors, errors
    for j in jobs:
        for a, b in zip(got[j], want[j]):
            np.testing.assert_array_equal(a, b, err_msg=str(j))
