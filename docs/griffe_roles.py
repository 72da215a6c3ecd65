"""Griffe extension of the documentation site: Sphinx roles in truncfast's docstrings become Markdown.

The docstrings are NumPy style with a few reStructuredText roles
(``:func:`integrate```, ``:class:`~truncfast.InputError```) that Markdown does
not know.  Before mkdocstrings renders them, this extension rewrites each role:

* a target that names an object of the public surface (resolved in the scope
  of the docstring, as Python would: ``InputError`` inside
  ``truncfast._integrate.api`` is ``truncfast.InputError``) becomes a
  cross-reference ``[`title`][public.path]``, checked by mkdocs-autorefs, so a
  broken one fails ``mkdocs build --strict``;
* a target spelled ``truncfast.…`` that does not exist stays a
  cross-reference too, and fails the build for the same reason;
* a private helper or an outside name (``:mod:`torch```) becomes code.

It also escapes the paper's equation numbers when two follow each other
(``[8.6–8.7] [8.21]``), which Markdown would read as a reference link, and
turns the citations of the repository's documents into links to their pages
on the site: ``docs/theory.md §5`` links to §5 of the theory page (MkDocs
checks the page; this extension checks the section, and a section the page
does not have is a warning, so ``--strict`` fails on it).  Code spans are left
alone.  The public surface is every module of the package whose dotted path
has no component starting with ``_``, with the names of its ``__all__``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+?)`")
_CODE = re.compile(r"(`+).+?\1", re.S)
_EQ_PAIR = re.compile(r"\[([^\]\[`\n]*)\](?=\s?\[)")
_DOCS = Path(__file__).resolve().parent
#: docs/NAME.md files that are pages of the site (docs/pages/NAME.md includes them)
_PAGES = sorted(p.stem for p in (_DOCS / "pages").glob("*.md") if (_DOCS / p.name).is_file())
_DOCREF = re.compile(r"docs/(" + "|".join(map(re.escape, _PAGES)) + r")\.md"
                     r"(?:(\s+§§?)(\d+(?:(?:\s*[,–-]\s*|\s+and\s+)\d+)*))?")
_log = logging.getLogger("mkdocs.plugins.truncfast.griffe_roles")


def _sections(page: str) -> set[str]:
    """Section anchors (``<a id="s5">``) of docs/<page>.md."""
    return set(re.findall(r'<a id="(s\d+)"', (_DOCS / f"{page}.md").read_text(encoding="utf-8")))


def _docref(match: re.Match[str], where: str) -> str:
    """``docs/theory.md §§5, 6`` -> links to the page and to each section (relative to reference/*.md)."""
    page, gap, nums = match.groups()
    if not gap:
        return f"[docs/{page}.md](../{page}.md)"
    known = _sections(page)
    for n in re.findall(r"\d+", nums):
        if f"s{n}" not in known:
            _log.warning("%s: docs/%s.md has no section §%s (cited as %r)", where, page, n, match.group(0))
    if re.fullmatch(r"\d+", nums):
        return f"[docs/{page}.md{gap}{nums}](../{page}.md#s{nums})"
    linked = re.sub(r"\d+", lambda n: f"[{n.group(0)}](../{page}.md#s{n.group(0)})", nums)
    return f"[docs/{page}.md](../{page}.md){gap}{linked}"


def _public_modules(pkg: griffe.Module) -> list[griffe.Module]:
    out, todo = [], [pkg]
    while todo:
        mod = todo.pop()
        out.append(mod)
        todo += [m for name, m in mod.modules.items() if not name.startswith("_") and not m.is_alias]
    return out


def _public_map(pkg: griffe.Module) -> dict[str, str]:
    """Canonical path of each public object -> the path under which the site documents it."""
    mapping: dict[str, str] = {}
    for mod in _public_modules(pkg):
        mapping.setdefault(mod.path, mod.path)
        names = [str(n) for n in mod.exports] if mod.exports is not None else \
            [n for n in mod.members if not n.startswith("_")]
        for name in names:
            member = mod.members.get(name)
            if member is None or member.is_module:
                continue
            try:
                canonical = member.canonical_path if not member.is_alias else member.final_target.path
            except griffe.AliasResolutionError:
                continue
            # the first public module that exports it wins (truncfast before its submodules)
            mapping.setdefault(canonical, f"{mod.path}.{name}")
            mapping.setdefault(f"{mod.path}.{name}", f"{mod.path}.{name}")
    return mapping


def _resolve_in_module(obj: griffe.Object, name: str) -> str | None:
    """``name`` as seen from ``obj``: its members, then its parents' up to its module (not beyond)."""
    scope: griffe.Object | None = obj
    while scope is not None:
        if name in scope.members:
            member = scope.members[name]
            return member.target_path if member.is_alias else member.path
        if name in getattr(scope, "imports", {}):
            return scope.imports[name]
        if scope.is_module:
            return None
        scope = scope.parent
    return None


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles and paired equation numbers in every docstring of the package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        public = _public_map(pkg)
        collection = loader.modules_collection

        def lookup(path: str) -> str | None:
            """The public path of ``path`` (or of its nearest public parent plus the rest)."""
            try:
                obj = collection[path]
                path = obj.final_target.path if obj.is_alias else obj.path
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                return None
            parts = path.split(".")
            for cut in range(len(parts), 0, -1):
                head, rest = ".".join(parts[:cut]), parts[cut:]
                if head in public and not any(p.startswith("_") for p in rest):
                    return ".".join([public[head], *rest])
            return None

        def role(obj: griffe.Object, match: re.Match[str]) -> str:
            tilde, target = match.group(1), match.group(2).strip()
            title = target.rsplit(".", 1)[-1] if tilde else target
            first, _, rest = target.partition(".")
            full = target
            if first != pkg.name:
                scoped = _resolve_in_module(obj, first)
                full = scoped + (f".{rest}" if rest else "") if scoped else target
            found = lookup(full) or lookup(target)
            if found is not None:
                return f"[`{title}`][{found}]"
            if full.split(".", 1)[0] == pkg.name and full.split(".", 1)[-1][:1] != "_" \
                    and target.split(".", 1)[0] == pkg.name:
                return f"[`{title}`][{target}]"  # a public-looking name that does not exist: let it fail
            return f"`{title}`"

        def prose(obj: griffe.Object, text: str) -> str:
            """Text outside code spans: equation pairs escaped, document citations linked."""
            text = _EQ_PAIR.sub(r"\\[\1]", text)
            return _DOCREF.sub(lambda m: _docref(m, obj.path), text)

        def rewrite(obj: griffe.Object, text: str) -> str:
            out, pos = [], 0
            # roles first (they contain backticks), then the rest outside code spans
            text = _ROLE.sub(lambda m: role(obj, m), text)
            for m in _CODE.finditer(text):
                out.append(prose(obj, text[pos:m.start()]))
                out.append(m.group(0))
                pos = m.end()
            out.append(prose(obj, text[pos:]))
            return "".join(out)

        def plain(text: str) -> str:
            """A role inside a type (rendered as code): just its name."""
            return _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)

        # Rewrite the parsed sections, not the raw text: only prose (the text sections and
        # the descriptions of items) becomes Markdown; a type that the NumPy parser read off
        # a line stays as written, so a citation there is not turned into link syntax in code.
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None:
                for section in obj.docstring.parsed:
                    value = section.value
                    if isinstance(value, str):
                        section.value = rewrite(obj, value)
                    elif isinstance(value, list):
                        for item in value:
                            if isinstance(getattr(item, "description", None), str):
                                item.description = rewrite(obj, item.description)
                            if isinstance(getattr(item, "annotation", None), str):
                                item.annotation = plain(item.annotation)
                    elif isinstance(getattr(value, "description", None), str):  # admonitions
                        value.description = rewrite(obj, value.description)
            todo += [m for m in obj.members.values() if not m.is_alias]
