"""Stream weights into a module built on the meta device, one tensor at a time.

A 20 B-parameter transformer cannot afford the usual "build with random init, read a state dict, copy it in"
(three copies of the weights at the peak). Instead the model is built on ``torch.device("meta")`` (shapes only,
no memory) and ``load_into`` replaces each meta parameter by the tensor read from the file, converted to its
storage dtype right away, so the process holds the loaded weights plus one tensor in flight::

    model = FireRedTransformer(config, device="meta", dtype=torch.bfloat16)
    with open_weights(path) as src:
        load_into(model, src, source_name=str(path), linear_weight_dtype=torch.float8_e4m3fn)

Rules:

* Every file key goes through ``key_map`` (file name -> module name, or ``None`` to skip it, e.g. a marker key).
  Before anything is read, the mapped key set is compared with the module's state dict: missing keys, unexpected
  keys and shape mismatches are ALL reported in one ``WeightFileError`` naming the source, each key, and the
  expected vs found shape. ``strict=False`` tolerates missing and unexpected keys (missing tensors become zeros,
  with a warning); shape mismatches are always errors.
* Storage dtype: ``dtype`` if given, else the dtype the meta parameter was built with (a float8 ``dtype`` is
  taken as ``linear_weight_dtype``). ``linear_weight_dtype``
  (e.g. ``torch.float8_e4m3fn``) applies to the ``weight`` of ``nn.Linear`` modules only; norms, biases,
  embeddings and convolutions keep the compute dtype because they are small and precision-sensitive, and the
  ``ops`` layers upcast fp8 weights at compute time. Conversion to float8 saturates at the format's largest
  finite value (a plain cast would turn outliers into NaN). Integer tensors keep their dtype.
* Quantised tensors (a source with ``weight_format(key)``, e.g. a GGUF file) stay quantised when the owning layer
  casts its parameters at compute time (``ops.CastWeights``): the parameter becomes the raw bytes (uint8, no
  gradient) and the layer gets ``<name>_format``, which ``ops.cast_param`` dequantises with at every call. Under
  any other module (a host's own layer class) the tensor is dequantised while loading instead.
* Quantised storage: when a tensor's storage dtype is fp8 and the source can hand it over still quantised
  (``quantized(key)`` -> raw tensor + weight format, as ``scaled_fp8.ScaledFP8Source`` does for scaled-fp8
  files), the raw tensor is stored as it is and the format is set on its module as ``<name>_format``
  (``ops.WeightFormat``; the ``ops`` layers dequantise at every call). Such parameters never require grad.
* After loading, nothing may remain on the meta device: a non-persistent buffer is materialised by its owning
  module's ``materialize_buffers(device)`` method when it has one, otherwise it is an error.

``build_transformer`` / ``build_vae`` do the whole dance for FireRed's two networks (meta build, stream, eval
mode); ``LoadedComponents`` is what the top-level loaders return.

Public API: ``load_into``, ``LoadReport``, ``TensorSource``, ``build_transformer``, ``build_vae``,
``LoadedComponents``, ``FP8_DTYPE``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable, NamedTuple, Protocol

import torch
from torch import nn

from ..config import CompactVAEConfig, SchedulerConfig, TransformerConfig, VAEConfig
from ..ops import DEFAULT_OPS, CastWeights, WeightFormat
from ..transformer import FireRedTransformer
from ..vae import FireRedVAE
from .safetensors_io import WeightFileError

log = logging.getLogger(__name__)

__all__ = ["load_into", "LoadReport", "TensorSource", "KeyMap", "build_transformer", "build_vae", "LoadedComponents",
           "FP8_DTYPE"]

KeyMap = Callable[[str], "str | None"]

# the storage dtype ``fp8=True`` selects for Linear weights (the format ComfyUI's fp8 files use)
FP8_DTYPE = torch.float8_e4m3fn

# how many keys of each kind an error message lists before summarising the rest
_LIST_LIMIT = 12


class TensorSource(Protocol):
    """What ``load_into`` reads from: ``WeightSource`` or any adapter with the same methods.

    A source of quantised tensors also has ``weight_format(key) -> WeightFormat | None`` and ``raw(key, device)``
    (the stored bytes); its ``get`` returns dequantised values and ``shape`` the logical shape.
    """

    name: str

    def keys(self) -> list[str]: ...

    def shape(self, key: str) -> tuple[int, ...]: ...

    def dtype(self, key: str) -> torch.dtype: ...

    def get(self, key: str, dtype: torch.dtype | None = None,
            device: torch.device | str | None = None) -> torch.Tensor: ...


@dataclass
class LoadReport:
    """What a load did: tensors assigned, bytes read, and what ``strict=False`` let through."""

    loaded: int = 0
    bytes_loaded: int = 0
    skipped: list[str] = field(default_factory=list)  # file keys the key map dropped
    missing: list[str] = field(default_factory=list)  # module keys absent from the file (zero-filled)
    unexpected: list[str] = field(default_factory=list)  # file keys the module does not have (ignored)


# ---------------------------------------------------------------------------------------------------------------
# Planning: compare the file with the module before reading anything
# ---------------------------------------------------------------------------------------------------------------


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _plan(module: nn.Module, source: TensorSource, key_map: KeyMap | None, strict: bool,
          source_name: str) -> tuple[dict[str, str], LoadReport]:
    """``{module key: file key}`` for every tensor to load; raises one error listing every mismatch."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    report = LoadReport()
    plan: dict[str, str] = {}
    for file_key in source.keys():
        target = key_map(file_key) if key_map else file_key
        if target is None:
            report.skipped.append(file_key)
        elif target in plan:
            raise WeightFileError(f"{source_name}: tensors '{plan[target]}' and '{file_key}' both map to "
                                  f"'{target}'")
        else:
            plan[target] = file_key
    report.missing = [k for k in expected if k not in plan]
    report.unexpected = [plan[k] for k in plan if k not in expected]
    mismatched = [f"'{plan[k]}': model expects {list(shape)}, file has {list(source.shape(plan[k]))}"
                  for k, shape in expected.items() if k in plan and tuple(source.shape(plan[k])) != shape]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched[:_LIST_LIMIT])
                        + (f"; ... ({len(mismatched) - _LIST_LIMIT} more)" if len(mismatched) > _LIST_LIMIT else ""))
    if strict and report.missing:
        problems.append(f"{len(report.missing)} missing keys: {_listing(report.missing)}")
    if strict and report.unexpected:
        problems.append(f"{len(report.unexpected)} unexpected keys: {_listing(report.unexpected)}")
    if problems:
        raise WeightFileError(f"{source_name}: weights do not fit {type(module).__name__}: " + " | ".join(problems))
    return {k: v for k, v in plan.items() if k in expected}, report


