#!/usr/bin/env python
"""Run the issue-6 benchmarks and regenerate the tables of benchmarks/README.md.

    python benchmarks/report.py            # full sizes (tens of minutes; run on a quiet machine)
    python benchmarks/report.py --quick    # N shrunk 10–100×, no torch.compile: checks the pipeline in < 2 min

One command does everything, in this order, each part in the same run:

1. machine description (CPU model, cores, memory, versions, load average);
2. the roofline of this machine (``_roofline.py``: matmul GFLOP/s and read
   bandwidth on 1 and 2 threads), measured again at the end (the best is kept);
3. ``bench_suite.py`` (pytest-benchmark, JSON): gradient evaluation for every
   method / size / data / form, and 1 vs 2 threads;
4. peak RSS growth of one evaluation at the issue's target sizes, each in a
   fresh interpreter (warm-up on a small problem first, so JIT and thread
   pools are not counted; a fresh process keeps the allocator's cache of the
   previous case out of the number);
5. ``bench_integrate.py`` (integrator step cost on tiny problems) and the
   first-call latency of ``bench_ccore.py`` (fresh interpreters; cold Numba
   compile only in the full run);
6. ``bench_engine.py`` (issue 14: ``tf.integrate(engine=...)`` against
   ``engine="direct"`` end to end — paper-2d and three clusters in R³ at
   N = 10⁶, random data, per-step time after collapse at 10⁷, Numba vs C);

then prints the ratios the issue asks for and rewrites the part of
``benchmarks/README.md`` between ``<!-- report:begin -->`` and
``<!-- report:end -->`` (``--no-readme`` to leave it alone, ``--json PATH`` to
keep every number).  Times are the minimum over rounds (the least disturbed
by other load); the tables say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
README = HERE / "README.md"
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
sys.path.insert(0, str(HERE))

METHOD_COLS = ["numpy", "numba", "c", "torch", "torch.compile"]
MB = 2.0**20


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- machine


def machine() -> dict:
    import numba
    import psutil

    import truncfast as tf

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            fl = next(line for line in fh if line.startswith("flags")).split()
        flags = "AVX-512" if "avx512f" in fl else "AVX2" if "avx2" in fl else ""
    except (OSError, StopIteration):
        pass
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "cpu": cpu + (f" ({flags})" if flags else ""), "cores": os.cpu_count(),
        "memory_GiB": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
        "torch": torch_v, "truncfast": f"{tf.__version__} ({commit})", "backends": tf.backends(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS",
                                           "TRUNCFAST_NUM_THREADS") if k in os.environ},
    }


# --------------------------------------------------------------------------- runs


def run_pytest(path: str, out_json: str, extra: list[str], env: dict) -> int:
    cmd = [sys.executable, "-m", "pytest", str(HERE / path), "--benchmark-enable", f"--benchmark-json={out_json}",
           "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", *extra]
    log("$ " + " ".join(cmd[2:]))
    r = subprocess.run(cmd, cwd=REPO, env=env)
    if r.returncode not in (0, 5):
        log(f"warning: pytest exited with {r.returncode}; the tables show what finished")
    return r.returncode


def load_bench(path: str) -> list[dict]:
    try:
        with open(path) as fh:
            return json.load(fh)["benchmarks"]
    except (OSError, ValueError, KeyError):
        return []


RSS_CHILD = r"""
import json, sys
sys.path.insert(0, {here!r})
import numpy as np
import truncfast as tf
import _suite
from _memory import peak_rss
kind, N, M, L, method, form = {case!r}
small = _suite.problem(kind, 2000, M, L)
fn = (lambda p: (lambda: tf.gradient(*p, form=form, backend=method))) if method in _suite.ENGINE else \
     (lambda p: _suite.torch_gradient(*p, compiled=method == "torch.compile"))
fn(small)(); fn(small)()  # JIT / thread pools / torch init
p = _suite.problem(kind, N, M, L)
f = fn(p)
with peak_rss(0.001) as mem:
    t0 = __import__("time").perf_counter(); f(); t = __import__("time").perf_counter() - t0
