"""Integrators (docs/theory.md §9): retractions, solvers against oracles, both step loops.

Oracles: scipy.linalg.expm for the matrix exponential; PyTorch autograd driving
gradient descent with the exponential retraction; a plain NumPy loop over
``tf.gradient``; the closed-form bias solution between sector events (§7).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sla

import truncfast as tf
from conftest import (RTOL, assert_rel, assert_trajectories_bitwise, make_problem, random_orthogonal,
                      separated_problem)
from truncfast import _config
from truncfast._kernels import expm as _expm
from truncfast._integrate import checks as _checks

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def antisym(rng, M, scale):
    A = rng.standard_normal((M, M))
    return scale * 0.5 * (A - A.T)


@pytest.fixture
def force_python_loop(monkeypatch):
    """Run integrate through the general (Python) step loop even for small N."""
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", -1)


def run_both(monkeypatch, *args, **kw):
    """integrate through the compiled loop and through the Python loop (numba backend, per-point engine)."""
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", 10**9)
    a = tf.integrate(*args, backend="numba", **kw)
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", -1)
    b = tf.integrate(*args, backend="numba", engine="direct", **kw)
    assert a.settings["compiled_loop"] and not b.settings["compiled_loop"]  # both paths really ran
    return a, b


assert_bitwise = assert_trajectories_bitwise


# ----------------------------------------------------------------- expm ---

@pytest.mark.parametrize("M", [1, 2, 3, 4, 7, 12])
@pytest.mark.parametrize("scale", [0.0, 1e-8, 1e-3, 0.1, 0.7, 2.0, 6.0, 40.0])
def test_expm_matches_scipy_and_is_orthogonal(rng, M, scale):
    """Padé degrees 3..13 with scaling and squaring (and Rodrigues for M = 2) vs scipy."""
    A = antisym(rng, M, scale)
    E = _expm.expm_antisym(A)
    # exp is ‖A‖-conditioned: allow rounding that grows with the norm
    tol = 1e-14 * (1.0 + np.abs(A).sum(axis=0).max())
    assert np.abs(E - sla.expm(A)).max() <= tol
    assert np.abs(E.T @ E - np.eye(M)).max() <= 1e-13
    assert np.linalg.det(E) == pytest.approx(1.0, abs=1e-12)  # exp(so(M)) ⊂ SO(M)


def test_expm_rodrigues_closed_form():
    th = 0.37
    E = _expm.expm_antisym(np.array([[0.0, -th], [th, 0.0]]))
    assert np.array_equal(E, np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]))


@pytest.mark.parametrize("M", [2, 3, 6])
def test_cayley_map(rng, M):
    A = antisym(rng, M, 0.3)
    C = _expm.cayley(A)
    expected = np.linalg.solve(np.eye(M) - A / 2, np.eye(M) + A / 2)
    assert_rel(C, expected, 1e-14, "cayley")
    assert np.abs(C.T @ C - np.eye(M)).max() <= 1e-14


def test_defect_matches_validate(rng):
    R = np.array([random_orthogonal(rng, 4) for _ in range(3)]) * (1 + 1e-9)
    assert _expm.defect(R) == pytest.approx(tf.orthogonality_defect(R).max(), rel=1e-12)


# ------------------------------------------------------- lie-euler oracles ---

def torch_gd_step(p, dt):
    """One step of gradient descent on C_E by autograd, then the exp retraction on O(M)."""
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    R = t(p.R).requires_grad_(True)
    b = t(p.b).requires_grad_(True)
    X, T = t(p.X), t(p.targets)
    lab = torch.tensor(p.labels, dtype=torch.long)
    z = X
    for l in range(R.shape[0]):
        u = z @ R[l].T + b[l]
        z = (torch.relu(u) - b[l]) @ R[l]  # τ_ℓ in the rotated frame; relu'(0) = 0 = H(0)
    C = 0.5 * ((z - T[lab]) ** 2).sum() / X.shape[0]
    gR, gb = torch.autograd.grad(C, (R, b))
    gR, gb = gR.numpy(), gb.numpy()
    Rn = p.R.copy()
    for l in range(len(Rn)):
        G = gR[l] @ p.R[l].T
        omega = 0.5 * (G - G.T)  # P_A(∇_R C Rᵀ): the Riemannian gradient in the Lie algebra
        Rn[l] = sla.expm(-dt * omega) @ p.R[l]
    return Rn, p.b - dt * gb, float(C.detach())


@pytest.mark.parametrize("shape", [(40, 2, 2, 2), (60, 3, 3, 2), (50, 5, 2, 3)])
def test_one_lie_euler_step_is_one_autograd_gd_step(backend, rng, shape):
    N, M, L, Q = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q)
    dt = 0.1
    Rt, bt, Ct = torch_gd_step(p, dt)
    tr = tf.integrate(*p.euclid, dt=dt, steps=1, backend=backend)
    assert_rel(tr.R, Rt, RTOL, "R after one step")
    assert_rel(tr.b, bt, RTOL, "b after one step")
    assert_rel(tr.loss[0], Ct, RTOL, "loss at step 0")
    assert np.array_equal(tr.Rs[0], p.R) and np.array_equal(tr.bs[0], p.b)


def test_lie_euler_steps_match_numpy_loop(backend, rng):
    """Several steps against the definition: tf.gradient + scipy expm + explicit Euler."""
    p = make_problem(rng, N=80, M=3, L=3, Q=2)
    dt, steps = 0.05, 12
    R, b = p.R.copy(), p.b.copy()
    losses = []
    for _ in range(steps):
        losses.append(tf.loss(R, b, p.X, p.labels, p.targets, backend="numpy"))
        gb, om = tf.gradient(R, b, p.X, p.labels, p.targets, backend="numpy")
        R = np.array([sla.expm(-dt * om[l]) @ R[l] for l in range(len(R))])
        b = b - dt * gb
    losses.append(tf.loss(R, b, p.X, p.labels, p.targets, backend="numpy"))
    tr = tf.integrate(*p.euclid, dt=dt, steps=steps, backend=backend)
    assert_rel(tr.R, R, 1e-11, "R")
    assert_rel(tr.b, b, 1e-11, "b")
    assert_rel(tr.loss, losses, 1e-11, "loss")
    assert np.array_equal(tr.steps, np.arange(steps + 1))
    assert np.array_equal(tr.times, np.arange(steps + 1) * dt)


# ------------------------------------------------------ the compiled loop ---

@pytest.mark.parametrize("method", ["lie-euler", "cayley"])
@pytest.mark.parametrize("shape", [(100, 2, 2, 2), (150, 4, 3, 3), (5000, 3, 2, 2)])
def test_compiled_loop_bitwise_equal_to_python_loop(monkeypatch, rng, method, shape):
    """Same chunk-ordered reduction and the same retraction code: the same bits (5000 > one chunk)."""
    N, M, L, Q = shape
    p = make_problem(rng, N=N, M=M, L=L, Q=Q)
    steps = 60 if N < 1000 else 15
    a, b = run_both(monkeypatch, *p.euclid, dt=0.07, steps=steps, record_every=7, method=method)
    assert_bitwise(a, b)


def test_compiled_loop_bitwise_with_reorthonormalisations_and_flags(monkeypatch, rng):
    p = make_problem(rng, N=64, M=3, L=2, Q=2)
    monkeypatch.setattr(_config, "REORTHONORMALIZE_TOL", 1e-17)  # forces frequent polar repairs
    a, b = run_both(monkeypatch, *p.euclid, dt=0.05, steps=40, record_every=5)
    assert a.reorthonormalizations > 5
    assert_bitwise(a, b)
    for flags in ({"train_weights": False}, {"train_biases": False}):
        assert_bitwise(*run_both(monkeypatch, *p.euclid, dt=0.05, steps=20, record_every=3, **flags))


def test_compiled_loop_is_used_for_small_problems(rng):
    p = make_problem(rng, N=100, M=2, L=2, Q=2)
    tr = tf.integrate(*p.euclid, dt=0.01, steps=3, backend="numba")
    assert tr.settings["compiled_loop"] and tr.settings["backend"] == "numba"
    tr = tf.integrate(*p.euclid, dt=0.01, steps=3, backend="numpy")
    assert not tr.settings["compiled_loop"] and tr.settings["backend"] == "numpy"


# ------------------------------------------------------------ behaviour ---

def test_loss_non_increasing_for_small_dt(backend, rng):
    p = make_problem(rng, N=120, M=3, L=3, Q=3)
    tr = tf.integrate(*p.euclid, dt=1e-3, steps=300, record_every=1, backend=backend)
    assert np.all(np.diff(tr.loss) <= 1e-15 * tr.loss[0])
    assert tr.loss[-1] < tr.loss[0]


def test_dissipation_rate(rng):
    """dC/ds = −(|∇_b C|² + |Ω|²_F) (docs/theory.md §5): the first difference quotient matches to O(dt)."""
    p = make_problem(rng, N=200, M=3, L=2, Q=2)
    dt = 1e-6
    tr = tf.integrate(*p.euclid, dt=dt, steps=1)
    rate = (tr.loss[1] - tr.loss[0]) / dt
    assert rate == pytest.approx(-(tr.grad_b_norm[0] ** 2 + tr.omega_norm[0] ** 2), rel=1e-4)


@pytest.mark.parametrize("M", [2, 3])
def test_orthogonality_after_many_steps(rng, M):
    """10⁴ compiled steps: the defect stays ≤ 1e-10 (repairs keep it ≤ REORTHONORMALIZE_TOL)."""
    p = make_problem(rng, N=30, M=M, L=2, Q=2)
    tr = tf.integrate(*p.euclid, dt=0.01, steps=10_000, record_every=1000, backend="numba")
    assert tr.settings["compiled_loop"]
    assert tr.ortho_defect.max() <= 1e-10
    assert _expm.defect(tr.R) <= _config.REORTHONORMALIZE_TOL


def test_orthogonality_after_1e5_steps(rng):
    """The brief's check at full length: ~3 s with the compiled loop."""
    p = make_problem(rng, N=100, M=3, L=2, Q=2)
    tr = tf.integrate(*p.euclid, dt=0.01, steps=100_000, record_every=10_000, backend="numba")
    assert tr.ortho_defect.max() <= 1e-10


