"""Pattern form (docs/theory.md §11): full pass, assembly and at-risk search against the per-point gradient.

Run:  python benchmarks/bench_patterns.py            (N = 10⁶, and 10⁷ for the per-step search)
      python benchmarks/bench_patterns.py --big 0    (skip N = 10⁷)

Scenario: the paper's two clusters in the plane (``truncfast.data.make_problem("paper-2d")``,
L = 2, M = 2).  The "collapsed" state is reached by integrating the full flow
(Lie–Euler, dt = 0.05) for ``--steps`` steps on a 2·10⁴-point sample of the same
distribution; the per-step numbers then use the state one more Lie–Euler step
later, evaluated on all N points.  Times are the minimum over the repeats
(the machine is shared); thread count: ``tf.get_num_threads()``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.linalg import expm

import truncfast as tf
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


def lie_euler(R, b, X, labels, T, dt):
    gb, om = tf.gradient(R, b, X, labels, T)
    return np.array([expm(-dt * o) @ r for o, r in zip(om, R)]), b - dt * gb


def collapsed_state(steps: int, dt: float):
    small = make_problem("paper-2d", n=20000, seed=1)
    tr = tf.integrate(small.R0, small.b0, small.X, small.labels, small.targets, dt=dt, steps=steps,
                      record_every=steps)
    return tr.R, tr.b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--big", type=float, default=1e7, help="N of the per-step search test (0: skip)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--dt", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"threads {tf.get_num_threads()}, backends {tf.backends()}")
    Rc, bc = collapsed_state(args.steps, args.dt)
    rows = []
    for N in [int(args.n)] + ([int(args.big)] if args.big else []):
        p = make_problem("paper-2d", n=N, seed=0)
        X, lab, T = p.X, p.labels, p.targets
        Rn, bn = lie_euler(Rc, bc, X, lab, T, args.dt)  # one step later, on all N points
        big = N != int(args.n)
        reps = 1 if big else args.repeats
        if not big:
            t_grad = best(lambda: tf.gradient(Rc, bc, X, lab, T), reps)
            t_fp0 = best(lambda: ps.full_pass(p.R0, p.b0, X, lab, 2), reps)
            rows.append((N, "tf.gradient (per-point, backend auto)", t_grad, ""))
            rows.append((N, "full pass, initial state", t_fp0, ""))
        t0 = time.perf_counter()
        st = ps.full_pass(Rc, bc, X, lab, 2)
        t_fp = time.perf_counter() - t0
        if not big:
            t_fp = best(lambda: ps.full_pass(Rc, bc, X, lab, 2), reps)
            st = ps.full_pass(Rc, bc, X, lab, 2)
        rows.append((N, f"full pass, collapsed state ({st.num_groups} groups)", t_fp,
                     f"{st.nbytes() / N:.1f} B/point"))
        t_asm = best(lambda: ps.assemble(st, Rn, bn, T), 200)
        rows.append((N, "assemble (loss, grad_b, omega)", t_asm, ""))
        risk = ps.at_risk(st, Rn, bn)
        t_risk = best(lambda: ps.at_risk(st, Rn, bn), 200)
        rows.append((N, "at_risk, one step later", t_risk, f"{risk.size} at risk"))
        # one evaluation after collapse: search, recheck what is at risk, assemble
        def step():
            idx = ps.at_risk(st, Rn, bn)
            if idx.size:
                ps.recheck(st, idx, Rn, bn, X, lab)
            return ps.assemble(st, Rn, bn, T)

        t_step = best(step, 200)
        loss, gb, om = step()
        gb0, om0 = tf.gradient(Rn, bn, X, lab, T)
        err = max(np.linalg.norm(gb - gb0) / np.linalg.norm(gb0), np.linalg.norm(om - om0) / np.linalg.norm(om0))
        rows.append((N, "evaluation = at_risk + recheck + assemble", t_step, f"rel. err vs tf.gradient {err:.1e}"))
        if not big:
            # the recheck of a realistic batch (1 % of the points) for scale
            idx = np.sort(np.random.default_rng(0).choice(N, N // 100, replace=False))
            st2 = ps.full_pass(Rc, bc, X, lab, 2)
            t_re = best(lambda: ps.recheck(st2, idx, Rn, bn, X, lab), 3)
            rows.append((N, "recheck of 1 % of the points", t_re, ""))
        del st, p, X
    print(f"{'N':>9}  {'what':<48} {'time':>10}  note")
    for N, what, t, note in rows:
        print(f"{N:>9}  {what:<48} {t * 1e3:>8.3f} ms  {note}")


if __name__ == "__main__":
    main()
