"""Decode only the face regions of a latent, with gradient, so the consistency loss's memory stays bounded.

A full differentiable VAE decode of a 1 MP image keeps every activation of the upsampling stack for backward. The
decoder's only global operation is the middle block's attention, which runs at latent resolution where it is cheap;
everything after it (up blocks, norm, output conv) is local. So ``decode_regions``:

1. runs ``post_quant_conv -> conv_in -> mid_block`` on the whole latent (``[B, C_mid, h, w]``, small);
2. for each sample's box, cuts those features to the box's latent tiles plus ``margin`` latent pixels on every side
   (clipped to the latent), runs the up blocks on the cut only, and crops the box back out of its output.

With ``margin`` at least the up path's receptive radius (``receptive_margin``) every output pixel of the box sees
exactly the inputs it sees in a full decode (the cut's zero padding lies outside the radius, or coincides with the
image's own zero padding at the image border), so the crop equals the full decode's crop up to float rounding;
tests/train/test_train_consistency.py checks it. Memory is that of decoding a ``box + 2 * margin`` image.

Public API: ``RegionCrop``, ``decode_regions``, ``receptive_margin``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from firered_core.vae import FireRedVAE
from firered_core.vae_blocks import causal_conv

__all__ = ["RegionCrop", "decode_regions", "receptive_margin"]

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in image pixels, x1/y1 exclusive


@dataclass(frozen=True)
class RegionCrop:
    """One sample's decoded region: the box snapped out to whole latent tiles, and its pixels."""

    box: Box  # (x0, y0, x1, y1) image pixels, multiples of the VAE's spatial compression
    pixels: torch.Tensor  # [C, y1 - y0, x1 - x0] in [-1, 1], differentiable w.r.t. the latents

    @property
    def origin(self) -> tuple[int, int]:
        """(x, y) of the crop's top-left pixel in the image: what ``shift_alignment`` needs."""
        return self.box[0], self.box[1]


def receptive_margin(vae: FireRedVAE) -> int:
    """Latent pixels of context the up path needs around a tile: each 3x3 conv at upsampled level ``l`` reaches
    ``2^-l`` latent pixels, and each nearest upsampling adds at most half a pixel of its input level."""
    config = vae.config
    levels = len(config.dim_mult)
    radius = 0.0
    for level in range(levels):
        radius += 2 * (config.num_res_blocks + 1) / 2**level  # two 3x3 convs per residual block
        if level != levels - 1:
            radius += (0.5 + 0.5) / 2**level  # nearest upsampling, then the resample's 3x3 conv one level up
    radius += 1 / 2 ** (levels - 1)  # conv_out
    return math.ceil(radius)


def _latent_span(lo: int, hi: int, f: int, size: int, margin: int) -> tuple[int, int, int, int]:
    """(tile start, tile end, cut start, cut end) in latent pixels for the pixel span [lo, hi)."""
    start, end = lo // f, -(-hi // f)
    if not 0 <= start < end <= size:
        raise ValueError(f"box span [{lo}, {hi}) lies outside the decoded image of {size * f} pixels")
    return start, end, max(0, start - margin), min(size, end + margin)


def _up_path(vae: FireRedVAE, x: torch.Tensor) -> torch.Tensor:
    """Mid-block features -> unclamped pixels (the local part of ``VAEDecoder.forward``)."""
    decoder = vae.decoder
    for block in decoder.up_blocks:
        x = block(x)
    return causal_conv(decoder.conv_out, F.silu(decoder.norm_out(x)))


def decode_regions(vae: FireRedVAE, latents: torch.Tensor, boxes: Sequence[Box | None], *,
                   margin: int | None = None) -> list[RegionCrop | None]:
    """Decode ``boxes[b]`` of normalised ``latents [B, z, h, w]`` (None: skip that sample) with gradient.

    ``margin``: latent pixels of context around each box (default ``receptive_margin(vae)``: exact).
    """
    if len(boxes) != latents.shape[0]:
        raise ValueError(f"boxes must give one box (or None) per sample: {latents.shape[0]} samples, "
                         f"{len(boxes)} boxes")
    margin = receptive_margin(vae) if margin is None else margin
    if margin < 0:
        raise ValueError(f"margin must be >= 0 latent pixels, got {margin}")
    f, (h, w) = vae.spatial_compression, latents.shape[-2:]
    wanted = [b for b, box in enumerate(boxes) if box is not None]
    out: list[RegionCrop | None] = [None] * len(boxes)
    if not wanted:
        return out
    z = vae.denormalize(latents[wanted])
    trunk = vae.decoder.mid_block(causal_conv(vae.decoder.conv_in, causal_conv(vae.post_quant_conv, z)))
    for row, b in enumerate(wanted):
        x0, y0, x1, y1 = boxes[b]
        ty0, ty1, cy0, cy1 = _latent_span(y0, y1, f, h, margin)
        tx0, tx1, cx0, cx1 = _latent_span(x0, x1, f, w, margin)
        pixels = _up_path(vae, trunk[row:row + 1, :, cy0:cy1, cx0:cx1])  # [1, C, (cy1-cy0)*f, (cx1-cx0)*f]
        top, left = (ty0 - cy0) * f, (tx0 - cx0) * f
        crop = pixels[0, :, top:top + (ty1 - ty0) * f, left:left + (tx1 - tx0) * f]
        out[b] = RegionCrop(box=(tx0 * f, ty0 * f, tx1 * f, ty1 * f), pixels=crop.clamp(-1.0, 1.0))
    return out
