"""MkDocs hooks of the documentation site: generated API pages, and the figures of docs/.

* A nav entry ``reference/<module>.md`` with no such file under ``docs/pages``
  becomes a page holding ``::: <module>`` (mkdocstrings), so documenting a new
  public module is one line in ``docs/mkdocs.yml``.
* ``docs/figures/`` (the figures README.md shows too) is published as
  ``figures/`` without a copy in ``docs/pages``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

_DOCS = Path(__file__).resolve().parent

_PREFIX = "reference/"


def _nav_paths(nav) -> list[str]:
    out: list[str] = []
    if isinstance(nav, str):
        out.append(nav)
    elif isinstance(nav, list):
        for item in nav:
            out += _nav_paths(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            out += _nav_paths(value)
    return out


def on_files(files, config):
    for path in _nav_paths(config["nav"]):
        if path.startswith(_PREFIX) and path.endswith(".md") and files.get_file_from_path(path) is None:
            module = path[len(_PREFIX):-len(".md")]
            content = f"---\ntitle: {module}\n---\n\n::: {module}\n    options:\n      show_root_heading: true\n      heading_level: 1\n"
            files.append(File.generated(config, path, content=content))
    for fig in sorted((_DOCS / "figures").glob("*.png")):
        files.append(File(f"figures/{fig.name}", src_dir=str(_DOCS), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
