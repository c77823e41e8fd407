"""Tiny, offline Qwen2.5-VL pieces for tests that need a condition encoder and its diffusers reference.

Import from any test (the ``tests`` folder is a package)::

    from tests.encoder_fixtures import build_tiny_qwen_vl, offline_tokenizer, reference_processor, save_diffusers_layout

    model = build_tiny_qwen_vl()                      # random Qwen2_5_VLForConditionalGeneration, width 32
    tokenizer = offline_tokenizer()                   # the real Qwen2.5-VL tokenizer, rebuilt offline
    processor = reference_processor(tokenizer)        # transformers' Qwen2VLProcessor, for diffusers
    save_diffusers_layout(tmp_path, model, tokenizer) # text_encoder/, tokenizer/, processor/ like a FireRed folder
    with forwarding_mm_token_types(model):            # diffusers with the 3D-RoPE fix (diffusers issue #14194)
        embeds, mask = pipe.encode_prompt(prompt, image=condition_images)

The tiny model keeps the real vocabulary size (151,936 rows, so every Qwen2.5-VL special token id exists) but is 32
wide with 2 text layers and 2 vision blocks (one windowed, one global), 16-wide heads and rotary sections [2, 3, 3].
``TINY_QWEN_VL_CONFIG`` is the ``Qwen2_5_VLConfig`` keyword arguments; ``config_metadata`` from
``firered_core.encoder.qwen_keys`` stores it in a single file so that loader can rebuild the architecture.

transformers' ``Qwen2VLProcessor`` refuses to be built without torchvision (its video processor needs it); for
the reference side, ``reference_processor`` builds it with that one check skipped. Nothing here touches the
network.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from firered_core.encoder.qwen_keys import config_metadata, to_original_key  # noqa: E402
from firered_core.encoder.qwen_processor import QWEN25_VL_PREPROCESSOR, build_image_processor  # noqa: E402
from firered_core.encoder.qwen_tokenizer import build_qwen_tokenizer  # noqa: E402

__all__ = ["TINY_QWEN_VL_CONFIG", "tiny_qwen_vl_config", "build_tiny_qwen_vl", "offline_tokenizer",
           "reference_processor", "sample_images", "save_diffusers_layout", "save_single_file",
           "forwarding_mm_token_types"]

TINY_QWEN_VL_CONFIG: dict[str, Any] = {
    "text_config": {
        "vocab_size": 151936,  # Qwen2.5-VL-3B's size; covers the special tokens up to 151664
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 32,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
    },
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}


def tiny_qwen_vl_config() -> Any:
    """``Qwen2_5_VLConfig`` of the tiny model."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(**copy.deepcopy(TINY_QWEN_VL_CONFIG))


def build_tiny_qwen_vl(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A random, seeded ``Qwen2_5_VLForConditionalGeneration`` in eval mode.

    Weights are drawn with std 0.5 rather than transformers' 0.02 so that every layer, including the rotary
    positions, changes the output visibly: a test comparing two encoders must be able to fail.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_vl_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.5 * torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5 if p.ndim > 1
                        else 0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def save_tiny_qwen_vl_folder(folder: Path) -> Path:
    """``build_tiny_qwen_vl()`` saved as transformers saves a model folder (config, safetensors, the offline
    tokenizer, the image processor): what ``firered_core.rewards.load_local_judge`` reads."""
    from firered_core.encoder.qwen_processor import build_image_processor

    build_tiny_qwen_vl().save_pretrained(folder, safe_serialization=True)
    offline_tokenizer().save_pretrained(folder)
    build_image_processor().save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=1)
def _cached_tokenizer() -> Any:
    return build_qwen_tokenizer()


def offline_tokenizer() -> Any:
    """The offline Qwen2.5-VL tokenizer (built once per test session, shared: do not mutate it)."""
    return _cached_tokenizer()


def reference_processor(tokenizer: Any | None = None, image_processor: Any | None = None) -> Any:
    """transformers' ``Qwen2VLProcessor`` over ``tokenizer``, built without a video processor (no torchvision)."""
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class

    def check(self: Any, name: str, argument: Any) -> Any:
        if name == "video_processor" and argument is None:
            return None
        return original(self, name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check):
        return Qwen2VLProcessor(image_processor=image_processor or build_image_processor(),
                                tokenizer=tokenizer or offline_tokenizer(), video_processor=None)


def sample_images(sizes: tuple[tuple[int, int], ...] = ((300, 200), (160, 240))) -> list[Image.Image]:
    """Deterministic RGB images of the given (width, height) with smooth structure plus noise."""
    rng = np.random.default_rng(1234)
    images = []
    for w, h in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def save_diffusers_layout(root: Path, model: Any, tokenizer: Any, *, original_keys: bool = False) -> Path:
    """``root/text_encoder``, ``root/tokenizer``, ``root/processor`` as in a FireRed diffusers folder.

    ``original_keys`` writes the text encoder with the original Qwen2.5-VL key names (``model.layers.*``,
    ``visual.*``) as the released checkpoints have them, instead of transformers' current names.
    """
    root = Path(root)
    text_encoder = root / "text_encoder"
    model.save_pretrained(text_encoder)
    if original_keys:
        for f in text_encoder.glob("*.safetensors"):
            f.unlink()
        tensors = {to_original_key(k): v.contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, text_encoder / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(root / "tokenizer")
    processor = root / "processor"
    processor.mkdir(parents=True, exist_ok=True)
    config = {**QWEN25_VL_PREPROCESSOR, "image_processor_type": "Qwen2VLImageProcessor",
              "processor_class": "Qwen2_5_VLProcessor"}
    (processor / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(processor)
    return root


def save_single_file(path: Path, model: Any, *, with_lm_head: bool = False, with_config: bool = True,
                     prefix: str = "", original_keys: bool = True) -> Path:
    """The model as one safetensors file in ComfyUI's (original) key layout, optionally with its config."""
    tensors = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and not with_lm_head:
            continue
        tensors[prefix + (to_original_key(key) if original_keys else key)] = value.contiguous()
    metadata = config_metadata(TINY_QWEN_VL_CONFIG) if with_config else None
    save_file(tensors, str(path), metadata=metadata)
    return Path(path)


@contextlib.contextmanager
def forwarding_mm_token_types(model: Any) -> Iterator[None]:
    """Make ``model`` receive ``mm_token_type_ids`` as diffusers' proposed fix (PR #14189) passes them.

    diffusers 0.42 calls the text encoder without them, so transformers 5 gives image tokens 1D positions. Inside
    this context every call gets ``mm_token_type_ids = (input_ids == image_token_id)``, exactly what the processor
    returns for text + still images.
    """
    forward = model.forward
    image_token_id = model.config.image_token_id

    def patched(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        if ids is not None and kwargs.get("pixel_values") is not None and "mm_token_type_ids" not in kwargs:
            kwargs["mm_token_type_ids"] = (ids == image_token_id).long()
        return forward(*args, **kwargs)

    with mock.patch.object(model, "forward", patched):
        yield
