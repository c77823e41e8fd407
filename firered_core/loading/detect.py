"""What a weight file is, and which config it was trained with, read from its keys and shapes.

File names are never consulted (users rename files freely). ``classify`` sorts a safetensors source into:

================  ===============================================================================================
``transformer``   Qwen-Image MMDiT keys (``txt_norm.weight``, ``img_in.weight``, ``transformer_blocks.N...``),
                  bare or under a prefix such as ComfyUI's ``model.diffusion_model.`` (``FileKind.prefix``)
``vae``           the Qwen-Image VAE, either in diffusers' ``AutoencoderKLQwenImage`` names (layout
                  ``diffusers``) or in the original Wan-2.1 names ComfyUI's ``qwen_image_vae.safetensors`` uses
                  (``encoder.conv1``, ``encoder.downsamples.N``, ``decoder.head``...; layout ``wan``)
``text_encoder``  a Qwen2.5-VL language model (``...layers.N.self_attn.q_proj.weight``, ``embed_tokens``)
``lora``          low-rank adapter keys (``lora_A/B``, ``lora_up/down``, kohya ``lora_unet_``...), handled by
                  ``firered_core.lora``
================  ===============================================================================================

Anything else raises ``WeightFileError`` with a few sample keys.

Inferring ``TransformerConfig`` from shapes (``infer_transformer_config``):

* ``num_layers``: number of ``transformer_blocks.N`` indices (they must run 0..N-1);
* inner dim and ``in_channels`` from ``img_in.weight`` [inner, in]; ``joint_attention_dim`` from ``txt_in.weight``;
  ``attention_head_dim`` from ``attn.norm_q.weight``; heads = inner / head_dim;
* ``patch_size`` is not stored anywhere: it is assumed to be 2 (every released Qwen-Image weight) unless
  ``in_channels`` or the ``proj_out`` rows are not multiples of 4, then 1. ``out_channels`` = proj_out rows /
  patch^2;
* ``axes_dims_rope`` (how a head is split between frame/height/width RoPE) is not stored either. Only head_dim 128
  is known from released weights: (16, 56, 56). For other head dims pass ``axes_dims_rope=`` explicitly; failing
  that a named preset of ``firered_core.config`` with the same head dim supplies it (how the tiny test models
  round-trip), otherwise it is an error rather than a guess;
* ``zero_cond_t`` (Qwen-Image-Edit-2511 family) from ComfyUI's ``__index_timestep_zero__`` marker tensor;
  ``use_additional_t_cond`` from ``time_text_embed.addition_t_embedding.weight``. ``use_layer3d_rope`` leaves no
  trace in the weights and is False unless the file's metadata says otherwise.

Files written by ``firered_core.loading.save`` carry their config as JSON in the safetensors metadata
(``firered.config``); it is used when present, after checking it agrees with the shapes.

``infer_vae_config`` reads base_dim, z_dim, dim_mult, num_res_blocks, attention scales and temporal downsampling
using the VAE shapes in diffusers' naming. ``latents_mean``/``latents_std`` are not weights: they come from the metadata,
else from a preset with the same structure (the released VAE's values for the released structure), else
identity statistics with a warning.

Public API: ``FileKind``, ``classify``, ``is_diffusers_folder``, ``transformer_key_map``,
``infer_transformer_config``, ``infer_vae_config``, ``CONFIG_METADATA_KEY``, ``ZERO_COND_T_MARKER``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..config import PRESETS, ConfigError, TransformerConfig, VAEConfig
from .safetensors_io import WeightFileError

log = logging.getLogger(__name__)

__all__ = ["FileKind", "classify", "is_diffusers_folder", "transformer_key_map", "infer_transformer_config",
           "infer_vae_config", "CONFIG_METADATA_KEY", "ZERO_COND_T_MARKER", "KNOWN_HEAD_DIM_AXES"]

Shapes = Mapping[str, tuple[int, ...]]

# safetensors __metadata__ entry in which our writers store the component config as JSON
CONFIG_METADATA_KEY = "firered.config"
# ComfyUI's marker tensor in Qwen-Image-Edit-2511 checkpoints ("reference latents at timestep zero")
ZERO_COND_T_MARKER = "__index_timestep_zero__"
# RoPE splits known from released weights, by head dim
KNOWN_HEAD_DIM_AXES: dict[int, tuple[int, int, int]] = {128: (16, 56, 56)}

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
_LORA = re.compile(r"(lora_[AB]\b|lora_(up|down)\b|\.lora\.|^lora_unet_|^lora_te\d?_|^lycoris_|\.hada_w|\.lokr_w|"
                   r"\.dora_scale$)")
_TEXT_LAYER = re.compile(r"(^|\.)layers\.\d+\.self_attn\.q_proj\.weight$")


@dataclass(frozen=True)
class FileKind:
    """The classification of one weight source."""

    kind: str  # "transformer" | "vae" | "text_encoder" | "lora"
    layout: str = "diffusers"  # vae: "diffusers" or "wan" (ComfyUI); others: "diffusers"
    prefix: str = ""  # transformer keys' prefix to strip, e.g. "model.diffusion_model."


def is_diffusers_folder(path: str | Path) -> bool:
    """True for a folder with diffusers' ``model_index.json``."""
    return (Path(path) / "model_index.json").is_file()


