"""Putting LoRAs on a model: unmerged and stackable, merged into the weights, or fresh and trainable.

::

    report = apply_lora(transformer, "style.safetensors", strength=0.8)        # unmerged, named "style"
    apply_lora(transformer, "Lightning-8steps.safetensors", name="lightning")  # a second one stacks on top
    set_strength(transformer, "style", 0.5); remove_lora(transformer, "style")  # exact restore
    with lora_disabled(transformer, "train"): ...  # the base model for a while (a DPO reference), then restored
    merge_lora(transformer)                      # fold every attached adapter into its weight, then detach
    merge_lora(transformer, "other.safetensors", strength=1.0)  # fold a file directly, no adapters
    params = add_trainable_lora(transformer, rank=16, alpha=16)  # zero-initialised adapters for the trainer
    state = lora_state_dict(transformer, "train", format="comfyui")

Adapters attach to every module that has ``ops.Linear``'s ``adapters`` list (hosts may pass their own ops with
the same attribute). A LoRA is refused (``LoRAError`` naming the file) when none of its layers exists in the
model, when any layer's shape differs, or when most of its transformer layers are missing - that is a LoRA for
another architecture (e.g. a Flux LoRA, which shares a few layer names with this model), not a partial match.
Other keys that fit no layer (text-encoder parts included) are returned in ``LoRAReport.unmatched`` and logged
by name.

Merging happens in float32 and is cast back to each weight's storage dtype. For float8 storage the merged
weight is re-quantised (round to nearest, saturating at the format's maximum): deltas below fp8 resolution are
lost, so keep LoRAs unmerged on fp8 models (the default of ``apply_lora``) unless speed matters more. Layers that
hold GGML-quantised weights (GGUF files) take adapters like any other (shapes are checked against the logical
shape), but merging into them is refused: it would need a quantiser this project does not have.

Public API: ``LoRAReport``, ``apply_lora``, ``set_strength``, ``remove_lora``, ``lora_disabled``, ``list_loras``,
``merge_lora``,
``add_trainable_lora``, ``DEFAULT_TARGETS``, ``collect_lora``, ``lora_state_dict``.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from ..quant import logical_shape
from .adapter import INITS, LoRAAdapter
from .formats import LoRAEntry, LoRAError, LoRAWeights, encode_lora, load_lora, resolve

log = logging.getLogger(__name__)

__all__ = ["LoRAReport", "apply_lora", "set_strength", "remove_lora", "lora_disabled", "list_loras", "merge_lora",
           "add_trainable_lora", "DEFAULT_TARGETS", "collect_lora", "lora_state_dict"]

LoRASource = LoRAWeights | str | os.PathLike
# kohya / diffusers names of text-encoder layers (trained along with the transformer by some tools)
_TEXT_ENCODER_NAMES = ("lora_te", "text_encoder", "text_encoders")

# The layers trainers target in this family: attention and MLP of both streams in every block (12 per block;
# the published Lightning LoRAs cover exactly these). The AdaLN projections (img_mod/txt_mod) are left out:
# they are 6x wider and seldom adapted.
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)


@dataclass
class LoRAReport:
    """What ``apply_lora`` / ``merge_lora`` did: layers changed and the file keys that fit no layer."""

    name: str
    applied: int
    unmatched: list[str] = field(default_factory=list)
    source: str = ""
    style: str = ""
    strength: float = 1.0


# ---------------------------------------------------------------------------------------------------------------
# Finding layers and adapters
# ---------------------------------------------------------------------------------------------------------------


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that can carry adapters, by path."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "adapters", None), nn.ModuleList) and getattr(m, "weight", None) is not None
            and m.weight.ndim == 2}


def _adapters(model: nn.Module, name: str | None = None) -> Iterator[tuple[str, nn.Module, LoRAAdapter]]:
    for path, layer in _lora_layers(model).items():
        for adapter in layer.adapters:
            if isinstance(adapter, LoRAAdapter) and (name is None or adapter.name == name):
                yield path, layer, adapter


def list_loras(model: nn.Module) -> dict[str, float]:
    """``{name: strength}`` of the LoRAs attached to ``model``."""
    return {a.name: a.strength for _, _, a in _adapters(model)}


def _as_weights(lora: LoRASource) -> LoRAWeights:
    return lora if isinstance(lora, LoRAWeights) else load_lora(lora)


def _match(model: nn.Module, weights: LoRAWeights) -> tuple[dict[str, nn.Module], dict[str, LoRAEntry], list[str]]:
    """Layers, resolved entries and unmatched keys, after the checks that catch another architecture."""
    layers = _lora_layers(model)
    if not layers:
        raise LoRAError(f"{weights.source}: {type(model).__name__} has no layers that accept LoRA adapters "
                        "(build it with firered_core.ops)")
    resolved, unmatched = resolve(weights, layers)
    if not resolved:
        sample = ", ".join((weights.unmatched or [k for e in weights.entries for k in e.keys])[:4])
        raise LoRAError(f"{weights.source}: no key of this LoRA names a layer of {type(model).__name__}; it is for "
                        f"another architecture (or not a LoRA). Keys look like: {sample}")
    bad = [f"{path}: LoRA {tuple(e.up.shape[:1]) + tuple(e.down.shape[1:])} vs layer {logical_shape(layers[path])}"
           for path, e in resolved.items()
           if (e.up.shape[0], e.down.shape[1]) != logical_shape(layers[path])]
    if bad:
        raise LoRAError(f"{weights.source}: {len(bad)} of {len(resolved)} layers have other shapes than "
                        f"{type(model).__name__} ([out, in]); it is for another model size or architecture: "
                        + "; ".join(bad[:3]))
    # text-encoder parts of a LoRA are not for this model, but say nothing about its architecture
    missing = sum(1 for e in weights.entries if not e.name.startswith(_TEXT_ENCODER_NAMES)) - len(resolved)
    if missing > len(resolved):
        raise LoRAError(f"{weights.source}: {missing} of {len(weights.entries)} LoRA layers do not exist in "
                        f"{type(model).__name__}; it is for another architecture. Unmatched keys: "
                        + ", ".join(unmatched[:4]))
    if unmatched:
        log.warning("%s: %d keys fit no layer and were not applied: %s", weights.source, len(unmatched),
                    ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else ""))
    return layers, resolved, unmatched


def _check_materialised(layer: nn.Module, path: str, source: str) -> None:
    if layer.weight.is_meta:
        raise LoRAError(f"{source}: layer '{path}' has no weights yet (meta device); load the model first")


def _check_mergeable(layers: dict[str, nn.Module], source: str) -> None:
    """Refuse (before anything is changed) to fold into quantised weights: that would mean re-quantising them."""
    quantised = [(path, fmt) for path, layer in layers.items()
                 if (fmt := getattr(layer, "weight_format", None)) is not None]
    if quantised:
        path, fmt = quantised[0]
        raise LoRAError(f"{source}: cannot merge into layer '{path}': its weight is stored quantised ({fmt}) and "
                        f"{len(quantised)} of {len(layers)} target layers are; keep the LoRA unmerged "
                        "(apply_lora), which works on quantised layers")


# ---------------------------------------------------------------------------------------------------------------
# Unmerged
# ---------------------------------------------------------------------------------------------------------------


def apply_lora(model: nn.Module, lora: LoRASource, strength: float = 1.0, name: str | None = None, *,
               dtype: torch.dtype | None = None) -> LoRAReport:
    """Attach ``lora`` (a ``LoRAWeights`` or a .safetensors path) to ``model`` unmerged, as adapter ``name``.

    ``name`` defaults to the file's stem and must not be in use. Adapters are stored in ``dtype`` (default: the
    file's) on each layer's device and compute in the input's dtype.
    """
    weights = _as_weights(lora)
    name = name or weights.name
    if name in list_loras(model):
        raise ValueError(f"a LoRA named {name!r} is already applied; remove_lora(model, {name!r}) first or pass "
                         "another name")
    layers, resolved, unmatched = _match(model, weights)
    for path, entry in resolved.items():
        _check_materialised(layers[path], path, weights.source)
        layers[path].adapters.append(LoRAAdapter.from_weights(
            entry.down, entry.up, alpha=entry.alpha, strength=strength, name=name,
            device=layers[path].weight.device, dtype=dtype))
    log.info("LoRA %s (%s layout) applied as %r to %d layers at strength %g", weights.source, weights.style, name,
             len(resolved), strength)
    return LoRAReport(name=name, applied=len(resolved), unmatched=unmatched, source=weights.source,
                      style=weights.style, strength=strength)


def set_strength(model: nn.Module, name: str, strength: float) -> int:
    """Change the strength of LoRA ``name``; returns the number of layers changed."""
    found = [a for _, _, a in _adapters(model, name)]
    if not found:
        raise KeyError(f"no LoRA named {name!r} is applied (applied: {sorted(list_loras(model)) or 'none'})")
    for adapter in found:
        adapter.strength = strength
    return len(found)


def remove_lora(model: nn.Module, name: str) -> int:
    """Detach LoRA ``name`` from every layer; returns the number of layers it was on."""
    count = 0
    for layer in _lora_layers(model).values():
        keep = [a for a in layer.adapters if not (isinstance(a, LoRAAdapter) and a.name == name)]
        if len(keep) != len(layer.adapters):
            count += len(layer.adapters) - len(keep)
            layer.adapters = nn.ModuleList(keep)
    if not count:
        raise KeyError(f"no LoRA named {name!r} is applied (applied: {sorted(list_loras(model)) or 'none'})")
    return count


@contextmanager
def lora_disabled(model: nn.Module, name: str | None = None) -> Iterator[int]:
    """Inside the block LoRA ``name`` (every attached LoRA when None) has strength 0, so ``model`` computes its base
    output exactly (each adapter adds an exact zero); the strengths are restored on exit, also after an error.

    Yields the number of adapters disabled. The adapters stay attached and keep their parameters and optimizer
    state: this is how one network serves as its own frozen reference (DPO) without a second copy in memory.
    """
    found = [a for _, _, a in _adapters(model, name)]
    if not found:
        raise KeyError(f"no LoRA {'named ' + repr(name) + ' ' if name else ''}is applied to disable "
                       f"(applied: {sorted(list_loras(model)) or 'none'})")
    saved = [a.strength for a in found]
    for adapter in found:
        adapter.strength = 0.0
    try:
        yield len(found)
    finally:
        for adapter, strength in zip(found, saved):
            adapter.strength = strength


# ---------------------------------------------------------------------------------------------------------------
# Merged
# ---------------------------------------------------------------------------------------------------------------


def _fold(weight: torch.Tensor, delta: torch.Tensor) -> None:
    """``weight += delta`` computed in float32 and stored back in the weight's own dtype (fp8 saturates)."""
    merged = weight.detach().float() + delta.to(device=weight.device, dtype=torch.float32)
    if weight.dtype.is_floating_point and weight.dtype.itemsize == 1:
        limit = torch.finfo(weight.dtype).max
        merged = merged.clamp(-limit, limit)  # fp8 casts overflow to NaN instead of saturating
    with torch.no_grad():
        weight.copy_(merged.to(weight.dtype))


