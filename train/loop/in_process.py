"""Training a LoRA inside a host application, on a model the host owns, and handing the model back unchanged.

::

    from firered_train.loop.in_process import train_lora_in_process
    from firered_train.model.components import TrainComponents

    comps = TrainComponents(pipe.transformer, pipe.vae, pipe.encoder, pipe.scheduler_config, source="my model")
    result = train_lora_in_process(cfg, comps, on_step=report, cancel=poll)   # cfg.model.finetune == "lora"

The ComfyUI node (``nodes/train_lora.py``) trains on the transformer of a FIRERED_MODEL that other nodes share,
from inside ComfyUI's ``torch.inference_mode()``. ``Trainer(cfg, components=comps).run(...)`` runs here with:

* one process on the model's device through ``SingleProcess``, the part of ``accelerate.Accelerator`` the trainer
  uses: a host needs no accelerate (ComfyUI does not ship it) and gets no process-wide accelerate state;
* autograd back on (``inference_mode(False)`` + ``enable_grad``), whatever mode the caller is in;
* ordinary tensors in place of *inference tensors*: weights loaded under inference mode (every model a ComfyUI
  node loads) cannot be saved for backward, so each such parameter or buffer of the transformer is replaced by a
  copy with the same values, one at a time (the peak is one extra tensor). This is the one lasting change, and
  it is invisible to inference; tied parameters stay tied;
* the base frozen and untouched: only the adapters named ``model.LORA_NAME`` train (``make_trainable``);
* the model handed back as it came, on success, error or cancel: the trained adapter detached, every
  ``requires_grad`` flag, each module's train/eval mode and ``gradient_checkpointing`` restored;
* the host's random state untouched (the trainer reseeds the global RNG per step; that happens in a fork).

Public API: ``train_lora_in_process``, ``SingleProcess``, ``ordinary_tensors``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import torch
from torch import nn

from firered_core.config import ConfigError
from firered_core.lora import list_loras, remove_lora
from firered_core.progress import CancelFn

from ..config import TrainConfig
from ..model.components import LORA_NAME, TrainComponents
from .trainer import StepCallback, Trainer, TrainResult

log = logging.getLogger(__name__)

__all__ = ["train_lora_in_process", "SingleProcess", "ordinary_tensors"]


def train_lora_in_process(cfg: TrainConfig, components: TrainComponents, *, on_step: StepCallback | None = None,
                          cancel: CancelFn | None = None) -> TrainResult:
    """Train ``cfg`` (a LoRA run) on ``components`` in this process; see the module docstring."""
    if not cfg.is_lora:
        raise ConfigError("train_lora_in_process trains LoRAs only (model.finetune: lora): a full fine-tune would "
                          "change the host's weights")
    transformer = components.transformer
    if LORA_NAME in list_loras(transformer):
        raise ConfigError(f"the model already carries a LoRA named {LORA_NAME!r}; it would be mistaken for the "
                          "one being trained")
    device = _device_of(transformer)
    with torch.inference_mode(False), torch.enable_grad(), _host_rng(device), _handed_back(transformer):
        replaced = ordinary_tensors(transformer)
        if replaced:
            log.info("training: %d inference-mode tensors of the transformer replaced by ordinary copies", replaced)
        trainer = Trainer(cfg, accelerator=SingleProcess(device), components=components)
        return trainer.run(on_step=on_step, cancel=cancel)


class SingleProcess:
    """What the trainer asks of ``accelerate.Accelerator``, for one process on ``device``."""

    process_index, num_processes, is_main_process = 0, 1, True

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def prepare(self, *objects: Any) -> Any:
        # the model already lives on ``device``: nothing to wrap or move; one object back alone, as accelerate does
        return objects[0] if len(objects) == 1 else objects

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return tensor

    def wait_for_everyone(self) -> None:
        pass


def ordinary_tensors(module: nn.Module) -> int:
    """Replace every inference tensor among ``module``'s parameters and buffers by an ordinary copy; the count.

    Call outside inference mode (the copies must not be inference tensors themselves).
    """
    copies: dict[int, Any] = {}  # tied parameters: one copy, shared again
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in list(table.items()):
                if tensor is None or not tensor.is_inference():
                    continue
                if id(tensor) not in copies:
                    copy = tensor.clone()
                    if isinstance(tensor, nn.Parameter):
                        copy = nn.Parameter(copy, requires_grad=tensor.requires_grad)
                    copies[id(tensor)] = copy
                table[name] = copies[id(tensor)]
    return len(copies)


@contextlib.contextmanager
def _handed_back(transformer: nn.Module) -> Iterator[None]:
    """Restore what training changes on the module (see the module docstring) when the block ends."""
    # by name: ordinary_tensors swaps parameter objects, their names stay
    flags = {name: p.requires_grad for name, p in transformer.named_parameters()}
    modes = {name: m.training for name, m in transformer.named_modules()}
    checkpointing = getattr(transformer, "gradient_checkpointing", None)
    try:
        yield
    finally:
        if LORA_NAME in list_loras(transformer):
            remove_lora(transformer, LORA_NAME)
        for name, p in transformer.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))
        for name, m in transformer.named_modules():
            m.training = modes.get(name, m.training)
        if checkpointing is not None:
            transformer.gradient_checkpointing = checkpointing


@contextlib.contextmanager
def _host_rng(device: torch.device) -> Iterator[None]:
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    raise ConfigError("the model to train has no parameters")
