"""From a planned batch to pixels: decode, fit to the bucket sizes, align the instruction (SIA).

The bucket sampler (``data.bucket_sampler``) decides which samples form a step and the size of every image slot;
this module produces what the model side needs from that plan, for one rank:

* ``fit_image(img, dims)``: resize so the image covers ``dims`` (aspect kept), then centre-crop. The sampler chose
  ``dims`` within ``aspect_tolerance`` of every member's aspect, so the crop removes at most that fraction.
  ``fit_points`` moves points of the image (face landmarks) to where the fit puts them.
* ``load_pixel_batch(records, plan, sia, ...)``: decodes each sample of ``plan``, applies Stochastic Instruction
  Alignment (the step's shared source plan: drop/shuffle sources and re-index "Picture N"; the per-sample EN/CN
  choice and text drop) and stacks the images slot by slot: ``target [B, 3, H, W]``, ``sources[k] [B, 3, h_k,
  w_k]`` in [-1, 1]. The condition encoder gets the fitted PIL sources, the same pixels the VAE sees.

Bad samples. A sample whose file vanished or no longer decodes (``BadSampleError``) is counted in the
``SkipLog`` and left out of the batch, so the batch can be smaller than planned. If every sample of a rank's
batch is bad, the batch is empty (``PixelBatch.size == 0``); the trainer then runs a zero-weighted step of the
planned shapes so that all ranks still meet in the gradient all-reduce.

Public API: ``fit_image``, ``fit_points``, ``image_to_tensor``, ``PixelSample``, ``PixelBatch``,
``load_pixel_sample``, ``load_pixel_batch``, ``stack_pixel_batch``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .bucket_sampler import BatchPlan
from .buckets import Dims
from .record import BadSampleError, EditRecord
from .sia import SIAConfig, SourcePlan, align, choose_instruction, plan_sources
from .skips import SkipLog

log = logging.getLogger(__name__)

__all__ = ["fit_image", "fit_points", "image_to_tensor", "PixelSample", "PixelBatch", "load_pixel_sample",
           "load_pixel_batch",
           "stack_pixel_batch", "text_language"]


def _fit_box(size: tuple[int, int], dims: Dims) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of ``fit_image`` for an image of ``size`` (w, h)."""
    width, height = size
    scale = max(dims.width / width, dims.height / height)
    # ceil keeps both sides >= the bucket even when the scaled side lands a hair below it
    new_w, new_h = max(dims.width, math.ceil(width * scale - 1e-6)), max(dims.height, math.ceil(height * scale - 1e-6))
    return new_w, new_h, (new_w - dims.width) // 2, (new_h - dims.height) // 2


def fit_image(img: Image.Image, dims: Dims) -> Image.Image:
    """``img`` resized to cover ``dims`` (height, width) with its aspect kept, then centre-cropped to it."""
    new_w, new_h, left, top = _fit_box(img.size, dims)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    if (left, top, new_w, new_h) != (0, 0, dims.width, dims.height):
        img = img.crop((left, top, left + dims.width, top + dims.height))
    return img


