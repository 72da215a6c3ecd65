"""Run configuration files (TOML): schema, defaults, validation and a tiny writer.

One table per concern — ``[data]``, ``[model]``, ``[integrate]``, ``[output]`` —
whose keys, defaults and meanings are listed in :data:`SCHEMA` and documented in
``docs/config.md`` (a test checks the two agree).  :func:`resolve` turns a parsed
TOML dict into a complete config (defaults filled in, every value checked) or
raises :class:`ConfigError` naming the offending key, which the CLI prints as one
line and exit status 2.

Reading uses the standard library's ``tomllib`` (Python ≥ 3.11; the ``tomli``
back-port on 3.10).  Writing the resolved config needs only scalars, strings and
flat lists, so :func:`dumps` is a dozen lines instead of a dependency.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

__all__ = ["ConfigError", "SCHEMA", "defaults", "resolve", "load", "dumps", "DEMO_RUNS"]


class ConfigError(ValueError):
    """A bad configuration value; ``key`` is its dotted name (``"integrate.dt"``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# --------------------------------------------------------------------------- validators
# Each takes (key, value) and returns the normalised value or raises ConfigError.


def _fmt(v: Any) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v) if not isinstance(v, bool) else str(v).lower()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def positive_int(key: str, v: Any) -> int:
    if not (_is_int(v) and v > 0):
        raise ConfigError(key, f"config key '{key}' must be a positive integer, got {_fmt(v)}")
    return int(v)


def nonneg_int(key: str, v: Any) -> int:
    if not (_is_int(v) and v >= 0):
        raise ConfigError(key, f"config key '{key}' must be a non-negative integer, got {_fmt(v)}")
    return int(v)


def any_int(key: str, v: Any) -> int:
    if not _is_int(v):
        raise ConfigError(key, f"config key '{key}' must be an integer, got {_fmt(v)}")
    return int(v)


def positive_float(key: str, v: Any) -> float:
    if not (_is_num(v) and v > 0):
        raise ConfigError(key, f"config key '{key}' must be a positive number, got {_fmt(v)}")
    return float(v)


def nonneg_float(key: str, v: Any) -> float:
    if not (_is_num(v) and v >= 0):
        raise ConfigError(key, f"config key '{key}' must be a non-negative number, got {_fmt(v)}")
    return float(v)


def any_float(key: str, v: Any) -> float:
    if not _is_num(v):
        raise ConfigError(key, f"config key '{key}' must be a finite number, got {_fmt(v)}")
    return float(v)


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(key, f"config key '{key}' must be true or false, got {_fmt(v)}")
    return v


