"""``DeviceMemoryTracker``: the bytes alive on a device, counted from every op's outputs - also on fake devices.

``torch.cuda.memory_allocated`` needs a GPU. Under ``FakeTensorMode`` tensors claim ``cuda:0`` but own no memory,
which is exactly what lets a 20 B-parameter model run on a laptop to see how much memory it *would* take. This
dispatch mode watches every aten op while it is active: each output tensor on the tracked device type is keyed by
its storage (views share one) and held by a weak reference; a storage's bytes count from its first tracked tensor
until the last one is garbage collected. ``live`` and ``peak`` are then what the CUDA caching allocator would
report as allocated, minus its rounding, caching and fragmentation (docs/MEMORY.md lists what else it cannot see).

Only tensors produced while the mode is active are counted; enter it before the model moves to the device.
Tensors that own a storage through a tensor subclass report it through ``untyped_storage()``.

Public API: ``DeviceMemoryTracker``.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DeviceMemoryTracker"]


class DeviceMemoryTracker(TorchDispatchMode):
    """Live and peak bytes of storages on ``device_type`` (``on_op(tracker)`` runs after every op)."""

    def __init__(self, device_type: str = "cuda",
                 on_op: Callable[["DeviceMemoryTracker"], None] | None = None) -> None:
        super().__init__()
        self.device_type = device_type
        self.on_op = on_op
        self._storages: dict[int, list[int]] = {}  # storage key -> [nbytes, tracked tensors viewing it]
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type:
                self._watch(t)
        if self.on_op is not None:
            self.on_op(self)
        return out

    @staticmethod
    def storage_key(t: torch.Tensor) -> int:
        """The identity of ``t``'s storage, shared by all its views (valid while the storage lives)."""
        return t.untyped_storage()._cdata

    def bytes_of(self, tensors: Iterable[torch.Tensor]) -> int:
        """Bytes of the distinct tracked storages behind ``tensors`` (untracked ones count 0)."""
        keys = {self.storage_key(t) for t in tensors if t.device.type == self.device_type}
        return sum(self._storages[k][0] for k in keys if k in self._storages)

    def reset_peak(self) -> None:
        self.peak = self.live

    def _watch(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._forget, key)

    def _forget(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.live -= entry[0]