print(json.dumps({{"rss_growth_MB": mem.growth / 2**20, "seconds": t}}))
"""


def rss_fresh(case: tuple, env: dict) -> dict | None:
    """Peak RSS growth of one evaluation in a fresh interpreter (after a small warm-up)."""
    code = RSS_CHILD.format(here=str(HERE), case=case)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        log(f"warning: RSS child for {case} failed: {r.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def latencies(quick: bool) -> dict:
    import bench_ccore

    if quick:  # the default (already filled) Numba cache: warm only
        return {"c": bench_ccore.first_call("c"), "numba warm (cached)": bench_ccore.first_call("numba")}
    return bench_ccore.latencies(5)


# --------------------------------------------------------------------------- tables


def _fmt_t(t: float | None) -> str:
    if t is None:
        return "—"
    ms = t * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _index(benchmarks: list[dict]) -> dict:
    out = {}
    for b in benchmarks:
        e = b.get("extra_info", {})
        if b["name"].startswith("test_gradient") and "method" in e:
            key = (e["kind"], e["N"], e["M"], e["L"], e["method"], e["form"])
            out[key] = {"min": b["stats"]["min"], "median": b["stats"]["median"], **e}
    return out


def _exponent(Ns, ts) -> float | None:
    if len(Ns) < 2:
        return None
    return float(np.polyfit(np.log(Ns), np.log(ts), 1)[0])


def build(res: dict) -> tuple[str, list[str]]:
    """The markdown between the markers and the ratio lines."""
    import _suite

    quick = res["quick"]
    mach, roof = res["machine"], res["roofline"]
    idx = res["index"]
    L_ = []
    w = L_.append
    cmd = "python benchmarks/report.py" + (" --quick" if quick else "")
    w(f"_Generated by `{cmd}` on {res['date']} in {res['minutes']:.1f} min._")
    if quick:
        w("")
        w("**QUICK RUN: N shrunk 10–100×, no torch.compile, few rounds. A check of the pipeline, not the "
          "measurement of record — rerun `python benchmarks/report.py` on a quiet machine.**")
    w("")
    w(f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_GiB']} GiB; Python {mach['python']}, "
      f"NumPy {mach['numpy']}, Numba {mach['numba']}, PyTorch {mach['torch']}, truncfast {mach['truncfast']}. "
      f"Load average (1, 5, 15 min) at start {mach['load_avg_start']}, at end {res['load_avg_end']}. "
      f"Environment: {mach['env'] or 'no OMP_/NUMBA_/TRUNCFAST_ thread variables set'}.")
    w("")
    w("### Roofline of this machine")
    w("")
    w("| threads | matmul GFLOP/s | read GB/s |")
    w("|---|---|---|")
    for th in ("1", "2"):
        w(f"| {th} | {roof[th]['gflops']:.1f} | {roof[th]['read_GBs']:.1f} |")
    w("")
    w(f"{roof['method']}, best of a measurement at the start and one at the end of the run; single-thread copy {roof['copy_GBs']:.1f} GB/s (read + write). Cost model "
      "(docs/theory.md §10, the model's count, not the kernel's): 10·L·M²·N flops and 8·N·M bytes per evaluation, "
      "arithmetic intensity 1.25·L·M flop/byte; roof = min(peak, intensity × read bandwidth), each the best of "
      "1 and 2 threads. A fraction above 100 % means other load depressed the roof measurement.")
    w("")
    # gradient table per kind
    for kind in _suite.KINDS:
        w(f"### Gradient evaluation, {kind} data (ms, min over rounds, 2 threads)")
        w("")
        cols = METHOD_COLS + (["numba sep.", "c sep."] if kind == "clusters" else [])
        w("| N | M | L | " + " | ".join(cols) + " | numba ×torch | best roof fraction |")
        w("|" + "---|" * (len(cols) + 5))
        sizes = sorted({(k[1], k[2], k[3]) for k in res["planned"] if k[0] == kind}, key=lambda s: (s[1], s[2], s[0]))
        for N, M, L in sizes:
            cells = []
            for col in cols:
                method, form = (col.split()[0], "separated") if col.endswith("sep.") else (col, "general")
                key = (kind, N, M, L, method, form)
                if key in idx:
                    cells.append(_fmt_t(idx[key]["min"]))
                else:
                    what = res["planned"].get(key, ("", ""))[0]
                    cells.append(what if what in ("skip", "slow", "not run") else "—")
            tn = idx.get((kind, N, M, L, "numba", "general"))
            tt = idx.get((kind, N, M, L, "torch", "general"))
            ratio = f"{tt['min'] / tn['min']:.1f}" if tn and tt else "—"
            fr = []
            for m in ("numba", "c"):
                r = idx.get((kind, N, M, L, m, "general"))
                if r:
                    bound = roofline(res, N, M, L)
                    fr.append(r["gflops"] / bound)
            frac = f"{max(fr):.0%}" if fr else "—"
            w(f"| {N:.0e} | {M} | {L} | " + " | ".join(cells) + f" | {ratio} | {frac} |")
        w("")
    skipped = sorted({f"{k[4]} at N = {k[1]:.0e}, M = {k[2]}, L = {k[3]} ({why})"
                      for k, (what, why) in res["planned"].items() if what == "skip"})
    if skipped:
        w("\"skip\" (decided by `_suite.plan`, same for both data kinds): " + "; ".join(skipped) + ".")
        w("")
    if any(what == "not run" for what, _ in res["planned"].values()):
        w("\"not run\": marked `slow` (estimated > "
          f"{_suite.SLOW_S:g} s per evaluation) and left out of the quick run, or torch.compile in a run "
          "without it.")
        w("")
    # roofline detail
    w("### Achieved fraction of the roofline (numba and c, general form, random data, 2 threads)")
    w("")
    w("| N | M | L | intensity flop/B | roof GFLOP/s | numba GFLOP/s | numba GB/s | numba % roof | c GFLOP/s | c % roof |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for (kind, N, M, L, method, form), r in sorted(idx.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1])):
        if kind != "random" or method != "numba" or form != "general":
            continue
        bound = roofline(res, N, M, L)
        c = idx.get((kind, N, M, L, "c", form))
        cg = f"{c['gflops']:.2f} | {c['gflops'] / bound:.1%}" if c else "— | —"
        w(f"| {N:.0e} | {M} | {L} | {1.25 * L * M:.1f} | {bound:.1f} | {r['gflops']:.2f} | {r['gbytes_per_s']:.2f} | "
          f"{r['gflops'] / bound:.1%} | {cg} |")
    w("")
    # scaling
    w("### Scaling in N (least-squares exponent k of time ∝ N^k over the grid, general form; 1 = linear)")
    w("")
    w("| data | M | L | numba k | c k | torch k | N range |")
    w("|---|---|---|---|---|---|---|")
    for kind in _suite.KINDS:
        for M, L in _suite.SHAPES:
            ks, rng = [], ""
            for m in ("numba", "c", "torch"):
                pts = sorted((k[1], v["min"]) for k, v in idx.items()
                             if k[0] == kind and k[2] == M and k[3] == L and k[4] == m and k[5] == "general"
                             and k[1] in _suite.GRID_N)
                e = _exponent([p[0] for p in pts], [p[1] for p in pts])
                ks.append("—" if e is None else f"{e:.2f}")
                if m == "numba" and pts:
                    rng = f"{pts[0][0]:.0e}–{pts[-1][0]:.0e}"
            w(f"| {kind} | {M} | {L} | " + " | ".join(ks) + f" | {rng} |")
    w("")
    th = res["threads"]
    if th:
        w(f"### Threads (random data, N = {th['N']:.0e}, M = 8, L = 8; min over rounds)")
        w("")
        w("| backend | 1 thread ms | 2 threads ms | speed-up | parallel efficiency |")
        w("|---|---|---|---|---|")
        for bk, (t1, t2) in th["times"].items():
            w(f"| {bk} | {t1 * 1e3:.3g} | {t2 * 1e3:.3g} | {t1 / t2:.2f} | {t1 / (2 * t2):.0%} |")
        w("")
    w("### Peak RSS growth of one evaluation (fresh interpreter, after a warm-up on 2000 points)")
    w("")
    w("| target | data | N | M | L | method | form | RSS growth MB | time s |")
    w("|---|---|---|---|---|---|---|---|---|")
    for row in res["rss"]:
        w(f"| {row['target']} | {row['kind']} | {row['N']:.0e} | {row['M']} | {row['L']} | {row['method']} | "
          f"{row['form']} | {row['rss_growth_MB']:.1f} | {row['seconds']:.3g} |")
    w("")
    if res["integrate"]:
        w("### Integrator step cost (bench_integrate.py: N = 100, M = 2, L = 2, dt = 0.01)")
        w("")
        w("| case | µs per step (min) | µs per step (median) |")
        w("|---|---|---|")
        for b in res["integrate"]:
            e = b.get("extra_info", {})
            if "us_per_step" in e:
                w(f"| {b['name']} | {e['us_per_step_min']:.1f} | {e['us_per_step']:.1f} |")
        w("")
    if res["latency"]:
        w("### First-call latency (fresh interpreter; N = 1000, M = 8, L = 4)")
        w("")
        keys = list(next(iter(res["latency"].values())).keys())
        w("| backend | " + " | ".join(f"{k} s" for k in keys) + " |")
        w("|---|" + "---|" * len(keys))
        for name, r in res["latency"].items():
            w(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
        w("")
    for line in engine_lines(res.get("engines") or []):
        w(line)
    ratios = ratio_lines(res)
    w("### The issue's targets")
    w("")
    for line in ratios:
        w(f"* {line}")
    return "\n".join(L_) + "\n", ratios


def roofline(res: dict, N: int, M: int, L: int) -> float:
    from _roofline import roofline_bound
    import _suite

    # the best the machine showed on 1 or 2 threads (on a loaded machine 2 threads can measure lower)
    r = res["roofline"]
    peak = max(r["1"]["gflops"], r["2"]["gflops"])
    bw = max(r["1"]["read_GBs"], r["2"]["read_GBs"])
    return roofline_bound(_suite.flops(N, M, L), _suite.bytes_read(N, M), peak, bw)


def ratio_lines(res: dict) -> list[str]:
    import _suite

    idx = res["index"]
    T = _suite.TARGETS
    rss = {(r["target"], r["method"], r["form"]): r for r in res["rss"]}
    out = []

    def t(kind, size, method, form="general"):
        r = idx.get((kind, *size, method, form))
        return None if r is None else r["min"]

    def fmt(a, b):
        return "n/a" if a is None or b is None else f"{b / a:.1f}×"

    def mb(target, method, form="general"):
        r = rss.get((target, method, form))
        return "n/a" if r is None else f"{r['rss_growth_MB']:.1f} MB"

    s = T["i"]
    out.append(f"(i) N = {s[0]:.0e}, M = {s[1]}, L = {s[2]}, random: numba vs PyTorch eager "
               f"{fmt(t('random', s, 'numba'), t('random', s, 'torch'))} (c {fmt(t('random', s, 'c'), t('random', s, 'torch'))}; "
               f"target ≥ 15×); RSS growth numba {mb('i', 'numba')}, c {mb('i', 'c')}, torch {mb('i', 'torch')} "
               f"(target ≤ 32 MB)")
    ts = [x for x in (t('clusters', s, 'numba'), t('clusters', s, 'numba', 'separated'),
                      t('clusters', s, 'c'), t('clusters', s, 'c', 'separated')) if x is not None]
    best = min(ts) if ts else None
    out.append(f"(ii) same size, cluster-separated: vs PyTorch eager: numba general "
               f"{fmt(t('clusters', s, 'numba'), t('clusters', s, 'torch'))}, numba separated "
               f"{fmt(t('clusters', s, 'numba', 'separated'), t('clusters', s, 'torch'))}, best engine "
               f"{fmt(best, t('clusters', s, 'torch'))} (target ≥ 50×)")
    s = T["iii"]
    tc = t('random', s, 'torch.compile')
    out.append(f"(iii) N = {s[0]:.0e}, M = {s[1]}, L = {s[2]}: numba {fmt(t('random', s, 'numba'), tc)}, "
               f"c {fmt(t('random', s, 'c'), tc)} faster than torch.compile"
               + (" (torch.compile not run)" if tc is None else "") + " (target > 1×); vs eager: numba "
               f"{fmt(t('random', s, 'numba'), t('random', s, 'torch'))}")
    s = T["iv"]
    done = [m for m in ("numba", "c") if t('random', s, m) is not None]
    out.append(f"(iv) N = {s[0]:.0e}, M = {s[1]}, L = {s[2]}: completes with {', '.join(done) or 'nothing'} "
               f"(numba {_fmt_t(t('random', s, 'numba'))} ms, c {_fmt_t(t('random', s, 'c'))} ms); RSS growth "
               f"numba {mb('iv', 'numba')}, c {mb('iv', 'c')} (target ≤ 32 MB)")
    if res["quick"]:
        out = [f"[quick run: sizes /100] {x}" for x in out]
    return out


def engines(quick: bool, env: dict) -> list:
    """Run ``bench_engine.py`` in a fresh interpreter and return its JSON results."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "engines.json")
        cmd = [sys.executable, str(HERE / "bench_engine.py"), "--json", out] + (["--quick"] if quick else [])
        log("$ " + " ".join(cmd[1:]))
        r = subprocess.run(cmd, cwd=REPO, env=env)
        if r.returncode:
            log(f"warning: bench_engine.py exited with {r.returncode}")
        try:
            with open(out) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return []


