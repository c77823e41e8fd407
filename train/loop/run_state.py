"""Saving and restoring a run's complete state through ``checkpoint`` (exact resume).

A checkpoint after optimizer step ``k`` holds: the trained weights (the LoRA adapters, or the whole transformer),
the optimizer, the LR schedule, the EMA, the bucket sampler as it was before micro-step ``k x grad_accumulation``
(``state_dict(next_step=...)``: the DataLoader may have planned further ahead), the skip counters, the
loss-by-noise-level window and the global RNG states. Only rank 0 writes (the state of every rank is identical:
the weights after the all-reduce, and the sampler state by construction); every rank reads.

Sharded runs (FSDP, ``sharding``): every rank calls ``save_run_state``, each sharded tensor (weights, Adam moments,
EMA shadow) is gathered whole and rank 0 writes exactly what an unsharded run writes; on resume every rank cuts
its own slices out of the full tensors. So one format serves 1 process, DDP and FSDP: the weights and optimizer
state of any checkpoint load into a run of any world size and strategy. Resuming a run still needs its world size:
the bucket sampler's data position is kept per rank share and refuses another (its fingerprint says so).

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

from ..state.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from ..model.components import load_trainable_state_dict
from ..scale.sharding import gather_full, is_sharded, local_like, local_optimizer_state

log = logging.getLogger(__name__)

__all__ = ["RunState", "save_run_state", "resume_run_state", "resolve_resume"]


@dataclass
class RunState:
    """What the loop keeps besides the model and optimizer, and what a checkpoint carries for it."""

    step: int  # optimizer steps done
    sampler: Any  # the bucket sampler
    skips: Any  # SkipLog
    bins: Any  # TimestepLossBins of the current logging window (plain steps)
    rollout_bins: Any  # the same for the rollout steps (objective.rollout), whose losses are of another kind


def _model_state(transformer: nn.Module, lora: bool, keep: bool) -> tuple[dict[str, Any] | None, str]:
    if lora:  # the adapters only: the frozen base is the run's input
        state = {name: p.detach() for name, p in transformer.named_parameters() if p.requires_grad}
    else:
        state = {k: v.detach() for k, v in transformer.state_dict().items()}
    return gather_full(state, keep=keep), "adapter" if lora else "full"


def save_run_state(root: str | os.PathLike, state: RunState, *, transformer: nn.Module, lora: bool,
                   optimizer: Any, lr_schedule: Any, ema: Any, grad_accumulation: int,
                   keep_last: int | None, is_main: bool = True, old_policy: Any = None) -> Path | None:
    """Write the checkpoint of ``state.step`` on the main process; returns its path there, None elsewhere.

    Call it on every rank: a sharded model's tensors are gathered by all ranks together (unsharded runs return
    at once on the other ranks).
    """
    if not (is_main or is_sharded(transformer)):
        return None
    model_state, kind = _model_state(transformer, lora, is_main)
    optimizer_state = gather_full(optimizer.state_dict(), keep=is_main)
    ema_state = gather_full(ema.state_dict(), keep=is_main) if ema is not None else None
    extra: dict[str, Any] = {"grad_accumulation": grad_accumulation}
    if old_policy is not None:  # DiffusionNFT's old policy: an EMA-like state (objectives.OldPolicy)
        extra["old_policy"] = old_policy.state_dict()
    if not is_main:
        return None
    return save_checkpoint(
        root, state.step, model_state=model_state, model_kind=kind, optimizer=optimizer_state,
        lr_scheduler=lr_schedule, ema=ema_state,
        sampler_state=state.sampler.state_dict(next_step=state.step * grad_accumulation),
        data_state={"skips": state.skips.state_dict(), "bins": state.bins.state_dict(),
                    "rollout_bins": state.rollout_bins.state_dict()},
        extra=extra, keep_last=keep_last, replace=True)


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


def _section(value: Any, name: str, path: Path) -> Any:
    if value is None:
        raise CheckpointError(f"{path}: holds no {name} state to restore")
    return value


def resume_run_state(path: Path, state: RunState, *, transformer: nn.Module, lora: bool, optimizer: Any,
                     lr_schedule: Any, ema: Any, grad_accumulation: int, rank: int, is_main: bool,
                     old_policy: Any = None) -> None:
    """Restore everything ``save_run_state`` wrote into the live objects (sharded or not); sets ``state.step``."""
    ckpt = load_checkpoint(path, lr_scheduler=lr_schedule, restore_rng=True, rank=rank, clean=is_main)
    live = {name: p for name, p in transformer.named_parameters()} if lora else transformer.state_dict()
    model_state = local_like(ckpt.model_state, live)
    if lora:
        load_trainable_state_dict(transformer, model_state)
    else:
        transformer.load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(local_optimizer_state(_section(ckpt.optimizer, "optimizer", path), optimizer))
    if ema is not None:
        saved = _section(ckpt.ema, "ema", path)
        ema.load_state_dict({**saved, "shadow": local_like(saved["shadow"], ema.shadow)})
    if old_policy is not None:
        saved = _section(ckpt.extra.get("old_policy"), "NFT old-policy", path)
        old_policy.load_state_dict({**saved, "shadow": local_like(saved["shadow"], old_policy.shadow)})
    saved_accum = int(ckpt.extra.get("grad_accumulation", grad_accumulation))
    if saved_accum != grad_accumulation:
        raise CheckpointError(f"{path}: saved with schedule.grad_accumulation={saved_accum}, this run uses "
                              f"{grad_accumulation}; the data position would not line up")
    state.sampler.load_state_dict(ckpt.sampler)
    state.skips.load_state_dict(ckpt.data["skips"])
    state.bins.load_state_dict(ckpt.data["bins"])
    if "rollout_bins" in ckpt.data:  # checkpoints before these bins: the window starts empty
        state.rollout_bins.load_state_dict(ckpt.data["rollout_bins"])
    state.step = ckpt.step
    log.info("resumed from %s at step %d", path, ckpt.step)
