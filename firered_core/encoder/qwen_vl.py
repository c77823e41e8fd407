"""Qwen2.5-VL as FireRed's condition encoder: instruction + reference images -> last hidden states + mask.

This is diffusers' ``QwenImageEditPlusPipeline.encode_prompt`` (with references) and ``QwenImagePipeline
.encode_prompt`` (without), on transformers' Qwen2.5-VL::

    encoder = QwenVLConditionEncoder.from_pretrained_dir("FireRed-Image-Edit-1.1")      # diffusers folder
    encoder = QwenVLConditionEncoder.from_single_file("qwen2.5vl-7b-bf16.safetensors")  # ComfyUI's file
    cond = encoder.encode(["turn the cat into a tiger"], [photo])   # embeds [1, L, 3584], mask [1, L]

Steps of ``encode(prompts, images)``:

1. ``template.select_template``: the edit template with one ``Picture i`` block per reference image, or the
   text-to-image template without references.
2. With references: every image is resized to ~384x384 (``template.resize_condition_image``) and the texts go
   through the processor (``QwenVLProcessor``) with one copy of the images per prompt, because the images are
   shared by all prompts while the processor consumes them in order. Without: the tokenizer alone, truncated at
   ``TEXT_MAX_TOKENS`` + 34 tokens, as the reference does.
3. The language model runs with ``output_hidden_states=True``; ``hidden_states[-1]`` is kept. Only the backbone
   (``Qwen2_5_VLModel``) runs: the LM head's logits are not needed and would cost a 152k-wide matmul per token.
4. Per prompt, the positions where the attention mask is 1 are gathered, the template prefix (64 / 34 tokens) is
   dropped, and the rows are right-padded with zeros to the longest; the mask marks real positions. Text-only
   results are cut to ``max_sequence_length`` (default 1024, the reference's ``encode_prompt`` default; its
   ``__call__`` passes 512, which the pipeline applies). The edit path has no cut, as in the reference.

Rotary positions (``mrope_positions``): Qwen2.5-VL places image tokens on a 3D (time, row, column) grid. Since
transformers 5.x the model derives that grid only from the processor's ``mm_token_type_ids``, and diffusers 0.42
does not pass them (diffusers issue #14194), so the reference silently falls back to 1D positions for image tokens,
unlike the transformers 4.x runs the model was trained and released with. The default here (True) passes them and
reproduces the model as trained; ``mrope_positions=False`` reproduces diffusers 0.42 + transformers 5.x bit for bit.
Text-only encodings are the same either way.

Loading: ``from_pretrained_dir`` reads a diffusers folder (``text_encoder/``, ``tokenizer/``, ``processor/``) with
transformers, offline. ``from_single_file`` builds the model on the meta device from ``qwen_keys.QWEN25_VL_7B`` (or
the architecture the file's shapes/metadata imply), streams the tensors in one at a time through
``firered_core.loading`` (any key layout of ``qwen_keys``; ``lm_head`` is skipped) and pairs it with the offline
tokenizer of ``qwen_tokenizer``. transformers is imported only inside these functions.

fp8 storage (``fp8=True``): the network's layers become ``firered_core.ops``' casting classes (``ops.adopt``) and
every Linear weight of the language model and the vision tower is stored as float8_e4m3fn (embeddings, norms and
the patch convolution keep ``dtype``), streamed in one tensor at a time from single files and folders alike, and
upcast to the activations' dtype at every call: the 7B encoder takes 8.3 GB instead of 15.5 GB in bf16. Files
already stored in fp8 (ComfyUI's ``qwen_2.5_vl_7b_fp8_scaled.safetensors``) stay fp8 by default (``fp8=None``):
their scaled weights are kept as stored with their scales (``loading.scaled_fp8``), so nothing is rounded twice;
``fp8=False`` expands them to ``dtype``.

Public API: ``QwenVLConditionEncoder``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from PIL import Image

from .base import EncodedCondition, FrozenModelEncoder, check_encode_args
from .qwen_processor import QwenVLProcessor, build_qwen_vl_processor
from .template import (CONDITION_IMAGE_AREA, TEXT_MAX_TOKENS, PromptTemplate, resize_condition_image,
                       select_template)

if TYPE_CHECKING:
    from transformers import Qwen2_5_VLConfig

log = logging.getLogger(__name__)

__all__ = ["QwenVLConditionEncoder"]

PathLike = str | os.PathLike


def _backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The ``Qwen2_5_VLModel`` inside a ``Qwen2_5_VLForConditionalGeneration`` (or the model itself)."""
    inner = getattr(model, "model", None)
    if getattr(model, "lm_head", None) is not None and isinstance(inner, torch.nn.Module):
        return inner
    return model


