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
                   "bfloat16 (float32 on the CPU); encoder_storage does the same for the text encoder (fp8 "
                   "text-encoder files stay fp8 by default).")
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
        }, "optional": {
            "encoder_storage": (list(model_sources.ENCODER_STORAGES), {
                "default": "default",
                "tooltip": "the text encoder's weights. default: as its file is (fp8 files such as "
                           "qwen_2.5_vl_7b_fp8_scaled stay fp8, others follow weight_dtype); fp8: 8-bit Linear "
                           "weights, about half the memory of bfloat16; weight_dtype: always weight_dtype"}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, weight_dtype: str) -> bool | str:
        """Replaces ComfyUI's list check of ``weight_dtype`` only to let saved workflows keep their float16."""
        if weight_dtype in model_sources.DTYPES or weight_dtype in model_sources.LEGACY_DTYPES:
            return True
        return f"weight_dtype: {weight_dtype!r} is not one of {', '.join(model_sources.DTYPES)}"

    def load(self, model: str, text_encoder: str, vae: str, weight_dtype: str,
             encoder_storage: str = "default") -> tuple[FireRedModel]:
        precision = model_sources.Precision.parse(weight_dtype, encoder_storage)
        with node_errors(f"FireRed Model Loader ({model})"):
            pipeline = model_sources.load_pipeline(model, text_encoder, vae, precision)
        log.info("FireRed: loaded %s (%s%s)", model, str(precision.dtype).removeprefix("torch."),
                 ", fp8 storage" if precision.fp8 else "")
        return (FireRedModel(LoadedFireRed.wrap(pipeline, label=model)),)


NODE_CLASSES = {"FireRedModelLoader": FireRedModelLoader}
DISPLAY_NAMES = {"FireRedModelLoader": "FireRed Model Loader"}
