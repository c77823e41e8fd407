"""The old policy's samples for DiffusionNFT: ``K`` clean results per prompt, to be rewarded and trained on.

Not ``rollout.py`` (which rolls the sampler part-way to build training inputs for flow matching): this is the
sampling round of NFT (``firered_train.objectives.nft``). For each of the ``G`` prompts of a ``TrainBatch`` (its
sources and condition; its target only gives the output size) ``sample_policy`` draws ``K`` starting noises and
integrates the flow with deterministic Euler steps (``firered_core.sampler.euler_sample``) and no CFG, as the
reference does (guidance 1; NFT trains the model that will be sampled without guidance).

Seeds. Sample ``k`` of the prompt with record index ``i`` at training step ``step`` starts from noise drawn by its
own CPU generator, keyed by ``(seed, "nft-sample", step, i, k)`` (``scale.distributed.step_seed``), in latent
layout and then packed, as ``loop.step.seeded_noise``. Each prompt is sampled in a batch of its ``K`` samples only,
with its condition trimmed of padding, so a sample does not depend on which other prompts share the call, on the
rank that draws it, or on a resume. Deterministic Euler needs no further noise; with ``stochastic=True`` (the
sampler the embedded default model is used with, ``firered_core.sampler.stochastic_step``) each prompt's steps draw
their noise from one more generator keyed by ``(seed, "nft-step-noise", step, i)``, again per prompt.

The model runs in eval mode without gradients (``validation.evaluating``), as at inference. Which weights act is
the caller's: NFT samples with the *old* policy, e.g. under ``firered_core.lora.lora_disabled(model, "train")``
when the old policy is a second adapter.

What comes back (``PolicySamples``): the final latents ``[G, K, C, h, w]`` (normalised, for the VAE and the
rewards) and a ``TrainBatch`` of the ``G * K`` samples, prompt-major (row ``g * K + k``), whose targets are those
latents and whose sources and condition are the prompt's: what ``loop.step.pack_batch`` and the NFT loss pass need.
Its ``indices`` are sample keys ``i * K + k`` (unique per prompt and sample, so ``seeded_noise`` draws each row its
own training noise); ``prompts`` keeps the record indices. ``sigmas`` are the levels walked: the reference trains at
the sampler's own levels.

Public API: ``PolicySamples``, ``sample_policy``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from firered_core.config import SchedulerConfig
from firered_core.latents import pack_latents, unpack_latents
from firered_core.sampler import euler_sample
from firered_core.schedule import flow_sigmas

from .batch import TrainBatch, pad_conditions
from ..scale.distributed import step_seed
from .step import pack_batch, velocity
from .validation import evaluating

log = logging.getLogger(__name__)

__all__ = ["PolicySamples", "sample_policy"]


@dataclass(frozen=True)
class PolicySamples:
    """``K`` sampled results for each of ``G`` prompts and the batch to train on them (module docstring)."""

    latents: torch.Tensor  # [G, K, C, h, w] the final clean latents
    batch: TrainBatch  # G * K rows, prompt-major: target = the sampled latents, the prompt's sources and condition
    prompts: tuple[int, ...]  # the G record indices, in order
    sigmas: torch.Tensor  # [steps + 1] float32, the levels the sampler walked (last 0)

    @property
    def group_size(self) -> int:
        return int(self.latents.shape[1])


def _prompt_batch(batch: TrainBatch, g: int, k: int) -> TrainBatch:
    """Prompt ``g`` of ``batch`` repeated ``k`` times, its condition trimmed of right padding."""
    embeds = batch.embeds[g] if batch.mask is None else batch.embeds[g, : int(batch.mask[g].sum())]  # [L_g, D]
    repeat = lambda x: x[g : g + 1].expand(k, *x.shape[1:]).contiguous()  # noqa: E731  [1, ...] -> [k, ...]
    index = batch.indices[g]
    return TrainBatch(step=batch.step, indices=tuple(index * k + j for j in range(k)), ids=(batch.ids[g],) * k,
                      target=repeat(batch.target), sources=tuple(repeat(s) for s in batch.sources),
                      embeds=embeds[None].expand(k, *embeds.shape).contiguous(), mask=None,
                      languages=(batch.languages[g],) * k)


def _start_noise(batch: TrainBatch, index: int, k: int, *, seed: int, step: int, patch: int) -> torch.Tensor:
    shape = tuple(batch.target.shape[1:])  # [C, h, w]
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(step_seed(seed, "nft-sample", step, index, j)))
             for j in range(k)]
    return pack_latents(torch.stack(noise), patch).to(batch.target.device, batch.target.dtype)  # [k, N, C*p*p]


def _sample_prompt(model: nn.Module, rows: TrainBatch, x: torch.Tensor, sigmas: torch.Tensor, *,
                   num_train_timesteps: int, patch: int, step_noise: torch.Generator | None) -> torch.Tensor:
    packed = pack_batch(rows, patch)

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return velocity(model, x_t, packed, rows, t)

    tokens = euler_sample(predict, x, sigmas, num_train_timesteps=num_train_timesteps,
                          step_noise=step_noise)  # [k, N, C*p*p]
    h, w = rows.target.shape[-2:]
    return unpack_latents(tokens, h * 8, w * 8, 8, patch)  # [k, C, h, w] (pixel size only fixes the grid)


def _merged(parts: list[TrainBatch], latents: torch.Tensor) -> TrainBatch:
    embeds, mask = pad_conditions([e for p in parts for e in p.embeds])
    return TrainBatch(step=parts[0].step, indices=tuple(i for p in parts for i in p.indices),
                      ids=tuple(i for p in parts for i in p.ids), target=latents.flatten(0, 1),
                      sources=tuple(torch.cat(slot) for slot in zip(*(p.sources for p in parts))),
                      embeds=embeds.to(latents.device), mask=None if mask is None else mask.to(latents.device),
                      languages=tuple(lang for p in parts for lang in p.languages))


def sample_policy(model: nn.Module, batch: TrainBatch, *, group_size: int, steps: int, scheduler: SchedulerConfig,
                  seed: int, step: int, patch: int, stochastic: bool = False) -> PolicySamples:
    """``group_size`` deterministic Euler (or ``stochastic``) samples of ``steps`` steps for every prompt of
    ``batch`` (see the module docstring); ``step`` is the training step the round belongs to (part of every
    sample's noise key)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"sample_policy: group_size (samples per prompt) must be an integer >= 1, got {group_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"sample_policy: steps must be an integer >= 1, got {steps!r}")
    tokens = batch.target.shape[-2] * batch.target.shape[-1] // patch**2
    sigmas = flow_sigmas(steps, tokens, scheduler)
    parts, results = [], []
    with evaluating(model):
        for g, index in enumerate(batch.indices):
            rows = _prompt_batch(batch, g, group_size)
            x = _start_noise(batch, index, group_size, seed=seed, step=step, patch=patch)
            noise = (torch.Generator().manual_seed(step_seed(seed, "nft-step-noise", step, index)) if stochastic
                     else None)
            results.append(_sample_prompt(model, rows, x, sigmas, num_train_timesteps=scheduler.num_train_timesteps,
                                          patch=patch, step_noise=noise))
            parts.append(rows)
    latents = torch.stack(results)  # [G, K, C, h, w]
    log.debug("sample_policy: %d prompts x %d samples, %d Euler steps, %d target tokens", batch.size, group_size,
              steps, tokens)
    return PolicySamples(latents=latents, batch=_merged(parts, latents), prompts=tuple(batch.indices), sigmas=sigmas)
