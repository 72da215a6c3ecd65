"""Checks of the integrator's own arguments (steps, dt, flags, checkpoint paths, memory).

Each raises :class:`truncfast.InputError` naming the argument, before the
first step: a run must not fail hours in on something knowable up front.
"""

from __future__ import annotations

import math
import operator
import os
from typing import Any

import numpy as np

from truncfast._errors import InputError

__all__ = ["check_int", "check_dt", "check_flag", "check_checkpoint_path", "n_records", "record_step",
           "check_record_memory", "record_memory", "human_bytes", "check_resume_data"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer ≥ ``minimum`` (bools refused; NumPy integers accepted)."""
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected an integer ≥ {minimum}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"{name}: expected an integer ≥ {minimum}, got {value!r} ({type(value).__name__})") from None
    if v < minimum:
        raise InputError(f"{name}: expected an integer ≥ {minimum}, got {v}")
    return int(v)


def check_dt(dt: Any) -> float:
    """A positive finite step size."""
    if isinstance(dt, (bool, np.bool_)) or not isinstance(dt, (int, float, np.integer, np.floating)):
        raise InputError(f"dt: expected a positive finite number, got {dt!r} ({type(dt).__name__})")
    v = float(dt)
    if not math.isfinite(v) or v <= 0.0:
        raise InputError(f"dt: expected a positive finite number, got {v!r}")
    return v


def check_flag(name: str, value: Any) -> bool:
    """True or False (NumPy bools accepted; strings and numbers refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_checkpoint_path(checkpoint: Any) -> None:
    """A checkpoint must be writable now, not fail after hours of integration."""
    if checkpoint is None:
        return
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise InputError(f"checkpoint: expected a file path, got {checkpoint!r}")
    path = os.fspath(checkpoint)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InputError(f"checkpoint: {path!r} is a directory; give a file name such as 'run.ckpt.npz'")
    if not os.path.isdir(folder):
        raise InputError(f"checkpoint: the directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"checkpoint: the directory {folder!r} is not writable")


def n_records(steps: int, record_every: int) -> int:
    """Number of recorded steps: 0, every ``record_every`` steps, and the last step."""
    return steps // record_every + 1 + (1 if steps % record_every else 0)


def record_step(i: int, steps: int, record_every: int) -> int:
    """The step of record i (the i-th element of 0, k, 2k, …, steps)."""
    return min(i * record_every, steps)


def record_memory(steps: int, record_every: int, L: int, M: int, Q: int) -> tuple[int, int, int, int] | None:
    """``(records, bytes per record, bytes available, smallest record_every that fits)`` when the
    records of a run cannot fit in memory, else None (see :func:`check_record_memory`)."""
    import psutil

    per_record = 8 * (L * M * M + L * M + 3 * L * Q + 6)
    n = n_records(steps, record_every)
    avail = psutil.virtual_memory().available // 2
    if n * per_record <= avail:
        return None
    fit = max(1, avail // per_record - 2)
    return n, per_record, 2 * avail, max(record_every + 1, -(-steps // fit))


def human_bytes(nbytes: float) -> str:
    """``1.5 GiB``-style size; sizes beyond exbibytes are not spelled out."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if nbytes < 1024 or unit == "EiB":
            break
        nbytes /= 1024
    if unit == "EiB" and nbytes >= 1024:
        return "more than 1000 EiB"
    return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"


def check_record_memory(steps: int, record_every: int, L: int, M: int, Q: int) -> None:
    """Refuse, before the first step, a run whose records cannot fit in memory.

    A :class:`Trajectory` keeps every record (R, b, counts and five scalars) in
    memory, so ``steps // record_every`` records of ``8·(L·M² + L·M + 3·L·Q + 6)``
    bytes each must fit; otherwise the run would fail with a ``MemoryError``
    hours in.  Compared with the memory available now (psutil), keeping half
    of it for the rest of the run.
    """
    bad = record_memory(steps, record_every, L, M, Q)
    if bad is not None:
        n, per_record, avail, k = bad
        raise InputError(
            f"record_every: {steps} steps recorded every {record_every} step(s) keep {n:.3g} records of "
            f"{per_record} bytes in memory, more than half of the {human_bytes(avail)} available; record "
            f"less often (record_every ≥ {k}) or integrate in shorter runs")


def check_resume_data(settings: dict, meta: dict, X, targets, digest) -> str:
    """The data digest, after checking that X and targets fit the checkpoint's run and its digest.

    ``digest()`` computes the digest of the given data (one pass; called only
    once the sizes match).
    """
    if (X.shape[0], targets.shape[0]) != (settings["N"], settings["Q"]):
        raise InputError(f"X: the checkpoint was made with N = {settings['N']} points and Q = {settings['Q']} "
                         f"clusters, got N = {X.shape[0]} and Q = {targets.shape[0]}")
    d = digest()
    if meta.get("data_sha256") not in (None, d):
        raise InputError("X: the data (X, labels, targets) differ from those the checkpoint was made with "
                         "(sha256 mismatch); resume needs the original data")
    return d
