"""The C core (csrc/, truncfast/_kernels/ccore.py): same bits as Numba, really runs, builds.

The generic core tests (test_core_*.py) already run on ``backend="c"`` through
the ``backend`` fixture as soon as ``tf.backends()["c"] == "available"``; this
module checks what is specific to the C path:

* the C path really ran (call counter of ``truncfast._kernels.ccore``);
* C and Numba agree bitwise on random problems with points exactly on sector
  boundaries (same chunks, same per-point operation order; docs/theory.md §5, §6);
* results do not depend on the number of OpenMP threads (same bytes);
* ``truncfast._kernels.ccore`` refuses non-contiguous arrays instead of copying, and reports C
  status codes as Python errors;
* ``csrc/example`` builds with plain ``make`` and its checks pass;
* installation without a compiler (``CC=/bin/false``) or with
  ``TRUNCFAST_NO_CEXT=1`` still succeeds, without the extension.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from conftest import make_problem, separated_problem

import truncfast as tf
from truncfast._backends import registry as _backends
from truncfast._kernels import ccore as _ccore
from truncfast import _config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_c = pytest.mark.skipif(not _ccore.available(), reason=f"C core not built: {_ccore.unavailable_reason()}")
needs_numba = pytest.mark.skipif(tf.backends()["numba"] != "available", reason="numba unavailable")


def _euclid_args(p, want_grad=True):
    M = p.R.shape[1]
    Q = p.targets.shape[0]
    return (p.R, p.b, p.X, p.labels, p.targets, np.zeros((0, M)), np.zeros(0), np.zeros((Q, 0)), False, want_grad)


def _standard_args(p, want_grad=True):
    M = p.R.shape[1]
    return (p.R, p.b, p.X, p.labels, np.zeros((0, M)), p.W_out, p.b_out, p.Y, True, want_grad)


def _assert_same_bits(a, b, what):
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: max |diff| = {np.max(np.abs(a - b)) if a.size else 0}"


#: Agreement demanded of C vs Numba gradients when their reduction orders differ
#: (max-norm relative); with the same order (the design) they agree bitwise.


# ------------------------------------------------------------ availability ---

def test_backends_report_c_status():
    status = tf.backends()["c"]
    if _ccore.available():
        assert status == "available"
    else:
        assert status.startswith("unavailable") and _ccore.unavailable_reason() in status


@needs_c
def test_block_size_matches_config():
    # blocks set the skipping of untruncated layers and the accumulator lanes
    # the order of the sums: both must equal Numba's for equal bits
    assert _ccore.block_size() == _config.BLOCK_SIZE
    assert _ccore.acc_lanes() == _config.ACC_LANES
    assert _config.BLOCK_SIZE % _config.ACC_LANES == 0


@needs_c
def test_c_path_really_runs(rng):
    p = separated_problem(rng, M=3, Q=2)
    before = dict(_ccore.calls)

    def delta(name):
        return _ccore.calls[name] - before.get(name, 0)

    tf.truncate(p.R, p.b, p.X, backend="c")
    tf.sector_codes(p.R, p.b, p.X, backend="c")
    tf.loss(*p.euclid, backend="c")
    tf.gradient(*p.euclid, backend="c")
    tf.standard_gradient(*p.standard, backend="c")
    tf.gradient(*p.euclid, form="separated", backend="c")
    assert delta("truncate") == 1 and delta("codes") == 1
    assert delta("general") == 3
    assert delta("moments") == 1  # the separation check itself may use violations or codes


# ------------------------------------------------------- bitwise agreement ---

PROBLEMS = [  # N spans several chunks and ends in a partial block
    dict(N=2 * 4096 + 77, M=5, L=3, Q=3, P=7, kind="boundary"),
    dict(N=2 * 4096 + 77, M=4, L=4, Q=4, P=2, kind="random"),
    dict(N=130, M=8, L=2, Q=2, P=3, kind="boundary"),
    dict(N=1, M=1, L=1, Q=1, P=2, kind="random"),
    # the widths the C core compiles specialised kernels for (M = 2, 4, 8, 16)
    dict(N=4096 + 13, M=8, L=8, Q=8, P=3, kind="random"),
    dict(N=4096 + 3, M=16, L=3, Q=3, P=2, kind="random"),
    dict(N=300, M=2, L=2, Q=2, P=1, kind="boundary"),
    # wider than the register rows (TF_RMAX = 8) and not specialised
    dict(N=700, M=20, L=3, Q=3, P=2, kind="random"),
]


@needs_c
@needs_numba
@pytest.mark.parametrize("shape", PROBLEMS, ids=lambda s: f"{s['kind']}-N{s['N']}-M{s['M']}-L{s['L']}")
def test_c_matches_numba_bitwise(rng, shape):
    p = make_problem(rng, **shape)
    nb, cb = _backends.get("numba"), _backends.get("c")
    Q = p.targets.shape[0]
    if shape["kind"] == "boundary":  # the H(0) = 0 convention is exercised
        codes = cb.codes(p.R, p.b, p.X)
        assert (codes != (1 << shape["M"]) - 1).any()
    _assert_same_bits(cb.truncate(p.R, p.b, p.X), nb.truncate(p.R, p.b, p.X), "truncate")
    _assert_same_bits(cb.codes(p.R, p.b, p.X), nb.codes(p.R, p.b, p.X), "codes")
    for args, kind in [(_euclid_args(p), "euclidean"), (_standard_args(p), "standard"),
                       (_euclid_args(p, False), "euclidean loss only")]:
        for x, y, name in zip(cb.general(*args), nb.general(*args), ["loss", "grad_b", "omega", "gW", "gbo"]):
            if x is None:
                assert y is None
            else:
                _assert_same_bits(x, y, f"{kind} {name}")
    for x, y, name in zip(cb.moments_box(p.R, p.b, p.X, p.labels, Q), nb.moments_box(p.R, p.b, p.X, p.labels, Q),
                          ["S0", "S1", "S2", "counts", "lo", "hi"]):
        _assert_same_bits(x, y, f"moments {name}")
    _assert_same_bits(cb.violations(p.R, p.b, p.X, p.labels, Q), nb.violations(p.R, p.b, p.X, p.labels, Q),
                      "violations")


@needs_c
def test_c_public_api_matches_reference(rng):
    """The public functions on backend='c' against the NumPy reference (1e-12)."""
    from conftest import assert_rel

    p = make_problem(rng, N=700, M=4, L=3, Q=3, P=5, kind="random")
    for got, ref, what in [
        (tf.truncate(p.R, p.b, p.X, backend="c"), tf.truncate(p.R, p.b, p.X, backend="numpy"), "truncate"),
        (tf.loss(*p.euclid, backend="c"), tf.loss(*p.euclid, backend="numpy"), "loss"),
        (tf.standard_loss(*p.standard, backend="c"), tf.standard_loss(*p.standard, backend="numpy"), "std loss"),
    ]:
        assert_rel(got, ref, what=what)
    for got, ref in zip(tf.gradient(*p.euclid, backend="c"), tf.gradient(*p.euclid, backend="numpy")):
        assert_rel(got, ref, what="gradient")
    for got, ref in zip(tf.standard_gradient(*p.standard, backend="c"),
                        tf.standard_gradient(*p.standard, backend="numpy")):
        assert_rel(got, ref, what="standard gradient")
    np.testing.assert_array_equal(tf.sector_codes(p.R, p.b, p.X, backend="c"),
                                  tf.sector_codes(p.R, p.b, p.X, backend="numpy"))


# -------------------------------------------------- thread-count invariance ---

_THREAD_SCRIPT = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from conftest import make_problem
    from truncfast._kernels import ccore as _ccore
    rng = np.random.default_rng(7)
    p = make_problem(rng, N=5 * 4096 + 3, M=6, L=3, Q=3, P=4, kind="boundary")
    q = make_problem(rng, N=5 * 4096 + 3, M=6, L=3, Q=3, P=4, kind="random")
    h = hashlib.sha256()
    for p in (p, q):
        M, Q = 6, 3
        for out in (
            _ccore.general(p.R, p.b, p.X, p.labels, p.targets, np.zeros((0, M)), np.zeros(0),
                           np.zeros((Q, 0)), False, True, 4096),
            _ccore.general(p.R, p.b, p.X, p.labels, np.zeros((0, M)), p.W_out, p.b_out, p.Y, True, True, 4096),
            _ccore.moments(p.R, p.b, p.X, p.labels, Q, 4096),
            (_ccore.truncate(p.R, p.b, p.X, 4096), _ccore.codes(p.R, p.b, p.X, 4096),
             _ccore.violations(p.R, p.b, p.X, p.labels, Q, 4096)),
        ):
            for a in out:
                h.update(np.asarray(a).tobytes())
    from truncfast._kernels.parallel import get_num_threads
    print(get_num_threads(), h.hexdigest())
""")


