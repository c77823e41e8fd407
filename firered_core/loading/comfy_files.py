"""ComfyUI single files: their key layouts, and loading a transformer, VAE or whole model set from them.

The files people download for ComfyUI (``FireRed-Image-Edit-1.1-transformer.safetensors``,
``qwen_image_vae.safetensors``, ``qwen2.5vl-7b-bf16.safetensors``) differ from a diffusers folder in three ways:

* Transformer keys are diffusers' own names, either bare or under ``model.diffusion_model.`` (full checkpoints).
  Qwen-Image-Edit-2511 files add an empty ``__index_timestep_zero__`` tensor, the marker for ``zero_cond_t``.
  Community fp8 files come in two flavours: plain float8 weights (loaded like any dtype) and "scaled" fp8, where
  each quantised weight has a scale tensor (``<layer>.weight_scale`` plus ``input_scale``/``comfy_quant`` in the
  newer format; ``<layer>.scale_weight`` plus a ``scaled_fp8`` marker in the older one; see ``scaled_fp8``).
  With ``fp8=True`` scaled weights stay as stored (float8 + scale, dequantised at compute time); otherwise they
  are dequantised while loading (``weight * scale``, then stored in the requested dtype). Other quantisations
  (int4/nvfp4...) are refused by name.
* The VAE uses the original Wan-2.1 module names (ComfyUI runs it with its Wan VAE code), not diffusers':

  ==========================================  ===============================================================
  Wan / ComfyUI                               diffusers ``AutoencoderKLQwenImage``
  ==========================================  ===============================================================
  ``encoder.conv1`` / ``decoder.conv1``       ``encoder.conv_in`` / ``decoder.conv_in``
  ``encoder.downsamples.N``                   ``encoder.down_blocks.N`` (same flat index)
  ``decoder.upsamples.N`` (flat)              ``decoder.up_blocks.L.resnets.J`` / ``decoder.up_blocks.L.upsamplers.0``
  ``*.middle.0`` / ``.1`` / ``.2``            ``*.mid_block.resnets.0`` / ``.attentions.0`` / ``.resnets.1``
  ``*.head.0`` / ``*.head.2``                 ``*.norm_out`` / ``*.conv_out``
  ``conv1`` / ``conv2``                       ``quant_conv`` / ``post_quant_conv``
  resnet ``residual.0/2/3/6``, ``shortcut``   ``norm1``, ``conv1``, ``norm2``, ``conv2``, ``conv_shortcut``
  ==========================================  ===============================================================

  The decoder's flat-to-nested index mapping is derived from the file's own keys (a level ends at its upsampler),
  so it works for any depth and ``num_res_blocks``. Diffusers-named single VAE files load as well.
* The text encoder file has ComfyUI's own layout; ``firered_core.encoder`` owns that mapping.

Usage::

    model = load_transformer_file("FireRed-Image-Edit-1.1-transformer.safetensors", dtype=torch.bfloat16, fp8=True)
    vae = load_vae_file("qwen_image_vae.safetensors", dtype=torch.bfloat16)
    parts = load_files([transformer_path, vae_path, text_encoder_path], dtype=torch.bfloat16)

Public API: ``load_transformer_file``, ``load_vae_file``, ``load_files``, ``load_condition_encoder_file``,
``wan_to_diffusers_vae_keys``, ``diffusers_to_wan_vae_keys``, ``DequantizingSource``, ``COMFY_PREFIX``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from ..config import SchedulerConfig, TransformerConfig, VAEConfig
from ..ops import DEFAULT_OPS
from ..transformer import FireRedTransformer
from ..vae import FireRedVAE
from .detect import (ZERO_COND_T_MARKER, FileKind, classify, infer_transformer_config, infer_vae_config,
                     transformer_key_map)
from .gguf_file import load_gguf_transformer
from .gguf_header import is_gguf_file
from .safetensors_io import WeightFileError, WeightSource, open_weights
from .scaled_fp8 import ScaledFP8Source
from .stream import LoadedComponents, build_transformer, build_vae

log = logging.getLogger(__name__)

__all__ = ["load_transformer_file", "load_vae_file", "load_files", "load_condition_encoder_file",
           "wan_to_diffusers_vae_keys", "diffusers_to_wan_vae_keys", "DequantizingSource", "COMFY_PREFIX"]

COMFY_PREFIX = "model.diffusion_model."

# a scaled-fp8 view of a file (the name this module has always exported)
DequantizingSource = ScaledFP8Source


# ---------------------------------------------------------------------------------------------------------------
# VAE key layouts
# ---------------------------------------------------------------------------------------------------------------

_RESNET_PARTS = (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
                 ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))  # inside a residual block


def _fixed_prefixes() -> list[tuple[str, str, bool]]:
    """(wan prefix, diffusers prefix, is a residual block) for the modules whose names do not depend on depth."""
    pairs = [("conv1.", "quant_conv.", False), ("conv2.", "post_quant_conv.", False)]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.conv1.", f"{side}.conv_in.", False),
                  (f"{side}.head.0.", f"{side}.norm_out.", False),
                  (f"{side}.head.2.", f"{side}.conv_out.", False),
                  (f"{side}.middle.0.", f"{side}.mid_block.resnets.0.", True),
                  (f"{side}.middle.1.", f"{side}.mid_block.attentions.0.", False),
                  (f"{side}.middle.2.", f"{side}.mid_block.resnets.1.", True)]
    return pairs


def _has_prefix(keys: set[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _wan_prefixes(keys: set[str], name: str) -> list[tuple[str, str, bool]]:
    """Module prefix pairs for a Wan-named key set, the decoder's nesting read from where upsamplers sit."""
    pairs = _fixed_prefixes()
    i = 0
    while _has_prefix(keys, f"encoder.downsamples.{i}."):
        resnet = f"encoder.downsamples.{i}.residual.0.gamma" in keys
        pairs.append((f"encoder.downsamples.{i}.", f"encoder.down_blocks.{i}.", resnet))
        i += 1
    flat, level, j = 0, 0, 0
    while _has_prefix(keys, f"decoder.upsamples.{flat}."):
        p = f"decoder.upsamples.{flat}."
        if f"{p}residual.0.gamma" in keys:
            pairs.append((p, f"decoder.up_blocks.{level}.resnets.{j}.", True))
            j += 1
        elif f"{p}resample.1.weight" in keys:
            pairs.append((p, f"decoder.up_blocks.{level}.upsamplers.0.", False))
            level, j = level + 1, 0
        else:
            raise WeightFileError(f"{name}: decoder.upsamples.{flat} is neither a residual block nor an upsampler "
                                  "(decoder attention is not supported)")
        flat += 1
    return pairs


