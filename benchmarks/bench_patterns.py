"""Pattern form (docs/theory.md §11): full pass, assembly and at-risk search against the per-point gradient.

Run:  python benchmarks/bench_patterns.py                 (N = 10⁶; the per-step search also at N = 10⁷)
      python benchmarks/bench_patterns.py --big 0         (skip N = 10⁷)
      python benchmarks/bench_patterns.py --loop 2000     (also a 2,000-step Lie–Euler loop, see below)
      python benchmarks/bench_patterns.py --loop 2000 --direct   (and the same loop on tf.gradient)

Scenario: the paper's two clusters in the plane (``truncfast.data.make_problem("paper-2d")``,
L = 2, M = 2).  The "collapsed" state is reached by integrating the full flow
(Lie–Euler, dt = 0.05) for ``--steps`` steps on a 2·10⁴-point sample of the same
distribution; the per-step numbers use the state one more Lie–Euler step later,
evaluated on all N points.  Times are the minimum over the repeats (the machine
is shared); thread count: ``tf.get_num_threads()``.

The loop is a prototype of what the evaluator will do, not the evaluator: every
step ``at_risk`` (stopping early beyond ``--full-share`` of the points); a full
pass when more than that share is at risk, else ``recheck``; ``assemble``; then R ← exp(−dt Ω) R (truncfast's
compiled expm), b ← b − dt ∇_b.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import truncfast as tf
from truncfast._kernels.expm import rotate_layers
from truncfast._kernels import pattern_state as ps
from truncfast.data import make_problem


def best(fn, repeats: int) -> float:
    fn()
    out = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out


def lie_euler(R, b, gb, om, dt):
    out = np.empty_like(R)
    rotate_layers(R, om, dt, 0, out)
    return out, b - dt * gb


def collapsed_state(steps: int, dt: float):
    small = make_problem("paper-2d", n=20000, seed=1)
    tr = tf.integrate(small.R0, small.b0, small.X, small.labels, small.targets, dt=dt, steps=steps,
                      record_every=steps)
    return tr.R, tr.b


def per_call(N: int, big: bool, Rc, bc, args, backend: str, rows: list) -> None:
    p = make_problem("paper-2d", n=N, seed=0)
    X, lab, T = p.X, p.labels, p.targets
    Rn, bn = lie_euler(Rc, bc, *tf.gradient(Rc, bc, X, lab, T), args.dt)  # one step later, on all N points
    reps = 1 if big else args.repeats
    tag = f"[{backend}]"
    if not big:
        rows.append((N, f"tf.gradient (per-point, backend {backend})",
                     best(lambda: tf.gradient(Rc, bc, X, lab, T, backend=backend), reps), ""))
        rows.append((N, f"full pass, initial state {tag}",
                     best(lambda: ps.full_pass(p.R0, p.b0, X, lab, 2, backend=backend), reps), ""))
    t0 = time.perf_counter()
    st = ps.full_pass(Rc, bc, X, lab, 2, backend=backend)
    t_fp = time.perf_counter() - t0
    if not big:
        t_fp = best(lambda: ps.full_pass(Rc, bc, X, lab, 2, backend=backend), reps)
        st = ps.full_pass(Rc, bc, X, lab, 2, backend=backend)
    rows.append((N, f"full pass, collapsed state {tag}", t_fp,
                 f"{st.num_groups} groups, {st.nbytes() / N:.1f} B/point"))
    rows.append((N, f"assemble (loss, grad_b, omega) {tag}",
                 best(lambda: ps.assemble(st, Rn, bn, T, backend=backend), 200), ""))
    risk = ps.at_risk(st, Rn, bn)
    rows.append((N, "at_risk, one step later", best(lambda: ps.at_risk(st, Rn, bn), 200), f"{risk.size} at risk"))

    def step():
        idx = ps.at_risk(st, Rn, bn)
        if idx.size:
            ps.recheck(st, idx, Rn, bn, X, lab, backend=backend)
        return ps.assemble(st, Rn, bn, T, backend=backend)

    t_step = best(step, 200)
    loss, gb, om = step()
    gb0, om0 = tf.gradient(Rn, bn, X, lab, T)
    err = max(np.linalg.norm(gb - gb0) / np.linalg.norm(gb0), np.linalg.norm(om - om0) / np.linalg.norm(om0))
    rows.append((N, f"evaluation = at_risk + recheck + assemble {tag}", t_step, f"rel. diff vs tf.gradient {err:.1e}"))
    if not big:
        idx = np.sort(np.random.default_rng(0).choice(N, N // 100, replace=False))
        st2 = ps.full_pass(Rc, bc, X, lab, 2, backend=backend)
        rows.append((N, f"recheck of 1 % of the points {tag}",
                     best(lambda: ps.recheck(st2, idx, Rn, bn, X, lab, backend=backend), 3), ""))


def loop(N: int, steps: int, dt: float, share: float, backend: str, direct: bool) -> None:
    p = make_problem("paper-2d", n=N, seed=0)
    X, lab, T = p.X, p.labels, p.targets
    times = dict.fromkeys(("at_risk", "full pass", "recheck", "assemble", "update"), 0.0)
    R, b = p.R0.copy(), p.b0.copy()
    ps.full_pass(R, b, X[:10], lab[:10], 2, backend=backend)  # compile outside the clock
    t0 = time.perf_counter()
    st = ps.full_pass(R, b, X, lab, 2, backend=backend)
    times["full pass"] = time.perf_counter() - t0
    passes, rechecked, moved = 1, 0, 0
    for _ in range(steps):
        t = time.perf_counter()
        idx = ps.at_risk(st, R, b, limit=int(share * N))
        times["at_risk"] += time.perf_counter() - t
        t = time.perf_counter()
        if idx is None:
            moved += st.stats["moved_points"]
            st = ps.full_pass(R, b, X, lab, 2, backend=backend)
            passes += 1
            times["full pass"] += time.perf_counter() - t
        elif idx.size:
            ps.recheck(st, idx, R, b, X, lab, backend=backend)
            rechecked += idx.size
            times["recheck"] += time.perf_counter() - t
        t = time.perf_counter()
        _, gb, om = ps.assemble(st, R, b, T, backend=backend)
        times["assemble"] += time.perf_counter() - t
        t = time.perf_counter()
        R, b = lie_euler(R, b, gb, om, dt)
        times["update"] += time.perf_counter() - t
    total = time.perf_counter() - t0
    moved += st.stats["moved_points"]
    split = ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
    print(f"\nloop N={N} steps={steps} [{backend}], full pass above {share:.0%} at risk: {total:.2f} s "
          f"({split}); {passes} full passes, {rechecked} points re-checked, {moved} moved")
    if direct:
        Rd, bd = p.R0.copy(), p.b0.copy()
        t0 = time.perf_counter()
        for _ in range(steps):
            Rd, bd = lie_euler(Rd, bd, *tf.gradient(Rd, bd, X, lab, T), dt)
        td = time.perf_counter() - t0
        print(f"same loop on tf.gradient: {td:.2f} s ({td / total:.1f}x the pattern loop); final state "
              f"max|ΔR| {np.abs(R - Rd).max():.1e}, max|Δb| {np.abs(b - bd).max():.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--big", type=float, default=1e7, help="N of the per-step search test (0: skip)")
    ap.add_argument("--steps", type=int, default=400, help="steps to the collapsed state")
    ap.add_argument("--dt", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", default="numba,c")
    ap.add_argument("--loop", type=int, default=0, help="steps of the Lie–Euler loop (0: no loop)")
    ap.add_argument("--full-share", type=float, default=0.05)
    ap.add_argument("--direct", action="store_true", help="also time the loop on tf.gradient")
    args = ap.parse_args()
    backends = [x for x in args.backends.split(",") if x != "c" or tf.backends()["c"] == "available"]
    print(f"threads {tf.get_num_threads()}, backends {backends}")
    Rc, bc = collapsed_state(args.steps, args.dt)
    rows: list = []
    for backend in backends:
        per_call(int(args.n), False, Rc, bc, args, backend, rows)
    if args.big:
        per_call(int(args.big), True, Rc, bc, args, backends[0], rows)
    print(f"{'N':>9}  {'what':<52} {'time':>10}  note")
    for N, what, t, note in rows:
        print(f"{N:>9}  {what:<52} {t * 1e3:>8.3f} ms  {note}")
    if args.loop:
        for backend in backends:
            loop(int(args.n), args.loop, args.dt, args.full_share, backend, args.direct and backend == backends[0])


if __name__ == "__main__":
    main()
