"""Array interchange (truncfast/_arrays.py): host views without copies, clear errors for device arrays."""

from __future__ import annotations

import numpy as np
import pytest

import truncfast as tf
from truncfast._arrays import as_host_array


class DLPackOnly:
    """Exports only DLPack (no __array__, no buffer protocol), on the CPU."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class FakeDevice:
    """A GPU-resident array as DLPack consumers see it: device (type, id) and nothing readable."""

    def __init__(self, dev):
        self.dev = dev

    def __dlpack_device__(self):
        return self.dev

    def __dlpack__(self, **kw):  # pragma: no cover - must never be called
        raise AssertionError("a device array must not be exported")

    def __array__(self, *a, **kw):  # pragma: no cover - must never be called
        raise AssertionError("a device array must not be converted")


class FakeCuda:
    """Numba-CUDA / CuPy style: only __cuda_array_interface__."""

    __cuda_array_interface__ = {"shape": (3,), "typestr": "<f8", "data": (0, False), "version": 3}  # noqa: RUF012


class Unreadable:
    def __array__(self, *a, **kw):
        raise RuntimeError("no data here")


def test_numpy_and_memmap_pass_through(tmp_path):
    a = np.arange(6.0).reshape(2, 3)
    assert as_host_array(a, "X") is a
    path = tmp_path / "x.npy"
    np.save(path, a)
    m = np.load(path, mmap_mode="r")
    assert as_host_array(m, "X") is m


def test_dlpack_only_object_is_viewed():
    a = np.arange(12.0).reshape(3, 4)[:, ::2]  # strided
    out = as_host_array(DLPackOnly(a), "X")
    assert np.shares_memory(out, a)
    np.testing.assert_array_equal(out, a)


def test_array_likes_still_accepted():
    np.testing.assert_array_equal(as_host_array([[1.0, 2.0]], "X"), [[1.0, 2.0]])
    assert as_host_array(3, "x").shape == ()


@pytest.mark.parametrize("dev, label", [((2, 0), "CUDA:0"), ((10, 1), "ROCm:1"), ((8, 0), "Metal:0"),
                                        ((99, 3), "type 99:3")])
def test_device_arrays_are_refused(dev, label):
    with pytest.raises(tf.InputError, match=f"X: array is on device {label}; .*move it there first"):
        as_host_array(FakeDevice(dev), "X")


def test_cuda_array_interface_is_refused():
    with pytest.raises(tf.InputError, match="targets: array is on device CUDA"):
        as_host_array(FakeCuda(), "targets")


def test_unreadable_names_the_argument():
    with pytest.raises(tf.InputError, match="labels: cannot be read as an array"):
        as_host_array(Unreadable(), "labels")


def test_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        as_host_array(FakeDevice((2, 0)), "R")


# ------------------------------------------------------------------ PyTorch ---

def test_torch_cpu_tensors_are_viewed():
    torch = pytest.importorskip("torch")
    t = torch.arange(12.0, dtype=torch.float64).reshape(3, 4).requires_grad_()
    out = as_host_array(t, "X")
    assert np.shares_memory(out, t.detach().numpy())
    s = t.detach().T  # non-contiguous: still a view, with strides
    out = as_host_array(s, "X")
    assert np.shares_memory(out, t.detach().numpy()) and not out.flags.c_contiguous
    np.testing.assert_array_equal(out, s.numpy())
    f32 = torch.ones(5, dtype=torch.float32)
    assert as_host_array(f32, "b").dtype == np.float32


def test_torch_lazy_negation_is_resolved():
    torch = pytest.importorskip("torch")
    t = torch.arange(4.0, dtype=torch.float64)
    neg = torch._neg_view(t)
    assert neg.is_neg()
    np.testing.assert_array_equal(as_host_array(neg, "X"), -np.arange(4.0))


def test_torch_errors():
    torch = pytest.importorskip("torch")
    with pytest.raises(tf.InputError, match="X: is a meta tensor"):
        as_host_array(torch.zeros(3, device="meta"), "X")
    with pytest.raises(tf.InputError, match=r"R: dtype torch.bfloat16 cannot be read .* R.double\(\)"):
        as_host_array(torch.zeros(3, dtype=torch.bfloat16), "R")
    with pytest.raises(tf.InputError, match="X: torch.sparse_coo tensors are not supported"):
        as_host_array(torch.eye(3).to_sparse(), "X")


def test_torch_tensors_through_the_numpy_api_values():
    """What the lead's wiring will give: a tensor viewed by as_host_array is an ordinary input."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    R = np.linalg.qr(rng.standard_normal((2, 3, 3)))[0]
    b, X = rng.standard_normal((2, 3)), rng.standard_normal((10, 3))
    labels, targets = rng.integers(0, 2, 10), rng.standard_normal((2, 3))
    tensors = [torch.from_numpy(a) for a in (R, b, X, labels, targets)]
    views = [as_host_array(t, n) for t, n in zip(tensors, ("R", "b", "X", "labels", "targets"))]
    assert tf.loss(*views) == tf.loss(R, b, X, labels, targets)


# ---------------------------------------------------------------------- JAX ---

def test_jax_cpu_arrays_are_viewed():
    jax = pytest.importorskip("jax")
    x = jax.device_put(np.arange(8.0, dtype=np.float32).reshape(2, 4))
    out = as_host_array(x, "X")
    assert isinstance(out, np.ndarray) and not out.flags.owndata
    assert np.shares_memory(out, np.asarray(x))
    np.testing.assert_array_equal(out, np.arange(8.0).reshape(2, 4))
