"""The settings of the layout-aware OCR reward (``ocr_layout``), in one typed, validated dataclass.

FireRed's report gives the shape of the reward but none of its weights, its gate threshold or how the layout sum
is normalised: every default here is this project's choice, picked so that on rendered signs the order is
right text in place > right text oversized or moved > one wrong letter in place > wrong word > no text
(tests/core/test_rewards_ocr.py measures it on the real OCR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LayoutRewardConfig", "GATE_MODES", "LAYOUT_NORMS"]

GATE_MODES = ("smooth", "hard")
LAYOUT_NORMS = ("sum", "mean")


@dataclass(frozen=True)
class LayoutRewardConfig:
    """Weights and tolerances of the reward; see ``ocr_layout`` for the formula they enter."""

    # text first: with w_text > w_layout and the gate below, the right text anywhere beats a wrong letter in place
    w_text: float = 0.6
    w_layout: float = 0.4  # weight of the character layout term, opened by the gate
    # text accuracy at which the gate starts to open: 0.8 keeps a one-letter error in a five-letter word at zero
    gate: float = 0.8
    # "smooth": G = clip((T - gate) / (1 - gate), 0, 1), a usable RL signal near the threshold;
    # "hard": G = 1 when T >= gate, else 0 (the report's wording, "only when the text is roughly right")
    gate_mode: Literal["smooth", "hard"] = "smooth"
    # "sum": L = sum_i e^-d_i e^-ds_i / max(|s_tgt|, |s_pred|), every missing or extra character costs credit;
    # "mean": L = min(1, |s_pred| / |s_tgt|) * mean_i e^-d_i e^-ds_i (the report's length factor, capped at 1)
    layout_norm: Literal["sum", "mean"] = "sum"
    # centre distance that is free, in reference glyph heights: the reference sets the new characters at the old
    # text's even pitch, a proportional font does not (a W is wider than an L), so a new word drifts by a fraction
    pos_tolerance: float = 0.5
    tau_pos: float = 1.0  # centre distance beyond the tolerance, in reference glyph heights, that costs a factor e
    size_tolerance: float = 0.15  # growth that is free: detector boxes jitter with ascenders and descenders
    tau_size: float = 0.3  # log-growth beyond the tolerance that costs a factor e (x2 -> 0.16, x3 -> 0.04)
    min_source_match: float = 0.5  # old-text accuracy a source line needs to be taken as the edited line
    ignore_case: bool = True  # OCR confuses o/O, s/S, c/C in many fonts
    ignore_spaces: bool = True  # OCR inserts and drops spaces; Chinese has none (characters never count spaces)

    def __post_init__(self) -> None:
        if self.w_text < 0 or self.w_layout < 0 or self.w_text + self.w_layout <= 0:
            raise ValueError(f"w_text and w_layout must be >= 0 and not both 0, got {self.w_text}, {self.w_layout}")
        if not 0 <= self.gate < 1:
            raise ValueError(f"gate must be in [0, 1), got {self.gate}")
        if self.gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if self.layout_norm not in LAYOUT_NORMS:
            raise ValueError(f"layout_norm must be one of {LAYOUT_NORMS}, got {self.layout_norm!r}")
        for name in ("tau_pos", "tau_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("size_tolerance", "pos_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_source_match <= 1:
            raise ValueError(f"min_source_match must be in [0, 1], got {self.min_source_match}")

    def gate_value(self, text: float) -> float:
        """G(text): how far the layout term is opened by a text accuracy ``text`` in [0, 1]."""
        if self.gate_mode == "hard":
            return 1.0 if text >= self.gate else 0.0
        return min(max((text - self.gate) / (1.0 - self.gate), 0.0), 1.0)
