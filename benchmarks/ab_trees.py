"""Per-call time of the public API in two source trees, in alternating fresh interpreters.

For refactors that must not slow anything down (issue 13): check out the old
commit in a worktree (with the same C extension copied in), then

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE [ROUNDS]

Each round runs one interpreter per tree (PYTHONPATH=tree); a case's time is
the minimum over its repetitions and over the rounds, the least disturbed by
other load.  Prints a Markdown table (ratio new/old) and the load average.
"""
import json, os, subprocess, sys, time
SNIPPET = r'''
import time, json, numpy as np, truncfast as tf
rng = np.random.default_rng(0)
out = {}
def prob(N, M, L, Q):
    R = np.linalg.qr(rng.standard_normal((L, M, M)))[0]
    return R, 0.3 * rng.standard_normal((L, M)), rng.standard_normal((N, M)), rng.integers(0, Q, N), rng.standard_normal((Q, M))
for (N, M, L, Q) in [(100, 2, 2, 2), (10**4, 8, 8, 4), (10**6, 8, 8, 8)]:
    R, b, X, labels, T = prob(N, M, L, Q)
    for bk in ("c", "numba"):
        f = lambda: tf.gradient(R, b, X, labels, T, backend=bk)
        f(); reps = 200 if N <= 10**4 else 7
        best = min((lambda t0: (f(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(reps))
        out[f"gradient N={N} M={M} L={L} {bk}"] = best
    if N <= 10**4:
        f = lambda: tf.integrate(R, b, X, labels, T, dt=0.01, steps=200, record_every=100)
        f(); out[f"integrate 200 steps N={N} M={M} L={L} auto"] = min((lambda t0: (f(), time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(5))
print(json.dumps(out))
'''
def run(tree):
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, cwd="/tmp")
    return json.loads(r.stdout.strip().splitlines()[-1])
old_tree, new_tree = sys.argv[1], sys.argv[2]
res = {"before": [], "after": []}
for i in range(int(sys.argv[3]) if len(sys.argv) > 3 else 3):
    res["before"].append(run(old_tree)); res["after"].append(run(new_tree))
keys = res["before"][0].keys()
print("| case | before (ms) | after (ms) | after/before |\n|---|---|---|---|")
for k in keys:
    b = min(r[k] for r in res["before"]); a = min(r[k] for r in res["after"])
    print(f"| {k} | {b*1e3:.4g} | {a*1e3:.4g} | {a/b:.2f} |")
print("load", os.getloadavg())
