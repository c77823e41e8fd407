"""A stand-in CUDA device for machines without one: tensors that say ``cuda:0`` and keep their values in host RAM.

``FakeTensorMode`` fakes devices too, but its tensors have no values, so a whole edit cannot run under it: the
pipeline reads values on the way (``bool(mask.all())``, ``.item()``, the PNG at the end). Here every tensor that
claims ``cuda:0`` wraps a real CPU tensor, every op runs on those CPU tensors, and the results are wrapped again,
so an edit runs to the end with real numbers - while devices are checked the way CUDA checks them:

* an op mixing a ``cuda:0`` tensor with a CPU tensor fails ("Expected all tensors to be on the same device"),
  except CPU scalars (0-d tensors), which CUDA kernels accept, and the indices of indexing ops;
* only copies (``.to``, ``copy_``) cross devices; ``.numpy()`` of a device tensor fails; a CPU random generator
  cannot fill a device tensor.

Kernels are the CPU's; where torch would pick a different kernel for a CUDA tensor (scaled dot-product
attention picks its backend from the device type), the CPU one is called, so results are bit-identical to a run
on the CPU and the test can demand it.

``torch.cuda.is_available()`` stays False: code that needs a driver (streams, events, pinned memory) must not run
and is not exercised here. Internals used: the mode takes the fake-mode slot of the dispatcher
(``_TorchDispatchModeKey.FAKE``) because with it active torch skips CUDA's lazy initialisation, which would fail
without a driver - the same thing ``FakeTensorMode`` does (torch 2.14).

    with EmulatedCuda():
        x = torch.ones(3).to("cuda")          # x.device == cuda:0, values in host memory
        pipe.set_offload("blocks", device="cuda")
        result = pipe.edit([image], "make it red")
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["EmulatedCuda", "EmulatedTensor", "DEVICE"]

DEVICE = torch.device("cuda", 0)
aten = torch.ops.aten

# ops whose whole point is to cross devices
_COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from_and_resize.default, aten._copy_from.default}
# tensor constructors from Python data, which initialise CUDA before dispatching
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}
# ops CUDA runs with CPU index tensors
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class EmulatedTensor(torch.Tensor):
    """A tensor on the emulated device: its values are ``inner``, a CPU tensor of the same shape and strides."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> "EmulatedTensor":
        out = torch.Tensor._make_wrapper_subclass(cls, inner.size(), strides=inner.stride(),
                                                  storage_offset=inner.storage_offset(), dtype=inner.dtype,
                                                  layout=inner.layout, device=DEVICE,
                                                  requires_grad=inner.requires_grad)
        out.inner = inner
        return out

    def untyped_storage(self) -> torch.UntypedStorage:  # type: ignore[override]
        return self.inner.untyped_storage()

    def tolist(self) -> Any:  # type: ignore[override]
        return self.inner.tolist()  # a read back to the host, as CUDA does it

    def numpy(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return f"EmulatedTensor({self.inner!r}, device='{DEVICE}')"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return _emulate(func, args, kwargs or {})


def _is_device(value: Any) -> bool:
    return value is not None and torch.device(value).type == "cuda"


def _check_devices(func: Any, args: tuple, kwargs: dict) -> None:
    """Raise CUDA's error when a device tensor meets a CPU tensor that CUDA would not accept."""
    generator = kwargs.get("generator")
    if generator is not None and _is_device(kwargs.get("device")) and generator.device.type != "cuda":
        raise RuntimeError(f"Expected a 'cuda' device type for generator but found '{generator.device.type}'")
    if func in _COPIES or func in _INDEXING:
        return
    leaves = pytree.tree_leaves((args, kwargs))
    if not any(isinstance(t, EmulatedTensor) for t in leaves) and not _is_device(kwargs.get("device")):
        return
    if any(isinstance(t, torch.Tensor) and not isinstance(t, EmulatedTensor) and t.dim() > 0 for t in leaves):
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"{DEVICE} and cpu! (when checking arguments for {func})")


def _emulate(func: Any, args: tuple, kwargs: dict) -> Any:
    """Run ``func`` on the CPU values, wrapping results that CUDA would put on the device."""
    _check_devices(func, args, kwargs)
    inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, EmulatedTensor)]
    on_device = bool(inputs) or _is_device(kwargs.get("device"))
    if not on_device:
        return func(*args, **kwargs)
    to_host = func is aten._to_copy.default and kwargs.get("device") is not None and not _is_device(kwargs["device"])
    if func in (aten.copy_.default, aten._copy_from_and_resize.default) and not isinstance(args[0], EmulatedTensor):
        to_host = True  # copying device values into a host tensor
    unwrap = {id(t.inner): t for t in inputs}
    plain_args, plain_kwargs = pytree.tree_map(lambda x: x.inner if isinstance(x, EmulatedTensor) else x,
                                               (args, kwargs))
    if _is_device(plain_kwargs.get("device")):
        plain_kwargs = {**plain_kwargs, "device": torch.device("cpu")}
    out = func(*plain_args, **plain_kwargs)
    if to_host:
        return out

    def wrap(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        same = unwrap.get(id(x))  # in-place ops return their argument
        if same is not None:
            return same
        with torch.inference_mode(x.is_inference()):  # a view of a normal tensor is normal, as on the CPU
            return EmulatedTensor(x)

    return pytree.tree_map(wrap, out)


class _SameKernels(TorchFunctionMode):
    """Calls the CPU kernel of ops whose kernel torch would choose by device type (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _FROM_DATA and _is_device(kwargs.get("device")):
            # built on the host, then copied: these constructors would initialise CUDA before any mode sees them
            host_args = pytree.tree_map(lambda x: x.inner if isinstance(x, EmulatedTensor) else x, args)
            return func(*host_args, **{**kwargs, "device": "cpu"}).to(DEVICE)
        if func is F.scaled_dot_product_attention:
            leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if leaves and all(isinstance(t, EmulatedTensor) for t in leaves):
                plain_args, plain_kwargs = pytree.tree_map(
                    lambda x: x.inner if isinstance(x, EmulatedTensor) else x, (args, kwargs))
                return EmulatedTensor(func(*plain_args, **plain_kwargs))
        return func(*args, **kwargs)


class _DeviceMode(TorchDispatchMode):
    """Routes every op through ``_emulate`` (factories with ``device='cuda'`` included)."""

    def __init__(self) -> None:
        super().__init__()
        self._mode_key = torch._C._TorchDispatchModeKey.FAKE  # CUDA's lazy init is skipped under a fake mode

    @classmethod
    def is_infra_mode(cls) -> bool:
        return True

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:  # composite ops (``aten.to``...) run as the ops they are made of, emulated one by one
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return _emulate(func, args, kwargs)


class EmulatedCuda:
    """Context manager: ``cuda:0`` is the emulated device while it is open."""

    def __enter__(self) -> "EmulatedCuda":
        torch._C._ensureCUDADeviceGuardSet()  # device guards of cuda tensors must not need a driver
        self._lift = torch._C._only_lift_cpu_tensors()
        torch._C._set_only_lift_cpu_tensors(True)  # torch.tensor(..., device='cuda') builds on the CPU first
        # Module.to() must register new parameter objects: ``param.data = device_tensor`` would leave a plain
        # Parameter claiming cuda:0 without the values behind it
        self._overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        self._modes = [_SameKernels(), _DeviceMode()]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        torch._C._set_only_lift_cpu_tensors(self._lift)
        torch.__future__.set_overwrite_module_params_on_conversion(self._overwrite)
