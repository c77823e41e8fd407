"""One training step's arithmetic: latents -> tokens -> noisy target -> velocity -> flow-matching loss.

For a ``TrainBatch`` (normalised latents of the target and each source slot, condition embeddings):

1. pack every slot into tokens (``firered_core.latents.pack_latents``): ``x0 [B, N_t, C*p*p]`` for the target,
   the sources concatenated after it; ``img_shapes`` lists ``(1, h_tokens, w_tokens)`` for the target first, then
   each source, as the transformer expects;
2. ``x_s = (1 - s) x0 + s eps`` per sample (``objectives.noisy_sample``), ``s`` from ``seeded_levels`` (the
   ``objectives.TimestepSampler`` of ``objective.timesteps``) and ``eps`` from ``seeded_noise`` (a generator per
   (seed, step, sample): the same noise for a sample on any rank or process count, and after a resume);
3. the transformer predicts ``v`` for the target tokens only (sources are clean conditioning, never noised);
4. ``objectives.flow_matching_loss`` compares ``v`` with ``eps - x0`` (per-sample MSE, elements with
   ``|v - target|`` above ``objective.outlier_threshold`` left out, divided as ``objective.denominator`` says);
   the step's loss is the mean over samples times ``batch.weight`` (0 for a placeholder batch). With
   ``objective.changed_token_weight`` > 0, target tokens that differ from Picture 1's (``changed_token_weights``)
   weigh more (see ``ObjectiveConfig``), each sample's weights rescaled to mean 1 when
   ``objective.changed_token_normalize`` is on. With ``objective.rollout`` some steps noise the model's own
   clean estimate instead of ``x0`` (``firered_train.loop.rollout``) and regress the velocity back to ``x0``.

``velocity`` is shared with validation (held-out loss, sample images), so every path calls the model the same way.

Public API: ``PackedBatch``, ``pack_batch``, ``seeded_noise``, ``seeded_levels``, ``target_tokens``, ``velocity``,
``StepLoss``, ``flow_losses``, ``step_loss``, ``changed_token_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from firered_core.latents import pack_latents

from .batch import TrainBatch
from ..config import ObjectiveConfig
from ..scale.distributed import sample_generator
from ..objectives import (LossOutput, TimestepSampler, corrected_target, flow_matching_loss, flow_target,
                          noisy_sample)

__all__ = ["PackedBatch", "pack_batch", "seeded_noise", "seeded_levels", "target_tokens", "velocity", "StepLoss",
           "flow_losses", "step_loss", "changed_token_weights"]


@dataclass(frozen=True)
class PackedBatch:
    """A batch as tokens: clean target, clean source tokens after it, and the image shapes of the sequence."""

    x0: torch.Tensor  # [B, N_target, C*p*p]
    refs: torch.Tensor | None  # [B, N_sources, C*p*p] or None without sources
    img_shapes: list[tuple[int, int, int]]  # (frames, h_tokens, w_tokens): target, then each source


def pack_batch(batch: TrainBatch, patch: int) -> PackedBatch:
    """Tokens and ``img_shapes`` of ``batch`` (see the module docstring, step 1)."""
    slots = [batch.target, *batch.sources]
    shapes = [(1, z.shape[-2] // patch, z.shape[-1] // patch) for z in slots]
    tokens = [pack_latents(z, patch) for z in slots]  # each [B, h*w/p^2, C*p*p]
    refs = torch.cat(tokens[1:], dim=1) if len(tokens) > 1 else None
    return PackedBatch(x0=tokens[0], refs=refs, img_shapes=shapes)


def seeded_noise(batch: TrainBatch, seed: int, patch: int, *, stream: str = "noise") -> torch.Tensor:
    """Gaussian noise shaped like the target tokens, one generator per sample (drawn in latent layout, packed)."""
    shape = tuple(batch.target.shape[1:])  # [C, h, w]
    noise = [torch.randn(shape, generator=sample_generator(seed, batch.step, i, stream)) for i in batch.indices]
    return pack_latents(torch.stack(noise), patch).to(batch.target.device, batch.target.dtype)


def target_tokens(batch: TrainBatch, patch: int) -> int:
    """The target's token count: the image size the sampler's resolution shift (its ``mu``) depends on."""
    return batch.target.shape[-2] * batch.target.shape[-1] // patch**2


def seeded_levels(sampler: TimestepSampler, batch: TrainBatch, seed: int, patch: int, *, step: int, rank: int,
                  world_size: int) -> torch.Tensor:
    """Noise levels ``s [B]`` (float32, CPU) of ``batch``: generators keyed by its micro-step ``batch.step`` (and
    its samples or this rank, as the stratification needs); strata and curriculum by optimizer step ``step``."""
    generator = sampler.generators(seed, batch.step, rank, batch.indices)
    return sampler.sample(batch.size, step=step, rank=rank, world_size=world_size,
                          image_seq_len=target_tokens(batch, patch), generator=generator)


def velocity(model: nn.Module, x_t: torch.Tensor, packed: PackedBatch, batch: TrainBatch,
             s: torch.Tensor) -> torch.Tensor:
    """The model's velocity for the target tokens ``x_t [B, N_t, D]`` at noise levels ``s [B]``."""
    hidden = x_t if packed.refs is None else torch.cat([x_t, packed.refs.to(x_t.dtype)], dim=1)
    return model(hidden, batch.embeds, batch.mask, s, packed.img_shapes)


