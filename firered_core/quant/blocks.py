"""GGML's block layouts (the quantisation types of GGUF files) and their dequantisation in torch.

A quantised GGML tensor is a run of fixed-size blocks along each row: every block stores ``block_size`` values
in ``type_size`` bytes (small integers plus one or a few float16 scales). Rows are whole blocks, so a tensor of
``n`` values takes ``n / block_size * type_size`` bytes (``stored_nbytes``). The layouts, byte offsets inside
one block (all multi-byte fields little-endian):

=======  =====  =====  ===========================================================================================
type     block  bytes  layout -> value
=======  =====  =====  ===========================================================================================
F32      1      4      float32
F16      1      2      float16
BF16     1      2      bfloat16
Q8_0     32     34     d f16 | q int8[32]                                   -> d * q
Q4_0     32     18     d f16 | qs[16] (value j: low nibble of qs[j], j+16: high nibble)          -> d * (q - 8)
Q4_1     32     20     d f16 | m f16 | qs[16] (as Q4_0)                                          -> d * q + m
Q5_0     32     22     d f16 | qh u32 (bit j = 5th bit of value j) | qs[16] (as Q4_0)           -> d * (q - 16)
Q5_1     32     24     d f16 | m f16 | qh u32 | qs[16]                                           -> d * q + m
Q2_K     256    84     scales[16] (low nibble scale, high nibble min, per 16 values) | qs[64] (2 bits: byte
                       i of each 32-byte half holds values i, i+32, i+64, i+96 of that half) | d f16 | dmin f16
                       -> d * sc * q - dmin * mn
Q3_K     256    110    hmask[32] (bit b of byte i: high bit of value 32 b + i) | qs[64] (low 2 bits, as Q2_K) |
                       scales[12] (16 six-bit scales: low nibbles in bytes 0-7, high pairs in 8-11) | d f16
                       -> d * (sc - 32) * (q_low - 4 * (1 - high bit))
Q4_K     256    144    d f16 | dmin f16 | scales[12] (8 six-bit scales and 8 six-bit mins) | qs[128] (each 32
                       bytes: low nibbles then high nibbles of 64 values)  -> d * sc * q - dmin * mn
Q5_K     256    176    as Q4_K with qh[32] before qs (bit b of byte i: 5th bit of value 32 b + i)
Q6_K     256    210    ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales int8[16] (per 16 values) | d f16
                       -> d * sc * (q - 32)
=======  =====  =====  ===========================================================================================

The values equal gguf-py's numpy reference (``gguf.quants.dequantize``) exactly in float32: the same products in
the same order, no fused multiply-adds; ``dequantize_blocks`` then rounds once to the requested dtype. Kernels
are whole-tensor torch expressions (bit shifts and masks broadcast over all blocks at once), so they run on the
device the bytes are on. Every other GGML type (the IQ family, TQ, MXFP4...) is refused by name.

Public API: ``GGMLType``, ``BlockLayout``, ``LAYOUTS``, ``QK_K``, ``layout_of``, ``type_name``, ``stored_nbytes``,
``blocks_nbytes``, ``dequantize_blocks``, ``UnsupportedQuantType``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable, Sequence

import torch

__all__ = ["GGMLType", "BlockLayout", "LAYOUTS", "QK_K", "layout_of", "type_name", "stored_nbytes",
           "blocks_nbytes", "dequantize_blocks", "UnsupportedQuantType"]

QK_K = 256  # values per super-block of the K-quants


class GGMLType(IntEnum):
    """GGML's type numbers (as stored in GGUF tensor infos) of the supported types."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


# GGML's other type numbers, only so that refusals can name them
OTHER_TYPE_NAMES: dict[int, str] = {
    9: "Q8_1", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}


def type_name(qtype: int | str) -> str:
    """A GGML type's name ("Q4_K", "IQ4_XS"), or "type <n>" for a number GGML does not define (yet)."""
    if isinstance(qtype, str):
        return qtype.upper()
    number = int(qtype)
    if number in GGMLType._value2member_map_:
        return GGMLType(number).name
    return OTHER_TYPE_NAMES.get(number, f"type {number}")


class UnsupportedQuantType(ValueError):
    """A GGML type this module cannot dequantise (its message names the type)."""


Kernel = Callable[[torch.Tensor], torch.Tensor]  # uint8 [n, type_size] -> float32 [n, block_size]


@dataclass(frozen=True)
class BlockLayout:
    """One GGML type: ``block_size`` values stored in ``type_size`` bytes, decoded by ``kernel``."""

    qtype: GGMLType
    block_size: int
    type_size: int
    kernel: Kernel

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def quantised(self) -> bool:
        """False for the plain float types (F32, F16, BF16)."""
        return self.block_size > 1


