"""``DPOConfig``: the ``dpo`` section, read by runs with ``objective.kind: dpo`` (``firered_train.objectives.dpo``).

It lives with the other sections (the config layer sits below the objectives, which take it as their own config):
the three numbers of FireRed's asymmetric DPO loss, none of them published, and which network is the frozen
reference the losses are compared with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .coerce import field_error

__all__ = ["DPOConfig", "REFERENCES"]

REFERENCES = ("lora_disabled", "frozen_copy")


@dataclass(frozen=True)
class DPOConfig:
    """The three numbers of the asymmetric DPO loss and the reference. FireRed publishes none of the numbers."""

    # Strength of the preference term (inverse KL temperature). Diffusion-DPO used 2500 (SD 1.5) to 5000 (SDXL) on
    # per-sample MSE losses of the same kind; its released script also multiplies by 0.5, this formula does not.
    # Unknown for FireRed.
    beta: float = 2500.0
    # Winner-term amplification, >= 1 (1 = plain Diffusion-DPO). > 1 makes lowering the winner's loss count more
    # than raising the loser's: FireRed's answer to both losses rising together. Unknown for FireRed.
    omega: float = 1.0
    # The report's lambda: weight of a plain SFT loss on the winner, >= 0 (0 = off). Added with a plus sign (the
    # report's minus would push the winner's loss up). Unknown for FireRed.
    sft_weight: float = 0.0
    # The network the losses are measured against. "lora_disabled": the trained network with its adapters off
    # (LoRA runs: no second copy of the weights); "frozen_copy": a copy of the starting network taken before
    # training (full fine-tuning, at the cost of a second model in memory).
    reference: Literal["lora_disabled", "frozen_copy"] = "lora_disabled"

    def __post_init__(self) -> None:
        for name in ("beta", "omega", "sft_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise field_error(name, f"must be a finite number, got {value!r}")
        if not self.beta > 0:
            raise field_error("beta", f"must be > 0, got {self.beta!r}")
        if not self.omega >= 1:
            raise field_error("omega", f"must be >= 1 (1 = plain Diffusion-DPO), got {self.omega!r}")
        if not self.sft_weight >= 0:
            raise field_error("sft_weight", f"must be >= 0 (the SFT anchor on the winner), got {self.sft_weight!r}")
        if self.reference not in REFERENCES:
            raise field_error("reference", f"must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
