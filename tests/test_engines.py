"""Engines of the right-hand side (docs/theory.md §11, ``truncfast._flow.engines``): exactness at every evaluation.

Oracles: ``tf.sector_codes`` (every point's group, bit for bit, after every
evaluation from the groups), the per-point kernel of the same backend at the
same state (loss and gradient), and whole ``engine="direct"`` trajectories.

**Tolerance measure.**  Each per-point term is computed from operands much
larger than itself once the flow is near an equilibrium: the error
e = z − ỹ of a point that sits near its target is formed from |z|, |ỹ| ≈ 10
(paper-2d), so every correct engine rounds it at ~u·(|z| + |ỹ|), and the
gradient — a sum of such terms — carries that absolute error whatever its own
size.  (Measured at the end of 600 steps of paper-2d: grad_b ≈ 4.5e-7, and
the C/Numba per-point kernel is 2.4e-14 from the NumPy reference backend,
5e-8 *relative*; the moments engine is within 1e-16 of it.)  Relative
comparisons are then noise, so the tests require

    ‖X_engine − X_direct‖ ≤ 1e-10 · ‖S_X‖

for X ∈ {loss, grad_b, omega}, with S_X the same sum over points with each
term replaced by the magnitudes of its operands (:func:`term_scales`): with
ê = |e| + |z| + |ỹ| (the operands of e, which bound |r_ℓ| too, R orthogonal),
S_C = (1/2N) Σ |e| ê, S_b[ℓ] = (1/N) Σ (1 − h_ℓ) ê, S_Ω[ℓ]_ik = (1/N) Σ ê (|v_ℓ,k| + |t_ℓ,k|).
Rounding of either engine is a few units u of S_X, so 1e-10 leaves six orders
of magnitude for accumulation and no room for a wrong group.  In addition,
wherever the value is not cancellation-dominated (‖X_direct‖ ≥ 1e-4 ‖S_X‖,
so rounding is ≤ ~1e-12 of it) the plain relative error must be ≤ 1e-10 — the
issue's measure, where it is meaningful.
"""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from truncfast import _config
from truncfast._flow import engines
from truncfast._flow.gradient import euclid_general
from truncfast._integrate import run as _run
from truncfast.data import make_problem as data_problem
from conftest import assert_trajectories_bitwise, make_problem, separated_problem

TOL = 1e-10


def term_scales(R, b, X, labels, T):
    """(S_C, S_b (L, M), S_Ω (L, M, M)): the per-point sums with each term replaced by
    the magnitudes of its operands (module docstring)."""
    N, L = X.shape[0], R.shape[0]
    z, vs, hs, ts = X, [], [], []
    for l in range(L):
        v = z @ R[l].T
        h = v + b[l] > 0
        t = np.where(h, v, -b[l])
        z = t @ R[l]
        vs.append(v), hs.append(h), ts.append(t)
    y = T[labels]
    ne = np.linalg.norm(z - y, axis=1)
    ehat = ne + np.linalg.norm(z, axis=1) + np.linalg.norm(y, axis=1)
    s_c = float((ne * ehat).sum()) / (2 * N)
    s_b = np.array([((~hs[l]) * ehat[:, None]).sum(axis=0) for l in range(L)])
    s_o = np.array([np.broadcast_to(ehat @ (np.abs(vs[l]) + np.abs(ts[l])), R.shape[1:]) for l in range(L)])
    return s_c, s_b / N, s_o / N


