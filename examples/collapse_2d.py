"""Dynamical truncation and collapse of a 2-D cluster (paper Prop. 4.2, docs/theory.md §7).

Writes two PNGs into the directory given on the command line (default
``examples/out/``):

``collapse_2d.png``
    One cluster (L = Q = 1, N = 200, spread 0.15), partially truncated in both
    directions at s = 0, under the full effective flow (Lie–Euler, dt = 0.01).
    (a) the co-moving frame u = R(s) x + b(s): the cluster moves into the
    negative sector (third quadrant); (b) input space: the truncated points
    τ(x) at the same times, collapsing onto ỹ; (c) the number n_i of points
    truncated in direction i over time, and the rate of the bias equation
    measured from the trajectory, −Δb_i / (dt (b_i + (R ỹ)_i)), which equals
    n_i/N exactly, with the exact fixed-R solution dashed; (d) |b + R ỹ| decays
    at rate π = 1 after the collapse time s₀.

``partial_collapse.png``
    The two-cluster scenario of docs/theory.md §7 (centres (0,0), (10,10), R = (I, −I)):
    the biases-only flow collapses both clusters; the full flow turns R_2 by
    ≈ 45° and stalls on an exact equilibrium with cluster 2 on a segment.

Run:  python examples/collapse_2d.py [OUTDIR]      (about 5 s)
"""

from __future__ import annotations

import os
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import truncfast as tf  # noqa: E402


