"""Validation during training: held-out loss and sample grids on fixed validation samples.

The validation samples (``data.val_path``, or the first training samples when there is none) are encoded once at
the start (or read from the cache) into one-sample ``TrainBatch`` values at their bucket sizes.

* Held-out loss (``sample_losses``, one number per sample; the run's held-out loss is their mean): every sample at
  a fixed set of noise levels (``HELDOUT_LEVELS``) with noise seeded per (sample, level), and no outlier mask: the
  same numbers every time for the same weights, so the curve shows learning, not sampling noise. Computed in the
  training precision, without gradients. ``loss_by_task`` groups the samples' losses by their task labels, so a
  run on a task mix shows which tasks learn (one task that stays far above the rest dominates the mean).
* Sample grids (``sample_images``): Euler sampling (``firered_core.sampler``) from seeded noise with the
  inference schedule (``flow_sigmas`` for the target's token count), true CFG with the null condition as the
  negative when ``logging.val_cfg > 1`` (the condition the model learns through text drop), then VAE decoding.
  Rows are source(s) | result | target with the instruction as caption (``observe.sample_grid``).

Both run on the unwrapped model in eval mode on the main process; the weights are restored to training mode
afterwards. Nothing here touches a global RNG, so validation cannot change the training trajectory.

Public API: ``HELDOUT_LEVELS``, ``ValSample``, ``sample_losses``, ``loss_by_task``, ``sample_images``, ``evaluating``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, ContextManager, Iterator, Sequence

import torch
from PIL import Image
from torch import nn

from firered_core.config import SchedulerConfig
from firered_core.latents import pack_latents, unpack_latents
from firered_core.placement import compute_dtype
from firered_core.sampler import euler_sample
from firered_core.schedule import flow_sigmas

from .batch import TrainBatch, pad_conditions
from ..scale.distributed import sample_generator
from ..observe import ValidationSample
from .step import pack_batch, velocity

log = logging.getLogger(__name__)

__all__ = ["HELDOUT_LEVELS", "ValSample", "evaluating", "loss_by_task", "sample_images", "sample_losses"]

HELDOUT_LEVELS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)  # noise levels s every held-out sample is scored at


@dataclass(frozen=True)
class ValSample:
    """One validation sample: its batch of one, and the pictures for the grid."""

    batch: TrainBatch
    sources: tuple[Image.Image, ...]  # bucket-sized, in the order the model sees them
    target: Image.Image
    caption: str
    task: str = "default"  # the record's task label, for the per-task held-out loss


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients, as at inference; its training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def sample_losses(model: nn.Module, samples: Sequence[ValSample], *, seed: int, patch: int,
                  device: torch.device, autocast: ContextManager[Any] | None = None) -> list[float]:
    """Each sample's mean flow-matching MSE over ``HELDOUT_LEVELS`` (see the module docstring), in order."""
    losses = []
    with evaluating(model), (autocast or contextlib.nullcontext()):
        for val in samples:
            batch = val.batch.to(device)
            packed = pack_batch(batch, patch)
            shape, total = tuple(batch.target.shape[1:]), 0.0
            for k, level in enumerate(HELDOUT_LEVELS):
                gen = sample_generator(seed, k, batch.indices[0], "heldout")
                noise = pack_latents(torch.randn(shape, generator=gen)[None], patch).to(device)
                s = torch.full((1,), level, device=device)
                x_t = (1 - level) * packed.x0 + level * noise
                v = velocity(model, x_t, packed, batch, s)
                total += float(((v.float() - (noise - packed.x0).float()) ** 2).mean())
            losses.append(total / len(HELDOUT_LEVELS))
    return losses


def loss_by_task(samples: Sequence[ValSample], losses: Sequence[float]) -> dict[str, float]:
    """``{task: mean loss of its samples}`` for ``losses`` from ``sample_losses(samples)``, tasks sorted."""
    if len(samples) != len(losses):
        raise ValueError(f"loss_by_task: {len(samples)} samples but {len(losses)} losses")
    groups: dict[str, list[float]] = {}
    for val, loss in zip(samples, losses):
        groups.setdefault(val.task, []).append(loss)
    return {task: sum(values) / len(values) for task, values in sorted(groups.items())}


def sample_images(model: nn.Module, vae: nn.Module, samples: Sequence[ValSample], null_embeds: torch.Tensor, *,
                  scheduler: SchedulerConfig, steps: int, cfg_scale: float, seed: int, patch: int,
                  device: torch.device, autocast: ContextManager[Any] | None = None) -> list[ValidationSample]:
    """Generate every sample's result with the current weights; rows for ``observe.sample_grid``."""
    rows = []
    compression = int(vae.spatial_compression)
    with evaluating(model), (autocast or contextlib.nullcontext()):
        for val in samples:
            batch = val.batch.to(device)
            packed = pack_batch(batch, patch)
            uncond_embeds, uncond_mask = pad_conditions([null_embeds.to(device, batch.embeds.dtype)])
            uncond = TrainBatch(step=batch.step, indices=batch.indices, ids=batch.ids, target=batch.target,
                                sources=batch.sources, embeds=uncond_embeds, mask=uncond_mask, languages=("null",))

            def predict(x: torch.Tensor, t: torch.Tensor, b: TrainBatch = batch) -> torch.Tensor:
                return velocity(model, x, packed, b, t)

            def predict_negative(x: torch.Tensor, t: torch.Tensor, b: TrainBatch = uncond) -> torch.Tensor:
                return velocity(model, x, packed, b, t)

            gen = sample_generator(seed, 0, batch.indices[0], "val-image")
            x = pack_latents(torch.randn(tuple(batch.target.shape[1:]), generator=gen)[None], patch).to(device)
            sigmas = flow_sigmas(steps, x.shape[1], scheduler)
            tokens = euler_sample(predict, x, sigmas, predict_negative=predict_negative if cfg_scale > 1 else None,
                                  cfg_scale=cfg_scale, num_train_timesteps=scheduler.num_train_timesteps)
            height, width = (d * compression for d in batch.target.shape[-2:])
            latents = unpack_latents(tokens.float(), height, width, compression, patch)
            image = vae.decode(latents.to(compute_dtype(vae)))
            rows.append(ValidationSample(sources=list(val.sources), result=image[0].float().cpu(),
                                         target=val.target, caption=val.caption))
    return rows
