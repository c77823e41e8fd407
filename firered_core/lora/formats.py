"""LoRA files of the Qwen-Image family, read into one representation and written back in three layouts.

Every LoRA in the wild for this family is the same thing - per Linear layer a ``down`` matrix ``[rank, in]``, an
``up`` matrix ``[out, rank]`` and optionally an ``alpha`` (the delta is ``alpha / rank * up @ down``) - spelled in
different key names. ``parse_lora_state_dict`` turns any of those spellings into ``LoRAEntry`` objects; which
layer an entry belongs to is decided later against the model's real module names (``resolve``), because kohya
names flatten dots to underscores and module names contain underscores themselves (``to_add_out``).

Understood key spellings (prefix x layer path x suffix, freely combined; one file may mix them):

==================  ============================================================  ===========================
layout              example                                                       written by
==================  ============================================================  ===========================
diffusers / PEFT    ``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``  diffusers, PEFT trainers
                    (also ``.lora_A.default.weight``, ``base_model.model.``)
ComfyUI             ``diffusion_model.<path>.lora_down.weight`` + ``.alpha``      ComfyUI's trainer, musubi
kohya               ``lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight`` kohya-style tools
                    (also ``lycoris_``, ``lora_transformer_`` prefixes)
bare                ``transformer_blocks.0.attn.to_q.lora_A.weight``              DiffSynth, Lightning LoRAs
==================  ============================================================  ===========================

Suffixes: ``lora_A/lora_B``, ``lora_down/lora_up``, ``lora.down/lora.up`` (each ``.weight``), ``.alpha``. The
Lightning LoRAs (``Qwen-Image-Lightning``, FireRed's ``...-Lightning-8steps``) are the bare layout with
``lora_down/lora_up/alpha`` and need nothing special.

Alpha: an ``.alpha`` tensor wins; otherwise a diffusers ``lora_adapter_metadata`` JSON in the safetensors header
(``lora_alpha``, ``alpha_pattern``, ``use_rslora``) is honoured, as diffusers does; otherwise alpha is None, which
means alpha = rank (scale 1) - what ComfyUI (``alpha = 1.0`` when no alpha key), diffusers (``lora_alpha = r``
when neither keys nor metadata give one) and kohya all do. (Bare PEFT ``LoraConfig`` defaults to alpha 8 whatever
the rank, but that default lives in ``adapter_config.json`` folders, which are not single LoRA files.)

Refused with ``LoRAError`` (a ``WeightFileError``) naming the file: LoHa, LoKr and DoRA files, convolution
LoRAs, a ``down`` without its ``up`` or ranks that disagree. Keys that are none of the above are kept in
``LoRAWeights.unmatched`` and reported, never dropped silently.

Public API: ``LoRAError``, ``LoRAEntry``, ``LoRAWeights``, ``load_lora``, ``parse_lora_state_dict``,
``resolve``, ``encode_lora``, ``SAVE_FORMATS``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch

from ..loading.safetensors_io import WeightFileError, open_weights

log = logging.getLogger(__name__)

__all__ = ["LoRAError", "LoRAEntry", "LoRAWeights", "load_lora", "parse_lora_state_dict", "resolve",
           "encode_lora", "SAVE_FORMATS", "PEFT_METADATA_KEY"]


class LoRAError(WeightFileError):
    """A LoRA file is of an unsupported kind, malformed, or does not fit the model."""


# (suffix, role); longest first so ".lora_A.default.weight" is not read as something shorter
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
# (prefix, style, flat): flat names have dots replaced by underscores and are resolved against the model
_PREFIXES: tuple[tuple[str, str, bool], ...] = (
    ("base_model.model.", "peft", False),
    ("transformer.", "peft", False),
    ("diffusion_model.", "comfyui", False),
    ("lora_unet_", "kohya", True),
    ("lora_transformer_", "kohya", True),  # OneTrainer
    ("lycoris_", "kohya", True),  # SimpleTuner's name for plain LoRA tensors too
)
# markers of adapter types whose delta is not up @ down
_UNSUPPORTED: tuple[tuple[str, str], ...] = (
    (".hada_", "LoHa"), (".lokr_", "LoKr"), ("dora_scale", "DoRA"), ("lora_magnitude_vector", "DoRA"),
    (".lora_mid.", "LoCon (Tucker)"),
)
# diffusers stores its LoraConfig as JSON under this safetensors metadata key
PEFT_METADATA_KEY = "lora_adapter_metadata"
SAVE_FORMATS = ("comfyui", "peft", "kohya")


@dataclass
class LoRAEntry:
    """One layer's low-rank delta ``alpha / rank * up @ down``; ``alpha`` None means alpha = rank."""

    name: str  # module path in diffusers naming, or its underscore-flattened form when ``flat``
    down: torch.Tensor  # [rank, in_features]
    up: torch.Tensor  # [out_features, rank]
    alpha: float | None = None
    flat: bool = False
    keys: tuple[str, ...] = ()  # the file keys this entry was read from, for reports

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def effective_alpha(self) -> float:
        return float(self.rank) if self.alpha is None else float(self.alpha)

    @property
    def scale(self) -> float:
        return self.effective_alpha / self.rank