def rotation(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def angle(R: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(R[..., 1, 0], R[..., 0, 0]))


def single_cluster_figure(path: str) -> dict:
    rng = np.random.default_rng(3)
    N = 200
    c = np.array([1.0, 0.5])
    X = c + 0.15 * rng.standard_normal((N, 2))
    labels = np.zeros(N, dtype=np.int64)
    R0 = rotation(20.0)[None]
    b0 = (np.array([0.05, 0.05]) - R0[0] @ c)[None]  # centre slightly inside the positive sector
    target = (c + R0[0].T @ np.array([0.8, 0.6]))[None]  # beyond the cluster in both frame directions
    dt, steps = 0.01, 800
    traj = tf.integrate(R0, b0, X, labels, target, dt=dt, steps=steps, record_every=1)
    s0 = float(traj.collapse_times[0])
    exact_events = tf.exact_bias_events(R0, b0, X, labels, target)

    fig, ax = plt.subplots(2, 2, figsize=(10, 8.4))
    snaps = [0.0, 0.5 * s0, s0, traj.times[-1]]
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(snaps)))
    # (a) co-moving frame: u = R x + b, the negative sector is the third quadrant
    a = ax[0, 0]
    a.axhline(0, color="k", lw=0.8)
    a.axvline(0, color="k", lw=0.8)
    a.fill_between([-3, 0], -3, 0, color="0.9", zorder=0, label="negative sector")
    for s, col in zip(snaps, colours):
        k = int(np.argmin(np.abs(traj.times - s)))
        U = X @ traj.Rs[k, 0].T + traj.bs[k, 0]
        a.scatter(U[:, 0], U[:, 1], s=4, color=col, label=f"s = {traj.times[k]:.2f}")
    a.set(xlim=(-1.6, 0.7), ylim=(-1.6, 0.7), aspect="equal", xlabel="u₁", ylabel="u₂",
          title="(a) co-moving frame u = R(s) x + b(s)")
    a.legend(fontsize=7, loc="upper left")
    # (b) input space: τ(x) collapses onto ỹ
    a = ax[0, 1]
    a.scatter(X[:, 0], X[:, 1], s=3, color="0.75", label="data x")
    a.plot(*target[0], marker="*", ms=18, mfc="none", mec="tab:red", ls="none", label="ỹ")
    corner = -np.einsum("kji,kj->ki", traj.Rs[:, 0], traj.bs[:, 0])  # −Rᵀ b: where truncated points go
    a.plot(corner[:, 0], corner[:, 1], color="tab:red", lw=1, label="−R(s)ᵀ b(s)")
    for s, col in zip(snaps[1:], colours[1:]):
        k = int(np.argmin(np.abs(traj.times - s)))
        Z = tf.truncate(traj.Rs[k], traj.bs[k], X)
        a.scatter(Z[:, 0], Z[:, 1], s=10, color=col, zorder=3, label=f"τ(x), s = {traj.times[k]:.2f}")
    a.set(aspect="equal", xlabel="x₁", ylabel="x₂", title="(b) input space: τ(x) → ỹ")
    a.legend(fontsize=7, loc="lower right")
    # (c) truncated counts and the measured rate n/N
    a = ax[1, 0]
    U = np.einsum("nk,tik->tni", X, traj.Rs[:, 0]) + traj.bs[:, 0][:, None, :]
    n_trunc = (U <= 0).sum(axis=1)  # (K, 2): H(0) = 0
    yp = np.einsum("tik,k->ti", traj.Rs[:, 0], target[0])  # ỹ' = R ỹ
    rate = -np.diff(traj.bs[:, 0], axis=0) / (dt * (traj.bs[:-1, 0] + yp[:-1]))
    fine = np.linspace(0, traj.times[-1], 2000)
    for i, col in zip(range(2), ["tab:blue", "tab:orange"]):
        a.step(traj.times, n_trunc[:, i] / N, where="post", color=col, lw=2, label=f"n_{i + 1}/N (flow)")
        a.plot(traj.times[:-1:4], rate[::4, i], ".", ms=3, color="k", alpha=0.6,
               label="measured −Δb/(dt(b + Rỹ))" if i == 0 else None)
        a.plot(fine, exact_events[0][i].truncated(fine) / N, "--", color=col, lw=1,
               label=f"n_{i + 1}/N, exact at fixed R(0)")
    a.axvline(s0, color="tab:red", lw=0.8, ls=":", label=f"collapse s₀ = {s0:.2f}")
    a.set(xlim=(0, 1.2 * s0), xlabel="s", ylabel="rate n/N", title="(c) truncated fraction = bias rate")
    a.secondary_yaxis("right", functions=(lambda r: r * N, lambda n: n / N)).set_ylabel("n truncated")
    a.legend(fontsize=7, loc="lower right")
    # (d) exponential convergence after collapse at rate π = N_j/N = 1
    a = ax[1, 1]
    e = np.linalg.norm(traj.bs[:, 0] + yp, axis=1)
    a.semilogy(traj.times, e, label="|b + R ỹ|")
    a.semilogy(traj.times, traj.loss, label="loss C_E")
    ref = e[int(np.searchsorted(traj.times, s0))] * np.exp(-(traj.times - s0))
    a.semilogy(traj.times[traj.times >= s0], ref[traj.times >= s0], "k--", lw=1, label="∝ exp(−π s), π = 1")
    a.axvline(s0, color="tab:red", lw=0.8, ls=":")
    a.set(xlabel="s", title=f"(d) after s₀: rate π; R still turns ({angle(traj.Rs[-1, 0]) - 20:+.2f}°)")
    a.legend(fontsize=7)
    fig.suptitle("Dynamical truncation: a cluster collapses onto ỹ in finite time (Prop. 4.2)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return {"s0": s0, "loss_end": float(traj.loss[-1]), "turn_deg": float(angle(traj.Rs[-1, 0]) - 20.0)}


def partial_collapse_figure(path: str) -> dict:
    rng = np.random.default_rng(0)
    X = np.vstack([0.1 * rng.standard_normal((100, 2)), [10.0, 10.0] + 0.1 * rng.standard_normal((100, 2))])
    labels = np.repeat([0, 1], 100)
    R = np.stack([np.eye(2), -np.eye(2)])
    b = np.array([[0.0, 0.0], [10.0, 10.0]])
    targets = np.array([[2.0, 2.0], [8.0, 8.0]])
    kw = dict(dt=0.05, steps=2000, record_every=5)
    only_b = tf.integrate(R, b, X, labels, targets, train_weights=False, **kw)
    full = tf.integrate(R, b, X, labels, targets, **kw)

    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    a = ax[0]
    a.semilogy(only_b.times, np.maximum(only_b.loss, 1e-30), label="biases only")
    a.semilogy(full.times, full.loss, label="full flow (R trained)")
    a.set(xlabel="s", ylabel="C_E", title="(a) loss: collapse vs stall", ylim=(1e-30, 10))
    a.legend(fontsize=8)
    a = ax[1]
    turn = (angle(full.Rs[:, 1]) - 180.0 + 180.0) % 360.0 - 180.0
    a.plot(full.times, turn, label="R₂ (full flow)")
    a.plot(full.times, angle(full.Rs[:, 0]), label="R₁ (full flow)")
    a.set(xlabel="s", ylabel="rotation since s = 0 (degrees)", title="(b) R₂ turns by ≈ 45°")
    a.legend(fontsize=8)
    a = ax[2]
    sel = labels == 1
    a.scatter(X[sel, 0], X[sel, 1], s=4, color="0.75", label="cluster 2 data")
    Zf = tf.truncate(full.R, full.b, X)[sel]
    Zb = tf.truncate(only_b.R, only_b.b, X)[sel]
    a.scatter(Zf[:, 0], Zf[:, 1], s=8, color="tab:orange", label="τ(x), full flow: a segment")
    a.scatter(Zb[:, 0], Zb[:, 1], s=30, marker="x", color="tab:blue", label="τ(x), biases only: a point")
    a.plot(*targets[1], marker="*", ms=12, color="tab:red", ls="none", label="ỹ₂")
    a.set(aspect="equal", xlabel="x₁", ylabel="x₂", title="(c) cluster 2 at s = 100")
    a.legend(fontsize=7, loc="upper left")
    fig.suptitle("Partial collapse (docs/theory.md §7): training R stalls the collapse on an exact equilibrium")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    g_b, om = tf.gradient(full.R, full.b, X, labels, targets)
    return {"loss_biases_only": float(only_b.loss[-1]), "loss_full": float(full.loss[-1]),
            "turn_R2_deg": float(turn[-1]), "grad_full": float(max(np.abs(g_b).max(), np.abs(om).max()))}


def main(argv: list[str]) -> None:
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    info1 = single_cluster_figure(os.path.join(out, "collapse_2d.png"))
    info2 = partial_collapse_figure(os.path.join(out, "partial_collapse.png"))
    print(f"single cluster: collapse at s0 = {info1['s0']:.3f}, final loss {info1['loss_end']:.3g}, "
          f"R turned {info1['turn_deg']:+.3f} deg")
    print(f"partial collapse: biases only loss {info2['loss_biases_only']:.3g}; full flow loss "
          f"{info2['loss_full']:.4g}, max|gradient| {info2['grad_full']:.2g}, R_2 turned {info2['turn_R2_deg']:+.2f} deg")
    print(f"wrote {out}/collapse_2d.png and partial_collapse.png in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(sys.argv)
