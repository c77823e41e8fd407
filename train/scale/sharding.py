"""FSDP2 sharding of the transformer, and moving whole states in and out of shards.

accelerate shards only accelerator processes: on a machine without CUDA its FSDP launch joins plain CPU processes
(``DistributedType.MULTI_CPU``) and would run DDP, and torch's FSDP1 refuses the CPU outright ("FSDP needs a
non-CPU accelerator device"). torch's FSDP2 (``torch.distributed.fsdp.fully_shard``) does shard CPU parameters over
gloo, so for an FSDP launch on CPU processes the trainer shards the transformer itself:

* ``shard_transformer``: one shard unit per ``DualStreamBlock`` plus the root (embeddings, output layers); every
  parameter becomes a ``DTensor`` whose local part is this rank's 1/world slice of dim 0. The forward pass
  gathers a block's parameters just before it runs and frees them after (``reshard_after_forward``); backward
  reduce-scatters the gradients, averaged like DDP's all-reduce, so each rank's optimizer updates only its slice.
* checkpoints hold *full* tensors in the same layout as a one-process run (``gather_full``): every rank takes part
  in each gather, rank 0 keeps the result. So a checkpoint resumes under any world size, sharded or not;
  ``local_like`` and ``local_optimizer_state`` cut full tensors back into this rank's slices (no communication:
  every rank reads the file).
* what needs the whole model on one process (the exported files) uses a parameter-free copy of the transformer
  made before sharding (``meta_copy``) filled with the gathered weights (``materialize``), on rank 0 only.

Everything here keys on ``DTensor`` parameters, not on who sharded them, so it serves accelerate's own FSDP2 path
on CUDA as well.

Public API: ``shard_transformer``, ``is_sharded``, ``shard_numel``, ``gather_full``, ``local_like``,
``local_optimizer_state``, ``gradient_sync``, ``to_float``, ``meta_copy``, ``materialize``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

log = logging.getLogger(__name__)

__all__ = ["shard_transformer", "is_sharded", "shard_numel", "gather_full", "local_like", "local_optimizer_state",
           "gradient_sync", "to_float", "meta_copy", "materialize"]


def shard_transformer(model: nn.Module, params: Sequence[nn.Parameter], *, world_size: int,
                      reshard_after_forward: bool = True) -> list[nn.Parameter]:
    """Shard ``model`` across the ``world_size`` ranks of the default process group, block by block.

    ``fully_shard`` replaces every parameter object, so the trained ``params`` (from ``make_trainable``) are
    returned again as the new objects, in the same order: the optimizer then numbers them as in an unsharded run
    and its checkpoints line up.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # FSDP2 warns that a block returns a view (an in-place op on it would skip the backward all-gather); the
    # model's forward never modifies a block's output in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for p in params]
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world_size,))
    for block in model.transformer_blocks:  # type: ignore[union-attr]
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    named = dict(model.named_parameters())
    local, total = shard_numel(model)
    log.info("fsdp shard rank=%d local=%d total=%d (%d blocks + root sharded on %s, reshard after forward %s)",
             mesh.get_rank(), local, total, len(model.transformer_blocks), device.type,  # type: ignore[arg-type]
             reshard_after_forward)
    return [named[name] for name in order]


def is_sharded(model: nn.Module) -> bool:
    """True when ``model``'s parameters are FSDP2 shards."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_numel(model: nn.Module) -> tuple[int, int]:
    """(elements this rank holds, elements of the whole model) over ``model``'s parameters."""
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())
    return local, sum(p.numel() for p in model.parameters())


@torch.no_grad()
def gather_full(tree: Any, *, keep: bool) -> Any:
    """``tree`` (nested dicts / lists / tuples of tensors and plain values) with every tensor whole, on the CPU.

    A ``DTensor`` is gathered from all ranks, so every rank must call this with the same structure (states of
    one model and optimizer are). ``keep`` False (ranks other than 0) takes part in the gathers, drops the
    results and returns None.
    """
    def walk(value: Any) -> Any:
        if isinstance(value, DTensor):
            full = value.full_tensor()
            return full.detach().cpu() if keep else None
        if isinstance(value, torch.Tensor):
            return value.detach().cpu() if keep else None
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(walk(v) for v in value)
        return value

    out = walk(tree)
    return out if keep else None


def _local(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(like, DTensor) and isinstance(full, torch.Tensor) and tuple(full.shape) == tuple(like.shape):
        # every rank holds the full tensor (read from the checkpoint): each cuts its own slice, no communication
        return distribute_tensor(full.detach(), like.device_mesh, like.placements, src_data_rank=None)
    return full


def local_like(full: Mapping[str, Any], like: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``full`` with each tensor cut like the ``DTensor`` of the same name in ``like`` (others unchanged)."""
    return {name: _local(value, like[name]) if name in like else value for name, value in full.items()}


def local_optimizer_state(state: Mapping[str, Any], optimizer: Any) -> dict[str, Any]:
    """A full optimizer state dict (``optimizer.state_dict()`` of an unsharded run) cut to this rank's slices.

    State entries are numbered like the optimizer's parameters, group after group; a tensor of its parameter's
    full shape (Adam's moments) is sharded like it, anything else (step counters) is kept.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(isinstance(p, DTensor) for p in params):
        return dict(state)
    local = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        local[index] = {key: _local(value, param) for key, value in entry.items()}
    return {**state, "state": local}


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP2's ``no_sync``: with ``enabled`` False, backward keeps gradients local (gradient accumulation)."""
    if enabled or not hasattr(model, "set_requires_gradient_sync"):
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def to_float(value: torch.Tensor | float) -> float:
    """A scalar as a float, whether it is a plain tensor or a replicated ``DTensor`` (a sharded gradient norm)."""
    if isinstance(value, DTensor):
        value = value.full_tensor()
    return float(value)


def meta_copy(model: nn.Module) -> nn.Module:
    """``model``'s structure (classes, layer ops, adapters, config) with parameters on the meta device: no memory.

    Made before sharding; ``materialize`` fills it with gathered weights.
    """
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def materialize(skeleton: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """``skeleton`` (from ``meta_copy``) holding the full ``state`` (every tensor of the model)."""
    skeleton.load_state_dict(state, strict=True, assign=True)
    return skeleton
