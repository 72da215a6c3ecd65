"""Reproduce the numbers of docs/paper_differences.md (about 10 s).

    python examples/measure_paper_differences.py

Prints, for the data sets of docs/theory.md §7: the post-collapse weight flow and rates
(§1 of the document), the size of the m2 term of the exact weight flow (§2), and
the partial-collapse scenario with its variants (§3).
"""

from __future__ import annotations

import numpy as np

import truncfast as tf


def two_clusters(n1: int, n2: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.vstack([0.1 * rng.standard_normal((n1, 2)), [10.0, 10.0] + 0.1 * rng.standard_normal((n2, 2))])
    labels = np.repeat([0, 1], [n1, n2])
    R = np.stack([np.eye(2), -np.eye(2)])
    b = np.array([[0.0, 0.0], [10.0, 10.0]])
    targets = np.array([[2.0, 2.0], [8.0, 8.0]])
    return X, labels, R, b, targets


def angle(R):
    return np.degrees(np.arctan2(R[..., 1, 0], R[..., 0, 0]))


def wrap(a):
    return (a + 180.0) % 360.0 - 180.0


def post_collapse() -> None:
    print("== 1. R is not stationary after s0 (60/140 points, pi_1 = 0.3, |y_1|^2 = 8)")
    X, labels, R, b, T = two_clusters(60, 140)
    ev = tf.exact_bias_events(R, b, X, labels, T)
    s0_exact = max(e.event_times[np.flatnonzero(e.counts == 60)[0]] for e in ev[0])
    dt = 0.001
    tr = tf.integrate(R, b, X, labels, T, dt=dt, steps=20000, record_every=10)
    s0 = tr.collapse_times[0]
    k0 = int(np.searchsorted(tr.times, s0))
    pi = 0.3
    worst = 0.0
    for k in range(k0, len(tr.times), 50):
        _, om = tf.gradient(tr.Rs[k], tr.bs[k], X, labels, T)
        yp = tr.Rs[k, 0] @ T[0]
        pred = 0.5 * pi * (np.outer(tr.bs[k, 0], yp) - np.outer(yp, tr.bs[k, 0]))
        worst = max(worst, np.abs(om[0] - pred).max() / (pi * np.linalg.norm(tr.bs[k, 0]) * np.linalg.norm(yp)))
    _, om0 = tf.gradient(tr.Rs[k0], tr.bs[k0], X, labels, T)
    print(f"  s0 = {s0:.3f} (dt = {dt}); exact fixed-R s0 = {s0_exact:.4f}")
    print(f"  |Omega_1| at s0 = {np.linalg.norm(om0[0]):.4g}; max rel. deviation from (pi/2)(b y'^T - y' b^T) after s0: {worst:.2g}")
    yp = np.einsum("kij,j->ki", tr.Rs[:, 0], T[0])
    e = tr.bs[:, 0] + yp
    u = yp / np.linalg.norm(yp, axis=1)[:, None]
    epar = np.sum(e * u, axis=1)
    eperp = np.abs(e[:, 0] * u[:, 1] - e[:, 1] * u[:, 0])
    for a, c in [(2, 4), (4, 8), (8, 12), (12, 16)]:
        sel = (tr.times > a) & (tr.times < c) & (eperp > 1e-13)
        rpar = -np.polyfit(tr.times[sel], np.log(np.abs(epar[sel])), 1)[0]
        rperp = -np.polyfit(tr.times[sel], np.log(eperp[sel]), 1)[0]
        pred = np.mean(pi * (1 + 4 - np.sqrt(8) * epar[sel] / 2))
        print(f"  s in [{a},{c}]: rate e_par {rpar:.5f} (pi = {pi}), e_perp {rperp:.3f} (predicted {pred:.3f}, limit 1.5)")
    ang = angle(tr.Rs[:, 0])
    print(f"  R_1 angle at s0 {ang[k0]:+.3f} deg, at s = {tr.times[-1]:.0f}: {ang[-1]:+.3f} deg")
    t2 = wrap(angle(tr.Rs[:, 1]) - 180.0)
    print("  R_2 turn at s = 2, 4: " + ", ".join(f"{t2[int(round(s / (10 * dt)))]:+.1f}" for s in (2, 4)) + " deg")


def second_moments() -> None:
    print("== 2. the m2 term of the exact weight flow")
    X, labels, R, b, T = two_clusters(60, 140)
    mom = tf.cluster_moments(R, b, X, labels, T)
    _, om = tf.gradient(R, b, X, labels, T)
    _, oms = tf.gradient(R, b, X, labels, T, form="separated")
    m2part = 0.5 * mom["pi"][:, None, None] * (mom["m2"] - np.swapaxes(mom["m2"], 1, 2))
    for j in range(2):
        print(f"  cluster {j + 1}: |Omega| {np.linalg.norm(om[j]):.3g}, |separated - general| "
              f"{np.linalg.norm(oms[j] - om[j]):.2g}, first-moment-only formula off by "
              f"{np.linalg.norm(oms[j] - m2part[j] - om[j]) / np.linalg.norm(om[j]):.2g} relative")
    X, labels, R, b, T = two_clusters(100, 100)
    tr = tf.integrate(R, b, X, labels, T, dt=0.05, steps=2000, record_every=20)
    for k in (0, 2, 5, 10):
        mom = tf.cluster_moments(tr.Rs[k], tr.bs[k], X, labels, T)
        _, o = tf.gradient(tr.Rs[k], tr.bs[k], X, labels, T)
        A = 0.5 * mom["pi"][1] * (mom["m2"][1] - mom["m2"][1].T)
        print(f"  partial-collapse run, s = {tr.times[k]:4.1f}: |Omega_2| {np.linalg.norm(o[1]):.3g}, |m2 part| {np.linalg.norm(A):.3g}")


def partial_collapse() -> None:
    print("== 3. partial collapse (100/100 points, dt = 0.05, 2000 steps)")
    X, labels, R, b, T = two_clusters(100, 100)
    kw = dict(dt=0.05, steps=2000, record_every=1)
    ob = tf.integrate(R, b, X, labels, T, train_weights=False, **kw)
    fu = tf.integrate(R, b, X, labels, T, **kw)
    g, o = tf.gradient(fu.R, fu.b, X, labels, T)
    print(f"  biases only: loss {ob.loss[-1]:.3g}, collapse times {ob.collapse_times}")
    print(f"  full flow:   loss {fu.loss[-1]:.4g}, max|grad_b| {np.abs(g).max():.2g}, max|Omega| {np.abs(o).max():.2g}, "
          f"R_2 turned {wrap(angle(fu.R[1]) - 180.0):+.2f} deg, R_1 {angle(fu.R[0]):+.2f} deg")
    print("  variants (60/140 points, 1000 steps):")
    X, labels, R, b, T = two_clusters(60, 140)
    for y2, shift in [(8.0, 0.0), (8.0, 0.15), (9.0, 0.0), (9.5, 0.0)]:
        Tv = np.array([[2.0, 2.0], [y2, y2]])
        bv = np.array([[-shift, -shift], [10.0 - shift, 10.0 - shift]])
        tr = tf.integrate(R, bv, X, labels, Tv, dt=0.05, steps=1000, record_every=1)
        print(f"    y_2 = ({y2}, {y2}), b shifted by -{shift}: loss {tr.loss[-1]:.3g}, collapse times "
              f"{tr.collapse_times}, R_2 turned {wrap(angle(tr.R[1]) - 180.0):+.1f} deg")


def partial_collapse_adaptive() -> None:
    """Section 3, the stall direction under adaptive steps (docs/theory.md §12): bs3 and heun
    at rtol = 1e-3 … 1e-8, every sector crossing located, against fixed-step Lie–Euler."""
    print("== 3b. partial collapse with adaptive steps (full flow to s = 100)")
    for n1, n2 in ((100, 100), (60, 140)):
        X, labels, R, b, T = two_clusters(n1, n2)
        print(f"  {n1}/{n2} points:")
        prev = None
        for method in ("bs3", "heun"):
            for rtol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
                tr = tf.integrate(R, b, X, labels, T, dt=0.05, t1=100.0, rtol=rtol, method=method)
                g, o = tf.gradient(tr.R, tr.b, X, labels, T)
                turn = wrap(angle(tr.R[1]) - 180.0)
                diff = "" if prev is None else f", |Δstate| to the previous rtol {max(np.abs(tr.R - prev.R).max(), np.abs(tr.b - prev.b).max()):.1e}"
                print(f"    {method} rtol {rtol:.0e}: R_2 turned {turn:+.4f} deg, loss {tr.loss[-1]:.6e}, "
                      f"max|grad| {max(np.abs(g).max(), np.abs(o).max()):.1e}, {tr.accepted_steps} steps, "
                      f"{tr.stats['crossings']} crossings{diff}")
                prev = tr
            prev = None
        for dt in (0.05, 0.02, 0.01, 0.005, 0.002, 0.001):
            tr = tf.integrate(R, b, X, labels, T, dt=dt, steps=int(round(100.0 / dt)), record_every=10**6)
            print(f"    lie-euler dt {dt:g}: R_2 turned {wrap(angle(tr.R[1]) - 180.0):+.4f} deg, loss {tr.loss[-1]:.6e}")


if __name__ == "__main__":
    post_collapse()
    second_moments()
    partial_collapse()
    partial_collapse_adaptive()
