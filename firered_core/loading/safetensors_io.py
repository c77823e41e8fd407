"""Validated, one-tensor-at-a-time reading of safetensors files.

Everything in ``firered_core`` that reads weights goes through this module, so every weight-file problem
surfaces as one exception type, ``WeightFileError``, whose message names the file and says what is wrong.

Usage::

    header = read_header("model.safetensors")          # {key: TensorInfo}, fully validated, no data read
    with open_weights(["a.safetensors", "b.safetensors"]) as src:
        for key in src.keys():
            t = src.get(key, dtype=torch.bfloat16)      # one tensor in memory at a time
    src = open_sharded("transformer/diffusion_pytorch_model.safetensors.index.json")

What ``read_header`` checks before anything is loaded:

* the path exists and is a file;
* it is not a pickle: ``.ckpt/.pt/.pth/.bin/.pkl`` are refused by extension, and a file of any name whose first
  bytes are a zip archive (``torch.save``) or a pickle stream is refused by content. Unpickling runs arbitrary
  code, so this project never does it; the message says how to convert. GGUF files (read by ``gguf_file``, for
  transformers) and Git LFS pointer files (a download that fetched the pointer, not the weights) get their own
  messages;
* the header length is plausible, the header is a JSON object, every entry has a known dtype, a shape and data
  offsets whose size equals ``numel * itemsize``;
* every tensor's bytes lie inside the file: a truncated download is reported with the first tensor it cuts off.

Why not ``safetensors.safe_open``: its torch tensors are views of a memory map of the whole file. Every page a
load touches (including when converting dtype) stays resident and counted in the process RSS until the handle
closes, so a load with dtype conversion peaks near file size + converted size. Here each tensor is read with
plain positioned reads into a freshly allocated tensor: the memory is owned, writable, and the only transient
cost of a load is the one tensor being converted. The format is simple enough (8-byte little-endian header
length, JSON header, raw little-endian bytes) that the reader is a few lines; ``save.py`` streams files out
the same way, and both are checked against the ``safetensors`` library and diffusers in the tests.

Public API: ``WeightFileError``, ``TensorInfo``, ``read_header``, ``read_metadata``, ``WeightSource``,
``open_weights``, ``open_sharded``, ``PICKLE_SUFFIXES``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

__all__ = ["WeightFileError", "TensorInfo", "read_header", "read_metadata", "WeightSource", "open_weights",
           "open_sharded", "PICKLE_SUFFIXES"]

PathLike = str | os.PathLike


class WeightFileError(ValueError):
    """A weight file (or folder) is missing, unreadable, of an unsupported format or does not fit the model."""


# Extensions that are (nearly always) pickles. Refused without opening: a pickle can execute code on load.
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

_CONVERT_HINT = ("convert it to .safetensors in a trusted environment "
                 "(e.g. safetensors.torch.save_file(torch.load(path, weights_only=True), out))")

# safetensors dtype names -> torch dtypes; entries torch lacks in this version are skipped.
_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64",
}
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    k: getattr(torch, v) for k, v in _DTYPE_NAMES.items() if hasattr(torch, v)
}
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# The reference implementation refuses headers above 100 MB; a 60-layer transformer's is about 100 KB.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_READ_CHUNK = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, dtype, shape and absolute byte range ``[start, end)`` in the file."""

    key: str
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# ---------------------------------------------------------------------------------------------------------------
# Header validation
# ---------------------------------------------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if not path.exists():
        raise WeightFileError(f"{path}: file not found")
    if path.is_dir():
        raise WeightFileError(f"{path}: is a folder, expected a .safetensors file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise WeightFileError(
            f"{path}: '{path.suffix}' files are pickles, which can run arbitrary code when loaded and are refused; "
            f"{_CONVERT_HINT}")


def _check_magic(path: Path, head: bytes) -> None:
    """Refuse well-known non-safetensors contents by their first bytes, whatever the file is called.

    Only called when the file does not look like safetensors (length + '{'), since a safetensors header length
    such as 0x380 starts with the same bytes as a pickle.
    """
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        raise WeightFileError(
            f"{path}: is a zip archive (a torch.save checkpoint, i.e. a pickle), not safetensors; refused because "
            f"unpickling can run arbitrary code; {_CONVERT_HINT}")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise WeightFileError(
            f"{path}: is a Python pickle, not safetensors; refused because unpickling can run arbitrary code; "
            f"{_CONVERT_HINT}")
    if head[:4] == b"GGUF":
        raise WeightFileError(f"{path}: is a GGUF file, not safetensors; GGUF is read for the transformer only: pass "
                              "it with the VAE and text-encoder files to load_components (or --model in the CLI)")
    if head.startswith(b"version https://git-lfs"):
        raise WeightFileError(
            f"{path}: is a Git LFS pointer (a few hundred bytes of text), not the weights; fetch the real file")


