"""The whole flow in C: ``tf_integrate`` and ``tf_retraction`` (csrc/tf_flow.c, docs/theory.md §9).

* ``make -C csrc install PREFIX=…`` installs the library (soname with the ABI
  major), the header and ``truncfast.pc``; ``csrc/example.c``, compiled alone
  against the installed copy with ``pkg-config --cflags --libs truncfast`` (or,
  on a machine without pkg-config, the flags read from the .pc file), runs and
  passes its own checks (independent oracles: a Taylor-series exponential, the
  Cayley equation, finite differences);
* ``tf_integrate`` agrees with ``truncfast.integrate(..., backend="c")`` —
  final R, b and the loss at every step — within 1e-12 relative (in fact
  bitwise when no re-orthonormalisation runs), for M = 1, 2, 5, 8, 16, 20,
  both methods, frozen weights or biases, several chunks;
* one step equals the NumPy reference gradient step with SciPy's ``expm``;
* ``tf_retraction`` gives the bits of ``_expm`` for every Padé degree and for
  scaling and squaring, and agrees with SciPy;
* ``tf_orthonormalize`` is the SVD's polar factor to 1e-14 and has the bits of
  its Numba twin ``_polar``; with that projection in the integrator, runs that
  re-orthonormalise (and then diverge) are bitwise equal too;
* bad sizes, NULL pointers, NaN/inf, bad labels, a non-orthogonal R, bad dt or
  method return their status codes and leave the outputs untouched;
* a diverging dt returns ``TF_ERR_DIVERGED`` with the last good state, where
  ``truncfast.integrate`` raises ``DivergenceError``.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from conftest import make_problem

import truncfast as tf
from truncfast import _config
from truncfast._kernels import ccore as _ccore
from truncfast._kernels import expm as _expm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

needs_c = pytest.mark.skipif(not _ccore.available(), reason=f"C core not built: {_ccore.unavailable_reason()}")
lib, ffi = _ccore.lib, _ccore.ffi
METHODS = {"lie-euler": 0, "cayley": 1}


def _rel(a, b) -> float:
    """max |a − b| / max |b| (0 when both are exactly equal)."""
    a, b = np.asarray(a), np.asarray(b)
    diff = float(np.max(np.abs(a - b), initial=0.0))
    return diff / max(float(np.max(np.abs(b), initial=0.0)), 1e-300) if diff else 0.0


def _c_integrate(p, dt, steps, method="lie-euler", train_weights=True, train_biases=True, R=None, threads=None):
    return _ccore.integrate(p.R if R is None else R, p.b, p.X, p.labels, p.targets, dt, steps, METHODS[method],
                            train_weights, train_biases, _config.CHUNK_SIZE, threads)


# ------------------------------------------------------- build and install ---

def _compiler() -> str | None:
    cc = os.environ.get("CC", "cc").split()[0]
    return shutil.which(cc)


def _read_pc(path: str) -> list[str]:
    """``pkg-config --cflags --libs`` of a .pc file, for machines without pkg-config:
    ``name=value`` variables (``${name}`` expanded), then the Cflags and Libs fields."""
    variables: dict[str, str] = {}
    fields: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.split("#", 1)[0].strip()
            m = re.match(r"^([A-Za-z0-9_.]+)\s*([=:])\s*(.*)$", line)
            if not m:
                continue
            name, sep, value = m.groups()
            value = re.sub(r"\$\{([A-Za-z0-9_.]+)\}", lambda v: variables[v.group(1)], value)
            (variables if sep == "=" else fields)[name] = value
    return shlex.split(fields.get("Cflags", "")) + shlex.split(fields.get("Libs", ""))


def _pkg_flags(prefix: str) -> list[str]:
    pc_dir = os.path.join(prefix, "lib", "pkgconfig")
    exe = shutil.which("pkg-config") or shutil.which("pkgconf")
    if exe is None:  # a fresh machine without pkg-config: read the file it would read
        return _read_pc(os.path.join(pc_dir, "truncfast.pc"))
    out = subprocess.run([exe, "--cflags", "--libs", "truncfast"], capture_output=True, text=True,
                         env=dict(os.environ, PKG_CONFIG_PATH=pc_dir), timeout=60)
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    """``make install`` of a copy of csrc/ into a temporary prefix; returns the prefix.

    Built with CFLAGS=-O1 (3 s instead of 11 s for -O3): without FMA contraction
    and fast-math the optimisation level cannot change a bit, which
    ``test_installed_library_gives_the_extensions_bits`` checks against the -O3
    extension.
    """
    if _compiler() is None or shutil.which("make") is None:
        pytest.skip("no C compiler or no make on this machine")
    base = tmp_path_factory.mktemp("cinstall")
    src, prefix = base / "csrc", base / "prefix"
    # a copy: concurrent runs must not race on csrc/'s build products
    shutil.copytree(CSRC, src, ignore=shutil.ignore_patterns("example", "libtruncfast.so*", "*.o"))
    out = subprocess.run(["make", "-C", str(src), "install", f"PREFIX={prefix}", "CFLAGS=-O1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return str(prefix)


def test_install_layout(installed):
    lib_dir = os.path.join(installed, "lib")
    real = f"libtruncfast.so.{lib.TF_ABI_VERSION_MAJOR}.{lib.TF_ABI_VERSION_MINOR}"
    assert os.path.isfile(os.path.join(lib_dir, real))
    assert os.readlink(os.path.join(lib_dir, "libtruncfast.so.1")) == real
    assert os.readlink(os.path.join(lib_dir, "libtruncfast.so")) == "libtruncfast.so.1"
    header = os.path.join(installed, "include", "truncfast.h")
    with open(header, encoding="utf-8") as fh:
        assert '#include "' not in fh.read()  # self-contained: nothing else to install
    pc = os.path.join(lib_dir, "pkgconfig", "truncfast.pc")
    with open(pc, encoding="utf-8") as fh:
        text = fh.read()
    assert f"prefix={installed}\n" in text and f"Version: {tf.__version__}\n" in text
    assert _read_pc(pc) == [f"-I{installed}/include", f"-L{lib_dir}", "-ltruncfast"]
    # the soname carries the ABI major (read from the ELF dynamic section by the loader's tool)
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", os.path.join(lib_dir, real)],
                             capture_output=True, text=True, timeout=60)
        assert "Library soname: [libtruncfast.so.1]" in out.stdout


def test_pkg_config_agrees_with_the_fallback_reader(installed):
    if not (shutil.which("pkg-config") or shutil.which("pkgconf")):
        pytest.skip("no pkg-config here: the example test used the fallback reader itself")
    assert _pkg_flags(installed) == _read_pc(os.path.join(installed, "lib", "pkgconfig", "truncfast.pc"))


def test_example_builds_against_the_installed_copy_and_passes(installed, tmp_path):
    # example.c alone in a directory: `#include "truncfast.h"` must come from the prefix
    example = tmp_path / "example.c"
    shutil.copy(os.path.join(CSRC, "example.c"), example)
    exe = tmp_path / "example"
    cmd = [_compiler(), "-std=c99", "-O1", str(example), *_pkg_flags(installed), "-lm", "-o", str(exe)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, " ".join(cmd) + "\n" + out.stdout + out.stderr
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(installed, "lib"))
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    abi = f"{lib.TF_ABI_VERSION_MAJOR}.{lib.TF_ABI_VERSION_MINOR}"
    assert f"truncfast C core {tf.__version__} (ABI {abi})" in run.stdout
    assert "Lie-Euler step = b - dt grad_b, exp(-dt omega) R" in run.stdout
    assert "FAILED" not in run.stdout and run.stdout.rstrip().endswith("all checks passed")


def _load_installed(prefix: str) -> ctypes.CDLL:
    so = ctypes.CDLL(os.path.join(prefix, "lib", "libtruncfast.so.1"))
    so.tf_version.restype = ctypes.c_char_p
    so.tf_integrate.restype = ctypes.c_int
    ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    so.tf_integrate.argtypes = ([ptr] * 5 + [i64] * 4 + [ctypes.c_double, i64, i32, i32, i32, i64, i32]
                                + [ptr] * 5)
    return so


@needs_c
def test_installed_library_gives_the_extensions_bits(installed):
    so = _load_installed(installed)
    assert so.tf_version().decode() == tf.__version__
    assert so.tf_abi_version() == lib.TF_ABI_VERSION
    p = make_problem(np.random.default_rng(3), N=1500, M=6, L=3, Q=3)
    steps = 12
    R, b, loss = np.empty_like(p.R), np.empty_like(p.b), np.empty(steps + 1)
    done = ctypes.c_int64(-7)
    addr = lambda a: a.ctypes.data  # noqa: E731
    st = so.tf_integrate(addr(p.R), addr(p.b), addr(p.X), addr(p.labels), addr(p.targets), 1500, 6, 3, 3, 0.4,
                         steps, 1, 1, 1, _config.CHUNK_SIZE, 1, addr(R), addr(b), addr(loss), ctypes.byref(done), None)
    assert st == 0 and done.value == steps
    ref = _c_integrate(p, 0.4, steps, "cayley")
    assert ref[0] == 0
    for got, want in zip((R, b, loss), ref[1:4]):
        assert got.tobytes() == want.tobytes()


# ---------------------------------------------------- versions, constants ---

@needs_c
def test_version_and_constants_match_the_python_package():
    assert ffi.string(lib.tf_version()).decode() == tf.__version__
    assert lib.tf_abi_version() == lib.TF_ABI_VERSION == 1000 * lib.TF_ABI_VERSION_MAJOR + lib.TF_ABI_VERSION_MINOR
    assert lib.TF_CHUNK_SIZE == _config.CHUNK_SIZE
    assert (lib.TF_LIE_EULER, lib.TF_CAYLEY) == (_expm.LIE_EULER, _expm.CAYLEY)
    with open(os.path.join(CSRC, "truncfast.h"), encoding="utf-8") as fh:
        header = fh.read()

    def define(name):
        return re.search(rf"^#define {name} (\S+)", header, flags=re.M).group(1)

    assert define("TF_VERSION") == f'"{tf.__version__}"'
    for name in ("ORTHOGONALITY_TOL", "REORTHONORMALIZE_TOL", "DIVERGENCE_LOSS_FACTOR", "DIVERGENCE_LOSS_FLOOR"):
        assert float(define("TF_" + name)) == getattr(_config, name), name
    messages = {ffi.string(lib.tf_status_string(s)).decode() for s in range(11)}
    assert len(messages) == 11 and "unknown status" not in messages
    assert ffi.string(lib.tf_status_string(99)).decode() == "unknown status"


# ------------------------------------------------------------- retraction ---

NORMS = [1e-3, 0.2, 0.9, 2.0, 5.0, 50.0, 1e4]  # every Padé degree (3, 5, 7, 9, 13), then squarings


@needs_c
@pytest.mark.parametrize("M", [1, 2, 3, 5, 8, 16, 20])
def test_retraction_bits_of_expm_module_and_scipy(M):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(M)
    for nrm in NORMS:
        B = rng.standard_normal((M, M))
        A = B - B.T
        if M > 1:
            A *= nrm / np.abs(A).sum(axis=0).max()
        E, C = _ccore.retraction(A, lib.TF_LIE_EULER), _ccore.retraction(A, lib.TF_CAYLEY)
        assert E.tobytes() == _expm.expm_antisym(A).tobytes(), (M, nrm)
        assert C.tobytes() == _expm.cayley(A).tobytes(), (M, nrm)
        # independent oracles: SciPy's expm, the Cayley map by NumPy's solver
        assert np.abs(E - scipy_linalg.expm(A)).max() <= 1e-13 * max(1.0, nrm), (M, nrm)
        eye = np.eye(M)
        assert np.abs(C - np.linalg.solve(eye - A / 2, eye + A / 2)).max() <= 1e-13 * max(1.0, nrm), (M, nrm)


# --------------------------------------------------------- polar factor ---

def _c_orthonormalize(R):
    out = np.full_like(R, 7.0)
    st = lib.tf_orthonormalize(ffi.cast("double *", ffi.from_buffer(R)), R.shape[0], R.shape[1],
                               ffi.cast("double *", ffi.from_buffer(out)))
    return st, out


@needs_c
@pytest.mark.parametrize("M", [1, 2, 3, 8, 20])
def test_orthonormalize_is_the_polar_factor_with_the_twins_bits(M):
    """Against the SVD's U Vᵀ (``_model.orthonormalize``, the independent oracle)
    and bitwise against its Numba twin ``_polar``, from nearly orthogonal to far."""
    from truncfast._flow import model as _model
    from truncfast._kernels import polar as _polar

    rng = np.random.default_rng(40 + M)
    for eps in [1e-13, 1e-10, 1e-6, 0.3, 3.0]:
        R = np.array([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(3)])
        R += eps * rng.standard_normal(R.shape)
        st, out = _c_orthonormalize(R)
        assert st == lib.TF_OK
        assert np.abs(out - _model.orthonormalize(R)).max() <= 1e-14, (M, eps)
        assert _expm.defect(out) <= 1e-15
        assert out.tobytes() == _polar.orthonormalize(R).tobytes(), (M, eps)
    singular = np.ones((2, 3, 3))
    st, out = _c_orthonormalize(singular)
    assert st == lib.TF_ERR_SINGULAR and np.isnan(_polar.orthonormalize(singular)).all()
    one = np.eye(3)[None].copy()
    assert _c_orthonormalize(np.zeros((0, 3, 3)))[0] == lib.TF_ERR_SIZE
    assert lib.tf_orthonormalize(ffi.NULL, 1, 3, ffi.cast("double *", ffi.from_buffer(one))) == lib.TF_ERR_NULL
    one[0, 1, 1] = np.inf
    assert _c_orthonormalize(one)[0] == lib.TF_ERR_NONFINITE


# ------------------------------------------------ agreement with integrate ---

CASES = [  # N, M, L, Q, method, train_weights, train_biases, dt, steps
    (600, 1, 2, 2, "lie-euler", True, True, 0.4, 20),
    (600, 2, 3, 2, "lie-euler", True, True, 0.4, 25),
    (600, 2, 2, 3, "cayley", True, False, 0.5, 25),
    (900, 8, 3, 3, "lie-euler", True, True, 0.3, 30),
    (900, 8, 4, 2, "cayley", True, True, 0.3, 30),
    (900, 8, 2, 2, "lie-euler", False, True, 0.5, 20),
    (700, 16, 2, 4, "lie-euler", True, False, 0.8, 20),
    (700, 16, 3, 3, "cayley", True, True, 0.3, 20),
    (500, 20, 2, 3, "lie-euler", True, True, 0.5, 20),
    (500, 20, 2, 2, "cayley", False, False, 0.5, 5),
    (2 * 4096 + 5, 5, 3, 3, "lie-euler", True, True, 0.5, 8),
]


@needs_c
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-M{c[1]}-L{c[2]}-{c[4]}-w{int(c[5])}b{int(c[6])}")
def test_agrees_with_integrate_backend_c(case):
    N, M, L, Q, method, tw, tb, dt, steps = case
    p = make_problem(np.random.default_rng(N + 31 * M + L), N=N, M=M, L=L, Q=Q)
    if not (tw or tb):  # issue 18: the Python API refuses a run in which nothing moves; the C core runs it
        with pytest.raises(tf.InputError, match="nothing would move"):
            tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=dt, steps=steps, method=method,
                         train_weights=tw, train_biases=tb, backend="c")
        st, R, b, loss, done, _ = _c_integrate(p, dt, steps, method, tw, tb)
        assert (st, done) == (0, steps) and R.tobytes() == p.R.tobytes() and b.tobytes() == p.b.tobytes()
        assert np.all(loss == loss[0])
        return
    traj = tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=dt, steps=steps, method=method,
                        train_weights=tw, train_biases=tb, backend="c")
    st, R, b, loss, done, reorth = _c_integrate(p, dt, steps, method, tw, tb)
    assert (st, done, reorth) == (0, steps, traj.reorthonormalizations)
    assert _rel(R, traj.R) <= 1e-12 and _rel(b, traj.b) <= 1e-12 and _rel(loss, traj.loss) <= 1e-12
    assert loss[-1] < loss[0] or not (tw or tb)  # the flow ran (and descends)
    if not tw:
        assert R.tobytes() == p.R.tobytes()
    if not tb:
        assert b.tobytes() == p.b.tobytes()


@needs_c
@pytest.mark.parametrize("method", ["lie-euler", "cayley"])
def test_initial_reorthonormalisation_as_integrate(method):
    """An R with defect 1e-10 (accepted, > REORTHONORMALIZE_TOL) is projected once by
    both; C's Newton iteration and NumPy's SVD give the same polar factor to rounding."""
    rng = np.random.default_rng(11)
    p = make_problem(rng, N=800, M=6, L=3, Q=3)
    R = p.R + 1e-10 * rng.standard_normal(p.R.shape)
    traj = tf.integrate(R, p.b, p.X, p.labels, p.targets, dt=0.3, steps=20, method=method, backend="c")
    st, Rc, b, loss, done, reorth = _c_integrate(p, 0.3, 20, method, R=R)
    assert st == 0 and reorth == traj.reorthonormalizations == 1
    assert _rel(Rc, traj.R) <= 1e-12 and _rel(b, traj.b) <= 1e-12 and _rel(loss, traj.loss) <= 1e-12
    assert _expm.defect(Rc) <= 1e-14


@needs_c
def test_one_step_is_the_reference_gradient_step():
    """Independent oracle: NumPy reference gradient and SciPy's expm."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    p = make_problem(np.random.default_rng(5), N=400, M=7, L=3, Q=2)
    dt = 0.7
    st, R, b, loss, _, _ = _c_integrate(p, dt, 1)
    gb, om = tf.gradient(p.R, p.b, p.X, p.labels, p.targets, backend="numpy")
    assert st == 0
    assert _rel(loss[0], tf.loss(p.R, p.b, p.X, p.labels, p.targets)) <= 1e-12
    assert _rel(b, p.b - dt * gb) <= 1e-12
    assert _rel(R, np.array([scipy_linalg.expm(-dt * om[l]) @ p.R[l] for l in range(3)])) <= 1e-12