class Checker:
    """The verify hook: membership and agreement with the per-point kernel after every evaluation."""

    def __init__(self, X, labels, T):
        self.X, self.labels, self.T = X, labels, T
        self.worst = 0.0          # largest error in units of the term scale
        self.worst_rel = 0.0      # largest plain relative error where that is meaningful
        self.by_path = {"direct": 0, "moments": 0}
        self.longest_drift = 0    # evaluations served by a state after its first move (bounded by the interval)

    def __call__(self, eng, R, b, loss, gb, om):
        self.by_path[eng.last] += 1
        if eng.last == "moments":
            st = eng.st
            codes = tf.sector_codes(R, b, self.X)
            bad = np.flatnonzero((st.keys[st.group_of] != codes).any(axis=1))
            assert bad.size == 0, f"{bad.size} points in the wrong group, e.g. {bad[:5]}"
            np.testing.assert_array_equal(st.labs[st.group_of], self.labels)
            np.testing.assert_array_equal(np.bincount(st.group_of, minlength=st.G), st.n)
            self.longest_drift = max(self.longest_drift, eng._drift)
        l0, gb0, om0, _, _ = euclid_general(eng.bk, R, b, self.X, self.labels, self.T, True)
        if gb is None:
            return
        scales = term_scales(R, b, self.X, self.labels, self.T)
        for got, want, s in ((loss, l0, scales[0]), (gb, gb0, scales[1]), (om, om0, scales[2])):
            diff = float(np.linalg.norm(np.ravel(got) - np.ravel(want)))
            ref = float(np.linalg.norm(np.ravel(s)))
            self.worst = max(self.worst, diff / ref if ref else diff)
            size = float(np.linalg.norm(np.ravel(want)))
            if size > 0 and size >= 1e-4 * ref:
                self.worst_rel = max(self.worst_rel, diff / size)

    def assert_ok(self, *, moments_at_least=1):
        assert self.worst <= TOL, f"error {self.worst:.3g} of the term scale"
        assert self.worst_rel <= TOL, f"relative error {self.worst_rel:.3g}"
        assert self.by_path["moments"] >= moments_at_least, self.by_path


def small_sizes(monkeypatch):
    """Let auto use groups at test sizes (a few thousand points): no compiled step loop, no size
    floor, no fixed costs."""
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", -1)
    monkeypatch.setattr(_config, "ENGINE_AUTO_MIN_N", 0)
    monkeypatch.setattr(_config, "ENGINE_COST_FIXED", 0.0)
    monkeypatch.setattr(_config, "ENGINE_COST_RECHECK", _config.ENGINE_COST_RECHECK[:2] + (0.0,))


@pytest.fixture
def verify(monkeypatch):
    """Install a Checker for the data given; every engine evaluation of the test is checked."""
    small_sizes(monkeypatch)

    def install(X, labels, T):
        chk = Checker(X, labels, T)
        monkeypatch.setattr(engines, "_verify", chk)
        return chk

    return install


def _paper(n=3000, seed=0):
    p = data_problem("paper-2d", n=n, seed=seed)
    return p.R0, p.b0, p.X, p.labels, p.targets


def _r3(n=3000, seed=0):
    p = data_problem("clusters", n=n, dim=3, clusters=3, seed=seed)
    return p.R0, p.b0, p.X, p.labels, p.targets


def _duplicated(rng, n=1000, copies=3):
    R, b, X, labels, T = _r3(n)
    order = rng.permutation(np.repeat(np.arange(n), copies))
    return R, b, X[order].copy(), labels[order].copy(), T


# -------------------------------------------- exact at every evaluation ---