def fit_points(points: np.ndarray, size: tuple[int, int], dims: Dims) -> np.ndarray:
    """``points [K, 2]`` (x, y) of an image of ``size`` (w, h) where ``fit_image`` puts them in its ``dims`` result,
    in the same pixel-centre convention (pixel ``i`` covers ``[i - 0.5, i + 0.5]``, as the resize maps areas)."""
    new_w, new_h, left, top = _fit_box(size, dims)
    scale = np.array([new_w / size[0], new_h / size[1]])
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5 - np.array([left, top])


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float32 ``[3, H, W]`` in [-1, 1] (the same arithmetic as ``firered_core.images.to_tensor``)."""
    unit = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0  # [H, W, 3]
    return 2.0 * torch.from_numpy(unit.transpose(2, 0, 1).copy()) - 1.0


def text_language(record: EditRecord, text: str) -> str:
    """Which instruction of ``record`` a chosen ``text`` is: "en", "cn", or "null" for a dropped text."""
    if not text:
        return "null"
    if text == record.instruction:
        return "en"
    if text == record.instruction_cn:
        return "cn"
    raise ValueError(f"sample {record.id!r}: {text!r} is neither its English nor its Chinese instruction")


@dataclass(frozen=True)
class PixelSample:
    """One sample at its bucket sizes, after SIA: what the VAE and the condition encoder consume."""

    index: int  # position in the record list the sampler was built on
    id: str
    target: torch.Tensor  # [3, H, W] in [-1, 1]
    sources: tuple[torch.Tensor, ...]  # each [3, h_k, w_k], in the (SIA) order the model sees them
    source_images: tuple[Image.Image, ...]  # the same sources as PIL images, for the condition encoder
    instruction: str  # aligned instruction; "" means text drop (the null condition)
    language: str  # "en", "cn" or "null": which instruction was chosen (before alignment)


@dataclass(frozen=True)
class PixelBatch:
    """One rank's samples of one step, stacked slot by slot (``target`` empty when every sample was bad)."""

    plan: BatchPlan
    source_plan: SourcePlan
    samples: tuple[PixelSample, ...]
    target: torch.Tensor  # [B, 3, H, W]
    sources: tuple[torch.Tensor, ...]  # each [B, 3, h_k, w_k]

    @property
    def size(self) -> int:
        return len(self.samples)

    @property
    def source_dims(self) -> tuple[Dims, ...]:
        """Planned sizes of the sources the model sees, after SIA (also valid for an empty batch)."""
        return tuple(self.source_plan.apply(self.plan.dims.sources))


def load_pixel_sample(record: EditRecord, index: int, plan: BatchPlan, source_plan: SourcePlan,
                      sia: SIAConfig) -> PixelSample:
    """Decode and fit one sample to ``plan``'s sizes and apply SIA; raises ``BadSampleError``."""
    if len(record.sources) != len(plan.dims.sources):
        raise ValueError(f"sample {record.id!r} has {len(record.sources)} sources but its bucket "
                         f"{plan.key.as_tuple()} has {len(plan.dims.sources)} slots")
    sources, target = record.open_images()
    fitted = [fit_image(img, dims) for img, dims in zip(sources, plan.dims.sources)]
    text = choose_instruction(record, sia, plan.bucket_epoch)
    language = text_language(record, text)
    kept, aligned = align(fitted, text, source_plan)
    return PixelSample(index=index, id=record.id, target=image_to_tensor(fit_image(target, plan.dims.target)),
                       sources=tuple(image_to_tensor(im) for im in kept), source_images=tuple(kept),
                       instruction=aligned, language=language)


def _stack(tensors: Sequence[torch.Tensor], dims: Dims) -> torch.Tensor:
    if not tensors:
        return torch.empty(0, 3, dims.height, dims.width)
    return torch.stack(list(tensors))


def load_pixel_batch(records: Sequence[EditRecord], plan: BatchPlan, sia: SIAConfig,
                     skips: SkipLog | None = None) -> PixelBatch:
    """Every sample of ``plan`` for this rank, SIA applied; bad ones are counted in ``skips`` and left out."""
    source_plan = plan_sources(len(plan.dims.sources), sia, plan.step)
    samples = []
    for index in plan.indices:
        try:
            samples.append(load_pixel_sample(records[index], index, plan, source_plan, sia))
        except BadSampleError as exc:
            (skips if skips is not None else SkipLog()).add(exc)
    return stack_pixel_batch(plan, source_plan, samples)


def stack_pixel_batch(plan: BatchPlan, source_plan: SourcePlan, samples: Sequence[PixelSample]) -> PixelBatch:
    """The loaded ``samples`` of ``plan`` stacked slot by slot (fewer than planned when some were bad)."""
    source_dims = source_plan.apply(plan.dims.sources)
    target = _stack([s.target for s in samples], plan.dims.target)
    sources = tuple(_stack([s.sources[k] for s in samples], d) for k, d in enumerate(source_dims))
    if len(samples) < len(plan.indices):
        log.warning("step %d: %d of %d samples of this rank were bad and left out", plan.step,
                    len(plan.indices) - len(samples), len(plan.indices))
    return PixelBatch(plan=plan, source_plan=source_plan, samples=tuple(samples), target=target, sources=sources)
