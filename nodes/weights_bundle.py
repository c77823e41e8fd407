"""``FireRedWeights``: one module holding every weight of a pipeline, for ComfyUI's model management.

ComfyUI moves, offloads and frees a model as one ``ModelPatcher`` over one ``torch.nn.Module``. The pipeline's
parts are separate objects, so this container groups them (transformer, VAE, and the condition encoder's network
when it has one); the parts themselves are shared, not copied. ComfyUI writes its bookkeeping attributes
(``device``, ``model_loaded_weight_memory``, ...) on the container, never on the FireRed modules, and its log
names the class ("Requested to load FireRedWeights").

Imported only when a model is loaded: it needs torch, which the plugin's import must not pull in.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class FireRedWeights(nn.Module):
    def __init__(self, pipeline: Any) -> None:
        super().__init__()
        self.transformer = pipeline.transformer
        self.vae = pipeline.vae
        encoder_model = getattr(pipeline.encoder, "model", None)
        if isinstance(encoder_model, nn.Module):
            self.encoder = encoder_model