def _diffusers_prefixes(keys: set[str]) -> list[tuple[str, str, bool]]:
    """The same pairs, read from a diffusers-named key set."""
    pairs = _fixed_prefixes()
    i = 0
    while _has_prefix(keys, f"encoder.down_blocks.{i}."):
        resnet = f"encoder.down_blocks.{i}.norm1.gamma" in keys
        pairs.append((f"encoder.downsamples.{i}.", f"encoder.down_blocks.{i}.", resnet))
        i += 1
    flat, level = 0, 0
    while _has_prefix(keys, f"decoder.up_blocks.{level}."):
        j = 0
        while _has_prefix(keys, f"decoder.up_blocks.{level}.resnets.{j}."):
            pairs.append((f"decoder.upsamples.{flat}.", f"decoder.up_blocks.{level}.resnets.{j}.", True))
            flat, j = flat + 1, j + 1
        if _has_prefix(keys, f"decoder.up_blocks.{level}.upsamplers.0."):
            pairs.append((f"decoder.upsamples.{flat}.", f"decoder.up_blocks.{level}.upsamplers.0.", False))
            flat += 1
        level += 1
    return pairs


def _rename(key: str, pairs: list[tuple[str, str, bool]], to_diffusers: bool) -> str:
    for wan, diff, resnet in pairs:
        src, dst = (wan, diff) if to_diffusers else (diff, wan)
        if key.startswith(src):
            rest = key[len(src):]
            if resnet:
                for w_part, d_part in _RESNET_PARTS:
                    a, b = (w_part, d_part) if to_diffusers else (d_part, w_part)
                    if rest.startswith(a):
                        rest = b + rest[len(a):]
                        break
            return dst + rest
    return key  # unknown keys pass through; the strict load reports them


