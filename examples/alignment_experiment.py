"""Does backprop stay aligned, and does the effective flow predict what it does? (issue 17)

For two data sets — scikit-learn's digits (10 classes, PCA to M dimensions,
``truncfast.data.load_sklearn`` through ``make_problem("digits")``) and Gaussian
clusters in the paper's cluster-separated setting (Q = L clusters, spread 0.5,
centres 10 apart, separated frames) — and for two widths M ∈ {4, 8} and two depths
L ∈ {2, 4}, this runs ``truncfast compare`` (the effective flow, the unaligned flow
of docs/theory.md §13 and full-batch backprop on the layer weights from the same
start, compared at matched flow times) and summarises its trajectory-level
measures:

* how far backprop's cumulative weights leave the aligned set (alignment defect);
* how often a point has the same sector code in the flow and in the network;
* which clusters collapse, and when, in each run;
* neural collapse (NC1) of the flows' τ^(L)(x) and of backprop's last hidden layer.

Usage::

    python examples/alignment_experiment.py [--out runs/alignment_experiment] [--steps 400] [--quick]

Writes one ``truncfast compare`` directory per configuration, ``summary.json`` and
``summary.md`` in ``--out``, and the figure ``docs/figures/alignment_experiment.png``
(``--figure`` to put it elsewhere).  Takes about 4 minutes on 2 busy cores (the
unaligned flow's small stable step on digits dominates); ``--quick`` runs the
M = 4 configurations for 100 steps only.  Results: docs/alignment_experiment.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RUNS = ("effective flow", "unaligned flow", "backprop (layers)")


def configurations(quick: bool) -> list[dict]:
    out = []
    for source in ("clusters", "digits"):
        for M in ((4,) if quick else (4, 8)):
            for L in (2, 4):
                c = dict(source=source, dim=M, layers=L, name=f"{source}-M{M}-L{L}")
                if source == "clusters":  # the paper's setting: one separated layer per cluster
                    c.update(clusters=L, init="auto", spread=0.5, n=2000)
                else:
                    c.update(init="toward", n=2000)
                out.append(c)
    return out


def run_one(c: dict, out: str, steps: int) -> dict:
    d = os.path.join(out, c["name"])
    args = [sys.executable, "-m", "truncfast", "compare", "--out", d, "--force", "-q", "--steps", str(steps),
            "--source", c["source"], "--dim", str(c["dim"]), "--layers", str(c["layers"]), "--init", c["init"],
            "--n", str(c["n"])]
    if "clusters" in c:
        args += ["--clusters", str(c["clusters"]), "--spread", str(c["spread"])]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{c['name']}: truncfast compare failed:\n{r.stderr}")
    with open(os.path.join(d, "compare.json"), encoding="utf-8") as fh:
        s = json.load(fh)
    s["_seconds"] = time.perf_counter() - t0
    return s


def _arr(v) -> np.ndarray:
    return np.array([[np.nan if x is None else x for x in row] if isinstance(row, list) else
                     (np.nan if row is None else row) for row in v], dtype=np.float64)


def summarise(name: str, s: dict) -> dict:
    """The numbers of docs/alignment_experiment.md for one configuration."""
    ad = {r: _arr(s["alignment_defect"][r]["values"]) for r in RUNS}
    pa = {r: _arr(s["pattern_agreement"][r]["values"]) for r in ("effective flow", "unaligned flow", "initial state")}
    nc = s["neural_collapse"]
    ct = s["collapse_times"]
    Q = s["problem"]["Q"]

    def collapse(run):
        t = [x for x in ct[run] if x is not None]
        return len(t), (min(t) if t else None)

    both = [j for j in range(Q) if ct["effective flow"][j] is not None and ct["backprop (layers)"][j] is not None]
    return {
        "config": name, "N": s["problem"]["N"], "M": s["problem"]["M"], "L": s["problem"]["L"], "Q": Q,
        "backprop_defect_final": float(np.nanmax(ad["backprop (layers)"][-1])),
        "backprop_defect_max": float(np.nanmax(ad["backprop (layers)"])),
        "backprop_defect_t1": float(np.nanmax(ad["backprop (layers)"][_index(s, "backprop (layers)", 1.0)])),
        "unaligned_defect_final": float(np.nanmax(ad["unaligned flow"][-1])),
        "agree_flow_mean": float(np.nanmean(pa["effective flow"])),
        "agree_flow_final": float(np.nanmean(pa["effective flow"][-1])),
        "agree_flow_t1": float(np.nanmean(pa["effective flow"][_index(s, "effective flow", 1.0, "pattern_agreement")])),
        "agree_initial_mean": float(np.nanmean(pa["initial state"])),
        "agree_initial_final": float(np.nanmean(pa["initial state"][-1])),
        "agree_initial_t1": float(np.nanmean(pa["initial state"][_index(s, "initial state", 1.0, "pattern_agreement")])),
        "agree_unaligned_mean": float(np.nanmean(pa["unaligned flow"])),
        "agree_unaligned_final": float(np.nanmean(pa["unaligned flow"][-1])),
        "collapsed": {r: collapse(r) for r in RUNS},
        "collapse_times": ct,
        "collapsed_in_both": both,
        "nc1_final": {r: nc[r]["nc1"][-1] for r in RUNS},
        "nc4_final": {r: nc[r]["nc4"][-1] for r in RUNS},
        "final_loss": {r: s["methods"][r]["final_loss"] for r in ("effective flow", "backprop (layers)")},
        "unaligned_dt": s["trajectory_level"]["unaligned_dt"],
        "unaligned_stopped": s["trajectory_level"]["unaligned_flow_stopped"],
        "seconds": s["_seconds"],
    }


def _index(s: dict, run: str, t: float, key: str = "alignment_defect") -> int:
    times = np.asarray(s[key][run]["times"], dtype=np.float64)
    return int(np.argmin(np.abs(times - t)))


def markdown(rows: list[dict], steps: int, dt: float) -> str:
    def f(x, d=2):
        return "—" if x is None else f"{x:.{d}f}"

    lines = [f"Flow time 0 … {steps * dt:g} (dt = {dt:g}; backprop lr = dt/5, compared at step·lr).", "",
             "| configuration | backprop defect at s = 1 / end / max | unaligned-flow defect at end | "
             "same code as backprop: flow at s = 1 / mean / end | unaligned flow mean / end | "
             "baseline (backprop's own start) at s = 1 / mean / end | "
             "clusters collapsed: flow / unaligned / backprop | NC1 at end: flow / unaligned / backprop |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["collapsed"]
        col = " / ".join(f"{c[k][0]}" + (f" (first {c[k][1]:.2f})" if c[k][1] is not None else "") for k in RUNS)
        nc1 = " / ".join(f(r["nc1_final"][k], 3) for k in RUNS)
        lines.append(f"| {r['config']} (Q = {r['Q']}) | {f(r['backprop_defect_t1'])} / {f(r['backprop_defect_final'])} / "
                     f"{f(r['backprop_defect_max'])} | {f(r['unaligned_defect_final'])} | {f(r['agree_flow_t1'])} / "
                     f"{f(r['agree_flow_mean'])} / {f(r['agree_flow_final'])} | {f(r['agree_unaligned_mean'])} / "
                     f"{f(r['agree_unaligned_final'])} | {f(r['agree_initial_t1'])} / {f(r['agree_initial_mean'])} / "
                     f"{f(r['agree_initial_final'])} | {col} | {nc1} |")
    return "\n".join(lines) + "\n"


def figure(results: dict[str, dict], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axs = fig.subplots(2, 3)
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for row, source in enumerate(("clusters", "digits")):
        names = [n for n in results if n.startswith(source)]
        for i, name in enumerate(names):
            s, col = results[name], colours[i % 4]
            d = s["alignment_defect"]["backprop (layers)"]
            axs[row, 0].plot(d["times"], np.nanmax(_arr(d["values"]), axis=1), color=col, lw=1.6, label=name)
            d = s["alignment_defect"]["unaligned flow"]
            axs[row, 0].plot(d["times"], np.nanmax(_arr(d["values"]), axis=1), color=col, lw=1.0, ls="--")
            for run, ls in (("effective flow", "-"), ("unaligned flow", "--"), ("initial state", ":")):
                a = s["pattern_agreement"][run]
                axs[row, 1].plot(a["times"], np.nanmean(_arr(a["values"]), axis=1), color=col, ls=ls, lw=1.4,
                                 label=name if run == "effective flow" else None)
            for run, ls in (("effective flow", "-"), ("backprop (layers)", ":")):
                nc = s["neural_collapse"][run]
                y = np.array([np.nan if v is None else v for v in nc["nc1"]], dtype=np.float64)
                axs[row, 2].semilogy(nc["times"], np.maximum(y, 1e-16), color=col, ls=ls, lw=1.4,
                                     label=name if run == "effective flow" else None)
        axs[row, 0].set_title(f"{source}: alignment defect (max over layers)\nsolid: backprop, dashed: unaligned flow",
                              fontsize=10)
        axs[row, 1].set_title(f"{source}: same sector code as backprop (mean over layers)\nsolid: flow, "
                              "dashed: unaligned flow, dotted: backprop's own start", fontsize=10)
        axs[row, 2].set_title(f"{source}: NC1\nsolid: flow (τ^(L)(x)), dotted: backprop (last hidden layer)",
                              fontsize=10)
        for ax in axs[row]:
            ax.set_xlabel("flow time (backprop: step × lr)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        axs[row, 1].set_ylim(-0.02, 1.02)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("runs", "alignment_experiment"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="M = 4 only, 100 steps")
    ap.add_argument("--figure", default=os.path.join(ROOT, "docs", "figures", "alignment_experiment.png"))
    ns = ap.parse_args(argv)
    steps = 100 if ns.quick else ns.steps
    os.makedirs(ns.out, exist_ok=True)
    results, rows = {}, []
    for c in configurations(ns.quick):
        s = run_one(c, ns.out, steps)
        results[c["name"]] = s
        rows.append(summarise(c["name"], s))
        print(f"{c['name']}: {rows[-1]['seconds']:.0f} s", flush=True)
    md = markdown(rows, steps, 0.05)
    with open(os.path.join(ns.out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(rows, fh, indent=1)
    with open(os.path.join(ns.out, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    figure(results, ns.figure)
    print(md)
    print(f"figure: {ns.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
