"""``VAETrainer``: train a model's VAE from scratch as an autoencoder (``TrainConfig.target: vae``).

FireRed reuses a pretrained VAE; the embedded default is built from nothing, so its recipe starts here. Every
image of the data (sources and targets) is a training image. Step ``s`` draws its images, crop offsets and flips
from a generator seeded by ``(seed, s)`` alone, so a resumed run sees exactly the batches the uninterrupted run
would have seen, and checkpoints need no data position. The loss is ``l1 * |x' - x| + mse * (x' - x)^2 +
latent_l2 * mu^2`` on the posterior mean ``mu`` (``vae_section``). Images that cannot be decoded are skipped,
counted and replaced by the next image, so a broken file never stops the run.

At the end the per-channel mean and standard deviation of the latents over ``vae.stats_images`` images are
written into the VAE's config (``latents_mean`` / ``latents_std``, the normalisation every FireRed latent goes
through) and the VAE is exported as ``<output_dir>/export/vae/`` (diffusers layout), which ``model.vae_weights``
of a transformer run reads. ``vae_report.json`` beside it records the held-back reconstruction PSNR.

Public API: ``VAETrainer``, ``VAETrainResult``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import kornia
import torch

from firered_core.config import get_preset
from firered_core.loading import save_component_folder
from firered_core.compact_vae import create_vae

from ..state.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from ..config import ConfigError, TrainConfig
from ..data.record import BadSampleError, ImageRef
from ..data.skips import SkipLog
from ..model.components import load_trained_vae
from .optim import build_lr_schedule, build_optimizer
from ..data.pixels import image_to_tensor
from ..data.records import read_records

log = logging.getLogger(__name__)

__all__ = ["VAETrainer", "VAETrainResult"]

_DECODER_PARTS = ("decoder.", "post_quant_conv.")  # CompactVAE and the Qwen-Image VAE: what decodes latents
_MAX_REPLACEMENTS = 100  # consecutive undecodable images before the run gives up (the data is broken, not a file)


@dataclass
class VAETrainResult:
    steps: int
    final_loss: float
    val_psnr: float | None
    exported: list[Path]


def _distinct_images(cfg: TrainConfig, skips: SkipLog) -> list[ImageRef]:
    records = read_records(cfg.data.reader, cfg.data.path, skips=skips)
    seen: dict[str, ImageRef] = {}
    for record in records:
        for ref in (*record.sources, record.target):
            seen.setdefault(ref.name, ref)
    images = [seen[name] for name in sorted(seen)]
    if not images:
        raise ValueError(f"data.path {cfg.data.path!r}: no readable images to train a VAE on")
    return images


# identical images: the float32 PSNR of an MSE of 1e-10 (148.13 dB) rather than inf, so a mean stays finite
_IDENTICAL_DB = float(10 * torch.log10(255.0 ** 2 / torch.tensor(1e-10)))


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], measured on 8-bit levels as they would be saved."""
    to_levels = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    # one image at a time: kornia pools a batch into a single MSE
    db = torch.stack([kornia.metrics.psnr(x, y, 255.0) for x, y in zip(to_levels(a), to_levels(b))])
    return db.clamp_max(_IDENTICAL_DB)  # a non-zero MSE of 8-bit levels is at least 1 / pixels: far below the cap


