#!/usr/bin/env python
"""Generate ``docs/errors.md``: every bad-input case of the public API and its exact message.

Each case is run against the installed truncfast, so the table shows the
message the library really gives (the doc cannot drift from the code: a test,
``tests/test_reliability_errors.py``, regenerates the table and compares it
with the committed file, and checks that every case raises
``truncfast.InputError`` whose message starts with the argument's name).

Usage::

    python docs/make_error_table.py            # rewrite docs/errors.md
    python docs/make_error_table.py --check    # exit 1 if docs/errors.md is stale

The inputs are small and fixed (no randomness beyond a seeded generator), so
the numbers in the messages are reproducible.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

import truncfast as tf
import truncfast.unaligned as tu
from truncfast import data as tf_data

HERE = Path(__file__).resolve().parent
OUT = HERE / "errors.md"


# ------------------------------------------------------------ fixed data ---

def _base() -> dict[str, Any]:
    """A small valid problem: N = 6 points, M = 3, L = 2 layers, Q = 2 clusters, P = 2 outputs."""
    rng = np.random.default_rng(20260127)
    R = np.array([np.linalg.qr(rng.standard_normal((3, 3)))[0] for _ in range(2)])
    return dict(
        R=R,
        b=np.array([[0.5, -0.2, 0.1], [0.0, 0.3, -0.4]]),
        X=np.arange(18, dtype=np.float64).reshape(6, 3) / 10.0 - 0.8,
        labels=np.array([0, 1, 0, 1, 1, 0]),
        targets=np.array([[1.0, 0.0, 0.5], [-1.0, 0.5, 0.0]]),
        W_out=np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]]),
        b_out=np.array([0.1, -0.1]),
        Y=np.array([[1.0, 0.0], [0.0, 1.0]]),
        Xc=np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        pi=np.array([0.5, 0.5]),
    )


def _set(a: np.ndarray, idx, value) -> np.ndarray:
    a = np.array(a, dtype=np.result_type(a, type(value)) if not isinstance(value, float) else np.float64)
    a[idx] = value
    return a


def _scaled(R: np.ndarray, layer: int, factor: float) -> np.ndarray:
    R = R.copy()
    R[layer] *= factor
    return R


def _row_scaled(R: np.ndarray, layer: int, row: int, factor: float) -> np.ndarray:
    R = R.copy()
    R[layer, row] *= factor
    return R


def _euclid(d, **over):
    a = dict(R=d["R"], b=d["b"], X=d["X"], labels=d["labels"], targets=d["targets"])
    a.update(over)
    return (a.pop("R"), a.pop("b"), a.pop("X"), a.pop("labels"), a.pop("targets")), a


def _std(d, **over):
    a = dict(R=d["R"], b=d["b"], X=d["X"], labels=d["labels"], W_out=d["W_out"], b_out=d["b_out"], Y=d["Y"])
    a.update(over)
    keys = ("R", "b", "X", "labels", "W_out", "b_out", "Y")
    return tuple(a.pop(k) for k in keys), a


# ------------------------------------------------------------------ cases ---

@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: ``call(data, tmpdir)`` must raise InputError naming ``arg``."""

    function: str
    what: str
    arg: str
    call: Callable[[dict, Path], Any]


def _with_free_memory(nbytes: int, call: Callable[[], Any]) -> Any:
    """``call()`` as if psutil reported ``nbytes`` of available memory (a machine-independent table)."""
    import psutil
    from unittest import mock

    fake = mock.Mock(wraps=psutil.virtual_memory(), available=nbytes)
    with mock.patch("psutil.virtual_memory", return_value=fake):
        return call()


def _checkpoint(d, tmp: Path, **kw) -> Path:
    path = tmp / "ck.npz"
    if not path.exists():
        (R, b, X, labels, T), _ = _euclid(d)
        tf.integrate(R, b, X, labels, T, dt=0.1, steps=3, checkpoint=path, backend="numpy")
    return path


