"""Engines of the right-hand side (issue 14): ``tf.integrate(engine=...)`` end to end against ``engine="direct"``.

Run:  python benchmarks/bench_engine.py                      (every case, N = 10⁶; the per-step case at 10⁷)
      python benchmarks/bench_engine.py --cases paper2d,r3   (some cases)
      python benchmarks/bench_engine.py --quick              (N / 100: checks the script in a minute)
      python benchmarks/bench_engine.py --calibrate          (the cost model's constants, _config.ENGINE_COST_*)
      python benchmarks/bench_engine.py --drift              (drift of moved moments without rebuilds)

Cases (each in this process, one after the other, on the same data; times are
wall clock of whole ``tf.integrate`` calls, after a warm-up that loads the
compiled kernels and touches the memory of every engine on the full data):

* ``paper2d``: the paper's two clusters in the plane (the demo's data), N = 10⁶,
  full flow, 2,000 Lie–Euler steps, dt = 0.05, record_every = 100 — goal ≥ 20×.
* ``r3``: three clusters in R³ (``make_problem("clusters", dim=3, clusters=3)``),
  N = 10⁶, 1,000 steps — goal ≥ 5×.
* ``r8``: eight clusters in R⁸, spread 0.2, N = 10⁵, 300 steps — thousands of
  groups and most points near a boundary: the case where the per-point kernel
  must stay (auto should be about as fast as direct).
* ``random``: random data, N = 10⁶, M = L = 8 (every point its own group), 10
  steps; direct and auto alternate twice, the better of each is kept — goal:
  auto within 10 % of direct.
* ``collapsed``: the plane at N = 10⁷, from the state after 400 steps (reached
  on a 2·10⁴ sample): per-step time of ``engine="moments"`` over 2,000 steps,
  the median and mean time between consecutive evaluations after the first
  (which holds the full pass) — goal < 1 ms.
* ``numba_vs_c``: one ``tf.gradient`` at N = 10⁶, M = L = 8, Q = 8, Numba and C
  (best of 3) — goal: Numba within 3× of C.

``--json PATH`` keeps every number (``benchmarks/report.py --engines`` uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import truncfast as tf
from truncfast.data import make_problem


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "?"


def run(p, engine: str, steps: int, **kw):
    t = time.perf_counter()
    tr = tf.integrate(p["R"], p["b"], p["X"], p["labels"], p["T"], dt=kw.pop("dt", 0.05), steps=steps,
                      engine=engine, record_every=kw.pop("record_every", 100), **kw)
    return time.perf_counter() - t, tr


def problem(name: str, n: int, seed: int = 0) -> dict:
    if name == "paper2d":
        q = make_problem("paper-2d", n=n, seed=seed)
    elif name == "r3":
        q = make_problem("clusters", n=n, dim=3, clusters=3, seed=seed)
    elif name == "r8":
        q = make_problem("clusters", n=n, dim=8, clusters=8, spread=0.2, seed=seed)
    else:
        rng = np.random.default_rng(seed)
        M = L = 8
        R = np.array([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(L)])
        return {"R": R, "b": 0.7 * rng.standard_normal((L, M)), "X": rng.standard_normal((n, M)),
                "labels": rng.integers(0, 8, n), "T": rng.standard_normal((8, M))}
    return {"R": q.R0, "b": q.b0, "X": q.X, "labels": q.labels, "T": q.targets}


def warm(p) -> None:
    """Compile / load the kernels (Numba's cache: ~20–50 ms the first time a kernel runs in a
    process) and touch the memory of every engine on the full data: 2 steps per point, 30 steps of
    moments (a pass, the at-risk search, re-checks), 2 of auto."""
    for engine, steps in (("direct", 2), ("moments", 30), ("auto", 2)):
        run(p, engine, steps)


def versus(name: str, n: int, steps: int, engines=("direct", "auto"), repeats: int = 1) -> dict:
    p = problem(name, n)
    warm(p)
    best, trs = {}, {}
    for _ in range(repeats):
        for engine in engines:
            t, tr = run(p, engine, steps)
            best[engine] = min(best.get(engine, np.inf), t)
            trs[engine] = tr
            print(f"  {name}: engine={engine:8s} {t:8.2f} s  load {load()}  {tr.engine_stats}", flush=True)
    d = trs["direct"]
    out = {"case": name, "N": n, "steps": steps, "times": best, "load": load()}
    for engine in engines:
        if engine == "direct":
            continue
        tr = trs[engine]
        out[f"speedup_{engine}"] = best["direct"] / best[engine]
        out[f"stats_{engine}"] = tr.engine_stats
        out[f"max_dR_{engine}"] = float(np.abs(tr.R - d.R).max())
        out[f"max_db_{engine}"] = float(np.abs(tr.b - d.b).max())
    return out


def collapsed(n: int, steps: int = 2000) -> dict:
    """Per-step time after collapse: the times between consecutive evaluations of one run (a step of the
    run loop: solver, at-risk search, assembly), median and mean over the steps after the first."""
    from truncfast._flow import engines

    small = problem("paper2d", 20000, seed=1)
    _, tr = run(small, "direct", 400, record_every=400)
    p = problem("paper2d", n)
    p["R"], p["b"] = tr.R, tr.b
    run(p, "moments", 1, record_every=1)  # kernels loaded, pages touched
    stamps: list = []
    engines._verify = lambda *a: stamps.append(time.perf_counter())
    try:
        t, trs = run(p, "moments", steps, record_every=steps)
    finally:
        engines._verify = None
    dts = np.diff(np.array(stamps))[1:]
    out = {"case": "collapsed", "N": n, "per_step_s": float(np.median(dts)), "mean_step_s": float(dts.mean()),
           "first_s": float(t - dts.sum()), "stats": trs.engine_stats,
           "load": load()}
    print(f"  collapsed N={n}: {steps} steps in {t:.2f} s; per step median {out['per_step_s'] * 1e3:.3f} ms, mean "
          f"{out['mean_step_s'] * 1e3:.3f} ms; load {load()}; {trs.engine_stats}", flush=True)
    return out


def numba_vs_c(n: int) -> dict:
    p = problem("random", n)
    out = {"case": "numba_vs_c", "N": n}
    for backend in ("numba", "c"):
        tf.gradient(p["R"], p["b"], p["X"][:1000], p["labels"][:1000], p["T"], backend=backend)
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            tf.gradient(p["R"], p["b"], p["X"], p["labels"], p["T"], backend=backend)
            ts.append(time.perf_counter() - t)
        out[backend] = min(ts)
    out["ratio"] = out["numba"] / out["c"]
    out["load"] = load()
    print(f"  gradient N={n} M=L=8: numba {out['numba'] * 1e3:.0f} ms, c {out['c'] * 1e3:.0f} ms, "
          f"ratio {out['ratio']:.2f}; load {load()}", flush=True)
    return out


def calibrate(n: int) -> None:
    """Per-point / per-group costs of the pieces (the constants of _config.ENGINE_COST_*)."""
    from truncfast._backends.registry import get
    from truncfast._kernels import pattern_state as ps

    bk = get("numba")

    def best(fn, rep=3):
        fn()
        return min(_timed(fn) for _ in range(rep))

    for M, L, spread in ((2, 2, 0.3), (4, 4, 0.3), (8, 8, 0.3), (8, 8, 3.0)):
        rng = np.random.default_rng(0)
        centres = 3.0 * rng.standard_normal((3, M))
        lab = rng.integers(0, 3, n)
        X = centres[lab] + spread * rng.standard_normal((n, M))
        R = np.array([np.linalg.qr(rng.standard_normal((M, M)))[0] for _ in range(L)])
        b = np.array([-R[l] @ centres[l % 3] for l in range(L)])
        T = rng.standard_normal((3, M))
        d = best(lambda: tf.gradient(R, b, X, lab, T, backend="numba"))
        dc = best(lambda: tf.gradient(R, b, X, lab, T, backend="c")) if tf.backends()["c"] == "available" else np.nan
        fp = best(lambda: bk.pattern_pass(R, b, X, lab, 3, None))
        st = bk.pattern_pass(R, b, X, lab, 3, None)
        G = st.num_groups
        asm = best(lambda: ps.assemble(st, R, b, T), 20)
        idx = np.sort(rng.choice(n, n // 100, replace=False))
        rc = best(lambda: ps.recheck(st, idx, R, b, X, lab))
        ar = best(lambda: ps.at_risk(st, R, b), 20)
        lm2 = L * M * M
        print(f"M={M} L={L} spread={spread} G={G}: direct numba {d / n * 1e9:.1f} ns/pt, c {dc / n * 1e9:.1f} ns/pt, "
              f"pass {fp / n * 1e9:.1f} ns/pt, recheck {rc / idx.size * 1e9:.0f} ns/pt, "
              f"assemble {asm / G * 1e9:.0f} ns/group ({asm / G * 1e9 / (lm2 * M):.2f}/LM³), at_risk {ar * 1e6:.0f} µs; "
              f"load {load()}", flush=True)


def drift(n: int, steps: int) -> None:
    """How far moments updated by moves drift from the data when nothing rebuilds them.

    Three clusters in the plane, spread 0.3 (points keep crossing boundaries),
    engine="moments" with ENGINE_REBUILD_EVERY and the ski-rental rebuild off;
    every 250 evaluations: the right-hand side against the per-point kernel, in
    units of the operand-magnitude scale of tests/test_engines.py, and each
    group's mean and scatter against a fresh full pass.
    """
    import sys

    from truncfast import _config
    from truncfast._flow import engines
    from truncfast._flow.gradient import euclid_general
    from truncfast._kernels import pattern_state as ps

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "tests"))
    from test_engines import term_scales

    _config.ENGINE_REBUILD_EVERY = 10**9
    _config.ENGINE_RECHECK_SHARE = 1.0
    q = make_problem("clusters", n=n, dim=2, clusters=3, spread=0.3, seed=0)
    rows = []
    orig_pass = engines.Engine._pass

    def once(self, R, b):  # after the first pass, re-checks never "cost as much as a pass"
        out = orig_pass(self, R, b)
        self.cost.full_pass = float("inf")
        return out

    engines.Engine._pass = once

    def hook(e, R, b, loss, gb, om):
        k = e._count["moment_evaluations"]
        if e.last != "moments" or k % 250:
            return
        l0, gb0, om0, _, _ = euclid_general(e.bk, R, b, q.X, q.labels, q.targets, True)
        sc = term_scales(R, b, q.X, q.labels, q.targets)
        err = max(abs(loss - l0) / sc[0], np.linalg.norm(gb - gb0) / np.linalg.norm(sc[1]),
                  np.linalg.norm(om - om0) / np.linalg.norm(sc[2]))
        fresh = ps.full_pass(R, b, q.X, q.labels, q.targets.shape[0])
        key = {(tuple(pt), int(lb)): g for g, (pt, lb) in enumerate(zip(fresh.patterns.tolist(), fresh.label.tolist()))}
        dm = ds = 0.0
        st = e.st
        for g in np.flatnonzero(st.n):
            f = key[(tuple(st.patterns[g].tolist()), int(st.label[g]))]
            dm = max(dm, float(np.abs(st.mean[g] - fresh.mean[f]).max()) / max(1.0, float(np.abs(q.X).max())))
            ds = max(ds, float(np.abs(st.scatter[g] - fresh.scatter[f]).max()) / (st.n[g] * float(np.abs(q.X).max()) ** 2))
        rows.append((k, e.st.stats["moved_points"], err, dm, ds))
        print(f"  evaluation {k}: {e.st.stats['moved_points']} moves since the pass; RHS error {err:.2e} of the term "
              f"scale; mean drift {dm:.2e} (of max |x|), scatter drift {ds:.2e} (of n max|x|²)", flush=True)

    engines._verify = hook
    tf.integrate(q.R0, q.b0, q.X, q.labels, q.targets, dt=0.05, steps=steps, engine="moments", record_every=steps)
    engines._verify = None
    engines.Engine._pass = orig_pass


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="paper2d,r3,r8,random,collapsed,numba_vs_c")
    ap.add_argument("--quick", action="store_true", help="N / 100 (the per-step case N / 1000)")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--drift", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    scale = 100 if args.quick else 1
    print(f"truncfast {tf.__version__}, threads {tf.get_num_threads()}, backends {tf.backends()}, "
          f"{platform.processor() or platform.machine()}, load {load()}", flush=True)
    if args.calibrate:
        calibrate(200_000 // scale)
        return
    if args.drift:
        drift(20_000 // scale * 10 if args.quick else 20_000, 3000)
        return
    results = []
    cases = args.cases.split(",")
    if "paper2d" in cases:
        results.append(versus("paper2d", 1_000_000 // scale, 2000, engines=("direct", "auto", "moments")))
    if "r3" in cases:
        results.append(versus("r3", 1_000_000 // scale, 1000, engines=("direct", "auto", "moments")))
    if "r8" in cases:
        results.append(versus("r8", 100_000 // scale, 300, engines=("direct", "auto", "moments")))
    if "random" in cases:
        results.append(versus("random", 1_000_000 // scale, 10, repeats=2))
    if "collapsed" in cases:
        results.append(collapsed(10_000_000 // (10 * scale) if args.quick else 10_000_000))
    if "numba_vs_c" in cases and tf.backends()["c"] == "available":
        results.append(numba_vs_c(1_000_000 // scale))
    print("\n| case | N | steps | direct | auto | moments | auto vs direct |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "times" in r:
            t = r["times"]
            print(f"| {r['case']} | {r['N']:.0e} | {r['steps']} | {t['direct']:.2f} s | {t['auto']:.2f} s | "
                  f"{t['moments']:.2f} s | {r['speedup_auto']:.2f}× |" if "moments" in t else
                  f"| {r['case']} | {r['N']:.0e} | {r['steps']} | {t['direct']:.2f} s | {t['auto']:.2f} s | – | "
                  f"{r['speedup_auto']:.2f}× |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
