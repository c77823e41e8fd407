"""File-backed weights: tensors that use a weight file's bytes in place, and giving their pages back.

A 20 B-parameter transformer in fp8 is 20 GB; read into memory it fills a 24 GB machine. When its blocks are
streamed to the compute device one at a time (``offload="blocks"``), the host does not need them resident either:
the tensors can be views of a memory map of the file, so the kernel reads a block's pages when it is used, and
``release`` hands them back afterwards (``madvise(MADV_DONTNEED)``: the pages leave this process's resident set;
the kernel may keep them in its page cache, which it frees under pressure and which is not the process's memory).

Rules that keep this safe:

* Only clean, read-only views are made: the mapping is private (copy-on-write) and tensors from it are frozen
  weights that nothing writes; ``release`` only ever acts on address ranges this module mapped, so it can never
  drop the pages of ordinary (anonymous) memory, which would zero them.
* A tensor is mapped only when the file's bytes are exactly its storage (same dtype, little-endian host, offset
  aligned to the element size); otherwise the caller reads a copy as usual.
* Maps live until the process ends (a tensor may outlive the ``WeightSource`` that made it); each file is mapped
  once. On systems without ``madvise`` (non-Linux) ``release`` does nothing.

Public API: ``map_tensor``, ``release``, ``is_mapped``, ``register_mapping``.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
import threading
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["map_tensor", "release", "is_mapped", "register_mapping"]

_MADV_DONTNEED = 4  # Linux
_PAGE = mmap.PAGESIZE

_lock = threading.Lock()
_maps: dict[Path, tuple[mmap.mmap, int]] = {}  # file -> (map, base address)
_ranges: list[tuple[int, int]] = []  # sorted [start, end) address ranges of every mapping made or registered
_libc = None


def _madvise():
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return None if _libc is None else _libc.madvise


def register_mapping(start: int, length: int) -> None:
    """Declare ``[start, start + length)`` a read-only file mapping whose pages ``release`` may drop (e.g. the
    buffer of a ``numpy.memmap`` another reader made)."""
    with _lock:
        bisect.insort(_ranges, (start, start + length))


def _file_map(path: Path) -> tuple[mmap.mmap, int]:
    with _lock:
        found = _maps.get(path)
    if found is not None:
        return found
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    register_mapping(base, size)
    with _lock:
        _maps.setdefault(path, (mm, base))
        return _maps[path]


def map_tensor(path: str | os.PathLike, start: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A tensor of ``dtype``/``shape`` over the file's bytes from ``start``, or None where it cannot be mapped
    (big-endian host, misaligned offset, empty tensor)."""
    numel = 1
    for d in shape:
        numel *= d
    if numel == 0 or sys.byteorder != "little" or start % dtype.itemsize:
        return None
    mm, _ = _file_map(Path(path).resolve())
    if start + numel * dtype.itemsize > len(mm):
        return None
    flat = torch.frombuffer(mm, dtype=dtype, count=numel, offset=start)
    return flat.view(shape)


def _containing(address: int) -> tuple[int, int] | None:
    with _lock:
        i = bisect.bisect_right(_ranges, (address, float("inf"))) - 1
        if i >= 0 and _ranges[i][0] <= address < _ranges[i][1]:
            return _ranges[i]
    return None


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t``'s data lies in a file mapping this module knows."""
    return t.device.type == "cpu" and t.numel() > 0 and _containing(t.data_ptr()) is not None


def _tensors(items: nn.Module | Iterable[torch.Tensor]) -> Iterable[torch.Tensor]:
    if isinstance(items, nn.Module):
        return [*items.parameters(), *items.buffers()]
    return items


def release(items: nn.Module | Iterable[torch.Tensor]) -> int:
    """Drop the resident pages of every file-backed tensor in ``items`` (a module or tensors) from this process;
    the data stays valid (it is read from the file again when next used). Returns the bytes advised."""
    advise = _madvise()
    if advise is None:
        return 0
    done = 0
    for t in _tensors(items):
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        start = t.data_ptr()
        span = _containing(start)
        if span is None:
            continue
        end = min(start + t.numel() * t.element_size(), span[1])
        first = -(-start // _PAGE) * _PAGE  # whole pages only: neighbours may share the edge pages
        last = end // _PAGE * _PAGE
        if last > first and advise(first, last - first, _MADV_DONTNEED) == 0:
            done += last - first
    return done