def test_reorthonormalisation_is_counted(monkeypatch, rng, force_python_loop):
    p = make_problem(rng, N=40, M=3, L=2, Q=2)
    monkeypatch.setattr(_config, "REORTHONORMALIZE_TOL", 0.0)  # every step repairs
    tr = tf.integrate(*p.euclid, dt=0.05, steps=7)
    assert tr.reorthonormalizations >= 7


def test_cayley_agrees_with_lie_euler_per_step(rng):
    """One step: equal biases, rotations differ by O(dt³) ⊂ O(dt²) (exp vs Cayley)."""
    p = make_problem(rng, N=80, M=4, L=2, Q=2)
    errs = []
    for dt in (0.2, 0.1, 0.05, 0.025):
        le = tf.integrate(*p.euclid, dt=dt, steps=1, method="lie-euler")
        ca = tf.integrate(*p.euclid, dt=dt, steps=1, method="cayley")
        assert np.array_equal(le.b, ca.b)
        errs.append(np.abs(le.R - ca.R).max())
        assert errs[-1] <= 10 * dt**2 * le.omega_norm[0] ** 2
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(ratios > 6.0)  # halving dt divides the gap by ~8 (third order)


@pytest.mark.parametrize("method", ["lie-euler", "cayley"])
@pytest.mark.parametrize("compiled", [True, False])
def test_frozen_parts_stay_bitwise(monkeypatch, rng, method, compiled):
    p = make_problem(rng, N=50, M=3, L=2, Q=2)
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", 10**9 if compiled else -1)
    tr = tf.integrate(*p.euclid, dt=0.1, steps=15, method=method, train_weights=False, record_every=4)
    assert np.array_equal(tr.R, p.R) and all(np.array_equal(r, p.R) for r in tr.Rs)
    assert not np.array_equal(tr.b, p.b)
    tr = tf.integrate(*p.euclid, dt=0.1, steps=15, method=method, train_biases=False, record_every=4)
    assert np.array_equal(tr.b, p.b) and all(np.array_equal(x, p.b) for x in tr.bs)
    assert not np.array_equal(tr.R, p.R)
    with pytest.raises(tf.InputError, match="nothing would move"):  # issue 18: refused, not a no-op
        tf.integrate(*p.euclid, dt=0.1, steps=5, method=method, train_weights=False, train_biases=False)


