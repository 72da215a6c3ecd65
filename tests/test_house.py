"""The shape of the house (docs/DESIGN.md): layers, no circles, small modules, light import.

These checks keep the package easy to change: they fail as soon as a module
imports upward, two modules import each other, a module grows past the size
a reader can hold, ``import truncfast`` starts pulling in heavy optional
packages, an environment variable is read outside the config module, or the
repository points at files it does not contain.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "truncfast"
#: Largest module a reader should meet (issue "One house": no module over ~500 lines).
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_layer_contracts_hold():
    """``lint-imports`` (import-linter) keeps the layers of pyproject.toml."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_no_import_circles():
    """No two truncfast modules import each other, directly or through others (grimp's graph)."""
    import grimp

    graph = grimp.build_graph("truncfast")
    mods = sorted(m for m in graph.modules if m.startswith("truncfast"))
    adj = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d.startswith("truncfast"))
           for m in mods}
    # Tarjan's strongly connected components, iteratively
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, cycles, counter = set(), [], [], 0
    for root in mods:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            recurse = False
            for j in range(i, len(adj[v])):
                w = adj[v][j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    assert not cycles, f"import circles: {cycles}"


def test_modules_are_small():
    big = {str(p.relative_to(ROOT)): n for p in _modules()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_import_truncfast_pulls_in_no_heavy_package():
    # (scipy is not listed: Numba itself imports it when present)
    heavy = ["matplotlib", "torch", "dask", "distributed", "tqdm", "jax", "sklearn", "pandas"]
    code = ("import sys, truncfast\n"
            f"loaded = [m for m in {heavy!r} if m in sys.modules]\n"
            "print(','.join(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import truncfast loaded: {out.stdout.strip()}"


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative: resolve against the module's package
                pkg = path.relative_to(ROOT).with_suffix("").parts[:-1] if path.name != "__init__.py" \
                    else path.relative_to(ROOT).parts[:-1]
                base = list(pkg[: len(pkg) - node.level + 1])
                mod = ".".join(base + ([mod] if mod else []))
            for a in node.names:
                yield node.lineno, mod, a.name


def test_no_private_module_uses_the_package_root():
    """Modules below the surface import what they use from where it lives, never ``truncfast`` itself."""
    bad = []
    for path in _modules():
        if path in (PKG / "__init__.py", PKG / "__main__.py"):
            continue
        for line, mod, name in _imports(path):
            if mod == "truncfast" and name is None:
                bad.append(f"{path.relative_to(ROOT)}:{line}: import truncfast")
            elif mod == "truncfast" and name is not None and not (
                    (PKG / name).is_dir() or (PKG / f"{name}.py").is_file()):
                bad.append(f"{path.relative_to(ROOT)}:{line}: from truncfast import {name}")
    assert not bad, "\n".join(bad)


def test_environment_variables_are_read_in_the_config_module_only():
    bad = []
    for path in _modules():
        if path == PKG / "_config.py":
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"os\.environ\.get|os\.getenv|os\.environ\[[^\]]+\](?!\s*=)", line):
                bad.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_design_table_is_current():
    """docs/DESIGN.md opens with the layer diagram and one line per file, generated from the code."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_design_table
    finally:
        sys.path.pop(0)
    current = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert make_design_table.render(current) == current, "run python docs/make_design_table.py"


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / f for f in out.split()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): scan the tree
        files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [f for f in files if f.suffix in (".py", ".md", ".toml", ".c", ".h", ".inc", ".txt", ".in", ".cfg")
            and f.is_file()]


@pytest.mark.parametrize("pattern", [r"\.\./shared", r"THEORY\.md", r"CONTRACT\.md", r"shared docs"])
def test_nothing_points_outside_the_repository(pattern):
    """The repository stands on its own: its docs carry the mathematics (docs/theory.md, docs/api.md)."""
    me = Path(__file__).resolve()
    hits = [f"{f.relative_to(ROOT)}:{i}" for f in _tracked_text_files() if f.resolve() != me
            for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if re.search(pattern, line)]
    assert not hits, hits


def test_every_numba_kernel_goes_through_the_one_decorator():
    """``_kernels.numba_cache.jit`` caches where it can and compiles uncached (one warning) where it
    cannot (a read-only install): a bare ``@njit(cache=True)`` would crash ``import truncfast`` there."""
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in _modules() if p.name != "numba_cache.py"
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if re.match(r"\s*@(numba\.n?jit|njit)\b", line) or re.search(r"from numba import .*\bn?jit\b", line)]
    assert not bad, bad
