"""The header of a GGUF file, walked with plain reads so that a damaged file is diagnosed before it is parsed.

``gguf.GGUFReader`` memory-maps the whole file and builds a numpy view per tensor while it opens it; a download
cut short therefore fails inside numpy ("cannot reshape array of size ..."), and a tensor type newer than the
installed ``gguf`` fails as an enum error. ``read_gguf_header`` walks the same header (magic, version, metadata,
tensor infos) with positioned reads and returns what the checks need: every tensor's name, GGML dims (innermost
first, as GGUF stores them), type number and byte range, plus the metadata values. ``check_complete`` then
reports a truncated file with sizes. GGUF layout (little-endian; versions 2 and 3)::

    "GGUF" | u32 version | u64 tensor count | u64 metadata count
    metadata: string key | u32 value type | value     (string = u64 length + UTF-8; array = u32 type, u64 n, items)
    tensor infos: string name | u32 n_dims | u64 dims[n_dims] | u32 type | u64 offset (from the data start)
    padding to ``general.alignment`` (default 32) | tensor data

Public API: ``GGUFHeader``, ``GGUFTensorInfo``, ``read_gguf_header``, ``check_complete``, ``tensor_end``,
``is_gguf_file``, ``GGUF_MAGIC``.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..quant import LAYOUTS, blocks_nbytes
from .safetensors_io import WeightFileError

__all__ = ["GGUFHeader", "GGUFTensorInfo", "read_gguf_header", "check_complete", "tensor_end", "is_gguf_file",
           "GGUF_MAGIC"]

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# metadata value types: number -> struct format of a scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 8


def is_gguf_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file starting with the GGUF magic (the name is never consulted)."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == GGUF_MAGIC


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor as the header describes it: ``dims`` innermost first (GGML order), absolute byte ``start``."""

    name: str
    dims: tuple[int, ...]
    type_id: int
    start: int

    @property
    def numel(self) -> int:
        return math.prod(self.dims)


@dataclass
class GGUFHeader:
    """What ``read_gguf_header`` found; ``metadata`` maps keys to ints, floats, bools, strings or tuples of them."""

    path: Path
    version: int
    file_size: int
    data_start: int
    metadata: dict[str, object] = field(default_factory=dict)
    tensors: list[GGUFTensorInfo] = field(default_factory=list)


class _Cursor:
    """Sequential little-endian reads that turn a short read into a 'truncated' error naming the file."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def take(self, n: int, what: str) -> bytes:
        start = self.f.tell()
        data = self.f.read(n)
        if len(data) != n:
            raise WeightFileError(f"{self.path}: file is truncated: its GGUF header ({what}) needs bytes up to "
                                  f"{start + n} but the file has only {self.size} bytes; re-download it")
        return data

    def unpack(self, fmt: str, what: str) -> object:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = int(self.unpack("<Q", what))  # type: ignore[arg-type]
        if n > self.size:
            raise WeightFileError(f"{self.path}: corrupt GGUF header: {what} claims {n} bytes")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WeightFileError(f"{self.path}: corrupt GGUF header: {what} is not UTF-8") from None

    def value(self, type_id: int, what: str) -> object:
        if type_id in _SCALARS:
            return self.unpack(_SCALARS[type_id], what)
        if type_id == _STRING:
            return self.string(what)
        if type_id == _ARRAY:
            item_type = int(self.unpack("<I", what))  # type: ignore[arg-type]
            count = int(self.unpack("<Q", what))  # type: ignore[arg-type]
            if item_type == _ARRAY or count > self.size:
                raise WeightFileError(f"{self.path}: corrupt GGUF header: {what} is an array of {count} items "
                                      f"of type {item_type}")
            return tuple(self.value(item_type, what) for _ in range(count))
        raise WeightFileError(f"{self.path}: corrupt GGUF header: {what} has unknown value type {type_id}")


def _tensor_info(cur: _Cursor, index: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(f"name of tensor {index}")
    n_dims = int(cur.unpack("<I", f"tensor '{name}'"))  # type: ignore[arg-type]
    if n_dims > _MAX_DIMS:
        raise WeightFileError(f"{cur.path}: corrupt GGUF header: tensor '{name}' has {n_dims} dimensions")
    dims = tuple(int(cur.unpack("<Q", f"tensor '{name}'")) for _ in range(n_dims))  # type: ignore[arg-type]
    type_id = int(cur.unpack("<I", f"tensor '{name}'"))  # type: ignore[arg-type]
    offset = int(cur.unpack("<Q", f"tensor '{name}'"))  # type: ignore[arg-type]
    return name, dims, type_id, offset


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Walk the header of the GGUF file ``path``; ``WeightFileError`` for a missing, foreign, damaged or
    truncated header (tensor data is not checked here: see ``tensor_end`` and ``check_complete``)."""
    p = Path(path)
    if not p.is_file():
        raise WeightFileError(f"{p}: file not found")
    size = p.stat().st_size
    with open(p, "rb") as f:
        cur = _Cursor(f, p, size)
        if cur.take(4, "magic") != GGUF_MAGIC:
            raise WeightFileError(f"{p}: not a GGUF file (it does not start with 'GGUF')")
        version = int(cur.unpack("<I", "version"))  # type: ignore[arg-type]
        if version & 0xFFFF == 0:
            raise WeightFileError(f"{p}: big-endian GGUF files are not supported")
        if version not in (2, 3):
            raise WeightFileError(f"{p}: GGUF version {version} is not supported (2 and 3 are)")
        n_tensors = int(cur.unpack("<Q", "tensor count"))  # type: ignore[arg-type]
        n_meta = int(cur.unpack("<Q", "metadata count"))  # type: ignore[arg-type]
        header = GGUFHeader(p, version, size, 0)
        for i in range(n_meta):
            key = cur.string(f"metadata key {i}")
            header.metadata[key] = cur.value(int(cur.unpack("<I", key)), key)  # type: ignore[arg-type]
        infos = [_tensor_info(cur, i) for i in range(n_tensors)]
        alignment = int(header.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))  # type: ignore[arg-type]
        if alignment <= 0:
            raise WeightFileError(f"{p}: corrupt GGUF header: general.alignment is {alignment}")
        header.data_start = -(-f.tell() // alignment) * alignment
    header.tensors = [GGUFTensorInfo(name, dims, type_id, header.data_start + offset)
                      for name, dims, type_id, offset in infos]
    return header


def tensor_end(info: GGUFTensorInfo) -> int:
    """The absolute end of ``info``'s bytes (its type must be a supported one, see ``firered_core.quant``)."""
    return info.start + blocks_nbytes(info.numel, info.type_id)


def check_complete(header: GGUFHeader) -> None:
    """``WeightFileError`` naming the first tensor a truncated file cuts off, with the sizes involved. Tensors of
    types ``firered_core.quant`` does not know are left to the type check (their size is not known here)."""
    known = [t for t in header.tensors if t.type_id in LAYOUTS]
    cut = [(tensor_end(t), t) for t in known if tensor_end(t) > header.file_size]
    if cut:
        end, first = min(cut, key=lambda c: c[1].start)
        raise WeightFileError(
            f"{header.path}: file is truncated: tensor '{first.name}' needs bytes up to {end} but the file has only "
            f"{header.file_size} bytes ({len(cut)} of {len(header.tensors)} tensors cut off); re-download it")
