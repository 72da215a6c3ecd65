"""PyTorch references of :mod:`truncfast.backprop` and ``truncfast compare`` (issue 6).

* (a) autograd gradient descent in (R, b) with the exponential retraction has
  the iterates of ``integrate(method="lie-euler")`` (docs/api.md) to rounding;
* the layer-weight network built from (R, b) — for any positive diagonal D —
  reproduces ``truncate``, ``sector_codes`` and ``standard_loss``;
* (b) backprop in layer weights lowers the standard loss;
* ``truncfast compare`` end to end as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

import truncfast as tf  # noqa: E402
from truncfast import backprop as bp
from truncfast import data

from conftest import RTOL_COMPOSED  # noqa: E402


def _problem(output="random", seed=1, n=240, dim=3, clusters=3):
    return data.make_problem("clusters", n=n, dim=dim, clusters=clusters, seed=seed, spread=1.0, output=output)


@pytest.mark.parametrize("train", [(True, True), (True, False), (False, True)], ids=["both", "weights", "biases"])
def test_cumulative_gd_matches_lie_euler(train):
    p = _problem()
    tw, tb = train
    steps = 15
    traj = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=steps, backend="numpy",
                        train_weights=tw, train_biases=tb)
    ref = bp.cumulative_gd(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=steps,
                           train_weights=tw, train_biases=tb)
    R, b = ref.state
    assert np.abs(R - traj.R).max() <= 1e-12
    assert np.abs(b - traj.b).max() <= 1e-12 * max(1.0, np.abs(traj.b).max())
    np.testing.assert_allclose(ref.loss, traj.loss, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(ref.counts, np.asarray(traj.counts).sum(axis=2))
    assert traj.loss[-1] < traj.loss[0]


def test_cumulative_gd_every_state_matches():
    """Each recorded state of (a), not only the last, equals the integrator's."""
    p = _problem(seed=4, n=120, dim=4, clusters=2)
    for k in (1, 3, 7):
        traj = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.1, steps=k, backend="numpy")
        R, b = bp.cumulative_gd(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.1, steps=k).state
        assert np.abs(R - traj.R).max() <= 1e-12 and np.abs(b - traj.b).max() <= 1e-12


