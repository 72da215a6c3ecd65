"""The two losses of the paper side by side on the same data (docs/theory.md §§3, 7, 12).

The two-cluster scenario of docs/theory.md §7 (centres (0,0) and (10,10), R = (I, −I),
targets ỹ = (2,2) and (8,8) through the output layer W_out = I, b_out = 0), integrated
to s = 100 with adaptive Bogacki–Shampine steps (rtol = 1e-8, every sector crossing
located):

* **Euclidean loss C_E** at the fixed output layer (``tf.integrate``): the flow of the
  paper's sections 3–7 — the hidden layers alone must carry every point onto its target;
* **standard loss C_std** with the output layer trained too (``tf.integrate_standard``):
  the same start (C_std = C_E there, since W_out = I) and the same hidden flow, but the
  output layer also moves and absorbs part of the error.

Writes ``standard_vs_euclidean.png`` into the directory given on the command line
(default ``docs/figures/``) and prints the numbers quoted in docs/paper_differences.md §5.

Run:  python examples/standard_vs_euclidean.py [OUTDIR]      (about 10 s)
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
from truncfast import data  # noqa: E402

COLORS = ("tab:blue", "tab:orange")


def angle(R: np.ndarray) -> np.ndarray:
    return np.degrees(np.arctan2(R[..., 1, 0], R[..., 0, 0]))


def run(t1: float = 100.0, rtol: float = 1e-8) -> dict:
    p = data.make_problem("paper-2d")  # W_out = I, b_out = 0, Y = targets
    saveat = np.unique(np.concatenate([np.geomspace(1e-3, t1, 120), [t1]]))
    common = dict(dt=0.01, t1=t1, rtol=rtol, method="bs3", saveat=saveat)
    out = {"problem": p}
    t0 = time.perf_counter()
    out["euclidean"] = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, **common)
    out["standard"] = tf.integrate_standard(p.R0, p.b0, p.X, p.labels, p.W_out, p.b_out, p.Y, **common)
    out["wall"] = time.perf_counter() - t0
    return out


def report(res: dict) -> None:
    p = res["problem"]
    for name in ("euclidean", "standard"):
        tr = res[name]
        turn = angle(tr.R) - angle(p.R0)
        turn = (turn + 180.0) % 360.0 - 180.0
        fin = tr.counts[-1]
        print(f"{name:9s}: loss {tr.loss[0]:.4g} → {tr.loss[-1]:.4e}; collapse times {np.round(tr.collapse_times, 5)}; "
              f"R turned by {np.round(turn, 2)}°; fully truncated at own layer: {[int(fin[j, j, 2]) for j in range(2)]}; "
              f"{tr.accepted_steps} accepted, {tr.rejected_steps} rejected steps, "
              f"{tr.stats['rhs_evaluations']} evaluations, {tr.stats['crossings']} crossings located")
        if tr.W_out is not None:
            print(f"{'':9s}  final W_out = {np.round(tr.W_out, 4).tolist()}, b_out = {np.round(tr.b_out, 4).tolist()}")
    print(f"both runs: {res['wall']:.2f} s")


def figure(res: dict, path: str) -> None:
    p = res["problem"]
    eu, st = res["euclidean"], res["standard"]
    fig, ax = plt.subplots(1, 4, figsize=(17, 4.2))

    a = ax[0]
    a.loglog(eu.times[1:], eu.loss[1:], color="k", label="Euclidean C_E (output layer fixed)")
    a.loglog(st.times[1:], st.loss[1:], color="tab:red", label="standard C_std (output layer trained)")
    for tr, ls in ((eu, "-"), (st, "--")):
        for j, ct in enumerate(tr.collapse_times):
            if np.isfinite(ct):
                a.axvline(ct, color=COLORS[j], ls=ls, lw=0.8)
    a.set_xlabel("flow time s")
    a.set_ylabel("loss")
    a.set_title("(a) loss; lines: collapse of cluster 1\n(solid: C_E, dashed: C_std)", fontsize=10)
    a.legend(fontsize=8, loc="lower left")

    a = ax[1]
    for tr, ls, lab in ((eu, "-", "C_E"), (st, "--", "C_std")):
        for j in range(2):
            frac = tr.counts[:, j, j, 2] / tr.counts[0, j, j].sum()
            a.semilogx(tr.times[1:], frac[1:], color=COLORS[j], ls=ls, label=f"cluster {j + 1}, {lab}")
    a.set_xlabel("flow time s")
    a.set_ylabel("fully truncated at its own layer")
    a.set_title("(b) truncation of each cluster", fontsize=10)
    a.legend(fontsize=8)

    for k, (tr, title) in enumerate(((eu, "(c) C_E: τ(x) in input space at s = 100"),
                                     (st, "(d) C_std: network output W_out τ(x) + b_out"))):
        a = ax[2 + k]
        z = tf.truncate(tr.R, tr.b, p.X)
        if tr.W_out is not None:
            z = z @ tr.W_out.T + tr.b_out
        for j in range(2):
            m = p.labels == j
            a.scatter(p.X[m, 0], p.X[m, 1], s=4, color=COLORS[j], alpha=0.15)
            a.scatter(z[m, 0], z[m, 1], s=10, color=COLORS[j], label=f"cluster {j + 1}", zorder=6)
            a.scatter(*p.Y[j], marker="*", s=260, facecolors="none", edgecolors="k", linewidths=1.2, zorder=5)
        a.set_aspect("equal")
        a.set_title(title, fontsize=10)
        a.set_xlabel("x₁")
        a.legend(fontsize=8, loc="upper left")
    fig.suptitle("The same data, start and hidden flow; left the output layer is fixed (Euclidean loss), right it "
                 "trains (standard loss). Stars: the labels y_j. bs3, rtol = 1e-8.", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> None:
    out = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs", "figures")
    os.makedirs(out, exist_ok=True)
    res = run()
    report(res)
    path = os.path.join(out, "standard_vs_euclidean.png")
    figure(res, path)
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main(sys.argv)
