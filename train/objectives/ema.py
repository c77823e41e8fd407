"""An exponential moving average of the trained weights, kept in float32, swappable in for validation.

::

    ema = EMA(model, decay=0.9999, warmup=2 / 3, update_every=1)   # trainable parameters only (LoRA adapters)
    ema = EMA.from_config(model, cfg.ema)                          # the same from a training config's ``ema``
    ...
    optimizer.step(); ema.update(step)                             # step = optimizer steps done, 1-based
    with ema.swapped():                                            # or store(); copy_to(); ...; restore()
        validate(model)                                            # the model now holds the EMA weights
    checkpoint["ema"] = ema.state_dict()                           # exact: resume is bitwise

The average. Every ``update_every`` optimizer steps, ``shadow <- d shadow + (1 - d) param`` for each tracked
parameter. ``d`` is ``decay`` applied per update (so the averaging horizon is about ``update_every / (1 - decay)``
steps). Until ``start_step`` the shadow is a plain copy of the weights, so averaging starts from trained rather
than initial weights.

Warm-up (``warmup``, optional): a power schedule in the number ``n`` of averaging updates done so far,
``d_n = min(decay, 1 - (1 + n / inv_gamma) ** -warmup)``. ``d_0 = 0`` copies the weights, and early updates average
over a horizon that grows with the run instead of dragging the first random-ish weights along for 1 / (1 - decay)
steps. ``warmup = 2/3`` reaches ``d = 0.999`` after about 31K updates and ``0.9999`` after about 1M (long runs);
``3/4`` reaches them after about 10K and 215K (shorter runs). Without warm-up ``d = decay`` from the first update.
This is the schedule of Karras et al.'s EMA warm-up as used by diffusers' ``EMAModel(use_ema_warmup=True)``.

Precision. The shadow is float32 whatever the parameters are (bf16 weights move by less than bf16 can resolve
at decay 0.9999; the average must not be rounded back every step). ``copy_to`` casts to the parameter's dtype.
``store`` keeps the current weights in their own dtype, so ``restore`` puts them back bit for bit.

What is tracked. By default only parameters with ``requires_grad`` (LoRA adapters, or the trained part of a
partial fine-tune): frozen weights never change, averaging them would only double their memory. Parameters are
tracked by name (a module's ``named_parameters``, a ``{name: param}`` mapping, or "0", "1", ... for a plain
list), and checkpoints are checked against those names on load.

``state_dict`` holds the shadow tensors themselves (as ``nn.Module.state_dict`` does, no copy: a 20B shadow
cannot be duplicated on the GPU); serialise it before the next ``update``.

Public API: ``EMA`` (configured by ``config.sections.EMAConfig``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..config.sections import EMAConfig

__all__ = ["EMA"]

log = logging.getLogger(__name__)

ParamSource = nn.Module | Mapping[str, nn.Parameter] | Iterable[nn.Parameter]


def _named(source: ParamSource, trainable_only: bool) -> dict[str, nn.Parameter]:
    if isinstance(source, nn.Module):
        named = dict(source.named_parameters())
    elif isinstance(source, Mapping):
        named = dict(source)
    else:
        named = {str(i): p for i, p in enumerate(source)}
    if trainable_only:
        named = {name: p for name, p in named.items() if p.requires_grad}
    if not named:
        raise ValueError("EMA: no parameters to track (nothing requires grad? pass trainable_only=False for all)")
    return named


class EMA:
    """Float32 moving average of named parameters (see the module docstring)."""

    def __init__(self, params: ParamSource, decay: float = 0.9999, *, warmup: float | None = None,
                 inv_gamma: float = 1.0, update_every: int = 1, start_step: int = 0, trainable_only: bool = True,
                 device: torch.device | str | None = None) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA: decay must lie in [0, 1), got {decay!r}")
        if warmup is not None and not (math.isfinite(warmup) and warmup > 0):
            raise ValueError(f"EMA: warmup (the schedule's power) must be positive or None, got {warmup!r}")
        if not inv_gamma > 0:
            raise ValueError(f"EMA: inv_gamma must be positive, got {inv_gamma!r}")
        if update_every < 1 or start_step < 0:
            raise ValueError(f"EMA: need update_every >= 1 and start_step >= 0, got {update_every}, {start_step}")
        self.decay, self.warmup, self.inv_gamma = decay, warmup, inv_gamma
        self.update_every, self.start_step = update_every, start_step
        self.params = _named(params, trainable_only)
        self.shadow = {name: p.detach().to(device=device or p.device, dtype=torch.float32, copy=True)
                       for name, p in self.params.items()}
        self.n_updates = 0  # averaging updates done (the warm-up's clock); copies before start_step do not count
        self._stored: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, params: ParamSource, config: EMAConfig, *,
                    device: torch.device | str | None = None) -> "EMA":
        """The EMA a training config's ``ema`` section describes (``config.enabled`` is the caller's to check)."""
        return cls(params, config.decay, warmup=config.warmup, inv_gamma=config.inv_gamma,
                   update_every=config.update_every, start_step=config.start_step, device=device)

    # ----------------------------------------------------------------------------------- averaging

    def current_decay(self) -> float:
        """The ``d`` the next averaging update uses."""
        if self.warmup is None:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + self.n_updates / self.inv_gamma) ** -self.warmup)

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Fold the current weights in after optimizer step ``step`` (1-based); False if this step is skipped."""
        if step % self.update_every:
            return False
        if step <= self.start_step:
            for name, p in self.params.items():
                self.shadow[name].copy_(p.detach())
            return True
        weight = 1.0 - self.current_decay()
        for name, p in self.params.items():
            shadow = self.shadow[name]
            shadow.lerp_(p.detach().to(device=shadow.device, dtype=torch.float32), weight)
        self.n_updates += 1
        return True

    # ----------------------------------------------------------------------------------- swapping

    def _targets(self, model: nn.Module | None) -> dict[str, nn.Parameter]:
        if model is None:
            return self.params
        available = dict(model.named_parameters())
        missing = sorted(set(self.shadow) - set(available))
        if missing:
            raise KeyError(f"EMA.copy_to: the model has no parameters named {missing[:5]}"
                           f"{' ...' if len(missing) > 5 else ''} (a wrapped model? pass the unwrapped one)")
        return {name: available[name] for name in self.shadow}

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the average into the tracked parameters, or into ``model``'s parameters of the same names."""
        for name, p in self._targets(model).items():
            p.copy_(self.shadow[name])  # copy_ casts float32 -> the parameter's dtype and device

    @torch.no_grad()
    def store(self) -> None:
        """Keep a copy of the tracked parameters' current values (their own dtype) for ``restore``."""
        self._stored = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the values saved by ``store`` (bitwise) and drop the copy."""
        if self._stored is None:
            raise RuntimeError("EMA.restore: nothing stored (call store() first)")
        for name, p in self.params.items():
            p.copy_(self._stored[name])
        self._stored = None

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The tracked parameters hold the average inside the block and their own values again after it."""
        self.store()
        try:
            self.copy_to()
            yield
        finally:
            self.restore()

    # ----------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Settings, clock and shadow (the live tensors, see the module docstring)."""
        return {"decay": self.decay, "warmup": self.warmup, "inv_gamma": self.inv_gamma,
                "update_every": self.update_every, "start_step": self.start_step, "n_updates": self.n_updates,
                "shadow": dict(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the shadow and the clock exactly; names and shapes must match the tracked parameters."""
        shadow: Mapping[str, torch.Tensor] = state["shadow"]
        if set(shadow) != set(self.shadow):
            extra, missing = sorted(set(shadow) - set(self.shadow)), sorted(set(self.shadow) - set(shadow))
            raise ValueError(f"EMA state does not match the tracked parameters (another LoRA / fine-tune "
                             f"setting?): unexpected {extra[:5]}, missing {missing[:5]}")
        for name, value in shadow.items():
            if tuple(value.shape) != tuple(self.shadow[name].shape):
                raise ValueError(f"EMA state: {name} has shape {tuple(value.shape)}, the parameter "
                                 f"{tuple(self.shadow[name].shape)}")
        changed = [k for k in ("decay", "warmup", "inv_gamma", "update_every", "start_step")
                   if k in state and state[k] != getattr(self, k)]
        if changed:
            # the run's configuration wins: changing the decay on resume is legitimate, just not bitwise
            log.warning("EMA: resuming with settings different from the checkpoint's: %s",
                        ", ".join(f"{k} {state[k]!r} -> {getattr(self, k)!r}" for k in changed))
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.n_updates = int(state["n_updates"])