def test_inputs_are_not_modified(rng):
    p = make_problem(rng, N=30, M=2, L=2, Q=2)
    copies = [np.copy(a) for a in p.euclid]
    for a in p.euclid:
        a.setflags(write=False)
    tf.integrate(*p.euclid, dt=0.1, steps=5)
    for a, c in zip(p.euclid, copies):
        assert np.array_equal(a, c)


# ---------------------------------------------------------- exp-euler ---

def no_event_cluster(rng, N=40, M=3):
    """One cluster (L = Q = 1), a rotated frame, and biases whose path to −ỹ' crosses no point.

    In the frame v = R x, coordinate i of every point avoids the band (−2.5, −1);
    b starts at 1.5 and its target −ỹ'_i = 2.2 is in the same gap, so the set
    of truncated points (v_i ≤ −b_i) never changes: no sector events (docs/theory.md §7).
    """
    R = random_orthogonal(rng, M)
    V = rng.uniform(-4.0, 3.0, size=(N, M))
    V[(V > -2.6) & (V < -0.9)] = 0.5  # keep clear of the band the bias sweeps
    X = V @ R  # rows x = Rᵀ v
    b = np.full((1, M), 1.5)
    yr = np.full(M, -2.2)  # ỹ' = R ỹ  ⇒ ỹ = Rᵀ ỹ'
    targets = (R.T @ yr)[None]
    return R[None], b, X, np.zeros(N, dtype=np.int64), targets, V


