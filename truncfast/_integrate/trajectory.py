"""The result of :func:`truncfast.integrate`: a recorded trajectory of the flow.

A :class:`Trajectory` holds the final state ``(R, b)`` and, for every recorded
step (step 0, every ``record_every`` steps, and the last step), the time, the
loss, the norms of the right-hand side, the orthogonality defect, the truncation
counts per layer and cluster, and the state itself.

Time-stepped runs (``t1``, adaptive steps, multi-stage methods, the standard
loss: ``truncfast._integrate.adaptive``) also fill ``last_time``, ``stats``
(accepted and rejected steps, evaluations), the located collapse times and,
for :func:`truncfast.integrate_standard`, the output layer ``W_out``, ``b_out``
and its records ``W_outs``, ``b_outs``.

Files.  :meth:`Trajectory.save` writes one ``.npz`` (no pickles) holding the
arrays, a JSON header (settings and scalars) stored as bytes, and a sha256
checksum over header and arrays; :meth:`Trajectory.load` verifies the checksum
and raises :class:`truncfast.InputError` on any corruption.  Writes are atomic:
a temporary file in the target directory, flushed and fsync'ed, then
``os.replace``.  Checkpoints (``integrate(..., checkpoint=...)``) are the same
files with a ``"checkpoint"`` entry in the header.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from truncfast._atomic import atomic_write
# counts[..., c]: untruncated, partially truncated, fully truncated (the backends' categories)
from truncfast._backends.protocol import FULL, PARTIAL, UNTRUNCATED
from truncfast._errors import InputError

__all__ = ["Trajectory", "FORMAT_VERSION", "UNTRUNCATED", "PARTIAL", "FULL"]

#: Version of the on-disk layout written by :meth:`Trajectory.save`.  Version 2 adds
#: the optional arrays below and the header entries ``last_time``/``stats``; a
#: trajectory without them is still written as version 1 (readable by older truncfast).
FORMAT_VERSION = 2

#: Optional arrays (None when absent): the output layer of the standard flow and the
#: collapse times located by adaptive runs.
_OPTIONAL = ("W_out", "b_out", "W_outs", "b_outs", "located_collapse_times")

#: Recorded arrays: name -> dtype.  Saved, checksummed and truncated together.
_RECORDED = {
    "times": np.float64,
    "steps": np.int64,
    "loss": np.float64,
    "grad_b_norm": np.float64,
    "omega_norm": np.float64,
    "ortho_defect": np.float64,
    "counts": np.int64,
    "Rs": np.float64,
    "bs": np.float64,
}


def _checksum(header_bytes: bytes, arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the header and every array (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    h.update(header_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def atomic_write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an .npz, atomically (``_atomic.atomic_write``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def _check_save_path(path: Any) -> None:
    """A file path whose directory exists and is writable (else InputError naming the path,
    not the temporary file the atomic write would have used)."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise InputError(f"path: expected a file path (str or os.PathLike), got {path!r}") from None
    folder = os.path.dirname(os.path.abspath(p))
    if os.path.isdir(p):
        raise InputError(f"path: {p!r} is a directory; give a file name such as 'run.npz'")
    if not os.path.exists(folder):
        raise InputError(f"path: cannot write {p!r}: the directory {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise InputError(f"path: cannot write {p!r}: {folder!r} is not a directory")
    if not os.access(folder, os.W_OK):
        raise InputError(f"path: cannot write {p!r}: the directory {folder!r} is not writable")


@dataclass(eq=False)  # arrays: element-wise == would make `a == b` ambiguous
class Trajectory:
    """A recorded run of the effective gradient flow (docs/theory.md §§5, 9).

    Attributes
    ----------
    R, b : (L, M, M), (L, M)
        State after the last step taken (``last_step``).
    times, steps, loss : (K,)
        Flow time ``step·dt``, step index and Euclidean loss C_E at each
        recorded step (step 0, every ``record_every`` steps, the last step).
    grad_b_norm, omega_norm : (K,)
        ‖∇_b C‖ and ‖Ω‖ (Frobenius over all layers) at the recorded states.
    ortho_defect : (K,)
        ``max_ℓ max|R_ℓᵀR_ℓ − I|`` at the recorded states.
    counts : (K, L, Q, 3) int64
        Points of cluster j that layer ℓ leaves untruncated / partially
        truncates / fully truncates, along the composition (sector codes,
        docs/theory.md §2); all −1 when M > 64.
    Rs, bs : (K, L, M, M), (K, L, M)
        The recorded states.
    reorthonormalizations : int
        How often R was projected back onto O(M) (polar factor) because the
        defect exceeded ``_config.REORTHONORMALIZE_TOL``.
    settings : dict
        method, dt, steps (requested), record_every, train_weights,
        train_biases, backend (actually used), form, N, M, L, Q, version, ...
    last_step : int
        Step index of ``R, b``; smaller than ``settings["steps"]`` for a
        partial trajectory (interrupted or diverged run, or a checkpoint).
        In time-stepped runs: the number of accepted steps.
    warnings : list of str
        What went wrong without stopping the run, e.g. unstable steps (the
        loss rose: ``integrate(..., on_instability="warn")``).  Saved in the
        file (files written before it existed load with an empty list).
    W_out, b_out : (P, M), (P,) or None
        Final output layer of :func:`truncfast.integrate_standard` (None for C_E).
    W_outs, b_outs : (K, P, M), (K, P) or None
        The recorded output layers (standard flow).
    last_time : float or None
        Flow time of ``R, b`` (None: ``last_step · dt``, fixed-step runs).
    stats : dict
        Time-stepped runs: ``accepted``, ``rejected`` steps, ``rhs_evaluations`` (all of
        them, event location included), ``collapse_evaluations`` (spent bisecting collapse
        times, ``events="collapses"``), ``crossings`` (sector crossings located and stepped over).
    located_collapse_times : (Q,) or None
        Adaptive runs: collapse times located by bisection to the tolerance
        (see :attr:`collapse_times`).
    engine_stats : dict
        What the engine of the right-hand side did (``settings["engine"]`` is the
        one requested): ``groups``, ``rechecked_points``, ``moved_points``,
        ``rebuilds``, ``failed_rebuilds``, ``direct_evaluations``,
        ``moment_evaluations``, ``engine``, ``fallback`` (``_flow.engines``);
        empty for files written before engines existed.
    """

    R: np.ndarray
    b: np.ndarray
    times: np.ndarray
    steps: np.ndarray
    loss: np.ndarray
    grad_b_norm: np.ndarray
    omega_norm: np.ndarray
    ortho_defect: np.ndarray
    counts: np.ndarray
    Rs: np.ndarray
    bs: np.ndarray
    reorthonormalizations: int = 0
    settings: dict = field(default_factory=dict)
    last_step: int = 0
    warnings: list = field(default_factory=list)
    W_out: np.ndarray | None = None
    b_out: np.ndarray | None = None
    W_outs: np.ndarray | None = None
    b_outs: np.ndarray | None = None
    last_time: float | None = None
    stats: dict = field(default_factory=dict)
    located_collapse_times: np.ndarray | None = None
    engine_stats: dict = field(default_factory=dict)

    # ---------------------------------------------------------- derived ---
    @property
    def collapse_times(self) -> np.ndarray:
        """(Q,) first recorded time at which some layer fully truncates every point of cluster j.

        NaN if that never happens among the recorded steps (or M > 64, where no
        counts are kept).  This is the finite collapse time s₀ of Prop. 4.2
        (docs/theory.md §7), resolved to the recording grid — except in adaptive
        runs, which check the counts after every accepted step and locate the
        first collapse inside the step by bisection to the tolerance
        (docs/theory.md §12; ``located_collapse_times``).
        """
        if self.located_collapse_times is not None:
            return np.array(self.located_collapse_times, dtype=np.float64)
        c = self.counts
        Q = c.shape[2] if c.ndim == 4 else 0
        out = np.full(Q, np.nan)
        if c.ndim != 4 or c.shape[0] == 0 or (c < 0).any():
            return out
        size = c.sum(axis=3)  # (K, L, Q): N_j at every layer
        collapsed = ((c[..., FULL] == size) & (size > 0)).any(axis=1)  # (K, Q)
        for j in range(Q):
            hit = np.flatnonzero(collapsed[:, j])
            if hit.size:
                out[j] = self.times[hit[0]]
        return out

    @property
    def complete(self) -> bool:
        """True when the run reached the requested number of steps (or its final time ``t1``)."""
        t1 = self.settings.get("t1")
        if t1 is not None:
            return self.last_time is not None and self.last_time == float(t1)
        steps = self.settings.get("steps")
        return steps is None or self.last_step == int(steps)

    @property
    def accepted_steps(self) -> int:
        """Steps taken (accepted by the error control in adaptive runs)."""
        return int(self.stats.get("accepted", self.last_step))

    @property
    def rejected_steps(self) -> int:
        """Steps the error control rejected and retried with a smaller step (0 with fixed steps)."""
        return int(self.stats.get("rejected", 0))

    def __repr__(self) -> str:
        s = self.settings
        last = f"{self.loss[-1]:.6g}" if len(self.loss) else "n/a"
        where = f"step {self.last_step}/{s.get('steps')}"
        if s.get("t1") is not None:
            where = f"s = {self.last_time:g}/{s.get('t1'):g}, {self.accepted_steps} steps"
            if s.get("rtol") is not None:
                where += f" + {self.rejected_steps} rejected, rtol={s.get('rtol'):g}"
        return (f"Trajectory(method={s.get('method')!r}, dt={s.get('dt')}, {where}, {len(self.steps)} records, "
                f"L={self.R.shape[0]}, M={self.R.shape[1]}, final loss {last}, "
                f"reorthonormalizations={self.reorthonormalizations})")

    # ------------------------------------------------------------- files ---
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {name: np.asarray(getattr(self, name), dtype=dt) for name, dt in _RECORDED.items()}
        arrays["R"] = np.asarray(self.R, dtype=np.float64)
        arrays["b"] = np.asarray(self.b, dtype=np.float64)
        for name in _OPTIONAL:
            if getattr(self, name) is not None:
                arrays[name] = np.asarray(getattr(self, name), dtype=np.float64)
        return arrays

    def save(self, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> None:
        """Write the trajectory to ``path`` (.npz, atomic, checksummed; see the module docstring).

        ``extra`` is stored in the JSON header (used for checkpoint metadata).
        """
        header = {
            "format": "truncfast.Trajectory",
            "format_version": 1,
            "settings": self.settings,
            "reorthonormalizations": int(self.reorthonormalizations),
            "last_step": int(self.last_step),
            "warnings": [str(w) for w in self.warnings],
            "engine_stats": self.engine_stats,
        }
        arrays = self._arrays()
        if self.last_time is not None or self.stats or any(n in arrays for n in _OPTIONAL):
            header.update(format_version=FORMAT_VERSION, last_time=self.last_time, stats=self.stats)
        if extra:
            header.update(extra)
        _check_save_path(path)
        hb = json.dumps(header, sort_keys=True).encode()
        digest = _checksum(hb, arrays)
        atomic_write_npz(path, {"header": np.frombuffer(hb, dtype=np.uint8),
                                "checksum": np.frombuffer(digest.encode(), dtype=np.uint8), **arrays})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Trajectory":
        """Read a file written by :meth:`save` (or a checkpoint), verifying its checksum."""
        traj, _ = cls._load_with_header(path)
        return traj

    @classmethod
    def _load_with_header(cls, path) -> tuple["Trajectory", dict]:
        try:
            path = os.fspath(path)
        except TypeError:
            raise InputError(f"path: expected a file path (str or os.PathLike), got {path!r}") from None
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise InputError(f"path: no trajectory file at {path!r}") from None
        except Exception as exc:  # noqa: BLE001 - a damaged zip can raise almost anything
            # (BadZipFile, EOFError, zlib.error, NotImplementedError for a flipped
            # version byte, UnicodeDecodeError, ...): all of them mean "corrupted"
            raise InputError(f"path: {path!r} is not a readable truncfast trajectory/checkpoint "
                             f"(corrupted or truncated file: {type(exc).__name__}: {exc})") from None
        missing = [k for k in ("header", "checksum", "R", "b", *_RECORDED) if k not in data]
        if missing:
            raise InputError(f"path: {path!r} is not a truncfast trajectory (missing {', '.join(missing)})")
        hb = data.pop("header").tobytes()
        stored = data.pop("checksum").tobytes().decode(errors="replace")
        actual = _checksum(hb, data)
        if actual != stored:
            raise InputError(f"path: checksum mismatch in {path!r} (stored sha256 {stored[:16]}…, "
                             f"contents hash to {actual[:16]}…): the file is corrupted")
        try:
            header = json.loads(hb.decode())
        except ValueError as exc:  # pragma: no cover - checksum would have caught it
            raise InputError(f"path: {path!r} has an unreadable header ({exc})") from None
        if header.get("format") != "truncfast.Trajectory" or header.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(f"path: {path!r} has format {header.get('format')!r} version "
                             f"{header.get('format_version')!r}; this truncfast reads version ≤ {FORMAT_VERSION}")
        last_time = header.get("last_time")
        traj = cls(R=data["R"], b=data["b"], **{k: data[k] for k in _RECORDED},
                   reorthonormalizations=int(header["reorthonormalizations"]),
                   settings=header["settings"], last_step=int(header["last_step"]),
                   warnings=list(header.get("warnings", [])),
                   **{k: data.get(k) for k in _OPTIONAL},
                   last_time=None if last_time is None else float(last_time), stats=dict(header.get("stats") or {}),
                   engine_stats=header.get("engine_stats", {}))
        return traj, header
