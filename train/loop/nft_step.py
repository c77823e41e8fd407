"""One DiffusionNFT micro-step: sample with the old policy, grade, then learn from plain noisy copies of the samples.

::

    with old.swapped():                                  the old policy's weights, no gradient, eval mode
        samples = sample_policy(model, batch, K, ...)    K results per prompt (nft.sampler), no CFG
    rewards = NFTRewards.score(vae, prompts, latents)    [G, K], decoded and graded
    r = group_advantages(rewards)                        optimality in [0, 1], normalised within each prompt
    s, eps = the trainer's seeded levels and noise of the G * K samples
    x_t = (1 - s) x0 + s eps                             x0 = a sample's latents (its tokens)
    v_old (old weights), v_ref (adapters off / frozen copy) without gradient; then v_theta with gradient
    loss = nft_loss(v_theta, v_old, v_ref, x_t, s, x0, eps, r)       (objectives.nft)

``v_old`` and ``v_ref`` are computed before ``v_theta``: swapping the old weights in writes the parameters in
place, which must not happen between a forward pass and its backward. With ``kl_weight: 0`` the reference pass
is skipped (``v_ref = v_theta`` detached: the KL term is exactly 0).

Every prompt's ``K`` results are sampled, graded and normalised on the rank that holds the prompt, so the group
statistics need no communication and do not depend on the process count; the trainer gathers the rewards only to
log their mean over all ranks. The training levels are drawn for the samples in result-major order (all prompts'
first results, then all second results, ...): with the ``global`` stratification a row's stratum is its place in
the global batch, ``row x world_size + rank``, and in that order result ``k`` of the prompt at global place ``p``
lands at ``k G_global + p`` on any number of processes (``G_global`` prompts in all), as in one process.

Public API: ``NFTStep``, ``nft_losses``, ``nft_round``, ``result_major_draws``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Sequence
from typing import Any, Callable

import torch
from torch import nn

from firered_core.config import SchedulerConfig
from firered_core.lora import lora_disabled

from .batch import TrainBatch
from .nft_rewards import NFTRewards
from .policy_samples import PolicySamples, sample_policy
from .step import pack_batch, velocity
from ..config import NFTConfig
from ..objectives import NFTTerms, OldPolicy, group_advantages, nft_loss, noisy_sample

__all__ = ["NFTStep", "nft_losses", "nft_round", "result_major_draws"]

Draws = Callable[[TrainBatch], tuple[torch.Tensor, torch.Tensor]]  # samples -> (levels [B], noise tokens)


@dataclass(frozen=True)
class NFTStep:
    """One NFT micro-step: the loss terms (``loss`` times the batch weight) and the round's rewards."""

    terms: NFTTerms
    rewards: torch.Tensor  # [G, K] float64


def _rows(batch: TrainBatch, order: Sequence[int]) -> TrainBatch:
    """The rows ``order`` of ``batch``, in that order."""
    pick = torch.as_tensor(list(order), dtype=torch.long)
    take = lambda x: x.index_select(0, pick.to(x.device))  # noqa: E731
    return replace(batch, indices=tuple(batch.indices[i] for i in order), ids=tuple(batch.ids[i] for i in order),
                   target=take(batch.target), sources=tuple(take(x) for x in batch.sources), embeds=take(batch.embeds),
                   mask=None if batch.mask is None else take(batch.mask),
                   languages=tuple(batch.languages[i] for i in order))


def result_major_draws(samples: PolicySamples, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` of the samples taken in result-major order (module docstring), returned in the batch's own
    prompt-major order: levels ``[G K]`` and noise tokens."""
    groups, k = samples.latents.shape[:2]
    order = [g * k + j for j in range(k) for g in range(groups)]  # result-major position -> prompt-major row
    s_major, noise_major = draws(_rows(samples.batch, order))
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.as_tensor(order)] = torch.arange(len(order))  # prompt-major row -> its result-major position
    return s_major.index_select(0, back.to(s_major.device)), noise_major.index_select(0, back.to(noise_major.device))


def nft_losses(model: nn.Module, bare: nn.Module, samples: PolicySamples, r: torch.Tensor, s: torch.Tensor,
               noise: torch.Tensor, config: NFTConfig, *, old: OldPolicy, reference: nn.Module | None,
               lora: str | None, patch: int) -> NFTTerms:
    """The NFT loss of ``samples`` at levels ``s [B]`` with ``noise`` (target tokens) and optimality ``r [B]``.

    ``model`` is what trains (a DDP wrapper, say), ``bare`` the same network unwrapped, for the passes without
    gradient; the reference is ``reference`` (a frozen network) or ``bare`` with adapters ``lora`` off.
    """
    batch = samples.batch
    packed = pack_batch(batch, patch)
    x0 = packed.x0
    s = s.to(x0.device)
    x_t = noisy_sample(x0, noise, s)
    levels = s.to(x0.dtype)
    with torch.no_grad():
        with old.swapped():
            v_old = velocity(bare, x_t, packed, batch, levels)
        v_ref = None
        if config.kl_weight > 0:
            if reference is None and lora is None:
                raise ValueError("nft_losses: kl_weight > 0 needs a reference (a frozen copy) or the LoRA to disable")
            with nullcontext() if lora is None else lora_disabled(bare, lora):
                v_ref = velocity(bare if reference is None else reference, x_t, packed, batch, levels)
    v_theta = velocity(model, x_t, packed, batch, levels)
    return nft_loss(v_theta, v_old, v_theta.detach() if v_ref is None else v_ref, x_t, s, x0, noise,
                    r.to(x0.device), config)


def nft_round(model: nn.Module, bare: nn.Module, batch: TrainBatch, draws: Draws, *, vae: Any,
              rewards: NFTRewards, config: NFTConfig, old: OldPolicy, reference: nn.Module | None, lora: str | None,
              scheduler: SchedulerConfig, seed: int, patch: int,
              autocast: Callable[[], Any] = nullcontext) -> NFTStep:
    """The whole micro-step of the module docstring for the prompts of ``batch``; ``draws`` gives the training
    levels and noise of the samples' batch (the trainer's seeded ones)."""
    with old.swapped(), autocast():
        samples = sample_policy(bare, batch, group_size=config.group_size, steps=config.sample_steps,
                                scheduler=scheduler, seed=seed, step=batch.step, patch=patch,
                                stochastic=config.sampler == "stochastic")
    graded = rewards.score(vae, samples.prompts, samples.latents)
    r = group_advantages(graded, config).flatten()
    s, noise = result_major_draws(samples, draws)
    with autocast():
        terms = nft_losses(model, bare, samples, r, s, noise, config, old=old, reference=reference, lora=lora,
                           patch=patch)
    return NFTStep(terms=replace(terms, loss=terms.loss * batch.weight), rewards=graded)
