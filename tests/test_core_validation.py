"""API-boundary validation (docs/api.md "Bad input"), accepted input layouts,
inputs never modified, results new float64 arrays, and determinism."""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from conftest import make_problem, rel_err


@pytest.fixture
def prob(rng):
    return make_problem(rng, N=10, M=3, L=2, Q=2, P=2)


def _euclid(p, **over):
    args = dict(R=p.R, b=p.b, X=p.X, labels=p.labels, targets=p.targets)
    args.update(over)
    return args


def _std(p, **over):
    args = dict(R=p.R, b=p.b, X=p.X, labels=p.labels, W_out=p.W_out, b_out=p.b_out, Y=p.Y)
    args.update(over)
    return args


def _nan_at(a, idx, value=np.nan):
    a = np.array(a, dtype=np.float64)
    a[idx] = value
    return a


def _not_orthogonal(R, layer, factor=1.01):
    R = R.copy()
    R[layer] *= factor
    return R


# (id, function, kwargs builder, regex the message must match)
BAD = [
    ("R-2d", "truncate", lambda p: dict(R=p.R[0], b=p.b, X=p.X), r"^R: expected shape"),
    ("R-not-square", "truncate", lambda p: dict(R=p.R[:, :, :2], b=p.b, X=p.X), r"^R: .*square"),
    ("R-no-layers", "truncate", lambda p: dict(R=p.R[:0], b=p.b[:0], X=p.X), r"^R: "),
    ("b-wrong-L", "truncate", lambda p: dict(R=p.R, b=np.zeros((3, 3)), X=p.X), r"^b: expected shape .*axis 0"),
    ("b-wrong-M", "truncate", lambda p: dict(R=p.R, b=np.zeros((2, 4)), X=p.X), r"^b: expected shape"),
    ("b-1d", "truncate", lambda p: dict(R=p.R, b=np.zeros(3), X=p.X), r"^b: expected shape"),
    ("X-wrong-M", "truncate", lambda p: dict(R=p.R, b=p.b, X=np.zeros((4, 2))), r"^X: expected shape .*axis 1"),
    ("X-1d", "truncate", lambda p: dict(R=p.R, b=p.b, X=np.zeros(3)), r"^X: expected shape"),
    ("X-empty", "truncate", lambda p: dict(R=p.R, b=p.b, X=np.zeros((0, 3))), r"^X: has no rows"),
    ("X-nan", "truncate", lambda p: dict(R=p.R, b=p.b, X=_nan_at(p.X, (3, 1))), r"^X: contains nan at index \[3, 1\]"),
    ("X-inf", "loss", lambda p: _euclid(p, X=_nan_at(p.X, (7, 2), np.inf)), r"^X: contains inf at index \[7, 2\]"),
    ("b-inf", "gradient", lambda p: _euclid(p, b=_nan_at(p.b, (1, 0), -np.inf)), r"^b: contains -inf at index \[1, 0\]"),
    ("R-nan", "sector_codes", lambda p: dict(R=_nan_at(p.R, (1, 2, 0)), b=p.b, X=p.X), r"^R: contains nan at index \[1, 2, 0\]"),
    ("targets-nan", "loss", lambda p: _euclid(p, targets=_nan_at(p.targets, (1, 1))), r"^targets: contains nan at index \[1, 1\]"),
    ("R-not-orthogonal", "gradient", lambda p: _euclid(p, R=_not_orthogonal(p.R, 1)),
     r"^R: layer 1 is not orthogonal: max\|RᵀR − I\| = 0\.0201"),
    ("R-slightly-off", "loss", lambda p: _euclid(p, R=_not_orthogonal(p.R, 0, 1 + 1e-6)), r"^R: layer 0 is not orthogonal.*2e-06"),
    ("X-complex", "truncate", lambda p: dict(R=p.R, b=p.b, X=p.X.astype(complex)), r"^X: .*complex"),
    ("R-complex", "truncate", lambda p: dict(R=p.R.astype(complex), b=p.b, X=p.X), r"^R: .*complex"),
    ("X-object", "truncate", lambda p: dict(R=p.R, b=p.b, X=p.X.astype(object)), r"^X: expected a real numeric array"),
    ("b-str", "truncate", lambda p: dict(R=p.R, b=p.b.astype(str), X=p.X), r"^b: expected a real numeric array"),
    ("targets-complex", "gradient", lambda p: _euclid(p, targets=p.targets + 0j), r"^targets: .*complex"),
    ("targets-wrong-M", "loss", lambda p: _euclid(p, targets=np.zeros((2, 4))), r"^targets: expected shape"),
    ("targets-empty", "loss", lambda p: _euclid(p, targets=np.zeros((0, 3))), r"^targets: has no rows"),
    ("labels-float", "loss", lambda p: _euclid(p, labels=p.labels.astype(float)), r"^labels: expected an integer array"),
    ("labels-bool", "loss", lambda p: _euclid(p, labels=p.labels.astype(bool)), r"^labels: expected an integer array"),
    ("labels-2d", "gradient", lambda p: _euclid(p, labels=p.labels[:, None]), r"^labels: expected shape \(10,\)"),
    ("labels-short", "gradient", lambda p: _euclid(p, labels=p.labels[:-1]), r"^labels: has 9 entries but X has 10 rows"),
    ("labels-too-big", "loss", lambda p: _euclid(p, labels=np.r_[p.labels[:-1], 2]),
     r"^labels: value 2 at index 9 is out of range 0\.\.1"),
    ("labels-negative", "gradient", lambda p: _euclid(p, labels=np.r_[-1, p.labels[1:]]),
     r"^labels: value -1 at index 0 is out of range"),
    ("labels-only", "loss", lambda p: _euclid(p, targets=None), r"labels and targets"),
    ("std-W-wrong-M", "standard_loss", lambda p: _std(p, W_out=np.zeros((2, 4))), r"^W_out: expected shape"),
    ("std-W-nan", "standard_gradient", lambda p: _std(p, W_out=_nan_at(p.W_out, (0, 2))), r"^W_out: contains nan at index \[0, 2\]"),
    ("std-b_out-wrong", "standard_gradient", lambda p: _std(p, b_out=np.zeros(3)), r"^b_out: expected shape"),
    ("std-Y-wrong-P", "standard_loss", lambda p: _std(p, Y=np.zeros((2, 3))), r"^Y: expected shape"),
    ("std-labels-range", "standard_loss", lambda p: _std(p, Y=p.Y[:1]), r"^labels: value 1 .*out of range 0\.\.0 \(Q = 1 from Y\)"),
    ("std-X-complex", "standard_gradient", lambda p: _std(p, X=p.X + 1j), r"^X: .*complex"),
    ("pullback-b_out", "pullback_targets", lambda p: dict(W_out=p.W_out, b_out=np.zeros(5), Y=p.Y), r"^b_out: expected shape"),
    ("pullback-Y", "pullback_targets", lambda p: dict(W_out=p.W_out, b_out=p.b_out, Y=np.zeros((2, 5))), r"^Y: expected shape"),
    ("pullback-W-inf", "pullback_targets", lambda p: dict(W_out=_nan_at(p.W_out, (1, 1), np.inf), b_out=p.b_out, Y=p.Y),
     r"^W_out: contains inf at index \[1, 1\]"),
    ("layers-bs", "layers_to_cumulative", lambda p: dict(Ws=p.R, bs=np.zeros((3, 3))), r"^bs: expected shape"),
    ("layers-Ws-not-square", "layers_to_cumulative", lambda p: dict(Ws=np.zeros((2, 3, 2)), bs=p.b), r"^Ws: .*square"),
    ("layers-empty-list", "layers_to_cumulative", lambda p: dict(Ws=[], bs=[]), r"^Ws: needs at least one layer"),
    ("layers-no-layers", "layers_to_cumulative", lambda p: dict(Ws=np.zeros((0, 2, 2)), bs=np.zeros((0, 2))),
     r"^Ws: needs at least one layer"),
    ("cumulative-no-layers", "cumulative_to_layers", lambda p: dict(Wc=np.zeros((0, 2, 2)), bc=np.zeros((0, 2))),
     r"^Wc: needs at least one layer"),
    ("cumulative-width-0", "cumulative_to_layers", lambda p: dict(Wc=np.zeros((2, 0, 0)), bc=np.zeros((2, 0))),
     r"^Wc: needs at least one layer and width"),
    ("aligned-no-layers", "aligned_from_cumulative", lambda p: dict(Wc=np.zeros((0, 2, 2)), bc=np.zeros((0, 2))),
     r"^Wc: needs at least one layer"),
    ("orthonormalize-complex", "orthonormalize", lambda p: dict(R=p.R + 0j), r"^R: .*complex"),
    ("orthonormalize-not-square", "orthonormalize", lambda p: dict(R=p.R[:, :2]), r"^R: expected .*square"),
    ("defect-not-square", "orthogonality_defect", lambda p: dict(R=p.R[:, :2]), r"^R: expected .*square"),
    ("defect-complex", "orthogonality_defect", lambda p: dict(R=p.R + 0j), r"^R: .*complex"),
    ("cumulative-bc", "cumulative_to_layers", lambda p: dict(Wc=p.R, bc=np.zeros((2, 4))), r"^bc: expected shape"),
]


