"""Loading a diffusers-format model folder (the layout of FireRed's and Qwen-Image-Edit's official releases).

::

    FireRed-Image-Edit-1.1/
        model_index.json                      pipeline class and its components
        transformer/config.json               -> TransformerConfig
        transformer/diffusion_pytorch_model-0000K-of-0000N.safetensors + ...safetensors.index.json (or one file)
        vae/config.json + vae/diffusion_pytorch_model.safetensors         -> VAEConfig, FireRedVAE
        scheduler/scheduler_config.json       -> SchedulerConfig
        text_encoder/, tokenizer/, processor/ -> handed to firered_core.encoder

Usage::

    parts = load_diffusers_folder("FireRed-Image-Edit-1.1", dtype=torch.bfloat16, fp8=True, fp8_encoder=True)
    transformer, vae, encoder, scheduler_config = parts

Configs come from the config.json files (the source of truth for what the weights were trained with); the
weights must then fit them exactly (strict loading, all mismatches reported at once). Weight files are found by
content type, not guessed: a shard index if there is one, else the single ``.safetensors`` file of the
component; a component that only has pickle (``.bin``) weights is refused with a hint to convert it. A missing
``scheduler/`` falls back to FireRed's default schedule with a warning.

Public API: ``load_diffusers_folder``, ``load_transformer_dir``, ``load_vae_dir``, ``load_scheduler_config``,
``load_condition_encoder``, ``component_source``, ``read_json``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ..config import COMPACT_VAE_CLASS, CompactVAEConfig, ConfigError, SchedulerConfig, TransformerConfig, VAEConfig
from ..ops import DEFAULT_OPS
from ..transformer import FireRedTransformer
from ..vae import FireRedVAE
from .safetensors_io import WeightFileError, read_json
from .component_files import component_dir, component_source
from .stream import LoadedComponents, build_transformer, build_vae

log = logging.getLogger(__name__)

__all__ = ["load_diffusers_folder", "load_transformer_dir", "load_vae_dir", "load_scheduler_config",
           "load_condition_encoder", "component_source", "read_json"]

PathLike = str | os.PathLike

def _config(path: Path, cls: type, expected_class: str) -> Any:
    data = read_json(path)
    if cls is TransformerConfig and data.get("out_channels", 0) is None:
        data["out_channels"] = data.get("in_channels")  # diffusers' convention: None means "as in_channels"
    found = data.get("_class_name")
    if found is not None and found != expected_class:
        log.warning("%s: _class_name is %r, expected %r; loading anyway", path, found, expected_class)
    try:
        return cls.from_dict(data, source=str(path))
    except (ConfigError, TypeError) as e:
        raise WeightFileError(f"{path}: invalid config: {e}") from None


def load_transformer_dir(folder: PathLike, *, dtype: torch.dtype = torch.float32, fp8: bool = False,
                         map_blocks: bool = False,
                         device: torch.device | str | None = None,
                         ops: SimpleNamespace = DEFAULT_OPS) -> FireRedTransformer:
    """``folder/transformer`` as a ``FireRedTransformer`` (Linear weights in fp8 when ``fp8``)."""
    config = _config(component_dir(Path(folder), "transformer") / "config.json", TransformerConfig,
                     "QwenImageTransformer2DModel")
    with component_source(folder, "transformer") as source:
        return build_transformer(config, source, source_name=source.name, dtype=dtype, fp8=fp8, device=device,
                                 map_blocks=map_blocks, ops=ops)


def load_vae_dir(folder: PathLike, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 ops: SimpleNamespace = DEFAULT_OPS) -> FireRedVAE:
    """``folder/vae`` as a ``FireRedVAE`` (or a ``CompactVAE`` when its config names that class)."""
    path = component_dir(Path(folder), "vae") / "config.json"
    class_name = read_json(path).get("_class_name")
    config: VAEConfig | CompactVAEConfig
    if class_name == COMPACT_VAE_CLASS:
        config = _config(path, CompactVAEConfig, COMPACT_VAE_CLASS)
    else:
        config = _config(path, VAEConfig, "AutoencoderKLQwenImage")
    with component_source(folder, "vae") as source:
        return build_vae(config, source, source_name=source.name, dtype=dtype, device=device, ops=ops)


def load_scheduler_config(folder: PathLike) -> SchedulerConfig:
    """``folder/scheduler/scheduler_config.json``; FireRed's default schedule when the folder has none."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        log.warning("%s: not found; using FireRed's default flow-matching schedule", path)
        return SchedulerConfig()
    return _config(path, SchedulerConfig, "FlowMatchEulerDiscreteScheduler")


