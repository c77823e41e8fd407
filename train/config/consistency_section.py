"""``ConsistencyConfig``: the ``consistency`` section, the SFT stage's identity loss (``objectives.consistency``).

It lives with the other sections (the config layer sits below the objectives, which take it as their own config):
the loss's weight and noise cut-off (the report gives only ``sigma_max``), the side of the aligned face crop, the
user's face-feature network file and where the faces of each ground truth come from:

- ``manifest``: the record's own landmarks (JSONL ``target_landmarks``, docs/DATA_FORMAT.md); a record without
  them has no face and contributes 0;
- ``detect``: dlib's detector (the ``face`` extra) run on each ground truth the first time it is trained on;
- ``manifest_or_detect``: the manifest's landmarks where a record has them, the detector for the others.

The file itself is checked when a run starts (``loop.consistency_stage``), not here: a config may be written or
inspected on a machine that does not hold the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .coerce import field_error

__all__ = ["ConsistencyConfig", "LANDMARK_SOURCES"]

LANDMARK_SOURCES = ("manifest", "detect", "manifest_or_detect")


@dataclass(frozen=True)
class ConsistencyConfig:
    """Settings of the consistency loss; only ``sigma_max`` comes from the report."""

    # Off by default: the loss needs a face-recognition network the user supplies (see ``features_path``).
    enabled: bool = False
    # eta, the loss weight at sigma = 1 before the cut-off. Not published by FireRed: a setting to tune against the
    # flow loss (whose per-element MSE is ~1 at high noise); 0.1 keeps the term a correction, not the objective.
    eta: float = 0.1
    # Above this noise level x0_hat carries no identity, so the term is switched off (the report's 0.9).
    sigma_max: float = 0.9
    # Side of the aligned square crop fed to the feature network: 112 is what ArcFace-style networks are trained on.
    crop: int = 112
    # A .safetensors file of the frozen face-feature network (never a pickle); required when enabled. Its IResNet
    # depth and widths are read from the file's tensor shapes (r18 ... r100 all load).
    features_path: str | None = None
    # Where the ground truth's faces come from (module docstring).
    landmarks: Literal["manifest", "detect", "manifest_or_detect"] = "manifest"

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise field_error("enabled", f"must be true or false, got {self.enabled!r}")
        for name in ("eta", "sigma_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise field_error(name, f"must be a finite number, got {value!r}")
        if not self.eta >= 0:
            raise field_error("eta", f"must be >= 0 (0 turns the term off), got {self.eta!r}")
        if not 0 < self.sigma_max <= 1:
            raise field_error("sigma_max", f"must be in (0, 1] (a noise level), got {self.sigma_max!r}")
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 16 or self.crop % 16:
            raise field_error("crop", f"must be a positive multiple of 16 (the network halves it 4 times), "
                                      f"got {self.crop!r}")
        if self.enabled and not self.features_path:
            raise field_error("features_path", "must name the face-feature .safetensors file when enabled is true")
        if self.features_path and not self.features_path.endswith(".safetensors"):
            raise field_error("features_path", f"must be a .safetensors file (pickled checkpoints are never "
                                               f"loaded), got {self.features_path!r}")
        if self.landmarks not in LANDMARK_SOURCES:
            raise field_error("landmarks", f"must be one of {', '.join(LANDMARK_SOURCES)}, got {self.landmarks!r}")
