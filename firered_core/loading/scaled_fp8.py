"""Scaled-fp8 weight files ("fp8_scaled" checkpoints for ComfyUI): their layouts, their checks, and two ways to load.

A scaled-fp8 file stores a Linear weight ``W`` as float8 values ``Q`` plus a float32 scale ``s`` with
``W ~= Q * s``: the scale stretches each tensor's range onto fp8's, so small weights keep their precision. Two
layouts exist (``L`` is a layer's name, e.g. ``transformer_blocks.0.attn.to_q`` or ``model.layers.0.mlp.up_proj``):

====================  ===========================================  ============================================
layout                per quantised layer                          file-wide marker
====================  ===========================================  ============================================
older (2024-25)       ``L.weight`` (float8), ``L.scale_weight``;   an empty ``scaled_fp8`` tensor (bare or
                      optionally ``L.scale_input``                 under the file's prefix) whose dtype is the
                                                                   fp8 format
newer                 ``L.weight`` (float8), ``L.weight_scale``;   ``_quantization_metadata`` JSON in the
                      optionally ``L.input_scale`` and             safetensors metadata
                      ``L.comfy_quant`` (the layer's format as     (``{"layers": {L: {"format": ...}}}``),
                      JSON bytes)                                  or only the per-layer ``comfy_quant``
====================  ===========================================  ============================================

Scales are one number per tensor (what ComfyUI writes) or one per output row (``[out]`` or ``[out, 1]``, which
some converters write). Input scales only matter to fp8 matrix multiplication on the GPU; here activations stay
in the compute dtype, so they are read past. Layers of other quantisations (int4, nvfp4, ...) are refused by name.

``ScaledFP8Source`` wraps a ``WeightSource``: it hides the bookkeeping tensors and validates, from the header
alone, that every scale has its weight, a floating dtype and a shape that fits (per tensor or per row), and that no
layer declared quantised lacks its scale. It then offers a scaled weight either way:

* ``get(key)``: dequantised, ``Q.float() * s`` (float32), which the loader converts to the storage dtype. With fp8
  storage that would be a second, unscaled fp8 rounding, so the loader asks first for
* ``quantized(key)``: the raw float8 tensor and a ``ScaledFP8`` weight format (``ops.WeightFormat``). The loader
  stores the raw tensor as the parameter and sets the format on its module (``<name>_format``), and the layers
  of ``firered_core.ops`` dequantise at every call, exactly as ``get`` would have while loading (same float32
  product, same final rounding): the file's bytes stay as they are, with no second rounding.

``stream.load_into`` uses ``quantized`` for a tensor whenever its storage dtype is fp8 (``fp8=True`` for the
transformer's Linear weights, fp8 storage for the condition encoder's); otherwise ``get``.

Public API: ``ScaledFP8``, ``ScaledFP8Source``, ``SCALE_SUFFIXES``, ``is_float8``.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch

from .safetensors_io import WeightFileError, WeightSource

log = logging.getLogger(__name__)

__all__ = ["ScaledFP8", "ScaledFP8Source", "SCALE_SUFFIXES", "is_float8"]

SCALE_SUFFIXES = (".weight_scale", ".scale_weight")  # newer, older layout
INPUT_SCALE_SUFFIXES = (".input_scale", ".scale_input")
QUANT_SUFFIX = ".comfy_quant"
MARKER = "scaled_fp8"
QUANT_METADATA_KEY = "_quantization_metadata"


def is_float8(dtype: torch.dtype) -> bool:
    """A one-byte floating dtype (float8_e4m3fn, float8_e5m2, ...)."""
    return dtype.is_floating_point and dtype.itemsize == 1


class ScaledFP8:
    """Weight format of a scaled-fp8 tensor (``ops.WeightFormat``): stored raw float8 values times ``scale``.

    ``scale`` is float32, one number per tensor or one per output row, kept with at least one dimension (``[1]``
    or ``[out, 1, ...]``) so it broadcasts over the raw tensor and, unlike a 0-dim tensor, takes part in type
    promotion. It stays on the device it came from and is copied once to every device the layer computes on.
    """

    def __init__(self, scale: torch.Tensor, shape: tuple[int, ...]) -> None:
        self.scale = scale.to(torch.float32).reshape(scale.shape if scale.ndim else (1,))
        self.shape = tuple(shape)
        self._placed: dict[torch.device, torch.Tensor] = {self.scale.device: self.scale}

    def _scale_on(self, device: torch.device) -> torch.Tensor:
        placed = self._placed.get(device)
        if placed is None:
            placed = self._placed[device] = self.scale.to(device)
        return placed

    def dequantize(self, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``raw * scale`` in ``dtype`` on ``raw``'s device: equal, bit for bit, to the load-time path.

        fp8 values are exact in every wider dtype, and multiplying a ``dtype`` tensor in place by the float32
        scale computes each product in float32 and rounds it once to ``dtype``, as ``ScaledFP8Source.get``
        followed by the storage conversion does, while the only full-size temporary is the ``dtype`` copy."""
        return raw.to(dtype).mul_(self._scale_on(raw.device))

    def __repr__(self) -> str:
        kind = "per tensor" if self.scale.numel() == 1 else "per row"
        return f"ScaledFP8(shape={list(self.shape)}, scale {kind})"