@pytest.mark.parametrize("engine", ["moments", "auto"])
@pytest.mark.parametrize("case,steps", [("paper-2d", 600), ("r3", 400)])
def test_every_evaluation_exact_on_clusters(verify, engine, case, steps):
    R, b, X, labels, T = _paper() if case == "paper-2d" else _r3()
    chk = verify(X, labels, T)
    tr = tf.integrate(R, b, X, labels, T, dt=0.05, steps=steps, engine=engine, record_every=50)
    chk.assert_ok(moments_at_least=steps // 2)
    st = tr.engine_stats
    assert st["moment_evaluations"] + st["direct_evaluations"] == steps + 1
    assert st["rechecked_points"] > 0 and st["rebuilds"] >= 1 and 0 < st["groups"] < 20


@pytest.mark.parametrize("kind", ["random", "boundary"])
def test_every_evaluation_exact_on_random_and_boundary_data(verify, rng, kind):
    p = make_problem(rng, N=1500, M=3, L=3, Q=3, kind=kind)
    chk = verify(p.X, p.labels, p.targets)
    tr = tf.integrate(p.R, p.b, p.X, p.labels, p.targets, dt=0.02, steps=150, engine="moments", record_every=10)
    chk.assert_ok(moments_at_least=151)
    if kind == "boundary":  # a state held fixed: the exact zeros stay at risk at every evaluation
        # (integrate refuses to freeze both parts since issue 18, and a FlowEvaluator answers a
        # repeated state from its cache, so the integrators' Evaluator is called in place)
        from truncfast._flow.evaluator import Evaluator
        from truncfast._flow.problem import euclid_args

        chk = verify(p.X, p.labels, p.targets)
        q = euclid_args(p.R, p.b, p.X, p.labels, p.targets, "numba")
        ev = Evaluator(q.bk, q.X, q.labels, q.targets, engine="moments")
        for _ in range(21):
            ev.rhs(q.R, q.b)
        chk.assert_ok(moments_at_least=21)
        st = ev.engine_stats  # every evaluation re-checks the zeros (or rebuilds: they are > 5 % here)
        assert st["moved_points"] == 0 and (st["rebuilds"] == 21 or st["rechecked_points"] >= 20), st


def test_every_evaluation_exact_with_duplicated_points(verify, rng):
    R, b, X, labels, T = _duplicated(rng)
    chk = verify(X, labels, T)
    tf.integrate(R, b, X, labels, T, dt=0.05, steps=300, engine="moments", method="cayley")
    chk.assert_ok(moments_at_least=301)


@pytest.mark.slow
def test_ten_thousand_steps_exact(verify):
    R, b, X, labels, T = _r3(n=2000, seed=3)
    chk = verify(X, labels, T)
    tr = tf.integrate(R, b, X, labels, T, dt=0.05, steps=10_000, engine="moments", record_every=500)
    chk.assert_ok(moments_at_least=10_001)
    assert tr.engine_stats["rebuilds"] >= 2


def test_rebuild_interval_is_applied(verify, monkeypatch):
    p = data_problem("clusters", n=3000, dim=2, clusters=3, spread=0.3, seed=0)
    for every in (5, 25):
        monkeypatch.setattr(_config, "ENGINE_REBUILD_EVERY", every)
        chk = verify(p.X, p.labels, p.targets)
        tr = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=300, engine="moments")
        chk.assert_ok(moments_at_least=301)
        # moments updated by moves serve at most `every` evaluations before a rebuild from the data
        assert tr.engine_stats["moved_points"] > 0 and 0 < chk.longest_drift <= every


# ------------------------------------------------ whole trajectories ---

def _close(a, b, tol=1e-9):
    assert np.abs(a.R - b.R).max() <= tol
    assert np.abs(a.b - b.b).max() <= tol * max(1.0, np.abs(b.b).max())
    assert np.abs(a.Rs - b.Rs).max() <= tol and np.abs(a.bs - b.bs).max() <= tol * max(1.0, np.abs(b.bs).max())
    assert np.abs(a.loss - b.loss).max() <= tol * b.loss.max()
    np.testing.assert_array_equal(a.counts, b.counts)


@pytest.mark.parametrize("case", ["paper-2d", "r3"])
@pytest.mark.parametrize("method", ["lie-euler", "cayley"])
def test_trajectories_of_2000_steps_agree(monkeypatch, case, method):
    small_sizes(monkeypatch)
    R, b, X, labels, T = _paper(4000) if case == "paper-2d" else _r3(3000)
    kw = dict(dt=0.05, steps=2000, method=method, record_every=100)
    direct = tf.integrate(R, b, X, labels, T, engine="direct", **kw)
    for engine in ("moments", "auto"):
        tr = tf.integrate(R, b, X, labels, T, engine=engine, **kw)
        _close(tr, direct)
        assert tr.settings["engine"] == engine
        assert tr.engine_stats["moment_evaluations"] > 1500, tr.engine_stats
    assert direct.engine_stats["moment_evaluations"] == 0 and direct.settings["engine"] == "direct"


