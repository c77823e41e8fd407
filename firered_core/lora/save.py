"""Writing LoRAs as .safetensors files other tools load.

::

    save_lora(transformer, "my_style.safetensors")                        # the attached LoRA, ComfyUI layout
    save_lora(transformer, "my_style_diffusers.safetensors", name="train", format="peft")
    save_lora(load_lora("in.safetensors"), "out.safetensors", format="kohya", dtype=torch.bfloat16)

``format`` (key layouts in ``formats.encode_lora``):

* ``"comfyui"`` (default): ``diffusion_model.<path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``.
  Chosen over ``transformer.<path>.lora_A/lora_B`` because ComfyUI's ``model_lora_keys_unet`` maps
  ``diffusion_model.<path>`` for every model class (its generic rule, not a Qwen-specific addition), it is the
  layout ComfyUI's own trainer saves, and the ``.alpha`` beside it is read by ComfyUI (scale alpha / rank) and
  by diffusers' Qwen-Image loader alike, so the file means the same in both.
* ``"peft"``: diffusers' layout (``transformer.`` prefix, ``lora_A/lora_B``, LoraConfig in the metadata).
* ``"kohya"``: ``lora_unet_<path with underscores>`` + ``lora_down/lora_up/alpha``.

Files are written through a temporary file and renamed into place; an existing file is refused unless
``overwrite=True``. Only ``.safetensors`` is written. ``metadata`` (str -> str) is stored in the header next to
``firered.lora`` (format, rank, alpha, layer count) and, for kohya, the ``ss_network_*`` fields kohya tools read.

Public API: ``save_lora``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..loading.save import write_safetensors
from .apply import collect_lora, list_loras
from .formats import LoRAWeights, encode_lora

log = logging.getLogger(__name__)

__all__ = ["save_lora"]

INFO_METADATA_KEY = "firered.lora"


def _weights_of(model_or_weights: nn.Module | LoRAWeights, name: str | None) -> LoRAWeights:
    if isinstance(model_or_weights, LoRAWeights):
        return model_or_weights
    if name is None:
        names = sorted(list_loras(model_or_weights))
        if len(names) != 1:
            raise ValueError(f"save_lora: pass name= to choose the LoRA to save (applied: {names or 'none'})")
        name = names[0]
    return collect_lora(model_or_weights, name)


def _info(weights: LoRAWeights, fmt: str) -> dict[str, str]:
    rank = Counter(e.rank for e in weights.entries).most_common(1)[0][0]
    alpha = Counter(e.effective_alpha for e in weights.entries).most_common(1)[0][0]
    out = {"format": "pt",
           INFO_METADATA_KEY: json.dumps({"format": fmt, "rank": rank, "alpha": alpha,
                                          "layers": len(weights.entries)}, sort_keys=True)}
    if fmt == "kohya":
        out.update(ss_network_module="networks.lora", ss_network_dim=str(rank), ss_network_alpha=f"{alpha:g}")
    return out


def save_lora(model_or_weights: nn.Module | LoRAWeights, path: str | os.PathLike, format: str = "comfyui", *,
              name: str | None = None, metadata: Mapping[str, str] | None = None, overwrite: bool = False,
              dtype: torch.dtype | None = None) -> Path:
    """Write a LoRA (attached to a model as ``name``, or ``LoRAWeights``) to ``path``; returns the path.

    ``dtype`` converts the factors (e.g. bfloat16 halves a float32-trained file); alpha stays float32.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: LoRAs are saved as .safetensors only")
    weights = _weights_of(model_or_weights, name)
    tensors, format_metadata = encode_lora(weights, format)
    if dtype is not None:
        tensors = {k: v if k.endswith(".alpha") else v.to(dtype) for k, v in tensors.items()}
    header = {**_info(weights, format), **format_metadata, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    write_safetensors(path, tensors, metadata=header, overwrite=overwrite)
    log.info("saved LoRA %s: %d layers, %s layout", path, len(weights.entries), format)
    return path
