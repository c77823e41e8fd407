"""GGUF transformer files (city96's ComfyUI-GGUF layout for Qwen-Image), kept quantised in memory.

Qwen-Image-Edit-class transformers are published as GGUF files made with ComfyUI-GGUF's tools (e.g. QuantStack's
Qwen-Image-Edit-2509 Q2_K..Q8_0). What such a file is, as its converter writes it and its loader reads it:

* ``general.architecture`` is ``"qwen_image"``. Files from tools that write no architecture (or ``"pig"``) are
  accepted when their keys are a Qwen-Image transformer; any other architecture is refused by name.
* Tensor names are the diffusers names of our safetensors single files (``transformer_blocks.0.attn.to_q.weight``),
  bare or under ``model.diffusion_model.``; ``detect.classify`` finds the prefix as for safetensors.
* Shapes: GGUF stores dims innermost first, so the logical (torch) shape is the reverse. A tensor the converter
  reshaped so its rows are whole blocks carries its torch shape in ``comfy.gguf.orig_shape.<name>`` (int32
  array), which wins. Quantised tensors' rows are whole blocks of their type.
* Types: quantisers keep 1-D tensors (norms, biases) in F32 and Qwen-Image's ``img_in``, ``txt_in``,
  ``time_text_embed``, ``norm_out`` and ``proj_out`` in F16/BF16/F32; block weights are Q2_K..Q8_0, the first and
  last blocks often one step finer. Supported: see ``firered_core.quant.blocks``; anything else is refused naming
  the type and a tensor.

Loading validates everything before a module exists: the header walks cleanly and the file is complete
(``gguf_header``), the architecture, every tensor type, then keys and shapes against the config inferred from
the logical shapes (``detect.infer_transformer_config``) in ``stream.load_into``'s one-report check. Then the
transformer is built on the meta device and filled: quantised weights of casting layers stay raw bytes with a
``weight_format`` (``firered_core.quant.GGMLFormat``), float tensors are stored in the compute dtype (``fp8``
makes float Linear weights float8 as for safetensors). On any error no module is returned.

Data is read through ``gguf.GGUFReader`` (the ``gguf`` package, extra ``[gguf]``), which memory-maps the file;
each tensor is copied into owned memory as it is assigned, so the map is dropped once loading ends.

Public API: ``GGUFSource``, ``open_gguf``, ``load_gguf_transformer``, ``QWEN_IMAGE_ARCH``, ``ORIG_SHAPE_PREFIX``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from ..config import TransformerConfig
from ..ops import DEFAULT_OPS
from ..quant import GGMLFormat, UnsupportedQuantType, layout_of
from ..transformer import FireRedTransformer
from .detect import ZERO_COND_T_MARKER, classify, infer_transformer_config, transformer_key_map
from .gguf_header import GGUFHeader, GGUFTensorInfo, check_complete, read_gguf_header
from .safetensors_io import WeightFileError
from .stream import build_transformer

log = logging.getLogger(__name__)

__all__ = ["GGUFSource", "open_gguf", "load_gguf_transformer", "QWEN_IMAGE_ARCH", "ORIG_SHAPE_PREFIX"]

QWEN_IMAGE_ARCH = "qwen_image"
ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."
# architecture strings of tools that do not name the model (stable-diffusion.cpp writes none): judged by keys
_UNNAMED_ARCHS = (None, "pig")
_TORCH_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------
# Validation (header only, nothing mapped yet)
# ---------------------------------------------------------------------------------------------------------------


def _check_architecture(header: GGUFHeader) -> None:
    arch = header.metadata.get("general.architecture")
    if arch == QWEN_IMAGE_ARCH:
        return
    if arch in _UNNAMED_ARCHS:
        log.warning("%s: GGUF file names no architecture (%r); judging it by its tensor names", header.path, arch)
        return
    raise WeightFileError(f"{header.path}: GGUF architecture is {arch!r}; only Qwen-Image transformers "
                          f"({QWEN_IMAGE_ARCH!r}, as ComfyUI-GGUF writes them) are supported")


def _check_types(header: GGUFHeader) -> Counter[str]:
    """The count of tensors per type; ``WeightFileError`` naming an unsupported type and one tensor stored so."""
    counts: Counter[str] = Counter()
    for info in header.tensors:
        try:
            counts[layout_of(info.type_id, tensor=info.name).name] += 1
        except UnsupportedQuantType as e:
            same = sum(t.type_id == info.type_id for t in header.tensors)
            raise WeightFileError(f"{header.path}: {e}; {same} of {len(header.tensors)} tensors use it") from None
    return counts


def _logical_shape(header: GGUFHeader, info: GGUFTensorInfo) -> tuple[int, ...]:
    """The torch shape: the noted original shape if any, else the GGUF dims reversed."""
    noted = header.metadata.get(ORIG_SHAPE_PREFIX + info.name)
    if noted is None:
        return tuple(reversed(info.dims))
    shape = tuple(int(d) for d in noted) if isinstance(noted, tuple) else ()
    if not shape or np.prod(shape) != info.numel:
        raise WeightFileError(f"{header.path}: {ORIG_SHAPE_PREFIX}{info.name} is {noted!r}, which does not fit the "
                              f"tensor's {info.numel} values")
    return shape


# ---------------------------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------------------------


class GGUFSource:
    """A validated GGUF file as a ``stream.TensorSource`` of logical shapes, with raw access for quantised tensors.

    ``get`` returns values (quantised tensors dequantised, in float32 unless ``dtype`` is given);
    ``weight_format(key)`` is the ``GGMLFormat`` of a quantised tensor (None for F32/F16/BF16) and ``raw`` its
    stored bytes. Close it (or use ``with``) to release the memory map.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.header = read_gguf_header(self.path)
        check_complete(self.header)
        _check_architecture(self.header)
        self.type_counts = _check_types(self.header)
        self._infos = {t.name: t for t in self.header.tensors}
        self._shapes = {t.name: _logical_shape(self.header, t) for t in self.header.tensors}
        self._formats = {t.name: self._format_of(t) for t in self.header.tensors}
        self._reader = _open_reader(self.path)
        self._data = {t.name: t.data for t in self._reader.tensors}

    def _format_of(self, info: GGUFTensorInfo) -> GGMLFormat:
        try:
            return GGMLFormat.of(info.type_id, self._shapes[info.name])
        except ValueError as e:
            raise WeightFileError(f"{self.name}: tensor '{info.name}' of shape {list(self._shapes[info.name])}: "
                                  f"{e}") from None

    @property
    def architecture(self) -> str | None:
        arch = self.header.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[self._known(key)]

    def dtype(self, key: str) -> torch.dtype:
        return _TORCH_FLOATS.get(self._formats[self._known(key)].name, torch.float32)

    def weight_format(self, key: str) -> GGMLFormat | None:
        fmt = self._formats[self._known(key)]
        return fmt if layout_of(fmt.qtype).quantised else None

    can_map = True  # ``raw(..., mapped=True)`` may return file-backed bytes (``loading.mapped``)

    def raw(self, key: str, device: torch.device | str | None = None, *, mapped: bool = False) -> torch.Tensor:
        """The stored bytes of ``key`` as ``uint8 [rows, bytes_per_row]``: in owned memory, or with ``mapped`` a
        view of the file (resident only while used, for block offloading)."""
        fmt = self._formats[self._known(key)]
        if mapped and device is None:
            from .mapped import map_tensor

            view = map_tensor(self.path, self._infos[key].start, torch.uint8, tuple(fmt.raw_shape))
            if view is not None:
                return view
        data = np.asarray(self._data[key]).reshape(-1).view(np.uint8)
        if data.size != fmt.nbytes:
            raise WeightFileError(f"{self.name}: tensor '{key}' has {data.size} bytes in the file, its header "
                                  f"needs {fmt.nbytes}")
        raw = torch.from_numpy(data.copy()).reshape(fmt.raw_shape)
        return raw if device is None else raw.to(device)

    def get(self, key: str, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None, *, mapped: bool = False) -> torch.Tensor:
        fmt = self._formats[self._known(key)]
        float_dtype = _TORCH_FLOATS.get(fmt.name)
        plain = mapped and device is None and (dtype is None or dtype == float_dtype)
        raw = self.raw(key, mapped=plain)
        if float_dtype is not None:
            values = raw.view(float_dtype).reshape(fmt.shape)
        else:
            values = fmt.dequantize(raw, torch.float32)
        return values.to(device=device, dtype=dtype or values.dtype)

    def _known(self, key: str) -> str:
        if key not in self._infos:
            raise WeightFileError(f"{self.name}: no tensor named '{key}'")
        return key

    def close(self) -> None:
        self._data.clear()
        self._reader = None

    def __enter__(self) -> "GGUFSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        types = ", ".join(f"{n} {c}" for n, c in self.type_counts.most_common())
        return f"GGUFSource({self.name!r}, {len(self._infos)} tensors: {types})"


