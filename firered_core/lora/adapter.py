"""``LoRAAdapter``: one unmerged low-rank delta that ``ops.Linear`` adds to its output.

For a layer ``y = W x + b`` the adapter contributes ``scale * up(down(dropout(x)))`` with
``scale = strength * alpha / rank``. It lives in ``ops.Linear.adapters``, so several LoRAs stack (their deltas
add), each keeps its own strength, and removing one restores the layer exactly (nothing was written into ``W``).

* Numerics: the product is computed in the input's dtype (the factors are cast at call time, like ``ops.Linear``
  casts its weight), in PEFT's order ``up(down(x)) * scale``, so it matches diffusers+PEFT to float rounding.
* Alpha: ``None`` means alpha = rank (scale 1), the rule ComfyUI and diffusers apply to files without alpha.
* Training init (``reset_parameters``): ``down`` random, ``up`` zero, so a new adapter starts as an exact no-op.
  "kaiming" is PEFT's default (kaiming-uniform with a = sqrt(5), i.e. ``nn.Linear``'s own init); "gaussian" is
  PEFT's ``init_lora_weights="gaussian"`` (normal with std 1 / rank).

Public API: ``LoRAAdapter``, ``INITS``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import PlainLinear

__all__ = ["LoRAAdapter", "INITS"]

INITS = ("kaiming", "gaussian")


class LoRAAdapter(nn.Module):
    """``scale * up(down(dropout(x)))``; ``name`` identifies the LoRA it belongs to across all layers."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, alpha: float | None = None,
                 strength: float = 1.0, dropout: float = 0.0, name: str = "lora",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRAAdapter '{name}': rank must be positive, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRAAdapter '{name}': dropout must lie in [0, 1), got {dropout}")
        self.name = name
        self.down = PlainLinear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = PlainLinear(rank, out_features, bias=False, device=device, dtype=dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._alpha = float(rank) if alpha is None else float(alpha)
        self._strength = float(strength)
        self.reset_parameters()

    @classmethod
    def from_weights(cls, down: torch.Tensor, up: torch.Tensor, *, alpha: float | None = None,
                     strength: float = 1.0, name: str = "lora", device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> "LoRAAdapter":
        """An adapter holding copies of ``down [rank, in]`` and ``up [out, rank]``."""
        dtype = dtype or (down.dtype if down.is_floating_point() else torch.float32)
        device = device if device is not None else down.device
        adapter = cls(down.shape[1], up.shape[0], down.shape[0], alpha=alpha, strength=strength, name=name,
                      device="meta", dtype=dtype)
        # assign instead of copy_: no throw-away random init, and works under inference_mode
        adapter.down.weight = nn.Parameter(down.detach().to(device=device, dtype=dtype, copy=True))
        adapter.up.weight = nn.Parameter(up.detach().to(device=device, dtype=dtype, copy=True))
        return adapter

    # -- scaling ---------------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.down.out_features

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = float(value)

    @property
    def scale(self) -> float:
        return self._strength * self._alpha / self.rank

    # -- init ------------------------------------------------------------------------------------------------------
    def reset_parameters(self, init: str = "kaiming") -> None:
        """Random ``down``, zero ``up``: the adapter's output is exactly zero until it is trained."""
        if self.down.weight.is_meta:
            return
        with torch.no_grad():
            if init == "kaiming":
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            elif init == "gaussian":
                nn.init.normal_(self.down.weight, std=1.0 / self.rank)
            else:
                raise ValueError(f"LoRAAdapter '{self.name}': init must be one of {', '.join(INITS)}, got {init!r}")
            nn.init.zeros_(self.up.weight)

    # -- math ------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.dropout(x))) * self.scale  # [..., in] -> [..., rank] -> [..., out]

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``scale * up @ down`` as an ``[out, in]`` matrix in ``dtype`` (for merging)."""
        return (self.up.weight.detach().to(dtype) @ self.down.weight.detach().to(dtype)) * self.scale

    def extra_repr(self) -> str:
        return f"name={self.name!r}, rank={self.rank}, alpha={self._alpha:g}, strength={self._strength:g}"
