"""Per-channel latent normalisation shared by every VAE of the project (``vae.FireRedVAE``, ``CompactVAE``).

Outside a VAE, latents are always normalised: ``(z - latents_mean) / latents_std`` with the statistics stored in
the VAE's config. A class using the mixin provides ``config.latents_mean``, ``config.latents_std``, ``z_dim`` and
``_check_latents(z, where)``.

``WholeImageVAE`` adds, on top of it, the public encode/decode of a VAE that works on a whole image in one piece
(``CompactVAE``): the class provides ``encode_raw`` and ``_decode_tile`` (raw latents -> unclamped
images).

Public API: ``LatentNormalization``, ``WholeImageVAE``.
"""

from __future__ import annotations

import torch

from .progress import CancelFn, ProgressFn, check_cancel

__all__ = ["LatentNormalization", "WholeImageVAE"]


class LatentNormalization:
    """``normalize`` / ``denormalize`` with the reference's arithmetic (and so its rounding)."""

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std) as [1, C, 1, 1] in ``z``'s dtype and device (rounded there, as the reference)."""
        shape = (1, self.z_dim, 1, 1)  # type: ignore[attr-defined]
        mean = torch.tensor(self.config.latents_mean).view(shape).to(z.device, z.dtype)  # type: ignore[attr-defined]
        std = torch.tensor(self.config.latents_std).view(shape).to(z.device, z.dtype)  # type: ignore[attr-defined]
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior latents -> the project's normalised latents, ``(z - mean) / std``."""
        self._check_latents(z, "normalize")  # type: ignore[attr-defined]
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> raw latents for the decoder."""
        self._check_latents(z, "denormalize")  # type: ignore[attr-defined]
        mean, std = self._stats(z)
        # the reference divides by the reciprocal std rather than multiplying; keep its rounding
        return z / (1.0 / std) + mean


class WholeImageVAE(LatentNormalization):
    """``encode`` / ``decode`` / ``decode_raw`` of a VAE without tiling (tiling options are accepted and ignored)."""

    def encode(self, images: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> normalised latents (tiling options accepted and ignored)."""
        check_cancel(cancel, "VAE encode")
        out = self.normalize(self.encode_raw(images))  # type: ignore[attr-defined]
        if progress is not None:
            progress(1, 1, None)
        return out

    def decode_raw(self, z: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
                   progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Raw latents -> images clamped to [-1, 1]."""
        self._check_latents(z, "decode")
        check_cancel(cancel, "VAE decode")
        out = self._decode_tile(z).clamp(-1.0, 1.0)  # type: ignore[attr-defined]
        if progress is not None:
            progress(1, 1, None)
        return out

    def decode(self, latents: torch.Tensor, *, tile: int | None = None, tile_overlap: int = 8,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        """Normalised latents -> images clamped to [-1, 1]."""
        return self.decode_raw(self.denormalize(latents), progress=progress, cancel=cancel)

    def _check_latents(self, z: torch.Tensor, where: str) -> None:
        z_dim = self.z_dim  # type: ignore[attr-defined]
        if z.ndim != 4 or z.shape[1] != z_dim:
            raise ValueError(f"{type(self).__name__}.{where}: expected latents [B, {z_dim}, h, w], got "
                             f"{tuple(z.shape)}")
