"""3D rotary position embedding (RoPE) for the joint [text, image] token sequence.

Every attention head of width ``D`` is split into three bands, ``axes_dims_rope = (frame, height, width)``
(``(16, 56, 56)`` for the released model). Each band rotates consecutive feature pairs ``(x[2i], x[2i+1])`` by the
angle ``position_along_axis * theta ** (-2i / band_width)``, so attention scores depend on relative positions.

Positions, exactly as the reference (diffusers' ``QwenEmbedRope`` with ``scale_rope=True``) assigns them:

* image ``k`` of ``img_shapes`` (the target is image 0, references follow) gets frame positions
  ``k, k+1, ... k+frames-1``;
* spatial positions are centred: a side of ``n`` tokens gets ``-(n - n//2) ... n//2 - 1``, i.e. ``-2,-1,0,1`` for 4
  and ``-2,-1,0`` for 3 (the reference reads the negative half from a table of negative indices; here the angle is
  simply computed from the signed position, which is the same number);
* text token ``j`` gets position ``m + j`` on all three axes, with ``m`` the largest ``max(h//2, w//2)`` over the
  images, so text never collides with the centred image grid. Padding tokens get positions too; the attention
  mask, not RoPE, keeps them out.

The layered variant (``use_layer3d_rope``, diffusers' ``QwenEmbedLayer3DRope`` for Qwen-Image-Layered) differs in
two points: the LAST image is the condition image and gets frame position -1, and ``m`` is at least
``len(img_shapes) - 1``.

Tables are real cos/sin tensors computed from the positions on the fly (no 4096-row tables, so no length limit)
and cached per shape, so a sampling loop computes them once. Application multiplies in complex arithmetic, which
on CPU and CUDA is a single fused kernel (several times faster than the real-valued formulation, measured); a
real-valued path with identical results serves devices without complex support (MPS).

Public API: ``RotaryTable``, ``RotaryEmbedding``, ``build_rotary_table``, ``apply_rope``, ``image_positions``,
``text_start``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

__all__ = ["RotaryTable", "RotaryEmbedding", "apply_rope", "build_rotary_table", "image_positions", "text_start"]

ImageShape = tuple[int, int, int]  # (frames, height_tokens, width_tokens)

# devices whose kernels lack complex multiplication; they take the real-valued path
_NO_COMPLEX_DEVICES = frozenset({"mps"})
_CACHE_SIZE = 16


@dataclass
class RotaryTable:
    """cos/sin of the rotation angle for every (token, feature pair) of the joint sequence.

    ``cos`` and ``sin`` are float32 ``[S, D/2]`` with ``S = text_len + image tokens`` in the joint order
    [text, image]. ``cis`` (``cos + i sin``) is built once on first use and shared by all layers.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    _cis: torch.Tensor | None = field(default=None, repr=False)

    @property
    def cis(self) -> torch.Tensor:
        if self._cis is None:
            self._cis = torch.complex(self.cos, self.sin)
        return self._cis

    def __len__(self) -> int:
        return self.cos.shape[0]

    def rows(self, start: int, stop: int) -> "RotaryTable":
        """The table of tokens ``start:stop`` (e.g. only the target's queries in the last block)."""
        cis = None if self._cis is None else self._cis[start:stop]
        return RotaryTable(self.cos[start:stop], self.sin[start:stop], cis)


