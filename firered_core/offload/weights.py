"""Put a module's weights on the compute device and take them off again, leaving the host tensors untouched.

Why not ``module.to(device)`` and back: moving back copies every weight device -> host and allocates fresh host
memory each time, weights memory-mapped from a file would turn into anonymous copies, pinned memory would be lost,
and a module could not be partly placed (the non-block weights of a transformer without its blocks). Instead each
parameter or buffer entry of a module is *replaced* by a device copy, and on release the original host tensor - the
same object, so the same storage, mapping and pinning - is put back. Inference never writes weights, so nothing
has to travel back.

Tensors that already sit on the target device are left alone (and not counted). A tensor registered twice (tied
weights) gets one device copy. Device copies are plain ``nn.Parameter``s without gradients: placements serve
inference.

``packed_layout`` lays a module's tensors out in one flat buffer (each start aligned to ``PACK_ALIGN`` bytes), the
form in which streamed blocks travel (``streamer.py``); ``packed_bytes`` is that buffer's size.

Public API: ``PlacedWeights``, ``weight_entries``, ``tensor_nbytes``, ``module_bytes``, ``place_weights``,
``restore_weights``, ``set_entry``, ``packed_layout``, ``packed_bytes``, ``PACK_ALIGN``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Iterator

import torch
from torch import nn

from ..loading.mapped import is_mapped, release

__all__ = ["PlacedWeights", "weight_entries", "tensor_nbytes", "module_bytes", "place_weights", "restore_weights",
           "set_entry", "packed_layout", "packed_bytes", "PACK_ALIGN"]

PACK_ALIGN = 256  # bytes; every tensor of a packed buffer starts at a multiple (what CUDA kernels like best)

# (owning module, attribute name, is a parameter (else a buffer), tensor)
Entry = tuple[nn.Module, str, bool, torch.Tensor]


@dataclass
class PlacedWeights:
    """Device copies of some of a module's tensors and the host tensors they replaced."""

    entries: list[Entry] = field(default_factory=list)  # the HOST tensors, to put back
    device_tensors: list[torch.Tensor] = field(default_factory=list)  # one per distinct host tensor
    nbytes: int = 0  # bytes of ``device_tensors``


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes ``t``'s values take (a copy of a view costs the view, not its whole storage)."""
    return t.numel() * t.element_size()


def weight_entries(module: nn.Module, skip: Collection[nn.Module] = ()) -> Iterator[Entry]:
    """Every parameter and buffer of ``module`` and its submodules, except those inside a module of ``skip``."""
    skip_ids = {id(m) for m in skip}
    seen: set[int] = set()
    stack = [module]
    while stack:
        m = stack.pop()
        if id(m) in skip_ids or id(m) in seen:
            continue
        seen.add(id(m))
        for name, p in m._parameters.items():
            if p is not None:
                yield m, name, True, p
        for name, b in m._buffers.items():
            if b is not None:
                yield m, name, False, b
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))


def module_bytes(module: nn.Module, skip: Collection[nn.Module] = ()) -> int:
    """Bytes of ``module``'s distinct tensors (parameters and buffers), without the subtrees in ``skip``."""
    seen: set[int] = set()
    total = 0
    for _, _, _, t in weight_entries(module, skip):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_nbytes(t)
    return total


def set_entry(owner: nn.Module, name: str, is_param: bool, value: torch.Tensor) -> None:
    """Register ``value`` as ``owner``'s parameter or buffer ``name``, bypassing ``__setattr__``'s type checks."""
    if is_param:
        owner._parameters[name] = value if isinstance(value, nn.Parameter) else nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[name] = value


def place_weights(module: nn.Module, device: torch.device, copy: Callable[[torch.Tensor], torch.Tensor],
                  skip: Collection[nn.Module] = ()) -> PlacedWeights:
    """Replace every tensor of ``module`` (outside ``skip``) that is not on ``device`` by ``copy(tensor)``.

    A file-backed tensor (``loading.mapped``) counts as not on the device even when the device is the CPU: it is
    copied into owned memory (what "resident" means there, and aligned like any allocation) and its file pages are
    handed back."""
    placed = PlacedWeights()
    copies: dict[int, torch.Tensor] = {}
    for owner, name, is_param, host in weight_entries(module, skip):
        if host.device == device and not is_mapped(host):
            continue
        dev = copies.get(id(host))
        if dev is None:
            dev = copies[id(host)] = copy(host)
            release([host])
            placed.device_tensors.append(dev)
            placed.nbytes += tensor_nbytes(dev)
        set_entry(owner, name, is_param, dev)
        placed.entries.append((owner, name, is_param, host))
    return placed


def restore_weights(placed: PlacedWeights) -> None:
    """Put the host tensors of ``placed`` back; the device copies are dropped (freed once nothing uses them)."""
    for owner, name, is_param, host in reversed(placed.entries):
        set_entry(owner, name, is_param, host)
    placed.entries.clear()
    placed.device_tensors.clear()


def packed_layout(module: nn.Module) -> tuple[list[Entry], list[int], int]:
    """``(entries, offsets, size)``: every tensor entry of ``module``, the byte offset of its values in one flat
    buffer (a tensor registered twice shares its offset), and the buffer's size in bytes."""
    entries = list(weight_entries(module))
    first: dict[int, int] = {}
    offsets = []
    size = 0
    for _, _, _, t in entries:
        offset = first.get(id(t))
        if offset is None:
            offset = first[id(t)] = size
            size += -(-tensor_nbytes(t) // PACK_ALIGN) * PACK_ALIGN
        offsets.append(offset)
    return entries, offsets, size


def packed_bytes(module: nn.Module) -> int:
    """Size in bytes of ``module``'s tensors packed into one buffer (``packed_layout``)."""
    return packed_layout(module)[2]