@dataclass
class LoRAWeights:
    """A parsed LoRA: its entries, the keys nothing understood, and where it came from."""

    entries: list[LoRAEntry]
    source: str = "<state dict>"  # file path or a description, used in every message
    style: str = "bare"  # "peft" | "comfyui" | "kohya" | "bare" | "mixed" | "model"
    unmatched: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A default adapter name: the file's stem."""
        return Path(self.source).stem if self.source and not self.source.startswith("<") else "lora"

    def __len__(self) -> int:
        return len(self.entries)


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def load_lora(path: str | os.PathLike) -> LoRAWeights:
    """Read a LoRA ``.safetensors`` file (pickle formats are refused unopened by the loading package)."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        if p.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin", ".pkl"):
            raise LoRAError(f"{p}: LoRA files must be .safetensors; {p.suffix} files are pickles, which this "
                            "project never opens (unpickling can run code). Convert it in a trusted environment.")
        raise LoRAError(f"{p}: not a .safetensors file; LoRAs are read from safetensors only")
    with open_weights(p) as src:
        tensors = {k: src.get(k) for k in src.keys()}
        metadata = src.metadata()
    return parse_lora_state_dict(tensors, source=str(p), metadata=metadata)


def _split_key(key: str) -> tuple[str, str, str, bool] | None:
    """(style, layer name, role, flat) of a LoRA key, or None when it is not a LoRA tensor we understand."""
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            break
    else:
        return None
    for prefix, style, flat in _PREFIXES:
        if stem.startswith(prefix):
            return style, stem[len(prefix):], role, flat
    return "bare", stem, role, False


def _refuse_other_adapter_types(keys: Iterable[str], source: str) -> None:
    for key in keys:
        for marker, kind in _UNSUPPORTED:
            if marker in key:
                raise LoRAError(f"{source}: this is a {kind} adapter (key '{key}'); only plain LoRA files "
                                "(low-rank down/up pairs, optional alpha) are supported")


def _scalar(t: torch.Tensor, key: str, source: str) -> float:
    if t.numel() != 1:
        raise LoRAError(f"{source}: '{key}' should be a scalar alpha but has shape {tuple(t.shape)}")
    return float(t.reshape(()).float().item())


def _build_entry(style_name: tuple[str, str], parts: dict[str, tuple[str, torch.Tensor]], flat: bool,
                 source: str) -> LoRAEntry:
    name = style_name[1]
    if "down" not in parts or "up" not in parts:
        have, missing = ("down", "up") if "down" in parts else ("up", "down")
        raise LoRAError(f"{source}: layer '{name}' has a {have} matrix ('{parts[have][0]}') but no {missing} "
                        "matrix; the file is incomplete")
    (down_key, down), (up_key, up) = parts["down"], parts["up"]
    if down.ndim != 2 or up.ndim != 2:
        raise LoRAError(f"{source}: layer '{name}' is not a Linear LoRA ('{down_key}' {tuple(down.shape)}, "
                        f"'{up_key}' {tuple(up.shape)}); convolution LoRAs do not fit this transformer")
    if down.shape[0] != up.shape[1]:
        raise LoRAError(f"{source}: layer '{name}': rank of '{down_key}' {tuple(down.shape)} and '{up_key}' "
                        f"{tuple(up.shape)} disagree")
    keys = (down_key, up_key)
    alpha = None
    if "alpha" in parts:
        alpha_key, alpha_t = parts["alpha"]
        alpha, keys = _scalar(alpha_t, alpha_key, source), keys + (alpha_key,)
    return LoRAEntry(name=name, down=down, up=up, alpha=alpha, flat=flat, keys=keys)


def parse_lora_state_dict(state: Mapping[str, torch.Tensor], *, source: str = "<state dict>",
                          metadata: Mapping[str, str] | None = None) -> LoRAWeights:
    """Group a LoRA state dict into per-layer entries (see the module docstring for the spellings)."""
    _refuse_other_adapter_types(state, source)
    groups: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    flat_of: dict[tuple[str, str], bool] = {}
    unmatched: list[str] = []
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            unmatched.append(key)
            continue
        style, name, role, flat = split
        groups.setdefault((style, name), {})[role] = (key, tensor)
        flat_of[(style, name)] = flat
    entries = []
    for group, parts in groups.items():
        if set(parts) == {"alpha"}:  # an alpha with no matrices applies to nothing
            unmatched.append(parts["alpha"][0])
            continue
        entries.append(_build_entry(group, parts, flat_of[group], source))
    meta = dict(metadata or {})
    _apply_peft_metadata(entries, meta, source)
    styles = sorted({style for style, _ in groups})
    style = styles[0] if len(styles) == 1 else ("mixed" if styles else "bare")
    return LoRAWeights(entries=entries, source=source, style=style, unmatched=unmatched, metadata=meta)


# ---------------------------------------------------------------------------------------------------------------
# diffusers' LoraConfig metadata
# ---------------------------------------------------------------------------------------------------------------


def _peft_config(metadata: Mapping[str, str], source: str) -> dict | None:
    raw = metadata.get(PEFT_METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LoRAError(f"{source}: metadata '{PEFT_METADATA_KEY}' is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise LoRAError(f"{source}: metadata '{PEFT_METADATA_KEY}' is not a JSON object")
    # diffusers' pipelines prefix each field with the component name ("transformer.lora_alpha")
    prefixed = {k[len("transformer."):]: v for k, v in config.items() if k.startswith("transformer.")}
    return prefixed or config


def _pattern_value(patterns: Mapping[str, float], module: str) -> float | None:
    """PEFT's rule: a pattern matches a module whose name ends with it (as a regex) at a dot boundary."""
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return float(value)
        except re.error:
            continue
    return None