def test_exp_euler_is_exact_between_events(rng):
    R, b, X, labels, targets, V = no_event_cluster(rng)
    dt, steps = 0.37, 40
    tr = tf.integrate(R, b, X, labels, targets, dt=dt, steps=steps, method="exp-euler", train_weights=False)
    assert tr.settings["form"] == "separated"
    rate = (V <= -1.5).mean(axis=0)  # π (1 − m0): truncated fraction per direction (N_j = N)
    yr = R[0] @ targets[0]
    for k, s in zip(tr.steps, tr.times):
        exact = -yr + np.exp(-rate * s) * (b[0] + yr)
        assert_rel(tr.bs[k, 0], exact, 1e-13, f"b at step {k}")
    assert np.all(tr.counts == tr.counts[0])  # no sector code changed
    # the event-driven exact solver (another module) agrees
    ref = tf.exact_bias_flow(R, b, X, labels, targets, tr.times)
    assert_rel(tr.bs, ref, 1e-12, "exp-euler vs exact_bias_flow")
    # explicit Euler with the same step is only first order
    le = tf.integrate(R, b, X, labels, targets, dt=dt, steps=steps, train_weights=False)
    assert rel_gap(le.b, tr.b) > 1e-6


def rel_gap(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_exp_euler_with_weights_on_separated_data(rng):
    p = separated_problem(rng, M=3, Q=2, n_per=15)
    ee = tf.integrate(*p.euclid, dt=1e-3, steps=20, method="exp-euler", record_every=5)
    le = tf.integrate(*p.euclid, dt=1e-3, steps=20, record_every=5)
    # same flow, the biases differ only by the O(dt²) per step of the exponential step
    assert rel_gap(ee.b, le.b) < 1e-5
    assert rel_gap(ee.R, le.R) < 1e-5
    assert ee.ortho_defect.max() < 1e-12


def test_exp_euler_needs_one_layer_per_cluster(rng):
    p = make_problem(rng, N=20, M=2, L=3, Q=2)
    with pytest.raises(tf.InputError, match="L == Q"):
        tf.integrate(*p.euclid, dt=0.1, steps=1, method="exp-euler")


# --------------------------------------------------------- validation ---

@pytest.mark.parametrize("kw, arg", [
    ({"dt": 0.0}, "dt"), ({"dt": -1.0}, "dt"), ({"dt": np.nan}, "dt"), ({"dt": np.inf}, "dt"),
    ({"dt": True}, "dt"), ({"dt": "0.1"}, "dt"),
    ({"steps": -1}, "steps"), ({"steps": 2.5}, "steps"), ({"steps": True}, "steps"),
    ({"record_every": 0}, "record_every"), ({"record_every": 1.0}, "record_every"),
    ({"method": "rk4"}, "method"), ({"form": "fast"}, "form"), ({"backend": "gpu"}, "backend"),
    ({"checkpoint_every": 0}, "checkpoint_every"), ({"train_weights": 1}, "train_weights"),
])
def test_bad_arguments_raise_input_error(rng, kw, arg):
    p = make_problem(rng, N=10, M=2, L=1, Q=2)
    args = {"dt": 0.1, "steps": 3, **kw}
    with pytest.raises(tf.InputError, match=arg):
        tf.integrate(*p.euclid, **args)


def test_numpy_integer_steps_accepted(rng):
    p = make_problem(rng, N=10, M=2, L=1, Q=2)
    tr = tf.integrate(*p.euclid, dt=np.float32(0.1), steps=np.int64(3), record_every=np.int32(2))
    assert list(tr.steps) == [0, 2, 3]


@pytest.mark.parametrize("compiled", [True, False])
def test_divergence_keeps_last_good_state(monkeypatch, rng, compiled):
    """An absurd step (dt = 1e300) sends the biases of a fully truncated cluster to ~1e300.

    (A merely unstable dt > 2 makes b + ỹ' flip sign and grow, until the cluster
    is untruncated and the bias flow stops: the ReLU flow is self-limiting, so
    a non-finite loss needs an overflow.)
    """
    monkeypatch.setattr(_config, "COMPILED_LOOP_MAX_N", 10**9 if compiled else -1)
    X = 0.1 * rng.standard_normal((20, 2)) - 5.0
    R, b = np.eye(2)[None], np.zeros((1, 2))
    targets = np.array([[1.0, 2.0]])
    labels = np.zeros(20, dtype=np.int64)
    with pytest.raises(tf.DivergenceError, match="dt < 2") as info:
        tf.integrate(R, b, X, labels, targets, dt=1e300, steps=10, record_every=10, train_weights=False)
    err = info.value
    assert err.step == 1 and not np.isfinite(err.loss) and err.suggested_dt < 2
    tr = err.trajectory
    assert tr.last_step == err.step - 1 and not tr.complete
    assert np.isfinite(tr.b).all() and np.isfinite(tr.loss).all()
    assert np.isfinite(tf.loss(tr.R, tr.b, X, labels, targets))
    assert tr.steps[-1] <= tr.last_step


# ------------------------------------------------------------ properties ---

from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


_ONE_PLANE = np.full((5, 5), 0.5)
_ONE_PLANE[0, 1] = -8.0  # A = 4.25 × (rotation generator in the (0, 1) plane)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (5, 5), elements=st.floats(-8.0, 8.0, allow_subnormal=True)))
@example(_ONE_PLANE)
def test_expm_property_orthogonal_and_inverse(B):
    """exp(A) ∈ SO(M) and exp(A) exp(−A) = I for any antisymmetric A (pymanopt-style invariants).

    Against scipy's expm the tolerance is 1e-13 (1 + ‖A‖₁): scipy (Padé,
    scaling and squaring) is the less accurate side — for the one-plane
    example above it is 7.8e-14 off cos/sin, ours 1.7e-16 (hypothesis found it
    with the earlier 1e-14 bound).
    """
    A = 0.5 * (B - B.T)
    E = _expm.expm_antisym(A)
    assert np.abs(E.T @ E - np.eye(5)).max() <= 1e-12
    assert np.abs(E @ _expm.expm_antisym(-A) - np.eye(5)).max() <= 1e-12
    assert np.abs(E - sla.expm(A)).max() <= 1e-13 * (1.0 + np.abs(A).sum(axis=0).max())


def test_expm_one_plane_rotation_is_cos_sin():
    """exp of θ times a plane generator is the rotation by θ: exact oracle (measured ≤ 8 ulps at θ = 100)."""
    for theta in (1e-9, 0.3, 4.25, -7.9, 100.0):
        A = np.zeros((4, 4))
        A[2, 1], A[1, 2] = theta, -theta
        E = _expm.expm_antisym(A)
        want = np.eye(4)
        want[1, 1] = want[2, 2] = np.cos(theta)
        want[2, 1], want[1, 2] = np.sin(theta), -np.sin(theta)
        assert np.abs(E - want).max() <= 16 * np.finfo(float).eps, theta


# ------------------------------------------------------ convergence order ---

def event_cluster(rng, N=60, M=2):
    """One cluster, R fixed: the biases sweep through the points (sector events, docs/theory.md §7)."""
    R = random_orthogonal(rng, M)
    V = rng.uniform(-1.0, 1.0, size=(N, M))
    X = V @ R
    b = np.full((1, M), 0.2)
    targets = (R.T @ np.full(M, 0.8))[None]  # β* = −0.8: β decreases and truncates points one by one
    return R[None], b, X, np.zeros(N, dtype=np.int64), targets


@pytest.mark.parametrize("method", ["lie-euler", "exp-euler"])
def test_bias_flow_convergence_order(rng, method):
    """Fixed-step error against the event-driven exact solution: first order (diffrax-style slope fit)."""
    args = event_cluster(rng)
    T = 1.0
    exact = tf.exact_bias_flow(*args, [T])[0]
    dts = 2.0 ** -np.arange(4, 10)
    errs = []
    for dt in dts:
        tr = tf.integrate(*args, dt=dt, steps=int(round(T / dt)), method=method, train_weights=False,
                          record_every=10**9)
        errs.append(np.abs(tr.b - exact).max())
    slope = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    assert 0.8 <= slope <= 1.3, (slope, errs)


def test_separated_form_matches_general_form(rng):
    """On cluster-separated data the §6 moment form drives the same iterates as §5, to rounding."""
    p = separated_problem(rng, M=3, Q=3, n_per=10)
    kw = dict(dt=1e-2, steps=10, record_every=5)
    gen = tf.integrate(*p.euclid, **kw)
    sep = tf.integrate(*p.euclid, form="separated", **kw)
    assert sep.settings["form"] == "separated" and not sep.settings["compiled_loop"]
    assert_rel(sep.R, gen.R, 1e-11, "R")
    assert_rel(sep.b, gen.b, 1e-11, "b")
    assert_rel(sep.loss, gen.loss, 1e-11, "loss")


def test_records_that_cannot_fit_are_refused_up_front_and_the_suggestion_fits(monkeypatch):
    """A run whose records exceed half the free memory fails before its first step,
    and the record_every it suggests is accepted by the same check."""
    import re

    import psutil


    fake = type("VM", (), {"available": 2**30})()  # 1 GiB free
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    L, M, Q, steps = 10, 64, 10, 10**6
    with pytest.raises(tf.InputError, match=r"^record_every: ") as info:
        _checks.check_record_memory(steps, 1, L, M, Q)
    k = int(re.search(r"record_every ≥ (\d+)", str(info.value)).group(1))
    _checks.check_record_memory(steps, k, L, M, Q)  # fits
    with pytest.raises(tf.InputError):
        _checks.check_record_memory(steps, k // 2, L, M, Q)
