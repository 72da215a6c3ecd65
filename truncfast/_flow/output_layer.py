"""Output-layer flows of the standard loss (docs/theory.md §8, paper sections 8 and 9).

Two situations in which the gradient flow of the standard loss C_std can be
controlled explicitly, written with truncfast's row convention (one cluster, or
one point, per row):

* **Collapsed clusters** [8.1–8.39].  τ^(L) maps cluster j to one point x_j (row j
  of ``Xc``, shape (Q, M)); W = W^(L+1) is (P, M), b^(L+1) = 0, y_j is row j of
  ``Y`` (Q, P), π_j > 0 the cluster weights.  In the paper's column form
  X = Xcᵀ (M × Q), Y_paper = Yᵀ (P × Q), Π = diag(π), E = W X − Y_paper:

      C = ½ tr(E Π Eᵀ),     ∂_s W = −E Π Xᵀ,     ∂_s X = −Wᵀ E Π          [8.6–8.7]

  ``K = WᵀW − X Xᵀ`` (= WᵀW − Xcᵀ Xc) is conserved [8.21].  If P = Q = M and
  K ≥ λ > 0 (or K ≤ −λ < 0), ``C(s) ≤ C(0) e^{−2 λ π_min s}`` [8.27].

* **Clusters in the positive sectors** [9.1–9.12].  τ^(L) is the identity on the
  data, only Ŵ = [W b] (P × (M+1)) moves.  With x̂ = (x, 1),
  A = (1/N) Σ x̂ x̂ᵀ, B = (1/N) Σ y_{j(x)} x̂ᵀ:

      ∂_s Ŵ = −(Ŵ A − B),     Ŵ(s) = Ŵ* + (Ŵ(0) − Ŵ*) e^{−s A},     Ŵ* = B A⁺   [9.7–9.11]

  (A⁺ the pseudo-inverse; the part of Ŵ(0) in ker A stays put, because every
  row of B lies in the range of A).

The integrators here are small fixed-step schemes (explicit Euler, classical
RK4) on flat Euclidean variables; they exist to check the closed forms and the
conservation law, not for speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import operator

from truncfast import _config
from truncfast._errors import DivergenceError, InputError
from truncfast._validate import as_float_array, as_labels, check_finite, refuse_nonfinite

__all__ = [
    "OutputFlow",
    "collapsed_output_loss",
    "collapsed_output_rhs",
    "collapsed_output_flow",
    "conserved_gram",
    "spectral_gap_bound",
    "positive_sector_output_solution",
    "positive_sector_output_flow",
]

_METHODS = ("euler", "rk4")


@dataclass(frozen=True)
class OutputFlow:
    """Recorded history of an output-layer flow.

    ``times`` (K,); ``W`` (K, P, M); ``Xc`` (K, Q, M) for the collapsed flow
    (collapse points, one per row) or ``b`` (K, P) for the positive-sector flow
    (output bias); ``loss`` (K,); ``settings`` how it was produced.
    """

    times: np.ndarray
    W: np.ndarray
    loss: np.ndarray
    Xc: np.ndarray | None = None
    b: np.ndarray | None = None
    settings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- validation

def _finite(name: str, a: Any, ndim: int, shape: tuple | None = None) -> np.ndarray:
    arr = as_float_array(name, a, ndim, shape)
    check_finite(name, arr)
    return arr


def _check_collapsed(W, Xc, Y, pi):
    W = _finite("W", W, 2)
    P, M = W.shape
    if P == 0 or M == 0:
        raise InputError(f"W: must have non-zero shape (P, M), got {W.shape}")
    Xc = _finite("Xc", Xc, 2, (None, M))
    Q = Xc.shape[0]
    if Q == 0:
        raise InputError("Xc: has no rows (Q = 0 collapse points)")
    Y = _finite("Y", Y, 2, (Q, P))
    pi = _finite("pi", pi, 1, (Q,))
    if np.any(pi < 0):
        k = int(np.flatnonzero(pi < 0)[0])
        raise InputError(f"pi: weight {float(pi[k])!r} at index {k} is negative; cluster weights must be ≥ 0")
    return W, Xc, Y, pi


def _check_stepping(dt: Any, steps: Any, method: str, record_every: Any) -> tuple[float, int, int]:
    # the same rules as integrate's (_integrate.checks): dt a real number, steps an
    # integer (NumPy integers too) — never a bool, a float or a string
    if isinstance(dt, (bool, np.bool_)) or not isinstance(dt, (int, float, np.integer, np.floating)):
        raise InputError(f"dt: must be a finite positive step, got {dt!r} ({type(dt).__name__})")
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise InputError(f"dt: must be a finite positive step, got {dt!r}")
    out = []
    for name, value, low, what in (("steps", steps, 0, "non-negative"), ("record_every", record_every, 1, "positive")):
        try:
            v = None if isinstance(value, (bool, np.bool_)) else operator.index(value)
        except TypeError:
            v = None
        if v is None or v < low:
            raise InputError(f"{name}: must be a {what} integer, got {value!r} ({type(value).__name__})")
        out.append(int(v))
    if method not in _METHODS:
        raise InputError(f"method: unknown method {method!r}; choose one of {', '.join(_METHODS)}")
    return dt, out[0], out[1]


def _check_times(times: Any) -> np.ndarray:
    t = np.asarray(times)
    if t.dtype.kind not in "fiu" or t.ndim != 1:
        raise InputError(f"times: expected a 1-D real array, got shape {t.shape} and dtype {t.dtype}")
    t = t.astype(np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        k = int(np.flatnonzero(~np.isfinite(t) | (t < 0))[0])
        raise InputError(f"times: value {float(t[k])!r} at index {k}; times must be finite and ≥ 0")
    return t


def _step_loop(f: Callable, y0: tuple, dt: float, steps: int, method: str, record_every: int,
               observe: Callable, name: str, scale2: float) -> tuple[np.ndarray, list]:
    """Fixed-step Euler / classical RK4 on a tuple of arrays; records step 0, every
    ``record_every`` steps and the last step.

    Both flows are gradient flows, so their loss never increases: a step that makes
    the state non-finite or the loss exceed ``_config.DIVERGENCE_LOSS_FACTOR`` times
    its start (the rule of :func:`truncfast.integrate`) raises :class:`DivergenceError`
    instead of running on into NaN (``err.step``, ``err.suggested_dt``).
    """
    y = tuple(a.copy() for a in y0)
    first = observe(y)
    times, recs = [0.0], [first]
    # floored like integrate's reference (_integrate.run): a start at an exact equilibrium is
    # not stopped by rounding noise; scale2 is the squared scale of the labels Y
    limit = _config.DIVERGENCE_LOSS_FACTOR * max(first[-1], _config.DIVERGENCE_LOSS_FLOOR * scale2,
                                                 np.finfo(np.float64).tiny)
    for k in range(1, steps + 1):
        with np.errstate(all="ignore"):  # a diverging step is reported below, not as RuntimeWarnings
            if method == "euler":
                d = f(y)
                y = tuple(a + dt * da for a, da in zip(y, d))
            else:
                k1 = f(y)
                k2 = f(tuple(a + 0.5 * dt * d for a, d in zip(y, k1)))
                k3 = f(tuple(a + 0.5 * dt * d for a, d in zip(y, k2)))
                k4 = f(tuple(a + dt * d for a, d in zip(y, k3)))
                y = tuple(a + (dt / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
                          for a, d1, d2, d3, d4 in zip(y, k1, k2, k3, k4))
            rec = observe(y)
        if not (all(np.isfinite(a).all() for a in y) and np.isfinite(rec[-1])) or rec[-1] > limit:
            what = "became non-finite" if not np.isfinite(rec[-1]) or not all(np.isfinite(a).all() for a in y) \
                else f"grew to {rec[-1]:.6g}, more than {_config.DIVERGENCE_LOSS_FACTOR:g} × its start {first[-1]:.6g}"
            err = DivergenceError(
                f"{name}: the loss {what} at step {k} (time {k * dt:g}) with dt = {dt:g} (a gradient flow never "
                f"increases its loss): the step is unstable; use a smaller dt, e.g. dt = {dt / 4:g}")
            err.step, err.loss, err.suggested_dt = k, rec[-1], dt / 4  # type: ignore[attr-defined]
            raise err
        if k % record_every == 0 or k == steps:
            times.append(k * dt)
            recs.append(rec)
    return np.asarray(times), recs


# ----------------------------------------------------------------------------- section 8

def collapsed_output_loss(W: Any, Xc: Any, Y: Any, pi: Any) -> float:
    """``C = ½ tr(E Π Eᵀ) = ½ Σ_j π_j |W x_j − y_j|²`` for collapsed clusters [8.2–8.3]."""
    W, Xc, Y, pi = _check_collapsed(W, Xc, Y, pi)
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        E = Xc @ W.T - Y
        value = float(0.5 * np.sum(pi[:, None] * E * E))
    refuse_nonfinite("collapsed_output_loss", [value], dict(W=W, Xc=Xc, Y=Y, pi=pi))
    return value


def collapsed_output_rhs(W: Any, Xc: Any, Y: Any, pi: Any) -> tuple[np.ndarray, np.ndarray]:
    """Right-hand side of [8.6–8.7] in row form: ``(∂_s W, ∂_s Xc)``.

    ``∂_s W = −E Π Xᵀ = −Σ_j π_j e_j x_jᵀ`` and ``∂_s x_j = −π_j Wᵀ e_j`` with
    ``e_j = W x_j − y_j``.
    """
    W, Xc, Y, pi = _check_collapsed(W, Xc, Y, pi)
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        out = _collapsed_rhs(W, Xc, Y, pi)
    refuse_nonfinite("collapsed_output_rhs", out, dict(W=W, Xc=Xc, Y=Y, pi=pi))
    return out


def _collapsed_rhs(W, Xc, Y, pi):
    PE = pi[:, None] * (Xc @ W.T - Y)  # row j: π_j e_jᵀ, i.e. (E Π)ᵀ
    return -(PE.T @ Xc), -(PE @ W)


def conserved_gram(W: Any, Xc: Any) -> np.ndarray:
    """The integral of motion ``K = WᵀW − X Xᵀ = WᵀW − Xcᵀ Xc`` (M × M) of [8.6–8.7] [8.21].

    Conserved for any cluster weights π: d/ds(WᵀW) = d/ds(XXᵀ) = −WᵀEΠXᵀ − XΠEᵀW.
    """
    W = _finite("W", W, 2)
    Xc = _finite("Xc", Xc, 2, (None, W.shape[1]))
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        K = W.T @ W - Xc.T @ Xc
    refuse_nonfinite("conserved_gram", [K], dict(W=W, Xc=Xc))
    return K


def spectral_gap_bound(W: Any, Xc: Any, Y: Any, pi: Any, times: Any) -> tuple[float, np.ndarray]:
    """Spectral gap λ of K [8.24–8.26] and the loss bound ``C(0) e^{−2 λ π_min s}`` [8.27].

    λ = λ_min(K) if K is positive definite, λ_min(−K) if K is negative definite,
    and 0 (no decay guaranteed; the bound is then C(0), true by monotonicity)
    if K is indefinite.  The theorem needs square matrices, P = Q = M: then
    K ≥ λ gives W Wᵀ ≥ λ and K ≤ −λ gives XᵀX ≥ λ, so
    dC/ds = −|EΠXᵀ|² − |WᵀEΠ|² ≤ −2 λ π_min C [8.31–8.33].

    Returns ``(lam, bound)`` with ``bound`` of the shape of ``times``.
    """
    W, Xc, Y, pi = _check_collapsed(W, Xc, Y, pi)
    P, M = W.shape
    Q = Xc.shape[0]
    if not (P == M == Q):
        raise InputError(
            f"W, Xc: the spectral-gap bound [8.27] needs P = Q = M (square W and X), got P = {P}, Q = {Q}, M = {M}"
        )
    t = _check_times(times)
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        K = W.T @ W - Xc.T @ Xc
        E = Xc @ W.T - Y
        C0 = 0.5 * float(np.sum(pi[:, None] * E * E))
    refuse_nonfinite("spectral_gap_bound", [K, C0], dict(W=W, Xc=Xc, Y=Y, pi=pi))
    ev = np.linalg.eigvalsh(K)
    lam = float(max(ev[0], -ev[-1], 0.0))
    with np.errstate(under="ignore"):  # e^{−large} underflows to the correct 0
        return lam, C0 * np.exp(-2.0 * lam * float(pi.min()) * t)


def collapsed_output_flow(W: Any, Xc: Any, Y: Any, pi: Any, *, dt: float, steps: int,
                          method: str = "rk4", record_every: int = 1) -> OutputFlow:
    """Integrate the collapsed-cluster flow [8.6–8.7] with a fixed step.

    ``∂_s W = −E Π Xᵀ``, ``∂_s X = −Wᵀ E Π``, E = W X − Y (paper's column form;
    here W (P, M), Xc = Xᵀ (Q, M), Y (Q, P), pi (Q,)).  ``method`` is ``"euler"``
    (first order) or ``"rk4"`` (classical Runge–Kutta, fourth order; the
    right-hand side is a polynomial, so both converge at their nominal order and
    K = WᵀW − XXᵀ [8.21] drifts by O(dt^p)).

    Returns an :class:`OutputFlow` with ``times``, ``W``, ``Xc`` and ``loss``
    recorded at step 0, every ``record_every`` steps, and the last step.
    """
    W, Xc, Y, pi = _check_collapsed(W, Xc, Y, pi)
    dt, steps, record_every = _check_stepping(dt, steps, method, record_every)

    def f(y):
        return _collapsed_rhs(y[0], y[1], Y, pi)

    def observe(y):
        E = y[1] @ y[0].T - Y
        return y[0].copy(), y[1].copy(), 0.5 * float(np.sum(pi[:, None] * E * E))

    times, recs = _step_loop(f, (W, Xc), dt, steps, method, record_every, observe, "collapsed_output_flow",
                             float(np.max(np.sum(Y * Y, axis=1))))
    return OutputFlow(
        times=times,
        W=np.stack([r[0] for r in recs]),
        Xc=np.stack([r[1] for r in recs]),
        loss=np.array([r[2] for r in recs]),
        settings={"flow": "collapsed [8.6-8.7]", "dt": dt, "steps": steps, "method": method,
                  "record_every": record_every},
    )


# ----------------------------------------------------------------------------- section 9

def _check_positive(W, b_out, X, labels, Y):
    W = _finite("W", W, 2)
    P, M = W.shape
    if P == 0 or M == 0:
        raise InputError(f"W: must have non-zero shape (P, M), got {W.shape}")
    b_out = _finite("b_out", b_out, 1, (P,))
    X = _finite("X", X, 2, (None, M))
    if X.shape[0] == 0:
        raise InputError("X: has no rows (N = 0)")
    Y = _finite("Y", Y, 2, (None, P))
    if Y.shape[0] == 0:
        raise InputError("Y: has no rows (Q = 0)")
    labels = as_labels(labels, X.shape[0], Y.shape[0], Q_name="Y")
    return W, b_out, X, labels, Y


def _moments(X, labels, Y):
    """A = (1/N) Σ x̂ x̂ᵀ and B = (1/N) Σ y x̂ᵀ with x̂ = (x, 1) [9.4–9.5]."""
    N = X.shape[0]
    Xh = np.hstack([X, np.ones((N, 1))])
    return Xh.T @ Xh / N, Y[labels].T @ Xh / N, Xh


def _loss_hat(What, Xh, labels, Y):
    res = Xh @ What.T - Y[labels]
    return 0.5 * float(np.sum(res * res)) / Xh.shape[0]


def positive_sector_output_solution(W: Any, b_out: Any, X: Any, labels: Any, Y: Any, times: Any,
                                    *, rcond: float = 1e-12) -> OutputFlow:
    """Explicit solution of the output-layer flow for clusters in the positive sectors [9.10–9.12].

    With Ŵ = [W b_out], x̂ = (x, 1), A = (1/N) Σ x̂ x̂ᵀ, B = (1/N) Σ y x̂ᵀ, the flow
    ``∂_s Ŵ = −(Ŵ A − B)`` [9.7] of ``C_std = 1/(2N) Σ |W x + b_out − y|²`` is solved by

        Ŵ(s) = Ŵ* + (Ŵ(0) − Ŵ*) e^{−s A},    Ŵ* = B A⁺,

    computed from the eigendecomposition A = V diag(a) Vᵀ.  Eigenvalues below
    ``rcond · max(a)`` count as ker A: there e^{−sA} = 1 and A⁺ = 0, so that part
    of Ŵ(0) stays put (the paper assumes A invertible; this is the generalisation).

    ``X`` (N, M) are the points as the output layer sees them (τ^(L)(x) = x when every
    cluster lies in the positive sectors [9.1–9.2]); labels (N,), Y (Q, P) the
    reference outputs, W (P, M), b_out (P,).  Returns an :class:`OutputFlow`
    with ``W`` (T, P, M), ``b`` (T, P) and ``loss`` (T,) at ``times``.
    """
    W, b_out, X, labels, Y = _check_positive(W, b_out, X, labels, Y)
    t = _check_times(times)
    with np.errstate(all="ignore"):  # an overflow is refused below, not warned about
        return _positive_solution(W, b_out, X, labels, Y, t, rcond)


def _positive_solution(W, b_out, X, labels, Y, t, rcond) -> OutputFlow:
    A, B, Xh = _moments(X, labels, Y)
    refuse_nonfinite("positive_sector_output_solution", (A, B), dict(X=X, Y=Y))
    a, V = np.linalg.eigh(A)
    rank = a > rcond * max(a[-1], 0.0)
    a = np.where(rank, a, 0.0)
    inv = np.where(rank, 1.0 / np.where(rank, a, 1.0), 0.0)
    W_star = (B @ V) * inv @ V.T  # B A⁺
    D0 = np.hstack([W, b_out[:, None]]) - W_star
    D0V = D0 @ V
    decay = np.exp(-np.outer(t, a))  # (T, M+1); ker A: exp(0) = 1
    What = W_star[None] + np.einsum("pk,tk,mk->tpm", D0V, decay, V)
    M = W.shape[1]
    loss = np.array([_loss_hat(Wh, Xh, labels, Y) for Wh in What])
    refuse_nonfinite("positive_sector_output_solution", (What, loss), dict(W=W, b_out=b_out, X=X, Y=Y))
    return OutputFlow(
        times=t,
        W=What[:, :, :M].copy(),
        b=What[:, :, M].copy(),
        loss=loss,
        settings={"flow": "positive sectors [9.10]", "rank_A": int(rank.sum()), "W_star": W_star},
    )


def positive_sector_output_flow(W: Any, b_out: Any, X: Any, labels: Any, Y: Any, *, dt: float,
                                steps: int, method: str = "rk4", record_every: int = 1) -> OutputFlow:
    """Fixed-step integration of [9.7], for comparison with the explicit solution.

    The right-hand side is evaluated from the residuals, as the gradient of
    C_std with respect to (W, b_out): ``∂_s Ŵ = −(1/N) Σ_n ρ_n x̂_nᵀ``,
    ``ρ_n = W x_n + b_out − y_{j(n)}`` (the same quantity ``tf.standard_gradient``
    returns as ``grad_W_out, grad_b_out``), not from A and B.  Explicit Euler
    gives exactly Ŵ* + (Ŵ(0) − Ŵ*)(I − dt A)^k.
    """
    W, b_out, X, labels, Y = _check_positive(W, b_out, X, labels, Y)
    dt, steps, record_every = _check_stepping(dt, steps, method, record_every)
    N = X.shape[0]
    Xh = np.hstack([X, np.ones((N, 1))])
    Yn = Y[labels]

    def f(y):
        res = Xh @ y[0].T - Yn
        return (-(res.T @ Xh) / N,)

    def observe(y):
        return y[0].copy(), _loss_hat(y[0], Xh, labels, Y)

    times, recs = _step_loop(f, (np.hstack([W, b_out[:, None]]),), dt, steps, method, record_every, observe,
                             "positive_sector_output_flow", float(np.max(np.sum(Y * Y, axis=1))))
    What = np.stack([r[0] for r in recs])
    M = W.shape[1]
    return OutputFlow(
        times=times,
        W=What[:, :, :M].copy(),
        b=What[:, :, M].copy(),
        loss=np.array([r[1] for r in recs]),
        settings={"flow": "positive sectors [9.7]", "dt": dt, "steps": steps, "method": method,
                  "record_every": record_every},
    )