def engine_lines(rows: list) -> list[str]:
    """The engine table (issue 14) and its targets."""
    w = []
    by = {r["case"]: r for r in rows}
    if any("times" in r for r in rows):
        w += ["### Engines (bench_engine.py: whole tf.integrate runs against engine=\"direct\")", "",
              "| case | N | steps | direct | auto | moments | auto vs direct | target |", "|---|---|---|---|---|---|---|---|"]
        goal = {"paper2d": "≥ 20×", "r3": "≥ 5×", "r8": "≈ 1× (per point must stay)",
                "random": "≥ 0.91× (within 10 %)"}
        for r in rows:
            if "times" in r:
                t = r["times"]
                mom = f"{t['moments']:.2f} s" if "moments" in t else "–"
                w.append(f"| {r['case']} | {r['N']:.0e} | {r['steps']} | {t['direct']:.2f} s | {t['auto']:.2f} s | "
                         f"{mom} | {r['speedup_auto']:.2f}× | {goal.get(r['case'], '')} |")
        w.append("")
    if "collapsed" in by:
        c = by["collapsed"]
        w.append(f"* per-step time after collapse, N = {c['N']:.0e} in the plane: {c['per_step_s'] * 1e3:.3f} ms "
                 "(goal < 1 ms)")
    if "numba_vs_c" in by:
        c = by["numba_vs_c"]
        w.append(f"* gradient at N = {c['N']:.0e}, M = L = 8: Numba {c['numba'] * 1e3:.0f} ms, C {c['c'] * 1e3:.0f} ms, "
                 f"ratio {c['ratio']:.2f} (goal ≤ 3)")
    return w + ([""] if w else [])


