"""Where a ``FireRedEditPipeline`` computes: its placement, the offload modes it switches to, the networks it places.

The edit (``pipeline.py``) asks two things of this mixin: ``device``, where every tensor passed between phases
lives, and ``_use(part)``, the context in which a phase's network is ready to compute there. Both go through the
``placement`` attribute (``firered_core.offload``): ``ResidentPlacement`` by default (compute where the transformer's
weights are, move nothing), an ``OffloadPlacement`` after ``set_offload``, or any object with the ``Placement``
protocol a host assigns (ComfyUI's model management, for one).

Public API: ``PlacedPipeline`` (mixed into ``FireRedEditPipeline``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, ContextManager

import torch
from torch import nn

from .offload import OffloadPlacement, Placement, ResidentPlacement, format_gb
from .placement import module_device

if TYPE_CHECKING:
    from typing import Self  # Python 3.11+; annotations are never evaluated here

log = logging.getLogger(__name__)

__all__ = ["PlacedPipeline"]


class PlacedPipeline:
    """The placement half of the pipeline; the class using it has ``transformer``, ``vae`` and ``encoder``."""

    transformer: Any
    vae: Any
    encoder: Any
    placement: Placement

    def _resident(self) -> ResidentPlacement:
        return ResidentPlacement(lambda: module_device(self.transformer))

    def set_offload(self, offload: str | None, device: str | torch.device | None = None,
                    max_vram: int | None = None) -> Self:
        """Choose where and how the pipeline computes; returns ``self``.

        ``offload``: "none" moves every component to ``device`` now; "model" keeps them on the CPU and puts each
        on ``device`` only while it runs; "blocks" does the same but streams the transformer's blocks through
        two device slots, keeping as many resident as ``max_vram`` allows; None goes back to computing where the
        weights are. ``device`` defaults to CUDA when available. ``max_vram`` (bytes, None: no limit) bounds the
        weights on the device; a budget the mode cannot work in is refused with a ValueError naming the minimum
        (``offload.BudgetError``), before anything moves.
        """
        if offload is None:
            if max_vram is not None:
                raise ValueError("max_vram needs an offload mode: pass offload='none', 'model' or 'blocks'")
            if device is not None:
                return self.to(device)
            self.placement = self._resident()
            return self
        placement = OffloadPlacement(offload, device, max_vram)
        parts = self.components()
        plans = placement.check(parts)
        placement.prepare(parts)
        self.placement = placement
        log.info("%r: %s", placement, ", ".join(f"{p.part} {format_gb(p.peak_bytes)}" + (
            f" ({len(p.streamed)} of {len(p.block_bytes)} blocks streamed)" if p.streamed else "")
            for p in plans.values()))
        return self

    def components(self) -> dict[str, nn.Module]:
        """The weight-holding network of each part ("encoder", "transformer", "vae"): for the encoder its
        ``model`` (or itself when it is a module); parts without a network are left out."""
        encoder = self.encoder
        if not isinstance(encoder, nn.Module):
            encoder = getattr(encoder, "model", None)
        parts = {"encoder": encoder, "transformer": self.transformer, "vae": self.vae}
        return {part: module for part, module in parts.items() if isinstance(module, nn.Module)}

    def to(self, device: str | torch.device) -> Self:
        """Move every component to ``device`` and compute there (the resident placement); returns ``self``."""
        for part in (self.transformer, self.vae, self.encoder):
            move = getattr(part, "to", None)
            if callable(move):
                move(device)
        self.placement = self._resident()
        return self

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes: its placement's device."""
        return self.placement.device

    def _use(self, part: str) -> ContextManager[None]:
        """``placement.use`` for ``part``'s network; nothing to place for an encoder without one."""
        module = self.components().get(part)
        return self.placement.use(part, module) if module is not None else contextlib.nullcontext()
