"""Per-step overhead of the dask engine against the local engine (issue 8).

Not part of any test run.  Run as a script (it starts its own LocalCluster):

    python benchmarks/bench_distributed.py                      # N = 1e6 and 1e7
    python benchmarks/bench_distributed.py --sizes 1e6 --rounds 3

Measures, with W local worker processes of one thread each (default 2):

1. one gradient evaluation (one step's right-hand side) with the local numba
   engine on W threads and with the dask engine on W workers, both
   reductions; the data are generated and persisted on the workers (never
   shipped from the client) and gathered once for the local run;
2. integration steps (``tf.integrate``, lie-euler, records only at the ends);
3. the inputs of the cost model in docs/distributed.md: the kernel
   throughput θ (points per second per core, one block in one thread) and
   the reduction latency — time of a step on tiny blocks (64 rows) as a
   function of the number of blocks B, fitted to ``a + h·B`` for both
   reductions (h: the cost of one more block, a: the fixed cost of a step).

Prints a table and, with ``--json PATH``, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def _median_time(fn, rounds: int) -> float:
    fn()  # warm up: JIT cache loads, first transfers
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _problem(N: int, M: int, L: int, Q: int, rows: int, seed: int = 0):
    import dask
    import dask.array as da

    rng = np.random.default_rng(seed)
    A = rng.standard_normal((L, M, M))
    Qm, Rm = np.linalg.qr(A)
    R = Qm * np.sign(np.einsum("lii->li", Rm))[:, None, :]
    b = 0.5 * rng.standard_normal((L, M))
    targets = rng.standard_normal((Q, M))
    drng = da.random.default_rng(seed)
    X = drng.standard_normal((N, M), chunks=(rows, M))
    labels = drng.integers(0, Q, N, chunks=rows)
    X, labels = dask.persist(X, labels)
    return R, b, X, labels, targets


def bench_steps(client, N: int, M: int, L: int, Q: int, rows: int, rounds: int, workers: int) -> dict:
    import truncfast as tf
    from truncfast import _config
    from truncfast._backends import dask_backend as _distributed

    R, b, Xd, ld, targets = _problem(N, M, L, Q, rows)
    Xd, ld = Xd.persist(), ld.persist()
    from distributed import wait

    wait([Xd, ld])
    X, labels = Xd.compute(), ld.compute()  # the local engine's copy (benchmark only)
    tf.set_num_threads(workers)
    out = {"N": N, "M": M, "L": L, "rows_per_block": rows, "blocks": len(Xd.chunks[0])}
    out["local_gradient_s"] = _median_time(lambda: tf.gradient(R, b, X, labels, targets, backend="numba"), rounds)
    W0, bo0, Y0 = np.zeros((0, M)), np.zeros(0), np.zeros((Q, 0))
    T = targets
    for red in ("ordered", "tree"):
        eng = _distributed.DaskBackend(red)
        Xp = eng.prepare_X(Xd, M)
        lp = eng.prepare_labels(ld, Xp, Q)
        out[f"dask_{red}_gradient_s"] = _median_time(
            lambda: eng.general(R, b, Xp, lp, T, W0, bo0, Y0, False, True), rounds)
    steps = 3
    t0 = time.perf_counter()
    tf.integrate(R, b, X, labels, targets, dt=0.1, steps=steps, record_every=steps, backend="numba")
    out["local_step_s"] = (time.perf_counter() - t0) / (steps + 1)  # steps + 1 evaluations
    t0 = time.perf_counter()
    tf.integrate(R, b, Xd, ld, targets, dt=0.1, steps=steps, record_every=steps)
    out["dask_step_s"] = (time.perf_counter() - t0) / (steps + 1)
    assert _config.DISTRIBUTED_REDUCTION == "ordered"
    del X, labels
    client.cancel([Xd, ld])
    return out


def bench_kernel(M: int, L: int, Q: int, rows: int, rounds: int) -> dict:
    """θ: points per second of the per-block map (one block, one thread, in this process)."""
    from truncfast._backends import dask_tasks as _tasks
    from truncfast._kernels import numba_kernels as k

    rng = np.random.default_rng(1)
    A = rng.standard_normal((L, M, M))
    R = np.linalg.qr(A)[0]
    b = 0.5 * rng.standard_normal((L, M))
    T = rng.standard_normal((Q, M))
    X = rng.standard_normal((rows, M))
    labels = rng.integers(0, Q, rows)
    state = (R, k.transfer_matrices(R), b, T, np.zeros((0, M)), np.zeros(0), np.zeros((Q, 0)))
    t = _median_time(lambda: _tasks._partials_general(X, labels, state, 0, False, True, False, False), rounds)
    return {"kernel_points_per_s_per_core": rows / t, "kernel_block_s": t, "rows": rows}


def bench_reduction(M: int, L: int, Q: int, rounds: int, blocks=(2, 8, 32, 128)) -> dict:
    """Step time on tiny blocks (one chunk of 64 rows each) against the number of blocks B."""
    from truncfast._backends import dask_backend as _distributed

    rows = 64
    res: dict = {"blocks": list(blocks)}
    for red in ("ordered", "tree"):
        ts = []
        for B in blocks:
            R, b, Xd, ld, T = _problem(B * rows, M, L, Q, rows, seed=2)
            eng = _distributed.DaskBackend(red)
            Xp = eng.prepare_X(Xd, M)
            lp = eng.prepare_labels(ld, Xp, Q)
            W0, bo0, Y0 = np.zeros((0, M)), np.zeros(0), np.zeros((Q, 0))
            ts.append(_median_time(lambda: eng.general(R, b, Xp, lp, T, W0, bo0, Y0, False, True), rounds))
        # on tiny blocks everything is overhead: the slope is the cost of one more block
        # (its map task plus its share of the reduction), the intercept the fixed cost of a step
        slope, icpt = np.polyfit(np.array(blocks, float), ts, 1)
        res[red] = {"times_s": ts, "per_block_s": float(slope), "fixed_s": float(icpt)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e6,1e7", help="comma-separated N values")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--M", type=int, default=8)
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--Q", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1 << 18, help="rows per dask block (multiple of CHUNK_SIZE)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--memory", default="4GiB", help="memory limit per worker")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    os.environ.setdefault("TRUNCFAST_NUM_THREADS", "1")  # workers: one thread each, inherited by spawn
    results: dict = {"workers": args.workers, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit=args.memory,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("truncfast._kernels.numba_kernels"))
        results["kernel"] = bench_kernel(args.M, args.L, args.Q, args.rows, args.rounds)
        print("kernel", results["kernel"], flush=True)
        results["reduction"] = bench_reduction(args.M, args.L, args.Q, args.rounds)
        print("reduction", results["reduction"], flush=True)
        results["steps"] = []
        for s in filter(None, args.sizes.split(",")):
            N = int(float(s))
            r = bench_steps(client, N, args.M, args.L, args.Q, args.rows, args.rounds, args.workers)
            results["steps"].append(r)
            print("steps", r, flush=True)
    results["load_avg_end"] = os.getloadavg()
    print()
    print(f"{'N':>10} {'blocks':>6} {'local grad':>11} {'dask ordered':>13} {'dask tree':>10} "
          f"{'local step':>11} {'dask step':>10} {'overhead':>9}")
    for r in results["steps"]:
        ov = r["dask_ordered_gradient_s"] - r["local_gradient_s"]
        print(f"{r['N']:>10} {r['blocks']:>6} {r['local_gradient_s']:>10.3f}s {r['dask_ordered_gradient_s']:>12.3f}s "
              f"{r['dask_tree_gradient_s']:>9.3f}s {r['local_step_s']:>10.3f}s {r['dask_step_s']:>9.3f}s {ov:>8.3f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