ENCODER_MARKER = "firered_encoder.json"  # text_encoder/ of a folder whose encoder installs as a package


def load_condition_encoder(folder: PathLike, dtype: torch.dtype = torch.float32, *,
                           fp8: bool | None = None) -> Any:
    """The Qwen2.5-VL condition encoder of a diffusers folder (text_encoder/, tokenizer/, processor/).

    ``firered_core.encoder`` owns that format; it is imported here, lazily, because it is large and not needed
    for the transformer/VAE-only uses of this package. ``fp8``: Linear weights stored as float8 (None: only when
    the folder's weights are fp8 already); small packaged encoders ignore it.
    """
    marker = Path(folder) / "text_encoder" / ENCODER_MARKER
    if marker.is_file():
        if fp8:
            log.warning("%s: fp8 storage is for the Qwen2.5-VL encoder; this small encoder stays in %s", marker,
                        dtype)
        return _packaged_encoder(marker, dtype)
    from ..encoder.qwen_vl import QwenVLConditionEncoder

    return QwenVLConditionEncoder.from_pretrained_dir(Path(folder), dtype=dtype, fp8=fp8)


def _packaged_encoder(marker: Path, dtype: torch.dtype) -> Any:
    """A condition encoder named by ``text_encoder/firered_encoder.json`` instead of stored in the folder.

    Small models (the embedded default) use a pretrained text encoder that installs as a Python package; the
    folder then records which one, e.g. ``{"kind": "minilm-package", "max_length": 64}``.
    """
    spec = read_json(marker)
    kind = spec.get("kind")
    if kind != "minilm-package":
        raise WeightFileError(f"{marker}: unknown condition encoder kind {kind!r} (known: 'minilm-package')")
    from ..encoder.minilm import MiniLMConditionEncoder

    return MiniLMConditionEncoder.from_package(max_length=int(spec.get("max_length", 128)), dtype=dtype)


def load_diffusers_folder(folder: PathLike, *, dtype: torch.dtype = torch.float32, fp8: bool = False,
                          map_blocks: bool = False,
                          device: torch.device | str | None = None, load_encoder: bool = True,
                          fp8_encoder: bool | None = None) -> LoadedComponents:
    """Every component of a diffusers folder; ``encoder`` is None when the folder has no ``text_encoder/``.
    ``fp8`` / ``fp8_encoder``: fp8 storage of the transformer's / the encoder's Linear weights."""
    root = Path(folder)
    if not root.is_dir():
        raise WeightFileError(f"{root}: folder not found")
    index = read_json(root / "model_index.json")
    log.info("%s: %s", root, index.get("_class_name", "pipeline of unknown class"))
    transformer = load_transformer_dir(root, dtype=dtype, fp8=fp8, device=device, map_blocks=map_blocks)
    vae = load_vae_dir(root, dtype=dtype, device=device)
    scheduler = load_scheduler_config(root)
    encoder = None
    if load_encoder and (root / "text_encoder").is_dir():
        encoder = load_condition_encoder(root, dtype=dtype, fp8=fp8_encoder)
    elif load_encoder:
        log.warning("%s: no text_encoder/ folder: the pipeline will have no condition encoder", root)
    return LoadedComponents(transformer, vae, encoder, scheduler)