def write_readme(text: str) -> None:
    old = README.read_text()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n## Issue 6: engine vs PyTorch, roofline, scaling (generated)\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=HERE, prefix=".README-")
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    os.replace(tmp, README)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, no torch.compile, < 2 min")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite benchmarks/README.md")
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    ap.add_argument("--markdown", default=None, help="also write the generated README block to this file")
    ap.add_argument("--skip-compile", action="store_true", help="no torch.compile (it compiles for minutes)")
    ns = ap.parse_args(argv)
    t_start = time.time()
    env = dict(os.environ)
    if ns.quick:
        env["TRUNCFAST_BENCH_QUICK"] = "1"
        os.environ["TRUNCFAST_BENCH_QUICK"] = "1"
    import _roofline
    import _suite

    res: dict = {"quick": ns.quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res["machine"] = machine()
    log(f"machine: {res['machine']['cpu']}, load {res['machine']['load_avg_start']}")
    roof = _roofline.measure(ns.quick)
    res["roofline"] = {str(k): v for k, v in roof.items()}
    log(f"roofline: {res['roofline']['1']}, {res['roofline']['2']}")

    no_compile = ns.quick or ns.skip_compile
    planned = {}
    for case in _suite.cases():
        what, why = _suite.plan(case)
        if ns.quick and what == "slow":
            what = "not run"
            why = why + " (slow; full run only)"
        if no_compile and case[4] == "torch.compile":
            what, why = "not run", "torch.compile not run" + (" in --quick" if ns.quick else " (--skip-compile)")
        planned[case] = (what, why)
    res["planned"] = planned
    with tempfile.TemporaryDirectory() as tmp:
        sel = []
        if ns.quick:
            sel += ["-m", "not slow"]
        if no_compile:
            sel += ["-k", "not compile"]
        suite_json = os.path.join(tmp, "suite.json")
        run_pytest("bench_suite.py", suite_json, sel, env)
        benches = load_bench(suite_json)
        integ_json = os.path.join(tmp, "integrate.json")
        run_pytest("bench_integrate.py", integ_json, ["-k", "compiled_small"] if ns.quick else [], env)
        res["integrate"] = load_bench(integ_json)
    res["index"] = _index(benches)
    times = {}
    for b in benches:
        e = b.get("extra_info", {})
        if b["name"].startswith("test_threads") and "method" in e:
            times.setdefault(e["method"], {})[e["threads"]] = b["stats"]["min"]
            res["threads_N"] = e["N"]
    res["threads"] = ({"N": res["threads_N"], "times": {k: (v[1], v[2]) for k, v in times.items() if 1 in v and 2 in v}}
                      if times else None)

    log("peak RSS growth in fresh interpreters")
    rss = []
    targets = [("i", "random", "general"), ("ii", "clusters", "general"), ("ii", "clusters", "separated"),
               ("iii", "random", "general"), ("iv", "random", "general")]
    if ns.quick:  # each case is a fresh interpreter importing torch: keep the two the issue bounds
        targets = [targets[0], targets[-1]]
    for target, kind, form in targets:
        N, M, L = _suite.TARGETS["i" if target == "ii" else target]
        for method in ("numba", "c", "torch") if form == "general" else ("numba", "c"):
            case = (kind, N, M, L, method, form)
            if _suite.plan(case)[0] == "skip" or (target == "iv" and method == "torch"):
                continue
            r = rss_fresh(case, env)
            if r:
                rss.append({"target": target, "kind": kind, "N": N, "M": M, "L": L, "method": method, "form": form, **r})
    res["rss"] = rss
    log("first-call latency")
    try:
        res["latency"] = latencies(ns.quick)
    except Exception as exc:  # noqa: BLE001 - report what failed, keep the rest
        log(f"warning: latency measurement failed: {exc}")
        res["latency"] = {}
    log("engines (bench_engine.py, a fresh interpreter)")
    res["engines"] = engines(ns.quick, env)
    # the roof again at the end: other load only ever lowers a measured roof, so keep the best of the two
    log("roofline again")
    again = _roofline.measure(ns.quick)
    for th in ("1", "2"):
        for k in ("gflops", "read_GBs"):
            res["roofline"][th][k] = max(res["roofline"][th][k], again[int(th)][k])
    res["roofline"]["copy_GBs"] = max(res["roofline"]["copy_GBs"], again["copy_GBs"])
    res["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["minutes"] = (time.time() - t_start) / 60
    text, ratios = build(res)
    print()
    for line in ratios:
        print(line)
    print(f"(load average at start {res['machine']['load_avg_start']}, at end {res['load_avg_end']}; "
          f"{res['minutes']:.1f} min)")
    if not ns.no_readme:
        write_readme(text)
        log(f"rewrote {README.relative_to(REPO)} between {BEGIN} and {END}")
    if ns.markdown:
        Path(ns.markdown).write_text(text)
    if ns.json:
        out = dict(res)
        out["index"] = [{"case": list(k), **v} for k, v in res["index"].items()]
        out["planned"] = [{"case": list(k), "plan": v[0], "why": v[1]} for k, v in res["planned"].items()]
        Path(ns.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