def _pack(hidden: torch.Tensor, attention_mask: torch.Tensor, drop: int) -> EncodedCondition:
    """Real positions of each row minus the first ``drop``, right-padded with zeros to the longest row."""
    rows = [h[m.bool()][drop:] for h, m in zip(hidden, attention_mask)]  # each [L_i, D]
    length = max(r.shape[0] for r in rows)
    embeds = hidden.new_zeros(len(rows), length, hidden.shape[-1])  # [B, L, D]
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=hidden.device)  # [B, L]
    for i, row in enumerate(rows):
        embeds[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = 1
    return EncodedCondition(embeds, mask)


class QwenVLConditionEncoder(FrozenModelEncoder):
    """A ``ConditionEncoder`` over transformers' Qwen2.5-VL (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, processor: QwenVLProcessor | Any, *,
                 max_sequence_length: int = TEXT_MAX_TOKENS, mrope_positions: bool = True) -> None:
        """``model``: ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen2_5_VLModel``; ``processor``: anything with
        ``tokenizer`` and ``image_processor`` attributes (``QwenVLProcessor``, transformers' ``Qwen2VLProcessor``)."""
        if not 0 < max_sequence_length <= TEXT_MAX_TOKENS:
            raise ValueError(f"max_sequence_length must lie in 1..{TEXT_MAX_TOKENS}, got {max_sequence_length}")
        if not isinstance(processor, QwenVLProcessor):
            if not (hasattr(processor, "tokenizer") and hasattr(processor, "image_processor")):
                raise TypeError(f"processor must have tokenizer and image_processor attributes (a QwenVLProcessor or "
                                f"transformers' Qwen2VLProcessor), got {type(processor).__name__}")
            processor = QwenVLProcessor(processor.tokenizer, processor.image_processor)
        self.model = _backbone_of(model).eval().requires_grad_(False)
        self.processor = processor
        self.max_sequence_length = max_sequence_length
        self.mrope_positions = mrope_positions
        vocab = int(self.model.config.text_config.vocab_size)
        if len(processor.tokenizer) > vocab:
            raise ValueError(f"the tokenizer has {len(processor.tokenizer)} tokens but the model's vocabulary only "
                             f"{vocab}: they do not belong together")

    # -- ConditionEncoder --------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    def encode(self, prompts: Sequence[str], images: Sequence[Image.Image], *,
               image_area: int = CONDITION_IMAGE_AREA) -> EncodedCondition:
        """Embeddings of each prompt against the shared reference ``images`` (originals; resized here to about
        ``image_area`` pixels, the release's ~384^2 by default)."""
        prompts, images = check_encode_args(prompts, images)
        template = select_template(len(images))
        with torch.no_grad():
            if images:
                inputs = self._edit_inputs(template, prompts, images, image_area)
            else:
                inputs = self._text_inputs(template, prompts)
            hidden = self._last_hidden_state(inputs)  # [B, T, D]
        cond = _pack(hidden, inputs["attention_mask"], template.drop_tokens)
        if not images and cond.seq_len > self.max_sequence_length:
            cond = EncodedCondition(cond.embeds[:, : self.max_sequence_length],
                                    cond.mask[:, : self.max_sequence_length])
        return cond

    # -- steps ---------------------------------------------------------------------------------------------------

    def _edit_inputs(self, template: PromptTemplate, prompts: list[str], images: list[Image.Image],
                     image_area: int = CONDITION_IMAGE_AREA) -> dict[str, torch.Tensor]:
        seen = [resize_condition_image(im, image_area) for im in images]
        texts = [template.format(p, len(seen)) for p in prompts]
        return self.processor(texts, seen * len(prompts), padding=True)

    def _text_inputs(self, template: PromptTemplate, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [template.format(p) for p in prompts]
        return dict(self.processor.tokenizer(texts, max_length=TEXT_MAX_TOKENS + template.drop_tokens,
                                             padding=True, truncation=True, return_tensors="pt"))

    def _last_hidden_state(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = self.device
        kwargs: dict[str, Any] = {"input_ids": inputs["input_ids"].to(device),
                                  "attention_mask": inputs["attention_mask"].to(device)}
        if "pixel_values" in inputs:
            kwargs["pixel_values"] = inputs["pixel_values"].to(device)
            kwargs["image_grid_thw"] = inputs["image_grid_thw"].to(device)
            if self.mrope_positions:
                kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"].to(device)
        out = self.model(**kwargs, output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1]

    # -- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained_dir(cls, text_encoder_dir: PathLike, tokenizer_dir: PathLike | None = None,
                            processor_dir: PathLike | None = None, *, dtype: torch.dtype | None = None,
                            device: torch.device | str | None = None, fp8: bool | None = None,
                            **options: Any) -> "QwenVLConditionEncoder":
        """From diffusers-layout folders, offline. ``text_encoder_dir`` may also be the pipeline folder itself;
        ``tokenizer_dir``/``processor_dir`` default to its ``tokenizer/``/``processor/`` siblings. ``dtype`` None
        keeps the stored dtype. ``fp8``: Linear weights stored as float8 (None: only when the folder's already
        are). ``options`` go to the constructor."""
        from .qwen_loading import load_pretrained_parts

        model, processor = load_pretrained_parts(text_encoder_dir, tokenizer_dir, processor_dir, dtype=dtype,
                                                 fp8=fp8, device=device)
        return cls(model, processor, **options)

    @classmethod
    def from_single_file(cls, path: PathLike, *, dtype: torch.dtype | None = None,
                         config: "Mapping[str, Any] | Qwen2_5_VLConfig | None" = None,
                         device: torch.device | str | None = None, processor: QwenVLProcessor | None = None,
                         fp8: bool | None = None, **options: Any) -> "QwenVLConditionEncoder":
        """From one ``.safetensors`` file (ComfyUI's or transformers' key layout); see the module docstring.

        ``dtype`` None keeps the file's dtype; ``config`` (``Qwen2_5_VLConfig`` or its keyword arguments)
        overrides the detected architecture; ``processor`` defaults to the offline Qwen2.5-VL one. ``fp8``:
        Linear weights stored as float8; None does so exactly when the file stores fp8 weights (scaled or plain),
        False expands them to ``dtype``."""
        from .qwen_loading import load_single_file_model

        model = load_single_file_model(Path(path), dtype=dtype, config=config, device=device, fp8=fp8)
        return cls(model, processor if processor is not None else build_qwen_vl_processor(), **options)
