"""Issue 7.1: every bad-input case of docs/errors.md raises InputError naming its
argument, the committed table is current, and the accepted layouts (read-only,
memmap, float32, other integer dtypes, Fortran order) work for the functions
that tests/test_core_validation.py does not cover (integrate, resume,
exact_bias_flow, cluster_moments) and are never modified.

The cases themselves live in ``docs/make_error_table.py`` (one list, used both
to generate the doc and here), so the doc and the tests cannot disagree.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import truncfast as tf
from truncfast import _validate
from conftest import make_problem, separated_problem

ROOT = Path(__file__).resolve().parents[1]


def _load_table_module():
    spec = importlib.util.spec_from_file_location("make_error_table", ROOT / "docs" / "make_error_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


TABLE = _load_table_module()


@pytest.mark.parametrize("case", TABLE.CASES, ids=[f"{c.function}-{c.what}" for c in TABLE.CASES])
def test_every_documented_case_raises_input_error_naming_the_argument(case, tmp_path):
    old = tf.get_num_threads()
    try:
        exc = TABLE.run_case(case, tmp_path)
    finally:
        tf.set_num_threads(old)
    assert exc is not None, f"{case.function}: {case.what}: no error raised"
    assert isinstance(exc, tf.InputError), f"{type(exc).__name__}: {exc}"
    assert isinstance(exc, ValueError)
    msg = str(exc)
    # the message starts with the argument's name ("labels and targets ..." names both)
    assert msg.startswith(case.arg + ":") or msg.startswith(case.arg + " and"), msg
    assert "np.float64(" not in msg, "messages print plain floats"


def test_errors_md_is_current():
    """docs/errors.md is what docs/make_error_table.py generates (regenerate it after a change)."""
    committed = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert committed == TABLE.table(), "docs/errors.md is stale: run python docs/make_error_table.py"


def test_table_covers_every_function_of_the_contract():
    covered = {c.function for c in TABLE.CASES}
    contract = {"truncate", "sector_codes", "loss", "gradient", "standard_loss", "standard_gradient", "integrate",
                "resume", "exact_bias_flow", "pullback_targets", "layers_to_cumulative", "cumulative_to_layers",
                "cluster_moments", "collapsed_output_loss", "collapsed_output_rhs", "collapsed_output_flow",
                "conserved_gram", "spectral_gap_bound", "positive_sector_output_solution",
                "positive_sector_output_flow"}
    assert contract <= covered, contract - covered


# ------------------------------------------------------ accepted layouts ---

def _layouts(arrays: dict, tmp_path: Path) -> dict[str, dict]:
    """The same values as read-only / memmap / Fortran / float32 / int32-label inputs."""
    out = {}
    ro = {}
    for k, v in arrays.items():
        v = np.array(v, copy=True)
        v.flags.writeable = False
        ro[k] = v
    out["readonly"] = ro
    mm = {}
    for k, v in arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
        mm[k] = np.load(tmp_path / f"{k}.npy", mmap_mode="r")
    out["memmap"] = mm
    out["fortran"] = {k: np.asfortranarray(v) for k, v in arrays.items()}
    out["int-labels"] = dict(arrays, labels=arrays["labels"].astype(np.uint16))
    out["float32-data"] = dict(arrays, X=arrays["X"].astype(np.float32))
    return out


def _snapshot(d: dict) -> dict:
    return {k: (np.array(v, copy=True), np.asarray(v).dtype) for k, v in d.items()}


def _unchanged(before: dict, after: dict) -> None:
    for k, (v, dt) in before.items():
        now = np.asarray(after[k])
        assert now.dtype == dt, k
        np.testing.assert_array_equal(now, v, err_msg=k)


def test_layouts_through_integrate_resume_exact_and_moments(tmp_path, rng):
    p = separated_problem(rng, M=3, Q=2, n_per=10)
    base = dict(R=p.R, b=p.b, X=p.X, labels=p.labels, targets=p.targets)

    def run(a, tag):
        ck = tmp_path / f"ck-{tag}.npz"
        tr = tf.integrate(a["R"], a["b"], a["X"], a["labels"], a["targets"], dt=0.05, steps=4,
                          record_every=2, backend="numpy", checkpoint=ck)
        res = tf.resume(ck, a["X"], a["labels"], a["targets"])
        ex = tf.exact_bias_flow(a["R"], a["b"], a["X"], a["labels"], a["targets"], [0.0, 0.5])
        mom = tf.cluster_moments(a["R"], a["b"], a["X"], a["labels"], a["targets"], backend="numpy")
        return [tr.R, tr.b, tr.loss, res.b, ex, mom["m1"], mom["m2"]]

    want = run(base, "base")
    for name, laid in _layouts(base, tmp_path).items():
        before = _snapshot(laid)
        got = run(laid, name)
        if name == "float32-data":
            ref = run(dict(base, X=base["X"].astype(np.float32).astype(np.float64)), "f32ref")
        else:
            ref = want
        for g, w in zip(got, ref):
            np.testing.assert_array_equal(g, w, err_msg=name)
        _unchanged(before, laid)


def test_c_contiguous_float64_memmaps_pass_the_boundary_without_a_copy(tmp_path, rng):
    """The validated X *is* the memmap's buffer (no copy), for every function's check."""
    p = make_problem(rng, N=50, M=3, L=2, Q=2)
    np.save(tmp_path / "X.npy", p.X)
    np.save(tmp_path / "labels.npy", p.labels.astype(np.int64))
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    labels = np.load(tmp_path / "labels.npy", mmap_mode="r")
    R, b, Xv, lab, T = _validate.check_problem(p.R, p.b, X, labels, p.targets)
    assert np.shares_memory(Xv, X) and np.shares_memory(lab, labels)
    assert not Xv.flags.writeable  # the read-only view stays read-only: kernels cannot write into it


def test_layouts_through_model_and_output_layer_functions(tmp_path):
    """pullback_targets, layers↔cumulative and the output-layer flows accept read-only,
    memmapped, Fortran-ordered and float32 inputs, give the float64 results, and never
    modify them."""
    d = TABLE._base()
    W, Xc, Y, pi = d["W_out"], d["Xc"], d["Y"], d["pi"]
    arrays = dict(W=W, b_out=d["b_out"], Xc=Xc, Y=Y, pi=pi, X=d["X"], labels=d["labels"], R=d["R"], b=d["b"])

    def run(a):
        return [
            tf.pullback_targets(a["W"], a["b_out"], a["Y"]),
            *tf.layers_to_cumulative(a["R"], a["b"]),
            *tf.cumulative_to_layers(a["R"], a["b"]),
            np.float64(tf.collapsed_output_loss(a["W"], a["Xc"], a["Y"], a["pi"])),
            *tf.collapsed_output_rhs(a["W"], a["Xc"], a["Y"], a["pi"]),
            tf.conserved_gram(a["W"], a["Xc"]),
            tf.collapsed_output_flow(a["W"], a["Xc"], a["Y"], a["pi"], dt=0.1, steps=3).loss,
            tf.positive_sector_output_solution(a["W"], a["b_out"], a["X"], a["labels"], a["Y"], [0.0, 1.0]).loss,
            tf.positive_sector_output_flow(a["W"], a["b_out"], a["X"], a["labels"], a["Y"], dt=0.1, steps=2).loss,
        ]

    want = run(arrays)
    for name, laid in _layouts(arrays, tmp_path).items():
        if name == "float32-data":
            laid = dict(arrays, W=arrays["W"].astype(np.float32))
            ref = run(dict(arrays, W=arrays["W"].astype(np.float32).astype(np.float64)))
        else:
            ref = want
        before = _snapshot(laid)
        got = run(laid)
        for g, w in zip(got, ref):
            assert np.asarray(g).dtype == np.float64
            np.testing.assert_array_equal(g, w, err_msg=name)
        _unchanged(before, laid)
