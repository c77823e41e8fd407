"""Qwen2.5-VL weight files: their key layouts, and the architecture their keys and shapes imply.

Key layouts (what a single ``.safetensors`` file may use, with ``P`` an optional outer prefix a checkpoint adds):

=======================  =========================================  =============================================
layout                   language model                             vision tower / LM head
=======================  =========================================  =============================================
``original`` (ComfyUI)   ``P model.embed_tokens``,                  ``P visual.patch_embed``, ``P visual.blocks.N``,
                         ``P model.layers.N.{self_attn,mlp,...}``,   ``P visual.merger``; ``P lm_head`` (optional)
                         ``P model.norm``
``transformers``         ``P model.language_model.*``               ``P model.visual.*``; ``P lm_head``
=======================  =========================================  =============================================

The original layout is that of the Qwen2.5-VL-7B-Instruct release, which ComfyUI's ``qwen2.5vl-7b-bf16.safetensors``
keeps (ComfyUI's module tree is ``model.*`` + ``visual.*`` and it does not use ``lm_head``); transformers >= 4.52
names the same tensors ``model.language_model.*`` / ``model.visual.*``. Everything below the two roots is identical.
``to_transformers_key`` / ``to_original_key`` convert single names; ``KeyLayout.detect`` finds prefix and layout from
a file's keys.

Architecture: ``QWEN25_VL_7B`` is Qwen2.5-VL-7B-Instruct's published ``config.json`` written as data (the condition
encoder of FireRed / Qwen-Image). ``infer_qwen_vl_config`` reads widths, depths and vocabulary from the tensor
shapes of any file; what shapes cannot tell (attention head sizes, rotary sections, which vision blocks attend
globally) comes from, in order: a ``qwen2_5_vl_config`` JSON entry in the file's safetensors metadata (written by
``config_metadata``, e.g. for tiny test files), or Qwen2.5-VL's fixed values (128-wide text heads, 80-wide vision
heads, full attention in every 8th vision block). When those do not fit the shapes the error asks for a config.

Public API: ``KeyLayout``, ``to_transformers_key``, ``to_original_key``, ``infer_qwen_vl_config``,
``config_metadata``, ``QWEN25_VL_7B``, ``CONFIG_METADATA_KEY``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..loading.safetensors_io import WeightFileError

log = logging.getLogger(__name__)

__all__ = ["KeyLayout", "to_transformers_key", "to_original_key", "infer_qwen_vl_config", "config_metadata",
           "QWEN25_VL_7B", "CONFIG_METADATA_KEY"]

CONFIG_METADATA_KEY = "qwen2_5_vl_config"

QWEN25_VL_7B: dict[str, Any] = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-06,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": 28,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        # multimodal RoPE: the 64 rotary frequency pairs of a 128-wide head split as (temporal, height, width)
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_channels": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,  # pixels per side of an attention window (8 x 8 patches)
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "hidden_act": "silu",
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}

_TEXT_HEAD_DIM = 128  # every Qwen2.5 / Qwen2.5-VL size
_VISION_HEAD_DIM = 80  # 1280 / 16 in every Qwen2.5-VL size
_FULL_ATTENTION_EVERY = 8  # vision blocks 7, 15, 23, 31 attend globally, the others in windows


# ---------------------------------------------------------------------------------------------------------------
# Key layouts
# ---------------------------------------------------------------------------------------------------------------


def to_transformers_key(key: str) -> str:
    """An original-layout name (no outer prefix) in transformers' layout; transformers names pass through."""
    if key.startswith(("model.language_model.", "model.visual.")) or key == "lm_head.weight":
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    if key.startswith("visual."):
        return "model." + key
    raise KeyError(f"'{key}' is not a Qwen2.5-VL tensor name (expected model.*, visual.* or lm_head.*)")


def to_original_key(key: str) -> str:
    """A transformers-layout name in the original (ComfyUI) layout."""
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key == "lm_head.weight":
        return key
    raise KeyError(f"'{key}' is not a transformers Qwen2.5-VL tensor name")


@dataclass(frozen=True)
class KeyLayout:
    """Where a file keeps its tensors: an outer ``prefix`` and ``original`` or ``transformers`` naming."""

    prefix: str
    layout: str  # "original" | "transformers"

    @classmethod
    def detect(cls, keys: Iterable[str], name: str) -> "KeyLayout":
        """The layout of a file from its ``embed_tokens`` key; ``name`` labels errors."""
        embeds = [k for k in keys if k.endswith("embed_tokens.weight")]
        if len(embeds) != 1:
            raise WeightFileError(f"{name}: expected one '*embed_tokens.weight' tensor in a Qwen2.5-VL file, found "
                                  f"{len(embeds)} ({', '.join(embeds[:4]) or 'none'})")
        root = embeds[0][: -len("embed_tokens.weight")]
        if root.endswith("model.language_model."):
            return cls(root[: -len("model.language_model.")], "transformers")
        if root.endswith("model."):
            return cls(root[: -len("model.")], "original")
        raise WeightFileError(f"{name}: '{embeds[0]}' is neither under 'model.' nor 'model.language_model.'")

    def module_key(self, file_key: str) -> str | None:
        """The transformers-layout name of ``file_key``; None for keys outside this layout's prefix."""
        if not file_key.startswith(self.prefix):
            return None
        try:
            return to_transformers_key(file_key[len(self.prefix):])
        except KeyError:
            return None


