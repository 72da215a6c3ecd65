"""Atomic file writes: temp file in the destination folder, fsync, ``os.replace``.

A reader (or a crash, or a second Ctrl-C) sees either the old file or the
complete new one, never a partial write.  Used by checkpoints, trajectories
and every output of a run directory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["atomic_write", "file_mode"]


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
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix, dir=folder)
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