@needs_c
def test_results_independent_of_thread_count():
    script = _THREAD_SCRIPT.format(tests=os.path.join(ROOT, "tests"))
    digests = {}
    for threads in (1, 2, 3):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TRUNCFAST_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        used, digest = out.stdout.split()
        assert int(used) == threads
        digests[threads] = digest
    assert len(set(digests.values())) == 1, digests


@needs_c
def test_explicit_thread_counts_give_same_bytes(rng):
    p = make_problem(rng, N=3 * 4096 + 5, M=4, L=3, Q=2, P=3, kind="boundary")
    outs = [_ccore.general(*_standard_args(p), 4096, threads=t) for t in (1, 2, 4)]
    for out in outs[1:]:
        for x, y in zip(out, outs[0]):
            _assert_same_bits(x, y, "standard general, threads")


# -------------------------------------------------------- boundary checks ---

@needs_c
def test_refuses_non_contiguous_arrays(rng):
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    Xf = np.asfortranarray(p.X)
    with pytest.raises(TypeError, match="C-contiguous"):
        _ccore.truncate(p.R, p.b, Xf, 4096)
    with pytest.raises(TypeError, match="float64"):
        _ccore.truncate(p.R, p.b, p.X.astype(np.float32), 4096)
    # the public API converts first, so any layout works there
    np.testing.assert_array_equal(tf.truncate(p.R, p.b, Xf, backend="c"), tf.truncate(p.R, p.b, p.X, backend="c"))


