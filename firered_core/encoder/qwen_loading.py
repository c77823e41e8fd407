"""Loading Qwen2.5-VL for ``QwenVLConditionEncoder``: diffusers folders and single ``.safetensors`` files, offline.

``load_pretrained_parts(text_encoder_dir, tokenizer_dir, processor_dir)``
    A diffusers pipeline folder's ``text_encoder/`` (transformers ``config.json`` + weights, read by transformers
    with ``local_files_only``), ``tokenizer/`` and ``processor/`` (only its ``preprocessor_config.json`` is read:
    transformers' own processor class cannot be built without torchvision, see ``qwen_processor``). Missing
    ``processor/`` (text-to-image folders have none): Qwen2.5-VL's preprocessor values, logged. With fp8 storage
    the weights are streamed instead (``load_folder_model``: config from ``config.json``, then as below), because
    transformers' loader would first hold the whole model in the file's dtype.
``load_single_file_model(path)``
    A ``Qwen2_5_VLModel`` (the backbone, no LM head) built on the meta device, so no memory is spent on random
    initialisation, then filled tensor by tensor by ``firered_core.loading.load_into`` (validated header, one tensor
    in memory at a time, one combined report of missing/unexpected/mis-shaped keys). Key layout and architecture
    come from ``qwen_keys``. The rotary-frequency buffers, which no file stores, are recomputed on the CPU from
    their module's config. Scaled-fp8 files (``loading.scaled_fp8``) are read through ``ScaledFP8Source``.

fp8 storage (``fp8=True``): ``ops.adopt`` switches the network's torch layers to the casting classes before the
weights stream in, and ``load_into`` stores every Linear weight as float8_e4m3fn (saturating), or keeps a scaled
weight as stored with its ``ScaledFP8`` format. ``fp8=None`` (the default of the loaders) means: fp8 storage
exactly when the file or folder already stores its weights in float8, scaled or plain, since expanding such a file
would spend twice its memory on precision it does not have; ``fp8=False`` expands it to ``dtype``.

Every problem with a path raises ``WeightFileError`` naming it. Nothing here downloads.

Public API: ``load_pretrained_parts``, ``load_single_file_model``, ``load_folder_model``, ``stream_model``,
``resolve_pretrained_dirs``, ``folder_stores_fp8``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..loading.component_files import component_source
from ..loading.safetensors_io import WeightFileError, open_weights
from ..loading.scaled_fp8 import ScaledFP8Source, is_float8
from ..loading.stream import FP8_DTYPE, TensorSource, load_into
from ..ops import adopt
from .qwen_keys import KeyLayout, infer_qwen_vl_config
from .qwen_processor import QwenVLProcessor, build_image_processor, load_image_processor

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

log = logging.getLogger(__name__)

__all__ = ["load_pretrained_parts", "load_single_file_model", "load_folder_model", "stream_model",
           "resolve_pretrained_dirs", "folder_stores_fp8"]

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
                          processor_dir: PathLike | None = None, *, dtype: torch.dtype | None = None,
                          fp8: bool | None = None,
                          device: torch.device | str | None = None) -> tuple["Qwen2_5_VLModel", QwenVLProcessor]:
    """The backbone model and processor of a diffusers folder (see the module docstring).

    ``fp8`` True streams the weights into fp8 storage (``load_folder_model``); None does so only when the folder's
    weights are float8 already; otherwise transformers loads the folder in ``dtype``."""
    from transformers import Qwen2_5_VLModel, Qwen2TokenizerFast

    text_encoder, tokenizer_path, processor_path = resolve_pretrained_dirs(text_encoder_dir, tokenizer_dir,
                                                                          processor_dir)
    if fp8 is None and folder_stores_fp8(text_encoder):
        log.info("%s: the weights are fp8, so they stay fp8 in memory (fp8_encoder=False expands them)",
                 text_encoder)
        fp8 = True
    try:
        if fp8:
            model = load_folder_model(text_encoder, dtype=dtype, fp8=True, device=device)
        else:
            model = Qwen2_5_VLModel.from_pretrained(text_encoder, dtype=dtype or "auto", local_files_only=True)
            model = model.to(device) if device is not None else model
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


def _storage_dtype(dtype: torch.dtype | None, embed_dtype: torch.dtype) -> torch.dtype:
    """What the non-fp8 tensors are stored in: ``dtype``, else the embedding table's own (bf16 if that is fp8)."""
    if dtype is not None:
        return dtype
    return torch.bfloat16 if is_float8(embed_dtype) else embed_dtype


