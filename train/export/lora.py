"""Exporting what a run trained, in files other tools load.

* LoRA runs: ``export_lora`` writes the trained adapters with ``firered_core.lora.save_lora``, by default in the
  ComfyUI layout (``diffusion_model.<layer>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``), which
  ComfyUI's LoraLoader maps onto its native Qwen-Image model and ``firered_core.lora.apply_lora`` (so also
  ``firered edit --lora``) loads with every key matched. ``lora.save_format`` may choose ``peft`` (diffusers)
  or ``kohya`` instead. The header records the run (stage, step, rank, alpha).
* Full fine-tunes: ``export_transformer`` writes the transformer as one ComfyUI diffusion-model file
  (``firered_core.loading.save_comfy_transformer``), which ``firered edit --model`` and ComfyUI's UNETLoader read.
* ``with_weights(model, state)`` swaps other weights in (the EMA's) for the duration of an export and puts the
  trained ones back, so the EMA variant is exported beside the raw one without a second model in memory.

The trainer writes ``<output_dir>/lora.safetensors`` (``lora_ema.safetensors``) or ``transformer.safetensors``
(``transformer_ema.safetensors``) at the end of a run; ``export_run`` does the same from any checkpoint.

Public API: ``export_lora``, ``export_transformer``, ``with_weights``, ``export_run``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from firered_core.loading import save_comfy_transformer
from firered_core.lora import save_lora

from ..model.components import LORA_NAME

log = logging.getLogger(__name__)

__all__ = ["export_lora", "export_transformer", "with_weights", "export_run"]


def export_lora(transformer: nn.Module, path: str | os.PathLike, *, format: str = "comfyui",
                info: Mapping[str, object] | None = None, dtype: torch.dtype | None = None,
                overwrite: bool = True) -> Path:
    """Write the trained LoRA of ``transformer`` to ``path`` (``.safetensors``) in ``format``."""
    metadata = {"firered.train": json.dumps(dict(info or {}), sort_keys=True)}
    return save_lora(transformer, path, format, name=LORA_NAME, metadata=metadata, overwrite=overwrite,
                     dtype=dtype)


def export_transformer(transformer: nn.Module, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write the (fully fine-tuned) transformer as one ComfyUI diffusion-model file."""
    return save_comfy_transformer(transformer, path, overwrite=overwrite)


@contextlib.contextmanager
def with_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """``model`` with the parameters named in ``state`` replaced for the duration of the block."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"with_weights: the model has no parameters {unknown[:4]}")
    saved = {name: params[name].detach().clone() for name in state}
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def export_run(transformer: nn.Module, output_dir: str | os.PathLike, *, lora: bool, save_format: str = "comfyui",
               ema_state: Mapping[str, torch.Tensor] | None = None,
               info: Mapping[str, object] | None = None) -> list[Path]:
    """The end-of-run exports into ``output_dir`` (raw weights, and the EMA's when given); returns the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    variants: list[tuple[str, Mapping[str, torch.Tensor] | None]] = [("", None)]
    if ema_state is not None:
        variants.append(("_ema", ema_state))
    written = []
    for suffix, state in variants:
        with (with_weights(transformer, state) if state is not None else contextlib.nullcontext(transformer)):
            if lora:
                written.append(export_lora(transformer, out / f"lora{suffix}.safetensors", format=save_format,
                                           info={**dict(info or {}), "ema": bool(suffix)}))
            else:
                written.append(export_transformer(transformer, out / f"transformer{suffix}.safetensors"))
    for path in written:
        log.info("exported %s", path)
    return written
