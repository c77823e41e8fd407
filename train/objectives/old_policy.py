"""DiffusionNFT's old policy as a float32 copy of the trained weights: it samples, then trails the trained weights.

::

    old = OldPolicy(trained_params, cfg.nft)        # starts equal to the trained weights
    with old.swapped():                             # the model holds the old weights inside the block
        samples = sample_policy(model, ...)         # the sampling round, and the loss's v_old
    optimizer.step(); old.update(step)              # old <- d old + (1 - d) theta, d = old_policy_decay(updates)

The reference keeps the old policy as a second LoRA adapter; here it is an ``EMA`` of the trained tensors (LoRA
adapters, or every weight of a full fine-tune) whose decay follows ``nft.old_policy_decay`` of the number of
updates done so far instead of a constant: ``d = 0`` at first (the old policy is the current one, on-policy
sampling), then slower as the schedule rises. Swapping copies values into the live parameters and back (bitwise),
so one network serves the old and the trained policy; no second module is built. Its state (clock and float32
copy) is part of the trainer's checkpoint, so a resumed run samples exactly what the uninterrupted one did.

Public API: ``OldPolicy``.
"""

from __future__ import annotations

import torch

from ..config.nft_section import NFTConfig
from .ema import EMA, ParamSource
from .nft import old_policy_decay, update_old_policy

__all__ = ["OldPolicy"]


class OldPolicy(EMA):
    """The old policy of a DiffusionNFT run (see the module docstring)."""

    def __init__(self, params: ParamSource, config: NFTConfig, *, device: torch.device | str | None = None) -> None:
        # decay 0 / no warm-up only fill EMA's settings: current_decay is the NFT schedule's
        super().__init__(params, 0.0, device=device)
        self.config = config

    def current_decay(self) -> float:
        """The ``d`` of the next update: ``old_policy_decay`` after the updates done so far."""
        return old_policy_decay(self.n_updates, self.config)

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Move the old weights towards the trained ones after optimizer step ``step``; always updates."""
        update_old_policy(self.shadow.values(), (self.params[name] for name in self.shadow), self.current_decay())
        self.n_updates += 1
        return True
