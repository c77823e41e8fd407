"""``PixelVAE``: a lossless space-to-depth autoencoder with the Qwen-Image VAE's interface.

Each ``factor`` x ``factor`` block of pixels becomes one latent position whose ``input_channels * factor**2``
channels are those pixels' values (``torch.nn.functional.pixel_unshuffle``); decoding puts them back
(``pixel_shuffle``). Nothing is learnt except the per-channel normalisation statistics in the config, so a
round trip returns the image exactly (up to float rounding and the [-1, 1] clamp): the transformer works in
pixel space, as in the feasibility model of the embedded default's issue, and every detail an edit needs
(glyphs, thin outlines, flat colours) survives the autoencoder. It serves small models trained from scratch
(the embedded default): at 4x and 3 colour channels the latent has 48 channels and as many values as the image.

Like ``CompactVAE``, it behaves as ``FireRedVAE`` everywhere the project touches a VAE: ``encode`` / ``decode``
take and give normalised latents, ``encode_raw`` / ``decode_raw`` skip the normalisation, ``decode`` clamps to
[-1, 1], and ``config.to_dict()`` is the ``vae/config.json`` (``_class_name`` ``FireRedPixelVAE``) that
``loading`` reads back. It has no weights: its safetensors file holds no tensors. Tiling options are accepted
and ignored.

Public API: ``PixelVAE``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import PixelVAEConfig
from .latent_norm import WholeImageVAE

__all__ = ["PixelVAE"]


class PixelVAE(WholeImageVAE, nn.Module):
    """Space-to-depth encoder and depth-to-space decoder behind the ``FireRedVAE`` interface."""

    def __init__(self, config: PixelVAEConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, ops: Any = None) -> None:
        super().__init__()
        if not isinstance(config, PixelVAEConfig):
            raise TypeError(f"PixelVAE needs a PixelVAEConfig, got {type(config).__name__}")
        self.config = config

    @property
    def spatial_compression(self) -> int:
        return self.config.factor

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> latents [B, C*f*f, H/f, W/f], not normalised."""
        f = self.config.factor
        if images.ndim != 4 or images.shape[1] != self.config.input_channels:
            raise ValueError(f"PixelVAE.encode: expected images [B, {self.config.input_channels}, H, W], got "
                             f"{tuple(images.shape)}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"PixelVAE.encode: H and W must be multiples of {f}, got {tuple(images.shape[-2:])}")
        return F.pixel_unshuffle(images, f)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> unclamped images."""
        return F.pixel_shuffle(z, self.config.factor)
