"""The documentation site's own machinery: the API reference covers every public module, and the
griffe extension (docs/griffe_roles.py) turns Sphinx roles and citations into checked links.

The site itself is built by ``.ci/run`` (``mkdocs build --strict -f docs/mkdocs.yml``); the
extension's checks need griffe, which comes with the ``docs`` extra (``.ci/run`` runs this file
again after installing it).
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = ROOT / "docs" / "mkdocs.yml"


def _public_modules() -> set[str]:
    pkg = ROOT / "truncfast"
    mods = {"truncfast"}
    for p in pkg.iterdir():
        name = p.stem if p.suffix == ".py" else p.name
        if name.startswith("_") or (p.is_dir() and not (p / "__init__.py").is_file()):
            continue
        if p.suffix == ".py" or p.is_dir():
            mods.add(f"truncfast.{name}")
    return mods


def test_every_public_module_has_a_reference_page():
    """A public module (no leading underscore) is documented by one nav line ``reference/<module>.md``."""
    listed = set(re.findall(r"^\s*-\s*reference/([\w.]+)\.md\s*$", MKDOCS.read_text(encoding="utf-8"), re.M))
    missing = _public_modules() - listed
    assert not missing, f"add '- reference/<module>.md' to the API section of docs/mkdocs.yml for: {sorted(missing)}"
    extra = listed - _public_modules()
    assert not extra, f"docs/mkdocs.yml lists reference pages of modules that are not public modules: {sorted(extra)}"


def test_pages_that_mirror_docs_files_include_them():
    """docs/pages/NAME.md for a file of docs/ is one include line: one source per page."""
    for page in (ROOT / "docs" / "pages").glob("*.md"):
        if (ROOT / "docs" / page.name).is_file():
            assert page.read_text(encoding="utf-8").strip() == f'{{% include-markdown "../{page.name}" %}}', page


@pytest.fixture()
def loaded(tmp_path):
    """A small package through the extension: returns ``{path: parsed docstring sections}``."""
    griffe = pytest.importorskip("griffe", reason="the docs extra brings griffe (.ci/run runs this file with it)")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent('''
        """The package.  See :func:`f`."""
        from pkg._impl import C, f
        __all__ = ["C", "f"]
    '''), encoding="utf-8")
    (pkg / "_impl.py").write_text(textwrap.dedent('''
        """Implementation."""
        import torch


        def f(x):
            """Public :func:`f`, helper :func:`g`, class :class:`~pkg.C`, method :meth:`C.m`, bad :func:`pkg.nothere`,
            outside :mod:`torch`; equations [8.6] [8.21]; docs/theory.md §5 and docs/theory.md §§3, 4; docs/api.md;
            code ``[1] [2] docs/theory.md §5``.

            Parameters
            ----------
            x : :class:`C`
                Cites docs/theory.md §99.
            """


        def g():
            """Private."""


        class C:
            """A class."""

            def m(self):
                """A method."""
    '''), encoding="utf-8")
    ext = griffe.load_extensions(f"{ROOT / 'docs' / 'griffe_roles.py'}:SphinxRoles")
    loader = griffe.GriffeLoader(extensions=ext, search_paths=[str(tmp_path)], docstring_parser=griffe.Parser.numpy,
                                 allow_inspection=False)
    loader.load("pkg")
    loader.resolve_aliases(implicit=False, external=False)
    return loader.modules_collection


def test_roles_become_checked_cross_references(loaded, caplog):
    f = loaded["pkg._impl.f"]
    text = f.docstring.parsed[0].value
    assert "Public [`f`][pkg.f]" in text                      # resolved in the module, documented as pkg.f
    assert "helper `g`" in text                                # private: code, not a link
    assert "class [`C`][pkg.C]" in text                        # ~ keeps the last name
    assert "method [`C.m`][pkg.C.m]" in text
    assert "bad [`pkg.nothere`][pkg.nothere]" in text          # left as a reference, so --strict fails on it
    assert "outside `torch`" in text                           # outside name: code
    assert r"equations \[8.6] [8.21]" in text                  # not a Markdown reference link any more
    assert "[docs/theory.md §5](../theory.md#s5)" in text
    assert "[docs/theory.md](../theory.md) §§[3](../theory.md#s3), [4](../theory.md#s4)" in text
    assert "[docs/api.md](../api.md)" in text
    assert "``[1] [2] docs/theory.md §5``" in text             # code spans untouched
    param = f.docstring.parsed[1].value[0]
    assert param.annotation == "C"                              # a role inside a type: its name
    assert "[docs/theory.md §99](../theory.md#s99)" in param.description


def test_unknown_theory_section_is_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mkdocs.plugins.truncfast.griffe_roles"):
        pytest.importorskip("griffe", reason="the docs extra brings griffe")
        import importlib.util

        spec = importlib.util.spec_from_file_location("griffe_roles", ROOT / "docs" / "griffe_roles.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ok = mod._DOCREF.sub(lambda m: mod._docref(m, "x"), "see docs/theory.md §5")
        assert ok == "see [docs/theory.md §5](../theory.md#s5)" and not caplog.records
        mod._DOCREF.sub(lambda m: mod._docref(m, "x"), "see docs/theory.md §99")
    assert any("no section §99" in r.getMessage() for r in caplog.records)
