"""Loading Qwen2.5-VL for ``QwenVLConditionEncoder``: diffusers folders and single ``.safetensors`` files, offline.

``load_pretrained_parts(text_encoder_dir, tokenizer_dir, processor_dir)``
    A diffusers pipeline folder's ``text_encoder/`` (transformers ``config.json`` + weights, read by transformers
    with ``local_files_only``), ``tokenizer/`` and ``processor/`` (only its ``preprocessor_config.json`` is read:
    transformers' own processor class cannot be built without torchvision, see ``qwen_processor``). Missing
    ``processor/`` (text-to-image folders have none): Qwen2.5-VL's preprocessor values, logged.
``load_single_file_model(path)``
    A ``Qwen2_5_VLModel`` (the backbone, no LM head) built on the meta device, so no memory is spent on random
    initialisation, then filled tensor by tensor by ``firered_core.loading.load_into`` (validated header, one tensor
    in memory at a time, one combined report of missing/unexpected/mis-shaped keys). Key layout and architecture
    come from ``qwen_keys``. The rotary-frequency buffers, which no file stores, are recomputed on the CPU from
    their module's config.

Every problem with a path raises ``WeightFileError`` naming it. Nothing here downloads.

Public API: ``load_pretrained_parts``, ``load_single_file_model``, ``resolve_pretrained_dirs``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..loading.safetensors_io import WeightFileError, open_weights
from ..loading.stream import load_into
from .qwen_keys import KeyLayout, infer_qwen_vl_config
from .qwen_processor import QwenVLProcessor, build_image_processor, load_image_processor

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

log = logging.getLogger(__name__)

__all__ = ["load_pretrained_parts", "load_single_file_model", "resolve_pretrained_dirs"]

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------------------------------
# Diffusers folders
# ---------------------------------------------------------------------------------------------------------------


def resolve_pretrained_dirs(text_encoder_dir: PathLike, tokenizer_dir: PathLike | None = None,
                            processor_dir: PathLike | None = None) -> tuple[Path, Path, Path | None]:
    """(text encoder, tokenizer, processor or None) folders; ``text_encoder_dir`` may be the pipeline root."""
    given = Path(text_encoder_dir)
    text_encoder = given / "text_encoder" if (given / "text_encoder").is_dir() else given
    root = text_encoder.parent
    if not (text_encoder / "config.json").is_file():
        raise WeightFileError(f"{text_encoder}: not a text-encoder folder (no config.json); expected a diffusers "
                              "folder's text_encoder/ or the pipeline folder holding it")
    tokenizer = Path(tokenizer_dir) if tokenizer_dir is not None else root / "tokenizer"
    if not tokenizer.is_dir():
        raise WeightFileError(f"{tokenizer}: tokenizer folder not found")
    processor = Path(processor_dir) if processor_dir is not None else root / "processor"
    if processor_dir is not None and not processor.is_dir():
        raise WeightFileError(f"{processor}: processor folder not found")
    return text_encoder, tokenizer, processor if processor.is_dir() else None


def load_pretrained_parts(text_encoder_dir: PathLike, tokenizer_dir: PathLike | None = None,
                          processor_dir: PathLike | None = None, *,
                          dtype: torch.dtype | None = None) -> tuple["Qwen2_5_VLModel", QwenVLProcessor]:
    """The backbone model and processor of a diffusers folder (see the module docstring)."""
    from transformers import Qwen2_5_VLModel, Qwen2TokenizerFast

    text_encoder, tokenizer_path, processor_path = resolve_pretrained_dirs(text_encoder_dir, tokenizer_dir,
                                                                          processor_dir)
    try:
        model = Qwen2_5_VLModel.from_pretrained(text_encoder, dtype=dtype or "auto", local_files_only=True)
        tokenizer = Qwen2TokenizerFast.from_pretrained(tokenizer_path, local_files_only=True)
    except OSError as e:
        raise WeightFileError(f"{text_encoder.parent}: cannot load the Qwen2.5-VL text encoder: {e}") from None
    if processor_path is None:
        log.info("%s: no processor/ folder; using Qwen2.5-VL's image preprocessing values", text_encoder.parent)
        image_processor = build_image_processor()
    else:
        image_processor = load_image_processor(processor_path)
    return model, QwenVLProcessor(tokenizer, image_processor)


# ---------------------------------------------------------------------------------------------------------------
# Single files
# ---------------------------------------------------------------------------------------------------------------


def _backbone_key(transformers_key: str | None) -> str | None:
    """Name inside ``Qwen2_5_VLModel`` of a ``Qwen2_5_VLForConditionalGeneration`` name; None for the LM head."""
    if transformers_key is None or not transformers_key.startswith("model."):
        return None
    return transformers_key[len("model."):]


def _as_config(config: "Mapping[str, Any] | Qwen2_5_VLConfig") -> "Qwen2_5_VLConfig":
    from transformers import Qwen2_5_VLConfig

    return config if isinstance(config, Qwen2_5_VLConfig) else Qwen2_5_VLConfig(**dict(config))


def _rebuild_meta_buffers(model: torch.nn.Module) -> None:
    """Recompute on the CPU the buffers a meta build left empty (rotary frequencies): files never store them."""
    for name, module in model.named_modules():
        empty = [b for b, t in module._buffers.items() if t is not None and t.is_meta]
        if not empty:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise RuntimeError(f"cannot rebuild buffers {empty} of '{name}' ({type(module).__name__}): no config")
        with torch.device("cpu"):
            fresh = type(module)(config)
        for b in empty:
            module._buffers[b] = fresh._buffers[b]


def _meta_model(config: "Qwen2_5_VLConfig") -> "Qwen2_5_VLModel":
    from transformers import Qwen2_5_VLModel

    with torch.device("meta"):
        model = Qwen2_5_VLModel(config)
    _rebuild_meta_buffers(model)
    return model


def load_single_file_model(path: Path, *, dtype: torch.dtype | None = None,
                           config: "Mapping[str, Any] | Qwen2_5_VLConfig | None" = None,
                           device: torch.device | str | None = None) -> "Qwen2_5_VLModel":
    """A ``Qwen2_5_VLModel`` streamed from one safetensors file (see the module docstring)."""
    name = str(path)
    with open_weights(path) as source:
        layout = KeyLayout.detect(source.keys(), name)
        names = {k: layout.module_key(k) for k in source.keys()}
        if config is None:
            shapes = {m: source.shape(k) for k, m in names.items() if m is not None}
            config = infer_qwen_vl_config(shapes, name, source.metadata())
        model = _meta_model(_as_config(config))
        embed_key = next(k for k, m in names.items() if m == "model.language_model.embed_tokens.weight")
        store = dtype or source.dtype(embed_key)
        load_into(model, source, source_name=name, key_map=lambda k: _backbone_key(names.get(k)), dtype=store,
                  device=device)
    log.info("%s: Qwen2.5-VL (%s layout, %d layers, width %d) loaded in %s", name, layout.layout,
             model.config.text_config.num_hidden_layers, model.config.text_config.hidden_size, store)
    return model.eval()