@pytest.mark.parametrize("fname,build,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_input_error_naming_argument(prob, fname, build, pattern):
    kwargs = build(prob)
    args = list(kwargs.values())
    with pytest.raises(tf.InputError, match=pattern) as info:
        getattr(tf, fname)(*args)
    assert isinstance(info.value, ValueError)


def test_unknown_backend_and_form(prob):
    with pytest.raises(tf.InputError, match=r"^backend: unknown backend 'cuda'"):
        tf.gradient(*_euclid(prob).values(), backend="cuda")
    with pytest.raises(tf.InputError, match=r"^backend: unknown backend"):
        tf.truncate(prob.R, prob.b, prob.X, backend=None)
    with pytest.raises(tf.InputError, match=r"^form: unknown form 'fast'"):
        tf.gradient(*_euclid(prob).values(), form="fast")


def test_unavailable_backend_is_reported():
    for name, status in tf.backends().items():
        if status != "available":
            with pytest.raises(tf.BackendUnavailable, match=name):
                tf.truncate(np.eye(2)[None], np.zeros((1, 2)), np.zeros((1, 2)), backend=name)


def test_sector_codes_need_m_at_most_64(backend):
    M = 65
    with pytest.raises(tf.InputError, match=r"^R: .*M ≤ 64, got M = 65"):
        tf.sector_codes(np.eye(M)[None], np.zeros((1, M)), np.zeros((2, M)), backend=backend)
    # truncate has no such limit
    out = tf.truncate(np.eye(M)[None], np.zeros((1, M)), -np.ones((2, M)), backend=backend)
    np.testing.assert_array_equal(out, 0.0)


# ------------------------------------------------- accepted input layouts ---

def _call_all(p, backend, **over):
    """Every core function on (possibly re-laid-out) inputs; results in a dict."""
    a = dict(R=p.R, b=p.b, X=p.X, labels=p.labels, targets=p.targets, W_out=p.W_out, b_out=p.b_out, Y=p.Y)
    a.update(over)
    e = (a["R"], a["b"], a["X"], a["labels"], a["targets"])
    s = (a["R"], a["b"], a["X"], a["labels"], a["W_out"], a["b_out"], a["Y"])
    out = {
        "truncate": tf.truncate(a["R"], a["b"], a["X"], backend=backend),
        "codes": tf.sector_codes(a["R"], a["b"], a["X"], backend=backend),
        "loss": tf.loss(*e, backend=backend),
        "gradient": tf.gradient(*e, backend=backend),
        "standard_loss": tf.standard_loss(*s, backend=backend),
        "standard_gradient": tf.standard_gradient(*s, backend=backend),
        "pullback": tf.pullback_targets(a["W_out"], a["b_out"], a["Y"]),
    }
    return out


def _flat(results):
    for k, v in results.items():
        if isinstance(v, tuple):
            for i, x in enumerate(v):
                yield f"{k}[{i}]", x
        else:
            yield k, v


def _assert_same(r1, r2):
    for (k, x), (_, y) in zip(_flat(r1), _flat(r2)):
        if isinstance(x, float):
            assert x == y, k
        else:
            assert x.dtype == y.dtype and x.shape == y.shape, k
            np.testing.assert_array_equal(x, y, err_msg=k)


def _assert_fresh(results, inputs):
    for k, x in _flat(results):
        if isinstance(x, float):
            continue
        assert type(x) is np.ndarray, (k, type(x))
        assert x.dtype == (np.uint64 if k == "codes" else np.float64), k
        assert x.flags.writeable and x.flags.c_contiguous, k
        for a in inputs:
            assert not np.shares_memory(x, a), k


def _inputs(p):
    return dict(R=p.R, b=p.b, X=p.X, labels=p.labels, targets=p.targets, W_out=p.W_out, b_out=p.b_out, Y=p.Y)


LAYOUTS = {
    "readonly": lambda a, tmp: _readonly(a),
    "memmap": lambda a, tmp: _memmaps(a, tmp),
    "fortran": lambda a, tmp: {k: np.asfortranarray(v) for k, v in a.items()},
    "strided": lambda a, tmp: {k: _strided(v) for k, v in a.items()},
    "float32": lambda a, tmp: {k: v.astype(np.float32) if v.dtype.kind == "f" else v.astype(np.int32)
                               for k, v in a.items()},
    "float32-data-only": lambda a, tmp: dict(a, X=a["X"].astype(np.float32), targets=a["targets"].astype(np.float32)),
    "int-labels": lambda a, tmp: dict(a, labels=a["labels"].astype(np.uint8)),
    "lists": lambda a, tmp: {k: v.tolist() for k, v in a.items()},
    "big-endian": lambda a, tmp: {k: v.astype(v.dtype.newbyteorder(">")) for k, v in a.items()},
}


def _readonly(a):
    out = {}
    for k, v in a.items():
        v = v.copy()
        v.flags.writeable = False
        out[k] = v
    return out


def _memmaps(a, tmp):
    out = {}
    for k, v in a.items():
        path = tmp / f"{k}.npy"
        np.save(path, v)
        out[k] = np.load(path, mmap_mode="r")
        assert isinstance(out[k], np.memmap)
    return out


def _strided(v):
    """Same values through a non-contiguous view (every other element of a bigger array)."""
    big = np.zeros((2 * v.shape[0],) + v.shape[1:], dtype=v.dtype)
    big[::2] = v
    return big[::2]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_accepted_layouts_give_same_results_and_are_not_modified(backend, rng, tmp_path, layout):
    p = make_problem(rng, N=15, M=3, L=2, Q=3, P=4)
    base = _inputs(p)
    if layout == "float32-data-only":
        # results equal those of the float64 cast of the same values, bit for bit
        base = dict(base, X=base["X"].astype(np.float32).astype(np.float64),
                    targets=base["targets"].astype(np.float32).astype(np.float64))
    laid = LAYOUTS[layout](base, tmp_path)
    before = {k: np.array(v, copy=True) for k, v in laid.items()}
    expected = _call_all(p, backend, **base)
    got = _call_all(p, backend, **laid)
    if layout == "float32":
        # a float32 R is orthogonal only to float32 rounding (its float64 cast would
        # be rejected): results agree with the float64 problem to float32 accuracy
        for (k, x), (_, y) in zip(_flat(got), _flat(expected)):
            if k == "codes":
                assert (x == y).mean() > 0.9
            else:
                assert rel_err(x, y) < 1e-5, k
        _assert_same(_call_all(p, backend, **laid), got)
    else:
        _assert_same(got, expected)
    _assert_fresh(got, [v for v in laid.values() if isinstance(v, np.ndarray)])
    for k, v in laid.items():
        after = np.array(v, copy=True)
        assert after.dtype == before[k].dtype
        np.testing.assert_array_equal(after, before[k], err_msg=k)


def test_low_precision_rotations_accepted_within_their_roundoff(rng):
    R = np.array([np.linalg.qr(rng.standard_normal((4, 4)))[0] for _ in range(2)])
    X = rng.standard_normal((3, 4))
    for dt in (np.float32, np.float16):
        tf.truncate(R.astype(dt), np.zeros((2, 4)), X)
        with pytest.raises(tf.InputError, match="R: layer 1 is not orthogonal"):
            tf.truncate(_not_orthogonal(R, 1, 1.1).astype(dt), np.zeros((2, 4)), X)
    with pytest.raises(tf.InputError, match=r"R: layer \d is not orthogonal"):
        tf.truncate(R.astype(np.float32).astype(np.float64), np.zeros((2, 4)), X)


def test_integer_data_accepted(backend, rng):
    p = make_problem(rng, N=12, M=3, L=2, Q=2, kind="boundary")
    Xi = p.X.astype(np.int64)
    Ri = p.R.astype(np.int8)
    np.testing.assert_array_equal(tf.truncate(Ri, p.b, Xi, backend=backend), tf.truncate(p.R, p.b, p.X, backend=backend))
    a = tf.gradient(Ri, p.b, Xi, p.labels, p.targets, backend=backend)
    b = tf.gradient(p.R, p.b, p.X, p.labels, p.targets, backend=backend)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_results_are_new_arrays_even_for_float64_inputs(backend, rng):
    """C-contiguous float64 inputs are passed through without copies; results still are new."""
    p = make_problem(rng, N=9, M=3, L=2, Q=2, P=3)
    res = _call_all(p, backend)
    _assert_fresh(res, list(_inputs(p).values()))
    # writing to a result does not change the next call
    res["truncate"][:] = 0.0
    res["gradient"][1][:] = 0.0
    again = _call_all(p, backend)
    assert again["truncate"].any() and again["gradient"][1].any()


# --------------------------------------------------------- determinism ---

def test_repeated_calls_are_bitwise_equal(backend, rng):
    p = make_problem(rng, N=50, M=4, L=3, Q=3, P=2)
    _assert_same(_call_all(p, backend), _call_all(p, backend))


def test_results_do_not_depend_on_thread_count(backend, rng):
    from truncfast import _config

    N = 2 * _config.CHUNK_SIZE + 123  # several chunks
    p = make_problem(rng, N=N, M=3, L=2, Q=2, P=2)
    old = tf.get_num_threads()
    try:
        tf.set_num_threads(1)
        one = _call_all(p, backend)
        tf.set_num_threads(3)
        many = _call_all(p, backend)
    finally:
        tf.set_num_threads(old)
    _assert_same(one, many)


def test_backends_report():
    report = tf.backends()
    assert set(report) >= {"numpy", "numba", "c"}
    assert report["numpy"] == "available"
    for name, status in report.items():
        assert status == "available" or status.startswith("unavailable ("), (name, status)


def test_model_helpers_accept_readonly_and_return_fresh_arrays(rng):
    L, M, P = 3, 3, 2
    Wc = np.array([np.diag(rng.uniform(0.5, 2.0, M)) @ np.linalg.qr(rng.standard_normal((M, M)))[0]
                   for _ in range(L)])
    bc = rng.standard_normal((L, M))
    W_out, b_out, Y = rng.standard_normal((P, M)), rng.standard_normal(P), rng.standard_normal((2, P))
    ins = _readonly(dict(Wc=Wc, bc=bc, W_out=W_out, b_out=b_out, Y=Y))
    before = {k: v.copy() for k, v in ins.items()}
    outs = [*tf.cumulative_to_layers(ins["Wc"], ins["bc"]),
            *tf.layers_to_cumulative(ins["Wc"], ins["bc"]),
            *tf.aligned_from_cumulative(ins["Wc"], ins["bc"]),
            tf.pullback_targets(ins["W_out"], ins["b_out"], ins["Y"]),
            tf.orthonormalize(ins["Wc"])]
    for k, v in ins.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for x in outs:
        assert type(x) is np.ndarray and x.dtype == np.float64 and x.flags.writeable
        assert not any(np.shares_memory(x, v) for v in ins.values())


def test_cluster_moments_errors(rng):
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    with pytest.raises(tf.InputError, match="labels: cluster"):
        tf.cluster_moments(p.R, p.b, p.X, np.zeros(10, dtype=int), p.targets)
    with pytest.raises(tf.InputError, match="L == Q"):
        tf.cluster_moments(p.R[:1], p.b[:1], p.X, p.labels, p.targets)


def test_concurrent_calls_from_user_threads(backend, rng):
    """Calls from several Python threads at once give the serial results, bit for bit."""
    from concurrent.futures import ThreadPoolExecutor

    from truncfast import _config

    probs = [make_problem(rng, N=_config.CHUNK_SIZE + 500, M=3, L=2, Q=2) for _ in range(3)]
    serial = [tf.gradient(*p.euclid, backend=backend) for p in probs]
    with ThreadPoolExecutor(4) as ex:
        par = list(ex.map(lambda p: tf.gradient(*p.euclid, backend=backend), probs * 2))
    for want, got in zip(serial * 2, par):
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 123_457, 2**18 + 2**16 - 1])
def test_large_X_nonfinite_found_by_the_threaded_scan(bad, where):
    """Arrays of ≥ 2¹⁸ values are scanned on the engine's threads (exponent bits), not summed."""
    from truncfast._validate import _PARALLEL_FINITE, check_finite

    X = np.random.default_rng(0).standard_normal((2**16 + 2**14, 4))
    assert X.size >= _PARALLEL_FINITE
    check_finite("X", X)  # all finite: passes
    X.reshape(-1)[where] = bad
    with pytest.raises(tf.InputError, match=r"X: contains .*inf|X: contains nan"):
        check_finite("X", X)
    huge = np.full((2**16 + 2**14, 4), np.finfo(float).max)  # finite, overflows a sum: must pass
    check_finite("X", huge)
