"""The weight files of one component folder of a diffusers model (``transformer/``, ``vae/``, ``text_encoder/``).

Weight files are found by content type, not guessed: a shard index if there is one, else the component's single
``.safetensors`` file; a component with only pickle (``.bin``) weights is refused with a hint to convert it.
Shared by the folder loader and the condition encoders, which load their own component.

Public API: ``component_dir``, ``component_source``, ``WEIGHTS_NAME``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .safetensors_io import PICKLE_SUFFIXES, WeightFileError, WeightSource, open_sharded, open_weights

__all__ = ["component_dir", "component_source", "WEIGHTS_NAME"]

PathLike = str | os.PathLike

# the weight file name diffusers gives a model component (shards add -0000K-of-0000N)
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"



def component_dir(folder: Path, component: str) -> Path:
    path = folder / component
    if not path.is_dir():
        raise WeightFileError(f"{folder}: no '{component}/' folder (a diffusers model folder needs one)")
    return path


def component_source(folder: PathLike, component: str) -> WeightSource:
    """The weights of ``folder/component``: the shard index if any, else its one ``.safetensors`` file."""
    path = component_dir(Path(folder), component)
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        preferred = path / f"{WEIGHTS_NAME}.index.json"
        return open_sharded(preferred if preferred in indexes else indexes[0])
    files = sorted(path.glob("*.safetensors"))
    if (path / WEIGHTS_NAME).is_file():
        return open_weights(path / WEIGHTS_NAME)
    if len(files) == 1:
        return open_weights(files[0])
    if len(files) > 1:
        raise WeightFileError(f"{path}: several .safetensors files ({', '.join(f.name for f in files)}) and no "
                              "*.safetensors.index.json saying how they fit together")
    pickles = [f.name for f in path.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise WeightFileError(f"{path}: only pickle weights ({', '.join(pickles)}), which are refused because "
                              "unpickling can run arbitrary code; convert them to .safetensors")
    raise WeightFileError(f"{path}: no .safetensors weights found")