# ---------------------------------------------------------------------------------------------------------------
# Assigning
# ---------------------------------------------------------------------------------------------------------------


def _linear_weight_names(module: nn.Module) -> set[str]:
    return {f"{name}.weight" if name else "weight" for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def _to_storage(t: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """``t`` converted for storage; float8 targets saturate instead of overflowing to NaN."""
    if t.dtype == dtype:
        return t if device is None else t.to(device)
    if dtype.is_floating_point and dtype.itemsize == 1 and t.is_floating_point():
        limit = torch.finfo(dtype).max
        t = (t if t.dtype.itemsize > 1 else t.float()).clamp(-limit, limit)  # e5m2 -> e4m3 must clamp too
    return t.to(device=device, dtype=dtype)


def _assign(module: nn.Module, name: str, value: torch.Tensor, fmt: WeightFormat | None = None) -> None:
    """Replace the meta tensor ``name`` (a parameter or buffer) by ``value`` without any copy; ``fmt`` (or None)
    becomes its module's ``<leaf>_format``, the quantised storage ``ops.cast_param`` dequantises."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=bool(old is not None and old.requires_grad)
                                               and value.is_floating_point() and fmt is None)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        raise KeyError(name)  # _plan only yields state-dict names, so this is a bug
    if fmt is not None:
        setattr(owner, f"{leaf}_format", fmt)
    elif getattr(owner, f"{leaf}_format", None) is not None:
        delattr(owner, f"{leaf}_format")


def _read(module: nn.Module, source: TensorSource, target: str, key: str, want: torch.dtype,
          device: torch.device | str | None, mapped: bool) -> tuple[torch.Tensor, WeightFormat | None]:
    """What to store at ``target`` for file tensor ``key``: the stored bytes and their format when the source keeps
    the tensor quantised (a GGUF tensor under a casting layer, ``_stored_format``; a scaled-fp8 tensor when fp8
    storage is wanted, ``ScaledFP8Source.quantized``); otherwise the values converted to ``want``. ``mapped``:
    file-backed where nothing needs converting (``loading.mapped``)."""
    fmt = _stored_format(module, source, target, key)
    if fmt is not None:
        return source.raw(key, device=device, mapped=mapped), fmt  # type: ignore[attr-defined]
    quantized = getattr(source, "quantized", None)
    if quantized is not None and want.is_floating_point and want.itemsize == 1:
        kept = quantized(key, mapped=mapped)
        if kept is not None:
            raw, fmt = kept
            return (raw if device is None else raw.to(device)), fmt
    raw = source.get(key, mapped=True) if mapped else source.get(key)  # a view unless converted
    return _to_storage(raw, want, device), None


def _stored_format(module: nn.Module, source: TensorSource, target: str, file_key: str) -> WeightFormat | None:
    """The format to keep ``file_key`` in at ``target``: the source's, if it is quantised and the owning layer
    dequantises at compute time; else None (the values are loaded)."""
    format_of = getattr(source, "weight_format", None)
    fmt = format_of(file_key) if callable(format_of) else None
    if fmt is None:
        return None
    owner_name = target.rpartition(".")[0]
    owner = module.get_submodule(owner_name) if owner_name else module
    return fmt if isinstance(owner, CastWeights) else None


def _target_dtype(meta: torch.Tensor, name: str, dtype: torch.dtype | None,
                  linear_weight_dtype: torch.dtype | None, linear_names: set[str]) -> torch.dtype:
    if not meta.is_floating_point():
        return meta.dtype
    if linear_weight_dtype is not None and name in linear_names:
        return linear_weight_dtype
    return dtype or meta.dtype


def _materialise_leftovers(module: nn.Module, device: torch.device | str | None) -> None:
    """Non-persistent buffers never come from a file: let their owner rebuild them, or fail clearly."""
    for name, sub in module.named_modules():
        meta_buffers = [b for b, t in sub._buffers.items() if t is not None and t.is_meta]
        if meta_buffers and callable(getattr(sub, "materialize_buffers", None)):
            sub.materialize_buffers(device or "cpu")
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(module).__name__}: still on the meta device after loading (not in the "
                           f"state dict and no materialize_buffers() on their module): {_listing(left)}")


def load_into(module: nn.Module, source: TensorSource, *, source_name: str | None = None,
              key_map: KeyMap | None = None, dtype: torch.dtype | None = None,
              linear_weight_dtype: torch.dtype | None = None, strict: bool = True,
              device: torch.device | str | None = None, mapped: Callable[[str], bool] | None = None) -> LoadReport:
    """Fill ``module`` (built on the meta device) from ``source``, one tensor at a time; see the module docstring.

    ``device``: where the tensors go (default CPU). ``mapped``: module keys to keep file-backed
    (``loading.mapped``) where the file already holds their storage dtype and the source can map (a
    ``WeightSource``); they are read only when used. Returns a ``LoadReport``; raises ``WeightFileError`` when
    the file does not fit the module.
    """
    name = source_name or getattr(source, "name", "weights")
    if dtype is not None and dtype.is_floating_point and dtype.itemsize == 1:
        # an fp8 "dtype" means fp8 Linear weights: norms, biases and embeddings must not lose that much precision
        dtype, linear_weight_dtype = None, linear_weight_dtype or dtype
    plan, report = _plan(module, source, key_map, strict, name)
    metas = module.state_dict(keep_vars=True)
    linear_names = _linear_weight_names(module) if linear_weight_dtype is not None else set()
    quantised = 0
    on_host = device is None or torch.device(device).type == "cpu"  # only host tensors can be file-backed
    for target, file_key in plan.items():
        want = _target_dtype(metas[target], target, dtype, linear_weight_dtype, linear_names)
        can_map = mapped is not None and on_host and getattr(source, "can_map", False) and mapped(target)
        value, fmt = _read(module, source, target, file_key, want, device, can_map)
        _assign(module, target, value, fmt)
        quantised += fmt is not None
        report.loaded += 1
        report.bytes_loaded += value.numel() * value.element_size()
    for target in report.missing:
        meta = metas[target]
        want = _target_dtype(meta, target, dtype, linear_weight_dtype, linear_names)
        _assign(module, target, torch.zeros(meta.shape, dtype=want, device=device))
    if report.missing:
        log.warning("%s: %d tensors missing from the file were set to zero: %s", name, len(report.missing),
                    _listing(report.missing))
    if report.unexpected:
        log.warning("%s: %d tensors the model does not use were ignored: %s", name, len(report.unexpected),
                    _listing(report.unexpected))
    _materialise_leftovers(module, device)
    log.info("%s: loaded %d tensors (%.1f MiB%s) into %s", name, report.loaded, report.bytes_loaded / 2**20,
             f", {quantised} kept quantised" if quantised else "", type(module).__name__)
    return report


# ---------------------------------------------------------------------------------------------------------------
# FireRed's networks
# ---------------------------------------------------------------------------------------------------------------


class LoadedComponents(NamedTuple):
    """Everything a pipeline needs; unpacks as ``transformer, vae, encoder, scheduler_config``."""

    transformer: FireRedTransformer
    vae: FireRedVAE
    encoder: Any  # a firered_core.encoder ConditionEncoder, or None when none was given
    scheduler_config: SchedulerConfig


def build_transformer(config: TransformerConfig, source: TensorSource, *, source_name: str,
                      key_map: KeyMap | None = None, dtype: torch.dtype = torch.float32, fp8: bool = False,
                      device: torch.device | str | None = None, ops: SimpleNamespace = DEFAULT_OPS,
                      strict: bool = True, map_blocks: bool = False) -> FireRedTransformer:
    """A ``FireRedTransformer`` built on meta and filled from ``source``; Linear weights in fp8 when ``fp8``.
    ``map_blocks`` keeps the blocks' weights file-backed where the file holds them in their storage dtype (for
    block offloading, which streams them; see ``loading.mapped``)."""
    model = FireRedTransformer(config, ops=ops, device="meta", dtype=dtype)
    load_into(model, source, source_name=source_name, key_map=key_map, dtype=dtype,
              linear_weight_dtype=FP8_DTYPE if fp8 else None, strict=strict, device=device,
              mapped=_is_block_key if map_blocks else None)
    return model.eval()


def _is_block_key(key: str) -> bool:
    return key.startswith("transformer_blocks.")


def build_vae(config: VAEConfig | CompactVAEConfig, source: TensorSource, *, source_name: str,
              key_map: KeyMap | None = None, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None, ops: SimpleNamespace = DEFAULT_OPS,
              strict: bool = True) -> FireRedVAE:
    """A ``FireRedVAE`` (or, for a ``CompactVAEConfig``, a ``CompactVAE``) built on meta and filled from
    ``source`` (always in ``dtype``: convolutions are never fp8)."""
    if isinstance(config, CompactVAEConfig):
        from ..compact_vae import create_vae

        model = create_vae(config, device="meta", dtype=dtype)
    else:
        model = FireRedVAE(config, ops=ops, device="meta", dtype=dtype)
    load_into(model, source, source_name=source_name, key_map=key_map, dtype=dtype, strict=strict, device=device)
    return model.eval()