def _layer(key: str, suffixes: tuple[str, ...]) -> str | None:
    """``key`` without the first of ``suffixes`` it ends with (the layer's name), or None."""
    for suffix in suffixes:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def _scale_shape(scale: tuple[int, ...], weight: tuple[int, ...]) -> tuple[int, ...] | None:
    """The broadcastable shape a scale of shape ``scale`` takes over ``weight``; None when it does not fit."""
    if math.prod(scale) == 1:
        return ()
    rows = weight[0] if weight else 0
    if scale in ((rows,), (rows, 1)) and len(weight) >= 2:
        return (rows,) + (1,) * (len(weight) - 1)
    return None


def _layer_names(keys: set[str]) -> dict[str, str]:
    """``{name: file layer}`` for every dotted tail of every ``*.weight`` key's layer: metadata names a layer
    without the file's outer prefix (``model.diffusion_model.``), so ``a.b.c`` is found as ``a.b.c``, ``b.c``..."""
    names: dict[str, str] = {}
    for k in keys:
        if k.endswith(".weight"):
            layer = k[: -len(".weight")]
            parts = layer.split(".")
            for i in range(1, len(parts)):
                names.setdefault(".".join(parts[i:]), layer)
    names.update({k[: -len(".weight")]: k[: -len(".weight")] for k in keys if k.endswith(".weight")})  # exact wins
    return names