def string(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(key, f"config key '{key}' must be a string, got {_fmt(v)}")
    return v


def weights_list(key: str, v: Any) -> list[float]:
    if not (isinstance(v, list) and all(_is_num(x) and x > 0 for x in v)):
        raise ConfigError(key, f"config key '{key}' must be a list of positive numbers (or []), got {_fmt(v)}")
    return [float(x) for x in v]


def choice(*options: str) -> Callable[[str, Any], str]:
    def check(key: str, v: Any) -> str:
        if v not in options:
            raise ConfigError(key, f"config key '{key}' must be one of {', '.join(map(_fmt, options))}, got {_fmt(v)}")
        return v

    return check


# --------------------------------------------------------------------------- schema
# section -> key -> (default, validator, one-line documentation)

SCHEMA: dict[str, dict[str, tuple[Any, Callable[[str, Any], Any], str]]] = {
    "data": {
        "source": ("paper-2d", choice("paper-2d", "clusters", "iris", "digits", "file"),
                   "where the points come from"),
        "n": (200, positive_int, "number of points (paper-2d: total of both clusters, even; clusters: total)"),
        "dim": (2, positive_int, "input dimension M (clusters; PCA dimension for iris/digits)"),
        "clusters": (2, positive_int, "number of clusters Q (clusters)"),
        "spread": (0.1, nonneg_float, "standard deviation of each coordinate within a cluster"),
        "separation": (10.0, positive_float, "distance between cluster centres (real data are rescaled to it)"),
        "weights": ([], weights_list, "relative cluster sizes (clusters); [] means equal"),
        "seed": (0, nonneg_int, "seed of the generator; the data depend on it only"),
        "path": ("", string, "data file (.npy, .npz, .csv) for source = \"file\"; relative to the config file"),
        "label_column": (-1, any_int, "column holding the labels in a .npy/.csv table (negative counts from the end)"),
        "labels_path": ("", string, ".npy of labels; with it a .npy data file is memory-mapped as it is"),
        "data_file": ("", string, "write generated clusters to this .npy memmap instead of memory (huge N)"),
    },
    "model": {
        "layers": (0, nonneg_int, "number of hidden layers L; 0 means L = Q"),
        "init": ("auto", choice("auto", "separated", "toward", "random"), "initial frames R (see data.make_problem)"),
        "target_shift": (2.0, any_float, "target ỹ_j = c_j + target_shift · R_jᵀ 1 (beyond the cluster, inside its cone)"),
        "output": ("identity", choice("identity", "random"), "output layer the labels are pulled back through"),
    },
    "integrate": {
        "dt": (0.05, positive_float, "time step h (the first step when rtol > 0)"),
        "steps": (2000, positive_int, "number of steps (unless t1 > 0)"),
        "t1": (0.0, nonneg_float, "final flow time; > 0 replaces steps"),
        "rtol": (0.0, nonneg_float, "relative tolerance; > 0 selects adaptive steps (needs t1 > 0, heun or bs3)"),
        "atol": (0.0, nonneg_float, "absolute tolerance of adaptive steps; 0 means the same as rtol"),
        "method": ("lie-euler", choice("lie-euler", "cayley", "exp-euler", "heun", "bs3"),
                   "integrator (docs/theory.md §§9, 12)"),
        "loss": ("euclidean", choice("euclidean", "standard"),
                 "euclidean: C_E at a fixed output layer; standard: C_std with the output layer trained too"),
        "train_weights": (True, boolean, "evolve the frames R"),
        "train_biases": (True, boolean, "evolve the biases b"),
        "train_output": (True, boolean, "evolve the output layer (loss = \"standard\" only)"),
        "record_every": (10, positive_int, "record the state every this many steps (and always the last)"),
        "backend": ("auto", choice("auto", "numpy", "numba", "c"), "compute backend"),
        "form": ("general", choice("general", "separated"), "right-hand side: general (§5) or separated (§6)"),
        "checkpoint_every": (1000, nonneg_int, "write checkpoint.npz every this many steps (0: never); "
                                               "continue an interrupted run with truncfast run --resume DIR"),
        "on_instability": ("warn", choice("warn", "raise", "ignore"),
                           "a loss that rises (unstable steps): warn, stop (exit 1), or ignore"),
        "engine": ("auto", choice("auto", "direct", "moments"),
                   "how the right-hand side is computed: per point, from pattern groups kept across steps (§11), or auto"),
    },
    "output": {
        "figures": (True, boolean, "draw the PNG figures"),
        "animation": (True, boolean, "draw the GIF animation"),
        "frames": (40, positive_int, "number of frames in the animation"),
        "snapshots": (4, positive_int, "number of times shown in the input-space figure"),
        "max_points": (1500, positive_int, "points per cluster drawn in figures (a deterministic subsample)"),
        "dpi": (100, positive_int, "resolution of the PNG figures (every figure must stay below 65536 pixels a side)"),
    },
}


def defaults() -> dict[str, dict[str, Any]]:
    """The default configuration (a fresh nested dict)."""
    return {sec: {k: (list(v[0]) if isinstance(v[0], list) else v[0]) for k, v in keys.items()}
            for sec, keys in SCHEMA.items()}


def resolve(raw: dict[str, Any], *, base_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """Check ``raw`` against :data:`SCHEMA`, fill in defaults, resolve relative paths.

    Raises :class:`ConfigError` for an unknown table or key, a wrong type or
    value, and for combinations that cannot work (naming one key).
    """
    cfg = defaults()
    if not isinstance(raw, dict):
        raise ConfigError("", "config must be a TOML table")
    for sec, table in raw.items():
        if sec not in SCHEMA:
            raise ConfigError(sec, f"unknown config table '[{sec}]' (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(sec, f"config key '{sec}' must be a table [{sec}], got {_fmt(table)}")
        for key, value in table.items():
            dotted = f"{sec}.{key}"
            if key not in SCHEMA[sec]:
                raise ConfigError(dotted, f"unknown config key '{dotted}' (known in [{sec}]: {', '.join(SCHEMA[sec])})")
            cfg[sec][key] = SCHEMA[sec][key][1](dotted, value)
    _cross_checks(cfg, base_dir)
    return cfg


def _cross_checks(cfg: dict[str, dict[str, Any]], base_dir: str | None) -> None:
    d, m, i = cfg["data"], cfg["model"], cfg["integrate"]
    if d["source"] == "paper-2d" and d["n"] % 2:
        raise ConfigError("data.n", f"config key 'data.n' must be even for source = \"paper-2d\" (two equal clusters), got {d['n']}")
    if d["source"] == "clusters" and d["n"] < d["clusters"]:
        raise ConfigError("data.n", f"config key 'data.n' must be at least data.clusters = {d['clusters']}, got {d['n']}")
    if d["weights"] and len(d["weights"]) != d["clusters"]:
        raise ConfigError("data.weights", f"config key 'data.weights' must have data.clusters = {d['clusters']} entries, got {len(d['weights'])}")
    for key in ("path", "labels_path", "data_file"):
        if d[key] and base_dir is not None and not os.path.isabs(d[key]):
            d[key] = os.path.normpath(os.path.join(base_dir, d[key]))
    if d["source"] == "file":
        if not d["path"]:
            raise ConfigError("data.path", "config key 'data.path' must name a data file when data.source = \"file\"")
        if not os.path.exists(d["path"]):
            raise ConfigError("data.path", f"config key 'data.path' names a file that does not exist: {d['path']}")
        if not os.path.isfile(d["path"]):
            raise ConfigError("data.path", f"config key 'data.path' names a directory, not a file: {d['path']}")
        if d["labels_path"] and not os.path.isfile(d["labels_path"]):
            raise ConfigError("data.labels_path", f"config key 'data.labels_path' names a file that does not exist: {d['labels_path']}")
    if d["data_file"]:
        folder = os.path.dirname(os.path.abspath(d["data_file"]))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise ConfigError("data.data_file", f"config key 'data.data_file': the directory {folder!r} does not "
                                                "exist or is not writable")
    if d["source"] == "paper-2d" and m["layers"] not in (0, 2):
        raise ConfigError("model.layers", f"config key 'model.layers' must be 0 or 2 for source = \"paper-2d\", got {m['layers']}")
    if (i["method"] == "exp-euler" or i["form"] == "separated") and d["source"] == "clusters" \
            and m["layers"] not in (0, d["clusters"]):
        key = "integrate.method" if i["method"] == "exp-euler" else "integrate.form"
        raise ConfigError(key, f"config key '{key}' = {_fmt(i[key.split('.')[1]])} needs one layer per cluster, "
                               f"but model.layers = {m['layers']} and data.clusters = {d['clusters']}")
    if not (i["train_weights"] or i["train_biases"] or (i["loss"] == "standard" and i["train_output"])):
        raise ConfigError("integrate.train_weights", "config keys 'integrate.train_weights' and 'integrate.train_biases' are both false: nothing would move")
    if (i["rtol"] > 0 or i["atol"] > 0) and i["t1"] <= 0:
        raise ConfigError("integrate.t1", "config key 'integrate.t1' must be > 0 when integrate.rtol or integrate.atol is set (adaptive runs stop at a flow time)")
    if (i["rtol"] > 0 or i["atol"] > 0) and i["method"] not in ("heun", "bs3"):
        raise ConfigError("integrate.method", f"config key 'integrate.method' must be \"heun\" or \"bs3\" for adaptive steps (integrate.rtol > 0), got {_fmt(i['method'])}")
    if i["loss"] == "standard" and (i["method"] == "exp-euler" or i["form"] == "separated"):
        key = "integrate.method" if i["method"] == "exp-euler" else "integrate.form"
        raise ConfigError(key, f"config key '{key}': the standard loss takes the general form and the methods lie-euler, cayley, heun, bs3")


def load(path: str) -> dict[str, dict[str, Any]]:
    """Read and :func:`resolve` a TOML file; ConfigError for unreadable or invalid files."""
    try:
        import tomllib  # Python ≥ 3.11
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("", f"config file {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError("", f"config file {path!r} is a directory, not a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"config file {path!r} is not UTF-8 text (TOML must be UTF-8): byte "
                              f"{exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config file {path!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError("", f"config file {path!r} cannot be read: {exc.strerror or exc}") from None
    return resolve(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(cfg: dict[str, dict[str, Any]], header: str = "") -> str:
    """Serialise a resolved config (tables of scalars and flat lists) as TOML."""
    lines = [f"# {h}" for h in header.splitlines()] if header else []
    for sec, table in cfg.items():
        if lines:
            lines.append("")
        lines.append(f"[{sec}]")
        for key, v in table.items():
            lines.append(f"{key} = {_value(v)}")
    return "\n".join(lines) + "\n"


#: The runs of ``truncfast demo``: docs/theory.md §7's two clusters in the plane, once with
#: the biases-only flow (collapse of both clusters, Prop. 4.2) and once with the
#: full flow (R_2 turns and the second cluster stalls on a segment through ỹ_2).
DEMO_RUNS: dict[str, dict[str, dict[str, Any]]] = {
    "biases_only": {
        "data": {"source": "paper-2d", "n": 200, "spread": 0.1, "seed": 0},
        "integrate": {"dt": 0.05, "steps": 2000, "record_every": 1, "train_weights": False},
    },
    "full_flow": {
        "data": {"source": "paper-2d", "n": 200, "spread": 0.1, "seed": 0},
        "integrate": {"dt": 0.05, "steps": 2000, "record_every": 1, "train_weights": True},
    },
}
