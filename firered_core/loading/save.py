"""Saving FireRed models: diffusers folders (optionally sharded) and ComfyUI single files, written atomically.

::

    save_diffusers_folder(transformer, vae, scheduler_config, "out/FireRed-finetuned", max_shard_bytes=5 * 2**30)
    save_comfy_transformer(transformer, "FireRed-finetuned.safetensors")              # bare keys, as ComfyUI's
    save_comfy_transformer(transformer, "checkpoint.safetensors", prefix="model.diffusion_model.")
    save_comfy_vae(vae, "qwen_image_vae.safetensors")                                  # Wan key names

* Folders get ``model_index.json`` and per-component ``config.json`` files that diffusers' own
  ``from_pretrained`` accepts (the tests load them with diffusers), ``diffusion_pytorch_model.safetensors`` or,
  with ``max_shard_bytes``, numbered shards plus ``diffusion_pytorch_model.safetensors.index.json``. Components the
  saver does not have (text encoder, tokenizer, processor) are declared as null, which diffusers understands.
* Nothing is half-written: a folder is assembled under a hidden temporary name next to the target and renamed
  into place; a file is written to a temporary file and ``os.replace``-d. An existing target is never
  overwritten unless ``overwrite=True`` (then it is replaced only once the new one is complete).
* Tensors are streamed to disk one at a time (a GPU model is copied to the CPU one tensor at a time), so saving
  needs no second copy of the weights in RAM. Weights keep their storage dtype (bf16, fp8...).
* Every file records its component config as JSON in the safetensors metadata (``firered.config``), so our
  loader restores settings that shapes cannot reveal (RoPE split, latent statistics). Other tools ignore it.
* Unmerged LoRA adapters (``ops.Linear.adapters``) are not part of the base model's format: they are left out
  with a warning; merge them first (``firered_core.lora.merge_lora``) to bake them in.
* A model loaded from a GGUF file (GGML-quantised weights, ``firered_core.quant``) is refused before anything is
  written: its weights have no safetensors form here.

Public API: ``save_diffusers_folder``, ``save_comfy_transformer``, ``save_comfy_vae``, ``write_safetensors``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..config import SchedulerConfig
from .comfy_files import diffusers_to_wan_vae_keys
from .component_files import WEIGHTS_NAME
from .detect import CONFIG_METADATA_KEY, ZERO_COND_T_MARKER
from .safetensors_io import TORCH_TO_SAFETENSORS, WeightFileError

log = logging.getLogger(__name__)

__all__ = ["swap_into_place", "save_component_folder", "save_diffusers_folder", "save_comfy_transformer",
           "save_comfy_vae", "write_safetensors"]

PathLike = str | os.PathLike
# the diffusers release whose config format these files follow
DIFFUSERS_VERSION = "0.36.0"
PIPELINE_CLASS = "QwenImageEditPlusPipeline"


# ---------------------------------------------------------------------------------------------------------------
# One safetensors file
# ---------------------------------------------------------------------------------------------------------------


def _header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, path: Path) -> bytes:
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, t in tensors.items():
        if t.is_meta:
            raise WeightFileError(f"{path}: tensor '{key}' is on the meta device (the model was never loaded)")
        if t.dtype not in TORCH_TO_SAFETENSORS:
            raise WeightFileError(f"{path}: tensor '{key}' has dtype {t.dtype}, which safetensors cannot store")
        size = t.numel() * t.element_size()
        entries[key] = {"dtype": TORCH_TO_SAFETENSORS[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes so the data is aligned
    return len(raw).to_bytes(8, "little") + raw


def _write_tensor(f, t: torch.Tensor) -> None:
    if t.numel() == 0:
        return
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if sys.byteorder != "little" and t.element_size() > 1:
        raise WeightFileError("writing safetensors on a big-endian machine is not supported")
    f.write(t.view(torch.uint8).numpy().data)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)


def write_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor], *,
                      metadata: Mapping[str, str] | None = None, overwrite: bool = False) -> int:
    """Write ``tensors`` to ``path`` one at a time through a temporary file; returns the bytes of tensor data."""
    path = Path(path)
    _check_target(path, overwrite)
    header = _header(tensors, metadata, path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            for t in tensors.values():
                _write_tensor(f, t)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(t.numel() * t.element_size() for t in tensors.values())


# ---------------------------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------------------------


def _check_not_quantised(model: nn.Module) -> None:
    """Refuse a model holding weights in a quantised format (GGUF blocks, scaled fp8): these files cannot record it."""
    held = [(f"{n}.{leaf}" if n else leaf, fmt) for n, m in model.named_modules() for leaf in ("weight", "bias")
            if (fmt := getattr(m, f"{leaf}_format", None)) is not None]
    if held:
        raise WeightFileError(f"{type(model).__name__}: {len(held)} weights are held in a quantised format (e.g. "
                              f"'{held[0][0]}': {held[0][1]!r}) that these files cannot record; save the model "
                              "loaded from unquantised weights (safetensors or a diffusers folder, without fp8 "
                              "storage of scaled files) instead")


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors (no unmerged adapters), without copies; refused when some are held quantised."""
    _check_not_quantised(model)
    state = {k: v.detach() for k, v in model.state_dict(keep_vars=True).items()}
    adapters = [k for k in state if ".adapters." in k]
    if adapters:
        log.warning("%s: %d unmerged LoRA adapter tensors are not saved; merge the LoRA first to keep it",
                    type(model).__name__, len(adapters))
    return {k: v for k, v in state.items() if ".adapters." not in k}


