"""Time integration of the effective gradient flow (THEORY §§5, 6, 9).

``integrate`` validates once at the boundary, then alternates *evaluate the
right-hand side at state k* and *one solver step* (``_solvers``):

    state k ──evaluate──▶ RHS(k) ──record if k is recorded──▶ solver.step ──▶ state k+1
                                                              └─ re-orthonormalise if the defect > tol

Recorded steps are 0, every ``record_every`` steps, and the last step.  The
loop is cut into *chunks* whose ends are the recorded steps, the checkpoint
steps, the last step and a wall-clock budget (for the progress bar and Ctrl-C
responsiveness).  Chunking never changes a single bit of the result.

Two paths compute the same bits:

* the **Python loop** (any backend, form, method): one ``backend.general`` (or
  separated-moments) call per step plus the compiled retraction of ``_expm``;
* the **compiled loop** (``_compiled_steps``, Numba, sequential) for small
  problems (backend numba, form general, N ≤ ``_config.COMPILED_LOOP_MAX_N``,
  lie-euler or cayley): a whole chunk of steps without returning to Python.
  It reuses the per-chunk kernel ``_kernels_numba.general_chunk`` with the same
  chunk-ordered reduction as ``general_kernel`` and the same ``_expm`` code, so
  its iterates are bitwise equal to the Python loop's.

Checkpoints and interrupts.  With ``checkpoint=PATH`` the run state (current
step, state, every record so far, a sha256 of the data and of the file) is
written atomically every ``checkpoint_every`` steps, at the end, and when the
run is interrupted (Ctrl-C).  :func:`resume` continues such a file to the
originally requested number of steps; the result is bitwise equal to an
uninterrupted run (same backend).  On Ctrl-C, ``integrate`` re-raises the
``KeyboardInterrupt`` with the partial trajectory attached as
``exc.trajectory`` (state and records up to the last completed step).
"""

from __future__ import annotations

import hashlib
import math
import operator
import os
import time
from typing import Any, Callable

import numpy as np
from numba import njit

from truncfast._backends import registry as _backends
from truncfast import _config
from truncfast._kernels import expm as _expm
from truncfast._kernels import numba_cache as _numba_cache
from truncfast._flow import separated as _separated
from truncfast._kernels import numba_kernels as _kn
from truncfast._errors import DivergenceError, InputError, SeparationError
from truncfast._flow.model import orthonormalize
from truncfast._integrate.solvers.base import RHS, SOLVERS, Solver
from truncfast._backends.dask_backend import uses_dask
from truncfast._integrate.trajectory import FULL, PARTIAL, UNTRUNCATED, Trajectory
from truncfast._validate import check_problem

__all__ = ["integrate", "resume"]

#: Test hook: called with the step index after every committed chunk boundary
#: (tests raise KeyboardInterrupt from it to simulate Ctrl-C at a given step).
_after_boundary: Callable[[int], None] | None = None

# the per-chunk kernel of the parallel general kernel (one sequential chunk sum)
_general_chunk = getattr(_kn, "general_chunk", None) or getattr(_kn, "_general_chunk")
_transfer_matrices = _kn.transfer_matrices

# statuses returned by the compiled loop
_DONE, _REORTH, _DIVERGED = 0, 1, 2


# ---------------------------------------------------------------- compiled ---

@njit(cache=True, nogil=True)
def _evaluate_seq(R, b, X, labels, T, W, bout, Y, chunk, block, gb, omega, G, pgb, pG, pgW, pgbo):
    """Loss and (grad_b, omega) of the general Euclidean flow (THEORY §5), sequentially.

    The exact reduction of ``general_kernel`` + ``_backends._normalise``: chunk
    partials (``general_chunk``) added to zeroed totals in chunk order, then
    ``loss/N``, ``gb/N``, ``omega = 0.5 (G − Gᵀ)/N`` — the same operations in
    the same order, hence the same bits.  Writes gb and omega, returns the loss.
    """
    N = X.shape[0]
    L, M = b.shape
    S = _transfer_matrices(R)
    nchunks = (N + chunk - 1) // chunk
    gb[:] = 0.0
    G[:] = 0.0
    loss = 0.0
    for c in range(nchunks):
        pgb[:] = 0.0
        pG[:] = 0.0
        pgW[:] = 0.0
        pgbo[:] = 0.0
        ploss = _general_chunk(R, S, b, X, labels, T, W, bout, Y, False, True, c * chunk,
                               min(N, (c + 1) * chunk), block, pgb, pG, pgW, pgbo)
        loss += ploss
        gb += pgb
        G += pG
    for l in range(L):
        for i in range(M):
            gb[l, i] = gb[l, i] / N
            for k in range(M):
                omega[l, i, k] = 0.5 * (G[l, i, k] - G[l, k, i]) / N
    return loss / N


