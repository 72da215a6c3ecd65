"""Backend registry: names → backend objects, imported lazily; ``"auto"``; dask data → dask.

``"numpy"`` is the reference (``numpy_backend``), ``"numba"`` the parallel JIT
kernels (``numba_backend``), ``"c"`` the cffi core (``c_backend``, optional),
``"dask"`` the map-reduce over the blocks of dask arrays (``dask_backend``,
optional; selected by the type of the data, or by name for in-memory data).  Adding a backend
is one file with a :class:`~truncfast._backends.protocol.Backend` subclass and
one line in ``_MODULES``.
"""

from __future__ import annotations

import importlib
from typing import Any

from truncfast import _config
from truncfast._backends.local import is_dask_array
from truncfast._backends.protocol import Backend
from truncfast._errors import BackendUnavailable, InputError

__all__ = ["BACKENDS", "available", "backends", "get", "resolve", "select", "is_dask_array"]

#: Backends selectable by name, in the order of ``tf.backends()``.  ``"auto"``
#: chooses among the local ones only; ``"dask"`` runs in-memory data through the
#: dask backend (on the active dask client or scheduler), which dask data select anyway.
BACKENDS = ("numpy", "numba", "c", "dask")

#: name -> (module, class) of every backend, imported on first use.
_MODULES = {
    "numpy": ("truncfast._backends.numpy_backend", "NumpyBackend"),
    "numba": ("truncfast._backends.numba_backend", "NumbaBackend"),
    "c": ("truncfast._backends.c_backend", "CBackend"),
    "dask": ("truncfast._backends.dask_backend", "DaskBackend"),
}

_instances: dict[str, Backend] = {}
_failures: dict[str, str] = {}


def _load(name: str) -> Backend | None:
    if name in _instances:
        return _instances[name]
    if name in _failures:
        return None
    module, cls = _MODULES[name]
    try:
        inst = getattr(importlib.import_module(module), cls)()
    except Exception as exc:  # a missing optional dependency or extension
        _failures[name] = f"{type(exc).__name__}: {exc}"
        return None
    _instances[name] = inst
    return inst


def backends() -> dict[str, str]:
    """Report every backend: ``"available"`` or the reason it is not."""
    report = {}
    for name in BACKENDS:
        report[name] = "available" if _load(name) is not None else f"unavailable ({_failures[name]})"
    return report


def available() -> list[str]:
    """Names of the backends that can run here."""
    return [name for name in BACKENDS if _load(name) is not None]


def resolve(backend: str, *, N: int | None = None, M: int | None = None, L: int | None = None,
            loop: bool = False) -> str:
    """Name of the backend to use for ``backend`` (one of BACKENDS or ``"auto"``).

    ``"auto"`` rule (measured, benchmarks/README.md "C core"): the C core when it
    was built, for every problem size; else Numba; else NumPy.  The C core and
    the Numba kernels run the same algorithm with the same bits; measured on
    2 cores, C is as fast or faster at N = 10⁶, M = 8, L = 8 and at
    N = 2·10⁵, M = 64, L = 10 (within noise at large sizes), 5–25 % faster for
    small problems (N ≲ 10⁴), where Numba's dispatch overhead dominates,
    and it needs no JIT: its first call costs milliseconds instead of Numba's
    cache load or compilation (seconds).  Two size rules: for very wide layers
    (``M ≥ _config.AUTO_BLAS_MIN_WIDTH`` = 128) the Numba backend's
    BLAS-blocked kernels are preferred; and for a whole integration
    (``loop=True``: general form, a solver the compiled loop knows) of at most
    ``_config.COMPILED_LOOP_MAX_N`` points, Numba, whose compiled step loop
    costs ~10 µs per step instead of ~70 µs through Python.
    """
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise InputError(f"backend: unknown backend {backend!r}; choose one of 'auto', "
                         + ", ".join(repr(b) for b in BACKENDS))
    if backend == "auto":
        order = ("c", "numba", "numpy")
        if M is not None and M >= _config.AUTO_BLAS_MIN_WIDTH:
            order = ("numba", "c", "numpy")  # BLAS-blocked wide-layer kernels live on the numba side
        if loop and N is not None and N <= _config.COMPILED_LOOP_MAX_N:
            order = ("numba", "c", "numpy")
        for name in order:
            if _load(name) is not None:
                return name
    if _load(backend) is None:
        raise BackendUnavailable(f"backend {backend!r} is not available: {_failures[backend]}")
    return backend


def get(backend: str, **size) -> Backend:
    """The backend object for ``backend`` (after :func:`resolve`); a fresh one for dask (it keeps per-call state)."""
    name = resolve(backend, **size)
    return _new_dask() if name == "dask" else _instances[name]


def _new_dask() -> Backend:
    module, cls = _MODULES["dask"]
    return getattr(importlib.import_module(module), cls)()


def select(backend: str, X: Any, **size) -> Backend:
    """The backend for data ``X``: a dask ``X`` runs on the dask backend, anything else on ``backend``.

    The dask backend keeps per-call state (whether the data were validated), so
    each call gets a fresh one; it runs the Numba chunk kernels on the workers
    and accepts ``backend="auto"`` or ``"numba"`` only.
    """
    if is_dask_array(X):
        if backend not in ("auto", "numba", "dask"):
            resolve(backend)  # unknown names raise the usual InputError
            raise InputError(f"backend: dask inputs run the Numba chunk kernels on the workers; use 'auto', "
                             f"'numba' or 'dask', got {backend!r}")
        resolve("numba")
        return _new_dask()
    return get(backend, **size)
