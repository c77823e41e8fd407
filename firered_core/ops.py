"""Layer classes that every FireRed module builds from ("operations injection").

Modules never instantiate ``torch.nn.Linear`` and friends directly; they take an ``ops`` namespace (default:
this module's ``DEFAULT_OPS``) and call ``ops.Linear(...)``. That one indirection gives, with no model edits:

* storage dtype != compute dtype: weights may be stored as bf16/fp16 or float8 (e4m3fn), or in a quantised block
  format (a ``weight_format`` object dequantises them, e.g. GGUF), and are cast to the input's dtype and device at
  call time ("upcast at compute"), which is also what low-VRAM weight streaming needs;
* unmerged LoRA: ``Linear.adapters`` holds low-rank adapters whose outputs are added to the base output, each with
  its own strength, stackable, removable (see ``firered_core.lora``);
* a host's low-VRAM protocol: every layer that holds weights has ``comfy_cast_weights`` and the per-instance
  lists ``weight_function`` / ``bias_function`` that ComfyUI's ``ModelPatcher`` sets on layers it leaves off the
  compute device (the functions patch the cast weight, e.g. a LoRA, before it is used). Layers always cast, so
  the flag changes nothing here; it tells the host that the layer may be left where it is;
* a host (ComfyUI) may pass its own namespace with the same class names.

``Linear`` and the convolutions compute exactly ``torch.nn``'s result when the weight already has the input's
dtype and device, so parity with the reference is unaffected. ``adopt`` gives modules built elsewhere (the
condition encoder from transformers, plain ``torch.nn`` layers) the same behaviour by switching their class.

Public API: ``Linear``, ``PlainLinear``, ``Conv2d``, ``Conv3d``, ``LayerNorm``, ``Embedding``, ``CastWeights``, ``DEFAULT_OPS``,
``cast_to``, ``cast_param``, ``adopt``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Linear", "PlainLinear", "Conv2d", "Conv3d", "LayerNorm", "Embedding", "CastWeights", "DEFAULT_OPS", "cast_to",
           "cast_param", "adopt", "WeightFormat"]


class WeightFormat(Protocol):
    """Quantised storage of one parameter (set as ``<name>_format`` on its module): the stored tensor is raw data,
    ``shape`` the logical shape, ``dequantize`` the values in ``dtype`` on the raw tensor's device."""

    shape: tuple[int, ...]

    def dequantize(self, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor: ...


def cast_to(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``t`` in ``like``'s dtype and device (a no-op, no copy, when they already match)."""
    if t is None or (t.dtype == like.dtype and t.device == like.device):
        return t
    return t.to(device=like.device, dtype=like.dtype)


def cast_param(module: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor | None:
    """Parameter ``name`` of ``module`` ready to compute with ``like``: dequantised when it has a ``<name>_format``,
    in ``like``'s dtype and device, then passed through the host's ``<name>_function`` patches (if any)."""
    t = getattr(module, name)
    if t is None:
        return None
    fmt: WeightFormat | None = getattr(module, f"{name}_format", None)
    if fmt is not None:
        t = fmt.dequantize(t.to(like.device), like.dtype)
    else:
        t = cast_to(t, like)
    for patch in getattr(module, f"{name}_function", ()):
        t = patch(t)
    return t


class CastWeights:
    """Mixin of the layers that cast their parameters at compute time (see the module docstring).

    ``comfy_cast_weights`` is read and written by ComfyUI's model patcher only; ``weight_function`` and
    ``bias_function`` are empty unless a host puts patches there. The class attributes are the defaults of a layer
    whose class was switched by ``adopt`` (no ``__init__`` ran); hosts always assign fresh lists.
    """

    comfy_cast_weights = False
    weight_function: list[Callable[[torch.Tensor], torch.Tensor]] = []
    bias_function: list[Callable[[torch.Tensor], torch.Tensor]] = []

    def _init_cast(self) -> None:
        self.weight_function = []
        self.bias_function = []

    def cast_weight(self, like: torch.Tensor) -> torch.Tensor:
        return cast_param(self, "weight", like)  # type: ignore[arg-type]

    def cast_bias(self, like: torch.Tensor) -> torch.Tensor | None:
        return cast_param(self, "bias", like) if getattr(self, "bias", None) is not None else None  # type: ignore


class Linear(CastWeights, nn.Linear):
    """``nn.Linear`` with compute-time casting and a list of unmerged adapters.

    Each adapter is a module mapping the layer's input to a delta of its output (``firered_core.lora`` defines
    them); adapters are kept in a ModuleList so ``.to()``, ``parameters()`` and optimizers see them. An empty list
    adds no state-dict keys.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.adapters = nn.ModuleList()
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.cast_weight(x), self.cast_bias(x))
        for adapter in self.adapters:
            out = out + adapter(x)
        return out


class Conv2d(CastWeights, nn.Conv2d):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.cast_weight(x), self.cast_bias(x))


class Conv3d(CastWeights, nn.Conv3d):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.cast_weight(x), self.cast_bias(x))


class LayerNorm(CastWeights, nn.LayerNorm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.cast_weight(x), self.cast_bias(x), self.eps)


class Embedding(CastWeights, nn.Embedding):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_cast()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # looked up where the indices are, in the storage dtype (narrower tables, e.g. fp8, widen to float32)
        w = self.weight
        dtype = w.dtype if w.is_floating_point() and w.dtype.itemsize >= 2 else torch.float32
        w = self.cast_weight(torch.empty((), dtype=dtype, device=idx.device))
        return F.embedding(idx, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


class PlainLinear(CastWeights, nn.Linear):
    """A casting ``nn.Linear`` without adapters, for layers that are not LoRA targets (the adapters' own factors)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.cast_weight(x), self.cast_bias(x))


# The namespace modules receive as ``ops``. Hosts may pass any object with these attribute names.
DEFAULT_OPS = SimpleNamespace(Linear=Linear, Conv2d=Conv2d, Conv3d=Conv3d, LayerNorm=LayerNorm, Embedding=Embedding)

# plain torch layer -> the casting class that computes the same thing
_ADOPTABLE: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: Linear, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d,
                                                     nn.LayerNorm: LayerNorm, nn.Embedding: Embedding}


def adopt(module: nn.Module) -> int:
    """Switch every plain ``torch.nn`` Linear / Conv2d / Conv3d / LayerNorm / Embedding inside ``module`` to the
    casting class above (same parameters, same results when weights sit with the input); returns how many.

    Used on networks built by other libraries (transformers' Qwen2.5-VL) so their weights can be stored in fp8 and
    left off the compute device like the project's own layers. Subclasses of those layers are left alone.
    """
    switched = 0
    for m in module.modules():
        target = _ADOPTABLE.get(type(m))
        if target is None:
            continue
        m.__class__ = target
        m.weight_function, m.bias_function = [], []
        if target is Linear and "adapters" not in m._modules:
            m.adapters = nn.ModuleList()
        switched += 1
    return switched