@needs_c
def test_threads_and_in_place_outputs_do_not_change_bits():
    p = make_problem(np.random.default_rng(8), N=3 * 4096 + 17, M=4, L=3, Q=3)
    one = _c_integrate(p, 0.5, 6, threads=1)
    two = _c_integrate(p, 0.5, 6, threads=2)
    for a, c in zip(one[1:4], two[1:4]):
        assert a.tobytes() == c.tobytes()
    # R_out = R and b_out = b: the inputs are read before the outputs are written
    R, b, loss, done = p.R.copy(), p.b.copy(), np.empty(7), ffi.new("int64_t *")
    ptr = lambda a, t="double *": ffi.cast(t, ffi.from_buffer(a))  # noqa: E731
    st = lib.tf_integrate(ptr(R), ptr(b), ptr(p.X), ptr(p.labels, "int64_t *"), ptr(p.targets), p.X.shape[0], 4,
                          3, 3, 0.5, 6, 0, 1, 1, _config.CHUNK_SIZE, 1, ptr(R), ptr(b), ptr(loss), done, ffi.NULL)
    assert st == 0 and R.tobytes() == one[1].tobytes() and b.tobytes() == one[2].tobytes()


# ------------------------------------------------------------ bad input ---

@needs_c
def test_bad_input_returns_status_codes_and_leaves_outputs_alone():
    p = make_problem(np.random.default_rng(2), N=50, M=3, L=2, Q=2)
    R_out, b_out, loss = np.full((2, 3, 3), 7.0), np.full((2, 3), 7.0), np.full(4, 7.0)
    done = ffi.new("int64_t *", -7)
    good = dict(R=p.R, b=p.b, X=p.X, labels=p.labels, targets=p.targets, N=50, M=3, L=2, Q=2, dt=0.1, steps=3,
                method=0, tw=1, tb=1, chunk=4096, threads=1, R_out=R_out, b_out=b_out, loss=loss)

    def call(**change):
        a = dict(good, **change)

        def ptr(x, t="double *"):
            return x if x is ffi.NULL else ffi.cast(t, ffi.from_buffer(x))

        return lib.tf_integrate(ptr(a["R"]), ptr(a["b"]), ptr(a["X"]), ptr(a["labels"], "int64_t *"),
                                ptr(a["targets"]), a["N"], a["M"], a["L"], a["Q"], a["dt"], a["steps"], a["method"],
                                a["tw"], a["tb"], a["chunk"], a["threads"], ptr(a["R_out"]), ptr(a["b_out"]),
                                ptr(a["loss"]), done, ffi.NULL)

    def with_value(name, index, value):
        arr = good[name].copy()
        arr[index] = value
        return {name: arr}

    bad_R = p.R.copy()
    bad_R[1, 0, 0] += 1e-6
    expected = {
        lib.TF_ERR_SIZE: [dict(N=0), dict(M=0), dict(L=0), dict(Q=0), dict(steps=-1), dict(chunk=0), dict(N=-5),
                          dict(M=2**40), dict(L=2**61), dict(N=2**62), dict(steps=2**62)],
        lib.TF_ERR_NULL: [{k: ffi.NULL} for k in ("R", "b", "X", "labels", "targets", "R_out", "b_out", "loss")],
        lib.TF_ERR_ARG: [dict(dt=0.0), dict(dt=-1.0), dict(method=2), dict(method=-1)],
        lib.TF_ERR_NONFINITE: [dict(dt=float("nan")), dict(dt=float("inf")), with_value("R", (0, 1, 2), np.nan),
                               with_value("b", (1, 2), np.inf), with_value("X", (49, 0), -np.inf),
                               with_value("targets", (0, 0), np.nan)],
        lib.TF_ERR_LABEL: [with_value("labels", 3, -1), with_value("labels", 49, 2)],
        lib.TF_ERR_NOT_ORTHOGONAL: [dict(R=bad_R)],
    }
    for status, changes in expected.items():
        for change in changes:
            assert call(**change) == status, (status, change)
    assert (R_out == 7.0).all() and (b_out == 7.0).all() and (loss == 7.0).all() and done[0] == -7
    # within the tolerance: accepted (and projected)
    ok_R = p.R.copy()
    ok_R[1, 0, 0] += 1e-9
    assert call(R=ok_R) == lib.TF_OK and done[0] == 3
    # tf_retraction
    A = np.zeros((3, 3))
    out = np.empty((3, 3))
    pa, po = ffi.cast("double *", ffi.from_buffer(A)), ffi.cast("double *", ffi.from_buffer(out))
    assert lib.tf_retraction(pa, 0, 0, po) == lib.TF_ERR_SIZE
    assert lib.tf_retraction(pa, 2**40, 0, po) == lib.TF_ERR_SIZE
    assert lib.tf_retraction(ffi.NULL, 3, 0, po) == lib.TF_ERR_NULL
    assert lib.tf_retraction(pa, 3, 5, po) == lib.TF_ERR_ARG
    A[0, 1] = np.nan
    assert lib.tf_retraction(pa, 3, 1, po) == lib.TF_ERR_NONFINITE


