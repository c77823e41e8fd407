"""FireRed Model Loader: transformer + condition encoder + VAE from ComfyUI's model folders, or the embedded default."""

from __future__ import annotations

import logging

from . import model_sources
from .common import CATEGORY, node_errors
from .model_handle import SOCKET, FireRedModel, LoadedFireRed

log = logging.getLogger(__name__)


class FireRedModelLoader:
    DESCRIPTION = ("Loads a FireRed / Qwen-Image-Edit-2509-family edit model: the embedded default, a diffusers "
                   "folder from models/diffusers, or a transformer file (.safetensors, or a quantised .gguf) from "
                   "models/diffusion_models together with a text encoder (models/text_encoders) and VAE "
                   "(models/vae). Files are recognised by "
                   "their contents. fp8_e4m3fn stores the transformer's weights in 8 bits and computes in "
                   "bfloat16 (float32 on the CPU).")
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = (SOCKET,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("the edit model, for FireRed Edit and the FireRed LoRA loader",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": (model_sources.model_choices(), {
                "default": model_sources.DEFAULT_CHOICE,
                "tooltip": "firered-default (embedded), diffusers/<folder>, or a transformer file "
                            "(.safetensors or .gguf)"}),
            "text_encoder": (model_sources.component_choices("text_encoders"), {
                "default": model_sources.FROM_MODEL,
                "tooltip": "Qwen2.5-VL file; needed with a single transformer file"}),
            "vae": (model_sources.component_choices("vae"), {
                "default": model_sources.FROM_MODEL,
                "tooltip": "Qwen-Image VAE file; needed with a single transformer file"}),
            "weight_dtype": (list(model_sources.DTYPES), {
                "default": "default",
                "tooltip": "default: bfloat16 where the GPU supports it, else float32"}),
        }}

    def load(self, model: str, text_encoder: str, vae: str, weight_dtype: str) -> tuple[FireRedModel]:
        precision = model_sources.Precision.parse(weight_dtype)
        with node_errors(f"FireRed Model Loader ({model})"):
            pipeline = model_sources.load_pipeline(model, text_encoder, vae, precision)
        log.info("FireRed: loaded %s (%s%s)", model, str(precision.dtype).removeprefix("torch."),
                 ", fp8 storage" if precision.fp8 else "")
        return (FireRedModel(LoadedFireRed.wrap(pipeline, label=model)),)


NODE_CLASSES = {"FireRedModelLoader": FireRedModelLoader}
DISPLAY_NAMES = {"FireRedModelLoader": "FireRed Model Loader"}
