"""Joint text-image attention of the dual-stream MMDiT, and the RMSNorm it normalises queries and keys with.

Each block keeps two streams of tokens (text and image) with their own projections, but attends over both at
once: queries, keys and values of the two streams are concatenated in the order [text, image], every head runs
one scaled-dot-product attention over the joint sequence, and the output is split back and projected per stream.

Per stream, per head: ``q, k`` are RMS-normalised over the head width (``norm_q``/``norm_k`` for the image,
``norm_added_q``/``norm_added_k`` for the text; eps 1e-6, learned scale), then rotated by 3D RoPE
(``firered_core.rope``). Text padding is honoured with a boolean key mask: padded text tokens are never attended
to, image tokens always are. When no text token is padded the mask is dropped, which lets SDPA pick its fastest
kernel; the result is the same.

State-dict names follow diffusers' ``Attention`` as configured by ``QwenImageTransformerBlock``: ``to_q``,
``to_k``, ``to_v``, ``to_out.0`` (image), ``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out`` (text) and
the four norms.

Public API: ``RMSNorm``, ``JointAttention``, ``joint_attention``, ``joint_attention_mask``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import DEFAULT_OPS, CastWeights
from .rope import RotaryTable, apply_rope

__all__ = ["RMSNorm", "JointAttention", "joint_attention", "joint_attention_mask"]


class RMSNorm(CastWeights, nn.Module):
    """``x / rms(x) * weight`` over the last dimension, the mean square taken in float32.

    Runs torch's fused kernel: in float32 it equals the reference's unfused formula bit for bit (checked by the
    parity tests) at a fraction of the memory traffic. In bf16/fp16 it rounds once where the reference rounds
    twice (before and after the weight), so results may differ by one unit in the last place.
    The weight is cast to the input's dtype at compute time, so it may be stored in any precision.
    """

    def __init__(self, dim: int, eps: float = 1e-6, *, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.cast_weight(x), self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def joint_attention_mask(text_mask: torch.Tensor | None, n_image: int) -> torch.Tensor | None:
    """Boolean key mask ``[B, 1, 1, L + n_image]`` (True = attend) from a text mask ``[B, L]`` (1 valid, 0 pad).

    ``None`` when there is no mask or nothing is padded: SDPA without a mask is faster and gives the same result.
    """
    if text_mask is None:
        return None
    valid = text_mask.bool()
    if bool(valid.all()):
        return None
    image = torch.ones(valid.shape[0], n_image, dtype=torch.bool, device=valid.device)
    return torch.cat([valid, image], dim=1)[:, None, None, :]  # broadcast over heads and queries


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA of ``[B, Sq, H, D]`` queries over ``[B, Sk, H, D]`` keys/values -> ``[B, Sq, H*D]`` (scale 1/sqrt(D))."""
    # SDPA wants heads before tokens; transposed views avoid copies (the kernels accept strided inputs)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).flatten(2)  # [B, H, Sq, D] -> [B, Sq, H*D]


class JointAttention(nn.Module):
    """Dual-stream projections around one joint attention; returns ``(image_out, text_out)``."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float = 1e-6, *, ops=DEFAULT_OPS, device=None,
                 dtype=None) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        kw = dict(device=device, dtype=dtype)
        self.to_q = ops.Linear(dim, inner, **kw)
        self.to_k = ops.Linear(dim, inner, **kw)
        self.to_v = ops.Linear(dim, inner, **kw)
        self.add_q_proj = ops.Linear(dim, inner, **kw)
        self.add_k_proj = ops.Linear(dim, inner, **kw)
        self.add_v_proj = ops.Linear(dim, inner, **kw)
        # a list so the key reads ``to_out.0`` as in the reference (whose index 1 is a parameterless dropout)
        self.to_out = nn.ModuleList([ops.Linear(inner, dim, **kw)])
        self.to_add_out = ops.Linear(inner, dim, **kw)
        self.norm_q = RMSNorm(head_dim, eps, **kw)
        self.norm_k = RMSNorm(head_dim, eps, **kw)
        self.norm_added_q = RMSNorm(head_dim, eps, **kw)
        self.norm_added_k = RMSNorm(head_dim, eps, **kw)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.head_dim))  # [B, S, H*D] -> [B, S, H, D]

    def forward(self, img: torch.Tensor, txt: torch.Tensor, rope: RotaryTable | None,
                mask: torch.Tensor | None = None, *,
                image_queries: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``img`` ``[B, N, dim]``, ``txt`` ``[B, L, dim]``, ``rope`` for the joint ``L + N`` tokens.

        Returns ``(img_out [B, N, dim], txt_out [B, L, dim])``. With ``image_queries=n`` only the first ``n``
        image tokens ask queries (all tokens still serve as keys and values): the output is
        ``(img_out [B, n, dim], None)``, for the last block, whose other outputs nobody reads.
        """
        n_txt = txt.shape[1]
        # joint order [text, image]; norms are per stream, RoPE is per token so it runs once on the joint tensor
        k = torch.cat([self.norm_added_k(self._heads(self.add_k_proj(txt))),
                       self.norm_k(self._heads(self.to_k(img)))], dim=1)  # [B, L+N, H, D]
        v = torch.cat([self._heads(self.add_v_proj(txt)), self._heads(self.to_v(img))], dim=1)
        if image_queries is None:
            q = torch.cat([self.norm_added_q(self._heads(self.add_q_proj(txt))),
                           self.norm_q(self._heads(self.to_q(img)))], dim=1)  # [B, L+N, H, D]
            q_rope = rope
        else:
            q = self.norm_q(self._heads(self.to_q(img[:, :image_queries])))  # [B, n, H, D]
            q_rope = None if rope is None else rope.rows(n_txt, n_txt + image_queries)
        if rope is not None:
            q, k = apply_rope(q, q_rope), apply_rope(k, rope)
        out = joint_attention(q, k, v, mask)  # [B, L+N or n, H*D]
        if image_queries is not None:
            return self.to_out[0](out), None
        return self.to_out[0](out[:, n_txt:]), self.to_add_out(out[:, :n_txt])
