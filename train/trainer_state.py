"""Saving and restoring a run's complete state through ``checkpoint`` (exact resume).

A checkpoint after optimizer step ``k`` holds: the trained weights (the LoRA adapters, or the whole transformer),
the optimizer, the LR schedule, the EMA, the bucket sampler as it was before micro-step ``k x grad_accumulation``
(``state_dict(next_step=...)``: the DataLoader may have planned further ahead), the skip counters, the
loss-by-noise-level window and the global RNG states. Only rank 0 writes (the state of every rank is identical:
the weights after the all-reduce, and the sampler state by construction); every rank reads.

Why a resumed run ends bitwise equal to an uninterrupted one: everything random in a step is a function of
(seed, step, sample) -- noise, timesteps, the global RNG reseeded per micro-step for LoRA dropout -- or of the
sampler state (batches, SIA); the optimizer and schedule states are restored exactly; and the same shapes in the
same order give the same floating-point results on the same machine.

Public API: ``RunState``, ``save_run_state``, ``resume_run_state``, ``resolve_resume``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from .model import load_trainable_state_dict, trainable_state_dict

log = logging.getLogger(__name__)

__all__ = ["RunState", "save_run_state", "resume_run_state", "resolve_resume"]


@dataclass
class RunState:
    """What the loop keeps besides the model and optimizer, and what a checkpoint carries for it."""

    step: int  # optimizer steps done
    sampler: Any  # the bucket sampler
    skips: Any  # SkipLog
    bins: Any  # TimestepLossBins of the current logging window


def _model_state(transformer: nn.Module, lora: bool) -> tuple[dict[str, Any], str]:
    if lora:
        return trainable_state_dict(transformer), "adapter"
    return {k: v.detach().cpu() for k, v in transformer.state_dict().items()}, "full"


def save_run_state(root: str | os.PathLike, state: RunState, *, transformer: nn.Module, lora: bool,
                   optimizer: Any, lr_schedule: Any, ema: Any, grad_accumulation: int,
                   keep_last: int | None) -> Path:
    """Write the checkpoint of ``state.step`` (call on rank 0 only)."""
    model_state, kind = _model_state(transformer, lora)
    return save_checkpoint(
        root, state.step, model_state=model_state, model_kind=kind, optimizer=optimizer, lr_scheduler=lr_schedule,
        ema=ema, sampler_state=state.sampler.state_dict(next_step=state.step * grad_accumulation),
        data_state={"skips": state.skips.state_dict(), "bins": state.bins.state_dict()},
        extra={"grad_accumulation": grad_accumulation}, keep_last=keep_last, replace=True)


def resolve_resume(resume: str, checkpoint_dir: Path) -> Path | None:
    """The checkpoint directory ``checkpoint.resume`` names: "latest" (None when there is none yet) or a path."""
    if resume == "latest":
        try:
            return resolve_checkpoint(checkpoint_dir)
        except CheckpointError:
            log.warning("resume: latest: no checkpoint in %s yet; starting a fresh run", checkpoint_dir)
            return None
    try:
        return resolve_checkpoint(resume)
    except CheckpointError as exc:  # a wrong path is the user's input: reported in one line by the CLI
        raise FileNotFoundError(f"checkpoint.resume: {exc}") from exc


def resume_run_state(path: Path, state: RunState, *, transformer: nn.Module, lora: bool, optimizer: Any,
                     lr_schedule: Any, ema: Any, grad_accumulation: int, rank: int, is_main: bool) -> None:
    """Restore everything ``save_run_state`` wrote into the live objects; sets ``state.step``."""
    ckpt = load_checkpoint(path, optimizer=optimizer, lr_scheduler=lr_schedule, ema=ema, restore_rng=True,
                           rank=rank, clean=is_main)
    if lora:
        load_trainable_state_dict(transformer, ckpt.model_state)
    else:
        transformer.load_state_dict(ckpt.model_state, strict=True)
    saved_accum = int(ckpt.extra.get("grad_accumulation", grad_accumulation))
    if saved_accum != grad_accumulation:
        raise CheckpointError(f"{path}: saved with schedule.grad_accumulation={saved_accum}, this run uses "
                              f"{grad_accumulation}; the data position would not line up")
    state.sampler.load_state_dict(ckpt.sampler)
    state.skips.load_state_dict(ckpt.data["skips"])
    state.bins.load_state_dict(ckpt.data["bins"])
    state.step = ckpt.step
    log.info("resumed from %s at step %d", path, ckpt.step)
