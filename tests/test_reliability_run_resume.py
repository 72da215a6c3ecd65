"""Issue 18, item 9: a CLI run is never lost.

``truncfast run`` checkpoints by default (``integrate.checkpoint_every``); Ctrl-C (SIGINT
to the process), kill -9, a divergence, unstable steps with ``on_instability = "raise"``
or a separation error leave the partial trajectory and a summary saying what happened;
``truncfast run --resume DIR`` continues, and the result is bitwise the trajectory of an
uninterrupted run (the oracle: the same config run to the end without interruption);
a rerun into an occupied directory says what is there and what to do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from truncfast._app.cli import main
from truncfast._integrate.trajectory import Trajectory
from conftest import assert_trajectories_bitwise

REPO = Path(__file__).resolve().parents[1]

LONG = """[data]
source = "clusters"
n = 200
[integrate]
steps = 12000
record_every = 100
checkpoint_every = 300
backend = "numpy"
dt = 0.02
[output]
figures = false
animation = false
"""


def _popen(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "truncfast", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def _cli(*args, cwd):
    p = _popen(*args, cwd=cwd)
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def _wait_for_checkpoint(proc, ck: Path, after: float = 0.0):
    """Poll until the run writes its first checkpoint (a hang guard of 300 s, not a timing check)."""
    deadline = time.time() + 300
    while not ck.exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.communicate()}"
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared within 300 s (the run hangs)")
        time.sleep(0.05)
    time.sleep(after)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same config, run to the end without interruption (in-process)."""
    d = tmp_path_factory.mktemp("ref")
    (d / "c.toml").write_text(LONG)
    assert main(["run", str(d / "c.toml"), "--out", str(d / "run"), "--quiet"]) == 0
    assert not (d / "run" / "checkpoint.npz").exists()  # removed once complete
    return Trajectory.load(d / "run" / "trajectory.npz")


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_bitwise(how, reference, tmp_path):
    (tmp_path / "c.toml").write_text(LONG)
    run = tmp_path / "run"
    proc = _popen("run", "c.toml", "--out", run, "--quiet", cwd=tmp_path)
    _wait_for_checkpoint(proc, run / "checkpoint.npz", after=0.3)
    proc.send_signal(signal.SIGINT if how == "SIGINT" else signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    if how == "SIGINT":
        assert proc.returncode == 130, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: interrupted at step"), err
        assert f"truncfast run --resume {run}" in lines[0]
        summ = json.loads((run / "summary.json").read_text())
        assert summ["status"] == "interrupted" and 0 < summ["steps"] < 12000
        partial = Trajectory.load(run / "trajectory.npz")
        assert not partial.complete and partial.last_step == summ["steps"]
    else:
        assert proc.returncode == -signal.SIGKILL
        # what a kill -9 during a checkpoint write would leave next to it
        (run / ".tmp-checkpoint.npz-deadbeef").write_bytes(b"PK half")
    assert (run / "checkpoint.npz").exists() and (run / "config.toml").exists()
    # a rerun without --resume / --force is refused, saying what to do
    code, _, err = _cli("run", "c.toml", "--out", run, "--quiet", cwd=tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--resume" in err and "--force" in err
    # continue
    code, out, err = _cli("run", "--resume", run, "--quiet", cwd=tmp_path)
    assert code == 0 and err == "" and out == "", err
    done = Trajectory.load(run / "trajectory.npz")
    assert_trajectories_bitwise(done, reference)
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert not (run / "checkpoint.npz").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("extra,status,code", [
    ("[integrate]\ndt = 1e3\nsteps = 50\n", "diverged", 1),
    ("[integrate]\ndt = 2.5\nsteps = 50\non_instability = \"raise\"\n", "unstable", 1),
    ('[data]\nsource = "clusters"\nn = 50\nclusters = 5\n[integrate]\nform = "separated"\nsteps = 5\n',
     "separation_error", 1),
])
def test_failed_run_writes_partial_results(extra, status, code, tmp_path, capsys):
    if "[data]" not in extra:
        extra = '[data]\nsource = "clusters"\nn = 100\n' + extra
    cfg = tmp_path / "c.toml"
    cfg.write_text(extra + "[output]\nfigures = false\nanimation = false\n")
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    summ = json.loads((out / "summary.json").read_text())
    assert summ["status"] == status and summ["error"]
    if status != "separation_error":
        tr = Trajectory.load(out / "trajectory.npz")
        assert not tr.complete and tr.last_step == summ["steps"] and np.isfinite(tr.loss).all()
        assert main(["plot", str(out), "--quiet"]) == 0  # the partial run can be redrawn (figdata.npz is there)
    # a rerun says what is there
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and "--force" in msg[0] and ("stopped" in msg[0] or "unfinished" in msg[0]), msg


def test_directory_with_only_a_config(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text(LONG)
    cfg = tmp_path / "c.toml"
    cfg.write_text(LONG)
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 2
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and "only the config.toml" in msg[0] and "--force" in msg[0]
    assert main(["run", "--resume", str(out), "--quiet"]) == 2  # no checkpoint: nothing to resume
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and "nothing to resume" in msg[0]


@pytest.mark.parametrize("args", [["--resume", "RUN", "c.toml"], ["--resume", "RUN", "--force"], [],
                                  ["--resume", "NOWHERE"]])
def test_resume_usage_errors(args, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(LONG)
    (tmp_path / "RUN").mkdir()
    args = [str(tmp_path / a) if a in ("RUN", "c.toml", "NOWHERE") else a for a in args]
    assert main(["run", *args, "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_checkpoints_can_be_switched_off(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "paper-2d"\nn = 20\n[integrate]\nsteps = 30\ncheckpoint_every = 0\n'
                   "[output]\nfigures = false\nanimation = false\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert json.loads((tmp_path / "run" / "config.toml").read_text().split("checkpoint_every = ")[1].split("\n")[0]) == 0


def test_resume_from_a_damaged_checkpoint_exits_2(tmp_path, capsys):
    from truncfast._integrate import run as _run

    cfg = tmp_path / "c.toml"
    cfg.write_text(LONG.replace("steps = 12000", "steps = 900"))
    out = tmp_path / "run"

    def stop(step):
        if step >= 600:
            raise KeyboardInterrupt

    _run._after_boundary = stop
    try:
        assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 130
    finally:
        _run._after_boundary = None
    capsys.readouterr()
    raw = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(raw[: len(raw) // 2])
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    msg = capsys.readouterr().err.strip().splitlines()
    assert len(msg) == 1 and "cannot resume from" in msg[0] and "checkpoint.npz" in msg[0]
