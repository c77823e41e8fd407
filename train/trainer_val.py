"""The trainer's validation hook: load the validation samples once, then score and draw them on request.

``Validator(trainer, data)`` (main process only) turns each validation record into a one-sample ``TrainBatch``
at its own bucket sizes, online (VAE + encoder) or from the cache, plus the bucket-sized pictures for the grid.
``run(step)`` returns a ``ValidationResult``: the held-out loss, the same loss per task label (when the samples
carry more than one task) and, when ``logging.n_val_samples`` > 0, the sample grid image (``validation`` has the
details). Bad validation samples are skipped with a warning.

Public API: ``Validator``, ``ValidationResult``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from .batch import encode_pixel_batch, load_cached_batch
from .data.bucket_sampler import BatchPlan
from .data.record import BadSampleError
from .data.sia import choose_instruction
from .model import parse_dtype
from .observe import sample_grid
from .pixels import fit_image, load_pixel_batch
from .trainer_data import VAL_SIA, TrainData, val_plans
from .validation import ValSample, loss_by_task, sample_images, sample_losses

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)

__all__ = ["ValidationResult", "Validator"]


@dataclass
class ValidationResult:
    """One validation: the held-out loss (None without samples), per task when there are several, the grid."""

    loss: float | None = None
    by_task: dict[str, float] = field(default_factory=dict)
    grid: Any = None


class Validator:
    """Held-out loss and sample grids of one run (see the module docstring)."""

    def __init__(self, trainer: "Trainer", data: TrainData) -> None:
        self.trainer, self.data = trainer, data
        self.samples: list[ValSample] = []
        for plan in val_plans(data.val_records, trainer.cfg.data.sampler):
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
        t, record = self.trainer, self.data.val_records[plan.indices[0]]
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
            batch = encode_pixel_batch(pixels, t.comps.vae, t.comps.encoder, t.null, device=t.device,
                                       vae_dtype=parse_dtype(t.cfg.model.dtype))
            sources, target = self._pictures(plan)
        return ValSample(batch=batch.to("cpu"), sources=sources, target=target, caption=caption,
                         task=record.task)

    def run(self, step: int) -> ValidationResult:
        """The held-out loss (overall and per task) and the grid image with the current weights."""
        if not self.samples:
            return ValidationResult()
        t, cfg = self.trainer, self.trainer.cfg
        model = t.transformer
        losses = sample_losses(model, self.samples, seed=cfg.seed, patch=t.patch, device=t.device,
                               autocast=t.autocast())
        loss = sum(losses) / len(losses)
        by_task = loss_by_task(self.samples, losses)
        log.info("step %d: held-out loss %.5f over %d samples", step, loss, len(self.samples))
        if len(by_task) > 1:
            log.info("step %d: held-out loss by task: %s", step,
                     ", ".join(f"{task} {value:.4f}" for task, value in by_task.items()))
        else:
            by_task = {}  # one task: the overall loss says it all
        shown = self.samples[: cfg.logging.n_val_samples]
        if not shown:
            return ValidationResult(loss, by_task)
        rows = sample_images(model, t.comps.vae, shown, t.null.embeds, scheduler=t.comps.scheduler,
                             steps=cfg.logging.val_sampling_steps, cfg_scale=cfg.logging.val_cfg, seed=cfg.seed,
                             patch=t.patch, device=t.device, autocast=t.autocast())
        grid = sample_grid(rows, cell=min(256, max(64, max(r.target.width for r in shown))),
                           title=f"{cfg.stage} step {step}")
        return ValidationResult(loss, by_task, grid)
