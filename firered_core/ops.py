"""Layer classes that every FireRed module builds from ("operations injection").

Modules never instantiate ``torch.nn.Linear`` and friends directly; they take an ``ops`` namespace (default:
this module's ``DEFAULT_OPS``) and call ``ops.Linear(...)``. That one indirection gives, with no model edits:

* storage dtype != compute dtype: weights may be stored as bf16/fp16 or float8 (e4m3fn) and are cast to the
  input's dtype and device at call time ("upcast at compute"), which is also what low-VRAM weight streaming needs;
* unmerged LoRA: ``Linear.adapters`` holds low-rank adapters whose outputs are added to the base output, each with
  its own strength, stackable, removable (see ``firered_core.lora``);
* a host (ComfyUI) may pass its own namespace with the same class names.

``Linear`` and the convolutions compute exactly ``torch.nn``'s result when the weight already has the input's
dtype and device, so parity with the reference is unaffected.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn


def cast_to(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``t`` in ``like``'s dtype and device (a no-op, no copy, when they already match)."""
    if t is None or (t.dtype == like.dtype and t.device == like.device):
        return t
    return t.to(device=like.device, dtype=like.dtype)


class Linear(nn.Linear):
    """``nn.Linear`` with compute-time casting and a list of unmerged adapters.

    Each adapter is a module mapping the layer's input to a delta of its output (``firered_core.lora`` defines
    them); adapters are kept in a ModuleList so ``.to()``, ``parameters()`` and optimizers see them. An empty list
    adds no state-dict keys.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.adapters = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, cast_to(self.weight, x), cast_to(self.bias, x))
        for adapter in self.adapters:
            out = out + adapter(x)
        return out


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_to(self.weight, x), cast_to(self.bias, x))


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_to(self.weight, x), cast_to(self.bias, x))


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, cast_to(self.weight, x), cast_to(self.bias, x), self.eps)


class Embedding(nn.Embedding):
    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight.dtype.is_floating_point and self.weight.itemsize >= 2 else self.weight.float()
        return F.embedding(idx, w, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)


# The namespace modules receive as ``ops``. Hosts may pass any object with these attribute names.
DEFAULT_OPS = SimpleNamespace(Linear=Linear, Conv2d=Conv2d, Conv3d=Conv3d, LayerNorm=LayerNorm, Embedding=Embedding)