# ------------------------------------------------------------- divergence ---

def _python_divergence(p, dt, steps, **kw):
    with pytest.raises(tf.DivergenceError) as info:
        tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=dt, steps=steps, backend="c", **kw)
    return info.value


@needs_c
def test_divergent_dt_returns_the_last_good_state_bitwise():
    """dt = 20: the loss passes DIVERGENCE_LOSS_FACTOR × its reference at step 9;
    no re-orthonormalisation ran, so the same bits as the Python run."""
    p = make_problem(np.random.default_rng(2), N=700, M=6, L=3, Q=3)
    err = _python_divergence(p, 20.0, 50)
    st, R, b, loss, done, reorth = _c_integrate(p, 20.0, 50)
    t = err.trajectory
    assert st == lib.TF_ERR_DIVERGED and 0 < done == err.step - 1 == t.last_step
    assert reorth == t.reorthonormalizations == 0
    assert R.tobytes() == t.R.tobytes() and b.tobytes() == t.b.tobytes()
    assert loss[:done + 1].tobytes() == t.loss.tobytes() and loss[done + 1] == err.loss
    assert np.isnan(loss[done + 2:]).all()


@needs_c
def test_with_the_twin_projection_integrate_gives_the_c_bits():
    """Re-orthonormalisation followed by unstable steps (dt = 10, 100): with an
    SVD projection C and Python would differ by the SVD's rounding amplified by
    the steps (measured up to 2.5e-10 relative in R); the integrator projects
    with ``_kernels.polar`` (the twin of the C iterations), so the runs are
    bitwise equal, divergence included."""
    # a re-orthonormalisation mid-run
    p = make_problem(np.random.default_rng(1), N=700, M=12, L=3, Q=3)
    t = tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=10.0, steps=60, backend="c")
    st, R, b, loss, done, reorth = _c_integrate(p, 10.0, 60)
    assert st == 0 and reorth == t.reorthonormalizations >= 1
    assert R.tobytes() == t.R.tobytes() and b.tobytes() == t.b.tobytes() and loss.tobytes() == t.loss.tobytes()
    # the initial projection, then divergence
    rng = np.random.default_rng(1)
    p = make_problem(rng, N=700, M=6, L=3, Q=3)
    R0 = p.R + 1e-10 * rng.standard_normal(p.R.shape)
    with pytest.raises(tf.DivergenceError) as info:
        tf.integrate(R0, p.b, p.X, p.labels, p.targets, dt=100.0, steps=50, backend="c")
    err, t = info.value, info.value.trajectory
    st, R, b, loss, done, reorth = _c_integrate(p, 100.0, 50, R=R0)
    assert st == lib.TF_ERR_DIVERGED and done == err.step - 1 == t.last_step
    assert reorth == t.reorthonormalizations == 1
    assert R.tobytes() == t.R.tobytes() and b.tobytes() == t.b.tobytes()
    assert loss[:done + 1].tobytes() == t.loss.tobytes() and loss[done + 1] == err.loss


@needs_c
def test_non_finite_initial_loss_is_divergence_at_step_zero():
    p = make_problem(np.random.default_rng(4), N=40, M=3, L=2, Q=2)
    p.X[:] *= 1e200  # finite data whose squared residuals overflow
    # issue 18: the Python API blames the data (InputError naming X), the C core reports step 0
    with pytest.raises(tf.InputError, match=r"^X: values up to .* too large"):
        tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=0.1, steps=5, backend="c")
    st, R, b, loss, done, _ = _c_integrate(p, 0.1, 5)
    assert st == lib.TF_ERR_DIVERGED and done == -1
    assert not np.isfinite(loss[0]) and np.isnan(loss[1:]).all()
    assert R.tobytes() == p.R.tobytes() and b.tobytes() == p.b.tobytes()
