"""GGUF files for the tests, written the way ComfyUI-GGUF's converter and its patched llama-quantize write them.

::

    path = write_transformer_gguf(transformer.state_dict(), tmp_path / "model-Q8_0.gguf")          # Q8_0 blocks
    path = write_transformer_gguf(state, out, qtype="Q4_0", float_type="BF16", prefix="model.diffusion_model.")

Layout (see ``firered_core.loading.gguf_file``): ``general.architecture`` "qwen_image", diffusers key names,
tensors in numpy's (torch's) order so GGUF records the dims reversed; 1-D tensors in F32; the layers quantisers
leave alone for Qwen-Image (img_in, txt_in, time_text_embed, norm_out, proj_out) in ``float_type``; every other
weight in ``qtype`` (gguf-py's own quantiser), or ``float_type`` when its rows are not whole blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch

import gguf

# the layers ComfyUI-GGUF's llama-quantize patch keeps unquantised in Qwen-Image files
KEEP_FLOAT = ("img_in.", "txt_in.", "time_text_embed.", "proj_out.", "norm_out.")


def tensor_type(key: str, value: torch.Tensor, qtype: str, float_type: str) -> str:
    """The GGML type a converter would give ``key``."""
    if value.ndim == 1:
        return "F32"
    if any(part in key for part in KEEP_FLOAT):
        return float_type
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    return qtype if value.shape[-1] % block == 0 else float_type


def encode(value: torch.Tensor, type_name: str) -> np.ndarray:
    """``value`` in GGML type ``type_name`` as gguf-py writes it (uint8 blocks for quantised types)."""
    return gguf.quants.quantize(value.detach().float().numpy(), gguf.GGMLQuantizationType[type_name])


def write_gguf(path: Path, tensors: Mapping[str, tuple[np.ndarray, str]], *, arch: str = "qwen_image",
               metadata: Mapping[str, object] | None = None) -> Path:
    """Write ``{name: (encoded array, GGML type name)}`` to ``path``; ``metadata`` values are int lists or str."""
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in (metadata or {}).items():
        writer.add_array(key, value) if isinstance(value, list) else writer.add_string(key, str(value))
    for name, (array, type_name) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=gguf.GGMLQuantizationType[type_name])
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_transformer_gguf(state: Mapping[str, torch.Tensor], path: Path, *, qtype: str = "Q8_0",
                           float_type: str = "F32", prefix: str = "", arch: str = "qwen_image") -> Path:
    """A transformer state dict as a ComfyUI-GGUF-layout file (see the module docstring)."""
    tensors = {}
    for key, value in state.items():
        type_name = tensor_type(key, value, qtype, float_type)
        tensors[prefix + key] = (encode(value, type_name), type_name)
    return write_gguf(path, tensors, arch=arch)


def gguf_dequantised_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantised by gguf-py (the reference), in torch's order and float32."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        out[t.name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(
            tuple(int(d) for d in reversed(t.shape)))
    return out
