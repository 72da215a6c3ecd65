"""End-to-end tests of the ``truncfast`` command line, run as subprocesses.

Tiny sizes keep the whole module to seconds: the point is that every output is
produced, decodes and agrees with the others, not the numbers themselves.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the back-port truncfast depends on there
    import tomli as tomllib

import numpy as np
import pytest

import truncfast as tf
from truncfast import data
from truncfast._app import config_file as _config_file
from truncfast._integrate.trajectory import Trajectory

REPO = Path(__file__).resolve().parents[1]

SMALL = """
[data]
source = "paper-2d"
n = 20
seed = 3

[integrate]
dt = 0.05
steps = 150
record_every = 3
train_weights = false

[output]
frames = 5
snapshots = 3
"""


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "truncfast", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def write_config(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """One small configured run shared by the output checks."""
    d = tmp_path_factory.mktemp("cli")
    cfg = write_config(d / "small.toml", SMALL)
    out = d / "run"
    res = run_cli("run", cfg, "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""  # --quiet: no progress bar, no messages
    return out


def test_run_writes_every_output(small_run: Path):
    names = {"config.toml", "trajectory.npz", "summary.json", "figdata.npz", "loss.png", "truncation.png",
             "sectors.png", "collapse.gif"}
    assert names <= {p.name for p in small_run.iterdir()}
    assert not [p for p in small_run.iterdir() if p.name.startswith(".tmp")]  # atomic writes left nothing behind


def test_figures_decode(small_run: Path):
    import matplotlib.image as mpimg
    from PIL import Image

    for name in ("loss.png", "truncation.png", "sectors.png"):
        img = mpimg.imread(small_run / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, name
        assert img[..., :3].std() > 0.01, name  # not a blank canvas
    with Image.open(small_run / "collapse.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames >= 3
        gif.seek(gif.n_frames - 1)
        gif.convert("RGB")


def test_trajectory_and_summary_agree(small_run: Path):
    traj = Trajectory.load(small_run / "trajectory.npz")
    loss = np.asarray(traj.loss)
    assert loss[-1] < 1e-2 * loss[0]
    assert np.all(np.diff(loss) <= 1e-12 * loss[0])  # a gradient flow: the loss never increases
    s = json.loads((small_run / "summary.json").read_text())
    assert (s["N"], s["M"], s["L"], s["Q"]) == (20, 2, 2, 2)
    assert s["cluster_sizes"] == [10, 10]
    assert s["steps"] == 150 == traj.last_step and s["records"] == len(traj.times)
    assert s["final_loss"] == pytest.approx(loss[-1], rel=1e-12, abs=0)
    assert s["initial_loss"] == pytest.approx(loss[0], rel=1e-12)
    assert s["final_time"] == pytest.approx(traj.times[-1])
    assert s["backend"] in ("numpy", "numba", "c")
    assert s["wall_time_s"] >= 0
    ct = traj.collapse_times
    assert len(s["collapse_times"]) == 2
    for a, b in zip(s["collapse_times"], ct):
        assert (a is None and math.isnan(b)) or a == pytest.approx(b)
    counts = np.asarray(traj.counts)
    assert s["final_counts"] == counts[-1].tolist()
    assert np.all(counts.sum(axis=3) == [10, 10])  # every point counted once per layer
    # biases-only flow on the paper's geometry: both clusters collapse (Prop. 4.2)
    assert s["final_counts_own_layer"]["fully_truncated"] == [10, 10]


def test_resolved_config_round_trips(small_run: Path):
    cfg = tomllib.loads((small_run / "config.toml").read_text())
    resolved = _config_file.resolve(cfg)
    assert resolved == cfg  # complete: every key written, nothing left to default
    assert set(cfg) == set(_config_file.SCHEMA)
    assert cfg["integrate"]["steps"] == 150 and cfg["integrate"]["train_weights"] is False
    assert cfg["integrate"]["method"] == "lie-euler"  # a default, written out


def test_plot_redraws(small_run: Path):
    (small_run / "loss.png").unlink()
    res = run_cli("plot", small_run, "--quiet")
    assert res.returncode == 0, res.stderr
    assert (small_run / "loss.png").stat().st_size > 1000


def test_existing_directory_needs_force(small_run: Path, tmp_path: Path):
    cfg = write_config(tmp_path / "c.toml", SMALL.replace("[output]", "[output]\nfigures = false\nanimation = false"))
    res = run_cli("run", cfg, "--out", small_run, "--quiet")
    assert res.returncode == 2
    assert "--force" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    before = (small_run / "summary.json").read_text()
    assert json.loads(before)["steps"] == 150  # untouched
    res = run_cli("run", cfg, "--out", small_run, "--quiet", "--force")
    assert res.returncode == 0, res.stderr


BAD = [
    ("[integrate]\ndt = -1\n", "integrate.dt", "positive number, got -1"),
    ("[integrate]\nsteps = 0\n", "integrate.steps", "positive integer"),
    ("[integrate]\nmethod = \"rk4\"\n", "integrate.method", "one of"),
    ("[integrate]\ndtt = 0.1\n", "integrate.dtt", "unknown config key"),
    ("[integrate]\ntrain_weights = false\ntrain_biases = false\n", "integrate.train_weights", "nothing would move"),
    ("[solver]\ndt = 0.1\n", "solver", "unknown config table"),
    ("[data]\nsource = \"mnist\"\n", "data.source", "one of"),
    ("[data]\nsource = \"file\"\npath = \"nowhere.npy\"\n", "data.path", "does not exist"),
    ("[data]\nn = 21\n", "data.n", "even"),
    ("[data]\nsource = \"clusters\"\nclusters = 5\n[model]\ninit = \"separated\"\n", "model.init", "clusters"),
    ("[output]\nfigures = \"yes\"\n", "output.figures", "true or false"),
    ("[integrate]\nrtol = 1e-6\nmethod = \"bs3\"\n", "integrate.t1", "adaptive runs stop at a flow time"),
    ("[integrate]\nrtol = 1e-6\nt1 = 5.0\n", "integrate.method", "\"heun\" or \"bs3\""),
    ("[integrate]\nloss = \"standard\"\nmethod = \"exp-euler\"\n", "integrate.method", "standard loss"),
    ("[integrate]\nloss = \"cross-entropy\"\n", "integrate.loss", "one of"),
    ("[integrate]\nt1 = -1.0\n", "integrate.t1", "non-negative"),
]


@pytest.mark.parametrize("text,key,what", BAD, ids=[b[1] for b in BAD])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, capsys, text: str, key: str, what: str):
    """In-process (``cli.main``) to stay fast; the first two cases also run as subprocesses."""
    from truncfast._app.cli import main

    cfg = write_config(tmp_path / "bad.toml", text)
    out = tmp_path / "out"
    if text in (BAD[0][0], BAD[3][0]):
        res = run_cli("run", cfg, "--out", out)
        code, stderr = res.returncode, res.stderr
    else:
        code = main(["run", str(cfg), "--out", str(out)])
        stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"'{key}'" in lines[0] or f"[{key}]" in lines[0]
    assert what in lines[0]
    assert not (out / "trajectory.npz").exists()


def test_invalid_toml_and_missing_file(tmp_path: Path):
    cfg = write_config(tmp_path / "broken.toml", "[integrate\ndt = 1\n")
    res = run_cli("run", cfg, "--out", tmp_path / "o")
    assert res.returncode == 2 and "not valid TOML" in res.stderr
    res = run_cli("run", tmp_path / "absent.toml", "--out", tmp_path / "o")
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli("frobnicate")
    assert res.returncode == 2  # argparse usage error


def test_bad_data_exits_2(tmp_path: Path):
    """A NaN in the data file is a data problem (issue 18: exit 2 naming the key and the file)."""
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 0.0, 0], [1.0, 1.0, 1]]))
    cfg = write_config(tmp_path / "c.toml", '[data]\nsource = "file"\npath = "nan.npy"\n')
    res = run_cli("run", cfg, "--out", tmp_path / "o", "--quiet")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and "NaN" in res.stderr and "nan.npy" in res.stderr


def test_runtime_failure_exits_1(tmp_path: Path):
    cfg = write_config(tmp_path / "c.toml", '[data]\nsource = "clusters"\nn = 50\n[integrate]\ndt = 1e150\n'
                                            'steps = 5\n[output]\nfigures = false\nanimation = false\n')
    res = run_cli("run", cfg, "--out", tmp_path / "o", "--quiet")
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: DivergenceError")


def test_info():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    assert re.search(r"truncfast \d+\.\d+", res.stdout)
    for word in ("backends:", "numpy", "numba", "threads:", "OMP_NUM_THREADS", "numba kernels:"):
        assert word in res.stdout


def test_demo_short(tmp_path: Path):
    """The demo's pipeline (both flows, overview) with few steps; the real demo only runs longer."""
    out = tmp_path / "demo"
    res = run_cli("demo", "--out", out, "--steps", "30", "--quiet")
    assert res.returncode == 0, res.stderr
    assert (out / "overview.png").stat().st_size > 10_000
    s = json.loads((out / "summary.json").read_text())
    assert set(s) == {"biases_only", "full_flow"}
    assert s["biases_only"]["train_weights"] is False and s["full_flow"]["train_weights"] is True
    for name in s:
        assert (out / name / "collapse.gif").exists() and (out / name / "trajectory.npz").exists()
    res = run_cli("demo", "--out", out, "--steps", "30", "--quiet")
    assert res.returncode == 2 and "--force" in res.stderr