def stream_model(source: TensorSource, name: str, config: "Mapping[str, Any] | Qwen2_5_VLConfig", *,
                 dtype: torch.dtype | None = None, fp8: bool = False,
                 device: torch.device | str | None = None) -> "Qwen2_5_VLModel":
    """A ``Qwen2_5_VLModel`` built on meta and filled from ``source`` one tensor at a time.

    ``fp8``: the network's layers are switched to ``firered_core.ops``' casting classes (``ops.adopt``) and every
    Linear weight (language model and vision tower; not embeddings, norms or the patch convolution) is stored as
    float8_e4m3fn, saturating, or kept as stored when the source holds it as scaled fp8.
    """
    layout = KeyLayout.detect(source.keys(), name)
    names = {k: layout.module_key(k) for k in source.keys()}
    model = _meta_model(_as_config(config))
    if fp8:
        adopt(model)
    embed_key = next(k for k, m in names.items() if m == "model.language_model.embed_tokens.weight")
    store = _storage_dtype(dtype, source.dtype(embed_key))
    load_into(model, source, source_name=name, key_map=lambda k: _backbone_key(names.get(k)), dtype=store,
              linear_weight_dtype=FP8_DTYPE if fp8 else None, device=device)
    log.info("%s: Qwen2.5-VL (%s layout, %d layers, width %d) loaded in %s%s", name, layout.layout,
             model.config.text_config.num_hidden_layers, model.config.text_config.hidden_size, store,
             " with fp8 Linear weights" if fp8 else "")
    return model.eval()


def load_single_file_model(path: Path, *, dtype: torch.dtype | None = None,
                           config: "Mapping[str, Any] | Qwen2_5_VLConfig | None" = None,
                           device: torch.device | str | None = None, fp8: bool | None = None) -> "Qwen2_5_VLModel":
    """A ``Qwen2_5_VLModel`` streamed from one safetensors file (see the module docstring).

    ``fp8`` None: fp8 storage exactly when the file stores its weights in float8 (scaled or plain)."""
    name = str(path)
    with open_weights(path) as raw:
        source = ScaledFP8Source(raw)
        if config is None:
            layout = KeyLayout.detect(source.keys(), name)
            shapes = {m: source.shape(k) for k in source.keys() if (m := layout.module_key(k)) is not None}
            config = infer_qwen_vl_config(shapes, name, source.metadata())
        return stream_model(source, name, config, dtype=dtype, fp8=_fp8_choice(fp8, source, name), device=device)


def _fp8_choice(fp8: bool | None, source: ScaledFP8Source, name: str) -> bool:
    if fp8 is not None:
        return fp8
    if source.has_fp8_weights:
        log.info("%s: the file stores its weights in fp8, so they stay fp8 in memory (fp8_encoder=False expands "
                 "them)", name)
        return True
    return False


def load_folder_model(text_encoder_dir: Path, *, dtype: torch.dtype | None = None, fp8: bool = False,
                      device: torch.device | str | None = None) -> "Qwen2_5_VLModel":
    """A diffusers folder's ``text_encoder/`` streamed like a single file (its config.json gives the architecture),
    so fp8 storage never holds the whole model in its file dtype."""
    from transformers import Qwen2_5_VLConfig

    try:
        config = Qwen2_5_VLConfig.from_pretrained(text_encoder_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightFileError(f"{text_encoder_dir}: cannot read the Qwen2.5-VL config: {e}") from None
    with component_source(text_encoder_dir.parent, text_encoder_dir.name) as raw:
        return stream_model(ScaledFP8Source(raw), raw.name, config, dtype=dtype, fp8=fp8, device=device)


def folder_stores_fp8(text_encoder_dir: Path) -> bool:
    """Whether a ``text_encoder/`` folder's weights are float8 (scaled or plain); reads headers only. A folder
    without safetensors weights is left to transformers' loader, which reports what it finds."""
    try:
        raw = component_source(text_encoder_dir.parent, text_encoder_dir.name)
    except WeightFileError:
        return False
    with raw:
        return ScaledFP8Source(raw).has_fp8_weights