def image_positions(img_shapes: Sequence[ImageShape], *, layered: bool = False) -> torch.Tensor:
    """Float32 ``[N_img, 3]`` (frame, row, column) positions of all image tokens, images in sequence order."""
    parts = []
    last = len(img_shapes) - 1
    for k, (frames, h, w) in enumerate(img_shapes):
        if layered and k == last:
            if frames != 1:
                raise ValueError(f"layered RoPE: the condition image (last of img_shapes) must have 1 frame, "
                                 f"got {frames}")
            f_pos = torch.full((1,), -1.0)
        else:
            f_pos = torch.arange(k, k + frames, dtype=torch.float32)
        h_pos = torch.arange(h, dtype=torch.float32) - (h - h // 2)
        w_pos = torch.arange(w, dtype=torch.float32) - (w - w // 2)
        grid = torch.meshgrid(f_pos, h_pos, w_pos, indexing="ij")  # 3 x [frames, h, w]
        parts.append(torch.stack(grid, dim=-1).reshape(-1, 3))  # [frames*h*w, 3], row-major like the tokens
    return torch.cat(parts, dim=0)


def text_start(img_shapes: Sequence[ImageShape], *, layered: bool = False) -> int:
    """Position of the first text token: just past the largest centred image half-size."""
    start = max(max(h // 2, w // 2) for _, h, w in img_shapes)
    if layered:
        start = max(start, len(img_shapes) - 1)
    return start


def _inverse_frequencies(axes_dims: Sequence[int], theta: float) -> list[torch.Tensor]:
    # float32 throughout, the same expression order as the reference, so angles match bit for bit
    return [1.0 / torch.pow(theta, torch.arange(0, d, 2, dtype=torch.float32).div(d)) for d in axes_dims]


def build_rotary_table(img_shapes: Sequence[ImageShape], text_len: int, axes_dims: Sequence[int],
                       theta: float = 10000, *, layered: bool = False,
                       device: torch.device | None = None) -> RotaryTable:
    """The ``RotaryTable`` of a joint sequence of ``text_len`` text tokens followed by the images."""
    img_pos = image_positions(img_shapes, layered=layered)  # [N_img, 3]
    start = text_start(img_shapes, layered=layered)
    txt_pos = torch.arange(start, start + text_len, dtype=torch.float32)[:, None].expand(text_len, 3)
    pos = torch.cat([txt_pos, img_pos], dim=0)  # [S, 3]
    angles = torch.cat(
        [torch.outer(pos[:, axis], inv) for axis, inv in enumerate(_inverse_frequencies(axes_dims, theta))], dim=1
    )  # [S, D/2]
    return RotaryTable(cos=torch.cos(angles).to(device), sin=torch.sin(angles).to(device))


def apply_rope(x: torch.Tensor, table: RotaryTable) -> torch.Tensor:
    """Rotate feature pairs of ``x`` ``[B, S, H, D]`` by ``table`` (``S`` rows).

    The math runs in float32 and the result comes back in ``x``'s dtype, as in the reference.
    """
    if x.shape[1] != len(table) or x.shape[-1] != 2 * table.cos.shape[-1]:
        raise ValueError(
            f"apply_rope: x of shape {tuple(x.shape)} does not fit a table of {len(table)} tokens x "
            f"{2 * table.cos.shape[-1]} features"
        )
    if x.device.type in _NO_COMPLEX_DEVICES:
        return _apply_rope_real(x, table)
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [B, S, H, D/2] complex
    rotated = pairs * table.cis[:, None, :]  # heads share the table
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)  # [B, S, H, D]


def _apply_rope_real(x: torch.Tensor, table: RotaryTable) -> torch.Tensor:
    pairs = x.float().unflatten(-1, (-1, 2))  # [B, S, H, D/2, 2]
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = table.cos[:, None, :], table.sin[:, None, :]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Builds (and caches per shape and device) the ``RotaryTable`` of a forward call; holds no weights.

    The cache is bounded and keyed on ``(img_shapes, text_len, device)``: a sampling loop or a training run with
    bucketed sizes reuses a handful of tables.
    """

    def __init__(self, axes_dims: Sequence[int], theta: float = 10000, *, layered: bool = False) -> None:
        super().__init__()
        if any(d % 2 for d in axes_dims):
            raise ValueError(f"RotaryEmbedding: axes_dims must be even, got {tuple(axes_dims)}")
        self.axes_dims = tuple(int(d) for d in axes_dims)
        self.theta = theta
        self.layered = layered
        self._cache: OrderedDict[tuple, RotaryTable] = OrderedDict()

    @property
    def head_dim(self) -> int:
        return sum(self.axes_dims)

    def forward(self, img_shapes: Sequence[ImageShape], text_len: int, device: torch.device) -> RotaryTable:
        key = (tuple(tuple(int(v) for v in s) for s in img_shapes), int(text_len), str(device))
        table = self._cache.get(key)
        if table is None:
            # cached tables outlive this call: built as normal tensors even under inference_mode, so a training
            # step after a preview sampled in inference mode can still save them for backward
            with torch.inference_mode(False):
                table = build_rotary_table(key[0], key[1], self.axes_dims, self.theta, layered=self.layered,
                                           device=device)
                if torch.device(device).type not in _NO_COMPLEX_DEVICES:
                    table.cis  # noqa: B018 - build the complex form now, outside inference mode
            self._cache[key] = table
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return table

    def extra_repr(self) -> str:
        return f"axes_dims={self.axes_dims}, theta={self.theta}, layered={self.layered}"