def _transformer_prefix(keys: set[str]) -> str | None:
    for key in keys:
        if key.endswith("txt_norm.weight"):
            prefix = key[: -len("txt_norm.weight")]
            if f"{prefix}img_in.weight" in keys and f"{prefix}proj_out.weight" in keys:
                return prefix
    return None


def transformer_key_map(kind: FileKind, keys: list[str]) -> dict[str, str | None]:
    """File key -> module key of a transformer file: prefix stripped; the 2511 marker and keys under other
    prefixes (other components of a full checkpoint) map to None."""
    out: dict[str, str | None] = {}
    for k in keys:
        if kind.prefix and not k.startswith(kind.prefix):
            out[k] = None
            continue
        bare = k[len(kind.prefix):]
        out[k] = None if bare == ZERO_COND_T_MARKER else bare
    return out


def _sample(keys: list[str], n: int = 8) -> str:
    return ", ".join(sorted(keys)[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")


def classify(keys: list[str], name: str) -> FileKind:
    """Sort a file by its keys (see the module docstring). ``name`` is used in the error message."""
    keyset = set(keys)
    prefix = _transformer_prefix(keyset)
    if prefix is not None:
        return FileKind("transformer", prefix=prefix)
    if "encoder.conv_in.weight" in keyset and "decoder.conv_in.weight" in keyset and \
            any(k.startswith("encoder.down_blocks.") and k.endswith(".norm1.gamma") for k in keyset):
        return FileKind("vae", layout="diffusers")
    if "encoder.conv1.weight" in keyset and "decoder.middle.0.residual.0.gamma" in keyset:
        if "encoder.downsamples.0.residual.0.gamma" not in keyset:
            raise WeightFileError(f"{name}: a Wan-style VAE of another generation (e.g. Wan 2.2's 48-channel VAE); "
                                  "only the Qwen-Image / Wan 2.1 VAE is supported")
        return FileKind("vae", layout="wan")
    if any(_LORA.search(k) for k in keys):
        return FileKind("lora")
    if any(_TEXT_LAYER.search(k) for k in keys) and any(k.endswith("embed_tokens.weight") for k in keys):
        return FileKind("text_encoder")
    raise WeightFileError(f"{name}: unknown architecture: the keys fit no Qwen-Image transformer, VAE, text "
                          f"encoder or LoRA. Sample keys: {_sample(keys) if keys else '(file has no tensors)'}")


# ---------------------------------------------------------------------------------------------------------------
# Transformer config
# ---------------------------------------------------------------------------------------------------------------


def _num_layers(shapes: Shapes, name: str) -> int:
    indices = sorted({int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))})
    if not indices:
        raise WeightFileError(f"{name}: transformer has no transformer_blocks.N keys")
    if indices != list(range(len(indices))):
        gaps = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise WeightFileError(f"{name}: transformer_blocks are not numbered 0..{indices[-1]}; missing {gaps[:8]}")
    return len(indices)


