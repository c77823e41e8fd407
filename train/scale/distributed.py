"""Scale-out on Hugging Face accelerate: one command, one process or many.

``firered train CONFIG.yaml`` runs in one process with no launcher. The same command under ``accelerate launch``
runs on N processes::

    accelerate launch --multi_gpu --num_processes 8 -m firered_core train sft.yaml     # DDP, one GPU each
    accelerate launch --multi_gpu --num_processes 2 -m firered_core train tiny_sft     # no GPU: DDP over gloo
    accelerate launch --config_file fsdp.yaml -m firered_core train sft.yaml            # FSDP (file below)

On a machine without CUDA, ``--multi_gpu`` starts the processes with torchrun and accelerate falls back to CPU
processes joined by gloo (``accelerate launch --cpu`` alone starts a single process unless an MPI hostfile is
configured); ``torchrun --nproc_per_node N -m firered_core train ...`` works the same way.

What stays the same for any process count (and is tested against a single process):

* the data: every rank builds the bucket sampler with its rank and the world size; each step every rank draws the
  same bucket (same shapes) and takes its own disjoint shard of it. Global batch = per-rank batch x world size
  x ``schedule.grad_accumulation``; the per-rank batch follows from ``data.sampler.token_budget``;
* the noise and timesteps: drawn per sample from a generator seeded by (seed, step, sample), not per rank, so a
  sample gets the same noise wherever it lands;
* the update: DDP averages the ranks' gradients, which equals the gradient of the mean loss over the global batch
  (every sample of a step has the same shapes, so each counts equally).

DDP is created by ``accelerator.prepare`` with ``find_unused_parameters=True``: the last transformer block skips
its text MLP (the output covers image tokens only), so those parameters get no gradient, and the adapters on them
none either. The learning-rate scheduler is *not* prepared: accelerate would step it once per process.

FSDP (a 20B full fine-tune does not fit one GPU with AdamW). Pass accelerate a config such as::

    distributed_type: FSDP
    mixed_precision: "no"                                      # bf16 comes from the run's precision: bf16
    num_processes: 8
    fsdp_config:
      fsdp_version: 2
      fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
      fsdp_transformer_layer_cls_to_wrap: DualStreamBlock      # one shard unit per MMDiT block
      fsdp_reshard_after_forward: true                         # FULL_SHARD; false = SHARD_GRAD_OP
      fsdp_state_dict_type: FULL_STATE_DICT                    # checkpoints gather full weights on rank 0
      fsdp_use_orig_params: true                               # FSDP1 with LoRA needs it (FSDP2: always)
      fsdp_cpu_ram_efficient_loading: false

or build the same plugin in code with ``fsdp_plugin()``. HSDP (FireRed's later stages) is
``fsdp_sharding_strategy: HYBRID_SHARD`` with FSDP1. Gradient checkpointing stays the model's own switch
(``model.gradient_checkpointing``); do not also set accelerate's ``fsdp_activation_checkpointing``.

FSDP without CUDA. accelerate shards only accelerator processes (on CPU it joins them as ``MULTI_CPU`` and would
run DDP) and torch's FSDP1 refuses the CPU, but torch's FSDP2 shards CPU parameters over gloo. So on CPU processes
an FSDP launch (``cpu_fsdp``) makes the trainer shard the transformer itself with ``fully_shard`` (``sharding``)::

    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 -m firered_core train tiny_sft

The launch's ``fsdp_reshard_after_forward`` is honoured (``launch_reshard_after_forward``); wrapping is always one
unit per ``DualStreamBlock``; FSDP1 settings, CPU offload and mixed-precision policies do not apply there.

Public API: ``make_accelerator``, ``process_state``, ``fsdp_plugin``, ``fsdp_requested``, ``cpu_fsdp``,
``launch_reshard_after_forward``, ``sample_generator``, ``step_seed``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["make_accelerator", "process_state", "fsdp_plugin", "fsdp_requested", "cpu_fsdp",
           "launch_reshard_after_forward", "sample_generator", "step_seed", "BLOCK_CLASS"]

BLOCK_CLASS = "DualStreamBlock"  # the transformer's repeated block: the FSDP wrapping unit


def make_accelerator(*, cpu: bool | None = None, fsdp: Any = None) -> Any:
    """An ``accelerate.Accelerator`` for this run: process group, device, DDP with unused parameters allowed.

    Launch settings (process count, FSDP from ``accelerate launch --config_file``) come from the environment
    ``accelerate launch`` sets; without a launcher it is one process. ``cpu`` None means "when there is no CUDA"
    (accelerate only joins CPU processes into a gloo group when told it runs on the CPU). ``fsdp`` passes a
    plugin explicitly.

    Mixed precision is not delegated to accelerate (``mixed_precision="no"``): the trainer opens its own
    ``torch.autocast`` (``precision: bf16``), which is explicit in the loop and does not pin accelerate's
    process-wide state to one precision (a second run in the same process may use another).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if cpu is None:
        cpu = not torch.cuda.is_available()

    accelerator = Accelerator(mixed_precision="no", cpu=cpu, fsdp_plugin=fsdp,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              step_scheduler_with_optimizer=False)
    log.info("accelerate: %s, %d process(es), this is rank %d, device %s", accelerator.distributed_type,
             accelerator.num_processes, accelerator.process_index, accelerator.device)
    _check_joined(accelerator.num_processes)
    if cpu and fsdp_requested():
        if accelerator.num_processes > 1:
            log.info("FSDP on CPU processes: accelerate shards only accelerator devices, so the trainer shards the "
                     "transformer itself with torch's fully_shard (FSDP2) over gloo")
        else:
            log.info("FSDP was requested for a single process: nothing to shard")
    return accelerator


