"""``VAETrainConfig``: the settings of a VAE training run (``TrainConfig.target: vae``).

FireRed reuses Qwen-Image's pretrained VAE; a project that trains a small model of the same family from scratch
(the embedded default) first needs a VAE of its own. A VAE run trains the ``model.preset``'s VAE as a plain
autoencoder on every image of the data (sources and targets): L1 + MSE reconstruction of the posterior mean,
with a small L2 pull on the latents instead of a KL term (sampling never happens in this project: ``encode``
returns the mode). The other sections keep their meaning: ``optim`` (lr, betas, clipping, warm-up, schedule),
``schedule.max_steps``, ``checkpoint`` (every, keep last, resume), ``logging.every_steps``, ``seed``; with
``model.vae_weights`` set the run starts from that VAE instead of the preset's random init.
"""

from __future__ import annotations

from dataclasses import dataclass

from .coerce import field_error

__all__ = ["VAETrainConfig", "TRAIN_PARTS"]

TRAIN_PARTS = ("all", "decoder")


@dataclass(frozen=True)
class VAETrainConfig:
    """Batch, crops and loss weights of a VAE run."""

    batch_size: int = 16  # images per step
    # Side of the random square crop trained on (the VAE is fully convolutional, so crops are a cheap way to see
    # more images per second); 0 trains on whole images, which must then share one size.
    crop: int = 32
    flip: bool = True  # random horizontal flips
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    latent_l2: float = 1e-4  # keeps the posterior means small (the role the KL term plays in a real VAE)
    stats_images: int = 512  # images encoded at export to compute the per-channel latents_mean / latents_std
    val_images: int = 64  # held-back images whose reconstruction PSNR is logged (and written at the end)
    # What trains: "all" (encoder and decoder), or "decoder" with the encoder frozen - for a VAE started from
    # ``model.vae_weights``: its latents stay exactly as they were, so a transformer trained on them (and a latent
    # cache made with them) stays valid while the decoder sharpens.
    train_parts: str = "all"

    def __post_init__(self) -> None:
        for name in ("batch_size", "stats_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise field_error(name, f"must be an integer >= 1, got {value!r}")
        if isinstance(self.crop, bool) or self.crop < 0:
            raise field_error("crop", f"must be 0 (whole images) or a positive side, got {self.crop!r}")
        if self.val_images < 0:
            raise field_error("val_images", f"must be >= 0, got {self.val_images!r}")
        for name in ("l1_weight", "mse_weight", "latent_l2"):
            if not getattr(self, name) >= 0:
                raise field_error(name, f"must be >= 0, got {getattr(self, name)!r}")
        if self.train_parts not in TRAIN_PARTS:
            raise field_error("train_parts", f"must be one of {', '.join(TRAIN_PARTS)}, got {self.train_parts!r}")
        if self.l1_weight == 0 and self.mse_weight == 0:
            raise field_error("l1_weight", "l1_weight and mse_weight are both 0: nothing to train")