def test_separated_form_and_exp_euler(verify, rng):
    p = separated_problem(rng, M=4, Q=3, n_per=400)
    kw = dict(dt=0.01, steps=60, record_every=10)
    chk = verify(p.X, p.labels, p.targets)
    for method, form in (("exp-euler", "separated"), ("lie-euler", "separated")):
        direct = tf.integrate(*p.euclid, method=method, form=form, engine="direct", **kw)
        tr = tf.integrate(*p.euclid, method=method, form=form, engine="moments", **kw)
        _close(tr, direct)
        assert tr.engine_stats["moment_evaluations"] == 61
    chk.assert_ok()


def test_separation_error_from_the_groups(rng):
    p = separated_problem(rng, M=3, Q=3, n_per=50)
    b = p.b.copy()
    b[1] = -p.R[1] @ p.X[p.labels == 0].mean(axis=0)  # layer 1's apex on cluster 0: truncates part of it
    errs = []
    for engine in ("direct", "moments"):
        with pytest.raises(tf.SeparationError) as info:
            tf.integrate(p.R, b, p.X, p.labels, p.targets, dt=0.01, steps=3, method="exp-euler", engine=engine)
        errs.append(sorted(info.value.violations))
    assert errs[0] == errs[1] and errs[0]


# ---------------------------------------- runs: resume, Ctrl-C, divergence ---

def test_resume_rebuilds_and_agrees(monkeypatch, tmp_path):
    R, b, X, labels, T = _paper(3000)
    kw = dict(dt=0.05, steps=400, record_every=20, engine="moments")
    full = tf.integrate(R, b, X, labels, T, **kw)
    ck = tmp_path / "ck.npz"

    def stop(k):
        if k >= 150:
            raise KeyboardInterrupt

    monkeypatch.setattr(_run, "_after_boundary", stop)
    with pytest.raises(KeyboardInterrupt) as info:
        tf.integrate(R, b, X, labels, T, checkpoint=ck, checkpoint_every=50, **kw)
    part = info.value.trajectory
    assert part.engine_stats["moment_evaluations"] >= 150
    monkeypatch.setattr(_run, "_after_boundary", None)
    done = tf.resume(ck, X, labels, T)
    assert done.complete and done.settings["engine"] == "moments"
    _close(done, full)
    saved = tf.Trajectory.load(ck).engine_stats
    assert saved["rebuilds"] > part.engine_stats["rebuilds"]  # a resumed run rebuilds its groups
    assert saved["moment_evaluations"] >= full.engine_stats["moment_evaluations"]


def test_divergence_is_detected(rng):
    """As tests/test_integrate.py: an absurd step overflows the biases of a fully truncated cluster."""
    X = 0.1 * rng.standard_normal((2000, 2)) - 5.0
    R, b, T, labels = np.eye(2)[None], np.zeros((1, 2)), np.array([[1.0, 2.0]]), np.zeros(2000, np.int64)
    with pytest.raises(tf.DivergenceError) as info:
        tf.integrate(R, b, X, labels, T, dt=1e300, steps=10, train_weights=False, engine="moments")
    assert info.value.step == 1 and info.value.trajectory.engine_stats["moment_evaluations"] >= 1


def test_same_bits_for_any_thread_count(monkeypatch):
    small_sizes(monkeypatch)
    R, b, X, labels, T = _r3(3 * _config.CHUNK_SIZE + 100)
    old = tf.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            tf.set_num_threads(n)
            runs.append(tf.integrate(R, b, X, labels, T, dt=0.05, steps=150, engine="auto", record_every=10))
    finally:
        tf.set_num_threads(old)
    for other in runs[1:]:
        assert_trajectories_bitwise(runs[0], other)
        assert other.engine_stats == runs[0].engine_stats
    assert runs[0].engine_stats["moment_evaluations"] > 100