def _apply_peft_metadata(entries: list[LoRAEntry], metadata: Mapping[str, str], source: str) -> None:
    config = _peft_config(metadata, source)
    if config is None:
        return
    if config.get("use_dora"):
        raise LoRAError(f"{source}: this is a DoRA adapter (use_dora in its metadata); only plain LoRA is supported")
    base_alpha = config.get("lora_alpha")
    patterns = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    for entry in entries:
        if entry.alpha is not None:
            continue  # an explicit alpha tensor wins
        alpha = _pattern_value(patterns, entry.name)
        alpha = alpha if alpha is not None else (float(base_alpha) if base_alpha is not None else None)
        if alpha is None:
            continue
        # rsLoRA scales by alpha / sqrt(rank); express that as an alpha over rank
        entry.alpha = alpha * math.sqrt(entry.rank) if rslora else alpha


# ---------------------------------------------------------------------------------------------------------------
# Matching entries to a model's layers
# ---------------------------------------------------------------------------------------------------------------


def resolve(weights: LoRAWeights, module_names: Iterable[str]) -> tuple[dict[str, LoRAEntry], list[str]]:
    """``{module path: entry}`` for the entries that name a layer in ``module_names``, and the unmatched keys.

    Flat (kohya) names are compared with each module path whose dots are replaced by underscores, which is
    unambiguous for this architecture; a flat name that two modules flatten to is refused rather than guessed.
    """
    names = set(module_names)
    flattened: dict[str, list[str]] = {}
    for n in names:
        flattened.setdefault(n.replace(".", "_"), []).append(n)
    resolved: dict[str, LoRAEntry] = {}
    unmatched = list(weights.unmatched)
    for entry in weights.entries:
        candidates = flattened.get(entry.name, []) if entry.flat else ([entry.name] if entry.name in names else [])
        if len(candidates) > 1:
            raise LoRAError(f"{weights.source}: kohya name '{entry.name}' fits several layers "
                            f"({', '.join(sorted(candidates))}); cannot tell which one it targets")
        if not candidates:
            unmatched.extend(entry.keys)
            continue
        target = candidates[0]
        if target in resolved:
            raise LoRAError(f"{weights.source}: layer '{target}' is given twice (keys {resolved[target].keys[0]} "
                            f"and {entry.keys[0]})")
        resolved[target] = entry
    return resolved, unmatched


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _peft_metadata(entries: list[LoRAEntry]) -> dict[str, str]:
    """diffusers' LoraConfig for these entries: most common rank/alpha, exceptions as anchored patterns."""
    rank = Counter(e.rank for e in entries).most_common(1)[0][0]
    alpha = Counter(e.effective_alpha for e in entries).most_common(1)[0][0]
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {f"^{e.name}": e.rank for e in entries if e.rank != rank},
        "alpha_pattern": {f"^{e.name}": e.effective_alpha for e in entries if e.effective_alpha != alpha},
        "target_modules": sorted(e.name for e in entries),
    }
    return {PEFT_METADATA_KEY: json.dumps({f"transformer.{k}": v for k, v in config.items()}, sort_keys=True)}


