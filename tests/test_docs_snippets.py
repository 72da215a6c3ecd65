"""The code of the documentation site runs: every snippet of docs/pages/, executed in order.

Each page written for the site (the pages that only include a file of docs/ are
not tutorials and are skipped) is run in a fresh Python process in a temporary
directory: its ``python`` blocks in one namespace, top to bottom, so later
blocks use what earlier ones defined.  An HTML comment on the line(s) right
before a fence steers a block (invisible on the site):

* ``<!-- skip -->`` — not run (a fragment, or something that needs a cluster);
* ``<!-- run -->`` — run a ``bash`` block too (shell blocks are not run otherwise);
* ``<!-- slow -->`` — run only with ``-m slow`` (then the whole page runs in a
  second, slow test); a block that needs a slow block's results is slow too;
* ``<!-- file: NAME -->`` — write the block to NAME in the working directory
  (a configuration file, a C program) for later blocks to use;
* ``<!-- test: OLD -> NEW; OLD2 -> NEW2 -->`` — literal replacements made before
  running, to run tutorials written for millions of points on small sizes.  Each
  OLD must occur in the block, so a replacement cannot silently stop applying.

A failing snippet is reported with the page and the line of the page it is on.
Shell blocks run with ``$PREFIX`` set to an empty install prefix in the working
directory and copies of ``csrc/`` and ``examples/`` next to them (as at the
repository root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "pages"
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)[^\n]*$")
DIRECTIVE = re.compile(r"^<!--\s*(skip|slow|run|file:\s*\S+|test:.*?)\s*-->\s*$")
#: The whole run of a page must stay well inside the suite's budget (issue 16: < 60 s for all pages).
TIMEOUT = 240


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the page where the code starts
    lang: str
    code: str
    directives: list[str] = field(default_factory=list)

    @property
    def action(self) -> str:
        """'python', 'bash', 'file' or 'none' (not run)."""
        if "skip" in self.directives:
            return "none"
        if any(d.startswith("file:") for d in self.directives):
            return "file"
        if self.lang in ("python", "py"):
            return "python"
        if self.lang in ("bash", "sh", "shell") and "run" in self.directives:
            return "bash"
        return "none"


def parse(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of a page with the directives written right above them (paths relative to root)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            fence, lang = m.group(1), m.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].startswith(fence):
                j += 1
            assert j < len(lines), f"{path}:{i + 1}: unclosed code fence"
            blocks.append(Block(str(path.relative_to(root)), i + 2, lang, "\n".join(lines[i + 1:j]) + "\n",
                                pending))
            pending = []
            i = j + 1
            continue
        d = DIRECTIVE.match(line.strip())
        if d:
            pending = [*pending, d.group(1)]
        elif line.strip().startswith("<!--") and re.search(r"\b(skip|slow|run|file|test)\b", line):
            raise AssertionError(f"{path}:{i + 1}: malformed snippet directive {line.strip()!r}")
        else:
            # a directive applies to the fence right below it (directives may stack)
            assert not pending or not line.strip(), \
                f"{path}:{i - len(pending) + 1}: directive {pending} is not directly above a code fence"
        i += 1
    assert not pending, f"{path}: directive {pending} at the end of the page, above no code fence"
    return blocks


def prepared(block: Block) -> str:
    """The block's code after its ``test:`` replacements (each of which must apply)."""
    code = block.code
    for d in block.directives:
        if not d.startswith("test:"):
            continue
        for pair in d[len("test:"):].split(";"):
            old, sep, new = pair.partition("->")
            old, new = old.strip(), new.strip()
            assert sep and old, f"{block.page}:{block.line}: bad replacement {pair!r} (write OLD -> NEW)"
            assert old in code, f"{block.page}:{block.line}: replacement {old!r} no longer matches the snippet"
            code = code.replace(old, new)
    return code


def tutorial_pages() -> list[Path]:
    """Pages written for the site (not the ones that include a file of docs/)."""
    return sorted(p for p in PAGES.rglob("*.md") if "{%" not in p.read_text(encoding="utf-8"))


