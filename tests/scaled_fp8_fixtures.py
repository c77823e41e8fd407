"""Scaled-fp8 copies of a state dict in ComfyUI's two key layouts, for tests that write "fp8_scaled" files.

::

    tensors, metadata = scaled_fp8_state(state, linear_weights, layout="older", prefix="model.diffusion_model.")
    save_file(tensors, path, metadata=metadata)

Each chosen weight ``W`` becomes ``Q = W / s`` rounded to float8_e4m3fn (saturating) plus its scale ``s`` (the
largest magnitude / 448, per tensor or per output row), as the converters that make these files do. The older
layout (that of Comfy-Org's ``qwen_2.5_vl_7b_fp8_scaled.safetensors``: 358 ``.scale_weight`` tensors) adds a
``scaled_fp8`` marker, the newer one ``.weight_scale``, ``.input_scale`` and a ``.comfy_quant`` JSON tensor per
layer plus the ``_quantization_metadata`` entry. Other tensors are stored in ``rest_dtype`` (bf16 like those files).
``dequantised`` gives the values a loader should see for a quantised weight.
"""

from __future__ import annotations

import json
from typing import Iterable, Mapping

import torch

__all__ = ["scaled_fp8_state", "dequantised", "quant_json", "FP8_MAX"]

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def quant_json(fmt: str = "float8_e4m3fn") -> torch.Tensor:
    """A ``.comfy_quant`` tensor: the layer's format as UTF-8 JSON bytes."""
    return torch.tensor(list(json.dumps({"format": fmt}).encode("utf-8")), dtype=torch.uint8)


def _quantise(w: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    amax = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) if per_row else w.abs().amax()
    scale = (amax / FP8_MAX).clamp_min(1e-12)
    return (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def scaled_fp8_state(state: Mapping[str, torch.Tensor], quantised: Iterable[str], *, layout: str = "older",
                     prefix: str = "", per_row: bool = False, rest_dtype: torch.dtype = torch.bfloat16,
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of ``state`` with the weights named in ``quantised`` as scaled fp8."""
    if layout not in ("older", "newer"):
        raise ValueError(f"layout must be 'older' or 'newer', got {layout!r}")
    chosen = set(quantised)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in chosen:
            out[prefix + key] = value.to(rest_dtype) if value.is_floating_point() else value
            continue
        raw, scale = _quantise(value, per_row)
        layer = prefix + key[: -len(".weight")]
        out[prefix + key] = raw
        stored_scale = scale.reshape(-1) if per_row else scale.reshape(())
        if layout == "older":
            out[layer + ".scale_weight"] = stored_scale
        else:
            out[layer + ".weight_scale"] = stored_scale
            out[layer + ".input_scale"] = torch.tensor(1.0)
            out[layer + ".comfy_quant"] = quant_json()
    metadata: dict[str, str] = {}
    if layout == "older":
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    else:
        layers = {k[: -len(".weight")]: {"format": "float8_e4m3fn"} for k in sorted(chosen)}
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    return out, metadata


def dequantised(tensors: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    """``Q.float() * s`` of the quantised weight ``key`` (file key) in float32."""
    layer = key[: -len(".weight")]
    scale = tensors.get(layer + ".scale_weight", tensors.get(layer + ".weight_scale"))
    assert scale is not None, key
    raw = tensors[key].float()
    return raw * (scale.reshape(-1, *([1] * (raw.ndim - 1))) if scale.numel() > 1 else scale)
