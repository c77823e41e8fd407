"""Keep what an edit did not touch: Picture 1's own pixels outside the area the edit changed.

A latent edit model re-draws the whole image, so even the parts it was told to leave alone come back through the
VAE - slightly blurred, a little off in colour - and a long chain of edits drifts. ``keep_unedited`` undoes
that for local edits, with no mask from the user:

1. **Where did the edit happen?** Compare the result's final latents with Picture 1's latents at the same size:
   a latent pixel whose mean absolute difference over the channels exceeds ``latent_threshold`` (in normalised
   latent units) counts as edited. The model copies unchanged areas almost exactly in latent space, so this
   separates the edit from the VAE's round-trip error, which only shows after decoding.
2. **Whole-image edits are left alone.** When more than ``max_edited_fraction`` of the latent pixels changed (a
   new background, brightness, a mirror, a style), the result is returned as it is.
3. **Blend.** The edited area is grown by ``dilate`` latent pixels (the decoder spreads an edit over its
   neighbours), scaled to pixels, softened by a box blur of ``feather`` pixels, and the output is
   ``mask * result + (1 - mask) * Picture 1``. More than ``feather // 2`` pixels outside the grown area the
   output is Picture 1 exactly.

It needs Picture 1 at the output's aspect (the usual single-image edit; Picture 1 is resized to the output's size
and encoded again); with no reference or another aspect the result is returned unchanged. Off by default in
``FireRedEditPipeline`` (the release's pipeline has no such step, and the parity tests compare against it); a
model folder turns it on in its ``defaults.json`` (``"keep_unedited": true``, as the embedded default does).

Public API: ``PreserveConfig``, ``edited_mask``, ``blend_unedited``, ``keep_unedited`` (the whole step, used by the
pipeline and by the benchmark's ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from kornia.filters import box_blur
from kornia.morphology import dilation

__all__ = ["PreserveConfig", "edited_mask", "blend_unedited", "keep_unedited"]


@dataclass(frozen=True)
class PreserveConfig:
    """How the edited area is found and blended (see the module docstring)."""

    latent_threshold: float = 0.15  # mean |result - Picture 1| over latent channels that marks an edited latent px
    max_edited_fraction: float = 0.5  # above this share of edited latent pixels: a whole-image edit, no blend
    dilate: int = 1  # latent pixels added around the edited area
    feather: int = 3  # box-blur width (pixels) of the mask's edge; 1 = hard edge

    def __post_init__(self) -> None:
        if not self.latent_threshold > 0:
            raise ValueError(f"latent_threshold must be > 0, got {self.latent_threshold!r}")
        if not 0 < self.max_edited_fraction <= 1:
            raise ValueError(f"max_edited_fraction must be in (0, 1], got {self.max_edited_fraction!r}")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (self.dilate, self.feather)):
            raise ValueError(f"dilate and feather must be integers, got {self.dilate!r} and {self.feather!r}")
        if self.dilate < 0 or self.feather < 1:
            raise ValueError(f"dilate must be >= 0 and feather >= 1, got {self.dilate} and {self.feather}")


def edited_mask(result_latents: torch.Tensor, source_latents: torch.Tensor,
                config: PreserveConfig = PreserveConfig()) -> torch.Tensor | None:
    """``[1, 1, h, w]`` float mask (1 = edited, dilated) over the latent grid, or None for a whole-image edit.

    Both latents are ``[1, C, h, w]`` (or ``[1, C, 1, h, w]``), normalised, of the same shape."""
    result, source = _as_4d(result_latents), _as_4d(source_latents)
    if result.shape != source.shape:
        raise ValueError(f"result and source latents differ in shape: {tuple(result.shape)} vs "
                         f"{tuple(source.shape)}")
    diff = (result.float() - source.float()).abs().mean(dim=1, keepdim=True)
    edited = (diff > config.latent_threshold).float()
    if edited.mean().item() > config.max_edited_fraction:
        return None
    if config.dilate:
        square = torch.ones(2 * config.dilate + 1, 2 * config.dilate + 1, device=edited.device)
        edited = dilation(edited, square)  # geodesic border: nothing grows in from outside the grid
    return edited


def blend_unedited(result_pixels: torch.Tensor, source_pixels: torch.Tensor, mask: torch.Tensor,
                   feather: int = PreserveConfig.feather) -> torch.Tensor:
    """``mask * result + (1 - mask) * source`` with the latent-grid ``mask`` scaled to the pixels and feathered.

    Pixels are ``[1, 3, H, W]`` (any range, same for both); ``H`` and ``W`` are whole multiples of the mask's."""
    if result_pixels.shape != source_pixels.shape:
        raise ValueError(f"result and source pixels differ in shape: {tuple(result_pixels.shape)} vs "
                         f"{tuple(source_pixels.shape)}")
    height, width = result_pixels.shape[-2:]
    if height % mask.shape[-2] or width % mask.shape[-1]:
        raise ValueError(f"a {height}x{width} image is not a whole multiple of the {mask.shape[-2]}x"
                         f"{mask.shape[-1]} mask")
    weight = F.interpolate(mask.float(), size=(height, width), mode="nearest")
    if feather > 1:
        # one 2-D pass, not kornia's two 1-D passes: at the default feather 3 it gives a 0/1 mask exactly the
        # 0, 1/9, ..., 1 of an average, so the edit's core keeps the model's pixels bit for bit (tested)
        weight = box_blur(weight, feather, border_type="replicate", separable=False)
    weight = weight.to(result_pixels.dtype)
    return weight * result_pixels + (1 - weight) * source_pixels.to(result_pixels.dtype)


def keep_unedited(vae: Any, decoded: torch.Tensor, latents: torch.Tensor, source_pixels: torch.Tensor,
                  config: PreserveConfig, source_latents: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """The step on one result: (``decoded`` with the source outside the edited area, True), or (``decoded``, False)
    for a whole-image edit.

    ``decoded`` and ``source_pixels`` are ``[1, 3, H, W]`` at the same size, ``latents`` the result's normalised
    latents that ``vae`` decoded. ``source_latents``: the source already encoded at this size (the pipeline's
    reference latents), else ``vae`` encodes ``source_pixels``."""
    source_pixels = source_pixels.to(decoded.device, decoded.dtype)
    if source_latents is None or _as_4d(source_latents).shape != _as_4d(latents).shape:
        source_latents = vae.encode(source_pixels)
    mask = edited_mask(latents, source_latents, config)
    if mask is None:
        return decoded, False
    return blend_unedited(decoded, source_pixels, mask.to(decoded.device), config.feather), True


def _as_4d(latents: torch.Tensor) -> torch.Tensor:
    if latents.ndim == 5:  # [B, C, T, h, w] with one frame (the Qwen-Image VAE's layout)
        if latents.shape[2] != 1:
            raise ValueError(f"expected one latent frame, got {latents.shape[2]}")
        latents = latents[:, :, 0]
    if latents.ndim != 4 or latents.shape[0] != 1:
        raise ValueError(f"expected latents of shape [1, C, h, w], got {tuple(latents.shape)}")
    return latents
