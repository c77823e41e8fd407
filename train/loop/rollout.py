"""Rollout inputs: train the model on the states its own stochastic sampler shows it (``objective.rollout``).

At inference the stochastic sampler (``firered_core.sampler.stochastic_step``) walks the sigmas
``1 = s_0 > s_1 > ... > s_K = 0`` of ``firered_core.schedule.flow_sigmas``: step i predicts the clean latents
``x0_i = x_i - s_i v(x_i)`` and the next input is ``x_{i+1} = (1 - s_{i+1}) x0_i + s_{i+1} eps_{i+1}``. Plain
flow-matching training only shows the model ``(1 - s) x0 + s eps`` built from the TRUE ``x0``; from step 1 on the
sampler builds its inputs from the model's own estimate, so whatever that estimate got wrong is an input the model
never learnt to correct.

On a share ``objective.rollout.prob`` of the micro-steps (a whole batch: its samples share one level):

1. ``rollout_level`` picks a level index ``k >= 1`` uniformly among those with ``s_k >= min_level``, from a
   generator keyed by (seed, micro-step), so every rank and a resumed run draw the same;
2. ``rollout_start`` runs the sampler from seeded pure noise through steps ``0 .. k-1`` with the model as it is,
   in eval mode and without gradients, and returns the estimate ``x0_{k-1}``;
3. ``step.step_loss(..., start=x0_{k-1})`` feeds ``(1 - s_k) x0_{k-1} + s_k eps`` (the step's usual seeded noise)
   and regresses ``objectives.corrected_target``, the velocity that leads from there to the true ``x0``.

A rollout step costs ``k`` extra forward passes without gradients (about 1.5 training steps on average at 10
sampler steps). Every rank runs the same ``k`` (ranks share the step's shapes), so sharded training stays in step;
a rank's zero-weighted placeholder batch rolls out too, for the same reason.

Public API: ``RolloutLevel``, ``rollout_level``, ``rollout_start``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from firered_core.config import SchedulerConfig
from firered_core.schedule import flow_sigmas

from .batch import TrainBatch
from ..config import RolloutConfig
from ..scale.distributed import step_seed
from ..objectives import clean_estimate, noisy_sample
from .step import pack_batch, seeded_noise, velocity
from .validation import evaluating

log = logging.getLogger(__name__)

__all__ = ["RolloutLevel", "rollout_level", "rollout_start"]


@dataclass(frozen=True)
class RolloutLevel:
    """The sampler level a rollout step trains at: ``sigmas[index]`` of the sampler's ``sigmas``."""

    index: int  # k >= 1: the input is built from the estimate of sampler step k - 1
    sigmas: torch.Tensor  # [steps + 1] float32, the sampler's levels for this image size

    @property
    def level(self) -> float:
        return float(self.sigmas[self.index])


def rollout_level(cfg: RolloutConfig, scheduler: SchedulerConfig, *, seed: int, micro_step: int,
                  tokens: int) -> RolloutLevel | None:
    """Whether micro-step ``micro_step`` is a rollout step and at which level (None: a plain step).

    ``tokens`` is the target's token count (the resolution shift of the sampler's sigmas).
    """
    if cfg.prob == 0:
        return None
    generator = torch.Generator().manual_seed(step_seed(seed, "rollout", micro_step))
    if float(torch.rand((), generator=generator)) >= cfg.prob:
        return None
    sigmas = flow_sigmas(cfg.steps, tokens, scheduler)
    usable = [i for i in range(1, cfg.steps) if float(sigmas[i]) >= cfg.min_level]
    if not usable:
        log.debug("micro-step %d: no sampler level of %d steps reaches min_level %s; a plain step", micro_step,
                  cfg.steps, cfg.min_level)
        return None
    index = usable[int(torch.randint(len(usable), (1,), generator=generator))]
    return RolloutLevel(index=index, sigmas=sigmas)


def rollout_start(model: nn.Module, batch: TrainBatch, level: RolloutLevel, *, seed: int, patch: int) -> torch.Tensor:
    """The clean estimate ``x0_{k-1}`` the stochastic sampler holds before its step ``k = level.index`` (target
    tokens ``[B, N_t, D]``, no gradient): seeded pure noise, then ``k`` steps of the model as it is, in eval mode
    as at inference (no LoRA dropout; the training mode is restored afterwards)."""
    packed = pack_batch(batch, patch)
    x = seeded_noise(batch, seed, patch, stream="rollout-0")
    sigmas = level.sigmas.to(x.device)
    estimate = x
    with evaluating(model):
        for i in range(level.index):
            s = sigmas[i].expand(batch.size).to(x.dtype)
            estimate = clean_estimate(x, velocity(model, x, packed, batch, s), s)
            if i + 1 < level.index:
                noise = seeded_noise(batch, seed, patch, stream=f"rollout-{i + 1}")
                x = noisy_sample(estimate, noise, sigmas[i + 1])
    return estimate
