"""Atomic file writes: temp file in the destination folder, fsync, ``os.replace``.

A reader (or a crash, or a second Ctrl-C) sees either the old file or the
complete new one, never a partial write.  Used by checkpoints, trajectories
and every output of a run directory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "file_mode", "temp_prefix", "remove_leftovers"]


def file_mode() -> int:
    """Mode of an ordinary new file under the current umask (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then replace ``path`` with it.

    ``suffix`` keeps the extension on the temporary name, for writers that pick
    the format from it (Pillow for GIF, matplotlib for PNG).  The data reach the
    disk (fsync) before the rename.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def temp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of :func:`atomic_write`'s temporary files for ``path`` (in its folder)."""
    return ".tmp-" + os.path.basename(os.fspath(path)) + "-"


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Delete the temporary files an interrupted :func:`atomic_write` of ``path`` left behind.

    A ``kill -9`` (or a power cut) between ``mkstemp`` and ``os.replace`` leaves
    ``.tmp-<name>-XXXXXXXX`` next to ``path``; the cleanup of ``atomic_write`` never
    ran.  Only this exact prefix is touched — never other files.  Called when a run
    that checkpoints to ``path`` starts and by :func:`truncfast.resume` (one writer
    per checkpoint path is assumed, as for the checkpoint itself).  Returns the
    removed paths; errors (a file vanishing, no permission) are ignored.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = temp_prefix(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix):
            full = os.path.join(folder, name)
            try:
                if os.path.isfile(full) and not os.path.islink(full):
                    os.unlink(full)
                    removed.append(full)
            except OSError:
                pass
    return removed