def _config_metadata(model: nn.Module) -> dict[str, str]:
    return {"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}  # type: ignore[union-attr]


def _shards(state: Mapping[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    """Split in state-dict order so no shard exceeds ``max_bytes`` (a bigger tensor gets a shard of its own)."""
    if max_bytes is None:
        return [dict(state)]
    if max_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_bytes}")
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in state.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    return shards


def _write_component(folder: Path, model: nn.Module, max_shard_bytes: int | None) -> None:
    folder.mkdir()
    config = {**model.config.to_dict(), "_diffusers_version": DIFFUSERS_VERSION}  # type: ignore[union-attr]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = _base_state(model)
    shards = _shards(state, max_shard_bytes)
    metadata = _config_metadata(model)
    if len(shards) == 1:
        write_safetensors(folder / WEIGHTS_NAME, shards[0], metadata=metadata)
        return
    stem = WEIGHTS_NAME.removesuffix(".safetensors")
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(folder / name, shard, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{WEIGHTS_NAME}.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _model_index() -> dict[str, object]:
    return {"_class_name": PIPELINE_CLASS, "_diffusers_version": DIFFUSERS_VERSION,
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "transformer": ["diffusers", "QwenImageTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKLQwenImage"],
            "text_encoder": [None, None], "tokenizer": [None, None], "processor": [None, None]}


def swap_into_place(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` to ``folder``; an existing ``folder`` is removed only after the swap."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old")
        folder.rename(old)
    tmp.rename(folder)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def save_component_folder(model: nn.Module, folder: PathLike, *, overwrite: bool = False) -> Path:
    """One component (e.g. a VAE) as a diffusers ``config.json`` + safetensors folder, written atomically."""
    folder = Path(folder)
    _check_target(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.partial")
    staging.mkdir()
    try:
        _write_component(staging / "component", model, None)
        swap_into_place(staging / "component", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("saved %s folder %s", type(model).__name__, folder)
    return folder


def save_diffusers_folder(transformer: nn.Module, vae: nn.Module, scheduler_config: SchedulerConfig,
                          folder: PathLike, *, max_shard_bytes: int | None = None, overwrite: bool = False) -> Path:
    """Write a diffusers-format folder with transformer/, vae/, scheduler/ and model_index.json; returns it."""
    folder = Path(folder)
    _check_target(folder, overwrite)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        (tmp / "model_index.json").write_text(json.dumps(_model_index(), indent=2) + "\n", encoding="utf-8")
        _write_component(tmp / "transformer", transformer, max_shard_bytes)
        _write_component(tmp / "vae", vae, None)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({**scheduler_config.to_dict(), "_diffusers_version": DIFFUSERS_VERSION}, indent=2) + "\n",
            encoding="utf-8")
        swap_into_place(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("saved diffusers folder %s", folder)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI single files
# ---------------------------------------------------------------------------------------------------------------


def save_comfy_transformer(transformer: nn.Module, path: PathLike, *, prefix: str = "",
                           overwrite: bool = False) -> Path:
    """The transformer as one ComfyUI file: diffusers' key names under ``prefix`` ('' or 'model.diffusion_model.').

    A ``zero_cond_t`` model also gets ComfyUI's ``__index_timestep_zero__`` marker, so ComfyUI treats it as the
    Qwen-Image-Edit-2511 family as well.
    """
    state = {prefix + k: v for k, v in _base_state(transformer).items()}
    if getattr(transformer.config, "zero_cond_t", False):
        state[prefix + ZERO_COND_T_MARKER] = torch.empty(0)
    write_safetensors(path, state, metadata=_config_metadata(transformer), overwrite=overwrite)
    return Path(path)


def save_comfy_vae(vae: nn.Module, path: PathLike, *, overwrite: bool = False) -> Path:
    """The VAE as one ComfyUI file, in the Wan-2.1 key names ComfyUI's VAE loader expects."""
    state = _base_state(vae)
    names = diffusers_to_wan_vae_keys(list(state))
    write_safetensors(path, {names[k]: v for k, v in state.items()}, metadata=_config_metadata(vae),
                      overwrite=overwrite)
    return Path(path)