class VAETrainer:
    """One VAE run; ``run()`` trains (or resumes) to ``schedule.max_steps`` and exports."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.target != "vae":
            raise ValueError(f"VAETrainer needs target: vae, got {cfg.target!r}")
        self.cfg = cfg
        self.vcfg = cfg.vae
        self.out = Path(cfg.output_dir)
        self.skips = SkipLog()
        images = _distinct_images(cfg, self.skips)
        gen = torch.Generator().manual_seed(cfg.seed)
        order = torch.randperm(len(images), generator=gen).tolist()
        n_val = min(self.vcfg.val_images, len(images) // 10)
        self.val_images = [images[i] for i in order[:n_val]]
        self.train_images = [images[i] for i in order[n_val:]]
        self.vae = self._initial_vae()
        self.vae.train()
        self.trainable = self._trainable()
        self.optimizer = build_optimizer(self.trainable, cfg.optim, torch.device("cpu"))
        self.lr_schedule = build_lr_schedule(self.optimizer, cfg.optim, cfg.schedule.max_steps)
        log.info("VAE run: %d training and %d held-back images, %.2fM parameters, %dx compression",
                 len(self.train_images), len(self.val_images), sum(p.numel() for p in self.vae.parameters()) / 1e6,
                 self.vae.spatial_compression)

    def _initial_vae(self) -> torch.nn.Module:
        """The preset's VAE, seeded, or the one in ``model.vae_weights`` (a VAE run's export) to continue from."""
        if self.cfg.model.vae_weights is None:
            if self.vcfg.train_parts != "all":
                raise ConfigError(f"vae.train_parts: {self.vcfg.train_parts} needs model.vae_weights (the VAE whose "
                                  "encoder stays frozen); a random encoder would never learn")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                return create_vae(get_preset(self.cfg.model.preset).vae)
        vae = load_trained_vae(self.cfg.model.vae_weights)
        log.info("VAE run starts from %s", self.cfg.model.vae_weights)
        return vae

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The parameters ``vae.train_parts`` names; the rest are frozen (and kept out of the optimizer)."""
        if self.vcfg.train_parts == "all":
            return list(self.vae.parameters())
        params = []
        for name, p in self.vae.named_parameters():
            p.requires_grad_(name.startswith(_DECODER_PARTS))
            if p.requires_grad:
                params.append(p)
        if not params:
            raise ConfigError(f"vae.train_parts: decoder: {type(self.vae).__name__} has no parameters under "
                              f"{', '.join(_DECODER_PARTS)}")
        return params

    @property
    def frozen_encoder(self) -> bool:
        return self.vcfg.train_parts == "decoder"

    # -- data ----------------------------------------------------------------------------------------------------

    def _open(self, index: int) -> torch.Tensor:
        """Training image ``index`` (or the next decodable one) as [3, H, W] in [-1, 1]."""
        for attempt in range(_MAX_REPLACEMENTS):
            ref = self.train_images[(index + attempt) % len(self.train_images)]
            try:
                return image_to_tensor(ref.open(ref.name))
            except BadSampleError as exc:
                self.skips.add(exc)
        raise RuntimeError(f"{_MAX_REPLACEMENTS} images in a row could not be decoded; check data.path")

    def batch(self, step: int) -> torch.Tensor:
        """The images of step ``step``: a function of (seed, step) only, so resumed runs see the same batches."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        picks = torch.randint(len(self.train_images), (self.vcfg.batch_size,), generator=gen).tolist()
        crop, out = self.vcfg.crop, []
        for index in picks:
            x = self._open(index)
            if crop:
                h, w = x.shape[-2:]
                if h < crop or w < crop:
                    raise ValueError(f"vae.crop {crop} exceeds an image of {w}x{h}; lower vae.crop")
                top = int(torch.randint(h - crop + 1, (1,), generator=gen))
                left = int(torch.randint(w - crop + 1, (1,), generator=gen))
                x = x[:, top:top + crop, left:left + crop]
            if self.vcfg.flip and bool(torch.rand((), generator=gen) < 0.5):
                x = x.flip(-1)
            out.append(x)
        if len({tuple(x.shape) for x in out}) > 1:
            raise ValueError("vae.crop is 0 but the images differ in size; set vae.crop to train on crops")
        return torch.stack(out)

    # -- steps ---------------------------------------------------------------------------------------------------

    def _reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen_encoder:
            with torch.no_grad():
                mu = self.vae.encode_raw(x)
            return self.vae._decode_tile(mu), mu
        mu = self.vae.encode_raw(x)
        return self.vae._decode_tile(mu), mu  # unclamped, so the loss has a gradient everywhere

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        rec, mu = self._reconstruct(x)
        err = rec - x
        v = self.vcfg
        return v.l1_weight * err.abs().mean() + v.mse_weight * err.pow(2).mean() + v.latent_l2 * mu.pow(2).mean()

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean reconstruction PSNR (dB) of the held-back images, or None when there are none."""
        if not self.val_images:
            return None
        self.vae.eval()
        scores = []
        for ref in self.val_images:
            x = image_to_tensor(ref.open())[None]
            scores.append(float(psnr_db(self.vae.decode_raw(self.vae.encode_raw(x)), x)[0]))
        self.vae.train()
        return sum(scores) / len(scores)

    def _save(self, step: int, loss: float) -> None:
        save_checkpoint(self.cfg.checkpoint_dir, step, model_state=self.vae.state_dict(), optimizer=self.optimizer,
                        lr_scheduler=self.lr_schedule, rng_states=None,
                        extra={"loss": loss, "skipped": self.skips.total}, keep_last=self.cfg.checkpoint.keep_last)

    def _resume(self) -> int:
        resume = self.cfg.checkpoint.resume
        if resume is None:
            return 0
        path = latest_checkpoint(self.cfg.checkpoint_dir) if resume == "latest" else resolve_checkpoint(resume)
        if path is None:
            log.info("no checkpoint in %s yet: starting a fresh VAE run", self.cfg.checkpoint_dir)
            return 0
        ckpt = load_checkpoint(path, model=self.vae, optimizer=self.optimizer, lr_scheduler=self.lr_schedule,
                               restore_rng=False)
        return ckpt.step

    def run(self) -> VAETrainResult:
        cfg, max_steps = self.cfg, self.cfg.schedule.max_steps
        step = self._resume()
        loss_value, started, every = math.nan, time.monotonic(), cfg.logging.every_steps
        first = step
        while step < max_steps:
            loss = self.loss(self.batch(step))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.trainable, cfg.optim.grad_clip)
            self.optimizer.step()
            self.lr_schedule.step()
            step += 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"VAE loss is {loss_value} at step {step}; lower optim.lr")
            if step % every == 0 or step == max_steps:
                rate = (time.monotonic() - started) / (step - first)
                log.info("vae step %d/%d loss %.5f (%.2f s/step, ETA %.0f min)", step, max_steps, loss_value, rate,
                         rate * (max_steps - step) / 60)
            if step % cfg.checkpoint.every_steps == 0 and step < max_steps:
                self._save(step, loss_value)
                log.info("vae step %d: held-back PSNR %.2f dB", step, self.validate() or math.nan)
        self._save(step, loss_value)
        val = self.validate()
        exported = self.export(val)
        return VAETrainResult(steps=step, final_loss=loss_value, val_psnr=val, exported=exported)

    # -- export --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def latent_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the raw latents over the first ``vae.stats_images`` training images."""
        self.vae.eval()
        n = min(self.vcfg.stats_images, len(self.train_images))
        lat = torch.cat([self.vae.encode_raw(self._open(i)[None]).flatten(2) for i in range(n)], dim=2)[0]
        mean, std = lat.mean(dim=1), lat.std(dim=1).clamp_min(1e-4)
        return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)

    def export(self, val_psnr: float | None) -> list[Path]:
        if self.frozen_encoder:  # the latents did not change: keep the statistics they were normalised with
            mean, std = tuple(self.vae.config.latents_mean), tuple(self.vae.config.latents_std)
        else:
            mean, std = self.latent_stats()
        self.vae.config = dataclasses.replace(self.vae.config, latents_mean=mean, latents_std=std)
        folder = save_component_folder(self.vae, self.out / "export" / "vae", overwrite=True)
        report = {"steps": self.cfg.schedule.max_steps, "val_psnr_db": val_psnr, "val_images": len(self.val_images),
                  "latents_mean": mean, "latents_std": std, "skipped": self.skips.total}
        tmp = self.out / "export" / ".vae_report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.out / "export" / "vae_report.json")
        log.info("exported the VAE to %s (held-back PSNR %s dB)", folder,
                 "n/a" if val_psnr is None else f"{val_psnr:.2f}")
        return [folder]
