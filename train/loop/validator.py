"""The trainer's validation hook: load the validation samples once, then score and draw them on request.

``Validator(data, setup)`` (main process only) turns each validation record into a one-sample ``TrainBatch``
at its own bucket sizes, online (VAE + encoder) or from the cache, plus the bucket-sized pictures for the grid.
``setup`` (``ValidationSetup``) holds what validation uses of a run - the frozen VAE and encoder, the scheduler,
the empty condition, the sampler and logging settings, the device - and nothing else of the trainer.
``run(step, model)`` scores the given transformer and returns a ``ValidationResult``: the held-out loss, the same loss per task label (when the samples
carry more than one task) and, when ``logging.n_val_samples`` > 0, the sample grid image (``validation`` has the
details). Bad validation samples are skipped with a warning.

Public API: ``Validator``, ``ValidationSetup``, ``ValidationResult``.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image

from ..config.sections import LoggingConfig
from ..data.bucket_sampler import BatchPlan, BucketSamplerConfig
from ..data.record import BadSampleError
from ..data.sia import choose_instruction
from ..observe import sample_grid
from ..data.pixels import fit_image, load_pixel_batch
from .batch import NullCondition, encode_pixel_batch, load_cached_batch
from .run_data import VAL_SIA, TrainData, val_plans
from .validation import ValSample, loss_by_task, sample_images, sample_losses

log = logging.getLogger(__name__)

__all__ = ["ValidationResult", "ValidationSetup", "Validator"]


@dataclass
class ValidationResult:
    """One validation: the held-out loss (None without samples), per task when there are several, the grid."""

    loss: float | None = None
    by_task: dict[str, float] = field(default_factory=dict)
    grid: Any = None


@dataclass(frozen=True)
class ValidationSetup:
    """What validation uses of a run (the trainer builds it; the validator sees nothing else of it)."""

    vae: Any
    encoder: Any  # None for a cached run
    scheduler: Any
    null: NullCondition
    sampler: BucketSamplerConfig  # each sample is planned at its own bucket sizes
    logging: LoggingConfig  # n_val_samples, val_sampling_steps, val_cfg
    seed: int
    stage: str  # the grid's title
    patch: int
    device: torch.device
    vae_dtype: torch.dtype
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext


class Validator:
    """Held-out loss and sample grids of one run (see the module docstring)."""

    def __init__(self, data: TrainData, setup: ValidationSetup) -> None:
        self.data, self.setup = data, setup
        self.samples: list[ValSample] = []
        for plan in val_plans(data.val_records, setup.sampler):
            try:
                sample = self._load(plan)
            except BadSampleError as exc:
                log.warning("validation sample skipped: %s", exc)
                continue
            if sample is not None:
                self.samples.append(sample)
        log.info("validation: %d samples", len(self.samples))

    def _pictures(self, plan: BatchPlan) -> tuple[tuple[Image.Image, ...], Image.Image]:
        record = self.data.val_records[plan.indices[0]]
        sources, target = record.open_images()
        fitted = tuple(fit_image(img, d) for img, d in zip(sources, plan.dims.sources))
        return fitted, fit_image(target, plan.dims.target)

    def _load(self, plan: BatchPlan) -> ValSample | None:
        t, record = self.setup, self.data.val_records[plan.indices[0]]
        caption = choose_instruction(record, VAL_SIA, 0)
        if self.data.cache is not None:
            batch = load_cached_batch(self.data.val_records, plan, self.data.cache, VAL_SIA)
            if batch.weight == 0:
                return None
            sources, target = self._pictures(plan)
        else:
            pixels = load_pixel_batch(self.data.val_records, plan, VAL_SIA)
            if pixels.size == 0:
                return None
            batch = encode_pixel_batch(pixels, t.vae, t.encoder, t.null, device=t.device, vae_dtype=t.vae_dtype)
            sources, target = self._pictures(plan)
        return ValSample(batch=batch.to("cpu"), sources=sources, target=target, caption=caption,
                         task=record.task)

    def run(self, step: int, model: torch.nn.Module) -> ValidationResult:
        """The held-out loss (overall and per task) and the grid image of ``model`` (the bare transformer)."""
        if not self.samples:
            return ValidationResult()
        t = self.setup
        losses = sample_losses(model, self.samples, seed=t.seed, patch=t.patch, device=t.device,
                               autocast=t.autocast())
        loss = sum(losses) / len(losses)
        by_task = loss_by_task(self.samples, losses)
        log.info("step %d: held-out loss %.5f over %d samples", step, loss, len(self.samples))
        if len(by_task) > 1:
            log.info("step %d: held-out loss by task: %s", step,
                     ", ".join(f"{task} {value:.4f}" for task, value in by_task.items()))
        else:
            by_task = {}  # one task: the overall loss says it all
        shown = self.samples[: t.logging.n_val_samples]
        if not shown:
            return ValidationResult(loss, by_task)
        rows = sample_images(model, t.vae, shown, t.null.embeds, scheduler=t.scheduler,
                             steps=t.logging.val_sampling_steps, cfg_scale=t.logging.val_cfg, seed=t.seed,
                             patch=t.patch, device=t.device, autocast=t.autocast())
        grid = sample_grid(rows, cell=min(256, max(64, max(r.target.width for r in shown))),
                           title=f"{t.stage} step {step}")
        return ValidationResult(loss, by_task, grid)