def _parse_entry(path: Path, key: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise WeightFileError(f"{path}: header entry for tensor '{key}' lacks dtype/shape/data_offsets")
    name = entry["dtype"]
    if name not in SAFETENSORS_DTYPES:
        raise WeightFileError(f"{path}: tensor '{key}' has unknown or unsupported dtype {name!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise WeightFileError(f"{path}: tensor '{key}' has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise WeightFileError(f"{path}: tensor '{key}' has invalid data_offsets {offsets!r}")
    dtype = SAFETENSORS_DTYPES[name]
    info = TensorInfo(key, path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
    expected = info.numel * dtype.itemsize
    if info.nbytes != expected:
        raise WeightFileError(
            f"{path}: tensor '{key}' ({name}, shape {tuple(shape)}) needs {expected} bytes but its data_offsets "
            f"span {info.nbytes}")
    return info


def _read_raw_header(path: Path) -> tuple[dict, int, int]:
    """The decoded JSON header, the absolute offset where tensor data starts, and the file size."""
    _check_path(path)
    size = path.stat().st_size
    if size == 0:
        raise WeightFileError(f"{path}: file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(64)
        n = struct.unpack("<Q", head[:8])[0] if size >= 8 else 0
        if head[8:9] != b"{" or n > _MAX_HEADER_BYTES:
            _check_magic(path, head)
            raise WeightFileError(f"{path}: not a safetensors file (it does not start with a header length and a "
                                  f"JSON header; {size} bytes)")
        if 8 + n > size:
            raise WeightFileError(
                f"{path}: file is truncated: its header alone needs {8 + n} bytes but the file has {size}")
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: safetensors header is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise WeightFileError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + n, size


def read_header(path: PathLike) -> dict[str, TensorInfo]:
    """Every tensor's ``TensorInfo`` in file order, after the checks listed in the module docstring."""
    p = Path(path)
    header, data_start, size = _read_raw_header(p)
    infos = {k: _parse_entry(p, k, v, data_start) for k, v in header.items() if k != "__metadata__"}
    cut = [i for i in infos.values() if i.end > size]
    if cut:
        first = min(cut, key=lambda i: i.start)
        raise WeightFileError(
            f"{p}: file is truncated: tensor '{first.key}' needs bytes up to {first.end} but the file has only "
            f"{size} bytes ({len(cut)} of {len(infos)} tensors cut off); re-download or re-save it")
    return dict(sorted(infos.items(), key=lambda kv: kv[1].start))


def read_metadata(path: PathLike) -> dict[str, str]:
    """The free-form ``__metadata__`` string map of a safetensors file (empty when absent)."""
    p = Path(path)
    header, _, _ = _read_raw_header(p)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise WeightFileError(f"{p}: safetensors __metadata__ is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


# ---------------------------------------------------------------------------------------------------------------
# Reading tensors
# ---------------------------------------------------------------------------------------------------------------


def _read_tensor(f, info: TensorInfo) -> torch.Tensor:
    """``info``'s tensor read from the open binary file ``f`` into newly allocated (owned) memory."""
    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy()) if info.nbytes else memoryview(b"")
    f.seek(info.start)
    done = 0
    while done < info.nbytes:
        n = f.readinto(view[done:done + _READ_CHUNK])
        if not n:
            raise WeightFileError(
                f"{info.path}: file ended while reading tensor '{info.key}' (was it changed while loading?)")
        done += n
    out = buf.view(info.dtype) if info.nbytes else torch.empty(0, dtype=info.dtype)
    if sys.byteorder != "little" and info.dtype.itemsize > 1:  # safetensors stores little-endian
        out = out.view(torch.uint8).view(-1, info.dtype.itemsize).flip(-1).contiguous().view(info.dtype)
    return out.reshape(info.shape)


class WeightSource:
    """Read-only view over the tensors of one or several safetensors files (e.g. the shards of one model).

    Keys must be unique across files. Files are opened lazily and kept open until ``close()`` (or the end of a
    ``with`` block). ``name`` is what error messages call this source (the file, or the shard index).
    """

    def __init__(self, paths: Sequence[PathLike], *, name: str | None = None) -> None:
        if not paths:
            raise WeightFileError(f"{name or 'weights'}: no weight files given")
        self.paths = tuple(Path(p) for p in paths)
        self.name = name or (str(self.paths[0]) if len(self.paths) == 1 else
                             f"{self.paths[0]} (+{len(self.paths) - 1} more files)")
        self._infos: dict[str, TensorInfo] = {}
        for p in self.paths:
            for key, info in read_header(p).items():
                if key in self._infos:
                    raise WeightFileError(f"{p}: tensor '{key}' is also in {self._infos[key].path}")
                self._infos[key] = info
        self._handles: dict[Path, object] = {}

    can_map = True  # ``get(..., mapped=True)`` may return file-backed views (``loading.mapped``)

    # -- inspection (no tensor data read) ------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, key: str) -> TensorInfo:
        try:
            return self._infos[key]
        except KeyError:
            raise WeightFileError(f"{self.name}: no tensor named '{key}'") from None

    def shape(self, key: str) -> tuple[int, ...]:
        return self.info(key).shape

    def dtype(self, key: str) -> torch.dtype:
        return self.info(key).dtype

    def file_of(self, key: str) -> Path:
        return self.info(key).path

    @property
    def nbytes(self) -> int:
        """Total bytes of tensor data across all files."""
        return sum(i.nbytes for i in self._infos.values())

    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of all files merged (later files win on conflicts)."""
        out: dict[str, str] = {}
        for p in self.paths:
            out.update(read_metadata(p))
        return out

    # -- data ----------------------------------------------------------------------------------------------------
    def get(self, key: str, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None, *, mapped: bool = False) -> torch.Tensor:
        """The tensor ``key``, read now, optionally converted to ``dtype`` and moved to ``device``.

        ``mapped``: where no conversion is asked for, a view of the file's bytes (``loading.mapped``: resident only
        while used) instead of a copy; tensors that cannot be mapped are read as usual."""
        info = self.info(key)
        if mapped and (dtype is None or dtype == info.dtype) and device is None:
            from .mapped import map_tensor

            view = map_tensor(info.path, info.start, info.dtype, info.shape)
            if view is not None:
                return view
        handle = self._handles.get(info.path)
        if handle is None:
            handle = self._handles[info.path] = open(info.path, "rb", buffering=0)
        t = _read_tensor(handle, info)
        if (dtype is not None and dtype != t.dtype) or device is not None:
            t = t.to(device=device, dtype=dtype or t.dtype)
        return t

    def close(self) -> None:
        for h in self._handles.values():
            h.close()  # type: ignore[attr-defined]
        self._handles.clear()

    def __enter__(self) -> "WeightSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WeightSource({self.name!r}, {len(self)} tensors, {self.nbytes / 2**20:.1f} MiB)"


def open_weights(paths: PathLike | Sequence[PathLike]) -> WeightSource:
    """A ``WeightSource`` over one safetensors file or a list of them."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return WeightSource(list(paths))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (config.json, model_index.json, a shard index); errors name the file."""
    if not path.is_file():
        raise WeightFileError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise WeightFileError(f"{path}: expected a JSON object")
    return data


def open_sharded(index_json_path: PathLike) -> WeightSource:
    """A ``WeightSource`` over the shards listed in a diffusers/transformers ``*.safetensors.index.json``.

    Every shard the index names must exist next to it, and every key must be in the shard the index says.
    """
    index = Path(index_json_path)
    data = read_json(index)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightFileError(f"{index}: shard index has no 'weight_map'")
    shards = list(dict.fromkeys(str(v) for v in weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise WeightFileError(
            f"{index}: shard '{missing[0]}' listed in the index is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    src = WeightSource([index.parent / s for s in shards], name=str(index))
    for key, shard in weight_map.items():
        if key not in src:
            raise WeightFileError(f"{index}: tensor '{key}' listed in the index is not in shard '{shard}'")
        if src.file_of(key).name != Path(shard).name:
            raise WeightFileError(f"{index}: tensor '{key}' is in {src.file_of(key).name}, the index says {shard}")
    extra = [k for k in src.keys() if k not in weight_map]
    if extra:
        log.warning("%s: %d tensors in the shards are not listed in the index (e.g. %s); they are used anyway",
                    index, len(extra), extra[0])
    return src