def _open_reader(path: Path) -> Any:
    try:
        from gguf import GGUFReader
    except ImportError:
        raise WeightFileError(f"{path}: reading GGUF files needs the 'gguf' package: pip install gguf "
                              "(or the project's [gguf] extra)") from None
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError) as e:  # the header walk passed, so this is a reader limitation
        raise WeightFileError(f"{path}: gguf.GGUFReader cannot read this file: {e}") from None


def open_gguf(path: str | os.PathLike) -> GGUFSource:
    """The validated ``GGUFSource`` of ``path`` (see the module docstring for the checks)."""
    return GGUFSource(path)


# ---------------------------------------------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------------------------------------------


def load_gguf_transformer(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, fp8: bool = False,
                          map_blocks: bool = False,
                          device: torch.device | str | None = None, config: TransformerConfig | None = None,
                          axes_dims_rope: tuple[int, int, int] | None = None,
                          ops: SimpleNamespace = DEFAULT_OPS) -> FireRedTransformer:
    """A transformer from a GGUF file, quantised weights kept quantised and computed in ``dtype``.

    The config is inferred from the logical shapes unless given (``axes_dims_rope`` as for safetensors files).
    ``map_blocks`` keeps the blocks' stored bytes in the file (memory-mapped; see ``loading.mapped``).
    """
    with open_gguf(path) as source:
        kind = classify(source.keys(), source.name)
        if kind.kind != "transformer":
            raise WeightFileError(f"{source.name}: its tensors are a {kind.kind.replace('_', ' ')}, not a Qwen-Image "
                                  "transformer")
        mapping = transformer_key_map(kind, source.keys())
        shapes = {m: source.shape(k) for k, m in mapping.items() if m is not None}
        if f"{kind.prefix}{ZERO_COND_T_MARKER}" in source:
            shapes[ZERO_COND_T_MARKER] = source.shape(f"{kind.prefix}{ZERO_COND_T_MARKER}")
        text_meta = {k: v for k, v in source.header.metadata.items() if isinstance(v, str)}
        config = config or infer_transformer_config(shapes, source.name, metadata=text_meta,
                                                    axes_dims_rope=axes_dims_rope)
        log.info("%s: GGUF transformer %s; tensor types %s", source.name, config,
                 ", ".join(f"{n} x{c}" for n, c in source.type_counts.most_common()))
        return build_transformer(config, source, source_name=source.name, key_map=mapping.get, dtype=dtype,
                                 fp8=fp8, device=device, ops=ops, map_blocks=map_blocks)
