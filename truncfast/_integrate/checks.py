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
           "check_record_memory", "record_memory", "human_bytes", "check_resume_data", "check_time_args",
           "wants_stepper", "resolve_events"]


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


# ------------------------------------------------ time-stepped runs (docs/theory.md §12) ---

def _positive(name: str, value: Any, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{name}: expected {what}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise InputError(f"{name}: expected {what}, got {v!r}")
    return v


def wants_stepper(method: Any, t1: Any, rtol: Any, atol: Any, saveat: Any, solvers: dict) -> bool:
    """True when a run needs the time-stepped loop (``_integrate.adaptive``) rather than ``run.Run``."""
    if t1 is not None or rtol is not None or atol is not None or saveat is not None:
        return True
    cls = solvers.get(method) if isinstance(method, str) else None
    return cls is not None and not cls.one_stage


def check_time_args(method: Any, dt: Any, steps: Any, t1: Any, rtol: Any, atol: Any, saveat: Any,
                    record_every: Any, solvers: dict) -> dict:
    """Check the step arguments of ``integrate`` / ``integrate_standard``; return them normalised.

    Exactly one of ``steps`` and ``t1``; ``rtol``/``atol`` (either one implies the
    other with the same value) select adaptive steps, which need ``t1`` and a
    method with an embedded pair; ``saveat`` needs ``t1``, must increase
    strictly and lie in [0, t1], and then the records are the saveat times
    (``record_every`` must stay 1).  ``method=None`` means ``"lie-euler"`` with a
    fixed step and ``"bs3"`` with a tolerance.
    """
    dt = check_dt(dt)
    if (steps is None) == (t1 is None):
        raise InputError("steps: give exactly one of steps (a number of steps) and t1 (a final flow time), got "
                         + ("both" if steps is not None else "neither"))
    if steps is not None:
        steps = check_int("steps", steps, 0)
    else:
        t1 = _positive("t1", t1, "a final flow time after 0 (a positive finite number)")
    if rtol is not None:
        rtol = _positive("rtol", rtol, "a positive finite relative tolerance")
        from truncfast import _config

        if rtol < _config.ADAPTIVE_MIN_RTOL:
            raise InputError(f"rtol: {rtol!r} is below {_config.ADAPTIVE_MIN_RTOL:g}, where the error estimate is "
                             "rounding noise (steps would shrink without end)")
    if atol is not None:
        atol = _positive("atol", atol, "a positive finite absolute tolerance")
    adaptive = rtol is not None or atol is not None
    if adaptive:
        rtol = atol if rtol is None else rtol
        atol = rtol if atol is None else atol
        if steps is not None:
            raise InputError("steps: adaptive runs (rtol/atol given) stop at a flow time; give t1 instead of steps")
    if saveat is not None:
        if t1 is None:
            raise InputError("saveat: recording at given times needs the final time t1 (not steps)")
        try:
            sv = np.asarray(saveat, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"saveat: expected increasing flow times in [0, t1], got {saveat!r}") from None
        if sv.ndim != 1:
            raise InputError(f"saveat: expected a 1-D sequence of flow times, got shape {sv.shape}")
        if not np.isfinite(sv).all():
            raise InputError(f"saveat: contains {sv[~np.isfinite(sv)][0]!r}; expected finite flow times in [0, t1]")
        if sv.size and (sv[0] < 0.0 or sv[-1] > t1):
            bad = sv[0] if sv[0] < 0.0 else sv[-1]
            raise InputError(f"saveat: {float(bad)!r} lies outside [0, t1] = [0, {t1!r}]")
        if sv.size > 1 and not (np.diff(sv) > 0).all():
            i = int(np.flatnonzero(np.diff(sv) <= 0)[0])
            raise InputError(f"saveat: must increase strictly, but saveat[{i}] = {float(sv[i])!r} ≥ "
                             f"saveat[{i + 1}] = {float(sv[i + 1])!r}")
        saveat = [float(v) for v in sv]
    record_every = check_int("record_every", record_every, 1)
    if saveat is not None and record_every != 1:
        raise InputError(f"record_every: with saveat the records are the saveat times (and 0, t1); "
                         f"leave record_every at 1, got {record_every}")
    if method is None:
        method = "bs3" if adaptive else "lie-euler"
    if not isinstance(method, str) or method not in solvers:
        raise InputError(f"method: unknown method {method!r}; choose one of " + ", ".join(map(repr, solvers)))
    if adaptive and solvers[method].embedded_order is None:
        adaptive_ones = [name for name, cls in solvers.items() if cls.embedded_order is not None]
        raise InputError(f"method: {method!r} has no embedded error estimate, so it cannot take adaptive steps "
                         f"(rtol/atol); choose one of " + ", ".join(map(repr, adaptive_ones)))
    return {"method": method, "dt": dt, "steps": steps, "t1": t1, "rtol": rtol, "atol": atol, "saveat": saveat,
            "record_every": record_every}


def resolve_events(events: Any, adaptive: bool, N: int, M: int, backend: str) -> str | None:
    """What an adaptive run locates: ``"crossings"`` (every sector crossing, and so the collapses)
    or ``"collapses"`` only; ``"auto"``: crossings for in-memory data of at most
    ``_config.LOCATE_CROSSINGS_MAX_N`` points with M ≤ 64.  None for fixed-step runs."""
    from truncfast import _config

    if events not in ("auto", "crossings", "collapses"):
        raise InputError(f"events: unknown choice {events!r}; choose 'auto', 'crossings' or 'collapses'")
    if not adaptive:
        return None
    codes_ok = M <= _config.MAX_CODE_WIDTH and backend != "dask"
    if events == "crossings" and not codes_ok:
        raise InputError(f"events: locating sector crossings needs sector codes (M ≤ {_config.MAX_CODE_WIDTH}) "
                         f"on in-memory data; got M = {M} on backend {backend!r}")
    if events == "auto":
        return "crossings" if codes_ok and N <= _config.LOCATE_CROSSINGS_MAX_N else "collapses"
    return events
