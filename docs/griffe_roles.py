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
(``[8.6–8.7] [8.21]``), which Markdown would read as a reference link.
Code spans are left alone.  The public surface is every module of the
package whose dotted path has no component starting with ``_``, with the
names of its ``__all__``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`]+?)`")
_CODE = re.compile(r"(`+).+?\1", re.S)
_EQ_PAIR = re.compile(r"\[([^\]\[`\n]*)\](?=\s?\[)")


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

        def rewrite(obj: griffe.Object, text: str) -> str:
            out, pos = [], 0
            # roles first (they contain backticks), then equation pairs outside code spans
            text = _ROLE.sub(lambda m: role(obj, m), text)
            for m in _CODE.finditer(text):
                out.append(_EQ_PAIR.sub(r"\\[\1]", text[pos:m.start()]))
                out.append(m.group(0))
                pos = m.end()
            out.append(_EQ_PAIR.sub(r"\\[\1]", text[pos:]))
            return "".join(out)

        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj, obj.docstring.value)
            todo += [m for m in obj.members.values() if not m.is_alias]