def encode_lora(weights: LoRAWeights, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of ``weights`` in layout ``fmt`` (one of ``SAVE_FORMATS``).

    comfyui: ``diffusion_model.<path>.lora_down/lora_up.weight`` + ``.alpha``. ComfyUI maps ``diffusion_model.``
    keys for every model class (the generic rule of ``model_lora_keys_unet``), reads ``.alpha`` next to them and
    scales by alpha / rank; it is also the layout ComfyUI's own trainer writes, and diffusers converts it.
    kohya: ``lora_unet_<path with underscores>.lora_down/lora_up.weight`` + ``.alpha``.
    peft: ``transformer.<path>.lora_A/lora_B.weight`` + diffusers' ``lora_adapter_metadata`` (r, lora_alpha and
    per-layer patterns). ComfyUI ignores that metadata, so there a LoRA with alpha != rank would load at the
    wrong scale: use comfyui for ComfyUI.
    """
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"LoRA format must be one of {', '.join(SAVE_FORMATS)}, got {fmt!r}")
    if not weights.entries:
        raise LoRAError(f"{weights.source}: no LoRA layers to write")
    flat = [e.name for e in weights.entries if e.flat]
    if flat and fmt != "kohya":
        raise LoRAError(f"{weights.source}: layer names like '{flat[0]}' are still kohya-flattened; apply the LoRA "
                        "to a model and save from the model to write them in another layout")
    tensors: dict[str, torch.Tensor] = {}
    for e in weights.entries:
        if fmt == "peft":
            stem = f"transformer.{e.name}"
            tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"] = e.down, e.up
            continue
        stem = f"diffusion_model.{e.name}" if fmt == "comfyui" else f"lora_unet_{e.name.replace('.', '_')}"
        tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"] = e.down, e.up
        tensors[f"{stem}.alpha"] = torch.tensor(e.effective_alpha, dtype=torch.float32)
    metadata = _peft_metadata(weights.entries) if fmt == "peft" else {}
    if fmt == "peft" and any(e.effective_alpha != e.rank for e in weights.entries):
        log.warning("%s: alpha != rank is stored only in diffusers' metadata, which ComfyUI ignores (it would apply "
                    "this LoRA at scale 1); save with format='comfyui' for ComfyUI", weights.source)
    return tensors, metadata