def _need(shapes: Shapes, key: str, name: str) -> tuple[int, ...]:
    if key not in shapes:
        raise WeightFileError(f"{name}: transformer lacks '{key}', needed to infer its config")
    return shapes[key]


def _axes_for(head_dim: int, override: tuple[int, int, int] | None, name: str) -> tuple[int, int, int]:
    if override is not None:
        return tuple(override)  # type: ignore[return-value]
    if head_dim in KNOWN_HEAD_DIM_AXES:
        return KNOWN_HEAD_DIM_AXES[head_dim]
    for preset_name, preset in PRESETS.items():
        if preset.transformer.attention_head_dim == head_dim:
            log.info("%s: head dim %d: RoPE axes %s taken from preset %r", name, head_dim,
                     preset.transformer.axes_dims_rope, preset_name)
            return preset.transformer.axes_dims_rope
    raise WeightFileError(f"{name}: attention head dim {head_dim} has no known RoPE split (only 128 -> (16, 56, 56) "
                          "is known); pass axes_dims_rope=(frame, height, width) summing to the head dim")


def _shape_fields(shapes: Shapes, name: str) -> dict[str, object]:
    """The config fields readable from the (prefix-stripped) shapes."""
    inner, in_channels = _need(shapes, "img_in.weight", name)
    joint = _need(shapes, "txt_in.weight", name)[1]
    head_dim = _need(shapes, "transformer_blocks.0.attn.norm_q.weight", name)[0]
    out_rows = _need(shapes, "proj_out.weight", name)[0]
    if inner % head_dim:
        raise WeightFileError(f"{name}: inner dim {inner} (img_in) is not a multiple of the head dim {head_dim}")
    patch = 2 if in_channels % 4 == 0 and out_rows % 4 == 0 else 1
    return dict(patch_size=patch, in_channels=in_channels, out_channels=out_rows // patch**2,
                num_layers=_num_layers(shapes, name), attention_head_dim=head_dim,
                num_attention_heads=inner // head_dim, joint_attention_dim=joint,
                zero_cond_t=ZERO_COND_T_MARKER in shapes,
                use_additional_t_cond="time_text_embed.addition_t_embedding.weight" in shapes)