@needs_c
def test_read_only_inputs_are_accepted(rng):
    p = make_problem(rng, N=50, M=3, L=2, Q=2)
    for a in (p.R, p.b, p.X, p.labels, p.targets):
        a.setflags(write=False)
    g = tf.gradient(*p.euclid, backend="c")
    assert np.isfinite(g[0]).all()


@needs_c
def test_status_codes_become_python_errors(rng):
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    bad = p.labels.copy()
    bad[3] = 5
    with pytest.raises(ValueError, match="label"):
        _ccore.general(p.R, p.b, p.X, bad, p.targets, np.zeros((0, 3)), np.zeros(0), np.zeros((2, 0)),
                       False, True, 4096)
    with pytest.raises(ValueError, match="size"):
        _ccore.truncate(p.R, p.b, p.X, 0)
    with pytest.raises(ValueError, match="M <= 64"):
        _ccore.codes(np.eye(65)[None], np.zeros((1, 65)), np.zeros((2, 65)), 4096)


@needs_c
def test_empty_data(rng):
    p = make_problem(rng, N=4, M=3, L=2, Q=2)
    X0 = np.zeros((0, 3))
    assert _ccore.truncate(p.R, p.b, X0, 4096).shape == (0, 3)
    assert _ccore.codes(p.R, p.b, X0, 4096).shape == (0, 2)
    loss, gb, G, gW, gbo = _ccore.general(p.R, p.b, X0, np.zeros(0, np.int64), p.targets, np.zeros((0, 3)),
                                          np.zeros(0), np.zeros((2, 0)), False, True, 4096)
    assert loss == 0.0 and not gb.any() and not G.any()


# ------------------------------------------------------------ C example ---

def _have_compiler() -> bool:
    cc = os.environ.get("CC", "cc")
    return shutil.which("make") is not None and shutil.which(cc.split()[0]) is not None


@pytest.mark.skipif(not _have_compiler(), reason="no make / C compiler")
def test_c_example_builds_and_passes(tmp_path):
    # build in a copy: concurrent runs must not race on csrc/'s build products
    src = tmp_path / "csrc"
    shutil.copytree(os.path.join(ROOT, "csrc"), src,
                    ignore=shutil.ignore_patterns("example", "libtruncfast.so", "*.o"))
    make = subprocess.run(["make", "-C", str(src), "example"], capture_output=True, text=True, timeout=300)
    assert make.returncode == 0, make.stdout + make.stderr
    run = subprocess.run([str(src / "example")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout


# --------------------------------------------- install without a compiler ---

def _source_copy(dest) -> str:
    """The files a build needs, copied so the build cannot touch the checkout."""
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dest / name)
    shutil.copytree(os.path.join(ROOT, "csrc"), dest / "csrc",
                    ignore=shutil.ignore_patterns("example", "libtruncfast.so", "*.o"))
    shutil.copytree(os.path.join(ROOT, "truncfast"), dest / "truncfast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.nbi", "*.nbc", "_ccore_cffi*"))
    return str(dest)