def wan_to_diffusers_vae_keys(keys: Sequence[str], name: str = "VAE") -> dict[str, str]:
    """``{wan key: diffusers key}`` for every key of a ComfyUI/Wan-named Qwen-Image VAE."""
    pairs = _wan_prefixes(set(keys), name)
    return {k: _rename(k, pairs, to_diffusers=True) for k in keys}


def diffusers_to_wan_vae_keys(keys: Sequence[str]) -> dict[str, str]:
    """``{diffusers key: wan key}``: the inverse, used to write ComfyUI's layout."""
    pairs = _diffusers_prefixes(set(keys))
    return {k: _rename(k, pairs, to_diffusers=False) for k in keys}


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _open_as(path: str | os.PathLike, expected: str) -> tuple[WeightSource, FileKind]:
    source = open_weights(path)
    kind = classify(source.keys(), source.name)
    if kind.kind != expected:
        source.close()
        raise WeightFileError(f"{source.name}: is a {kind.kind.replace('_', ' ')} file, expected a {expected}")
    return source, kind


def load_transformer_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, fp8: bool = False,
                          map_blocks: bool = False,
                          device: torch.device | str | None = None, config: TransformerConfig | None = None,
                          axes_dims_rope: tuple[int, int, int] | None = None,
                          ops: SimpleNamespace = DEFAULT_OPS) -> FireRedTransformer:
    """A transformer from one single file (bare, ``model.diffusion_model.``-prefixed, plain or scaled fp8; or a
    GGUF file, recognised by its content and loaded by ``gguf_file`` with its weights kept quantised).

    The config is inferred from the shapes (see ``detect``) unless given; ``axes_dims_rope`` is needed for head
    dims other than 128 that no preset has.
    """
    if is_gguf_file(path):
        return load_gguf_transformer(path, dtype=dtype, fp8=fp8, device=device, config=config,
                                     axes_dims_rope=axes_dims_rope, ops=ops, map_blocks=map_blocks)
    raw, kind = _open_as(path, "transformer")
    with raw:
        source = ScaledFP8Source(raw)
        mapping = transformer_key_map(kind, source.keys())
        shapes = {m: raw.shape(k) for k, m in mapping.items() if m is not None}
        if f"{kind.prefix}{ZERO_COND_T_MARKER}" in raw:  # the 2511 marker is not a weight but sets zero_cond_t
            shapes[ZERO_COND_T_MARKER] = raw.shape(f"{kind.prefix}{ZERO_COND_T_MARKER}")
        if config is not None and config.zero_cond_t != (ZERO_COND_T_MARKER in shapes):
            log.warning("%s: the given config has zero_cond_t=%s but the file %s the 2511 marker", raw.name,
                        config.zero_cond_t, "has" if ZERO_COND_T_MARKER in shapes else "lacks")
        config = config or infer_transformer_config(shapes, raw.name, metadata=raw.metadata(),
                                                    axes_dims_rope=axes_dims_rope)
        log.info("%s: transformer %s", raw.name, config)
        return build_transformer(config, source, source_name=raw.name, key_map=mapping.get, dtype=dtype, fp8=fp8,
                                 map_blocks=map_blocks,
                                 device=device, ops=ops)