def _config_from_metadata(metadata: Mapping[str, str] | None, name: str) -> dict | None:
    raw = (metadata or {}).get(CONFIG_METADATA_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightFileError(f"{name}: metadata '{CONFIG_METADATA_KEY}' is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise WeightFileError(f"{name}: metadata '{CONFIG_METADATA_KEY}' is not a JSON object")
    return data


def infer_transformer_config(shapes: Shapes, name: str, *, metadata: Mapping[str, str] | None = None,
                             axes_dims_rope: tuple[int, int, int] | None = None) -> TransformerConfig:
    """``TransformerConfig`` of a transformer whose (prefix-stripped) key -> shape map is ``shapes``."""
    fields = _shape_fields(shapes, name)
    stored = _config_from_metadata(metadata, name)
    try:
        if stored is not None:
            config = TransformerConfig.from_dict(stored, source=name)
            differ = [k for k, v in fields.items() if k != "patch_size" and getattr(config, k) != v]
            if differ:
                raise WeightFileError(f"{name}: the config in the file's metadata disagrees with its tensors on "
                                      f"{', '.join(differ)}")
            return config
        axes = _axes_for(int(fields["attention_head_dim"]), axes_dims_rope, name)  # type: ignore[arg-type]
        return TransformerConfig(axes_dims_rope=axes, **fields)  # type: ignore[arg-type]
    except ConfigError as e:
        raise WeightFileError(f"{name}: inferred transformer config is invalid: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# VAE config
# ---------------------------------------------------------------------------------------------------------------


def _encoder_levels(shapes: Shapes, name: str) -> tuple[list[list[int]], list[bool], list[int]]:
    """Walk ``encoder.down_blocks``: resnet widths per level, temporal flag per downsampler, attention levels."""
    levels: list[list[int]] = [[]]
    temporal: list[bool] = []
    attn_levels: list[int] = []
    i = 0
    while True:
        p = f"encoder.down_blocks.{i}."
        if f"{p}norm1.gamma" in shapes:
            levels[-1].append(_need(shapes, f"{p}conv1.weight", name)[0])
        elif f"{p}to_qkv.weight" in shapes:
            attn_levels.append(len(levels) - 1)
        elif f"{p}resample.1.weight" in shapes:
            temporal.append(f"{p}time_conv.weight" in shapes)
            levels.append([])
        else:
            break
        i += 1
    if not levels[-1]:
        raise WeightFileError(f"{name}: VAE encoder.down_blocks end with a downsampler or are empty")
    return levels, temporal, attn_levels


def _preset_stats(structure: VAEConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    def same(a: VAEConfig) -> bool:
        return all(getattr(a, f) == getattr(structure, f) for f in
                   ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample"))
    for preset in PRESETS.values():
        if isinstance(preset.vae, VAEConfig) and same(preset.vae):  # Qwen-Image VAEs only: others lack the fields
            return preset.vae.latents_mean, preset.vae.latents_std
    return None


def infer_vae_config(shapes: Shapes, name: str, *, metadata: Mapping[str, str] | None = None) -> VAEConfig:
    """``VAEConfig`` of a VAE whose diffusers-named key -> shape map is ``shapes``."""
    stored = _config_from_metadata(metadata, name)
    conv_in = _need(shapes, "encoder.conv_in.weight", name)
    base_dim, input_channels = conv_in[0], conv_in[1]
    z_dim = _need(shapes, "post_quant_conv.weight", name)[0]
    levels, temporal, attn_levels = _encoder_levels(shapes, name)
    counts = {len(level) for level in levels}
    if len(counts) != 1:
        raise WeightFileError(f"{name}: VAE levels have different numbers of residual blocks {sorted(counts)}")
    widths = [level[-1] for level in levels]
    if any(w % base_dim for w in widths):
        raise WeightFileError(f"{name}: VAE level widths {widths} are not multiples of base_dim {base_dim}")
    try:
        structure = VAEConfig(base_dim=base_dim, z_dim=z_dim, dim_mult=tuple(w // base_dim for w in widths),
                              num_res_blocks=counts.pop(), temperal_downsample=tuple(temporal),
                              attn_scales=tuple(sorted({1.0 / 2**lvl for lvl in attn_levels}, reverse=True)),
                              input_channels=input_channels, latents_mean=(0.0,) * z_dim,
                              latents_std=(1.0,) * z_dim)
        if stored is not None:
            config = VAEConfig.from_dict(stored, source=name)
            fields = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample", "input_channels")
            differ = [f for f in fields if getattr(config, f) != getattr(structure, f)]
            if differ:
                raise WeightFileError(f"{name}: the config in the file's metadata disagrees with its tensors on "
                                      f"{', '.join(differ)}")
            return config
        stats = _preset_stats(structure)
        if stats is None:
            log.warning("%s: no known latents_mean/latents_std for a VAE with z_dim=%d and this structure; using "
                        "mean 0 / std 1 (pass a VAEConfig to override)", name, z_dim)
            return structure
        return dataclasses.replace(structure, latents_mean=stats[0], latents_std=stats[1])
    except ConfigError as e:
        raise WeightFileError(f"{name}: inferred VAE config is invalid: {e}") from None