# ---------------------------------------------------------------------------------------------------------------
# Field helpers: every kernel works on uint8 [n, type_size] views, whatever the device
# ---------------------------------------------------------------------------------------------------------------


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two bytes per block (little-endian float16) -> float32 [n, 1]."""
    return b.contiguous().view(torch.float16).float()


def _fields(q: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """The ``width``-bit fields of every byte of ``q`` (lowest first), stacked along a new axis ``dim``.

    Shifts are Python ints, not tensors: nothing is created on (or copied to) the device per call.
    """
    mask = (1 << width) - 1
    return torch.stack([(q >> shift) & mask for shift in range(0, 8, width)], dim=dim)


def _nibbles(qs: torch.Tensor, group: int) -> torch.Tensor:
    """[n, k] bytes -> [n, 2k] 4-bit values: per ``group`` bytes, all low nibbles, then all high nibbles."""
    n = qs.shape[0]
    return _fields(qs.reshape(n, -1, group), 4, dim=-2).reshape(n, -1)  # [n, k/group, 2, group]


def _crumbs(qs: torch.Tensor, group: int) -> torch.Tensor:
    """[n, k] bytes -> [n, 4k] 2-bit values: per ``group`` bytes, bits 0-1 of each, then 2-3, 4-5, 6-7."""
    n = qs.shape[0]
    return _fields(qs.reshape(n, -1, group), 2, dim=-2).reshape(n, -1)  # [n, k/group, 4, group]


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 8k] bits, bit b of byte i at position 8 i + b (little-endian bit order)."""
    return _fields(qh, 1, dim=-1).reshape(qh.shape[0], -1)  # [n, k, 8]


def _bit_planes(qh: torch.Tensor) -> torch.Tensor:
    """[n, 32] bytes -> [n, 256] bits, bit b of byte i at position 32 b + i (the K-quants' high-bit masks)."""
    return _fields(qh, 1, dim=-2).reshape(qh.shape[0], -1)  # [n, 8, 32]


# ---------------------------------------------------------------------------------------------------------------
# Plain floats and the 32-value types
# ---------------------------------------------------------------------------------------------------------------


def _f32(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float32)


def _f16_values(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()


def _bf16_values(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.bfloat16).float()


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b.view(torch.int8)[:, 2:].float() * _f16(b[:, :2])


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 2:], 16).to(torch.int16) - 8
    return _f16(b[:, :2]) * q.float()


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * _nibbles(b[:, 4:], 16).float() + _f16(b[:, 2:4])


