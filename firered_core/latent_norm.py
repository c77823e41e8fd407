"""Per-channel latent normalisation shared by every VAE of the project (``vae.FireRedVAE``, ``CompactVAE``).

Outside a VAE, latents are always normalised: ``(z - latents_mean) / latents_std`` with the statistics stored in
the VAE's config. A class using the mixin provides ``config.latents_mean``, ``config.latents_std``, ``z_dim`` and
``_check_latents(z, where)``.

Public API: ``LatentNormalization``.
"""

from __future__ import annotations

import torch

__all__ = ["LatentNormalization"]


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