# ---------------------------------------------------------- auto policy ---

def test_auto_runs_direct_on_random_data_without_failed_passes(monkeypatch):
    monkeypatch.setattr(_config, "ENGINE_AUTO_MIN_N", 0)
    rng = np.random.default_rng(5)
    p = make_problem(rng, N=20000, M=8, L=4, Q=4)
    tr = tf.integrate(*p.euclid, dt=0.01, steps=30, engine="auto", record_every=30)
    st = tr.engine_stats
    assert st["direct_evaluations"] == 31 and st["rebuilds"] == 0 and st["failed_rebuilds"] == 0, st


def test_auto_backs_off_after_passes_that_do_not_pay(monkeypatch):
    """A cap of 1 group makes every pass fail: attempts thin out (back-off), never once per step."""
    small_sizes(monkeypatch)
    monkeypatch.setattr(engines.CostModel, "group_cap", lambda self: 1)
    monkeypatch.setattr(_config, "ENGINE_HYBRID_GROUP_SHARE", 0.0)
    monkeypatch.setattr(engines.Probe, "too_many_groups", lambda self, bk, R, b, cap: False)
    monkeypatch.setattr(engines.Engine, "_stale_soon", lambda self, R, b: False)
    R, b, X, labels, T = _r3(3000)
    tr = tf.integrate(R, b, X, labels, T, dt=0.05, steps=200, engine="auto")
    st = tr.engine_stats
    assert st["direct_evaluations"] == 201 and 3 <= st["failed_rebuilds"] <= 8, st


def test_cost_model_orders_the_cases():
    c = engines.CostModel(10**6, 2, 2)
    assert c.moments(0, 2) < 1e-2 * c.direct                  # paper-2d after collapse
    assert c.group_cap() > 1000 and c.recheck_cap(2) > 10**4
    c8 = engines.CostModel(10**6, 8, 8)
    assert c8.moments(0, 10**6) > c8.direct                    # every point its own group
    assert c8.full_pass < 3 * c8.direct  # a pass costs a few per-point evaluations


def test_plan_and_fallbacks(monkeypatch):
    from truncfast._backends.registry import get

    numba, numpy_ = get("numba"), get("numpy")
    assert engines.plan("moments", numba, 10, 3) == ("moments", None)
    assert engines.plan("auto", numba, 10, 3)[0] == "direct"  # N < ENGINE_AUTO_MIN_N
    assert engines.plan("auto", numba, 10**6, 3) == ("auto", None)
    assert engines.plan("moments", numpy_, 10**6, 3)[1] == "backend 'numpy' has no pattern kernels"
    assert "uint64" in engines.plan("moments", numba, 10**6, 65)[1]
    with pytest.raises(tf.InputError, match="engine"):
        engines.plan("fast", numba, 10, 3)


def test_fallback_runs_direct_and_says_why(rng):
    p = make_problem(rng, N=200, M=3, L=2, Q=2)
    tr = tf.integrate(*p.euclid, dt=0.05, steps=5, engine="moments", backend="numpy")
    assert tr.engine_stats["engine"] == "direct" and "numpy" in tr.engine_stats["fallback"]
    ref = tf.integrate(*p.euclid, dt=0.05, steps=5, engine="direct", backend="numpy")
    assert_trajectories_bitwise(tr, ref)
    wide = make_problem(rng, N=50, M=65, L=1, Q=2)
    tr = tf.integrate(*wide.euclid, dt=0.01, steps=2, engine="moments", backend="numba")
    assert tr.engine_stats["engine"] == "direct" and (tr.counts == -1).all()


