"""How block weights travel into the streaming slots: in line (any device), or on a side CUDA stream.

The streamer (``streamer.py``) speaks to one of two copiers with the same calls, so its schedule - which block is
copied into which slot when, and when a slot may be overwritten - is the same code on every device, and the CUDA
specifics live here:

* ``copy_into(dst, host)``: start copying one host tensor into ``dst`` (a view of a slot on the device);
* ``copied()``: a token for "every copy started so far has arrived"; ``wait_copied(token)`` makes the compute
  stream wait for it before it reads those weights;
* ``computed()``: a token for "the compute stream has done what was queued so far" (recorded after a block ran);
  ``copies_wait(token)`` makes later copies wait for it, so a slot is not overwritten while a kernel still reads
  the block it held. Both waits happen on the device; the host never blocks;
* ``finish()``: the compute stream waits for every copy, before the slots are freed.

``InlineCopier`` copies synchronously on the current stream and its tokens are None: right for the CPU, for fake
devices and for CUDA builds without a usable driver. ``CudaStreamCopier`` copies on its own stream with
``non_blocking=True``; that overlaps the copy with compute only when the host tensor is pinned, so
``pin_host_tensors`` replaces a block's host tensors by pinned copies once, before streaming starts. Tensors
file-backed (``loading.mapped``, what ``offload="blocks"`` loads) stay mapped: pinning would copy the file into
locked RAM. If pinning fails (the OS
limits locked memory), streaming goes on from pageable memory with a warning.

Public API: ``Copier``, ``InlineCopier``, ``CudaStreamCopier``, ``make_copier``, ``pin_host_tensors``.
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Protocol

import torch
from torch import nn

from ..loading.mapped import is_mapped
from .weights import set_entry, weight_entries

log = logging.getLogger(__name__)

__all__ = ["Copier", "InlineCopier", "CudaStreamCopier", "make_copier", "pin_host_tensors"]


class Copier(Protocol):
    device: torch.device

    def copy_into(self, dst: torch.Tensor, host: torch.Tensor) -> None: ...

    def copied(self) -> Any: ...

    def wait_copied(self, token: Any) -> None: ...

    def computed(self) -> Any: ...

    def copies_wait(self, token: Any) -> None: ...

    def finish(self) -> None: ...


class InlineCopier:
    """Copies in line on the current stream: every copy has arrived when ``copy_into`` returns."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def copy_into(self, dst: torch.Tensor, host: torch.Tensor) -> None:
        dst.copy_(host)

    def copied(self) -> None:
        return None

    def wait_copied(self, token: None) -> None:
        pass

    def computed(self) -> None:
        return None

    def copies_wait(self, token: None) -> None:
        pass

    def finish(self) -> None:
        pass


class CudaStreamCopier:
    """Copies on a side CUDA stream, ordered against the compute stream by events (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def _compute_stream(self) -> "torch.cuda.Stream":
        return torch.cuda.current_stream(self.device)

    def copy_into(self, dst: torch.Tensor, host: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):
            dst.copy_(host, non_blocking=True)

    def copied(self) -> "torch.cuda.Event":
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def wait_copied(self, token: "torch.cuda.Event | None") -> None:
        if token is not None:
            self._compute_stream().wait_event(token)

    def computed(self) -> "torch.cuda.Event":
        event = torch.cuda.Event()
        event.record(self._compute_stream())
        return event

    def copies_wait(self, token: "torch.cuda.Event | None") -> None:
        if token is not None:
            self.stream.wait_event(token)

    def finish(self) -> None:
        self._compute_stream().wait_stream(self.stream)


def make_copier(device: torch.device) -> Copier:
    """``CudaStreamCopier`` for a CUDA device when CUDA really is available, else ``InlineCopier``."""
    if device.type == "cuda" and torch.cuda.is_available():
        return CudaStreamCopier(device)
    return InlineCopier(device)


def pin_host_tensors(modules: Collection[nn.Module]) -> int:
    """Replace the CPU tensors of ``modules`` by pinned copies (file-mapped ones excepted); returns how many.

    Does nothing without a usable CUDA driver (pinning needs one). Stops with a warning at the first failure.
    """
    if not torch.cuda.is_available():
        return 0
    copies: dict[int, torch.Tensor] = {}  # a tensor registered twice gets one pinned copy
    for module in modules:
        for owner, name, is_param, t in list(weight_entries(module)):
            if t.device.type != "cpu" or t.is_pinned() or is_mapped(t):
                continue
            copy = copies.get(id(t))
            if copy is None:
                try:
                    copy = t.pin_memory()
                except RuntimeError as exc:
                    log.warning("pinning block weights failed after %d tensors (%s); streaming from pageable "
                                "memory, which overlaps less with compute", len(copies), exc)
                    return len(copies)
                copies[id(t)] = copy = nn.Parameter(copy, requires_grad=t.requires_grad) if is_param else copy
            set_entry(owner, name, is_param, copy)
    return len(copies)