# ---------------------------------------------------------------------------------------------------------------
# Architecture from shapes
# ---------------------------------------------------------------------------------------------------------------

Shapes = Mapping[str, tuple[int, ...]]


def _need(shapes: Shapes, key: str, name: str) -> tuple[int, ...]:
    if key not in shapes:
        raise WeightFileError(f"{name}: tensor '{key}' is missing, so the model size cannot be read from the file")
    return tuple(shapes[key])


def _count(shapes: Shapes, root: str, name: str) -> int:
    """How many numbered blocks ``root0.``, ``root1.``, ... the file has; a gap means a damaged file."""
    found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(root) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise WeightFileError(f"{name}: blocks '{root}N' are not numbered 0..{len(found) - 1}: {sorted(found)[:8]}")
    if not found:
        raise WeightFileError(f"{name}: no '{root}N' blocks, so this is not a complete Qwen2.5-VL file")
    return len(found)


def _text_config(shapes: Shapes, name: str) -> dict[str, Any]:
    root = "model.language_model."
    vocab, hidden = _need(shapes, root + "embed_tokens.weight", name)
    layers = _count(shapes, root + "layers.", name)
    q_out = _need(shapes, root + "layers.0.self_attn.q_proj.weight", name)[0]
    kv_out = _need(shapes, root + "layers.0.self_attn.k_proj.weight", name)[0]
    if q_out % _TEXT_HEAD_DIM or kv_out % _TEXT_HEAD_DIM or q_out != hidden:
        raise WeightFileError(f"{name}: attention widths (q {q_out}, kv {kv_out}, hidden {hidden}) do not fit "
                              f"Qwen2.5's {_TEXT_HEAD_DIM}-wide heads; pass the model config explicitly")
    text = copy.deepcopy(QWEN25_VL_7B["text_config"])
    text.update(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, max_window_layers=layers,
                intermediate_size=_need(shapes, root + "layers.0.mlp.gate_proj.weight", name)[0],
                num_attention_heads=q_out // _TEXT_HEAD_DIM, num_key_value_heads=kv_out // _TEXT_HEAD_DIM)
    return text


def _vision_config(shapes: Shapes, name: str, out_hidden: int) -> dict[str, Any]:
    root = "model.visual."
    hidden, in_channels, temporal, patch, _ = _need(shapes, root + "patch_embed.proj.weight", name)
    depth = _count(shapes, root + "blocks.", name)
    merged_in = _need(shapes, root + "merger.mlp.0.weight", name)[1]
    merge = math.isqrt(merged_in // hidden)
    if hidden % _VISION_HEAD_DIM or merge * merge * hidden != merged_in:
        raise WeightFileError(f"{name}: vision tower (width {hidden}, merger input {merged_in}) does not fit "
                              "Qwen2.5-VL's fixed head size and 2x2 merger; pass the model config explicitly")
    vision = copy.deepcopy(QWEN25_VL_7B["vision_config"])
    vision.update(depth=depth, hidden_size=hidden, in_channels=in_channels, temporal_patch_size=temporal,
                  patch_size=patch, spatial_merge_size=merge, num_heads=hidden // _VISION_HEAD_DIM,
                  intermediate_size=_need(shapes, root + "blocks.0.mlp.gate_proj.weight", name)[0],
                  out_hidden_size=_need(shapes, root + "merger.mlp.2.weight", name)[0],
                  fullatt_block_indexes=list(range(_FULL_ATTENTION_EVERY - 1, depth, _FULL_ATTENTION_EVERY)))
    if vision["out_hidden_size"] != out_hidden:
        raise WeightFileError(f"{name}: the vision tower outputs {vision['out_hidden_size']} features but the "
                              f"language model is {out_hidden} wide")
    return vision


def _config_from_metadata(metadata: Mapping[str, str] | None, name: str) -> dict[str, Any] | None:
    raw = (metadata or {}).get(CONFIG_METADATA_KEY)
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightFileError(f"{name}: metadata entry '{CONFIG_METADATA_KEY}' is not valid JSON ({e})") from None
    if not isinstance(config, dict) or not {"text_config", "vision_config"} <= config.keys():
        raise WeightFileError(f"{name}: metadata entry '{CONFIG_METADATA_KEY}' needs text_config and vision_config")
    return config


def infer_qwen_vl_config(shapes: Shapes, name: str,
                         metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``Qwen2_5_VLConfig`` keyword arguments for a file whose (transformers-layout) ``shapes`` are given.

    The file's own config in its metadata wins; otherwise sizes come from the shapes and the rest from
    ``QWEN25_VL_7B`` (see the module docstring). Raises ``WeightFileError`` naming ``name`` when neither works.
    """
    config = _config_from_metadata(metadata, name)
    if config is not None:
        log.info("%s: using the model config stored in the file's metadata", name)
        return config
    text = _text_config(shapes, name)
    config = copy.deepcopy(QWEN25_VL_7B)
    config["text_config"] = text
    config["vision_config"] = _vision_config(shapes, name, text["hidden_size"])
    return config


def config_metadata(config: Mapping[str, Any]) -> dict[str, str]:
    """A safetensors metadata entry recording ``config`` (keyword arguments of ``Qwen2_5_VLConfig``)."""
    return {CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)}
