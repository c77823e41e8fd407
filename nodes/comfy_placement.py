"""``ComfyPlacement``: the pipeline's placement (``firered_core.offload``) backed by ComfyUI's model management.

The pipeline asks its placement to make a component ready before each phase (encode the instruction, VAE-encode
the references, sample, decode). Here that request goes to ComfyUI: ``load_models_gpu`` with that component's own
``ModelPatcher``, so ComfyUI loads it whole or partially (the layers it leaves off the device stream their weights)
and may first evict the other components, exactly as it does between core's CLIP and MODEL. Nothing is moved back
afterwards: whether a component stays on the device is ComfyUI's decision, made when memory is next needed.

One exception to "let ComfyUI choose": ComfyUI only moves layers whose parameters are all their own, and a layer
carrying one of the plugin's unmerged LoRA adapters is not one. When the component fits on the device whole, its
load is asked as a full load (which moves the whole module), so such layers do not stream needlessly; when it does
not fit, ComfyUI loads it partially and those layers stream their weights.
Outside ComfyUI there is no model management and the pipeline keeps its own placement.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from . import comfy_bridge

if TYPE_CHECKING:
    import torch
    from torch import nn


class ComfyPlacement:
    """Compute on ComfyUI's device; ``use(part, module)`` loads that part's patcher first."""

    def __init__(self, patchers: Mapping[str, Any], device: "torch.device") -> None:
        self.patchers = dict(patchers)
        self.device = device

    @contextmanager
    def use(self, part: str, module: "nn.Module") -> Iterator[None]:
        from firered_core.lora import list_loras

        patcher = self.patchers.get(part)
        full = bool(list_loras(module)) and comfy_bridge.fits_whole(patcher)
        comfy_bridge.load_for_use([patcher], full=full)
        yield
