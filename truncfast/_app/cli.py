"""The ``truncfast`` command line: ``demo``, ``run``, ``plot``, ``info``, ``compare``.

Exit status: 0 on success; 2 for usage, configuration and data errors (one line,
``error: ...``, naming the offending config key or file); 1 for failures while
running (divergence, unstable steps with ``on_instability = "raise"``, a
separation error); 130 when interrupted — the run directory then holds the
partial results and a checkpoint, and ``truncfast run --resume DIR`` continues.
Warnings are one ``warning: ...`` line each; under ``--quiet`` only truncfast's
own (unstable steps, a bad environment variable) are shown.  ``python -m truncfast`` and ``python -m truncfast.cli``
are the same program.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Sequence

from truncfast import _config

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DEMO_TITLE = ("Two clusters in the plane, opposite frames R = (I, −I) (docs/theory.md §7). Left: the biases-only flow collapses\n"
              "both clusters onto their targets (Prop. 4.2). Right: the full flow turns R₂; cluster 2 stalls on a segment through ỹ₂.")


def _out_args(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--out", metavar="DIR", default=default,
                   help=f"run directory to write (default: {default or 'runs/<config name>'})")
    p.add_argument("--force", action="store_true", help="reuse DIR even if it is not empty (overwrites its files)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no messages")


def build_parser() -> argparse.ArgumentParser:
    from truncfast._version import __version__

    parser = argparse.ArgumentParser(
        prog="truncfast",
        description="Simulate the effective gradient flow of deep ReLU networks in input space "
                    "(dynamical truncation of training data, T. Chen, arXiv:2501.07400).",
    )
    parser.add_argument("--version", action="version", version=f"truncfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run the paper's two-cluster collapse (biases-only and full flow) with figures",
                       description="Two clusters in the plane with opposite frames R = (I, -I) (docs/theory.md §7): "
                                   "the biases-only flow collapses both clusters onto their targets "
                                   "(Prop. 4.2); the full flow turns R_2 and stalls on a segment.")
    _out_args(p, "runs/demo")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="flow steps of each run (default 2000, i.e. flow time s = 100 at dt = 0.05)")

    p = sub.add_parser("run", help="run the simulation a TOML config describes (docs/config.md)",
                       description="Run the simulation CONFIG.toml describes into a run directory, with "
                                   "checkpoints (integrate.checkpoint_every); or continue an interrupted run "
                                   "with --resume DIR.")
    p.add_argument("config", metavar="CONFIG.toml", nargs="?", help="configuration file")
    _out_args(p, None)
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the interrupted run in DIR from its checkpoint (its own config.toml)")

    p = sub.add_parser("plot", help="redraw the figures of a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by 'truncfast run' or 'truncfast demo'")
    p.add_argument("--quiet", "-q", action="store_true", help="no messages")

    sub.add_parser("info", help="version, backends, threads, Numba compilation cache")

    p = sub.add_parser("compare", help="effective flow vs PyTorch autograd and backprop on the same data (needs torch)",
                       description="Train the same network three ways from the same state: the effective flow, "
                                   "autograd gradient descent in (R, b), and ordinary backprop in layer weights; "
                                   "write compare.json, compare.npz and compare.png.")
    _out_args(p, "runs/compare")
    p.add_argument("--source", default="clusters", help="data source of truncfast.data.make_problem (default clusters)")
    p.add_argument("--n", type=int, default=2000, help="number of points (default 2000)")
    p.add_argument("--dim", type=int, default=4, help="input width M (default 4)")
    p.add_argument("--clusters", type=int, default=4, help="clusters Q = layers L (default 4)")
    p.add_argument("--layers", type=int, default=0, help="hidden layers L (default 0: L = Q)")
    p.add_argument("--init", default="auto", help="initial frames: auto, separated, toward, random (default auto)")
    p.add_argument("--spread", type=float, default=1.0, help="cluster std (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=200, help="steps of each trainer (default 200)")
    p.add_argument("--dt", type=float, default=0.05, help="flow step = learning rate in (R, b) (default 0.05)")
    p.add_argument("--lr", type=float, default=None, help="backprop learning rate (default: dt/5)")
    p.add_argument("--threshold", type=float, default=None, help="loss threshold (default: 10%% of the initial loss)")
    p.add_argument("--backend", default="auto", help="truncfast backend (default auto)")
    return parser


def _log(quiet: bool):
    def log(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    return log


def cmd_run(args: argparse.Namespace) -> int:
    from truncfast._app import config_file as _config_file
    from truncfast._app import runs as _runs

    if args.resume is not None:
        if args.config is not None or args.out is not None or args.force:
            raise _runs.RunDirError("--resume DIR continues the run in DIR with its own config.toml; give no "
                                    "CONFIG, --out or --force with it")
        d = args.resume
        if not os.path.isdir(d):
            raise _runs.RunDirError(f"run directory {d!r} does not exist")
        if not os.path.isfile(os.path.join(d, "config.toml")):
            raise _runs.RunDirError(f"{d!r} is not a run directory (no config.toml)")
        cfg = _config_file.load(os.path.join(d, "config.toml"))
        _runs.execute(cfg, d, quiet=args.quiet, log=_log(args.quiet), resume=True)
        _log(args.quiet)(f"results in {os.path.abspath(d)}")
        return EXIT_OK
    if args.config is None:
        raise _runs.RunDirError("give a CONFIG.toml to run, or --resume DIR to continue an interrupted run")
    cfg = _config_file.load(args.config)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    _runs.execute(cfg, out, force=args.force, quiet=args.quiet, log=_log(args.quiet),
                  header=f"resolved from {os.path.abspath(args.config)} by truncfast run")
    _log(args.quiet)(f"results in {os.path.abspath(out)}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from truncfast._app import config_file as _config_file
    from truncfast._app import plots as _plots
    from truncfast._app import runs as _runs

    log = _log(args.quiet)
    configs = {}
    for name, overrides in _config_file.DEMO_RUNS.items():
        if args.steps is not None:
            overrides = {**overrides, "integrate": {**overrides["integrate"], "steps": args.steps}}
        configs[name] = _config_file.resolve(overrides)  # config errors before anything is written
    out = _runs.prepare_dir(args.out, args.force)
    results = {}
    for name, cfg in configs.items():
        log(f"--- {name.replace('_', ' ')} ---")
        results[name] = _runs.execute(cfg, os.path.join(out, name), force=True, quiet=args.quiet, log=log,
                                      header=f"truncfast demo: {name.replace('_', ' ')}")
    runs = {}
    for name in results:
        d = os.path.join(out, name)
        runs[name] = (_load_traj(d), _plots.load_figdata(os.path.join(d, "figdata.npz")))
    _plots.draw_overview(os.path.join(out, "overview.png"), runs, title=DEMO_TITLE)
    _runs.write_text(os.path.join(out, "summary.json"), json.dumps(results, indent=2) + "\n")
    log(f"results in {out}: overview.png, and one run directory per flow ({', '.join(results)})")
    return EXIT_OK


def _load_traj(run_dir: str):
    from truncfast._integrate.trajectory import Trajectory

    return Trajectory.load(os.path.join(run_dir, "trajectory.npz"))


def cmd_plot(args: argparse.Namespace) -> int:
    from truncfast._app import plots as _plots
    from truncfast._app.runs import RunDirError

    d = args.run_dir
    if not os.path.isdir(d):
        raise RunDirError(f"run directory {d!r} does not exist")
    subruns = [s for s in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, s, "trajectory.npz"))]
    if os.path.isfile(os.path.join(d, "trajectory.npz")):
        written = _plots.draw_run(d)
    elif subruns:  # a demo directory: redraw every run and the overview
        written, runs = [], {}
        for s in subruns:
            sd = os.path.join(d, s)
            written += _plots.draw_run(sd)
            runs[s] = (_load_traj(sd), _plots.load_figdata(os.path.join(sd, "figdata.npz")))
        written.append(_plots.draw_overview(os.path.join(d, "overview.png"), runs,
                                              title=DEMO_TITLE if set(runs) == {"biases_only", "full_flow"} else None))
    else:
        raise RunDirError(f"{d!r} is not a run directory (no trajectory.npz)")
    _log(args.quiet)("wrote " + ", ".join(os.path.relpath(p, d) for p in written))
    return EXIT_OK


def _numba_cache_report() -> list[str]:
    """Which Numba kernels are compiled in this process and which have an on-disk cache.

    Reads the dispatchers' cache index files (``<module>.<kernel>-<line>.py<ver>.nbi``):
    a cached kernel loads in milliseconds instead of compiling for seconds.
    """
    import importlib
    import pkgutil

    lines = []
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for info in sorted(pkgutil.walk_packages([pkg_dir], prefix="truncfast."), key=lambda m: m.name):
        if info.ispkg:
            continue
        source = os.path.join(pkg_dir, *info.name.split(".")[1:]) + ".py"
        if not os.path.isfile(source):
            continue  # compiled extensions (the cffi core) hold no Numba kernels
        try:
            with open(source, encoding="utf-8") as fh:
                if "@jit" not in fh.read():
                    continue  # only modules that define Numba kernels (importing is not free)
            modname = info.name
            mod = importlib.import_module(modname)
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            lines.append(f"  {info.name}: not importable ({type(exc).__name__}: {exc})")
            continue
        kernels = {k: v for k, v in vars(mod).items()
                   if hasattr(v, "py_func") and hasattr(v, "signatures") and getattr(v, "__module__", "") == modname}
        if not kernels:
            continue
        cached, where = [], ""
        for k, disp in sorted(kernels.items()):
            try:
                cache = disp._cache  # numba's FunctionCache (private API, hence the try)
                where = cache._cache_path
                if os.path.exists(cache._cache_file._index_path):
                    cached.append(k)
            except Exception:  # noqa: BLE001
                pass
        compiled = [k for k, disp in kernels.items() if disp.signatures]
        lines.append(f"  {modname}: {len(kernels)} kernels, {len(cached)} cached on disk, "
                     f"{len(compiled)} compiled in this process" + (f" (cache: {where})" if where else ""))
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    import platform

    import numpy as np

    from truncfast._backends import registry as _backends
    from truncfast._kernels.parallel import get_num_threads
    from truncfast._version import __version__

    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"truncfast {__version__} (Python {platform.python_version()}, NumPy {np.__version__}) at {package_dir}")
    print("backends:")
    for name, status in _backends.backends().items():
        print(f"  {name:6s} {status}")
    try:
        print(f"  auto   -> {_backends.resolve('auto')}")
    except Exception as exc:  # noqa: BLE001
        print(f"  auto   -> unavailable ({exc})")
    print("threads:")
    print(f"  CPU cores (os.cpu_count)  {os.cpu_count()}")
    print(f"  truncfast kernels         {get_num_threads()} threads (tf.set_num_threads, TRUNCFAST_NUM_THREADS)")
    try:
        import numba

        print(f"  numba {numba.__version__}: {numba.get_num_threads()} threads "
              f"(NUMBA_NUM_THREADS default {numba.config.NUMBA_NUM_THREADS}, layer {numba.threading_layer() if _threading_layer_set() else 'not yet chosen'})")
    except Exception as exc:  # noqa: BLE001
        print(f"  numba: not available ({exc})")
    for var in ("TRUNCFAST_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENBLAS_NUM_THREADS"):
        print(f"  {var:25s} {_config.env_raw(var) or '(unset)'}")
    print("numba kernels:")
    for line in _numba_cache_report():
        print(line)
    from truncfast._kernels.numba_cache import uncached

    if uncached:
        print(f"  {len(uncached)} kernels compiled uncached: no writable cache directory (set NUMBA_CACHE_DIR)")
    return EXIT_OK


def _threading_layer_set() -> bool:
    try:
        import numba

        numba.threading_layer()
        return True
    except Exception:  # noqa: BLE001 - raises until a parallel kernel has run
        return False


def cmd_compare(args: argparse.Namespace) -> int:
    from truncfast._app import compare as _compare

    _compare.run_compare(args.out, source=args.source, n=args.n, dim=args.dim, clusters=args.clusters,
                         layers=args.layers, init=args.init, spread=args.spread, seed=args.seed, steps=args.steps, dt=args.dt, lr=args.lr,
                         threshold=args.threshold, backend=args.backend, force=args.force, log=_log(args.quiet))
    _log(args.quiet)(f"results in {os.path.abspath(args.out)}: compare.json, compare.npz, compare.png")
    return EXIT_OK


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "plot": cmd_plot, "info": cmd_info, "compare": cmd_compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``truncfast`` console script; returns the exit status."""
    from truncfast._app.config_file import ConfigError
    from truncfast._app.runs import RunDirError

    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 and a usage line on bad arguments
    quiet = bool(getattr(args, "quiet", False))
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(quiet)
            return COMMANDS[args.command](args)
    except (ConfigError, RunDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        where = ""
        traj = getattr(exc, "trajectory", None)
        if traj is not None:
            where = f" at step {traj.last_step}; partial results written"
            if getattr(args, "command", "") == "run":
                d = args.resume or args.out or os.path.join(
                    "runs", os.path.splitext(os.path.basename(args.config or ""))[0])
                if os.path.isfile(os.path.join(d, "checkpoint.npz")):
                    where += f" (continue with: truncfast run --resume {d})"
        print(f"error: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line for the user; TRUNCFAST_DEBUG=1 for the traceback
        if _config.env_debug():
            raise
        msg = " ".join(str(exc).split())  # one line, whatever the exception's message holds
        print(f"error: {type(exc).__name__}: {msg}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line_warning(quiet: bool):
    """``warnings.showwarning`` for the CLI: one line ``warning: …`` per warning.  truncfast's
    own warnings (unstable steps, a bad environment variable) are always shown; other
    libraries' RuntimeWarnings (NumPy's overflow notes, …) only without --quiet."""

    def show(message, category, filename, lineno, file=None, line=None):
        from truncfast._errors import InstabilityWarning

        ours = issubclass(category, InstabilityWarning) or str(message).startswith(("truncfast", "TRUNCFAST_"))
        if quiet and not ours:
            return
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)

    return show


if __name__ == "__main__":
    sys.exit(main())
