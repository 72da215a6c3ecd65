"""Issue 18, items 7 and 8: the command line's contract for configuration and data problems.

Every configuration or data problem exits with status 2 and ONE line on stderr that
names the config key or the file (and, for data files, the line and the value); nothing
else is printed under --quiet (no NumPy RuntimeWarnings), and nothing is integrated.
Each case runs ``truncfast run`` as a subprocess, as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from truncfast._data.loaders import load_file
import truncfast as tf

REPO = Path(__file__).resolve().parents[1]
QUIET_OUTPUT = "[output]\nfigures = false\nanimation = false\n"


def run_cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "truncfast", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def _file_config(tmp: Path, name: str, extra: str = "") -> Path:
    cfg = tmp / "c.toml"
    cfg.write_text(f'[data]\nsource = "file"\npath = "{name}"\n{extra}' + QUIET_OUTPUT)
    return cfg


def _assert_usage_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert res.stdout == ""
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------ CSV data ---

CSV_CASES = [
    # (file contents, what the one line must contain)
    ("1.5,2.5,0\n1.0,2.0,1\n1.5,2.5,\n", ["line 3", "label", "empty"]),           # the "1.5,2.5,"
    ("1.5,2.5,0\n1,2,café\n0.5,1,1\n0.4,1,0\n", ["line 2", "'café'"]),              # a stray label among 0/1
    ("x,y,label\n1.5,2.5,0\n1,2,1\n3,4,one\n", ["line 4", "'one'"]),                # after a header line
    ("1.5,2.5,0\n1,2,1\n3,4,1.5\n", ["line 3", "'1.5'", "not an integer"]),         # a fractional label
    ("1.5,2.5,0\n1,2,1\n3,4,nan\n", ["line 3", "'nan'"]),
    ("1.5,2.5,a\n1,2,b\n3,4,7\n1,1,c\n", ["line 3", "'7'"]),                        # a number among names
    ("1.5,2.5,0\n1.0,2.0,1\n3.0\n", ["line 3", "1 column(s), expected 3"]),          # column count
    ("1.5,2.5,0\n1.0,2.0,1,7\n", ["line 2", "4 column(s), expected 3"]),
    ("1.5,2.5,0\nnan,2.0,1\n0.5,1,1\n", ["line 2", "nan"]),                          # a NaN row
    ("1.5,2.5,0\n1,inf,1\n0.5,1,1\n", ["line 2", "inf"]),
    ("x,y,l\n1.5,2.5,0\n1,abc,1\n", ["line 3", "'abc'", "column 2"]),                # not a number, after a header
    ("1,2,0\n1,2,1\n1,x,1\n", ["line 3", "'x'", "not a number"]),
]


@pytest.mark.parametrize("text,needles", CSV_CASES, ids=[f"csv{i}" for i in range(len(CSV_CASES))])
def test_bad_csv_exits_2_naming_file_line_value(text, needles, tmp_path):
    (tmp_path / "d.csv").write_text(text, encoding="utf-8")
    res = run_cli("run", _file_config(tmp_path, "d.csv"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    line = _assert_usage_error(res, "'data.path'", str(tmp_path / "d.csv"), *needles)
    assert "Traceback" not in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing written


def test_csv_labels_good_cases_still_load(tmp_path):
    """Integers in any order, class names, a header line, surrounding spaces: accepted."""
    (tmp_path / "a.csv").write_text("x,y,label\n1,2, 3\n2,3,1\n3,4,3\n", encoding="utf-8")
    X, labels, names = load_file(tmp_path / "a.csv")
    assert X.shape == (3, 2) and labels.tolist() == [1, 0, 1] and names == ["1", "3"]
    (tmp_path / "b.csv").write_text("1,2,setosa\n2,3,versicolor\n3,4,setosa\n\n", encoding="utf-8")
    X, labels, names = load_file(tmp_path / "b.csv")
    assert labels.tolist() == [0, 1, 0] and names == ["setosa", "versicolor"]


@pytest.mark.parametrize("text", ["1,2,\n", "1,2,0\n1,2,café\n1,2,1\n", "1,2,0\n1,2\n"])
def test_bad_csv_api_error_names_path(text, tmp_path):
    (tmp_path / "d.csv").write_text(text, encoding="utf-8")
    with pytest.raises(tf.InputError, match=r"^path: .*d\.csv.* line \d"):
        load_file(tmp_path / "d.csv")


# ------------------------------------------------------------- .npy files ---

def test_text_file_named_npy(tmp_path):
    (tmp_path / "d.npy").write_text("1,2,0\n3,4,1\n")
    res = run_cli("run", _file_config(tmp_path, "d.npy"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    _assert_usage_error(res, "'data.path'", "d.npy", "not a NumPy .npy file")


def test_pickled_npy(tmp_path):
    np.save(tmp_path / "d.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    res = run_cli("run", _file_config(tmp_path, "d.npy"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    _assert_usage_error(res, "'data.path'", "d.npy", "Python objects")


def test_nan_row_in_npy(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[0.0, 0.0, 0], [np.nan, 1.0, 1], [1.0, 1.0, 1]]))
    res = run_cli("run", _file_config(tmp_path, "d.npy"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    _assert_usage_error(res, "'data.path'", "d.npy", "row 1", "nan")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "d.npy", np.zeros((50, 3)))
    raw = (tmp_path / "d.npy").read_bytes()
    (tmp_path / "d.npy").write_bytes(raw[: len(raw) // 2])
    res = run_cli("run", _file_config(tmp_path, "d.npy"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    _assert_usage_error(res, "'data.path'", "d.npy")


# ---------------------------------------------------------- configuration ---

def test_non_utf8_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes('[data]\nsource = "clusters" # café\n'.encode("latin-1"))
    _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "o", cwd=tmp_path), "c.toml", "UTF-8")


def test_config_path_is_a_directory(tmp_path):
    (tmp_path / "c.toml").mkdir()
    _assert_usage_error(run_cli("run", tmp_path / "c.toml", "--out", tmp_path / "o", cwd=tmp_path),
                        "c.toml", "directory")


def test_out_under_a_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(QUIET_OUTPUT)
    (tmp_path / "afile").write_text("x")
    _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "afile" / "sub", cwd=tmp_path), "afile")


@pytest.mark.parametrize("text,key", [
    ('[data]\nsource = "clusters"\nclusters = 2\n[model]\nlayers = 3\n[integrate]\nmethod = "exp-euler"\n',
     "integrate.method"),
    ('[data]\nsource = "clusters"\nclusters = 3\n[model]\nlayers = 2\n[integrate]\nform = "separated"\n',
     "integrate.form"),
    ('[data]\nsource = "iris"\n[model]\nlayers = 2\n[integrate]\nmethod = "exp-euler"\n', "integrate.method"),
])
def test_separated_method_with_layers_not_clusters(text, key, tmp_path):
    if "iris" in text:
        pytest.importorskip("sklearn")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + QUIET_OUTPUT)
    _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "o", cwd=tmp_path), f"'{key}'", "one layer per cluster")
    assert not (tmp_path / "o" / "config.toml").exists()


def test_absurd_steps_name_the_config_keys(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[integrate]\nsteps = 1000000000000000000\nrecord_every = 1\n" + QUIET_OUTPUT)
    line = _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "o", cwd=tmp_path),
                               "'integrate.steps'", "'integrate.record_every'")
    assert "record_every:" not in line  # the config key, not the API argument
    # no absurd size: every GiB figure is the memory of this machine, not the request
    for num in [float(m) for m in __import__("re").findall(r"([\d.]+) GiB", line)]:
        assert num < 1e6, line


@pytest.mark.parametrize("text,key", [("dpi = 100000\n", "output.dpi"), ("dpi = 3000\n", "output.dpi"),
                                      ("snapshots = 5000\n", "output.snapshots"),
                                      ("frames = 100000\n", "output.frames")])
def test_figure_settings_are_checked_before_integrating(text, key, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[integrate]\nsteps = 20000\nrecord_every = 1\n[output]\n" + text)
    _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "o", cwd=tmp_path), f"'{key}'")
    assert not (tmp_path / "o" / "trajectory.npz").exists() and not (tmp_path / "o" / "config.toml").exists()


@pytest.mark.parametrize("sep", ["1e-300", "1e-30", "5e-324"])
def test_tiny_separation_runs_without_warnings(sep, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\nsource = "clusters"\nn = 60\nseparation = {sep}\n[integrate]\nsteps = 20\n'
                   + QUIET_OUTPUT)
    res = run_cli("run", cfg, "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "" and res.stdout == "", res.stderr


@pytest.mark.parametrize("text,key", [("separation = 1e300\n", "data.separation"), ("spread = 1e200\n", "data.spread"),
                                      ("n = 60\nseparation = 1e101\n", "data.separation")])
def test_huge_scales_exit_2_naming_the_key(text, key, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "clusters"\n' + text + QUIET_OUTPUT)
    _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "o", "--quiet", cwd=tmp_path), f"'{key}'")


def test_quiet_run_prints_no_numpy_warnings(tmp_path):
    """A run whose arithmetic overflows harmlessly on the way (exp of a large negative,
    a huge dt that only diverges): under --quiet stderr holds the one error line only."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "clusters"\nn = 60\n[integrate]\ndt = 1e150\nsteps = 5\n' + QUIET_OUTPUT)
    res = run_cli("run", cfg, "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert [line for line in lines if "RuntimeWarning" in line or "warn" in line.lower() and "warning:" not in line] == []
    assert lines[-1].startswith("error: DivergenceError") and all(
        line.startswith(("error:", "warning: integrate:")) for line in lines), res.stderr


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    (tmp_path / "d.csv").write_bytes("\ufeff1.5,2.5,0\n1,2,1\n".encode("utf-8"))
    X, labels, _ = load_file(tmp_path / "d.csv")
    assert X.shape == (2, 2) and labels.tolist() == [0, 1]


def test_nan_label_in_npy_names_the_row(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[0.0, 0.0, 0], [1.0, 1.0, np.nan], [1.0, 1.0, 1]]))
    res = run_cli("run", _file_config(tmp_path, "d.npy"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    _assert_usage_error(res, "'data.path'", "row 1", "nan")


def test_data_path_is_a_directory(tmp_path):
    (tmp_path / "d.npy").mkdir()
    res = run_cli("run", _file_config(tmp_path, "d.npy"), "--out", tmp_path / "o", "--quiet", cwd=tmp_path)
    _assert_usage_error(res, "'data.path'", "directory")


def test_data_file_in_a_missing_directory(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nsource = "clusters"\ndata_file = "nowhere/x.npy"\n' + QUIET_OUTPUT)
    _assert_usage_error(run_cli("run", cfg, "--out", tmp_path / "o", cwd=tmp_path), "'data.data_file'")
