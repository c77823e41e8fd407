"""Text + images -> Qwen2.5-VL model inputs, the job of transformers' ``Qwen2VLProcessor``, without torchvision.

transformers 5 cannot even construct ``Qwen2VLProcessor`` unless torchvision is installed (its video processor
requires it), and torchvision wheels pin one torch version, so this project does not depend on it. The processor
here does what ``Qwen2VLProcessor.__call__`` does for text and still images, with the same two parts:

* ``image_processor``: transformers' ``Qwen2VLImageProcessor`` (resize to multiples of patch x merge within
  ``min_pixels..max_pixels``, CLIP normalisation, flattening into ``temporal x patch x patch`` patches). Its
  torchvision backend is used when torchvision is importable and the PIL backend otherwise, which is the choice
  transformers itself makes when it loads a ``processor/`` folder;
* ``tokenizer``: any Qwen2 tokenizer (a diffusers folder's ``tokenizer/``, or ``qwen_tokenizer.build_qwen_tokenizer``).

Each ``<|image_pad|>`` in the texts is expanded to ``t*h*w / merge^2`` copies, consuming the images in order across
the whole batch, and ``mm_token_type_ids`` (1 on image tokens) is returned for Qwen2.5-VL's 3D rotary positions.
``tests/core/test_encoder.py`` checks the outputs against transformers' own processor.

``QWEN25_VL_PREPROCESSOR`` holds the values of Qwen2.5-VL-7B-Instruct's ``preprocessor_config.json``.

Public API: ``QwenVLProcessor``, ``build_qwen_vl_processor``, ``build_image_processor``, ``load_image_processor``,
``QWEN25_VL_PREPROCESSOR``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .qwen_tokenizer import IMAGE_PAD

log = logging.getLogger(__name__)

__all__ = ["QwenVLProcessor", "build_qwen_vl_processor", "build_image_processor", "load_image_processor",
           "QWEN25_VL_PREPROCESSOR"]

QWEN25_VL_PREPROCESSOR: dict[str, Any] = {
    "min_pixels": 3136,  # 56 x 56
    "max_pixels": 12845056,  # 28 x 28 x 16384
    "patch_size": 14,
    "temporal_patch_size": 2,  # a still image is repeated to fill the temporal patch
    "merge_size": 2,  # 2x2 patches become one LLM token
    "image_mean": [0.48145466, 0.4578275, 0.40821073],  # CLIP's
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,  # bicubic
}

_PREPROCESSOR_FILE = "preprocessor_config.json"  # transformers 4: the image processor's own file
_PROCESSOR_FILE = "processor_config.json"  # transformers 5: one file, the image processor's values nested in it


def _image_processor_class() -> type:
    """The class transformers would load for ``Qwen2VLImageProcessor``, chosen without its fallback warning."""
    if importlib.util.find_spec("torchvision") is not None:
        from transformers import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil


def build_image_processor(config: dict[str, Any] | None = None) -> Any:
    """A Qwen2-VL image processor from ``config`` (``preprocessor_config.json`` values; default Qwen2.5-VL's)."""
    values = dict(QWEN25_VL_PREPROCESSOR if config is None else config)
    for bookkeeping in ("image_processor_type", "processor_class", "_processor_class"):
        values.pop(bookkeeping, None)
    size = dict(values.pop("size", None) or {})
    if "min_pixels" in values:
        size["shortest_edge"] = values.pop("min_pixels")
    if "max_pixels" in values:
        size["longest_edge"] = values.pop("max_pixels")
    if size:
        values["size"] = size
    return _image_processor_class()(**values)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable processor config ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: processor config is not a JSON object")
    return config


def load_image_processor(processor_dir: str | Path) -> Any:
    """The image processor of a diffusers ``processor/`` folder, in either layout transformers writes: its own
    ``preprocessor_config.json`` (transformers 4), or the ``image_processor`` entry of ``processor_config.json``
    (transformers 5). When both are there, the image processor's own file wins."""
    folder = Path(processor_dir)
    if (folder / _PREPROCESSOR_FILE).is_file():
        return build_image_processor(_read_json_object(folder / _PREPROCESSOR_FILE))
    path = folder / _PROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: a Qwen2.5-VL processor folder needs {_PREPROCESSOR_FILE} or "
                                f"{_PROCESSOR_FILE}; found neither")
    nested = _read_json_object(path).get("image_processor")
    if not isinstance(nested, dict):
        raise ValueError(f"{path}: has no 'image_processor' object (a transformers 5 processor config nests the "
                         "image processor's values under that key)")
    return build_image_processor(nested)


class QwenVLProcessor:
    """``(texts, images) -> input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw``."""

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {IMAGE_PAD} token; it is not a Qwen2-VL tokenizer")
        self.image_token_id = token_id

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def _expand(self, texts: Sequence[str], tokens_per_image: list[int]) -> list[str]:
        """Each ``<|image_pad|>`` becomes as many copies as its image has LLM tokens, images taken in order."""
        expected = sum(t.count(IMAGE_PAD) for t in texts)
        if expected != len(tokens_per_image):
            raise ValueError(f"the texts hold {expected} {IMAGE_PAD} placeholders but {len(tokens_per_image)} "
                             "images were given")
        counts = iter(tokens_per_image)
        out = []
        for text in texts:
            pieces = text.split(IMAGE_PAD)
            out.append(pieces[0] + "".join(IMAGE_PAD * next(counts) + piece for piece in pieces[1:]))
        return out

    def __call__(self, text: Sequence[str], images: Sequence[Image.Image] | None = None, *,
                 padding: bool = True) -> dict[str, torch.Tensor]:
        """Model inputs for ``text`` (a list) and the images its placeholders refer to, as torch tensors."""
        result: dict[str, torch.Tensor] = {}
        tokens_per_image: list[int] = []
        if images:
            pixels = self.image_processor(images=list(images), return_tensors="pt")
            grid = pixels["image_grid_thw"]  # [N, 3]: temporal, height, width in patches
            result["pixel_values"] = pixels["pixel_values"]  # [sum(t*h*w), C * temporal * patch^2]
            result["image_grid_thw"] = grid
            tokens_per_image = (grid.prod(-1) // self.merge_size**2).tolist()
        encoded = self.tokenizer(self._expand(text, tokens_per_image), padding=padding, return_tensors="pt")
        input_ids = encoded["input_ids"]
        placed = int((input_ids == self.image_token_id).sum())
        if placed != sum(tokens_per_image):
            raise ValueError(f"tokenised texts hold {placed} image tokens but the images need "
                             f"{sum(tokens_per_image)} (was a prompt truncated?)")
        result["input_ids"] = input_ids
        result["attention_mask"] = encoded["attention_mask"]
        result["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        return result


def build_qwen_vl_processor(tokenizer: Any | None = None, image_processor: Any | None = None) -> QwenVLProcessor:
    """A processor configured like Qwen2.5-VL's; the tokenizer defaults to the offline one (``qwen_tokenizer``)."""
    if tokenizer is None:
        from .qwen_tokenizer import build_qwen_tokenizer

        tokenizer = build_qwen_tokenizer()
    return QwenVLProcessor(tokenizer, image_processor if image_processor is not None else build_image_processor())