@njit(cache=True, nogil=True)
def _compiled_steps(R, b, gb, omega, X, labels, T, W, bout, Y, chunk, block, dt, method,
                    train_w, train_b, nsteps, tol, Rprev, bprev, loss_limit):
    """Up to ``nsteps`` Lie–Euler / Cayley steps without leaving compiled code.

    On entry (R, b) is state k and (gb, omega) its right-hand side; on return
    (status _DONE) they are state k + done and its right-hand side.  Stops early
    with _REORTH after a step whose orthogonality defect exceeds ``tol`` (the
    caller re-orthonormalises and re-evaluates, exactly like the Python loop),
    or with _DIVERGED when the new loss or gradient is not finite or the loss
    exceeds ``loss_limit`` (Rprev, bprev then hold the last good state).
    Returns ``(status, done, loss)``.
    """
    L, M = b.shape
    P = W.shape[0]
    G = np.empty((L, M, M))
    pgb = np.empty((L, M))
    pG = np.empty((L, M, M))
    pgW = np.empty((P, M))
    pgbo = np.empty(P)
    loss = 0.0
    for it in range(nsteps):
        Rprev[:] = R
        bprev[:] = b
        if train_w:
            _expm.rotate_layers(Rprev, omega, dt, method, R)
        if train_b:
            for l in range(L):
                for i in range(M):
                    b[l, i] = bprev[l, i] - dt * gb[l, i]
        if train_w and _expm.defect(R) > tol:
            return _REORTH, it + 1, loss
        loss = _evaluate_seq(R, b, X, labels, T, W, bout, Y, chunk, block, gb, omega, G, pgb, pG, pgW, pgbo)
        s = loss
        for l in range(L):
            for i in range(M):
                s += gb[l, i] * gb[l, i]
                for k in range(M):
                    s += omega[l, i, k] * omega[l, i, k]
        if not math.isfinite(s) or loss > loss_limit:
            return _DIVERGED, it + 1, loss
    return _DONE, nsteps, loss


@njit(cache=True, nogil=True)
def _counts_seq(R, b, X, labels, Q, chunk, block, out):
    """out[ℓ, j] = [untruncated, partial, fully truncated] points of cluster j at layer ℓ.

    Sector codes along the composition from the numba backend's own kernel
    (``truncate_range``), so the counts agree bit for bit with
    ``tf.sector_codes(..., backend="numba")``; one sequential call instead of
    a round of NumPy reductions per record.  Needs M ≤ 64.
    """
    N, M = X.shape
    L = b.shape[0]
    S = _transfer_matrices(R)
    codes = np.empty((N, L), dtype=np.uint64)
    dummy = np.empty((0, M))
    _kn.truncate_range(R, S, b, X, 0, (N + chunk - 1) // chunk, chunk, block, dummy, codes, True)
    ones = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - M)
    out[:] = 0
    for n in range(N):
        j = labels[n]
        for l in range(L):
            c = codes[n, l]
            if c == ones:
                out[l, j, 0] += 1
            elif c == 0:
                out[l, j, 2] += 1
            else:
                out[l, j, 1] += 1


# the compiled loops link the kernels of _kernels_numba / _expm and the
# constants of _config into their cached code (see _numba_cache)
_numba_cache.stamp([_evaluate_seq, _compiled_steps, _counts_seq], [_kn, _expm, _config])


# -------------------------------------------------------------- validation ---

def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected an integer ≥ {minimum}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InputError(f"{name}: expected an integer ≥ {minimum}, got {value!r} ({type(value).__name__})") from None
    if v < minimum:
        raise InputError(f"{name}: expected an integer ≥ {minimum}, got {v}")
    return int(v)


def _check_dt(dt: Any) -> float:
    if isinstance(dt, (bool, np.bool_)) or not isinstance(dt, (int, float, np.integer, np.floating)):
        raise InputError(f"dt: expected a positive finite number, got {dt!r} ({type(dt).__name__})")
    v = float(dt)
    if not math.isfinite(v) or v <= 0.0:
        raise InputError(f"dt: expected a positive finite number, got {v!r}")
    return v


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _data_digest(X: np.ndarray, labels: np.ndarray, targets: np.ndarray) -> str:
    """sha256 of the validated data; a checkpoint only resumes on the same data."""
    return _digest((a.dtype.str, a.shape, [a]) for a in (X, labels, targets))