@pytest.mark.parametrize("env", [{"CC": "/bin/false"}, {"TRUNCFAST_NO_CEXT": "1"}], ids=["CC=false", "NO_CEXT"])
def test_install_without_compiler_succeeds(tmp_path, env):
    (tmp_path / "src").mkdir()
    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    full_env = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                          "-w", str(wheels), src], env=full_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = glob.glob(str(wheels / "truncfast-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "truncfast/_kernels/ccore.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names
    assert "installing without the C core" in out.stderr + out.stdout


# ----------------------------------------------------------- auto rule ---

def test_auto_resolves_to_an_available_backend():
    name = _backends.resolve("auto")
    assert tf.backends()[name] == "available"
    for size in [dict(N=10, M=2, L=1), dict(N=10**6, M=8, L=8), dict(N=2 * 10**5, M=64, L=10)]:
        assert tf.backends()[_backends.resolve("auto", **size)] == "available"
    if _ccore.available():
        assert _backends.resolve("auto", N=10, M=2, L=1) == "c"
        assert _backends.resolve("auto", N=2 * 10**5, M=64, L=10) == "c"  # measured faster up to M = 96
        assert _backends.resolve("auto", N=10**4, M=128, L=4) == "numba"  # BLAS kernels from M = 128



@needs_c
def test_c_backend_never_loads_a_numba_kernel():
    """backend='c' calls on large arrays (validation included) leave every Numba
    kernel uncompiled: no JIT latency and no LLVM memory (~60 MB) in C-only runs."""
    code = """
import numpy as np, truncfast as tf
from numba.core.registry import CPUDispatcher
from truncfast._kernels import numba_kernels as k
rng = np.random.default_rng(0); M, L, N = 4, 3, 70000  # N*M >= 2**18: the threaded finiteness scan
R = np.array([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(L)])
b = rng.standard_normal((L, M)); X = rng.standard_normal((N, M))
labels = rng.integers(0, L, N); T = rng.standard_normal((L, M))
tf.gradient(R, b, X, labels, T, backend="c"); tf.loss(R, b, X, labels, T, backend="c")
tf.truncate(R, b, X, backend="c"); tf.sector_codes(R, b, X, backend="c")
compiled = [n for n, f in vars(k).items() if isinstance(f, CPUDispatcher) and f.signatures]
print(compiled)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


@needs_c
@needs_numba
@pytest.mark.parametrize("M", [4, 8])  # M = 4 also runs the 4-wide moments path at width 4
def test_every_kernel_width_gives_the_numba_bits(M):
    """The C kernels are compiled once per vector width (8 AVX-512, 4 AVX2, 2
    SSE2/NEON) and picked at run time; each width must give Numba's bits.
    TRUNCFAST_C_VL forces a (narrower) width in a child process."""
    p = make_problem(np.random.default_rng(5), N=4096 + 77, M=M, L=4, Q=4, P=3, kind="random")
    nb = _backends.get("numba")
    ref = nb.general(*_euclid_args(p))
    ref_t = nb.truncate(p.R, p.b, p.X)
    ref_m = nb.moments_box(p.R, p.b, p.X, p.labels, 4)
    code = textwrap.dedent("""
        import sys, numpy as np
        from truncfast._backends import registry as _backends
        from truncfast._kernels import ccore as _ccore
        a = np.load(sys.argv[1])
        cb = _backends.get("c")
        g = cb.general(a["R"], a["b"], a["X"], a["labels"], a["T"], np.zeros((0, a["X"].shape[1])), np.zeros(0),
                       np.zeros((4, 0)), False, True)
        m = cb.moments_box(a["R"], a["b"], a["X"], a["labels"], 4)
        np.savez(sys.argv[2], width=_ccore.kernel_width(), loss=g[0], gb=g[1], om=g[2],
                 t=cb.truncate(a["R"], a["b"], a["X"]), *m)
    """)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        inp = os.path.join(d, "in.npz")
        np.savez(inp, R=p.R, b=p.b, X=p.X, labels=p.labels, T=p.targets)
        widths = []
        for vl in ("8", "4", "2"):
            out = os.path.join(d, f"out{vl}.npz")
            subprocess.run([sys.executable, "-c", code, inp, out], check=True,
                           env={**os.environ, "TRUNCFAST_C_VL": vl})
            o = np.load(out)
            widths.append(int(o["width"]))
            for got, want, what in [(o["loss"], ref[0], "loss"), (o["gb"], ref[1], "grad_b"),
                                    (o["om"], ref[2], "omega"), (o["t"], ref_t, "truncate")]:
                _assert_same_bits(got, want, f"width {o['width']}: {what}")
            for i, want in enumerate(ref_m):
                _assert_same_bits(o[f"arr_{i}"], want, f"width {o['width']}: moments output {i}")
        assert widths[-1] == 2 and widths == sorted(widths, reverse=True)
