"""Adaptive steps against fixed-step Lie–Euler on the demo's two flows (issue 15; docs/theory.md §12).

    python benchmarks/bench_adaptive.py [--rounds 3]

The demo's data (``truncfast.data.make_problem("paper-2d")``: two clusters of 100 points,
R = (I, −I)), both flows of ``truncfast demo`` — biases only (R frozen) and the full flow
— to s = 100.  The error of a run is taken along the whole path, max over the flow times
s ∈ {0.05, 0.10, …, 1, 2, …, 100} of max|b − b_ref| and max|R − R_ref| (the final state
alone is an attracting equilibrium that every stable method reaches, so it measures
nothing).  References: the exact event-driven solution of docs/theory.md §7 for the
biases-only flow; bs3 at rtol = 1e-12 for the full flow.

Rows: bs3 and heun at rtol = 1e-8 (every sector crossing located, ``events="auto"``);
Lie–Euler at fixed steps dt = 0.05 … 0.0005 (the compiled Numba loop, ~6–10 µs/step);
Lie–Euler with as many evaluations as the bs3 run; and the Lie–Euler step that would
reach bs3's error, *extrapolated* from a least-squares fit err = C·dt^p over the
measured dt (running it would take days).  Times are the minimum over ``--rounds``
runs, after a warm-up run (Numba compilation excluded).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import truncfast as tf
from truncfast import data

T1 = 100.0
GRID = np.concatenate([np.round(np.arange(1, 21) * 0.05, 10), np.arange(2.0, 101.0)])


def _timed(fn, rounds):
    fn()  # warm-up (compilation, caches)
    best, out = np.inf, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _path_error(tr, ref_R, ref_b) -> float:
    idx = np.searchsorted(tr.times, GRID)
    assert np.allclose(tr.times[idx], GRID, rtol=0, atol=1e-9), "records must contain the grid"
    return float(max(np.abs(tr.bs[idx] - ref_b).max(), np.abs(tr.Rs[idx] - ref_R).max()))


def bench(flow: str, rounds: int) -> list[dict]:
    p = data.make_problem("paper-2d")
    args = (p.R0, p.b0, p.X, p.labels, p.targets)
    tw = flow == "full"
    if tw:
        ref = tf.integrate(*args, dt=0.01, t1=T1, rtol=1e-12, saveat=GRID)
        assert np.array_equal(ref.times[1:], GRID)
        ref_R, ref_b = ref.Rs[1:], ref.bs[1:]
    else:
        ref_b = tf.exact_bias_flow(*args, GRID)
        ref_R = np.broadcast_to(p.R0, (len(GRID),) + p.R0.shape)
    rows = []
    for method in ("bs3", "heun"):
        sec, tr = _timed(lambda m=method: tf.integrate(*args, dt=0.01, t1=T1, rtol=1e-8, method=m, saveat=GRID,
                                                       train_weights=tw), rounds)
        rows.append(dict(run=f"{method}, rtol = 1e-8", seconds=sec, evals=tr.stats["rhs_evaluations"],
                         steps=f"{tr.accepted_steps} + {tr.rejected_steps} rejected",
                         crossings=tr.stats["crossings"], error=_path_error(tr, ref_R, ref_b)))
    bs3_err, bs3_evals = rows[0]["error"], rows[0]["evals"]
    dts, errs, per_step = [], [], None
    for dt in (0.05, 0.01, 0.005, 0.001, 0.0005):
        steps = int(round(T1 / dt))
        every = int(round(0.05 / dt))
        sec, tr = _timed(lambda dt=dt, steps=steps, every=every: tf.integrate(
            *args, dt=dt, steps=steps, record_every=every, train_weights=tw), rounds)
        err = _path_error(tr, ref_R, ref_b)
        dts.append(dt)
        errs.append(err)
        per_step = sec / steps
        rows.append(dict(run=f"lie-euler, dt = {dt:g}", seconds=sec, evals=steps + 1, steps=f"{steps}",
                         crossings="—", error=err))
    # Lie–Euler with about bs3's number of evaluations (a dt that divides the grid's 0.05)
    k = max(1, int(round(0.05 * bs3_evals / T1)))
    dt_same = 0.05 / k
    steps = int(round(T1 / dt_same))
    sec, tr = _timed(lambda: tf.integrate(*args, dt=dt_same, steps=steps, record_every=k, train_weights=tw), rounds)
    rows.append(dict(run=f"lie-euler, dt = {dt_same:.3g} (≈ bs3's evaluations)", seconds=sec, evals=steps + 1,
                     steps=f"{steps}", crossings="—", error=_path_error(tr, ref_R, ref_b)))
    # extrapolate the step Lie–Euler would need for bs3's error
    slope, icpt = np.polyfit(np.log(dts), np.log(errs), 1)
    dt_need = float(np.exp((np.log(bs3_err) - icpt) / slope))
    n_need = T1 / dt_need
    rows.append(dict(run=f"lie-euler for bs3's error: dt ≈ {dt_need:.2g} (fit err ∝ dt^{slope:.2f}, extrapolated)",
                     seconds=n_need * per_step, evals=int(n_need), steps=f"{n_need:.2g}", crossings="—",
                     error=bs3_err))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ns = ap.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; backend auto; truncfast {tf.__version__}")
    for flow in ("biases-only", "full"):
        rows = bench(flow, ns.rounds)
        print(f"\n### {flow} flow, s ∈ [0, 100]\n")
        print("| run | wall time | RHS evaluations | steps | crossings located | path error |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            sec = r["seconds"]
            wall = f"{sec:.3g} s" if sec < 3600 else f"{sec / 3600:.3g} h"
            print(f"| {r['run']} | {wall} | {r['evals']:,} | {r['steps']} | {r['crossings']} | {r['error']:.2e} |")
    load = os.getloadavg()
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
