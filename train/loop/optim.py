"""Optimizer and learning-rate schedule of a run (``cfg.optim``).

Optimizers (``optim.optimizer``):

* ``adamw`` (default): ``torch.optim.AdamW`` with the report's betas (0.9, 0.999), weight decay 0.01 and eps.
  Two float32 moments per trained parameter: 8 bytes each, 160 GB for a full 20B fine-tune.
* ``adamw8bit``: bitsandbytes' ``AdamW8bit`` (block-wise 8-bit moments, ~2 bytes per parameter). bitsandbytes
  runs on CUDA only; asking for it without CUDA or without the package is a ``ConfigError`` that names the
  alternative below.
* ``adafactor``: ``torch.optim.Adafactor`` (in torch since 2.5), the low-memory choice that works on every
  device: no first moment and a factored second moment (one row and one column vector per matrix), so its state
  is a few percent of AdamW's. ``optim.lr`` and ``optim.weight_decay`` apply; the betas and eps do not (it uses
  its own decay schedule ``beta2_t = 1 - t^-0.8``). Expect to retune the learning rate when switching.

Schedule (``optim.lr_schedule`` after ``optim.warmup_steps`` of linear warm-up from 0): ``constant``, or
``cosine`` / ``linear`` decay to ``lr * min_lr_ratio`` at ``schedule.max_steps``. It is a ``LambdaLR`` whose
state is the step count, so resuming restores it exactly; the trainer steps it once per optimizer step (never
once per process, as accelerate's wrapper would).

Public API: ``build_optimizer``, ``build_lr_schedule``, ``lr_factor``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from typing import Iterable

import torch
from torch import nn

from firered_core.config import ConfigError

from ..config import OptimConfig

log = logging.getLogger(__name__)

__all__ = ["build_optimizer", "build_lr_schedule", "lr_factor"]


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.optimizer`` over ``params`` (see the module docstring)."""
    params = list(params)
    if not params:
        raise ConfigError("nothing to train: the model has no trainable parameters")
    if cfg.optimizer == "adamw":
        # foreach is the fast multi-tensor path on every device; the result equals the per-tensor loop
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 foreach=True)
    if cfg.optimizer == "adafactor":
        adafactor = getattr(torch.optim, "Adafactor", None)
        if adafactor is None:
            raise ConfigError(f"optim.optimizer: torch {torch.__version__} has no torch.optim.Adafactor (added in "
                              "2.5); upgrade torch or use adamw")
        return adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return _adamw_8bit(params, cfg, device)


def _adamw_8bit(params: list[nn.Parameter], cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    if device.type != "cuda":
        raise ConfigError(f"optim.optimizer: adamw8bit (bitsandbytes) needs a CUDA device, this run is on "
                          f"{device.type}; use adafactor for low optimizer memory on any device")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("optim.optimizer: adamw8bit needs the bitsandbytes package (pip install bitsandbytes); "
                          "or use adafactor (torch only)")
    import bitsandbytes as bnb

    return bnb.optim.AdamW8bit(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based: the update that makes step ``step + 1``)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps  # the first update already moves: a 0 lr step would be wasted
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay


def build_lr_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                      max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + ``cfg.lr_schedule`` as a ``LambdaLR`` (its state_dict resumes exactly)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