class ScaledFP8Source:
    """A ``TensorSource`` over a (possibly) scaled-fp8 file; see the module docstring. Plain files pass through."""

    def __init__(self, inner: WeightSource) -> None:
        self.inner = inner
        self.name = inner.name
        keys = inner.keys()
        present = set(keys)
        self._scales: dict[str, str] = {}  # weight key -> scale key
        hidden: set[str] = set()
        for k in keys:
            layer = _layer(k, SCALE_SUFFIXES)
            if layer is not None:
                self._scales[layer + ".weight"] = k
                hidden.add(k)
            elif k.endswith(INPUT_SCALE_SUFFIXES + (QUANT_SUFFIX,)) or k.rsplit(".", 1)[-1] == MARKER:
                hidden.add(k)
        self._keys = [k for k in keys if k not in hidden]
        self._shapes = {w: self._check_scale(w, s, present) for w, s in self._scales.items()}
        self._check_declared(keys, present)
        if self._scales:
            log.info("%s: %d scaled-fp8 weights", self.name, len(self._scales))

    # -- checks (header only) --------------------------------------------------------------------------------------

    def _check_scale(self, weight: str, scale: str, present: set[str]) -> tuple[int, ...]:
        if weight not in present:
            raise WeightFileError(f"{self.name}: scale '{scale}' has no weight '{weight}' to scale")
        if not self.inner.dtype(scale).is_floating_point:
            raise WeightFileError(f"{self.name}: scale '{scale}' of '{weight}' is {self.inner.dtype(scale)}, "
                                  "not a floating-point number")
        fitted = _scale_shape(tuple(self.inner.shape(scale)), tuple(self.inner.shape(weight)))
        if fitted is None:
            raise WeightFileError(f"{self.name}: scale '{scale}' has shape {list(self.inner.shape(scale))}, which "
                                  f"fits neither per tensor ([] or [1]) nor per row of the weight "
                                  f"{list(self.inner.shape(weight))} ([{self.inner.shape(weight)[0]}] or "
                                  f"[{self.inner.shape(weight)[0]}, 1])")
        return fitted

    def _check_declared(self, keys: list[str], present: set[str]) -> None:
        """Layers declared quantised (``comfy_quant``, an input scale, the metadata) must be float8 with a scale."""
        declared: dict[str, str] = {}  # layer -> what declares it
        for k in keys:
            layer = _layer(k, INPUT_SCALE_SUFFIXES + (QUANT_SUFFIX,))
            if layer is None:
                continue
            if k.endswith(QUANT_SUFFIX):
                self._check_format(layer, self._quant_json(k).get("format", ""), k)
            declared[layer] = k
        listed = self._metadata_layers()
        names = _layer_names(present) if listed else {}
        for layer, fmt in listed.items():
            self._check_format(layer, fmt, f"{QUANT_METADATA_KEY} metadata")
            declared.setdefault(names.get(layer, layer), f"the {QUANT_METADATA_KEY} metadata")
        for layer, why in declared.items():
            weight = layer + ".weight"
            if weight in present and weight not in self._scales and is_float8(self.inner.dtype(weight)):
                raise WeightFileError(f"{self.name}: '{weight}' is declared scaled fp8 (by {why}) but has no scale "
                                      f"('{layer}.weight_scale' or '{layer}.scale_weight')")

    def _check_format(self, layer: str, fmt: Any, where: str) -> None:
        if not str(fmt).startswith("float8"):
            raise WeightFileError(f"{self.name}: layer '{layer}' is quantised as {fmt!r} ({where}), which is not "
                                  "supported; use a bf16, fp16 or fp8 file")

    def _quant_json(self, key: str) -> dict[str, Any]:
        raw = bytes(self.inner.get(key).to(torch.uint8).reshape(-1).tolist())
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict):
            raise WeightFileError(f"{self.name}: tensor '{key}' is not valid quantisation JSON")
        return data

    def _metadata_layers(self) -> dict[str, Any]:
        """``{layer: format}`` from the ``_quantization_metadata`` entry, if the file has one."""
        text = self.inner.metadata().get(QUANT_METADATA_KEY)
        if text is None:
            return {}
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(layers, dict):
            raise WeightFileError(f"{self.name}: metadata entry '{QUANT_METADATA_KEY}' is not a JSON object with "
                                  "a 'layers' mapping")
        return {name: (spec.get("format", "") if isinstance(spec, dict) else spec) for name, spec in layers.items()}

    # -- TensorSource ------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.inner.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        """What ``get`` returns: float32 for scaled weights, the stored dtype otherwise."""
        return torch.float32 if key in self._scales else self.inner.dtype(key)

    def stored_dtype(self, key: str) -> torch.dtype:
        return self.inner.dtype(key)

    def metadata(self) -> dict[str, str]:
        return self.inner.metadata()

    @property
    def scaled_keys(self) -> list[str]:
        """The weights that carry a scale."""
        return list(self._scales)

    @property
    def has_fp8_weights(self) -> bool:
        """Whether the file stores weights in float8 (scaled or plain), i.e. whether it is an "fp8 file"."""
        return bool(self._scales) or any(is_float8(self.inner.dtype(k)) and len(self.inner.shape(k)) >= 2
                                         for k in self._keys)

    def _scale(self, key: str) -> torch.Tensor:
        scale_key = self._scales[key]
        scale = self.inner.get(scale_key).to(torch.float32).reshape(self._shapes[key])
        if not torch.isfinite(scale).all():
            raise WeightFileError(f"{self.name}: scale '{scale_key}' of '{key}' is not finite")
        return scale

    can_map = True  # tensors stored as they are may come back file-backed (``loading.mapped``)

    def get(self, key: str, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None, *, mapped: bool = False) -> torch.Tensor:
        """Tensor ``key``; a scaled weight comes dequantised (``stored.float() * scale``, float32). ``mapped``: an
        unscaled tensor may come back as a view of the file."""
        t = self.inner.get(key, mapped=mapped and key not in self._scales)
        if key in self._scales:
            t = t.to(torch.float32) * self._scale(key)
        return t if dtype is None and device is None else t.to(device=device, dtype=dtype or t.dtype)

    def quantized(self, key: str, *, mapped: bool = False) -> tuple[torch.Tensor, ScaledFP8] | None:
        """The stored float8 tensor of a scaled weight (a view of the file with ``mapped``) and its ``ScaledFP8``
        format; None for other tensors."""
        if key not in self._scales or not is_float8(self.inner.dtype(key)):
            return None
        raw = self.inner.get(key, mapped=mapped)
        return raw, ScaledFP8(self._scale(key), tuple(raw.shape))

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> "ScaledFP8Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
