"""``defaults.json``: the sampling settings a model folder was tuned for, beside its ``model_index.json``.

diffusers keeps a scheduler's settings in ``scheduler/scheduler_config.json``; a folder written by ``firered
export-default`` also says how it wants to be sampled when a call does not::

    {"steps": 10, "true_cfg_scale": 1.0, "area": 4096, "keep_unedited": true}

==================  ===========================================================================================
``steps``           sampling steps (an integer >= 1)
``true_cfg_scale``  true CFG scale (a finite number >= 0; <= 1 turns true CFG off)
``area``            output and reference area in pixels, the resolution the model was trained at (0: unchanged)
``keep_unedited``   keep Picture 1's own pixels outside the edited area: true, false, or an object of
                    ``PreserveConfig`` fields (``firered_core.preserve``)
==================  ===========================================================================================

Older folders name ``keep_unedited`` ``preserve_unedited``; it is read with the same meaning. The sampler (Euler
or stochastic steps) is not here: the scheduler config's ``stochastic_sampling`` holds it, where diffusers reads it
too. Unknown keys are logged by name and skipped, as for config.json files. A folder without the file, a single
weights file or a list of files has no defaults (``ModelDefaults()``, which changes nothing).

``ModelDefaults.to_json`` is what ``firered export-default`` writes, so the writer and this reader share one
definition of the keys.

Public API: ``ModelDefaults``, ``read_model_defaults``, ``DEFAULTS_FILE``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..config import ConfigError
from ..preserve import PreserveConfig
from .safetensors_io import read_json

log = logging.getLogger(__name__)

__all__ = ["ModelDefaults", "read_model_defaults", "DEFAULTS_FILE"]

DEFAULTS_FILE = "defaults.json"
KEYS = ("steps", "true_cfg_scale", "area", "keep_unedited")
OLD_KEYS = {"preserve_unedited": "keep_unedited"}  # names older folders use -> the name they mean


@dataclass(frozen=True)
class ModelDefaults:
    """What a model folder's ``defaults.json`` says; None (and area 0) means the pipeline's own setting."""

    steps: int | None = None  # sampling steps when a call gives none
    true_cfg_scale: float | None = None  # true CFG scale when a call gives none
    area: int = 0  # output and reference pixels (the trained resolution); 0: the pipeline's 1 MP
    keep_unedited: PreserveConfig | None = None  # None: off, as in the reference pipeline

    def __post_init__(self) -> None:
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")
        cfg = self.true_cfg_scale
        if cfg is not None and (isinstance(cfg, bool) or not isinstance(cfg, (int, float))
                                or not math.isfinite(cfg) or cfg < 0):
            raise ConfigError(f"true_cfg_scale must be a finite number >= 0, got {cfg!r}")
        if cfg is not None:
            object.__setattr__(self, "true_cfg_scale", float(cfg))  # JSON's 1 and 1.0 are the same scale
        if isinstance(self.area, bool) or not isinstance(self.area, int) or self.area < 0:
            raise ConfigError(f"area must be an integer >= 0 pixels, got {self.area!r}")
        if self.keep_unedited is not None and not isinstance(self.keep_unedited, PreserveConfig):
            raise ConfigError(f"keep_unedited must be None or a PreserveConfig, got "
                              f"{type(self.keep_unedited).__name__}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = DEFAULTS_FILE) -> "ModelDefaults":
        """The settings of a parsed ``defaults.json``; errors name ``source`` and the key."""
        values = _renamed(data, source)
        unknown = sorted(k for k in values if k not in KEYS)
        if unknown:
            log.warning("%s: ignoring keys this version does not know: %s (known: %s)", source,
                        ", ".join(unknown), ", ".join(KEYS))
        try:
            return cls(steps=values.get("steps"), true_cfg_scale=values.get("true_cfg_scale"),
                       area=values.get("area", 0), keep_unedited=_keep_unedited(values.get("keep_unedited", False)))
        except (ConfigError, ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``from_dict`` reads back: unset settings are left out, ``keep_unedited`` with the
        default ``PreserveConfig`` is ``true``."""
        out: dict[str, Any] = {}
        if self.steps is not None:
            out["steps"] = self.steps
        if self.true_cfg_scale is not None:
            out["true_cfg_scale"] = self.true_cfg_scale
        if self.area:
            out["area"] = self.area
        if self.keep_unedited is not None:
            custom = self.keep_unedited != PreserveConfig()
            out["keep_unedited"] = dataclasses.asdict(self.keep_unedited) if custom else True
        return out

    def to_json(self) -> str:
        """The text of a ``defaults.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def read_model_defaults(source: object) -> ModelDefaults:
    """The ``defaults.json`` of model folder ``source``; ``ModelDefaults()`` for a folder without one or any
    other model source (a weights file, a list of component files)."""
    if not isinstance(source, (str, os.PathLike)) or not Path(source).is_dir():
        return ModelDefaults()
    path = Path(source) / DEFAULTS_FILE
    if not path.is_file():
        return ModelDefaults()
    return ModelDefaults.from_dict(read_json(path), str(path))


def _renamed(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``data`` with the old key names replaced by the current ones; both names at once is an error."""
    values = dict(data)
    for old, new in OLD_KEYS.items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(f"{source}: {old!r} is the old name of {new!r}; give only {new!r}")
        log.info("%s: reading %r as %r (its old name)", source, old, new)
        values[new] = values.pop(old)
    return values


def _keep_unedited(value: Any) -> PreserveConfig | None:
    """``keep_unedited`` of the file: true (the default ``PreserveConfig``), false, or an object of its fields."""
    if isinstance(value, Mapping):
        try:
            return PreserveConfig(**value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"keep_unedited: {exc}") from None
    if isinstance(value, bool):
        return PreserveConfig() if value else None
    raise ConfigError(f"keep_unedited must be true, false or an object of PreserveConfig fields, got {value!r}")