def _five_bit(qh: torch.Tensor, qs: torch.Tensor) -> torch.Tensor:
    return (_nibbles(qs, 16) | (_bits(qh) << 4)).to(torch.int16)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * (_five_bit(b[:, 2:6], b[:, 6:]) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    return _f16(b[:, :2]) * _five_bit(b[:, 4:8], b[:, 8:]).float() + _f16(b[:, 2:4])


# ---------------------------------------------------------------------------------------------------------------
# K-quants (256-value super-blocks)
# ---------------------------------------------------------------------------------------------------------------


def _q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales, qs = b[:, :16], b[:, 16:80]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = (d * (scales & 0x0F).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = _crumbs(qs, 32).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k_scales(scales: torch.Tensor) -> torch.Tensor:
    """12 bytes -> 16 signed scales: low nibbles from bytes 0-7 (low then high), 2 high bits from bytes 8-11."""
    n = scales.shape[0]
    low = _nibbles(scales[:, :8], 8)  # [n, 16]
    high = _crumbs(scales[:, 8:], 4)  # [n, 16]
    return (low | (high << 4)).to(torch.int16) - 32


def _q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    dl = (d * _q3_k_scales(scales).float()).reshape(n, 16, 1)
    low = _crumbs(qs, 32).to(torch.int16)
    high_missing = (_bit_planes(hmask) ^ 1).to(torch.int16)  # a set mask bit means no -4 offset
    q = (low - (high_missing << 2)).reshape(n, 16, 16).float()
    return (dl * q).reshape(n, QK_K)


def _k_scales_mins(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins (as float32 [n, 8])."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: ``d * sc * q - dmin * mn`` per 32 values; ``q`` is [n, 256]."""
    n = b.shape[0]
    sc, mn = _k_scales_mins(b[:, 4:16])
    dl = (_f16(b[:, :2]) * sc).reshape(n, 8, 1)
    ml = (_f16(b[:, 2:4]) * mn).reshape(n, 8, 1)
    return (dl * q.reshape(n, 8, 32).float() - ml).reshape(n, QK_K)


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    return _k_affine(b, _nibbles(b[:, 16:], 32))


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    return _k_affine(b, _nibbles(b[:, 48:], 32) | (_bit_planes(b[:, 16:48]) << 4))


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    dl = (d * scales.view(torch.int8).float()).reshape(n, 16, 1)
    q = (_nibbles(ql, 64) | (_crumbs(qh, 32) << 4)).to(torch.int16) - 32
    return (dl * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


# ---------------------------------------------------------------------------------------------------------------
# Table and entry points
# ---------------------------------------------------------------------------------------------------------------

LAYOUTS: dict[GGMLType, BlockLayout] = {layout.qtype: layout for layout in (
    BlockLayout(GGMLType.F32, 1, 4, _f32),
    BlockLayout(GGMLType.F16, 1, 2, _f16_values),
    BlockLayout(GGMLType.BF16, 1, 2, _bf16_values),
    BlockLayout(GGMLType.Q8_0, 32, 34, _q8_0),
    BlockLayout(GGMLType.Q4_0, 32, 18, _q4_0),
    BlockLayout(GGMLType.Q4_1, 32, 20, _q4_1),
    BlockLayout(GGMLType.Q5_0, 32, 22, _q5_0),
    BlockLayout(GGMLType.Q5_1, 32, 24, _q5_1),
    BlockLayout(GGMLType.Q2_K, QK_K, 84, _q2_k),
    BlockLayout(GGMLType.Q3_K, QK_K, 110, _q3_k),
    BlockLayout(GGMLType.Q4_K, QK_K, 144, _q4_k),
    BlockLayout(GGMLType.Q5_K, QK_K, 176, _q5_k),
    BlockLayout(GGMLType.Q6_K, QK_K, 210, _q6_k),
)}
_BY_NAME = {layout.name: layout for layout in LAYOUTS.values()}


def layout_of(qtype: GGMLType | int | str, *, tensor: str | None = None) -> BlockLayout:
    """The layout of a type given as ``GGMLType``, GGML type number or name ("Q4_K"); ``UnsupportedQuantType``
    (naming the type, and ``tensor`` when given) for any other."""
    if isinstance(qtype, str):
        layout = _BY_NAME.get(qtype.upper())
    else:
        layout = LAYOUTS.get(int(qtype))  # type: ignore[call-overload]
    if layout is None:
        where = f"tensor '{tensor}' is stored as " if tensor else "GGML type "
        raise UnsupportedQuantType(f"{where}{type_name(qtype)}, which is not supported (supported: "
                                   f"{', '.join(_BY_NAME)})")
    return layout


def stored_nbytes(shape: Sequence[int], qtype: GGMLType | int | str) -> int:
    """Bytes a tensor of ``shape`` takes in ``qtype``: blocks x block bytes (no file needed). GGML quantises rows,
    so the last dimension must be a whole number of blocks (else ``ValueError``)."""
    layout = layout_of(qtype)
    if shape and shape[-1] % layout.block_size:
        raise ValueError(f"shape {tuple(shape)}: rows of {shape[-1]} values are not whole {layout.name} blocks of "
                         f"{layout.block_size}")
    return math.prod(shape) // layout.block_size * layout.type_size


def blocks_nbytes(numel: int, qtype: GGMLType | int | str) -> int:
    """Bytes of ``numel`` values in ``qtype`` stored as whole blocks, however the rows were laid out (files may
    store a tensor reshaped to rows of one block and note its original shape)."""
    layout = layout_of(qtype)
    if numel % layout.block_size:
        raise ValueError(f"{numel} values are not a whole number of {layout.name} blocks of {layout.block_size}")
    return numel // layout.block_size * layout.type_size


def dequantize_blocks(raw: torch.Tensor, qtype: GGMLType | int | str, shape: Sequence[int],
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values of ``raw`` (uint8 bytes of whole blocks, any shape) as a ``dtype`` tensor of ``shape``, computed
    on ``raw``'s device."""
    layout = layout_of(qtype)
    if raw.dtype != torch.uint8:
        raise TypeError(f"dequantize_blocks: raw must be uint8 bytes, got {raw.dtype}")
    expected = blocks_nbytes(math.prod(shape), layout.qtype)
    if raw.numel() != expected:
        raise ValueError(f"dequantize_blocks: {layout.name} {tuple(shape)} needs {expected} bytes, got {raw.numel()}")
    if sys.byteorder != "little":
        raise RuntimeError("GGML blocks are little-endian; dequantising on a big-endian machine is not supported")
    values = layout.kernel(raw.reshape(-1, layout.type_size))  # [blocks, block_size]
    return values.reshape(tuple(shape)).to(dtype)