def test_config_doc_lists_every_key():
    doc = (REPO / "docs" / "config.md").read_text()
    for sec, keys in _config_file.SCHEMA.items():
        assert f"[{sec}]" in doc, sec
        for key, (default, _, _) in keys.items():
            assert f"`{key}`" in doc, f"{sec}.{key}"


def test_readme_commands_and_api_block():
    """The README's test command is the one CI runs, and its ten-line API example runs."""
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && pytest' in readme and 'pip install -e ".[test]" && pytest' in ci
    assert "pip install -e . && truncfast demo --out runs/demo" in readme
    block = re.search(r"## Python API in ten lines\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    code = block.replace("n=100_000", "n=3_000").replace("progress=True", "progress=False")
    code = code.replace('traj.save("run.npz")', 'traj.save(str(TMP / "run.npz"))')
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        exec(compile(code, "README.md", "exec"), {"TMP": Path(tmp), "print": lambda *a: None})
        assert (Path(tmp) / "run.npz").exists()


def test_failed_forced_rerun_leaves_no_stale_results(tmp_path: Path, capsys):
    """--force clears the previous run's outputs first; a run that then fails exits 1."""
    from truncfast._app.cli import main

    out = tmp_path / "run"
    ok = write_config(tmp_path / "ok.toml", SMALL.replace("[output]", "[output]\nfigures = false\nanimation = false"))
    assert main(["run", str(ok), "--out", str(out), "--quiet"]) == 0
    assert (out / "summary.json").exists()
    (out / "notes.txt").write_text("mine")
    # five clusters in the plane cannot have cluster-separated truncations (Q > M + 1)
    bad = write_config(tmp_path / "bad.toml", '[data]\nsource = "clusters"\nn = 50\nclusters = 5\n'
                                            '[integrate]\nform = "separated"\nsteps = 5\n')
    assert main(["run", str(bad), "--out", str(out), "--quiet", "--force"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: SeparationError")
    # the summary now is the failed run's (issue 18: a failure writes what it has), never the old one
    failed = json.loads((out / "summary.json").read_text())
    assert failed["status"] == "separation_error" and failed["steps"] == 0 and failed["Q"] == 5
    assert not (out / "trajectory.npz").exists()  # it failed before its first record
    assert (out / "notes.txt").read_text() == "mine"  # files that are not ours are kept


def test_standard_loss_adaptive_run(tmp_path: Path):
    """loss = "standard" with t1 and rtol: integrate_standard runs, the files say so."""
    from truncfast._app import runs as _runs

    cfg = _config_file.resolve({
        "data": {"source": "paper-2d", "n": 40, "seed": 2},
        "integrate": {"loss": "standard", "method": "bs3", "t1": 2.0, "rtol": 1e-6, "record_every": 5},
        "output": {"figures": False, "animation": False},
    })
    summ = _runs.execute(cfg, str(tmp_path / "std"), quiet=True)
    assert summ["loss"] == "standard" and summ["final_time"] == 2.0 and summ["rtol"] == 1e-6
    assert len(summ["final_W_out"]) == 2 and len(summ["final_b_out"]) == 2
    traj = tf.Trajectory.load(tmp_path / "std" / "trajectory.npz")
    assert traj.settings["loss"] == "standard" and traj.W_outs.shape[1:] == (2, 2)
    assert traj.stats["accepted"] == summ["steps"] and traj.rejected_steps == summ["rejected_steps"]
    p = data.make_problem("paper-2d", n=40, seed=2)
    assert traj.loss[-1] == pytest.approx(
        tf.standard_loss(traj.R, traj.b, p.X, p.labels, traj.W_out, traj.b_out, p.Y), rel=1e-12)


def test_readme_tolerance_block_runs():
    """The README's block on integration to a tolerance and the standard loss runs as written."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"To a tolerance instead of.*?```python\n(.*?)```", readme, re.S).group(1)
    out = []
    exec(compile("from truncfast import data\nimport truncfast as tf\n" + block, "README.md", "exec"),
         {"print": lambda *a: out.append(a)})
    collapse, accepted, rejected = out[0]
    assert np.isfinite(collapse[0]) and accepted > 0 and rejected >= 0
    assert out[1][0] < 1e-2
