"""Issue 18, item 2: truncfast imports and runs where nothing is writable.

Numba's ``cache=True`` raises "cannot cache function …: no locator available" at
decoration time — i.e. at ``import truncfast`` — when neither the package's
``__pycache__`` nor a user cache directory can be created.  Every kernel goes through
``truncfast._kernels.numba_cache.jit``, which then compiles it uncached and warns once.

What the subprocess simulates, and how (the tests may run as root, which ignores
file permissions, so ``chmod`` alone would prove nothing):

* a read-only install: a copy of the package in which every ``__pycache__`` is a
  regular *file* (``os.makedirs`` of the in-tree cache fails even for root), and the
  copy is also ``chmod -R a-w`` (what an ordinary user would meet);
* no writable home or cache directory: ``HOME`` and ``XDG_CACHE_HOME`` point *under a
  regular file* (no directory can be created there, whoever we are);
* ``NUMBA_CACHE_DIR`` unset.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import truncfast as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_only_install(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(os.path.join(REPO, "truncfast"), site / "truncfast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc"))
    for d, dirs, _ in os.walk(site):
        (open(os.path.join(d, "__pycache__"), "w")).close()  # a file where Numba wants a directory
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    for d, dirs, files in os.walk(site, topdown=False):
        for f in files:
            os.chmod(os.path.join(d, f), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(d, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE") and k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HOME=str(blocker / "home"), XDG_CACHE_HOME=str(blocker / "cache"),
               PYTHONDONTWRITEBYTECODE="1")
    return site, env


def _restore_writable(site):
    for d, dirs, files in os.walk(site):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)


def test_import_and_gradient_without_any_writable_cache(tmp_path):
    site, env = _read_only_install(tmp_path)
    code = textwrap.dedent("""
        import numpy as np, truncfast as tf
        from truncfast._kernels import numba_cache
        assert tf.__file__.startswith(%r), tf.__file__
        rng = np.random.default_rng(3)
        R = np.array([np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(2)])
        b = rng.standard_normal((2, 3)); X = rng.standard_normal((40, 3))
        lab = rng.integers(0, 2, 40); T = rng.standard_normal((2, 3))
        gb, om = tf.gradient(R, b, X, lab, T, backend="numba")
        loss = tf.loss(R, b, X, lab, T, backend="numba")
        tr = tf.integrate(R, b, X, lab, T, dt=0.05, steps=2, backend="numpy")
        np.save(%r, np.concatenate([gb.ravel(), om.ravel(), [loss], tr.b.ravel(), tr.R.ravel()]))
        print(len(numba_cache.uncached))
    """ % (str(site), str(tmp_path / "out.npy")))
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900,
                           cwd=tmp_path)  # not the repository: "-c" puts the cwd first on sys.path
    finally:
        _restore_writable(site)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.strip()) > 0  # the kernels used really were compiled uncached
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr  # one warning line for the whole process, nothing else
    assert "RuntimeWarning" in lines[0] and "NUMBA_CACHE_DIR" in lines[0] and "uncached" in lines[0]
    # same code, same bits as this (cached) process
    rng = np.random.default_rng(3)
    R = np.array([np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(2)])
    b = rng.standard_normal((2, 3))
    X = rng.standard_normal((40, 3))
    lab = rng.integers(0, 2, 40)
    T = rng.standard_normal((2, 3))
    gb, om = tf.gradient(R, b, X, lab, T, backend="numba")
    tr = tf.integrate(R, b, X, lab, T, dt=0.05, steps=2, backend="numpy")
    want = np.concatenate([gb.ravel(), om.ravel(), [tf.loss(R, b, X, lab, T, backend="numba")], tr.b.ravel(),
                           tr.R.ravel()])
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want)


def test_jit_falls_back_only_for_the_missing_locator(monkeypatch):
    """White-box: the helper compiles uncached on numba's "no locator available" error
    and lets any other error through."""
    from truncfast._kernels import numba_cache

    calls = []
    real = numba_cache.njit

    def fake_njit(**options):
        calls.append(options)
        if options.get("cache"):
            def fail(f):
                raise RuntimeError(f"cannot cache function {f.__qualname__!r}: no locator available for file 'x'")
            return fail
        return real(**options)

    monkeypatch.setattr(numba_cache, "njit", fake_njit)
    monkeypatch.setattr(numba_cache, "uncached", [])
    with pytest.warns(RuntimeWarning, match="NUMBA_CACHE_DIR"):
        f = numba_cache.jit(lambda x: x + 1)
    assert f(2) == 3 and calls == [{"cache": True, "nogil": True}, {"nogil": True}]

    def other(**options):
        def fail(f):
            raise RuntimeError("something else")
        return fail

    monkeypatch.setattr(numba_cache, "njit", other)
    with pytest.raises(RuntimeError, match="something else"):
        numba_cache.jit(lambda x: x)


def test_every_numba_kernel_goes_through_the_helper():
    """No module compiles a kernel with numba's own decorators (which would crash a read-only install)."""
    offenders = []
    for d, _, files in os.walk(os.path.join(REPO, "truncfast")):
        for f in files:
            if f.endswith(".py") and f != "numba_cache.py":
                text = open(os.path.join(d, f), encoding="utf-8").read()
                if "from numba import" in text and ("njit" in text.split("from numba import", 1)[1].split("\n")[0]
                                                    or "jit" in text.split("from numba import", 1)[1].split("\n")[0]):
                    offenders.append(f)
                if "@numba.njit" in text or "@numba.jit" in text or "cache=True" in text.replace("``", ""):
                    offenders.append(f)
    assert not offenders, offenders