def _corrupted(d, tmp: Path, how: str) -> Path:
    raw = bytearray(_checkpoint(d, tmp).read_bytes())
    bad = tmp / f"bad-{how}.npz"
    if how == "truncated":
        bad.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # rewrite the archive with one changed number: zip CRCs are fine, the sha256 is not
        with np.load(tmp / "ck.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["b"] = arrays["b"] + 1e-9
        np.savez(bad, **arrays)
    return bad


def _saved(d, tmp: Path) -> Path:
    path = tmp / "saved.npz"
    (R, b, X, labels, T), _ = _euclid(d)
    tf.integrate(R, b, X, labels, T, dt=0.1, steps=1, backend="numpy").save(path)
    return path


def _call(fname: str, args_kw):
    args, kw = args_kw
    return getattr(tf, fname)(*args, **kw)


def _integ(d, **kw):
    (R, b, X, labels, T), over = _euclid(d, **{k: v for k, v in kw.items() if k in ("R", "b", "X", "labels", "targets")})
    opts = dict(dt=0.1, steps=2, backend="numpy")
    opts.update({k: v for k, v in kw.items() if k not in ("R", "b", "X", "labels", "targets")})
    return tf.integrate(R, b, X, labels, T, **opts)


def _changed_under(d):
    X = d["X"].copy()
    fe = tf.FlowEvaluator(X, d["labels"], d["targets"])
    fe.loss(d["R"], d["b"])
    X[-1, 0] += 1.0
    return fe.loss(d["R"], d["b"])


def _wide(M: int = 65):
    return np.eye(M)[None], np.zeros((1, M)), np.zeros((2, M))


CASES: list[Case] = [
    # --- shapes of R, b, X
    Case("truncate", "R is 2-D (one matrix instead of a stack)", "R",
         lambda d, t: tf.truncate(d["R"][0], d["b"], d["X"])),
    Case("truncate", "R_ℓ not square", "R", lambda d, t: tf.truncate(d["R"][:, :, :2], d["b"], d["X"])),
    Case("truncate", "R has no layers (L = 0)", "R", lambda d, t: tf.truncate(d["R"][:0], d["b"][:0], d["X"])),
    Case("truncate", "mismatched L between R and b", "b", lambda d, t: tf.truncate(d["R"], d["b"][:1], d["X"])),
    Case("truncate", "b has the wrong width", "b", lambda d, t: tf.truncate(d["R"], np.zeros((2, 4)), d["X"])),
    Case("truncate", "b is 1-D", "b", lambda d, t: tf.truncate(d["R"], d["b"][0], d["X"])),
    Case("truncate", "X has the wrong width", "X", lambda d, t: tf.truncate(d["R"], d["b"], d["X"][:, :2])),
    Case("truncate", "X is 1-D (a single point)", "X", lambda d, t: tf.truncate(d["R"], d["b"], d["X"][0])),
    Case("truncate", "X is None", "X", lambda d, t: tf.truncate(d["R"], d["b"], None)),
    Case("truncate", "X has no rows", "X", lambda d, t: tf.truncate(d["R"], d["b"], d["X"][:0])),
    # --- R orthogonality
    Case("truncate", "R not orthogonal (layer 1 scaled by 1.01)", "R",
         lambda d, t: tf.truncate(_scaled(d["R"], 1, 1.01), d["b"], d["X"])),
    Case("gradient", "R slightly off O(M) (1e-6)", "R",
         lambda d, t: _call("gradient", _euclid(d, R=_scaled(d["R"], 0, 1 + 1e-6)))),
    # --- NaN / inf
    Case("truncate", "NaN in X", "X", lambda d, t: tf.truncate(d["R"], d["b"], _set(d["X"], (4, 2), np.nan))),
    Case("loss", "inf in X (and more)", "X",
         lambda d, t: _call("loss", _euclid(d, X=_set(_set(d["X"], (1, 0), np.inf), (5, 1), -np.inf)))),
    Case("gradient", "−inf in b", "b", lambda d, t: _call("gradient", _euclid(d, b=_set(d["b"], (1, 2), -np.inf)))),
    Case("sector_codes", "NaN in R", "R", lambda d, t: tf.sector_codes(_set(d["R"], (0, 1, 2), np.nan), d["b"], d["X"])),
    Case("loss", "NaN in targets", "targets", lambda d, t: _call("loss", _euclid(d, targets=_set(d["targets"], (1, 0), np.nan)))),
    # --- dtypes
    Case("truncate", "complex X", "X", lambda d, t: tf.truncate(d["R"], d["b"], d["X"] + 0j)),
    Case("truncate", "complex R", "R", lambda d, t: tf.truncate(d["R"].astype(complex), d["b"], d["X"])),
    Case("truncate", "object-dtype X", "X", lambda d, t: tf.truncate(d["R"], d["b"], d["X"].astype(object))),
    Case("truncate", "string b", "b", lambda d, t: tf.truncate(d["R"], d["b"].astype(str), d["X"])),
    Case("gradient", "complex targets", "targets", lambda d, t: _call("gradient", _euclid(d, targets=d["targets"] + 0j))),
    # --- labels
    Case("loss", "float labels", "labels", lambda d, t: _call("loss", _euclid(d, labels=d["labels"].astype(float)))),
    Case("loss", "boolean labels", "labels", lambda d, t: _call("loss", _euclid(d, labels=d["labels"].astype(bool)))),
    Case("gradient", "labels 2-D", "labels", lambda d, t: _call("gradient", _euclid(d, labels=d["labels"][:, None]))),
    Case("gradient", "mismatched N between X and labels", "labels",
         lambda d, t: _call("gradient", _euclid(d, labels=d["labels"][:-1]))),
    Case("loss", "label ≥ Q", "labels", lambda d, t: _call("loss", _euclid(d, labels=_set(d["labels"], 3, 2)))),
    Case("gradient", "negative label", "labels", lambda d, t: _call("gradient", _euclid(d, labels=_set(d["labels"], 0, -1)))),
    Case("loss", "labels without targets", "labels", lambda d, t: _call("loss", _euclid(d, targets=None))),
    # --- targets
    Case("loss", "targets of the wrong width", "targets", lambda d, t: _call("loss", _euclid(d, targets=np.zeros((2, 4))))),
    Case("loss", "targets 1-D", "targets", lambda d, t: _call("loss", _euclid(d, targets=d["targets"][0]))),
    Case("loss", "targets with no rows", "targets", lambda d, t: _call("loss", _euclid(d, targets=np.zeros((0, 3))))),
    # --- forms and backends
    Case("gradient", "unknown form", "form", lambda d, t: _call("gradient", (_euclid(d)[0], dict(form="fast")))),
    Case("gradient", "unknown backend", "backend", lambda d, t: _call("gradient", (_euclid(d)[0], dict(backend="cuda")))),
    Case("truncate", "backend not a string", "backend", lambda d, t: tf.truncate(d["R"], d["b"], d["X"], backend=None)),
    Case("gradient", "form='separated' with L ≠ Q", "targets",
         lambda d, t: tf.gradient(d["R"], d["b"], d["X"], d["labels"], np.zeros((3, 3)), form="separated")),
    Case("gradient", "form='separated' with an empty cluster", "labels",
         lambda d, t: tf.gradient(d["R"], d["b"], d["X"], np.zeros(6, dtype=int), d["targets"], form="separated")),
    Case("cluster_moments", "empty cluster", "labels",
         lambda d, t: tf.cluster_moments(d["R"], d["b"], d["X"], np.zeros(6, dtype=int), d["targets"])),
    Case("cluster_moments", "L ≠ Q", "targets",
         lambda d, t: tf.cluster_moments(d["R"], d["b"], d["X"], d["labels"], np.zeros((3, 3)))),
    Case("sector_codes", "M > 64", "R", lambda d, t: tf.sector_codes(*_wide())),
    # --- standard loss / output layer
    Case("standard_loss", "W_out of the wrong width", "W_out", lambda d, t: _call("standard_loss", _std(d, W_out=np.zeros((2, 4))))),
    Case("standard_gradient", "NaN in W_out", "W_out",
         lambda d, t: _call("standard_gradient", _std(d, W_out=_set(d["W_out"], (0, 2), np.nan)))),
    Case("standard_gradient", "b_out of the wrong length", "b_out", lambda d, t: _call("standard_gradient", _std(d, b_out=np.zeros(3)))),
    Case("standard_loss", "Y of the wrong width", "Y", lambda d, t: _call("standard_loss", _std(d, Y=np.zeros((2, 3))))),
    Case("standard_loss", "label ≥ Q (Q from Y)", "labels", lambda d, t: _call("standard_loss", _std(d, Y=d["Y"][:1]))),
    Case("pullback_targets", "b_out of the wrong length", "b_out", lambda d, t: tf.pullback_targets(d["W_out"], np.zeros(5), d["Y"])),
    Case("pullback_targets", "Y of the wrong width", "Y", lambda d, t: tf.pullback_targets(d["W_out"], d["b_out"], np.zeros((2, 5)))),
    Case("pullback_targets", "inf in W_out", "W_out",
         lambda d, t: tf.pullback_targets(_set(d["W_out"], (1, 1), np.inf), d["b_out"], d["Y"])),
    # --- layers <-> cumulative
    Case("layers_to_cumulative", "bs of the wrong shape", "bs", lambda d, t: tf.layers_to_cumulative(d["R"], np.zeros((3, 3)))),
    Case("layers_to_cumulative", "Ws not square", "Ws", lambda d, t: tf.layers_to_cumulative(np.zeros((2, 3, 2)), d["b"])),
    Case("layers_to_cumulative", "NaN in Ws", "Ws", lambda d, t: tf.layers_to_cumulative(_set(d["R"], (1, 0, 0), np.nan), d["b"])),
    Case("cumulative_to_layers", "bc of the wrong shape", "bc", lambda d, t: tf.cumulative_to_layers(d["R"], np.zeros((2, 4)))),
    Case("cumulative_to_layers", "singular W^(ℓ)", "Wc",
         lambda d, t: tf.cumulative_to_layers(np.array([np.zeros((3, 3)), np.eye(3)]), d["b"])),
    Case("orthonormalize", "R not square", "R", lambda d, t: tf.orthonormalize(np.zeros((2, 3, 2)))),
    # --- integrate
    Case("integrate", "dt = 0", "dt", lambda d, t: _integ(d, dt=0.0)),
    Case("integrate", "dt < 0", "dt", lambda d, t: _integ(d, dt=-0.1)),
    Case("integrate", "dt NaN", "dt", lambda d, t: _integ(d, dt=float("nan"))),
    Case("integrate", "dt inf", "dt", lambda d, t: _integ(d, dt=float("inf"))),
    Case("integrate", "dt a string", "dt", lambda d, t: _integ(d, dt="0.1")),
    Case("integrate", "negative steps", "steps", lambda d, t: _integ(d, steps=-1)),
    Case("integrate", "non-integer steps", "steps", lambda d, t: _integ(d, steps=2.5)),
    Case("integrate", "record_every = 0", "record_every", lambda d, t: _integ(d, record_every=0)),
    Case("integrate", "records that cannot fit in memory (10¹⁵ steps, every one recorded; 16 GiB free)",
         "record_every", lambda d, t: _with_free_memory(16 * 2**30, lambda: _integ(d, steps=10**15, record_every=1))),
    Case("integrate", "checkpoint_every = 0", "checkpoint_every", lambda d, t: _integ(d, checkpoint_every=0)),
    Case("integrate", "unknown method", "method", lambda d, t: _integ(d, method="rk4")),
    Case("integrate", "unknown backend", "backend", lambda d, t: _integ(d, backend="gpu")),
    Case("integrate", "unknown form", "form", lambda d, t: _integ(d, form="fast")),
    Case("integrate", "unknown engine", "engine", lambda d, t: _integ(d, engine="fast")),
    Case("integrate", "train_weights not a bool", "train_weights", lambda d, t: _integ(d, train_weights=1)),
    Case("integrate", "method='exp-euler' with L ≠ Q", "targets",
         lambda d, t: _integ(d, method="exp-euler", targets=np.zeros((3, 3)))),
    Case("integrate", "checkpoint not a path", "checkpoint", lambda d, t: _integ(d, checkpoint=3)),
    Case("integrate", "non-orthogonal R", "R", lambda d, t: _integ(d, R=_scaled(d["R"], 1, 1.01))),
    Case("integrate", "NaN in X", "X", lambda d, t: _integ(d, X=_set(d["X"], (2, 0), np.nan))),
    # --- integrate to a flow time / a tolerance (docs/theory.md §12)
    Case("integrate", "both steps and t1", "steps", lambda d, t: _integ(d, t1=1.0)),
    Case("integrate", "neither steps nor t1", "steps", lambda d, t: _integ(d, steps=None)),
    Case("integrate", "t1 = 0", "t1", lambda d, t: _integ(d, steps=None, t1=0.0)),
    Case("integrate", "t1 NaN", "t1", lambda d, t: _integ(d, steps=None, t1=float("nan"))),
    Case("integrate", "rtol = 0", "rtol", lambda d, t: _integ(d, steps=None, t1=1.0, rtol=0.0)),
    Case("integrate", "rtol NaN", "rtol", lambda d, t: _integ(d, steps=None, t1=1.0, rtol=float("nan"))),
    Case("integrate", "rtol below 1e-14", "rtol", lambda d, t: _integ(d, steps=None, t1=1.0, rtol=1e-16)),
    Case("integrate", "atol < 0", "atol", lambda d, t: _integ(d, steps=None, t1=1.0, atol=-1e-6)),
    Case("integrate", "rtol with a step count", "steps", lambda d, t: _integ(d, rtol=1e-6)),
    Case("integrate", "rtol with a method without error estimate", "method",
         lambda d, t: _integ(d, steps=None, t1=1.0, rtol=1e-6, method="lie-euler")),
    Case("integrate", "saveat not increasing", "saveat", lambda d, t: _integ(d, steps=None, t1=1.0, saveat=[0.5, 0.2])),
    Case("integrate", "saveat outside [0, t1]", "saveat", lambda d, t: _integ(d, steps=None, t1=1.0, saveat=[0.5, 1.5])),
    Case("integrate", "saveat without t1", "saveat", lambda d, t: _integ(d, saveat=[0.1])),
    Case("integrate", "record_every with saveat", "record_every",
         lambda d, t: _integ(d, steps=None, t1=1.0, saveat=[0.5], record_every=2)),
    Case("integrate", "unknown events", "events", lambda d, t: _integ(d, steps=None, t1=1.0, rtol=1e-6, events="all")),
    # --- integrate_standard
    Case("integrate_standard", "method='exp-euler'", "method",
         lambda d, t: tf.integrate_standard(*_std(d)[0], dt=0.1, steps=2, method="exp-euler", backend="numpy")),
    Case("integrate_standard", "form='separated'", "form",
         lambda d, t: tf.integrate_standard(*_std(d)[0], dt=0.1, steps=2, form="separated", backend="numpy")),
    Case("integrate_standard", "train_output not a bool", "train_output",
         lambda d, t: tf.integrate_standard(*_std(d)[0], dt=0.1, steps=2, train_output="yes", backend="numpy")),
    Case("integrate_standard", "W_out of the wrong width", "W_out",
         lambda d, t: tf.integrate_standard(*_std(d, W_out=np.zeros((2, 4)))[0], dt=0.1, steps=2, backend="numpy")),
    # --- FlowEvaluator
    Case("FlowEvaluator", "unknown engine", "engine",
         lambda d, t: tf.FlowEvaluator(d["X"], d["labels"], d["targets"], engine="gpu")),
    Case("FlowEvaluator", "X changed after the evaluator was built", "X", lambda d, t: _changed_under(d)),
    Case("FlowEvaluator", "a state of another width than X", "b",
         lambda d, t: tf.FlowEvaluator(d["X"], d["labels"], d["targets"]).loss(np.eye(2)[None], np.zeros((1, 2)))),
    # --- resume
    Case("resume", "path not a path", "path", lambda d, t: tf.resume(3, d["X"], d["labels"], d["targets"])),
    Case("resume", "no such file", "path", lambda d, t: tf.resume(t / "absent.npz", d["X"], d["labels"], d["targets"])),
    Case("resume", "truncated checkpoint file", "path",
         lambda d, t: tf.resume(_corrupted(d, t, "truncated"), d["X"], d["labels"], d["targets"])),
    Case("resume", "checkpoint whose contents changed (checksum)", "path",
         lambda d, t: tf.resume(_corrupted(d, t, "changed"), d["X"], d["labels"], d["targets"])),
    Case("resume", "a saved trajectory, not a checkpoint", "path",
         lambda d, t: tf.resume(_saved(d, t), d["X"], d["labels"], d["targets"])),
    Case("resume", "different data than the checkpoint's", "X",
         lambda d, t: tf.resume(_checkpoint(d, t), d["X"] + 1.0, d["labels"], d["targets"])),
    Case("resume", "fewer points than the checkpoint's", "X",
         lambda d, t: tf.resume(_checkpoint(d, t), d["X"][:4], d["labels"][:4], d["targets"])),
    Case("resume", "unknown backend", "backend",
         lambda d, t: tf.resume(_checkpoint(d, t), d["X"], d["labels"], d["targets"], backend="gpu")),
    Case("resume", "checkpoint_every = 0", "checkpoint_every",
         lambda d, t: tf.resume(_checkpoint(d, t), d["X"], d["labels"], d["targets"], checkpoint_every=0)),
    # --- exact bias flow
    Case("exact_bias_flow", "negative time", "times",
         lambda d, t: tf.exact_bias_flow(*_euclid(d)[0], [0.0, -1.0])),
    Case("exact_bias_flow", "NaN time", "times", lambda d, t: tf.exact_bias_flow(*_euclid(d)[0], [0.0, np.nan])),
    Case("exact_bias_flow", "times a string", "times", lambda d, t: tf.exact_bias_flow(*_euclid(d)[0], "abc")),
    Case("exact_bias_flow", "times 2-D", "times", lambda d, t: tf.exact_bias_flow(*_euclid(d)[0], [[0.0, 1.0]])),
    Case("exact_bias_flow", "L ≠ Q", "targets",
         lambda d, t: tf.exact_bias_flow(d["R"], d["b"], d["X"], d["labels"], np.zeros((3, 3)), [0.0])),
    Case("exact_bias_flow", "empty cluster", "labels",
         lambda d, t: tf.exact_bias_flow(d["R"], d["b"], d["X"], np.ones(6, dtype=int), d["targets"], [0.0])),
    # --- output-layer flows (docs/theory.md §8)
    Case("collapsed_output_loss", "Xc of the wrong width", "Xc",
         lambda d, t: tf.collapsed_output_loss(d["W_out"], np.zeros((2, 4)), d["Y"], d["pi"])),
    Case("collapsed_output_loss", "Y of the wrong shape", "Y",
         lambda d, t: tf.collapsed_output_loss(d["W_out"], d["Xc"], np.zeros((3, 2)), d["pi"])),
    Case("collapsed_output_rhs", "negative weight π", "pi",
         lambda d, t: tf.collapsed_output_rhs(d["W_out"], d["Xc"], d["Y"], np.array([0.5, -0.5]))),
    Case("collapsed_output_rhs", "π of the wrong length", "pi",
         lambda d, t: tf.collapsed_output_rhs(d["W_out"], d["Xc"], d["Y"], np.ones(3))),
    Case("conserved_gram", "Xc of the wrong width", "Xc", lambda d, t: tf.conserved_gram(d["W_out"], np.zeros((2, 2)))),
    Case("spectral_gap_bound", "negative time", "times",
         lambda d, t: tf.spectral_gap_bound(np.eye(2), np.eye(2) * 2, np.eye(2), d["pi"], [-1.0])),
    Case("collapsed_output_flow", "dt ≤ 0", "dt",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt=0.0, steps=1)),
    Case("collapsed_output_flow", "dt a string", "dt",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt="x", steps=1)),
    Case("collapsed_output_flow", "steps None", "steps",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt=0.1, steps=None)),
    Case("collapsed_output_flow", "unknown method", "method",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt=0.1, steps=1, method="rk45")),
    Case("positive_sector_output_solution", "label ≥ Q", "labels",
         lambda d, t: tf.positive_sector_output_solution(d["W_out"], d["b_out"], d["X"], d["labels"] + 1, d["Y"], [0.0])),
    Case("positive_sector_output_flow", "negative steps", "steps",
         lambda d, t: tf.positive_sector_output_flow(d["W_out"], d["b_out"], d["X"], d["labels"], d["Y"], dt=0.1, steps=-1)),
    Case("set_num_threads", "zero threads", "n", lambda d, t: tf.set_num_threads(0)),
    # --- unaligned weights (docs/theory.md §13)
    Case("unaligned.gradient", "W_ℓ not square", "W",
         lambda d, t: tu.gradient(d["R"][:, :, :2], d["b"], d["X"], d["labels"], d["targets"])),
    Case("unaligned.gradient", "singular W_ℓ", "W",
         lambda d, t: tu.gradient(_set(d["R"], (1, 2), 0.0), d["b"], d["X"], d["labels"], d["targets"])),
    Case("unaligned.loss", "ill-conditioned W_ℓ (one row scaled by 1e-12)", "W",
         lambda d, t: tu.loss(_row_scaled(d["R"], 0, 1, 1e-12), d["b"], d["X"], d["labels"], d["targets"])),
    Case("unaligned.truncate", "NaN in W", "W", lambda d, t: tu.truncate(_set(d["R"], (0, 0, 1), np.nan), d["b"], d["X"])),
    Case("unaligned.truncate", "mismatched L between W and b", "b", lambda d, t: tu.truncate(d["R"], d["b"][:1], d["X"])),
    Case("unaligned.gradient", "X of the wrong width", "X",
         lambda d, t: tu.gradient(d["R"], d["b"], d["X"][:, :2], d["labels"], d["targets"])),
    Case("unaligned.gradient", "mismatched N between X and labels", "labels",
         lambda d, t: tu.gradient(d["R"], d["b"], d["X"], d["labels"][:-1], d["targets"])),
    Case("unaligned.integrate", "dt ≤ 0", "dt",
         lambda d, t: tu.integrate(d["R"], d["b"], d["X"], d["labels"], d["targets"], dt=0.0, steps=1)),
    Case("unaligned.integrate", "unknown method", "method",
         lambda d, t: tu.integrate(d["R"], d["b"], d["X"], d["labels"], d["targets"], dt=0.1, steps=1, method="rk4")),
    Case("unaligned.alignment_defect", "W 2-D", "W", lambda d, t: tu.alignment_defect(d["R"][0])),
    # --- diagnostics (docs/theory.md §§6, 7)
    Case("sector_moments", "layer out of range", "layer",
         lambda d, t: tf.sector_moments(d["R"], d["b"], d["X"], d["labels"], 2)),
    Case("sector_moments", "negative label", "labels",
         lambda d, t: tf.sector_moments(d["R"], d["b"], d["X"], _set(d["labels"], 0, -1), 0)),
    Case("check_prop42", "L ≠ Q", "targets",
         lambda d, t: tf.check_prop42(d["R"], d["b"], d["X"], d["labels"], np.zeros((3, 3)))),
    Case("check_prop42", "negative eps", "eps", lambda d, t: tf.check_prop42(*_euclid(d)[0], eps=-0.1)),
    Case("neural_collapse", "NaN in features", "features",
         lambda d, t: tf.neural_collapse(_set(d["X"], (2, 1), np.nan), d["labels"])),
    Case("neural_collapse", "classifier of the wrong shape", "classifier",
         lambda d, t: tf.neural_collapse(d["X"], d["labels"], classifier=np.zeros((3, 3)))),
    Case("neural_collapse", "predictions of the wrong length", "predictions",
         lambda d, t: tf.neural_collapse(d["X"], d["labels"], predictions=d["labels"][:-1])),
    # --- issue 18: the second reliability round
    Case("set_num_threads", "a bool", "n", lambda d, t: tf.set_num_threads(True)),
    Case("set_num_threads", "a float", "n", lambda d, t: tf.set_num_threads(2.0)),
    Case("set_num_threads", "a string", "n", lambda d, t: tf.set_num_threads("4")),
    Case("set_num_threads", "more than MAX_THREADS (200000)", "n", lambda d, t: tf.set_num_threads(200_000)),
    Case("gradient", "X ~1e155 and targets ~1e154: the sums overflow", "X",
         lambda d, t: _call("gradient", _euclid(d, X=d["X"] * 1e155, targets=d["targets"] * 1e154))),
    Case("loss", "b ~ −1e300 (every point fully truncated): the loss overflows", "b",
         lambda d, t: _call("loss", _euclid(d, b=-np.abs(d["b"]) * 1e300 - 1e300))),
    Case("cluster_moments", "X and b ~1e200: the moments overflow", "X",
         lambda d, t: _call("cluster_moments", _euclid(d, X=d["X"] * 2e200, b=d["b"] * 1e200))),
    Case("standard_gradient", "W_out ~1e200: the residuals overflow", "W_out",
         lambda d, t: _call("standard_gradient", _std(d, W_out=d["W_out"] * 1e200))),
    Case("sector_codes", "X ~1e307: the pre-activations could overflow", "X",
         lambda d, t: tf.sector_codes(d["R"], d["b"], d["X"] * 1e307)),
    Case("integrate", "data so large that the initial loss overflows", "X",
         lambda d, t: _integ(d, X=d["X"] * 1e160, targets=d["targets"] * 1e150)),
    Case("integrate", "train_weights and train_biases both False", "train_weights",
         lambda d, t: _integ(d, train_weights=False, train_biases=False)),
    Case("integrate", "unknown on_instability", "on_instability", lambda d, t: _integ(d, on_instability="error")),
    Case("resume", "unknown on_instability", "on_instability",
         lambda d, t: tf.resume(_checkpoint(d, t), d["X"], d["labels"], d["targets"], on_instability="loud")),
    Case("Trajectory.save", "into a directory that does not exist", "path",
         lambda d, t: _integ(d).save(t / "missing" / "run.npz")),
    Case("collapsed_output_flow", "steps=True", "steps",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt=0.1, steps=True)),
    Case("collapsed_output_flow", "steps=2.0", "steps",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt=0.1, steps=2.0)),
    Case("collapsed_output_flow", "dt=True", "dt",
         lambda d, t: tf.collapsed_output_flow(d["W_out"], d["Xc"], d["Y"], d["pi"], dt=True, steps=2)),
    Case("positive_sector_output_flow", "steps=2.0", "steps",
         lambda d, t: tf.positive_sector_output_flow(d["W_out"], d["b_out"], d["X"], d["labels"], d["Y"], dt=0.1,
                                                     steps=2.0)),
    Case("collapsed_output_loss", "W and Xc ~1e200: the loss overflows", "W",
         lambda d, t: tf.collapsed_output_loss(d["W_out"] * 1e200, d["Xc"] * 1e200, d["Y"], d["pi"])),
    Case("aligned_from_cumulative", "zero weights (singular D)", "Wc",
         lambda d, t: tf.aligned_from_cumulative(np.zeros((2, 3, 3)), d["b"])),
    Case("layers_to_cumulative", "a product of layers overflows", "Ws",
         lambda d, t: tf.layers_to_cumulative(d["R"] * 1e200, d["b"])),
    Case("pullback_targets", "W_out tiny: its inverse overflows", "W_out",
         lambda d, t: tf.pullback_targets(np.eye(2, 3) * 1e-300, d["b_out"], d["Y"] * 1e10)),
    Case("exact_bias_flow", "check_separation='no' (a string)", "check_separation",
         lambda d, t: tf.exact_bias_flow(*_euclid(d)[0], [0.0], check_separation="no")),
    Case("data.make_problem", "n='10' (a string)", "n", lambda d, t: tf_data.make_problem("clusters", n="10")),
    Case("data.make_problem", "dim=2.5", "dim", lambda d, t: tf_data.make_problem("clusters", dim=2.5)),
    Case("data.make_problem", "seed=-1", "seed", lambda d, t: tf_data.make_problem("clusters", seed=-1)),
    Case("data.make_problem", "seed=1.5", "seed", lambda d, t: tf_data.make_problem("clusters", seed=1.5)),
    Case("data.make_problem", "separation=0", "separation", lambda d, t: tf_data.make_problem("clusters", separation=0)),
    Case("data.make_problem", "separation=1e300", "separation",
         lambda d, t: tf_data.make_problem("clusters", separation=1e300)),
    Case("data.load_file", "CSV with an empty label", "path", lambda d, t: tf_data.load_file(_text(t, "e.csv", "1,2,0\n1.5,2.5,\n"))),
    Case("data.load_file", "CSV with a stray text label among numbers", "path",
         lambda d, t: tf_data.load_file(_text(t, "s.csv", "1,2,0\n1,2,café\n1,2,1\n2,2,0\n"))),
    Case("data.load_file", "CSV with a fractional label", "path",
         lambda d, t: tf_data.load_file(_text(t, "f.csv", "1,2,0\n1,2,1.5\n"))),
    Case("data.load_file", "CSV with a short line", "path", lambda d, t: tf_data.load_file(_text(t, "c.csv", "1,2,0\n3\n"))),
    Case("data.load_file", "CSV with NaN", "path", lambda d, t: tf_data.load_file(_text(t, "n.csv", "1,2,0\nnan,2,1\n"))),
    Case("data.load_file", "a text file named .npy", "path", lambda d, t: tf_data.load_file(_text(t, "t.npy", "1,2,0\n"))),
    Case("data.load_file", "a pickled (object) .npy", "path", lambda d, t: tf_data.load_file(_pickled(t))),
]


