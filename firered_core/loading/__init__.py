"""Loading and saving FireRed weights.

One entry point covers every layout users have on disk::

    from firered_core.loading import load_components
    transformer, vae, encoder, scheduler_config = load_components("FireRed-Image-Edit-1.1", dtype=torch.bfloat16)
    parts = load_components(["FireRed-Image-Edit-1.1-transformer.safetensors", "qwen_image_vae.safetensors",
                             "qwen2.5vl-7b-bf16.safetensors"], dtype=torch.bfloat16, fp8=True, fp8_encoder=True)

A folder must be a diffusers folder (``model_index.json``); a list of files is sorted by content, never by name.
The transformer may be a GGUF file (ComfyUI-GGUF's layout, e.g. ``Qwen-Image-Edit-2509-Q4_K_M.gguf``): its weights
stay quantised in memory and are dequantised layer by layer at compute time.
The package is layered, each file one job:

==========================  =====================================================================================
``safetensors_io.py``       validated headers (pickles, truncation, bad JSON refused), one-tensor-at-a-time reads,
                            sharded indexes; ``WeightFileError``, the one exception type for weight problems
``stream.py``               meta-device build + streaming assignment with dtype/fp8 conversion and one combined
                            mismatch report; ``build_transformer``, ``build_vae``, ``LoadedComponents``
``detect.py``               what a file is and which config it has, from keys and shapes
``diffusers_folder.py``     diffusers folders (config.json + single or sharded weights, scheduler config)
``comfy_files.py``          ComfyUI single files (prefixes, 2511 marker, Wan VAE names)
``scaled_fp8.py``           scaled-fp8 files (both ComfyUI layouts): checks, dequantised reads, or the stored fp8
                            tensors with a ``ScaledFP8`` weight format, which ``fp8`` storage keeps as they are
``gguf_header.py``          a GGUF header walked with plain reads: truncation and damage found before parsing
``gguf_file.py``            GGUF transformer files: validation, ``GGUFSource``, quantised weights kept quantised
``mapped.py``               file-backed tensors (a memory map used in place) and handing their pages back
``save.py``                 atomic saving as a diffusers folder (optionally sharded) or ComfyUI single files
``model_defaults.py``       a model folder's ``defaults.json`` (steps, true CFG, area, keep_unedited)
==========================  =====================================================================================

Nothing downloads and nothing is unpickled: ``.ckpt/.pt/.pth/.bin`` and pickle/zip contents are refused. Saving a
model loaded from GGUF is refused (its quantised weights have no safetensors form here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .comfy_files import load_files, load_transformer_file, load_vae_file
from .detect import FileKind, classify, infer_transformer_config, infer_vae_config, is_diffusers_folder
from .diffusers_folder import load_diffusers_folder
from .gguf_file import GGUFSource, load_gguf_transformer, open_gguf
from .gguf_header import is_gguf_file
from .model_defaults import ModelDefaults, read_model_defaults
from .safetensors_io import (PICKLE_SUFFIXES, TensorInfo, WeightFileError, WeightSource, open_sharded,
                             open_weights, read_header, read_metadata)
from .save import save_comfy_transformer, save_comfy_vae, save_component_folder, save_diffusers_folder
from .stream import LoadedComponents, LoadReport, build_transformer, build_vae, load_into

__all__ = ["load_components", "LoadedComponents", "WeightFileError", "WeightSource", "TensorInfo",
           "PICKLE_SUFFIXES", "open_weights", "open_sharded", "read_header", "read_metadata", "load_into",
           "LoadReport", "build_transformer", "build_vae", "FileKind", "classify", "infer_transformer_config",
           "infer_vae_config", "is_diffusers_folder", "load_diffusers_folder", "load_files",
           "load_transformer_file", "load_vae_file", "save_component_folder", "save_diffusers_folder", "save_comfy_transformer",
           "save_comfy_vae", "GGUFSource", "open_gguf", "load_gguf_transformer", "is_gguf_file", "ModelDefaults",
           "read_model_defaults"]

PathLike = str | os.PathLike


def load_components(model: PathLike | Sequence[PathLike], *, dtype: torch.dtype = torch.float32, fp8: bool = False,
                    device: torch.device | str | None = None, load_encoder: bool = True,
                    map_blocks: bool = False, fp8_encoder: bool | None = None) -> LoadedComponents:
    """Transformer, VAE, condition encoder (or None) and scheduler config from a diffusers folder or single files.

    ``fp8`` stores the transformer's Linear weights as float8 (e4m3fn), upcast at compute time; a scaled-fp8
    transformer file then stays as stored (float8 + scales), otherwise it is dequantised to ``dtype``.
    ``fp8_encoder`` does the same for the condition encoder's Linear weights (language model and vision tower);
    its default None means "as the file is": fp8 when the encoder's weights are stored in fp8 (scaled or plain),
    ``dtype`` otherwise. ``device`` is where the transformer and VAE are placed (default CPU). ``map_blocks``
    leaves the transformer blocks' weights in the file (memory-mapped, read when used) wherever the file holds
    them in their storage dtype: for block offloading.
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.is_dir():
            if not is_diffusers_folder(path):
                raise WeightFileError(f"{path}: folder has no model_index.json, so it is not a diffusers model "
                                      "folder; pass the .safetensors files instead")
            return load_diffusers_folder(path, dtype=dtype, fp8=fp8, device=device, load_encoder=load_encoder,
                                         map_blocks=map_blocks, fp8_encoder=fp8_encoder)
        if not path.exists():
            raise WeightFileError(f"{path}: not found")
        model = [path]
    paths = [Path(p) for p in model]
    folders = [p for p in paths if p.is_dir()]
    if folders:
        raise WeightFileError(f"{folders[0]}: a folder cannot be combined with other model files")
    return load_files(paths, dtype=dtype, fp8=fp8, device=device, load_encoder=load_encoder, map_blocks=map_blocks,
                      fp8_encoder=fp8_encoder)