def load_vae_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None, config: VAEConfig | None = None,
                  ops: SimpleNamespace = DEFAULT_OPS) -> FireRedVAE:
    """The VAE from one single file, in ComfyUI's Wan names or diffusers' names."""
    raw, kind = _open_as(path, "vae")
    with raw:
        source = ScaledFP8Source(raw)
        keys = source.keys()
        mapping = wan_to_diffusers_vae_keys(keys, raw.name) if kind.layout == "wan" else {k: k for k in keys}
        shapes = {mapping[k]: raw.shape(k) for k in keys}
        config = config or infer_vae_config(shapes, raw.name, metadata=raw.metadata())
        return build_vae(config, source, source_name=raw.name, key_map=mapping.get, dtype=dtype, device=device,
                         ops=ops)


def load_condition_encoder_file(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                                fp8: bool | None = None) -> Any:
    """The condition encoder from ComfyUI's text-encoder file, by ``firered_core.encoder`` (imported lazily).

    ``fp8``: Linear weights stored as float8; None does so exactly when the file's weights are fp8 already (e.g.
    ``qwen_2.5_vl_7b_fp8_scaled.safetensors``), False expands such a file to ``dtype``."""
    from ..encoder.qwen_vl import QwenVLConditionEncoder  # heavy; only needed when an encoder file is given

    loader = getattr(QwenVLConditionEncoder, "from_single_file", None)
    if loader is None:
        raise WeightFileError(f"{path}: this build's QwenVLConditionEncoder cannot load single text-encoder files "
                              "(no from_single_file); use a diffusers folder")
    return loader(path, dtype=dtype, fp8=fp8)


def _file_kind(path: Path) -> str:
    with open_weights(path) as src:
        return classify(src.keys(), src.name).kind


def load_files(paths: Sequence[str | os.PathLike], *, dtype: torch.dtype = torch.float32, fp8: bool = False,
               map_blocks: bool = False,
               device: torch.device | str | None = None, load_encoder: bool = True,
               scheduler_config: SchedulerConfig | None = None, fp8_encoder: bool | None = None) -> LoadedComponents:
    """Transformer + VAE (+ text encoder) from single files in any order, each recognised by its keys (a GGUF
    file, recognised by its magic, is the transformer).

    Single files carry no scheduler config: the FireRed default (``SchedulerConfig()``) is used unless given.
    ``fp8`` / ``fp8_encoder``: fp8 storage of the transformer's / the encoder's Linear weights (see
    ``load_components``).
    """
    found: dict[str, Path] = {}
    for p in map(Path, paths):
        kind = "transformer" if is_gguf_file(p) else _file_kind(p)  # GGUF: only transformers (checked on load)
        if kind == "lora":
            raise WeightFileError(f"{p}: is a LoRA; apply it with load_lora / --lora, not as a model file")
        if kind in found:
            raise WeightFileError(f"{p}: a second {kind.replace('_', ' ')} file (the first is {found[kind]})")
        found[kind] = p
    for needed in ("transformer", "vae"):
        if needed not in found:
            raise WeightFileError(f"{', '.join(map(str, paths)) or 'no files'}: no {needed} file among the model "
                                  "files (the VAE is e.g. qwen_image_vae.safetensors)")
    transformer = load_transformer_file(found["transformer"], dtype=dtype, fp8=fp8, device=device,
                                        map_blocks=map_blocks)
    vae = load_vae_file(found["vae"], dtype=dtype, device=device)
    encoder = None
    if "text_encoder" in found and load_encoder:
        encoder = load_condition_encoder_file(found["text_encoder"], dtype=dtype, fp8=fp8_encoder)
    elif load_encoder:
        log.warning("no text-encoder file among %s: the pipeline will have no condition encoder",
                    ", ".join(map(str, paths)))
    return LoadedComponents(transformer, vae, encoder, scheduler_config or SchedulerConfig())