def _digest(arrays) -> str:
    """sha256 over ``(dtype str, shape, pieces)`` per array: the header, then the
    bytes of its row pieces in order (one piece locally, the blocks of a dask
    array in ``_distributed.data_digest``: the same digest for the same data)."""
    h = hashlib.sha256()
    for dtype, shape, pieces in arrays:
        h.update(repr((dtype, tuple(shape))).encode())
        for piece in pieces:
            h.update(memoryview(np.ascontiguousarray(piece)).cast("B"))
    return h.hexdigest()


def _check_resume_data(traj: Trajectory, meta: dict, X, targets, digest: Callable[[], str]) -> str:
    """The data digest, after checking that X and targets fit the checkpoint's run and its digest."""
    s = traj.settings
    if (X.shape[0], targets.shape[0]) != (s["N"], s["Q"]):
        raise InputError(f"X: the checkpoint was made with N = {s['N']} points and Q = {s['Q']} clusters, "
                         f"got N = {X.shape[0]} and Q = {targets.shape[0]}")
    d = digest()
    if meta.get("data_sha256") not in (None, d):
        raise InputError("X: the data (X, labels, targets) differ from those the checkpoint was made with "
                         "(sha256 mismatch); resume needs the original data")
    return d


def _n_records(steps: int, record_every: int) -> int:
    """Number of recorded steps: 0, every ``record_every`` steps, and the last step."""
    return steps // record_every + 1 + (1 if steps % record_every else 0)


