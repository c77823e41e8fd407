"""What the model loader offers and how each choice becomes a ``FireRedEditPipeline``.

Choices of the loader's ``model`` input, in this order:

* ``firered-default`` - the small model embedded in the package (always offered; a clear error if this
  installation lacks its weights). It brings its own condition encoder and VAE.
* ``diffusers/<folder>`` - a diffusers-format folder under ComfyUI's ``models/diffusers`` (model_index.json,
  transformer/, vae/, text_encoder/...). ``text_encoder`` / ``vae`` may replace the folder's own.
* a transformer file from ``models/diffusion_models`` (or ``models/unet``): safetensors (bare or
  ``model.diffusion_model.`` keys, plain or scaled fp8) or GGUF (ComfyUI-GGUF's files, e.g. Q4_K_M; the weights
  stay quantised and are dequantised per layer at compute time). A single file carries no VAE or encoder: ``text_encoder`` (``models/text_encoders``, e.g.
  qwen2.5vl-7b-bf16.safetensors) and ``vae`` (``models/vae``, e.g. qwen_image_vae.safetensors) must be chosen.

Precision: ``weight_dtype`` offers no float16 (this model family overflows in it: black or NaN images); a saved
workflow that chose it loads in bfloat16 with a warning. ``weight_dtype`` fp8_e4m3fn keeps the transformer's
Linear weights in 8 bits (a scaled-fp8 file stays as stored); ``encoder_storage`` does the same for the condition
encoder, whose default keeps fp8 files (e.g. qwen_2.5_vl_7b_fp8_scaled.safetensors) in fp8 and loads other files
in the compute dtype.

Files are recognised by their keys (the core's ``loading`` package), never by their names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import comfy_bridge
from .common import FireRedNodeError

if TYPE_CHECKING:
    import torch
    from firered_core.pipeline import FireRedEditPipeline

log = logging.getLogger(__name__)

DEFAULT_CHOICE = "firered-default"  # equals firered_core.default.DEFAULT_NAME (checked by a test); no import here
FROM_MODEL = "(from model)"
DIFFUSERS_PREFIX = "diffusers/"
DTYPES = ("default", "float32", "bfloat16", "fp8_e4m3fn")
# offered until this model family was seen to overflow in it (black or NaN images); saved workflows still say it
LEGACY_DTYPES = {"float16": "bfloat16"}
# the condition encoder's storage: as its file is (fp8 files stay fp8), fp8 always, or weight_dtype always
ENCODER_STORAGES = {"default": None, "fp8": True, "weight_dtype": False}


def model_choices() -> list[str]:
    """The loader's ``model`` choices: the embedded default, diffusers folders, transformer files."""
    folders = [DIFFUSERS_PREFIX + f for f in comfy_bridge.diffusers_folders()]
    return [DEFAULT_CHOICE, *folders, *comfy_bridge.model_files("diffusion_models")]


def component_choices(kind: str) -> list[str]:
    """``(from model)`` then the files of ComfyUI's ``kind`` folder (``text_encoders`` or ``vae``)."""
    return [FROM_MODEL, *comfy_bridge.model_files(kind)]


@dataclass(frozen=True)
class Precision:
    """Compute dtype, whether transformer Linear weights are stored as float8 (upcast at compute), and the same
    for the condition encoder's (None: as its file is)."""

    dtype: "torch.dtype"
    fp8: bool
    fp8_encoder: bool | None = None

    @classmethod
    def parse(cls, choice: str, encoder_storage: str = "default") -> "Precision":
        import torch

        if choice in LEGACY_DTYPES:
            log.warning("weight_dtype %s: this model family overflows in it (black or NaN images); loading in %s, "
                        "the same memory (choose it in the loader to silence this)", choice, LEGACY_DTYPES[choice])
            choice = LEGACY_DTYPES[choice]
        if choice not in DTYPES:
            raise FireRedNodeError(f"weight_dtype: {choice!r} is not one of {', '.join(DTYPES)}")
        if encoder_storage not in ENCODER_STORAGES:
            raise FireRedNodeError(f"encoder_storage: {encoder_storage!r} is not one of "
                                   f"{', '.join(ENCODER_STORAGES)}")
        fp8_encoder = ENCODER_STORAGES[encoder_storage]
        if choice == "fp8_e4m3fn":
            return cls(comfy_bridge.default_dtype(), True, fp8_encoder)
        if choice == "default":
            return cls(comfy_bridge.default_dtype(), False, fp8_encoder)
        return cls(getattr(torch, choice), False, fp8_encoder)


