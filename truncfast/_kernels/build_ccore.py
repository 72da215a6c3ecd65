"""cffi builder of the optional C core (API mode, out of line).

``setup.py`` lists this file in ``cffi_modules``; it compiles ``csrc/*.c``
into the extension ``truncfast._ccore_cffi``, whose only importer is
``truncfast/_kernels/ccore.py``.  The declarations come from the region of
``csrc/truncfast.h`` between ``BEGIN CDEF`` and ``END CDEF`` (integer
``#define``s and prototypes only, which cffi parses), so the header stays the
single source of the C API.

Compiler flags: ``-O3 -fopenmp -ffp-contract=off`` (no FMA contraction: the
bits must match the Numba kernels).  ``setup.py``'s fallible ``build_ext``
retries without OpenMP (``OPENMP_COMPILE_ARGS`` removed) and, if that fails
too, installs without the C core.

Run by hand (``python truncfast/_kernels/build_ccore.py``) to build in place.
"""

from __future__ import annotations

import glob
import os
import re
import sys

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
HEADER = os.path.join(CSRC, "truncfast.h")

#: Flags that need OpenMP support; the fallible build drops exactly these.
OPENMP_COMPILE_ARGS = ["-fopenmp"]
OPENMP_LINK_ARGS = ["-fopenmp"]
BASE_COMPILE_ARGS = ["-std=c99", "-O3", "-ffp-contract=off"]


def cdef_source(header: str = HEADER) -> str:
    """The declarations of ``truncfast.h`` that cffi should see."""
    with open(header, encoding="utf-8") as fh:
        text = fh.read()
    match = re.search(r"BEGIN CDEF.*?\*/(.*?)/\* END CDEF", text, flags=re.S)
    if match is None:  # pragma: no cover - a broken header is a developer error
        raise RuntimeError(f"{header}: no BEGIN CDEF ... END CDEF region")
    return match.group(1)


def _relative(path: str) -> str:
    """Sources relative to the current directory when possible (setuptools prefers them)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def make_ffibuilder() -> FFI:
    ffibuilder = FFI()
    ffibuilder.cdef(cdef_source())
    sources = sorted(glob.glob(os.path.join(CSRC, "*.c")))
    sources = [_relative(s) for s in sources if os.path.basename(s) != "example.c"]
    if sys.platform == "win32":  # pragma: no cover - MSVC spelling
        compile_args, link_args = ["/O2", "/openmp", "/fp:precise"], []
    else:
        compile_args = BASE_COMPILE_ARGS + OPENMP_COMPILE_ARGS
        link_args = list(OPENMP_LINK_ARGS)
    ffibuilder.set_source(
        "truncfast._ccore_cffi",
        '#include "truncfast.h"',
        sources=sources,
        include_dirs=[_relative(CSRC)],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return ffibuilder


ffibuilder = make_ffibuilder()

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder = make_ffibuilder()
    ffibuilder.compile(verbose=True)