def test_small_runs_keep_the_compiled_loop_and_their_bits(rng):
    p = make_problem(rng, N=300, M=3, L=2, Q=2)
    auto = tf.integrate(*p.euclid, dt=0.05, steps=40, backend="numba")
    assert auto.settings["engine"] == "auto" and auto.settings["compiled_loop"]
    assert auto.engine_stats["direct_evaluations"] == 41
    assert_trajectories_bitwise(auto, tf.integrate(*p.euclid, dt=0.05, steps=40, backend="numba", engine="direct"))
    forced = tf.integrate(*p.euclid, dt=0.05, steps=40, backend="numba", engine="moments")
    assert not forced.settings["compiled_loop"] and forced.engine_stats["moment_evaluations"] == 41


@pytest.mark.parametrize("bad", ["fast", None, 3, "Moments"])
def test_bad_engine_is_named(rng, bad):
    p = make_problem(rng, N=20, M=2, L=2, Q=2)
    with pytest.raises(tf.InputError, match="^engine: "):
        tf.integrate(*p.euclid, dt=0.1, steps=1, engine=bad)


def test_edge_cases_single_point_and_one_distinct_point(verify):
    for X in (np.array([[0.3, -0.2]]), np.tile([[1.0, 2.0]], (50, 1))):
        labels = np.zeros(X.shape[0], np.int64)
        R, b, T = np.array([np.eye(2), -np.eye(2)]), np.array([[0.0, 0.0], [3.0, 3.0]]), np.array([[2.0, 2.0]])
        chk = verify(X, labels, T)
        tr = tf.integrate(R, b, X, labels, T, dt=0.05, steps=30, engine="moments")
        chk.assert_ok(moments_at_least=31)
        assert tr.engine_stats["groups"] == 1


def test_hybrid_evaluations_are_exact(verify, monkeypatch, rng):
    """Groups below the cost threshold per point, the others from their moments, in one evaluation."""
    # a group costs 3 points (groups of < 3 points run per point), splitting is free
    monkeypatch.setattr(_config, "ENGINE_COST_DIRECT", {"numba": (0.0, 40.0), "c": (0.0, 40.0)})
    monkeypatch.setattr(_config, "ENGINE_COST_GROUP", (0.0, 120.0))
    monkeypatch.setattr(_config, "ENGINE_COST_SPLIT", (0.0, 0.0, 0.0))
    R, b, X, labels, T = _r3(3000)
    X = np.concatenate([X, 4.0 * rng.standard_normal((300, 3))])  # scattered points: many small groups
    labels = np.concatenate([labels, rng.integers(0, 3, 300)])
    chk = verify(X, labels, T)
    tr = tf.integrate(R, b, X, labels, T, dt=0.05, steps=300, engine="auto", record_every=50)
    chk.assert_ok(moments_at_least=30)
    st = tr.engine_stats
    assert st["hybrid_evaluations"] > 30 and 0 < st["hybrid_points"] < st["hybrid_evaluations"] * X.shape[0], st
    _close(tr, tf.integrate(R, b, X, labels, T, dt=0.05, steps=300, engine="direct", record_every=50))


def test_run_config_engine_key(tmp_path):
    """`truncfast run` passes [integrate] engine through; summary.json records what ran; bad values are named."""
    import json

    from truncfast._app import config_file as _config_file
    from truncfast._app import runs as _runs

    raw = {"data": {"source": "paper-2d", "n": 400, "seed": 1},
           "integrate": {"dt": 0.05, "steps": 30, "record_every": 10, "engine": "moments"},
           "output": {"figures": False, "animation": False}}
    cfg = _config_file.resolve(raw)
    assert _config_file.resolve({})["integrate"]["engine"] == "auto"  # the demo's and run's default
    summ = _runs.execute(cfg, str(tmp_path / "run"), quiet=True, log=lambda m: None)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summ["engine"] == saved["engine"] == "moments"
    assert saved["engine_stats"]["moment_evaluations"] == 31
    assert tf.Trajectory.load(tmp_path / "run" / "trajectory.npz").engine_stats == saved["engine_stats"]
    with pytest.raises(_config_file.ConfigError) as info:
        _config_file.resolve({"integrate": {"engine": "fast"}})
    assert info.value.key == "integrate.engine"
