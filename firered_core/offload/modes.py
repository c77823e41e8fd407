"""``OffloadPlacement``: three ways to fit the model into the compute device's memory.

=========  ===================================================================================================
``none``   every component is moved to the device once (``prepare``, or its first ``use``) and stays there:
           fastest, and the device must hold all of it (~57 GB for FireRed in bf16)
``model``  each component is copied to the device when it runs and dropped from it afterwards, so one
           component is there at a time; the host copy is never touched, so "moving back" costs nothing
``blocks`` as ``model`` for components that fit ``max_vram``; a component that does not (always the
           transformer when there is no budget) keeps its fixed weights on the device and streams its blocks
           through two slots (``streamer.BlockStreamer``), keeping as many blocks resident as the budget allows
           (``plan.plan_part``)
=========  ===================================================================================================

``max_vram`` (bytes, or None for no limit) bounds the weights on the device - the ledger counts them, slots
included - never the activations, which depend on the image size (see docs/MEMORY.md for both). ``check`` refuses
a budget below what the mode needs before anything moves, naming the minimum; ``prepare`` puts the components
where the mode wants them between calls (on the device for ``none``, on the CPU otherwise).

Public API: ``OffloadPlacement``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from .base import DeviceLedger, check_max_vram, check_mode, format_gb, resolve_device
from .copier import Copier, make_copier, pin_host_tensors
from .plan import BudgetError, PartPlan, plan_part, required_bytes
from .streamer import BlockStreamer
from .weights import place_weights, restore_weights, tensor_nbytes

log = logging.getLogger(__name__)

__all__ = ["OffloadPlacement"]


class OffloadPlacement:
    """A ``Placement`` computing on ``device`` under offload ``mode`` (see the module docstring)."""

    def __init__(self, mode: str, device: str | torch.device | None = None, max_vram: int | None = None, *,
                 pin_memory: bool = True) -> None:
        """``pin_memory``: pin the host copies of streamed blocks on CUDA (faster copies, locked RAM)."""
        self.mode = check_mode(mode)
        self.device = resolve_device(device)
        self.max_vram = check_max_vram(max_vram)
        self.pin_memory = pin_memory
        self.offload_device = torch.device("cpu")
        self.ledger = DeviceLedger()
        self._copier: Copier | None = None

    def __repr__(self) -> str:
        budget = "no limit" if self.max_vram is None else format_gb(self.max_vram)
        return f"OffloadPlacement({self.mode!r}, device={self.device}, max_vram={budget})"

    # -- planning -----------------------------------------------------------------------------------------------

    def plan(self, part: str, module: nn.Module) -> PartPlan:
        """What of ``module`` is on the device while it runs (raises ``BudgetError`` when nothing fits)."""
        if self.mode == "none":
            return plan_part(part, module, None, stream=False)
        return plan_part(part, module, self.max_vram, stream=self.mode == "blocks")

    def check(self, parts: Mapping[str, nn.Module]) -> dict[str, PartPlan]:
        """The plan of every component; a ``BudgetError`` naming the smallest workable ``max_vram`` if the budget
        is too small for this mode."""
        if self.max_vram is not None:
            need, who = required_bytes(self.mode, parts)
            if need > self.max_vram:
                raise BudgetError(f"max_vram={format_gb(self.max_vram)} is too small for offload={self.mode!r}: "
                                  f"it needs at least {format_gb(need)} on the device ({who}); give max_vram >= "
                                  f"{format_gb(need)}" + self._hint(parts))
        return {part: self.plan(part, module) for part, module in parts.items()}

    def _hint(self, parts: Mapping[str, nn.Module]) -> str:
        lighter = {"none": "model", "model": "blocks"}.get(self.mode)
        if lighter is None:
            return ""
        need, _ = required_bytes(lighter, parts)
        return f" or use offload={lighter!r} (needs {format_gb(need)})"

    # -- moving -------------------------------------------------------------------------------------------------

    def prepare(self, parts: Mapping[str, nn.Module]) -> None:
        """Put every component where this mode keeps it between calls: on the device (``none``), else on the CPU."""
        for module in parts.values():
            if self.mode == "none":
                self._keep(module)
            else:
                _move_for_good(module, self.offload_device, lambda t: t.to(self.offload_device))

    @contextlib.contextmanager
    def use(self, part: str, module: nn.Module) -> Iterator[None]:
        """``module`` ready to compute on ``device`` while the context is open (see the module docstring)."""
        if self.mode == "none":
            self._keep(module)
            yield
            return
        plan = self.plan(part, module)
        streamed = plan.streamed_blocks
        placed = place_weights(module, self.device, self._copy, skip=streamed)  # counted as they are copied
        log.debug("%s on %s: %s placed, %d of %d blocks streamed", part, self.device, format_gb(placed.nbytes),
                  len(streamed), len(plan.blocks))
        try:
            if streamed:
                if self.pin_memory:
                    pin_host_tensors(streamed)
                with BlockStreamer(streamed, self._stream_copier(), self.ledger):
                    yield
            else:
                yield
        finally:
            restore_weights(placed)
            self.ledger.remove(placed.nbytes)

    def _copy(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the device, counted in the ledger before the memory is taken."""
        self.ledger.add(tensor_nbytes(host))
        return host.to(self.device, copy=True)  # a copy even on the same device (file-backed host tensors)

    def _stream_copier(self) -> Copier:
        if self._copier is None:
            self._copier = make_copier(self.device)
        return self._copier

    def _keep(self, module: nn.Module) -> None:
        """Move ``module``'s tensors that are not on the device there for good (``none``)."""
        _move_for_good(module, self.device, self._copy)


def _move_for_good(module: nn.Module, device: torch.device, copy: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Replace every tensor of ``module`` not on ``device`` by ``copy(tensor)``, dropping the old one. The new
    tensors are ordinary (not inference) tensors and keep their ``requires_grad``."""
    with torch.inference_mode(False), torch.no_grad():
        placed = place_weights(module, device, copy)
    for owner, name, is_param, host in placed.entries:
        if is_param and host.requires_grad:
            owner._parameters[name].requires_grad_(True)

