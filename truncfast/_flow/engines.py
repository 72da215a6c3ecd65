"""Engines of the right-hand side: per point, or from pattern groups kept across evaluations (docs/theory.md §11).

* ``"direct"``: the per-point kernel of §5 over all N points, every evaluation.
* ``"moments"``: the groups of §11 — points with one pattern (sector codes
  along all layers) and one label, kept as count, mean and centred scatter —
  live across evaluations.  At each evaluation the margin bound of §11 names
  the points whose pattern it cannot certify (``Backend.pattern_at_risk``);
  only those get a new forward pass and move between groups
  (``pattern_recheck``); loss and gradient are assembled from the groups in
  O(G L M³) (``pattern_assemble``).  A full pass rebuilds everything when more
  than ``_config.ENGINE_RECHECK_SHARE`` of the points are at risk, when the
  re-checks since the last pass have cost as much as a pass (ski rental), and
  ``_config.ENGINE_REBUILD_EVERY`` evaluations after the first move (moves
  drift in the last bits; without moves nothing drifts).
* ``"auto"``: the moments engine whenever it is predicted cheaper, per
  evaluation, from the current counts (:class:`CostModel`, constants in
  ``_config``): with G groups and K points at risk, ``fixed + G·group +
  K·recheck`` against ``N·point`` — or the *hybrid* evaluation
  (``engine_hybrid``): groups smaller than ``group/point`` points per point,
  the others from their moments, in one evaluation.  A full pass is an
  investment: when the groups it built go stale (or their re-checks cost more
  than a per-point evaluation) before the evaluations they served paid for it,
  auto runs per point for a back-off window (doubling, bounded) before trying
  again.  Before a pass, a sample of the data bounds the number of groups from
  below and predicts whether the groups would stay valid long enough to pay
  (``engine_probe``); the pass itself gives up beyond
  ``_config.ENGINE_HYBRID_GROUP_SHARE`` · N groups.  Decisions depend on counts
  only, never on timings, so runs stay deterministic (same bits for any
  thread count).

Exactness: after every moments evaluation the group of every point is the
pattern ``sector_codes`` gives at that state (the bound is a proof, rounding
included), so the loss and gradient are those of §5 up to rounding
(docs/DESIGN.md, "Engines", for the measured agreement).  Backends without
pattern kernels (numpy, dask), M > 64 (codes are uint64 bitmasks) and, for
``"auto"``, N < ``_config.ENGINE_AUTO_MIN_N`` run ``"direct"``; the reason is in
``stats["fallback"]``.  The separated form (§6) with groups: its moments, the
separation check and the rates come from the groups (:func:`separated_from_groups`).

One :class:`Engine` owns one pattern state: not thread-safe.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from truncfast import _config
from truncfast._backends.protocol import Backend
from truncfast._errors import InputError
from truncfast._flow.engine_hybrid import SmallGroups
from truncfast._flow.engine_probe import Probe
from truncfast._flow.gradient import euclid_general

__all__ = ["ENGINES", "CostModel", "Engine", "check_engine", "merge_stats", "plan", "separated_from_groups"]

#: The values of ``engine=``.
ENGINES = ("auto", "direct", "moments")

#: Test and debug hook: when set, called as ``_verify(engine, R, b, loss, grad_b, omega)``
#: after every evaluation (``engine.last`` says which path ran: "direct" or "moments").
_verify: Callable[..., None] | None = None


def check_engine(engine: Any) -> str:
    """``engine`` if it is one of :data:`ENGINES`, else :class:`InputError` naming it."""
    if not isinstance(engine, str) or engine not in ENGINES:
        raise InputError(f"engine: unknown engine {engine!r}; choose one of " + ", ".join(map(repr, ENGINES)))
    return engine


def plan(engine: str, bk: Backend, N: int, M: int) -> tuple[str, str | None]:
    """``(mode, reason)``: the engine that will run for ``engine`` on this backend and size.

    ``mode`` is ``"direct"``, ``"moments"`` or ``"auto"``; ``reason`` says why
    a ``"moments"``/``"auto"`` request runs ``"direct"`` (None otherwise).
    """
    engine = check_engine(engine)
    if engine == "direct":
        return "direct", None
    if bk.pattern_kernels is None:
        return "direct", f"backend {bk.name!r} has no pattern kernels"
    if M > _config.MAX_CODE_WIDTH:
        return "direct", f"M = {M} > {_config.MAX_CODE_WIDTH}: patterns are uint64 bitmasks"
    if engine == "auto" and N < _config.ENGINE_AUTO_MIN_N:
        return "direct", f"N = {N} < ENGINE_AUTO_MIN_N = {_config.ENGINE_AUTO_MIN_N}"
    return engine, None


class CostModel:
    """Predicted time (ns) of the pieces of an evaluation at sizes N, L, M (``_config.ENGINE_COST_*``)."""

    def __init__(self, N: int, L: int, M: int, backend: str = "numba"):
        c = _config
        lm2, lm3 = L * M * M, L * M * M * M
        a, c0 = c.ENGINE_COST_DIRECT.get(backend, c.ENGINE_COST_DIRECT["numba"])
        self.direct = N * (a * lm2 + c0)
        self.full_pass = N * (c.ENGINE_COST_PASS[0] * lm2 + c.ENGINE_COST_PASS[1])
        self.recheck_point = c.ENGINE_COST_RECHECK[0] * lm2 + c.ENGINE_COST_RECHECK[1]
        self.recheck_fixed = c.ENGINE_COST_RECHECK[2]
        self.group = c.ENGINE_COST_GROUP[0] * lm3 + c.ENGINE_COST_GROUP[1]
        self.fixed = c.ENGINE_COST_FIXED
        self.point = a * lm2 + c0
        self.N = N

    def moments(self, at_risk: int, groups: int) -> float:
        """One evaluation from the groups with ``at_risk`` points to re-check."""
        recheck = self.recheck_fixed + self.recheck_point * at_risk if at_risk else 0.0
        return self.fixed + self.group * groups + recheck

    def hybrid(self, at_risk: int, big: int, small_points: int, gather: bool) -> float:
        """One hybrid evaluation: ``big`` groups from their moments, ``small_points`` points per point,
        the rows of the small groups found and gathered again when ``gather``."""
        recheck = self.recheck_fixed + self.recheck_point * at_risk if at_risk else 0.0
        split = _config.ENGINE_COST_SPLIT
        regather = split[0] * self.N + split[1] * small_points if gather else 0.0
        return self.fixed + split[2] + self.group * big + self.point * small_points + recheck + regather

    def small_group(self) -> int:
        """Groups with fewer points than this are cheaper per point than from their moments."""
        return int(np.ceil(self.group / self.point))

    def group_cap(self) -> int:
        """Most groups for which the assembly costs ``ENGINE_AUTO_GROUP_SHARE`` of a per-point evaluation."""
        return int((_config.ENGINE_AUTO_GROUP_SHARE * self.direct - self.fixed) // self.group)

    def recheck_cap(self, groups: int) -> int:
        """Most points a re-check may take before the evaluation costs more than a per-point one."""
        room = self.direct - self.moments(0, groups) - self.recheck_fixed
        return int(room // self.recheck_point) if room > 0 else -1


class Engine:
    """The right-hand side of the Euclidean flow by ``engine`` on prepared data (module docstring).

    ``evaluate(R, b)`` → ``(loss, grad_b, omega)`` as ``tf.loss``/``tf.gradient``;
    ``separated(R, b)`` → the separated moments from the groups, or None (then
    the caller runs the per-point separated form); ``counts(R, b)`` → the
    truncation counts from the groups when they are exact at (R, b), else None;
    ``stats`` → the counters of ``Trajectory.engine_stats``.
    """

    def __init__(self, bk: Backend, X: Any, labels: Any, targets: np.ndarray, engine: str = "direct"):
        self.bk, self.X, self.labels, self.targets = bk, X, labels, targets
        self.requested = check_engine(engine)
        self.N, self.M = int(X.shape[0]), int(X.shape[1])
        self.Q = int(targets.shape[0])
        self.mode, self.fallback = plan(engine, bk, self.N, self.M)
        self.st = None              # the pattern state (Backend.pattern_pass), or None
        self.cost: CostModel | None = None
        self.last = ""              # path of the last evaluation: "direct" or "moments"
        self._exact_at: tuple | None = None   # (R, b) at which the groups were last exact
        self._since_pass = 0        # evaluations served by the current state
        self._drift = 0             # ... of which after its moments were first updated by moves
        self._credit = 0.0          # auto: ns saved by the current state, minus its pass
        self._spent = 0.0           # predicted ns of the re-checks since the last pass
        self._wait = 0              # auto: per-point evaluations left before the next pass
        self._backoff = _config.ENGINE_AUTO_BACKOFF_MIN
        self._split: SmallGroups | None = None   # auto: the small groups of the hybrid evaluation
        self._probe: Probe | None = None         # auto: the sample that predicts whether a pass pays
        self._prev: tuple | None = None          # (R, b) of the previous evaluation (the motion per step)
        self._hybrid = False        # auto: the next evaluation from the groups is hybrid
        self._count = dict.fromkeys(("direct_evaluations", "moment_evaluations", "hybrid_evaluations",
                                     "hybrid_points", "rebuilds", "failed_rebuilds", "rechecked_points",
                                     "moved_points"), 0)

    # ----------------------------------------------------------- public ---
    @property
    def stats(self) -> dict:
        """``groups`` (non-empty groups of the current state, 0 without one), ``rechecked_points``,
        ``moved_points``, ``rebuilds`` (full passes), ``failed_rebuilds`` (passes that gave up
        beyond the group cap), ``direct_evaluations``, ``moment_evaluations`` (from the groups; of
        which ``hybrid_evaluations`` ran the small groups per point, ``hybrid_points`` points in
        all), ``engine`` (what ran:
        "direct", "moments" or "auto") and ``fallback`` (why a request runs "direct", or None)."""
        out = dict(self._count)
        if self.st is not None:
            out["rechecked_points"] += int(self.st.stats["rechecked_points"])
            out["moved_points"] += int(self.st.stats["moved_points"])
        out["groups"] = 0 if self.st is None else int(self.st.num_groups)
        out["engine"] = self.mode
        out["fallback"] = self.fallback
        return out

    def note_direct(self, n: int) -> None:
        """Count ``n`` evaluations done elsewhere per point (the integrator's compiled loop)."""
        self._count["direct_evaluations"] += int(n)

    def evaluate(self, R: np.ndarray, b: np.ndarray, want_grad: bool = True):
        """``(loss, grad_b, omega)`` at (R, b), divided by N (grad_b, omega None when not ``want_grad``
        and the per-point path ran)."""
        if self.mode != "direct" and self._groups_at(R, b):
            if self._hybrid:
                out = self._split.evaluate(self.bk, self.st, R, b, self.X, self.labels, self.targets)
                self._count["hybrid_evaluations"] += 1
                self._count["hybrid_points"] += int(self._split.rows.shape[0])
            else:
                out = self.bk.pattern_assemble(self.st, R, b, self.targets)
            self._served(R, b)
        else:
            out = self._direct(R, b, want_grad)
        self._prev = (R.copy(), b.copy())
        if _verify is not None:
            _verify(self, R, b, *out)
        return out

    def separated(self, R: np.ndarray, b: np.ndarray):
        """``(loss, counts, S0, S1, S2)`` of the separated form (§6) from the groups, with the
        separation check on the groups' patterns (raises ``SeparationError``); None when the
        per-point path is to run."""
        from truncfast._flow import separated as _separated

        _separated.check_one_layer_per_cluster(R.shape[0], self.Q)
        grouped = self.mode != "direct" and self._groups_at(R, b)
        self._prev = (R.copy(), b.copy())
        if not grouped:
            self._count["direct_evaluations"] += 1
            self.last = "direct"
            self._exact_at = None
            return None
        loss, gb, om = self.bk.pattern_assemble(self.st, R, b, self.targets)
        self._served(R, b)
        counts, S0, S1, S2, bad = separated_from_groups(self.st, R)
        _separated.check_nonempty(counts)
        _separated.raise_violations(bad)
        if _verify is not None:
            _verify(self, R, b, loss, gb, om)
        return loss, counts, S0, S1, S2

    def counts(self, R: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """(L, Q, 3) truncation counts from the groups if they are exact at (R, b), else None."""
        at = self._exact_at
        if self.st is None or at is None or not (np.array_equal(at[0], R) and np.array_equal(at[1], b)):
            return None
        return self.bk.pattern_counts(self.st)

    # ---------------------------------------------------------- helpers ---
    def _direct(self, R, b, want_grad=True):
        self._count["direct_evaluations"] += 1
        self.last = "direct"
        self._exact_at = None
        loss, gb, om, _, _ = euclid_general(self.bk, R, b, self.X, self.labels, self.targets, want_grad)
        return float(loss), gb, om

    def _served(self, R, b) -> None:
        self._count["moment_evaluations"] += 1
        self.last = "moments"
        self._since_pass += 1
        if self.st.stats["moved_points"]:
            self._drift += 1
        self._exact_at = (R.copy(), b.copy())

    def _drop(self) -> None:
        if self.st is not None:
            self._count["rechecked_points"] += int(self.st.stats["rechecked_points"])
            self._count["moved_points"] += int(self.st.stats["moved_points"])
        self.st = None
        self._split = None
        self._exact_at = None

    def _back_off(self) -> None:
        self._wait = self._backoff
        self._backoff = min(2 * self._backoff, _config.ENGINE_AUTO_BACKOFF_MAX)

    def _groups_at(self, R, b) -> bool:
        """Make the groups exact at (R, b) if the policy says so; False: evaluate per point."""
        if self.cost is None:
            self.cost = CostModel(self.N, R.shape[0], self.M, self.bk.name)
        auto = self.mode == "auto"
        st = self.st
        if st is not None:
            # a new pass is due for bounded drift of the moments, or because the re-checks
            # since the last one cost as much as one (ski rental: never more than twice the
            # better of "re-check" and "rebuild" over any stretch of evaluations) ...
            due = self._drift >= _config.ENGINE_REBUILD_EVERY or self._spent >= self.cost.full_pass
            idx = None
            if not due:
                G = int(st.G)
                limit = int(_config.ENGINE_RECHECK_SHARE * self.N)
                if auto:
                    limit = min(limit, self.cost.recheck_cap(G))
                idx = self.bk.pattern_at_risk(st, R, b, limit) if limit >= 0 else None
            if idx is not None:
                predicted = self.cost.moments(idx.size, int(st.num_groups))
                self._hybrid = False
                if auto and self._split is not None:
                    big, small_points = self._split.sizes(st)
                    hybrid = self.cost.hybrid(idx.size, big, small_points, bool(idx.size) or self._split.stale(st))
                    self._hybrid = hybrid < predicted
                    predicted = min(predicted, hybrid)
                if auto and predicted >= self.cost.direct:
                    if self._credit < 0.0:  # the last pass has not paid and re-checks cost more: give up
                        self._drop()
                        self._back_off()
                    return False  # else the state stays a valid proof relative to its references
                if idx.size:
                    before = st.stats["rechecked_points"]
                    self.bk.pattern_recheck(st, idx, R, b, self.X, self.labels)
                    done = st.stats["rechecked_points"] - before  # folded generations included
                    self._spent += self.cost.recheck_fixed + self.cost.recheck_point * done
                self._credit += self.cost.direct - predicted
                return True
            # ... or too many points are at risk.  auto rebuilds only if the last pass paid for itself
            paid = self._credit >= 0.0
            self._drop()
            if auto and not paid:
                self._back_off()
                return False
            self._backoff = _config.ENGINE_AUTO_BACKOFF_MIN
            return self._pass(R, b)
        if self._wait > 0:
            self._wait -= 1
            return False
        return self._pass(R, b)

    def _pass(self, R, b) -> bool:
        cap = None
        if self.mode == "auto":
            cap = self.cost.group_cap()
            if self._probe is None:
                self._probe = Probe(self.X, self.labels)
            if cap < 1 or self._probe.too_many_groups(self.bk, R, b, cap) or self._stale_soon(R, b):
                self._back_off()
                return False
            # the hybrid evaluation can use states with more groups than the pure assembly
            cap = max(cap, int(_config.ENGINE_HYBRID_GROUP_SHARE * self.N))
        st = self.bk.pattern_pass(R, b, self.X, self.labels, self.Q, cap)
        if st is None:  # more groups than the cap (auto) or the memory guard
            self._count["failed_rebuilds"] += 1
            self._back_off()
            return False
        self.st = st
        self._count["rebuilds"] += 1
        self._since_pass = 0
        self._drift = 0
        self._spent = 0.0
        pure = self.cost.moments(0, int(st.G))
        self._hybrid = False
        self._split = None
        if self.mode == "auto":
            self._split = SmallGroups(st, self.cost.small_group())
            big, small_points = self._split.sizes(st)
            hybrid = self.cost.hybrid(0, big, small_points, True)
            self._hybrid = hybrid < pure
            pure = min(pure, hybrid)
        self._credit = self.cost.direct - self.cost.full_pass - pure
        return True

    def _stale_soon(self, R, b) -> bool:
        """Predicted: the groups of a pass now would go stale before they paid for it (``Probe``)."""
        if self._prev is None or self._prev[0].shape != R.shape:
            return False
        c = self.cost
        gain = c.direct - c.moments(0, 1)
        steps = int(np.ceil(c.full_pass / gain)) + 1 if gain > 0 else 10**6
        return self._probe.share_at_risk(R, b, *self._prev, min(steps, 10**6)) > _config.ENGINE_RECHECK_SHARE


def separated_from_groups(st, R: np.ndarray):
    """``(counts (Q,), S0 (Q, M), S1, S2 (Q, M, M), violations (Q, L))`` of the separated form from the groups.

    Cluster j's raw constrained sums at its own layer j (docs/theory.md §6) with
    h = the group's sector code at layer j, v = R_j x:
    ``S0 = Σ n h``, ``S1 = Σ h (n R_j μ)ᵀ``, ``S2 = Σ diag(h) R_j (C + n μ μᵀ) R_jᵀ``;
    ``violations[j, ℓ]`` = points of cluster j whose code at layer ℓ ≠ j is not all
    ones — exact, since every point's group is its pattern.  Groups are added in
    id order (deterministic).
    """
    M = st.M
    Q, L = st.Q, st.L
    live = np.flatnonzero(st.n)
    lab = st.label[live]
    n = st.n[live].astype(np.float64)
    mu = st.mean[live]
    keys = st.patterns[live]
    own = keys[np.arange(live.size), lab]
    h = ((own[:, None] >> np.arange(M, dtype=np.uint64)) & np.uint64(1)).astype(np.float64)
    Rj = R[lab]
    v = np.einsum("gik,gk->gi", Rj, mu)
    second = st.scatter[live] + n[:, None, None] * mu[:, :, None] * mu[:, None, :]
    vv = Rj @ second @ np.swapaxes(Rj, 1, 2)
    counts = np.zeros(Q)
    S0, S1, S2 = np.zeros((Q, M)), np.zeros((Q, M, M)), np.zeros((Q, M, M))
    np.add.at(counts, lab, n)
    np.add.at(S0, lab, n[:, None] * h)
    np.add.at(S1, lab, h[:, :, None] * (n[:, None] * v)[:, None, :])
    np.add.at(S2, lab, h[:, :, None] * vv)
    full = np.uint64((1 << M) - 1) if M < 64 else np.uint64(2**64 - 1)
    trunc = keys != full
    trunc[np.arange(live.size), lab] = False
    bad = np.zeros((Q, L), np.int64)
    np.add.at(bad, lab, trunc.astype(np.int64) * st.n[live][:, None])
    return counts, S0, S1, S2, bad


def merge_stats(before: dict, now: dict) -> dict:
    """Engine statistics of a resumed run: counters of the run before the checkpoint plus this one's."""
    out = dict(now)
    for key, val in before.items():
        if key in out and key not in ("groups", "engine", "fallback") and isinstance(val, int):
            out[key] = out[key] + val
    return out