def merge_lora(model: nn.Module, lora: LoRASource | None = None, *, strength: float = 1.0,
               name: str | None = None) -> LoRAReport:
    """Fold LoRA deltas into the base weights.

    With ``lora`` (weights or a path): fold that LoRA at ``strength`` directly, no adapters created. Without:
    fold the attached adapters named ``name`` (all attached LoRAs when None) at their current strengths and
    detach them, so the model computes the same as before but faster.
    """
    if lora is not None:
        weights = _as_weights(lora)
        layers, resolved, unmatched = _match(model, weights)
        _check_mergeable({path: layers[path] for path in resolved}, weights.source)
        for path, entry in resolved.items():
            _check_materialised(layers[path], path, weights.source)
            delta = entry.up.float() @ entry.down.float() * (strength * entry.scale)
            _fold(layers[path].weight, delta)
        return LoRAReport(name=name or weights.name, applied=len(resolved), unmatched=unmatched,
                          source=weights.source, style=weights.style, strength=strength)
    found = list(_adapters(model, name))
    if not found:
        raise KeyError(f"no LoRA {'named ' + repr(name) + ' ' if name else ''}is applied to merge")
    _check_mergeable({path: layer for path, layer, _ in found}, "attached adapters")
    for path, layer, adapter in found:
        _check_materialised(layer, path, adapter.name)
        _fold(layer.weight, adapter.delta_weight(torch.float32))
    names = sorted({a.name for _, _, a in found})
    for n in names:
        remove_lora(model, n)
    return LoRAReport(name=", ".join(names), applied=len(found), source="attached adapters", style="model")


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def _targeted(path: str, targets: Sequence[str]) -> bool:
    # PEFT's rule for plain names: the module path equals the target or ends with "." + target
    return any(path == t or path.endswith("." + t) for t in targets)


