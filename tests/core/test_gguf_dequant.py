"""The torch GGML kernels (``firered_core.quant``) against gguf-py's numpy reference, ``gguf.quants.dequantize``.

gguf-py cannot quantise the K-types, so blocks are random bytes of the right structure: every byte random, then
the float16 scale fields (d, dmin, m) overwritten with finite values of moderate size, as real files have. The
plain float types get random finite values. The comparison is exact: the same float32 products in the same order
(``torch.equal`` against the reference in float32, and against the reference rounded once for bfloat16/float16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from firered_core.quant import (LAYOUTS, GGMLFormat, GGMLType, UnsupportedQuantType, dequantize_blocks, layout_of,
                                stored_nbytes, type_name)

gguf = pytest.importorskip("gguf")

# byte offsets of the float16 scale fields inside one block, per type
SCALE_FIELDS: dict[str, tuple[int, ...]] = {
    "Q8_0": (0,), "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}
FLOATS = {"F32": np.float32, "F16": np.float16}


def random_tensor_bytes(name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """uint8 [rows, bytes per row] holding a valid ``name`` tensor of shape [rows, cols]."""
    rng = np.random.default_rng(seed)
    layout = layout_of(name)
    if name in FLOATS:
        return rng.normal(0, 2, (rows, cols)).astype(FLOATS[name]).view(np.uint8)
    if name == "BF16":
        as_f32 = rng.normal(0, 2, (rows, cols)).astype(np.float32)
        return (as_f32.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blocks = rng.integers(0, 256, (rows * cols // layout.block_size, layout.type_size), dtype=np.uint8)
    for offset in SCALE_FIELDS[name]:
        scale = (rng.uniform(0.001, 0.05, blocks.shape[0]) * rng.choice([-1, 1], blocks.shape[0])).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def reference(raw: np.ndarray, name: str) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name])))


ALL_TYPES = [layout.name for layout in LAYOUTS.values()]


@pytest.mark.parametrize("name", ALL_TYPES)
def test_every_type_matches_gguf_py_exactly(name: str) -> None:
    cols = 512 if layout_of(name).block_size == 256 else 96
    raw = random_tensor_bytes(name, 6, cols, seed=len(name))
    expected = reference(raw, name)
    assert expected.shape == (6, cols) and torch.isfinite(expected).all()
    got = dequantize_blocks(torch.from_numpy(raw), name, (6, cols), torch.float32)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected), f"{name}: max diff {(got - expected).abs().max().item()}"
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(dequantize_blocks(torch.from_numpy(raw), name, (6, cols), dtype), expected.to(dtype))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_0", "Q5_1"])
def test_gguf_py_quantiser_round_trip(name: str) -> None:
    """Blocks made by gguf-py's own quantiser (the path real Q8_0 files take) decode like its dequantiser."""
    values = np.random.default_rng(3).normal(0, 0.2, (8, 64)).astype(np.float32)
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType[name])
    got = GGMLFormat.of(name, (8, 64)).dequantize(torch.from_numpy(raw), torch.float32)
    assert torch.equal(got, reference(raw, name))
    assert (got - torch.from_numpy(values)).abs().max() < 0.05  # and it is close to what was quantised


def test_byte_sizes_match_gguf_py() -> None:
    for layout in LAYOUTS.values():
        cols = layout.block_size * 4
        expected = np.prod(gguf.quants.quant_shape_to_byte_shape((3, cols), gguf.GGMLQuantizationType[layout.name]))
        assert stored_nbytes((3, cols), layout.qtype) == expected
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[layout.name]] == (layout.block_size, layout.type_size)
        assert int(layout.qtype) == int(gguf.GGMLQuantizationType[layout.name])
    assert stored_nbytes((3072, 12288), "Q4_K") == 3072 * 12288 // 256 * 144
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        stored_nbytes((16, 100), "Q4_K")


def test_format_object_shapes_and_dtype() -> None:
    fmt = GGMLFormat.of(GGMLType.Q6_K, (4, 512))
    raw = torch.from_numpy(random_tensor_bytes("Q6_K", 4, 512))
    assert fmt.raw_shape == tuple(raw.shape) == (4, 420)
    assert fmt.nbytes == raw.numel()
    out = fmt.dequantize(raw, torch.bfloat16)
    assert out.shape == (4, 512) and out.dtype == torch.bfloat16
    assert str(fmt) == "Q6_K[4, 512]"


def test_kernels_run_where_the_bytes_are() -> None:
    """Shape-only meta tensors go through every kernel: no step leaves the bytes' device (no .numpy/.tolist)."""
    for layout in LAYOUTS.values():
        cols = layout.block_size * 2
        raw = torch.empty(3, stored_nbytes((cols,), layout.qtype), dtype=torch.uint8, device="meta")
        out = dequantize_blocks(raw, layout.qtype, (3, cols), torch.bfloat16)
        assert out.device.type == "meta" and out.shape == (3, cols) and out.dtype == torch.bfloat16


def test_other_types_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedQuantType, match="tensor 'blocks.0.w' is stored as IQ4_XS, which is not supported"):
        layout_of(int(gguf.GGMLQuantizationType.IQ4_XS), tensor="blocks.0.w")
    with pytest.raises(UnsupportedQuantType, match="GGML type type 99"):
        layout_of(99)
    for t in gguf.GGMLQuantizationType:
        assert type_name(int(t)) == t.name  # every type gguf-py knows is named in messages


def test_wrong_byte_count_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"Q8_0 \(2, 64\) needs 136 bytes, got 100"):
        dequantize_blocks(torch.zeros(100, dtype=torch.uint8), "Q8_0", (2, 64))