def load_pipeline(model: str, text_encoder: str, vae: str, precision: Precision) -> "FireRedEditPipeline":
    """The pipeline for the loader's choices; every input problem is a ``FireRedNodeError``."""
    if model == DEFAULT_CHOICE:
        return _load_default(text_encoder, vae, precision)
    encoder_file = None if text_encoder == FROM_MODEL else comfy_bridge.resolve_model_file(
        "text_encoders", text_encoder, "text_encoder")
    vae_file = None if vae == FROM_MODEL else comfy_bridge.resolve_model_file("vae", vae, "vae")
    if isinstance(model, str) and model.startswith(DIFFUSERS_PREFIX):
        folder = comfy_bridge.resolve_diffusers_folder(model[len(DIFFUSERS_PREFIX):], "model")
        return _load_folder(folder, encoder_file, vae_file, precision)
    transformer_file = comfy_bridge.resolve_model_file("diffusion_models", model, "model")
    if vae_file is None or encoder_file is None:
        missing = " and ".join(n for n, f in (("text_encoder", encoder_file), ("vae", vae_file)) if f is None)
        raise FireRedNodeError(f"model {transformer_file.name!r} is a single transformer file, which carries no "
                               f"VAE or condition encoder: choose the {missing} file (e.g. "
                               "qwen2.5vl-7b-bf16.safetensors in models/text_encoders, qwen_image_vae.safetensors "
                               "in models/vae)")
    return _load_files([transformer_file, vae_file, encoder_file], precision)


def _load_default(text_encoder: str, vae: str, precision: Precision) -> "FireRedEditPipeline":
    from firered_core.default import DefaultModelMissing, is_available, load_default_pipeline

    if text_encoder != FROM_MODEL or vae != FROM_MODEL:
        raise FireRedNodeError(f"{DEFAULT_CHOICE} brings its own condition encoder and VAE: set text_encoder and "
                               f"vae to {FROM_MODEL!r}")
    if precision.fp8 or precision.fp8_encoder:
        raise FireRedNodeError(f"fp8 storage is for the large models; load {DEFAULT_CHOICE} in float32 or bfloat16")
    if not is_available():
        raise FireRedNodeError(f"the embedded default model ({DEFAULT_CHOICE}) is not installed: this copy of the "
                               "plugin has no weights under firered_core/default/model/ (reinstall the plugin, or "
                               "choose another model)")
    try:
        return load_default_pipeline(dtype=precision.dtype)
    except DefaultModelMissing as exc:
        raise FireRedNodeError(f"the embedded default model ({DEFAULT_CHOICE}) is not installed: {exc}") from exc


def _load_folder(folder: Path, encoder_file: Path | None, vae_file: Path | None,
                 precision: Precision) -> "FireRedEditPipeline":
    from firered_core.loading import load_components, load_vae_file, read_model_defaults
    from firered_core.loading.comfy_files import load_condition_encoder_file
    from firered_core.pipeline import FireRedEditPipeline

    transformer, vae, encoder, scheduler = load_components(folder, dtype=precision.dtype, fp8=precision.fp8,
                                                           load_encoder=encoder_file is None,
                                                           fp8_encoder=precision.fp8_encoder)
    if vae_file is not None:
        vae = load_vae_file(vae_file, dtype=precision.dtype)
    if encoder_file is not None:
        encoder = load_condition_encoder_file(encoder_file, dtype=precision.dtype, fp8=precision.fp8_encoder)
    if encoder is None:
        raise FireRedNodeError(f"model folder {folder.name!r} has no text_encoder/: choose a text_encoder file "
                               "(e.g. qwen2.5vl-7b-bf16.safetensors)")
    pipe = FireRedEditPipeline(transformer, vae, encoder, scheduler)
    return pipe.apply_defaults(read_model_defaults(folder))  # a folder from firered export-default: its trained area


def _load_files(files: list[Path], precision: Precision) -> "FireRedEditPipeline":
    from firered_core.loading import load_components
    from firered_core.pipeline import FireRedEditPipeline

    transformer, vae, encoder, scheduler = load_components(files, dtype=precision.dtype, fp8=precision.fp8,
                                                           fp8_encoder=precision.fp8_encoder)
    if encoder is None:
        raise FireRedNodeError(f"none of {', '.join(f.name for f in files)} is a condition-encoder file")
    return FireRedEditPipeline(transformer, vae, encoder, scheduler)