@pytest.mark.parametrize("scaled", [False, True])
def test_network_reproduces_truncation_and_standard_loss(scaled):
    p = _problem(output="random", seed=2)
    rng = np.random.default_rng(0)
    L, M = p.b0.shape
    d = rng.uniform(0.5, 2.0, (L, M)) if scaled else None
    net = bp.ReLUNetwork.from_cumulative(p.R0, p.b0, p.W_out, p.b_out, d=d)
    Z = tf.truncate(p.R0, p.b0, p.X)
    assert np.abs(net.truncate(p.X) - Z).max() <= RTOL_COMPOSED * max(1.0, np.abs(Z).max())
    out, codes = net.forward(p.X)
    np.testing.assert_array_equal(codes, tf.sector_codes(p.R0, p.b0, p.X))
    c_std = np.sum((out - p.Y[p.labels]) ** 2) / (2 * p.N)
    assert c_std == pytest.approx(tf.standard_loss(p.R0, p.b0, p.X, p.labels, p.W_out, p.b_out, p.Y),
                                  rel=RTOL_COMPOSED)
    # the layer weights are those of cumulative_to_layers, and they map back
    Wc, bc = net.cumulative()
    dd = np.ones((L, M)) if d is None else d
    np.testing.assert_allclose(Wc, dd[:, :, None] * p.R0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(bc, dd * p.b0, rtol=0, atol=1e-11)


def test_identity_output_layer_losses_agree():
    """With W_out = I, b_out = 0 the standard loss is C_E: both trainers start at the same value."""
    p = _problem(output="identity")
    net = bp.ReLUNetwork.from_cumulative(p.R0, p.b0)
    res = bp.train_backprop(net, p.X, p.labels, p.Y, lr=0.0, steps=0)
    assert res.loss[0] == pytest.approx(tf.loss(p.R0, p.b0, p.X, p.labels, p.targets), rel=1e-12)


def test_backprop_reduces_standard_loss():
    p = _problem(output="identity", seed=3)
    net = bp.ReLUNetwork.from_cumulative(p.R0, p.b0, p.W_out, p.b_out)
    res = bp.train_backprop(net, p.X, p.labels, p.Y, lr=0.01, steps=60, record_every=10)
    assert not res.info["diverged"]
    assert list(res.steps) == [0, 10, 20, 30, 40, 50, 60]
    assert res.loss[-1] < 0.5 * res.loss[0]
    assert res.counts.shape == (7, p.L, 3) and (res.counts.sum(axis=2) == p.N).all()
    # the trained network is a ReLUNetwork again, and its loss is the recorded one
    out, _ = res.state.forward(p.X)
    final = np.sum((out - p.Y[p.labels]) ** 2) / (2 * p.N)
    assert final <= res.loss[-1] + 1e-12 or final == pytest.approx(res.loss[-1], rel=1e-9)


def test_truncation_counts():
    codes = np.array([[0b111, 0], [0b101, 0b111], [0, 0b010]], dtype=np.uint64)
    np.testing.assert_array_equal(bp.truncation_counts(codes, 3), [[1, 1, 1], [1, 1, 1]])


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "truncfast", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_compare_cli(tmp_path):
    out = tmp_path / "cmp"
    r = _cli("compare", "--out", str(out), "--n", "200", "--dim", "3", "--clusters", "3", "--steps", "30",
             "--backend", "numpy", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "compare.json").read_text())
    assert set(s["methods"]) == {"effective flow", "autograd (R, b)", "backprop (layers)"}
    assert s["flow_vs_autograd_max_rel_loss_difference"] < 1e-10
    for m in s["methods"].values():
        assert m["seconds_per_step"] > 0 and np.isfinite(m["final_loss"])
    z = np.load(out / "compare.npz")
    assert z["flow_loss"].shape == (31,) and z["backprop_counts"].shape == (31, 3, 3)
    # trajectory level (issue 17): every run, every recorded time
    runs = {"effective flow", "unaligned flow", "backprop (layers)"}
    assert set(s["alignment_defect"]) == runs == set(s["collapse_times"]) == set(s["neural_collapse"])
    assert set(s["pattern_agreement"]) == {"effective flow", "unaligned flow", "initial state"}
    flow_defect = np.array(s["alignment_defect"]["effective flow"]["values"])
    assert flow_defect.shape == (31, 3) and flow_defect.max() < 1e-12  # R orthogonal: aligned
    assert np.array(s["alignment_defect"]["backprop (layers)"]["values"]).max() > 1e-6  # backprop leaves it
    for name in ("effective flow", "unaligned flow"):  # same start: the same sector codes at time 0
        a = s["pattern_agreement"][name]
        assert a["times"][0] == 0.0 and a["values"][0] == [1.0, 1.0, 1.0]
        assert len(s["neural_collapse"][name]["nc1"]) == 31 and len(s["collapse_times"][name]) == 3
    assert s["trajectory_level"]["backprop_steps"] == round(30 * s["dt"] / s["lr"])
    from PIL import Image

    with Image.open(out / "compare.png") as im:
        im.load()
        assert im.size[0] > 800 and im.size[1] > 400
    # a second run into the same directory needs --force
    r = _cli("compare", "--out", str(out), "--n", "200", "--steps", "2", "-q", cwd=tmp_path)
    assert r.returncode == 2 and "--force" in r.stderr


@pytest.mark.parametrize("args", [["--steps", "0"], ["--dt", "-1"], ["--steps", "x"], ["--backend", "nope"],
                                  ["--lr", "0"], ["--source", "nonsense"]])
def test_compare_cli_bad_args(tmp_path, args):
    r = _cli("compare", "--out", str(tmp_path / "o"), *args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "error" in r.stderr
    assert not (tmp_path / "o" / "compare.json").exists()


def test_missing_torch_message(tmp_path):
    """Without PyTorch: importing the module works, using it names the install command, compare exits 1."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import truncfast.backprop as bp\n"
            "from truncfast._app.cli import main\n"
            "try:\n    bp.require_torch()\nexcept ImportError as e:\n    print('MSG', e)\n"
            f"sys.exit(main(['compare', '--out', {str(tmp_path / 'o')!r}, '-q']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "pip install torch==2.13.0" in r.stdout and "pip install torch==2.13.0" in r.stderr
    assert not (tmp_path / "o").exists()