@dataclass(frozen=True)
class StepLoss:
    """The scalar to backpropagate and the per-sample losses (detached) for logging by noise level."""

    loss: torch.Tensor  # [] weighted mean over samples
    per_sample: torch.Tensor  # [B]
    s: torch.Tensor  # [B]
    n_masked: torch.Tensor  # [] int64, elements the outlier mask left out (.item() to log)
    # the noisy target tokens the model saw and its velocity [B, N_t, C*p*p], v still differentiable: the
    # consistency loss (``consistency_stage``) reads the model's clean estimate x_t - s v from them
    x_t: torch.Tensor | None = None
    v: torch.Tensor | None = None


def changed_token_weights(packed: PackedBatch, weight: float, threshold: float, *,
                          normalize: bool = False) -> torch.Tensor | None:
    """``[B, N_t]``: ``1 + weight`` where a target token differs from Picture 1's token at the same place (mean
    absolute difference of its elements above ``threshold``), else 1; divided by each sample's mean weight when
    ``normalize``; None when ``weight`` is 0, there is no source, or Picture 1's token grid is not the target's."""
    target_shape, *source_shapes = packed.img_shapes
    if weight == 0 or packed.refs is None or source_shapes[0] != target_shape:
        return None
    n = packed.x0.shape[1]
    changed = (packed.x0.float() - packed.refs[:, :n].float()).abs().mean(-1) > threshold
    weights = 1.0 + weight * changed.float()
    return weights / weights.mean(dim=1, keepdim=True) if normalize else weights


def _flow(model: nn.Module, batch: TrainBatch, s: torch.Tensor, noise: torch.Tensor, objective: ObjectiveConfig,
          *, patch: int, start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, LossOutput]:
    """``(x_t, v, loss)`` of ``flow_losses``."""
    packed = pack_batch(batch, patch)
    x0 = packed.x0  # [B, N_t, C*p*p]
    s = s.to(x0.device)
    x_t = noisy_sample(x0 if start is None else start.to(x0.dtype), noise, s)
    v = velocity(model, x_t, packed, batch, s.to(x0.dtype))
    target = flow_target(x0, noise) if start is None else corrected_target(x0, noise, start.to(x0.dtype), s)
    weights = changed_token_weights(packed, objective.changed_token_weight, objective.changed_token_threshold,
                                    normalize=objective.changed_token_normalize)
    return x_t, v, flow_matching_loss(v, target, outlier_threshold=objective.outlier_threshold,
                                      denominator=objective.denominator, token_weight=weights)


def flow_losses(model: nn.Module, batch: TrainBatch, s: torch.Tensor, noise: torch.Tensor,
                objective: ObjectiveConfig, *, patch: int, start: torch.Tensor | None = None) -> LossOutput:
    """Steps 1-4 of the module docstring for one micro-batch, every tensor still differentiable: ``per_sample [B]``
    is what DPO compares (``pair_step``); ``s`` and ``noise`` are drawn by the caller.

    ``start`` (target tokens): a clean estimate to noise instead of the true ``x0`` (``firered_train.loop.rollout``);
    the target is then the velocity from that input back to ``x0`` (``objectives.corrected_target``).
    """
    return _flow(model, batch, s, noise, objective, patch=patch, start=start)[2]


def step_loss(model: nn.Module, batch: TrainBatch, s: torch.Tensor, noise: torch.Tensor, objective: ObjectiveConfig,
              *, patch: int, start: torch.Tensor | None = None) -> StepLoss:
    """``flow_losses`` as one training step's loss (times ``batch.weight``), the logged parts detached, with the
    ``x_t`` and ``v`` it came from."""
    x_t, v, out = _flow(model, batch, s, noise, objective, patch=patch, start=start)
    return StepLoss(loss=out.loss * batch.weight, per_sample=out.per_sample.detach(),
                    s=s.detach().to(batch.target.device), n_masked=out.n_masked, x_t=x_t, v=v)