def _check_record_memory(steps: int, record_every: int, L: int, M: int, Q: int) -> None:
    """Refuse, before the first step, a run whose records cannot fit in memory.

    A :class:`Trajectory` keeps every record (R, b, counts and five scalars) in
    memory, so ``steps // record_every`` records of ``8·(L·M² + L·M + 3·L·Q + 6)``
    bytes each must fit; otherwise the run would fail with a ``MemoryError``
    hours in.  Compared with the memory available now (psutil), keeping half
    of it for the rest of the run.
    """
    import psutil

    per_record = 8 * (L * M * M + L * M + 3 * L * Q + 6)
    n = _n_records(steps, record_every)
    need = n * per_record
    avail = psutil.virtual_memory().available // 2
    if need > avail:
        fit = max(1, avail // per_record - 2)
        k = max(record_every + 1, -(-steps // fit))
        raise InputError(
            f"record_every: {steps} steps recorded every {record_every} step(s) keep "
            f"{n} records of {per_record} bytes ({need / 2**30:.1f} GiB) in memory, "
            f"more than half of the {2 * avail / 2**30:.1f} GiB available; record less often "
            f"(record_every ≥ {k}) or integrate in shorter runs")


def _record_step(i: int, steps: int, record_every: int) -> int:
    """The step of record i (the i-th element of 0, k, 2k, …, steps)."""
    return min(i * record_every, steps)


def _check_checkpoint_path(checkpoint: Any) -> None:
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


def _version() -> str:
    from truncfast._version import __version__

    return __version__


# ------------------------------------------------------------------ driver ---

class _Diverged(Exception):
    def __init__(self, step, loss, good_step, R, b):
        super().__init__(step)
        self.step, self.loss, self.good_step, self.R, self.b = step, loss, good_step, R, b


class _Run:
    """One integration (fresh or resumed): buffers, committed state, the loop."""

    def __init__(self, settings: dict, R, b, X, labels, targets, *, checkpoint, checkpoint_every,
                 progress: bool, previous: Trajectory | None = None, digest: str | None = None,
                 reorth0: int = 0):
        self.settings = settings
        self.X, self.labels, self.targets = X, labels, targets
        self.bk = _backends.get(settings["backend"])
        self.solver: Solver = SOLVERS[settings["method"]]()
        self.dt = float(settings["dt"])
        self.steps = int(settings["steps"])
        self.train_w = bool(settings["train_weights"])
        self.train_b = bool(settings["train_biases"])
        self.form = settings["form"]
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.digest = digest
        N, M = X.shape
        L = R.shape[0]
        Q = targets.shape[0]
        self.record_every = int(settings["record_every"])
        _check_record_memory(self.steps, self.record_every, L, M, Q)
        self.n_records = _n_records(self.steps, self.record_every)
        # record buffers grow by doubling (a run of 10⁹ steps must not allocate
        # all its records up front); the recorded values never depend on capacity
        K = min(self.n_records, 256 if previous is None else len(previous.steps) + 256)
        self.buf = {
            "times": np.zeros(K), "steps": np.zeros(K, dtype=np.int64), "loss": np.zeros(K),
            "grad_b_norm": np.zeros(K), "omega_norm": np.zeros(K), "ortho_defect": np.zeros(K),
            "counts": np.zeros((K, L, Q, 3), dtype=np.int64), "Rs": np.zeros((K, L, M, M)),
            "bs": np.zeros((K, L, M)),
        }
        # empty output-layer arrays: the Euclidean loss goes through the general kernel
        self._W0 = np.zeros((0, M))
        self._bo0 = np.zeros(0)
        self._Y0 = np.zeros((Q, 0))
        nrec, reorth, k = 0, reorth0, 0
        if previous is not None:
            nrec = len(previous.steps)
            for name, arr in self.buf.items():
                arr[:nrec] = getattr(previous, name)
            reorth = int(previous.reorthonormalizations)
            k = int(previous.last_step)
        # the committed state, replaced by one assignment so that Ctrl-C never
        # sees a half-updated run: (step, R, b, records written, reorthonormalisations)
        self.state = (k, R, b, nrec, reorth)
        self._chunk_len = 64

    # ------------------------------------------------------------ pieces ---
    def evaluate(self, R, b) -> RHS:
        """Right-hand side at (R, b) in the requested form (THEORY §5 or §6)."""
        # a diverging state makes inf − inf in the kernels; non-finite results are
        # detected by the caller (DivergenceError), so no RuntimeWarning noise
        with np.errstate(all="ignore"):
            return self._evaluate(R, b)

    def _evaluate(self, R, b) -> RHS:
        X, labels, T = self.X, self.labels, self.targets
        if self.form == "general":
            loss, gb, om, _, _ = self.bk.general(R, b, X, labels, T, self._W0, self._bo0, self._Y0, False, True)
            return RHS(float(loss), gb, om)
        Q = T.shape[0]
        N = X.shape[0]
        counts, S0, S1, S2 = _separated.checked_moments(self.bk, R, b, X, labels, Q)
        gb, om = _separated.assemble(R, b, T, counts, S0, S1, S2, N)
        loss = float(self.bk.general(R, b, X, labels, T, self._W0, self._bo0, self._Y0, False, False)[0])
        rhs = RHS(loss, gb, om)
        if self.solver.needs_moments:
            rhs.rate = (counts[:, None] - S0) / N  # π_j (1 − m0_j)
            rhs.target_rot = np.einsum("jik,jk->ji", R, T)  # ỹ'_j
        return rhs

    @staticmethod
    def _finite(rhs: RHS) -> bool:
        return bool(np.isfinite(rhs.loss) and np.isfinite(rhs.grad_b).all() and np.isfinite(rhs.omega).all())

    def _counts(self, R, b) -> np.ndarray:
        """(L, Q, 3) untruncated / partial / full counts along the composition (THEORY §2)."""
        L, M = b.shape
        Q = self.targets.shape[0]
        if M > _config.MAX_CODE_WIDTH:
            return np.full((L, Q, 3), -1, dtype=np.int64)
        # rows in bounded blocks: the codes of all N points at once would be an (N, L)
        # array plus temporaries, growing with N like X itself (integer counts: the
        # blocking cannot change the result)
        out = np.zeros((L, Q, 3), dtype=np.int64)
        part = np.empty((L, Q, 3), dtype=np.int64)
        ones = np.uint64((1 << M) - 1)
        rows = _config.COUNTS_ROWS
        for s in range(0, self.X.shape[0], rows):
            X, labels = self.X[s:s + rows], self.labels[s:s + rows]
            if self.settings["backend"] == "numba":
                _counts_seq(R, b, X, labels, Q, _config.CHUNK_SIZE, _config.BLOCK_SIZE, part)
                out += part
                continue
            codes = np.asarray(self.bk.codes(R, b, X))
            cat = np.where(codes == ones, UNTRUNCATED, np.where(codes == 0, FULL, PARTIAL))
            for l in range(L):
                out[l] += np.bincount(labels * 3 + cat[:, l], minlength=3 * Q).reshape(Q, 3)
        return out

    def _record(self, i: int, k: int, R, b, rhs: RHS) -> None:
        buf = self.buf
        cap = len(buf["steps"])
        if i >= cap:
            new = min(self.n_records, 2 * cap)
            # build the grown buffers first, then swap them in with one assignment
            # (a Ctrl-C in between leaves the old, still valid buffers)
            grown = {}
            for name, arr in buf.items():
                g = np.zeros((new,) + arr.shape[1:], dtype=arr.dtype)
                g[:cap] = arr
                grown[name] = g
            self.buf = buf = grown
        buf["times"][i] = k * self.dt
        buf["steps"][i] = k
        buf["loss"][i] = rhs.loss
        buf["grad_b_norm"][i] = math.sqrt(float(np.dot(rhs.grad_b.ravel(), rhs.grad_b.ravel())))
        buf["omega_norm"][i] = math.sqrt(float(np.dot(rhs.omega.ravel(), rhs.omega.ravel())))
        buf["ortho_defect"][i] = _expm.defect(R)
        buf["counts"][i] = self._counts(R, b)
        buf["Rs"][i] = R
        buf["bs"][i] = b

    def trajectory(self) -> Trajectory:
        """The trajectory up to the committed state (complete or partial)."""
        k, R, b, nrec, reorth = self.state
        rec = {name: arr[:nrec].copy() for name, arr in self.buf.items()}
        return Trajectory(R=R.copy(), b=b.copy(), **rec, reorthonormalizations=reorth,
                          settings=dict(self.settings), last_step=k)

    def write_checkpoint(self) -> None:
        if self.checkpoint is None:
            return
        extra = {"checkpoint": {"data_sha256": self.digest, "checkpoint_every": self.checkpoint_every}}
        self.trajectory().save(self.checkpoint, extra=extra)

    def _next_boundary(self, k: int, nrec: int) -> int:
        stop = min(self.steps, _record_step(nrec, self.steps, self.record_every), k + self._chunk_len)
        if self.checkpoint is not None and self.checkpoint_every:
            stop = min(stop, (k // self.checkpoint_every + 1) * self.checkpoint_every)
        return max(stop, k + 1)

    def _reorthonormalize(self, R) -> tuple[np.ndarray, bool]:
        """Polar projection back onto O(M) once the defect exceeds the tolerance (THEORY §9)."""
        if self.train_w and _expm.defect(R) > _config.REORTHONORMALIZE_TOL:
            return orthonormalize(R), True
        return R, False

    # ------------------------------------------------------------ advance ---
    def _advance_python(self, k, stop, R, b, rhs, nrec, reorth):
        while k < stop:
            R_new, b_new = self.solver.step(R, b, rhs, self.dt, self.train_w, self.train_b)
            R_new, fixed = self._reorthonormalize(R_new)
            rhs_new = self.evaluate(R_new, b_new)
            if not self._finite(rhs_new) or rhs_new.loss > self.loss_limit:
                raise _Diverged(k + 1, rhs_new.loss, k, R, b)
            k, R, b, rhs = k + 1, R_new, b_new, rhs_new
            reorth += fixed
            if k < stop:  # intermediate states are never recorded: commit them at once
                self.state = (k, R, b, nrec, reorth)
        return k, R, b, rhs, reorth

    def _advance_compiled(self, k, stop, R, b, rhs, reorth):
        # work on copies: the committed arrays must survive a Ctrl-C
        Rw, bw = R.copy(), b.copy()
        gb, om = rhs.grad_b.copy(), rhs.omega.copy()
        Rprev, bprev = np.empty_like(R), np.empty_like(b)
        X, labels, T = self.X, self.labels, self.targets
        loss = rhs.loss
        code = self.solver.code
        while k < stop:
            status, done, loss_c = _compiled_steps(
                Rw, bw, gb, om, X, labels, T, self._W0, self._bo0, self._Y0, _config.CHUNK_SIZE,
                _config.BLOCK_SIZE, self.dt, code, self.train_w, self.train_b, stop - k,
                _config.REORTHONORMALIZE_TOL, Rprev, bprev, self.loss_limit)
            k += done
            if status == _DIVERGED:
                raise _Diverged(k, loss_c, k - 1, Rprev.copy(), bprev.copy())
            if status == _REORTH:
                Rw = orthonormalize(Rw)
                reorth += 1
                G = np.empty_like(om)
                loss_c = _evaluate_seq(Rw, bw, X, labels, T, self._W0, self._bo0, self._Y0, _config.CHUNK_SIZE,
                                       _config.BLOCK_SIZE, gb, om, G, np.empty_like(bw), np.empty_like(om),
                                       np.empty((0, Rw.shape[1])), np.empty(0))
                if not (np.isfinite(loss_c) and np.isfinite(gb).all() and np.isfinite(om).all()) \
                        or loss_c > self.loss_limit:
                    raise _Diverged(k, loss_c, k - 1, Rprev.copy(), bprev.copy())
            loss = loss_c
        return k, Rw, bw, RHS(float(loss), gb, om), reorth

    # --------------------------------------------------------------- loop ---
    def run(self) -> Trajectory:
        k, R, b, nrec, reorth = self.state
        compiled = bool(self.settings.get("compiled_loop"))
        try:
            rhs = self.evaluate(R, b)
            if not self._finite(rhs):
                raise _Diverged(k, rhs.loss, None, R, b)
            if nrec == 0:
                self._record(0, k, R, b, rhs)
                nrec = 1
                self.state = (k, R, b, nrec, reorth)
            self.loss_limit = self._loss_limit()
            bar = None
            if self.progress and k < self.steps:
                from tqdm import tqdm

                bar = tqdm(total=self.steps, initial=k, unit="step",
                           desc=f"truncfast {self.settings['method']}", dynamic_ncols=True)
            try:
                while k < self.steps:
                    stop = self._next_boundary(k, nrec)
                    t0 = time.perf_counter()
                    k0 = k
                    if compiled:
                        k, R, b, rhs, reorth = self._advance_compiled(k, stop, R, b, rhs, reorth)
                    else:
                        k, R, b, rhs, reorth = self._advance_python(k, stop, R, b, rhs, nrec, reorth)
                    if nrec < self.n_records and k == _record_step(nrec, self.steps, self.record_every):
                        self._record(nrec, k, R, b, rhs)
                        nrec += 1
                    self.state = (k, R, b, nrec, reorth)
                    self._tune_chunk(time.perf_counter() - t0, k - k0)
                    if bar is not None:
                        bar.update(k - k0)
                        bar.set_postfix(loss=f"{rhs.loss:.4g}", refresh=False)
                    if self.checkpoint is not None and self.checkpoint_every and k % self.checkpoint_every == 0 \
                            and k < self.steps:
                        self.write_checkpoint()
                    if _after_boundary is not None:
                        _after_boundary(k)
            finally:
                if bar is not None:
                    bar.close()
        except KeyboardInterrupt as exc:
            self.write_checkpoint()
            exc.trajectory = self.trajectory()  # type: ignore[attr-defined]
            note = (f"truncfast.integrate interrupted at step {self.state[0]} of {self.steps}; the partial "
                    "trajectory is in exc.trajectory")
            if self.checkpoint is not None:
                note += f"; checkpoint written to {self.checkpoint!r} (continue with truncfast.resume)"
            if hasattr(exc, "add_note"):
                exc.add_note(note)
            raise
        except _Diverged as d:
            self._raise_divergence(d)
        except SeparationError as exc:
            exc.trajectory = self.trajectory()  # type: ignore[attr-defined]
            exc.step = self.state[0]  # type: ignore[attr-defined]
            raise
        self.write_checkpoint()
        return self.trajectory()

    loss_limit = math.inf

    def _loss_limit(self) -> float:
        """Largest loss a step may reach before the run counts as diverging.

        A gradient flow never increases its loss, so explicit steps with a stable
        dt keep it ≤ C(0) up to rounding.  The limit is DIVERGENCE_LOSS_FACTOR ×
        the loss at step 0 of the run (recorded, so a resumed run uses the same
        limit and stays bitwise equal), floored at DIVERGENCE_LOSS_FLOOR × the
        squared scale of the targets and initial biases, so that a run started
        at a (nearly) exact equilibrium is not stopped by rounding noise.
        """
        loss0 = float(self.buf["loss"][0])
        b0 = self.buf["bs"][0]
        scale2 = float(np.max(np.sum(self.targets * self.targets, axis=1), initial=0.0)
                       + np.max(np.sum(b0 * b0, axis=1), initial=0.0))
        ref = max(loss0, _config.DIVERGENCE_LOSS_FLOOR * scale2)
        return _config.DIVERGENCE_LOSS_FACTOR * ref if ref > 0.0 else math.inf

    def _tune_chunk(self, elapsed: float, n: int) -> None:
        """Keep one chunk near the wall-clock budget (progress bar, Ctrl-C latency)."""
        if n < self._chunk_len:
            return
        if elapsed < 0.5 * _config.INTEGRATE_CHUNK_SECONDS:
            self._chunk_len = min(self._chunk_len * 2, 1 << 24)
        elif elapsed > 2.0 * _config.INTEGRATE_CHUNK_SECONDS:
            self._chunk_len = max(1, self._chunk_len // 2)

    def _raise_divergence(self, d: _Diverged):
        k, R, b, nrec, reorth = self.state
        if d.good_step is not None and d.good_step != k:
            self.state = (d.good_step, d.R, d.b, nrec, reorth)
        traj = self.trajectory()
        suggest = min(self.dt / 2.0, 1.0)
        where = (f"the last good state (step {d.good_step}) is kept in err.trajectory"
                 if d.good_step is not None else "the initial state already has a non-finite loss")
        if not math.isfinite(d.loss):
            what = f"became {float(d.loss)!r}"
        elif d.loss > self.loss_limit:
            what = (f"grew to {float(d.loss)!r}, more than {_config.DIVERGENCE_LOSS_FACTOR:g} × its reference "
                    f"{self.loss_limit / _config.DIVERGENCE_LOSS_FACTOR:.6g} (a gradient flow never increases "
                    "its loss),")
        else:
            what = f"is {float(d.loss)!r} but the gradient became non-finite"
        err = DivergenceError(
            f"integrate: the loss {what} at step {d.step} (time {d.step * self.dt:g}) with "
            f"dt = {self.dt:g}; {where}. Use a smaller step: the bias rate π_j(1 − m0) is at most 1, so "
            f"explicit Euler on the biases needs dt < 2; try dt = {suggest:g}.")
        err.step = d.step  # type: ignore[attr-defined]
        err.loss = d.loss  # type: ignore[attr-defined]
        err.suggested_dt = suggest  # type: ignore[attr-defined]
        err.trajectory = traj  # type: ignore[attr-defined]
        raise err from None


# ------------------------------------------------------------------ public ---

def integrate(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, dt: float, steps: int,
              method: str = "lie-euler", train_weights: bool = True, train_biases: bool = True,
              record_every: int = 1, backend: str = "auto", progress: bool = False,
              checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
              form: str = "general") -> Trajectory:
    """Integrate the effective gradient flow with a fixed step (THEORY §§5, 6, 9).

    State ``(R, b)`` ∈ O(M)^L × R^{L×M}; flow ``∂_s b = −∇_b C``,
    ``∂_s R_ℓ = −Ω_ℓ R_ℓ`` of the Euclidean loss C_E (THEORY §3).

    Parameters
    ----------
    dt, steps
        Step size h > 0 and number of steps ≥ 0 (final time ``steps·dt``).
    method
        ``"lie-euler"``: ``b ← b − h ∇_b C``, ``R_ℓ ← expm(−h Ω_ℓ) R_ℓ`` with the
        right-hand side at the state before the step — one gradient-descent
        step with the exponential retraction.  ``"cayley"``: same, with
        ``R ← (I + hΩ/2)⁻¹(I − hΩ/2) R``.  ``"exp-euler"``: the exact
        exponential bias step of the separated form
        ``b_j ← −ỹ'_j + e^{−h π_j (1 − m0_j)} ⊙ (b_j + ỹ'_j)`` plus Lie–Euler for R;
        needs L == Q and cluster-separated truncations (implies ``form="separated"``).
    train_weights, train_biases
        Freeze R or b: a frozen part stays bitwise unchanged.
    record_every
        Record steps 0, k, 2k, … and always the last step.
    backend
        As in :func:`truncfast.gradient`; for small problems on the numba
        backend the whole step loop runs compiled (``_config.COMPILED_LOOP_MAX_N``).
    progress
        Show a tqdm progress bar.
    checkpoint, checkpoint_every
        Write the run state atomically to ``checkpoint`` every
        ``checkpoint_every`` steps (if given), at the end, and on Ctrl-C;
        continue with :func:`truncfast.resume`.
    form
        ``"general"`` (THEORY §5, exact for any data) or ``"separated"`` (§6).

    Returns
    -------
    Trajectory

    Raises
    ------
    InputError
        Bad arguments (named in the message).
    DivergenceError
        The loss became non-finite; ``err.trajectory`` holds the run up to the
        last good state, ``err.step``, ``err.loss`` and ``err.suggested_dt`` say
        where and what to try.
    SeparationError
        ``form="separated"`` / ``"exp-euler"`` and the truncations stop being
        cluster-separated (``err.trajectory``, ``err.step``).
    KeyboardInterrupt
        Re-raised after Ctrl-C, with the partial run in ``exc.trajectory``
        (and a last checkpoint written when checkpointing).

    Dask arrays for X / labels run on the dask cluster (``_distributed``,
    docs/distributed.md).
    """
    if uses_dask(X, labels):
        from truncfast._backends.dask_backend import integrate as integrate_dask

        return integrate_dask(R, b, X, labels, targets, dt=dt, steps=steps, method=method,
                              train_weights=train_weights, train_biases=train_biases, record_every=record_every,
                              backend=backend, progress=progress, checkpoint=checkpoint,
                              checkpoint_every=checkpoint_every, form=form)
    R, b, X, labels, targets = check_problem(R, b, X, labels, targets)
    dt = _check_dt(dt)
    steps = _check_int("steps", steps, 0)
    record_every = _check_int("record_every", record_every, 1)
    if checkpoint_every is not None:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    if not isinstance(method, str) or method not in SOLVERS:
        raise InputError(f"method: unknown method {method!r}; choose one of " + ", ".join(map(repr, SOLVERS)))
    if form not in ("general", "separated"):
        raise InputError(f"form: unknown form {form!r}; choose 'general' or 'separated'")
    train_weights = _check_flag("train_weights", train_weights)
    train_biases = _check_flag("train_biases", train_biases)
    progress = _check_flag("progress", progress)
    _check_checkpoint_path(checkpoint)
    N, M = X.shape
    L = R.shape[0]
    Q = targets.shape[0]
    solver_cls = SOLVERS[method]
    if solver_cls.needs_moments:
        form = "separated"
    if form == "separated" and L != Q:
        raise _separated.SeparationShapeError(
            f"targets: method={method!r} / form='separated' needs one layer per cluster (L == Q), "
            f"got L = {L} layers and Q = {Q} clusters")
    name = _backends.resolve(backend, N=N, M=M, L=L)
    if backend == "auto" and N <= _config.COMPILED_LOOP_MAX_N and form == "general" \
            and solver_cls.code is not None and "numba" in _backends.available():
        name = "numba"  # the whole step loop compiled: ~10 µs/step instead of ~70 µs in Python
    compiled = (name == "numba" and form == "general" and solver_cls.code is not None
                and N <= _config.COMPILED_LOOP_MAX_N)
    settings = {
        "method": method, "dt": dt, "steps": steps, "record_every": record_every,
        "train_weights": train_weights, "train_biases": train_biases, "backend": name,
        "form": form, "N": int(N), "M": int(M), "L": int(L), "Q": int(Q), "version": _version(),
        "compiled_loop": bool(compiled),
    }
    R = R.copy()  # never alias the caller's arrays
    b = b.copy()
    reorth0 = 0
    if train_weights:
        R, fixed = _reorthonormalize_initial(R)
        reorth0 = int(fixed)
    digest = _data_digest(X, labels, targets) if checkpoint is not None else None
    run = _Run(settings, R, b, X, labels, targets, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
               progress=progress, digest=digest, reorth0=reorth0)
    return run.run()


def _reorthonormalize_initial(R):
    """Project an input R whose defect exceeds REORTHONORMALIZE_TOL (it passed the looser
    ORTHOGONALITY_TOL of validation) onto O(M) once, so that steps do not re-project every time."""
    if _expm.defect(R) > _config.REORTHONORMALIZE_TOL:
        return orthonormalize(R), True
    return R, False



def resume(path: str | os.PathLike, X: Any, labels: Any, targets: Any, *, backend: str | None = None,
           progress: bool = False, checkpoint: str | os.PathLike | None = None,
           checkpoint_every: int | None = None) -> Trajectory:
    """Continue a checkpointed :func:`integrate` run to its requested number of steps.

    ``X, labels, targets`` must be the data of the original run (checked by
    sha256); they may be dask arrays (also for a run that was local, and the
    other way round: the digest does not depend on where the data live).  The
    result is bitwise equal to an uninterrupted run when the same backend is
    used (the default: the backend recorded in the checkpoint).
    Checkpoints keep being written to ``checkpoint`` (default: ``path``) every
    ``checkpoint_every`` steps (default: the original setting).
    """
    traj, header = Trajectory._load_with_header(path)
    meta = header.get("checkpoint")
    if not isinstance(meta, dict):
        raise InputError(f"path: {os.fspath(path)!r} is a saved trajectory, not a checkpoint "
                         "(write one with integrate(..., checkpoint=PATH))")
    if checkpoint_every is None:
        checkpoint_every = meta.get("checkpoint_every")
    else:
        checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    progress = _check_flag("progress", progress)
    _check_checkpoint_path(path if checkpoint is None else checkpoint)
    if uses_dask(X, labels):
        from truncfast._backends import dask_backend as _distributed

        if _distributed.is_dask_array(X):
            if backend is not None:
                _distributed._check_backend(backend)
            return _distributed.resume(traj, meta, path, X, labels, targets, progress=progress,
                                       checkpoint=checkpoint, checkpoint_every=checkpoint_every)
        labels = _distributed._local_labels(labels)  # X in memory: run here, as integrate does
    s = dict(traj.settings)
    R, b, X, labels, targets = check_problem(traj.R, traj.b, X, labels, targets)
    digest = _check_resume_data(traj, meta, X, targets, lambda: _data_digest(X, labels, targets))
    if backend is not None:
        name = _backends.resolve(backend, N=s["N"], M=s["M"], L=s["L"])
        s["backend"] = name
        s["compiled_loop"] = bool(s["compiled_loop"] and name == "numba")
    else:
        _backends.resolve(s["backend"])
    run = _Run(s, R.copy(), b.copy(), X, labels, targets, checkpoint=path if checkpoint is None else checkpoint,
               checkpoint_every=checkpoint_every, progress=progress, previous=traj, digest=digest)
    return run.run()