# The driver runs in the page's own process: JAX's 64-bit switch, PyTorch's and Numba's thread
# settings and the like are process-wide, so a page must not leak them into another page or
# into the rest of the test suite.
DRIVER = r"""
import json, os, subprocess, sys, time
blocks = json.load(open(sys.argv[1], encoding="utf-8"))
ns = {"__name__": "__main__"}
for b in blocks:
    where = f"{b['page']}, line {b['line']}"
    t0 = time.perf_counter()
    if b["action"] == "file":
        with open(b["file"], "w", encoding="utf-8") as fh:
            fh.write(b["code"])
    elif b["action"] == "python":
        # pad with blank lines so that tracebacks give the line of the page
        exec(compile("\n" * (b["line"] - 1) + b["code"], b["page"], "exec"), ns)
    elif b["action"] == "bash":
        out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", b["code"]], capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        if out.returncode:
            sys.exit(f"shell block at {where} failed with status {out.returncode}:\n{out.stdout}\n{out.stderr}")
    print(f"[docs snippet] {where}: {time.perf_counter() - t0:.2f} s", flush=True)
"""


def _run_page(page: Path, tmp_path: Path, root: Path = ROOT, slow: bool = False) -> subprocess.CompletedProcess:
    blocks = parse(page, root)
    todo = []
    for b in blocks:
        action = b.action
        if action == "none" or ("slow" in b.directives and not slow):
            continue
        item = {"page": b.page, "line": b.line, "action": action, "code": prepared(b)}
        if action == "file":
            item["file"] = next(d for d in b.directives if d.startswith("file:"))[len("file:"):].strip()
        todo.append(item)
    (tmp_path / "blocks.json").write_text(json.dumps(todo), encoding="utf-8")
    # the shell blocks are written for the repository root: give them csrc/ (a copy, so that
    # concurrent runs do not race on its build products) and an install prefix of their own
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc",
                    ignore=shutil.ignore_patterns("example", "libtruncfast.so*", "*.o"))
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("out", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               PREFIX=str(tmp_path / "prefix"), MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "blocks.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.mark.parametrize("page", tutorial_pages(), ids=lambda p: str(p.relative_to(PAGES)))
def test_snippets_of_the_page_run(page, tmp_path):
    out = _run_page(page, tmp_path)
    assert out.returncode == 0, f"{page.relative_to(ROOT)}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in tutorial_pages() if any("slow" in b.directives for b in parse(p))],
                         ids=lambda p: str(p.relative_to(PAGES)))
def test_snippets_of_the_page_run_with_the_slow_ones(page, tmp_path):
    out = _run_page(page, tmp_path, slow=True)
    assert out.returncode == 0, f"{page.relative_to(ROOT)}:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"


def test_pages_have_runnable_snippets_and_directives_parse():
    """Every tutorial runs some code, and every directive of every page parses and applies."""
    for page in tutorial_pages():
        blocks = parse(page)
        for b in blocks:
            prepared(b)
        if page.parent.name == "tutorials":
            assert any(b.action == "python" for b in blocks), f"{page}: no Python snippet runs"


def test_parser_reads_directives_and_line_numbers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n<!-- skip -->\n```python\nboom\n```\n"
                    "<!-- file: a.toml -->\n<!-- test: 1 -> 2 -->\n```toml\nn = 1\n```\n"
                    "```bash\nrm -rf /\n```\n<!-- run -->\n```bash\necho hi\n```\n", encoding="utf-8")
    blocks = parse(page, root=tmp_path)
    assert [(b.line, b.action) for b in blocks] == [(4, "python"), (9, "none"), (14, "file"), (17, "none"),
                                                    (21, "bash")]
    assert prepared(blocks[2]) == "n = 2\n"
    with pytest.raises(AssertionError, match="no longer matches"):
        prepared(Block("p.md", 1, "python", "x = 1\n", ["test: 3 -> 4"]))
    page.write_text("<!-- skip -->\n\ntext\n```python\nx\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="not directly above"):
        parse(page, root=tmp_path)


def test_a_failing_snippet_fails_with_its_page_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'wrong x'\n```\n",
                    encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    out = _run_page(page, work, root=tmp_path)
    assert out.returncode != 0
    assert 'File "page.md", line 10' in out.stderr and "wrong x" in out.stderr
    page.write_text("<!-- run -->\n```bash\nfalse\n```\n", encoding="utf-8")
    work = tmp_path / "work2"
    work.mkdir()
    out = _run_page(page, work, root=tmp_path)
    assert out.returncode != 0 and "page.md, line 3" in out.stderr