def leave_process_group() -> None:
    """Destroy the default process group, if this process joined one. A command that trained or cached under a
    launcher calls it before it returns: a gloo group left to the interpreter's shutdown can abort the process
    ("terminate called without an active exception") after all its work is done, which fails the launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def fsdp_requested() -> bool:
    """True when the launch asked for FSDP (``accelerate launch --use_fsdp``, a config file with
    ``distributed_type: FSDP``, or a plugin passed to accelerate: all set ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def cpu_fsdp(accelerator: Any) -> bool:
    """True when FSDP was asked for but accelerate runs several plain CPU processes: the trainer shards itself."""
    if not fsdp_requested():  # first: a host's single process (in_process.SingleProcess) has no accelerate
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.MULTI_CPU


def launch_reshard_after_forward() -> bool:
    """The launch's ``fsdp_reshard_after_forward`` (FSDP2 true/false, or FSDP1's names): free gathered weights
    after each block's forward (FULL_SHARD, default) or keep them until backward (SHARD_GRAD_OP)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    return value not in ("false", "0", "shard_grad_op", "no_reshard", "2", "3")


def process_state() -> Any:
    """``accelerate.PartialState`` (rank, world size, device, barrier) for work without a model to wrap."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    _check_joined(state.num_processes)
    return state


def _check_joined(joined: int) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if joined != launched:
        # every process would work alone, as rank 0, and they would overwrite each other's outputs
        raise RuntimeError(f"{launched} processes were launched but accelerate joined {joined}; check the launcher "
                           "settings (on a machine without CUDA use accelerate launch --multi_gpu, or torchrun)")


def fsdp_plugin(*, version: int = 2, reshard_after_forward: bool = True, cpu_offload: bool = False) -> Any:
    """The FSDP plugin the module docstring's config describes (wrapping each ``DualStreamBlock``)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    # FSDP2 always keeps the original parameters; FSDP1 needs to be told, or LoRA's mix of frozen and trainable
    # parameters in one flat parameter is refused. FSDP1 names the resharding choice as a sharding strategy.
    if version == 1:
        extra = {"use_orig_params": True,
                 "sharding_strategy": "FULL_SHARD" if reshard_after_forward else "SHARD_GRAD_OP"}
    else:
        extra = {"reshard_after_forward": reshard_after_forward}
    return FullyShardedDataParallelPlugin(
        fsdp_version=version, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=[BLOCK_CLASS],
        state_dict_type="FULL_STATE_DICT", cpu_offload=cpu_offload, **extra)


def step_seed(*key: object) -> int:
    """A 63-bit seed that depends only on ``key`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_generator(seed: int, step: int, sample: int, stream: str) -> torch.Generator:
    """A CPU generator for one sample of one step: the same on any rank and any process count."""
    return torch.Generator().manual_seed(step_seed(seed, stream, step, sample))
