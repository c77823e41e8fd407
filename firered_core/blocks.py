"""The dual-stream MMDiT block and the final adaptive norm.

One block, per stream (image and text, each with its own weights):

    x = x + gate1 * Attn(LN(x) * (1 + scale1) + shift1)       # joint attention over [text, image]
    x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)        # GELU(tanh), 4x wide

``(shift1, scale1, gate1, shift2, scale2, gate2)`` come from the timestep embedding through ``SiLU -> Linear``
(``img_mod.1`` / ``txt_mod.1``, 6 x dim outputs, in that order). The LayerNorms have no weights (eps 1e-6).

``zero_cond_t`` (Qwen-Image-Edit-2511 family): reference-image tokens are modulated with the embedding of t = 0
(they are clean), the target tokens and the text with the real t. Since every sample of a batch shares
``img_shapes``, the target tokens are the first ``n_target`` image tokens; the two parts are modulated separately
and concatenated, instead of the reference's per-token gather, which gives the same numbers without building
``[B, N, dim]`` parameter tensors.

The last block runs in ``final`` mode: the model output covers only the target tokens and ignores the text stream,
so there only target tokens ask attention queries and go through the MLP (every token still serves as key and
value). With one reference that halves the last block's work, and the numbers are those of the full block.

State-dict names follow diffusers' ``QwenImageTransformerBlock`` (``img_mod.1``, ``attn.*``, ``img_mlp.net.0.proj``,
``img_mlp.net.2``, ...) and ``AdaLayerNormContinuous`` (``norm_out.linear``).

Public API: ``BlockContext``, ``Modulation``, ``FeedForward``, ``DualStreamBlock``, ``OutputNorm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import JointAttention
from .ops import DEFAULT_OPS
from .rope import RotaryTable

__all__ = ["BlockContext", "Modulation", "FeedForward", "DualStreamBlock", "OutputNorm"]

NORM_EPS = 1e-6


@dataclass(frozen=True)
class BlockContext:
    """What every block of one forward call shares (built once by the transformer)."""

    temb: torch.Tensor  # [B, dim] timestep embedding: text, target tokens, final norm
    temb_ref: torch.Tensor | None  # [B, dim] embedding of t = 0 for reference tokens (zero_cond_t), else None
    n_target: int  # image tokens modulated with ``temb``; the rest use ``temb_ref`` when it is given
    rope: RotaryTable | None  # joint [text, image] rotary table
    attn_mask: torch.Tensor | None  # [B, 1, 1, L+N] bool, None when nothing is padded


class Modulation(NamedTuple):
    """AdaLN parameters for one sub-layer, each ``[B, 1, dim]`` (broadcast over tokens)."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor

    @staticmethod
    def pair(params: torch.Tensor) -> tuple["Modulation", "Modulation"]:
        """``[B, 6*dim]`` -> (attention sub-layer, MLP sub-layer)."""
        chunks = [c.unsqueeze(1) for c in params.chunk(6, dim=-1)]  # 6 x [B, 1, dim]
        return Modulation(*chunks[:3]), Modulation(*chunks[3:])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, 1 + self.scale)  # x * (1 + scale) + shift

    def gated_add(self, residual: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(residual, self.gate, y)  # residual + gate * y


def _modulate(x: torch.Tensor, mod: Modulation, ref: Modulation | None, split: int) -> torch.Tensor:
    if ref is None:
        return mod.apply(x)
    return torch.cat([mod.apply(x[:, :split]), ref.apply(x[:, split:])], dim=1)


def _gated_add(residual: torch.Tensor, y: torch.Tensor, mod: Modulation, ref: Modulation | None,
               split: int) -> torch.Tensor:
    if ref is None:
        return mod.gated_add(residual, y)
    return torch.cat([mod.gated_add(residual[:, :split], y[:, :split]),
                      ref.gated_add(residual[:, split:], y[:, split:])], dim=1)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


class _GeluProjection(nn.Module):
    """Linear then tanh-approximated GELU (kept as a module so the key reads ``net.0.proj``)."""

    def __init__(self, dim: int, inner: int, *, ops=DEFAULT_OPS, device=None, dtype=None) -> None:
        super().__init__()
        self.proj = ops.Linear(dim, inner, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``dim -> mult*dim -> GELU(tanh) -> dim``."""

    def __init__(self, dim: int, mult: int = 4, *, ops=DEFAULT_OPS, device=None, dtype=None) -> None:
        super().__init__()
        inner = dim * mult
        # index 1 is the reference's (parameterless) dropout; an identity keeps the output layer at ``net.2``
        self.net = nn.ModuleList([
            _GeluProjection(dim, inner, ops=ops, device=device, dtype=dtype),
            nn.Identity(),
            ops.Linear(inner, dim, device=device, dtype=dtype),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class DualStreamBlock(nn.Module):
    """One MMDiT block; ``forward(img, txt, ctx) -> (img, txt)``."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, ops=DEFAULT_OPS, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        self.img_mod = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim, device=device, dtype=dtype))
        self.txt_mod = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim, device=device, dtype=dtype))
        self.attn = JointAttention(dim, heads, head_dim, NORM_EPS, **kw)
        self.img_mlp = FeedForward(dim, **kw)
        self.txt_mlp = FeedForward(dim, **kw)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, ctx: BlockContext,
                final: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``img`` ``[B, N, dim]``, ``txt`` ``[B, L, dim]`` -> both updated, same shapes.

        ``final=True`` (the last block) computes only what the model output needs: image ``[B, n_target, dim]``
        for the target tokens; the text stream is returned unchanged, since nothing reads it afterwards.
        """
        batch, split = img.shape[0], ctx.n_target
        if ctx.temb_ref is None:
            img_m1, img_m2 = Modulation.pair(self.img_mod(ctx.temb))
            ref_m1 = ref_m2 = None
        else:
            # one projection over [t, 0] as the reference does, then split by batch half
            both = self.img_mod(torch.cat([ctx.temb, ctx.temb_ref], dim=0))  # [2B, 6*dim]
            img_m1, img_m2 = Modulation.pair(both[:batch])
            ref_m1, ref_m2 = Modulation.pair(both[batch:])
        txt_m1, txt_m2 = Modulation.pair(self.txt_mod(ctx.temb))
        img_in = _modulate(_layer_norm(img), img_m1, ref_m1, split)
        txt_in = txt_m1.apply(_layer_norm(txt))
        if final:
            return self._final_image_update(img, img_in, txt_in, ctx, img_m1, img_m2), txt

        img_attn, txt_attn = self.attn(img_in, txt_in, ctx.rope, ctx.attn_mask)
        img = _gated_add(img, img_attn, img_m1, ref_m1, split)
        txt = txt_m1.gated_add(txt, txt_attn)

        img_mlp = self.img_mlp(_modulate(_layer_norm(img), img_m2, ref_m2, split))
        img = _gated_add(img, img_mlp, img_m2, ref_m2, split)
        txt = txt_m2.gated_add(txt, self.txt_mlp(txt_m2.apply(_layer_norm(txt))))
        return _clip_fp16(img), _clip_fp16(txt)

    def _final_image_update(self, img: torch.Tensor, img_in: torch.Tensor, txt_in: torch.Tensor,
                            ctx: BlockContext, mod1: Modulation, mod2: Modulation) -> torch.Tensor:
        """Target tokens only: they query all tokens; reference queries, their MLP and the text MLP are skipped."""
        keep = ctx.n_target
        img_attn, _ = self.attn(img_in, txt_in, ctx.rope, ctx.attn_mask, image_queries=keep)  # [B, keep, dim]
        img = mod1.gated_add(img[:, :keep], img_attn)
        img = mod2.gated_add(img, self.img_mlp(mod2.apply(_layer_norm(img))))
        return _clip_fp16(img)


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    # fp16 activations of the released weights can exceed the fp16 range; the reference clips too
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


class OutputNorm(nn.Module):
    """Final adaptive LayerNorm: ``LN(x) * (1 + scale) + shift`` with ``(scale, shift)`` from SiLU -> Linear."""

    def __init__(self, dim: int, *, ops=DEFAULT_OPS, device=None, dtype=None) -> None:
        super().__init__()
        self.linear = ops.Linear(dim, 2 * dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, N, dim]``, ``temb`` ``[B, dim]`` -> ``[B, N, dim]``."""
        scale, shift = self.linear(F.silu(temb).to(x.dtype)).chunk(2, dim=-1)  # note: scale first, unlike blocks
        return torch.addcmul(shift[:, None], _layer_norm(x), 1 + scale[:, None])
