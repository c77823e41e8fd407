"""Keep a region of the source (a face) in an edited image by blending in latent space, then decoding once.

    z_out = m * z_source + (1 - m) * z_edit          m = the pixel mask averaged down to the latent grid

``z_edit`` are the pipeline's final (normalised) latents of the edit (``EditResult.latents``), ``z_source`` the
source resized to the edit's size and VAE-encoded the way the pipeline encodes references (``encode_source``,
once for any number of candidates). Blending latents rather than pixels lets the
VAE decoder render the seam: a feathered mask gives a transition without the halo of a pixel paste. It runs after
sampling, so the edit cannot drift into the kept region, while lighting changes of the edit stay outside it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..images import ensure_rgb, to_pil, to_tensor
from ..placement import compute_dtype, module_device

__all__ = ["blend_latents", "encode_source", "keep_region"]


def blend_latents(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * source + (1 - mask) * edited`` for latents [B, C, h, w] and a pixel mask [H, W] in [0, 1]."""
    if edited.shape != source.shape:
        raise ValueError(f"latents differ in shape: edited {tuple(edited.shape)}, source {tuple(source.shape)}")
    m = mask.to(edited.device, torch.float32)[None, None]  # [1, 1, H, W]
    m = F.interpolate(m, size=edited.shape[-2:], mode="area").to(edited.dtype)  # [1, 1, h, w]
    return m * source + (1 - m) * edited


def encode_source(vae: torch.nn.Module, source: Image.Image, width: int, height: int) -> torch.Tensor:
    """``source`` resized to ``width`` x ``height`` and VAE-encoded like a pipeline reference: [1, C, h, w]."""
    device = module_device(vae)
    with torch.inference_mode():
        pixels = to_tensor(ensure_rgb(source, name="source image"), width, height).to(device, compute_dtype(vae))
        return vae.encode(pixels)  # [1, C, height/f, width/f], normalised


def keep_region(vae: torch.nn.Module, edited_latents: torch.Tensor, source_latents: torch.Tensor,
                mask: np.ndarray) -> Image.Image:
    """Decode ``edited_latents`` [1, C, h, w] with the ``mask`` [H, W] region taken from ``source_latents``.

    ``mask`` is in the edit's pixel frame (H = h * compression); ``source_latents`` from ``encode_source`` at the
    edit's size.
    """
    f = int(vae.spatial_compression)
    height, width = edited_latents.shape[-2] * f, edited_latents.shape[-1] * f
    if mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} px, the edit is {width}x{height} px")
    device, dtype = source_latents.device, source_latents.dtype
    with torch.inference_mode():
        blended = blend_latents(edited_latents.to(device, dtype), source_latents, torch.from_numpy(mask))
        return to_pil(vae.decode(blended).float().cpu())
