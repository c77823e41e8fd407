"""Write full-size FireRed transformer files with random weights, streaming, without holding them in memory.

Used by ``benchmarks/real_size.py``: a 20.4 B-parameter transformer is 20 GB in fp8 and 11.5 GB in GGUF Q4_K, more
than a small machine can build in memory. The files are written tensor by tensor from the model's shapes (built on
the meta device), with the layouts real files have:

* fp8: a ComfyUI single file (bare keys), every 2-D Linear weight float8 e4m3 and everything else bfloat16, as
  community ``fp8`` transformer files are;
* GGUF Q4_K: ComfyUI-GGUF's layout (architecture ``qwen_image``, bare keys): the blocks' 2-D weights Q4_K, the other
  tensors F32 (1-D) or F16, as its quantiser leaves them.

Values: N(0, 0.02) weights drawn once into a pool and written as pseudo-randomly offset slices of it (drawing 20 B
values would cost minutes and prove nothing more), norms around 1; Q4_K blocks with random nibbles and scales and
small finite super-block scales. Nothing here is a real model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from firered_core.config import TransformerConfig
from firered_core.transformer import FireRedTransformer

POOL_VALUES = 1 << 24  # 16 M values in the pool of random weights
Q4_K_BLOCK, Q4_K_BYTES = 256, 144  # values and bytes per Q4_K super-block


def _shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    model = FireRedTransformer(config, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _pool(dtype: torch.dtype, seed: int) -> np.ndarray:
    """Random weights as raw bytes of ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(POOL_VALUES, generator=gen) * 0.02
    return values.to(dtype).view(torch.uint8).numpy()


def _slices(pool: np.ndarray, nbytes: int, seed: int, unit: int = 256) -> Iterator[np.ndarray]:
    """``nbytes`` bytes taken from ``pool`` in pieces starting at seeded offsets, multiples of ``unit`` (the size
    of one stored element or block, so pieces never start inside one)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < nbytes:
        start = int(rng.integers(0, (len(pool) - 1) // unit)) * unit
        piece = pool[start:start + min(nbytes - done, len(pool) - start)]
        yield piece
        done += len(piece)


def _is_linear_weight(key: str, shape: tuple[int, ...]) -> bool:
    return key.endswith(".weight") and len(shape) == 2


def write_fp8_safetensors(config: TransformerConfig, path: Path, seed: int = 0) -> int:
    """The transformer as a ComfyUI fp8 single file at ``path``; returns its size in bytes."""
    shapes = _shapes(config)
    dtypes = {k: (torch.float8_e4m3fn if _is_linear_weight(k, s) else torch.bfloat16) for k, s in shapes.items()}
    header: dict[str, object] = {}
    offset = 0
    for key, shape in shapes.items():
        nbytes = int(np.prod(shape)) * dtypes[key].itemsize
        header[key] = {"dtype": "F8_E4M3" if dtypes[key] == torch.float8_e4m3fn else "BF16", "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    pools = {dtype: _pool(dtype, seed) for dtype in (torch.float8_e4m3fn, torch.bfloat16)}
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for i, (key, shape) in enumerate(shapes.items()):
            if "norm" in key and len(shape) == 1:
                f.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())
                continue
            nbytes = int(np.prod(shape)) * dtypes[key].itemsize
            for piece in _slices(pools[dtypes[key]], nbytes, seed + i):
                f.write(piece.tobytes())
    return path.stat().st_size


def _q4_k_pool(seed: int, blocks: int = 1 << 16) -> np.ndarray:
    """Random Q4_K super-blocks: f16 scale d and min dmin (small, finite), 12 bytes of 6-bit sub-scales, 128 bytes
    of 4-bit quants."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(blocks, Q4_K_BYTES), dtype=np.uint8)
    scales = np.stack([rng.uniform(2e-4, 8e-4, blocks), rng.uniform(2e-4, 8e-4, blocks)], axis=1).astype(np.float16)
    raw[:, :4] = scales.view(np.uint8).reshape(blocks, 4)
    return raw.reshape(-1)


def write_q4_k_gguf(config: TransformerConfig, path: Path, seed: int = 0) -> int:
    """The transformer as a ComfyUI-GGUF file at ``path`` with Q4_K block weights; returns its size in bytes."""
    import gguf

    shapes = _shapes(config)
    pool, floats = _q4_k_pool(seed), _pool(torch.float16, seed)
    writer = gguf.GGUFWriter(path, arch="qwen_image")
    plan = []
    for key, shape in shapes.items():
        quantised = key.startswith("transformer_blocks.") and len(shape) == 2 and shape[1] % Q4_K_BLOCK == 0
        if quantised:
            byte_shape = (shape[0], shape[1] // Q4_K_BLOCK * Q4_K_BYTES)
            writer.add_tensor_info(key, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                   raw_dtype=gguf.GGMLQuantizationType.Q4_K)
        else:
            dtype = np.float32 if len(shape) == 1 else np.float16
            writer.add_tensor_info(key, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
        plan.append((key, shape, quantised))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (key, shape, quantised) in enumerate(plan):
        if quantised:
            nbytes = shape[0] * shape[1] // Q4_K_BLOCK * Q4_K_BYTES
            data = np.concatenate(list(_slices(pool, nbytes, seed + i, Q4_K_BYTES))).reshape(shape[0], -1)
        elif len(shape) == 1:
            data = np.ones(shape, np.float32) if "norm" in key else np.zeros(shape, np.float32)
        else:
            data = np.concatenate(list(_slices(floats, int(np.prod(shape)) * 2, seed + i))).view(np.float16)
            data = data.reshape(shape)
        writer.write_tensor_data(data)
    writer.close()
    return path.stat().st_size
