"""Packing VAE latents into transformer tokens and back.

The MMDiT does not see latent pixels; it sees tokens, each the flattened ``patch x patch`` neighbourhood of a
latent image. With the released model (16 latent channels, patch 2, VAE compression 8) one token is a 64-vector
covering 16x16 image pixels.

Token order is row-major over the patch grid, and inside a token the features run channel-major:
``feature = c * patch * patch + dy * patch + dx``. That is exactly the order of diffusers'
``QwenImageEditPlusPipeline._pack_latents`` / ``_unpack_latents``, which the released weights were trained with
(``img_in`` and ``proj_out`` would see scrambled features under any other order). diffusers works on 5-D
``[B, C, 1, H, W]`` video latents; here latents are 4-D ``[B, C, H, W]`` because FireRed only handles stills.

Sizes: diffusers silently floors an image side that is not a multiple of ``compression * patch``. Here such a
size is an error, so a caller never decodes a latent of a different size than it asked for; the pipeline picks
sizes that are multiples of 32 anyway.

Public API: ``pack_latents``, ``unpack_latents``, ``token_grid``.
"""

from __future__ import annotations

import torch

__all__ = ["pack_latents", "unpack_latents", "token_grid"]


def token_grid(height_px: int, width_px: int, compression: int = 8, patch: int = 2) -> tuple[int, int]:
    """Tokens along (height, width) for an image of ``height_px x width_px`` pixels.

    Raises ``ValueError`` naming the side that is not a positive multiple of ``compression * patch``.
    """
    if compression <= 0 or patch <= 0:
        raise ValueError(f"token_grid: compression ({compression}) and patch ({patch}) must be positive")
    unit = compression * patch
    for name, size in (("height_px", height_px), ("width_px", width_px)):
        if size <= 0 or size % unit:
            raise ValueError(
                f"token_grid: {name}={size} must be a positive multiple of compression*patch = {unit} "
                f"(one token covers {unit}x{unit} pixels)"
            )
    return height_px // unit, width_px // unit


def pack_latents(z: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """``[B, C, H, W]`` latents -> ``[B, (H/patch)*(W/patch), C*patch*patch]`` tokens (diffusers' order)."""
    if z.ndim != 4:
        raise ValueError(f"pack_latents: expected latents [B, C, H, W], got shape {tuple(z.shape)}")
    b, c, h, w = z.shape
    if h % patch or w % patch:
        raise ValueError(f"pack_latents: latent height {h} and width {w} must be multiples of patch={patch}")
    gh, gw = h // patch, w // patch
    x = z.reshape(b, c, gh, patch, gw, patch)
    # [B, C, gh, py, gw, px] -> [B, gh, gw, C, py, px]: grid position outermost, channel-major inside a token
    x = x.permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch * patch)


def unpack_latents(
    tokens: torch.Tensor, height_px: int, width_px: int, compression: int = 8, patch: int = 2
) -> torch.Tensor:
    """``[B, N, C*patch*patch]`` tokens of a ``height_px x width_px`` image -> ``[B, C, H/compression, W/compression]``.

    The inverse of ``pack_latents``. The pixel size is needed because a token count alone does not fix the aspect.
    """
    if tokens.ndim != 3:
        raise ValueError(f"unpack_latents: expected tokens [B, N, D], got shape {tuple(tokens.shape)}")
    gh, gw = token_grid(height_px, width_px, compression, patch)
    b, n, d = tokens.shape
    if n != gh * gw:
        raise ValueError(
            f"unpack_latents: {n} tokens do not fit a {height_px}x{width_px} image, which has {gh}x{gw} = {gh * gw}"
        )
    if d % (patch * patch):
        raise ValueError(f"unpack_latents: token width {d} is not a multiple of patch^2 = {patch * patch}")
    c = d // (patch * patch)
    x = tokens.reshape(b, gh, gw, c, patch, patch)
    # [B, gh, gw, C, py, px] -> [B, C, gh, py, gw, px], then merge (gh, py) and (gw, px) into latent rows/cols
    x = x.permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, gh * patch, gw * patch)