def add_trainable_lora(model: nn.Module, rank: int, alpha: float | None = None,
                       target_modules: Sequence[str] | None = None, dropout: float = 0.0, init: str = "kaiming",
                       *, name: str = "train", dtype: torch.dtype = torch.float32,
                       freeze_base: bool = True) -> list[nn.Parameter]:
    """Attach zero-initialised adapters to the targeted layers; returns their parameters for the optimizer.

    ``target_modules`` are module paths or suffixes (PEFT's rule); None means ``DEFAULT_TARGETS``. ``alpha``
    None means alpha = rank. Adapter weights are kept in ``dtype`` (float32: exact optimizer updates even when
    the base is bf16/fp8). ``freeze_base`` turns off gradients of every other parameter of the model.
    """
    if init not in INITS:
        raise ValueError(f"add_trainable_lora: init must be one of {', '.join(INITS)}, got {init!r}")
    if name in list_loras(model):
        raise ValueError(f"add_trainable_lora: a LoRA named {name!r} is already applied")
    targets = tuple(target_modules) if target_modules is not None else DEFAULT_TARGETS
    layers = {p: m for p, m in _lora_layers(model).items() if _targeted(p, targets)}
    if not layers:
        raise ValueError(f"add_trainable_lora: no layer of {type(model).__name__} matches target_modules "
                         f"{list(targets)}")
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for path, layer in layers.items():
        _check_materialised(layer, path, "add_trainable_lora")
        out_f, in_f = logical_shape(layer)
        adapter = LoRAAdapter(in_f, out_f, rank, alpha=alpha, dropout=dropout, name=name,
                              device=layer.weight.device, dtype=dtype)
        adapter.reset_parameters(init)
        layer.adapters.append(adapter)
        params += [adapter.down.weight, adapter.up.weight]
    for p in params:
        p.requires_grad_(True)
    log.info("trainable LoRA %r: rank %d, alpha %s, %d layers, %d parameters", name, rank,
             alpha if alpha is not None else rank, len(layers), sum(p.numel() for p in params))
    return params


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


def collect_lora(model: nn.Module, name: str) -> LoRAWeights:
    """The attached LoRA ``name`` as ``LoRAWeights`` (layer paths, factors, alpha; strength is not included)."""
    entries = [LoRAEntry(name=path, down=a.down.weight.detach(), up=a.up.weight.detach(), alpha=a.alpha)
               for path, _, a in _adapters(model, name)]
    if not entries:
        raise KeyError(f"no LoRA named {name!r} is applied (applied: {sorted(list_loras(model)) or 'none'})")
    return LoRAWeights(entries=entries, source=f"<LoRA {name!r} of {type(model).__name__}>", style="model")


def lora_state_dict(model: nn.Module, name: str, format: str = "comfyui") -> dict[str, torch.Tensor]:
    """The tensors of attached LoRA ``name`` keyed in ``format`` ("comfyui", "peft" or "kohya")."""
    return encode_lora(collect_lora(model, name), format)[0]
