"""firered_core: FireRed-Image-Edit in pure PyTorch, usable without ComfyUI.

    from firered_core import FireRedEditPipeline
    pipe = FireRedEditPipeline.from_pretrained("path/to/FireRed-Image-Edit-1.1")   # diffusers folder or single files
    result = pipe.edit(["photo.png"], "make the sky pink", steps=40, true_cfg_scale=4.0, seed=43)
    result.image.save("out.png")

Layering: this package never imports ComfyUI, the plugin's ``nodes`` or ``train`` packages, diffusers or peft.
Names are resolved lazily so ``import firered_core`` stays cheap (the ComfyUI plugin imports it at start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FireRedEditPipeline": "firered_core.pipeline",
    "EditResult": "firered_core.pipeline",
    "FireRedTransformer": "firered_core.transformer",
    "FireRedVAE": "firered_core.vae",
    "load_components": "firered_core.loading",
    "WeightFileError": "firered_core.loading",
    "apply_lora": "firered_core.lora",
    "load_lora": "firered_core.lora",
    "save_lora": "firered_core.lora",
    "get_preset": "firered_core.config",
    "ConfigError": "firered_core.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'firered_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
