"""The one interface every condition encoder implements, and the value it returns.

The transformer is conditioned on a sequence of embeddings plus a mask saying which positions are real. Anything
that turns an instruction and the edit's reference images into that pair can drive the pipeline::

    class MyEncoder:                      # no base class needed: ConditionEncoder is a Protocol
        dim = 512                         # width D of the embeddings = the transformer's joint_attention_dim
        def encode(self, prompts, images) -> EncodedCondition: ...
        def to(self, device=None, dtype=None) -> "MyEncoder": ...

    cond = encoder.encode(["make the sky pink"], [photo])   # cond.embeds [1, L, D], cond.mask [1, L]

Contract of ``encode(prompts, images)``:

* ``prompts``: one or more instructions; row ``i`` of the result belongs to ``prompts[i]``.
* ``images``: the edit's reference images, 0..N, *shared by every prompt* (true CFG encodes the instruction and
  the negative prompt against the same references). Callers pass the originals: the encoder does any resizing its
  model needs (Qwen2.5-VL looks at ~384x384 versions).
* Optional: an ``image_area`` keyword (pixels the images are resized to) lets callers choose that area; the
  pipeline passes it only when its ``cond_ref_area`` is set and refuses encoders without it.
* The result is right-padded to the longest row; ``mask`` is ``1`` on real positions and ``0`` on padding, dtype
  ``torch.long``. Padding positions of ``embeds`` are zero.

``check_encode_args`` validates the arguments the same way for every implementation.

Public API: ``EncodedCondition``, ``ConditionEncoder``, ``check_encode_args``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from PIL import Image

__all__ = ["EncodedCondition", "ConditionEncoder", "check_encode_args"]


@dataclass(frozen=True)
class EncodedCondition:
    """Condition embeddings ``[B, L, D]`` and their mask ``[B, L]`` (long; 1 = real token, 0 = padding)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.embeds.ndim != 3:
            raise ValueError(f"EncodedCondition.embeds must be [B, L, D], got shape {tuple(self.embeds.shape)}")
        if tuple(self.mask.shape) != tuple(self.embeds.shape[:2]):
            raise ValueError(f"EncodedCondition.mask must be [B, L] = {tuple(self.embeds.shape[:2])}, "
                             f"got shape {tuple(self.mask.shape)}")
        if self.mask.dtype != torch.long:
            raise ValueError(f"EncodedCondition.mask must be torch.long, got {self.mask.dtype}")

    @property
    def batch_size(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.embeds.shape[1])

    @property
    def lengths(self) -> list[int]:
        """Number of real tokens per row."""
        return self.mask.sum(dim=1).tolist()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "EncodedCondition":
        """Moved to ``device``; ``dtype`` applies to the embeddings only (the mask stays long)."""
        return EncodedCondition(self.embeds.to(device=device, dtype=dtype), self.mask.to(device=device))


@runtime_checkable
class ConditionEncoder(Protocol):
    """Turns instructions + shared reference images into an ``EncodedCondition`` (see the module docstring)."""

    @property
    def dim(self) -> int:
        """Width D of the embeddings; must equal the transformer's ``joint_attention_dim``."""
        ...

    def encode(self, prompts: Sequence[str], images: Sequence[Image.Image]) -> EncodedCondition:
        ...

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> "ConditionEncoder":
        ...


class FrozenModelEncoder:
    """Shared plumbing of encoders that wrap one frozen ``torch.nn.Module`` in ``self.model``.

    Subclasses set ``self.model`` and provide ``dim`` and ``encode``; placement follows the wrapped model.
    """

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        self.model.to(device=device, dtype=dtype)
        return self


def check_encode_args(prompts: Sequence[str], images: Sequence[Image.Image]) -> tuple[list[str], list[Image.Image]]:
    """``(prompts, images)`` as lists after checking their types; a bare string is refused, not split."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one instruction")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts[{bad[0]}] is a {type(prompts[bad[0]]).__name__}, not a string")
    if isinstance(images, Image.Image) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a list of PIL images (possibly empty), got {type(images).__name__}")
    bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
    if bad:
        raise TypeError(f"images[{bad[0]}] is a {type(images[bad[0]]).__name__}, not a PIL image")
    return list(prompts), list(images)
