"""Build script: lists the optional cffi C core (see csrc/ and truncfast/_kernels/build_ccore.py).

The C core is optional and its build is *fallible*: without a C compiler (or
with ``CC=/bin/false``), when compilation fails, or when the environment
variable ``TRUNCFAST_NO_CEXT=1`` is set, the package installs with a notice
and runs on the NumPy/Numba backends only (``truncfast.backends()`` says why).
If the compiler lacks OpenMP, the core is built serial (same results).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

NO_CEXT = os.environ.get("TRUNCFAST_NO_CEXT", "").strip().lower() not in ("", "0", "false", "no")


def _notice(message: str) -> None:
    bar = "*" * 78
    print(f"\n{bar}\ntruncfast: {message}\ntruncfast: installing without the C core; "
          f"backends 'numba' and 'numpy' remain available.\n{bar}\n", file=sys.stderr)


class FallibleBuildExt(build_ext):
    """build_ext that never fails the install (timezonefinder style).

    Tries the C core with OpenMP, then without; if both fail, drops the
    extension (so no later step expects its file) and prints a notice.
    (An editable install, ``pip install -e .``, copies the built module into
    ``truncfast/`` through setuptools' own in-place step.)
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all, broken toolchain, ...
            self.extensions = []
            _notice(f"could not build the C core ({type(exc).__name__}: {exc})")

    def build_extensions(self) -> None:
        kept = []
        for ext in self.extensions:
            if self._try_build(ext):
                kept.append(ext)
        self.extensions = kept

    def _try_build(self, ext) -> bool:
        try:
            self.build_extension(ext)
            return True
        except Exception as exc:
            first = f"{type(exc).__name__}: {exc}"
        omp = {"-fopenmp", "/openmp"}
        if not any(a in omp for a in ext.extra_compile_args + ext.extra_link_args):
            _notice(f"could not build {ext.name} ({first})")
            return False
        ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in omp]
        ext.extra_link_args = [a for a in ext.extra_link_args if a not in omp]
        try:
            self.build_extension(ext)
        except Exception as exc:
            _notice(f"could not build {ext.name} ({first}; without OpenMP: {type(exc).__name__}: {exc})")
            return False
        print("truncfast: built the C core WITHOUT OpenMP (serial; results are identical)", file=sys.stderr)
        return True

    def copy_extensions_to_source(self) -> None:
        # only what was built (a failed extension was dropped from the list)
        if self.extensions:
            super().copy_extensions_to_source()


if NO_CEXT:
    _notice("TRUNCFAST_NO_CEXT is set")
    setup()
else:
    setup(
        cffi_modules=["truncfast/_kernels/build_ccore.py:ffibuilder"],
        cmdclass={"build_ext": FallibleBuildExt},
    )
