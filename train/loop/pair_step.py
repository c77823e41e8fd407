"""The four per-sample flow losses a DPO step compares: trained model and reference, on winner and loser.

A preference pair is two ``TrainBatch`` values that share sources and condition and differ in the target (the
winner's and the loser's latents). DPO is only meaningful when both are noised identically: with other noise or
another level, the loss difference between them would measure the draw, not the model's preference. So the caller
draws ``s [B]`` and ``noise`` once (``step.seeded_levels`` / ``step.seeded_noise`` of the winner batch) and
``pair_losses`` uses them for both, through ``step.flow_losses`` (the same masked MSE as every other step)::

    s = seeded_levels(sampler, batch_w, seed, patch, step=step, rank=rank, world_size=world)
    noise = seeded_noise(batch_w, seed, patch)
    losses = pair_losses(model, None, batch_w, batch_l, s, noise, cfg.objective, patch=patch, lora="train")
    terms = dpo_loss(losses.model_w, losses.model_l, losses.ref_w, losses.ref_l, dpo_config)

The reference is either a frozen copy of the starting network (``reference``), or, for LoRA training, the trained
network itself with its adapters switched off (``reference=None, lora=<adapter name>``:
``firered_core.lora.lora_disabled``), which costs no second copy of the weights. Either way it runs under
``torch.no_grad()``: the reference is a constant of the objective.

The trainer's DPO micro-step is ``dpo_step``: the above, the loss times the batch weight (0 for a placeholder), and
what it logs.

Public API: ``PairLosses``, ``pair_losses``, ``DPOStep``, ``dpo_step``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from firered_core.lora import lora_disabled

from .batch import TrainBatch
from .step import flow_losses
from ..config import DPOConfig, ObjectiveConfig
from ..objectives.dpo import DPOTerms, dpo_loss

__all__ = ["PairLosses", "pair_losses", "DPOStep", "dpo_step"]


@dataclass(frozen=True)
class PairLosses:
    """Per-sample flow losses ``[B]`` (float32): the model's differentiable, the reference's without gradient."""

    model_w: torch.Tensor
    model_l: torch.Tensor
    ref_w: torch.Tensor
    ref_l: torch.Tensor


def _check_pair(batch_w: TrainBatch, batch_l: TrainBatch, noise: torch.Tensor) -> None:
    if batch_w.target.shape != batch_l.target.shape:
        raise ValueError(f"pair_losses: winner {tuple(batch_w.target.shape)} and loser "
                         f"{tuple(batch_l.target.shape)} latents differ in shape; a pair shares one bucket")
    if len(batch_w.sources) != len(batch_l.sources):
        raise ValueError(f"pair_losses: winner has {len(batch_w.sources)} sources, loser {len(batch_l.sources)}")
    if noise.shape[0] != batch_w.size:
        raise ValueError(f"pair_losses: noise has {noise.shape[0]} samples, the batch {batch_w.size}")


def pair_losses(model: nn.Module, reference: nn.Module | None, batch_w: TrainBatch, batch_l: TrainBatch,
                s: torch.Tensor, noise: torch.Tensor, objective: ObjectiveConfig, *, patch: int,
                lora: str | None = None) -> PairLosses:
    """``L_w``, ``L_l`` of ``model`` and of the reference for the same ``s [B]`` and ``noise`` (target tokens).

    Give exactly one of ``reference`` (a frozen network) and ``lora`` (the name of ``model``'s trained adapters,
    disabled for the reference pass).
    """
    if (reference is None) == (lora is None):
        raise ValueError("pair_losses: give exactly one of reference (a frozen copy) and lora (the adapters to "
                         f"disable on model), got reference={type(reference).__name__}, lora={lora!r}")
    _check_pair(batch_w, batch_l, noise)
    losses = [flow_losses(model, b, s, noise, objective, patch=patch).per_sample for b in (batch_w, batch_l)]
    ref_model = model if reference is None else reference
    with torch.no_grad(), (nullcontext() if lora is None else lora_disabled(model, lora)):
        ref = [flow_losses(ref_model, b, s, noise, objective, patch=patch).per_sample for b in (batch_w, batch_l)]
    return PairLosses(model_w=losses[0], model_l=losses[1], ref_w=ref[0], ref_l=ref[1])


@dataclass(frozen=True)
class DPOStep:
    """One DPO micro-step: the terms (``loss`` weighted by the batch weight) and the winner's per-pair losses."""

    terms: DPOTerms
    per_sample_w: torch.Tensor  # [B] detached L_w(theta), for the per-noise-level bins
    s: torch.Tensor  # [B]


def dpo_step(model: nn.Module, reference: nn.Module | None, batch_w: TrainBatch, batch_l: TrainBatch,
             s: torch.Tensor, noise: torch.Tensor, objective: ObjectiveConfig, dpo: DPOConfig, *, patch: int,
             lora: str | None = None) -> DPOStep:
    """``pair_losses`` then ``dpo_loss`` for one micro-batch of pairs (``s`` and ``noise`` drawn by the caller)."""
    losses = pair_losses(model, reference, batch_w, batch_l, s, noise, objective, patch=patch, lora=lora)
    terms = dpo_loss(losses.model_w, losses.model_l, losses.ref_w, losses.ref_l, dpo)
    return DPOStep(terms=replace(terms, loss=terms.loss * batch_w.weight), per_sample_w=losses.model_w.detach(),
                   s=s.detach())
