"""Array interchange at the API boundary: host arrays from any array library, without copies.

:func:`as_host_array` turns what a caller hands to a public function — a NumPy
array, a memmap, a PyTorch CPU tensor, a JAX CPU array, anything with
``__array__`` or ``__dlpack__`` — into a NumPy array that *views* the caller's
memory whenever NumPy can do so (DLPack or the buffer protocol), so a float64
C-contiguous input reaches the kernels without one byte copied.  Arrays that
live on another device (a CUDA tensor, a JAX GPU array, a meta tensor) are
refused with an :class:`~truncfast.InputError` naming the argument and saying
to move them to the CPU: truncfast's kernels run on the host, and a silent
device-to-host copy of 10⁶ points per gradient would hide the real cost.

The result may be read-only (JAX buffers, read-only memmaps); truncfast never
writes into its inputs.  Dtype, shape and value checks stay in ``_validate``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from truncfast._errors import InputError

__all__ = ["as_host_array"]

#: DLPack device type codes (dlpack.h, ``DLDeviceType``): only kDLCPU is host memory NumPy reads.
_DLPACK_CPU = 1
_DLPACK_NAMES = {
    2: "CUDA", 3: "CUDA host (pinned)", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm",
    11: "ROCm host", 12: "ext_dev", 13: "CUDA managed", 14: "oneAPI", 15: "WebGPU", 16: "Hexagon", 17: "MAIA",
}


def _move_hint(name: str, where: str) -> InputError:
    return InputError(
        f"{name}: array is on device {where}; truncfast computes on the CPU, move it there first "
        f"(e.g. {name}.cpu() in PyTorch, jax.device_put({name}, jax.devices('cpu')[0]) in JAX)"
    )


def _torch_view(x: Any, name: str) -> np.ndarray:
    """A NumPy view of a PyTorch tensor (detached: autograd bookkeeping is not data)."""
    dev = x.device.type
    if dev == "meta":
        raise InputError(f"{name}: is a meta tensor (shape only, no data); truncfast needs a CPU tensor with values")
    if dev != "cpu":
        raise _move_hint(name, str(x.device))
    if x.layout is not _torch_strided():
        raise InputError(f"{name}: {x.layout} tensors are not supported; pass a dense tensor ({name}.to_dense())")
    t = x.detach()
    # lazily negated / conjugated views carry a bit NumPy cannot see; resolving copies only those
    if t.is_neg():
        t = t.resolve_neg()
    if t.is_conj():
        t = t.resolve_conj()
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as exc:  # bfloat16 and other dtypes without a NumPy twin
        raise InputError(
            f"{name}: dtype {x.dtype} cannot be read as a NumPy array ({exc}); convert it, e.g. {name}.double()"
        ) from None


def _torch_strided():
    import torch

    return torch.strided


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to ask
    return torch is not None and isinstance(x, torch.Tensor)


def as_host_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array on the host, a view of ``x``'s memory when NumPy can make one.

    Accepted without a copy: NumPy arrays and memmaps (returned as they are),
    PyTorch CPU tensors (also ones that require grad: the view is detached),
    objects whose ``__array__`` or buffer protocol gives a view (JAX CPU
    arrays, ...) and objects exporting only ``__dlpack__`` on the CPU.
    Anything else NumPy can read (lists, scalars) is converted by
    ``np.asarray`` as before.

    Raises
    ------
    InputError
        ``x`` lives on a GPU or another non-CPU device (``__dlpack_device__()``
        other than kDLCPU, a CUDA/meta PyTorch tensor, ``__cuda_array_interface__``),
        or cannot be read as an array at all.  The message names ``name``.
    """
    if isinstance(x, np.ndarray):
        return x
    if _is_torch_tensor(x):
        return _torch_view(x, name)
    if hasattr(x, "__cuda_array_interface__"):
        raise _move_hint(name, "CUDA")
    dlpack_device = getattr(x, "__dlpack_device__", None)
    if dlpack_device is not None:
        try:
            dev_type, dev_id = dlpack_device()
        except Exception:  # noqa: BLE001 - any producer's failure to say: let NumPy try below
            dev_type = None
        if dev_type is not None and int(dev_type) != _DLPACK_CPU:
            label = _DLPACK_NAMES.get(int(dev_type), f"type {int(dev_type)}")
            raise _move_hint(name, f"{label}:{int(dev_id)}")
        # ``__array__`` first when both exist: JAX serves it as a view, while its DLPack
        # export copies the buffer inside a jit host callback (measured: 50 ms for 64 MB)
        if dev_type is not None and hasattr(x, "__dlpack__") and not hasattr(x, "__array__"):
            try:
                return np.from_dlpack(x)
            except (BufferError, TypeError, RuntimeError, ValueError):
                pass  # e.g. a dtype DLPack cannot carry to NumPy: let np.asarray try
    try:
        return np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - whatever __array__ raises, the caller gets an InputError
        raise InputError(f"{name}: cannot be read as an array ({type(exc).__name__}: {exc})") from None
