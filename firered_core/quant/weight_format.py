"""``GGMLFormat``: how a layer holds a GGML-quantised parameter and turns it back into values at compute time.

The layer keeps the file's raw bytes (a uint8 ``nn.Parameter`` of shape ``[rows, bytes_per_row]``, no gradient)
and gets the attribute ``<name>_format`` set to a ``GGMLFormat``. ``firered_core.ops.cast_param`` sees the
attribute, moves the bytes to the input's device and calls ``dequantize`` there, on every call: the weights stay
quantised in memory (a Q4_K transformer takes ~4.5 bits per weight) and only one layer's values exist in the
compute dtype at a time. A host that measures modules by their parameters (ComfyUI's model patcher) sees the
true stored size, and its low-VRAM ``weight_function`` patches receive the dequantised weight.

::

    fmt = GGMLFormat.of("Q8_0", (3072, 3072))
    raw = fmt.empty_raw()                                # uint8 [3072, 3264]
    weight = fmt.dequantize(raw, torch.bfloat16)         # bfloat16 [3072, 3072], on raw's device

Public API: ``GGMLFormat``, ``quantised_parameters``, ``logical_shape``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .blocks import GGMLType, blocks_nbytes, dequantize_blocks, layout_of, stored_nbytes

__all__ = ["GGMLFormat", "quantised_parameters", "logical_shape"]


@dataclass(frozen=True)
class GGMLFormat:
    """A parameter of logical ``shape`` stored as GGML ``qtype`` blocks (satisfies ``ops.WeightFormat``)."""

    qtype: GGMLType
    shape: tuple[int, ...]

    @classmethod
    def of(cls, qtype: GGMLType | int | str, shape: Sequence[int]) -> "GGMLFormat":
        """The format for a type (``GGMLType``, number or name) and a logical shape of whole blocks."""
        fmt = cls(layout_of(qtype).qtype, tuple(int(d) for d in shape))
        blocks_nbytes(math.prod(fmt.shape), fmt.qtype)  # raises unless the values fill whole blocks
        return fmt

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def nbytes(self) -> int:
        """Bytes of the stored blocks."""
        return blocks_nbytes(math.prod(self.shape), self.qtype)

    @property
    def raw_shape(self) -> tuple[int, int]:
        """``[rows, bytes_per_row]``, the shape layers keep the bytes in: one row per row of ``shape`` when rows are
        whole blocks (always so for GGML's own files), else one row per block."""
        block = layout_of(self.qtype).block_size
        if self.shape and self.shape[-1] % block == 0:
            return (math.prod(self.shape[:-1]), stored_nbytes(self.shape[-1:], self.qtype))
        return (self.nbytes // layout_of(self.qtype).type_size, layout_of(self.qtype).type_size)

    def empty_raw(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.zeros(self.raw_shape, dtype=torch.uint8, device=device)

    def dequantize(self, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The values in ``dtype`` and ``shape``, computed on ``raw``'s device."""
        return dequantize_blocks(raw, self.qtype, self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.name}{list(self.shape)}"


def quantised_parameters(module: nn.Module) -> dict[str, GGMLFormat]:
    """``{parameter path: format}`` of every parameter inside ``module`` stored in a GGML block format."""
    found: dict[str, GGMLFormat] = {}
    for path, sub in module.named_modules():
        for name, _ in sub.named_parameters(recurse=False):
            fmt = getattr(sub, f"{name}_format", None)
            if isinstance(fmt, GGMLFormat):
                found[f"{path}.{name}" if path else name] = fmt
    return found


def logical_shape(module: nn.Module, name: str = "weight") -> tuple[int, ...]:
    """The shape parameter ``name`` of ``module`` has in computations (its format's shape when quantised)."""
    fmt = getattr(module, f"{name}_format", None)
    if fmt is not None:
        return tuple(fmt.shape)
    return tuple(getattr(module, name).shape)