def _text(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text, encoding="utf-8")
    return tmp / name


def _pickled(tmp: Path) -> Path:
    np.save(tmp / "p.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return tmp / "p.npy"



def run_case(case: Case, tmp: Path) -> BaseException | None:
    """Run one case on fresh data; return the exception it raised (None if it did not raise)."""
    try:
        case.call(_base(), tmp)
    except BaseException as exc:  # noqa: BLE001 - we report whatever comes out
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return exc
    return None


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    """The markdown of docs/errors.md (runs every case)."""
    lines = [
        "# Bad input: what truncfast says",
        "",
        "Every public function validates its arguments at the API boundary (`truncfast/_validate.py`",
        "and the checks next to each function) and raises `truncfast.InputError` (a `ValueError`)",
        "whose message starts with the name of the offending argument. The table below is",
        "**generated** by `python docs/make_error_table.py`, which runs each case on a small fixed",
        "problem (N = 6, M = 3, L = 2, Q = 2, P = 2); `tests/test_reliability_errors.py` checks that",
        "this file is current and that every case raises `InputError` naming its argument.",
        "",
        "Accepted without complaint (and never modified): read-only arrays, `np.memmap`s, float32",
        "(and other float) dtypes, any integer dtype for labels (and integer data), Fortran order and",
        "strided views, nested lists. A C-contiguous float64 array (including a read-only memmap) is",
        "passed to the kernels without a copy.",
        "",
        "Finite inputs too large for float64 (their squares or sums overflow) are bad input too: the",
        "message names the largest input and the magnitude that is safe, instead of returning NaN",
        "([guarantees.md](guarantees.md)). The data functions of `truncfast.data` (`make_problem`,",
        "`load_file`) follow the same rule; file problems name the file, the line and the value.",
        "",
        "Other errors: `truncfast.SeparationError` (the separated form's assumption fails at run time),",
        "`truncfast.DivergenceError` (`integrate`: the loss became non-finite or grew beyond",
        "`_config.DIVERGENCE_LOSS_FACTOR`, or rose with `on_instability=\"raise\"`; carries `step`,",
        "`loss`, `suggested_dt`, `trajectory`; the output-layer flows raise it too),",
        "`truncfast.StepSizeError` (adaptive `integrate`/`integrate_standard`: the step needed to meet",
        "the tolerance fell below `_config.ADAPTIVE_MIN_STEP` · max(t, t1); carries `step`, `time`, `h`,",
        "`trajectory`, the run up to the last accepted step),",
        "`truncfast.BackendUnavailable` (a backend asked for by name is not built here). A warning,",
        "`truncfast.InstabilityWarning`, reports unstable steps (the loss rose) with a smaller dt to try.",
        "",
        "| function | case | argument | message |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        old = tf.get_num_threads()
        try:
            for case in CASES:
                exc = run_case(case, tmp)
                if exc is None:
                    msg = "**(no error raised)**"
                elif isinstance(exc, tf.InputError):
                    msg = "`" + _md(str(exc)) + "`"
                else:
                    msg = f"**{type(exc).__name__}** (not InputError): `{_md(str(exc))}`"
                msg = msg.replace(tmpdir, "<tmp>")
                # digests of files hash bytes that depend on the machine (BLAS rounding,
                # versions): show their place, not their value, so the table is the same everywhere
                msg = re.sub(r"\b[0-9a-f]{16}…", "<sha256>…", msg)
                lines.append(f"| `{case.function}` | {_md(case.what)} | `{case.arg}` | {msg} |")
        finally:
            tf.set_num_threads(old)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that docs/errors.md is current")
    ns = ap.parse_args(argv)
    text = table()
    if ns.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale; run python {os.path.relpath(__file__)}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(CASES)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
