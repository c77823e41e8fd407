"""``CompactVAE``: a small convolutional VAE with the Qwen-Image VAE's interface, for models built from scratch.

The embedded default (``firered_core.default``) is trained from nothing on a CPU. The Qwen-Image VAE
architecture (``vae.FireRedVAE``) at that scale trains too slowly for that budget (measured: 17.5 dB held-out
reconstruction PSNR after 300 steps, 75 s, where this network reaches 23.7 dB after 300 steps in 7 s), so the
default uses this plain one: ``levels`` stride-2 3x3 convolutions each followed by a residual block (no
normalisation layers, no attention), a ``z_dim``-channel latent, and a decoder of nearest-neighbour upsampling
and 3x3 convolutions around a residual block at the latent resolution.

It behaves like ``FireRedVAE`` everywhere the project touches a VAE: ``encode`` / ``decode`` take and give the
project's normalised latents (``(mu - latents_mean) / latents_std``), ``encode_raw`` / ``decode_raw`` skip the
normalisation, ``decode`` clamps to [-1, 1], ``spatial_compression`` and ``z_dim`` describe the latent, and
``config.to_dict()`` is the ``vae/config.json`` of a diffusers-layout folder (``_class_name``
``FireRedCompactVAE``), which ``loading`` reads back. Tiling options are accepted and ignored (the images it is
made for are small).

Public API: ``CompactVAE``, ``create_vae``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import CompactVAEConfig, VAEConfig
from .latent_norm import WholeImageVAE

__all__ = ["CompactVAE", "create_vae"]


class _Residual(nn.Module):
    def __init__(self, dim: int, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, device=device, dtype=dtype)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def _widths(config: CompactVAEConfig) -> list[int]:
    """Channels at each resolution, full resolution first (doubling per stage, at most 2x ``base_dim``)."""
    return [config.base_dim * min(2 ** i, 2) for i in range(config.levels + 1)]


class _Encoder(nn.Module):
    def __init__(self, config: CompactVAEConfig, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        w = _widths(config)
        self.conv_in = nn.Conv2d(config.input_channels, w[0], 3, padding=1, device=device, dtype=dtype)
        self.downs = nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 3, stride=2, padding=1, device=device, dtype=dtype)
                                   for i in range(config.levels))
        self.blocks = nn.ModuleList(_Residual(w[i + 1], device, dtype) for i in range(config.levels))
        self.conv_out = nn.Conv2d(w[-1], config.z_dim, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(x))
        for down, block in zip(self.downs, self.blocks):
            h = block(down(h))
        return self.conv_out(F.silu(h))


class _Decoder(nn.Module):
    def __init__(self, config: CompactVAEConfig, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        w = _widths(config)[::-1]  # coarsest first
        self.conv_in = nn.Conv2d(config.z_dim, w[0], 3, padding=1, device=device, dtype=dtype)
        self.mid = _Residual(w[0], device, dtype)
        self.ups = nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 3, padding=1, device=device, dtype=dtype)
                                 for i in range(config.levels))
        self.conv_out = nn.Conv2d(w[-1], config.input_channels, 3, padding=1, device=device, dtype=dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for up in self.ups:
            h = F.silu(up(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        return self.conv_out(h)


class CompactVAE(WholeImageVAE, nn.Module):
    """A small deterministic convolutional autoencoder behind the ``FireRedVAE`` interface."""

    def __init__(self, config: CompactVAEConfig, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, ops: Any = None) -> None:
        super().__init__()
        if not isinstance(config, CompactVAEConfig):
            raise TypeError(f"CompactVAE needs a CompactVAEConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = _Encoder(config, device, dtype)
        self.decoder = _Decoder(config, device, dtype)

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> latents [B, z_dim, H/f, W/f], not normalised."""
        self._check_images(images)
        return self.encoder(images)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents -> unclamped images (the training path)."""
        return self.decoder(z)

    def _check_images(self, images: torch.Tensor) -> None:
        f = self.spatial_compression
        if images.ndim != 4 or images.shape[1] != self.config.input_channels:
            raise ValueError(f"CompactVAE.encode: expected images [B, {self.config.input_channels}, H, W], got "
                             f"{tuple(images.shape)}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"CompactVAE.encode: H and W must be multiples of {f}, got {tuple(images.shape[-2:])}")


def create_vae(config: VAEConfig | CompactVAEConfig, *, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> nn.Module:
    """The VAE module a config describes: ``FireRedVAE`` (Qwen-Image) or ``CompactVAE``."""
    if isinstance(config, CompactVAEConfig):
        return CompactVAE(config, device=device, dtype=dtype)
    from .vae import FireRedVAE

    return FireRedVAE(config, device=device, dtype=dtype)
