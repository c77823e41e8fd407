"""Running a VAE half (encoder or decoder) on overlapping tiles and cross-fading the results.

A VAE's memory grows with the image area (its outer levels run at full resolution with 96-192 channels, and the
middle block attends over every latent pixel), so large images are processed in tiles. Tiles are laid out on the
LATENT grid for both directions, so encode and decode share one geometry: ``tile`` and ``overlap`` are in latent
pixels, a decode tile of ``t`` latents produces ``t * f`` pixels and an encode tile of ``t * f`` pixels produces
``t`` latents (``f`` = the VAE's spatial compression).

Along each axis, neighbouring tiles cross-fade linearly over their overlap, so the weights sum to one there (every
output value's weights are normalised anyway). Tiles are spread evenly, so the actual overlap is at least
``overlap``. One tile covering the whole input runs the network once on the whole input: exactly the untiled result.
Otherwise tiles differ from the untiled result where the network is not local - the middle block's attention sees
one tile, convolutions see zero padding at tile edges - by small, smooth amounts that the cross-fade hides.

Public API: ``run_tiled``, ``tile_spans``, ``ramp``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .progress import CancelFn, ProgressFn, check_cancel

__all__ = ["run_tiled", "tile_spans", "ramp"]


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, grid: tuple[int, int], tile: int,
              overlap: int, scale_in: int, scale_out: int, out_channels: int, what: str,
              progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
    """``fn`` on overlapping tiles of ``x`` [B, C, H, W], blended; returns [B, out_channels, h*scale_out, ...].

    ``grid`` is the latent grid (h, w); a tile covering latents ``[r0, r1)`` reads ``x`` rows ``[r0*scale_in,
    r1*scale_in)`` and writes output rows ``[r0*scale_out, r1*scale_out)``. ``what`` names the caller in errors.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"{what}: need tile >= 1 and 0 <= tile_overlap < tile, got tile={tile}, "
                         f"tile_overlap={overlap}")
    h, w = grid
    rows, cols = tile_spans(h, tile, overlap), tile_spans(w, tile, overlap)
    b, si, so = x.shape[0], scale_in, scale_out
    # accumulate in float32: half-precision sums of many weighted tiles lose the last bits visibly
    acc = torch.zeros(b, out_channels, h * so, w * so, device=x.device, dtype=torch.float32)
    weight_sum = torch.zeros(1, 1, h * so, w * so, device=x.device, dtype=torch.float32)
    total, done = len(rows) * len(cols), 0
    for r0, r1, r_lead, r_trail in rows:
        row_w = ramp((r1 - r0) * so, r_lead * so, r_trail * so, x.device)  # [tile_h_out]
        for c0, c1, c_lead, c_trail in cols:
            check_cancel(cancel, what)
            col_w = ramp((c1 - c0) * so, c_lead * so, c_trail * so, x.device)  # [tile_w_out]
            weight = row_w[:, None] * col_w[None, :]  # [tile_h_out, tile_w_out]
            out = fn(x[:, :, r0 * si:r1 * si, c0 * si:c1 * si]).float()  # [B, out_channels, tile_h_out, tile_w_out]
            acc[:, :, r0 * so:r1 * so, c0 * so:c1 * so] += out * weight
            weight_sum[:, :, r0 * so:r1 * so, c0 * so:c1 * so] += weight
            done += 1
            if progress is not None:
                progress(done, total, None)
    return (acc / weight_sum).to(x.dtype)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, end, overlap with the previous tile, overlap with the next tile) along one latent axis.

    The fewest tiles whose overlaps are all >= ``overlap``, spread evenly so the first starts at 0 and the last
    ends at ``length``.
    """
    if length <= tile:
        return [(0, length, 0, 0)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(k * (length - tile) / (count - 1)) for k in range(count)]
    spans = []
    for k, s in enumerate(starts):
        lead = starts[k - 1] + tile - s if k > 0 else 0
        trail = s + tile - starts[k + 1] if k + 1 < count else 0
        spans.append((s, s + tile, lead, trail))
    return spans


def ramp(size: int, lead: int, trail: int, device: torch.device) -> torch.Tensor:
    """Blend weights [size] of one tile along one axis: rising over the first ``lead`` positions, falling over the
    last ``trail``, 1 between.

    Neighbours share their overlap exactly, so the falling ramp of one and the rising ramp of the other sum to 1
    at every position (a linear cross-fade); position centres (``+0.5``) keep every weight above zero. Ramps are
    capped at half the tile so they never cross inside one tile.
    """
    pos = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    weight = torch.ones(size, device=device, dtype=torch.float32)
    lead, trail = min(lead, size // 2), min(trail, size // 2)
    if lead > 0:
        weight = torch.minimum(weight, pos / lead)
    if trail > 0:
        weight = torch.minimum(weight, (size - pos) / trail)
    return weight
