"""One ``nn.Module`` per pipeline component (condition encoder, transformer, VAE), each for its own ModelPatcher.

ComfyUI loads, partially loads, offloads and frees a model as one ``ModelPatcher`` over one ``torch.nn.Module``.
Managing the three components separately lets ComfyUI do with them what it does with core's CLIP and MODEL: load
the encoder, encode, and evict it when the transformer needs the memory. Each container holds its component as a
child named after the part (shared, not copied), so ComfyUI writes its bookkeeping attributes (``device``,
``model_loaded_weight_memory``, ``model_lowvram``...) on the container, never on the FireRed modules, and its log
names the part ("Requested to load FireRedTransformerWeights").

Before a component is handed to ComfyUI, ``firered_core.ops.adopt`` switches any plain torch layer in it (the
encoder from transformers, the compact VAE) to the casting layers, so every weight-holding layer can be left off
the compute device by a partial load and still compute (``comfy_cast_weights``).

Imported only when a model is loaded: it needs torch, which the plugin's import must not pull in.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from firered_core.ops import adopt

PARTS = ("encoder", "transformer", "vae")  # the order a pipeline uses them in


class ComponentWeights(nn.Module):
    """One component of a pipeline under the attribute named by ``part``."""

    part = ""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        adopt(module)
        self.add_module(self.part, module)


class FireRedEncoderWeights(ComponentWeights):
    part = "encoder"


class FireRedTransformerWeights(ComponentWeights):
    part = "transformer"


class FireRedVAEWeights(ComponentWeights):
    part = "vae"


_CONTAINERS = {c.part: c for c in (FireRedEncoderWeights, FireRedTransformerWeights, FireRedVAEWeights)}


def component_modules(pipeline: Any) -> dict[str, nn.Module]:
    """The pipeline's weight-holding components by part; an encoder without an ``nn.Module`` (none) is left out."""
    parts = {"encoder": getattr(pipeline.encoder, "model", None), "transformer": pipeline.transformer,
             "vae": pipeline.vae}
    return {part: module for part, module in parts.items() if isinstance(module, nn.Module)}


def containers(pipeline: Any) -> dict[str, ComponentWeights]:
    """One container per component of ``pipeline``, keyed by part."""
    return {part: _CONTAINERS[part](module) for part, module in component_modules(pipeline).items()}
