"""Timestep conditioning of the MMDiT: sinusoidal features -> MLP -> one vector per sample.

The transformer receives the flow-matching time ``s`` in [0, 1] (``s = 1`` is pure noise). It is scaled by 1000
(the reference trained with ``t = 1000 s``), turned into 256 sinusoidal features ordered ``[cos | sin]``
(``flip_sin_to_cos``) with frequencies ``exp(-ln(10000) * i / 128)`` (no frequency shift), and mapped by
``linear_1 -> SiLU -> linear_2`` to the model width. The result drives every AdaLN modulation.

Optional, for the Qwen-Image-Layered family (``use_additional_t_cond``): a 2-row learned table
(``addition_t_embedding``) indexed by a per-sample flag is added to that vector.

State-dict names follow diffusers' ``QwenTimestepProjEmbeddings`` (``time_text_embed.timestep_embedder.linear_1``
...). Rounding follows it too: the timestep is rounded to the compute dtype first (the reference casts it), the
sinusoids are computed in float32 and rounded to the compute dtype before the MLP, so bf16 runs match the
reference bit for bit in this part.

Public API: ``timestep_sinusoids``, ``TimestepMLP``, ``TimestepEmbedding``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import DEFAULT_OPS

__all__ = ["timestep_sinusoids", "TimestepMLP", "TimestepEmbedding"]

SINUSOID_DIM = 256
TIME_SCALE = 1000.0  # s in [0, 1] -> the reference's t in [0, 1000]


def timestep_sinusoids(t: torch.Tensor, dim: int = SINUSOID_DIM, scale: float = TIME_SCALE,
                       max_period: float = 10000.0) -> torch.Tensor:
    """``[B]`` times -> float32 ``[B, dim]`` features ``[cos(scale t f_i) | sin(scale t f_i)]``."""
    if t.ndim != 1:
        raise ValueError(f"timestep_sinusoids: expected a 1-D tensor of timesteps, got shape {tuple(t.shape)}")
    half = dim // 2
    # (i * -ln(P)) / half, in this order: the reference's rounding
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) * -math.log(max_period) / half
    args = (t[:, None].float() * torch.exp(exponent)[None, :]) * scale  # [B, half], float32
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 2*half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """``linear_1 -> SiLU -> linear_2`` from sinusoidal features to the model width."""

    def __init__(self, in_dim: int, dim: int, *, ops=DEFAULT_OPS, device=None, dtype=None) -> None:
        super().__init__()
        self.linear_1 = ops.Linear(in_dim, dim, device=device, dtype=dtype)
        self.linear_2 = ops.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEmbedding(nn.Module):
    """Timestep (and optional layered-image flag) -> conditioning vector ``[B, dim]`` in the compute dtype."""

    def __init__(self, dim: int, *, use_additional_t_cond: bool = False, ops=DEFAULT_OPS, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.timestep_embedder = TimestepMLP(SINUSOID_DIM, dim, ops=ops, device=device, dtype=dtype)
        self.use_additional_t_cond = use_additional_t_cond
        if use_additional_t_cond:
            # row 0 / row 1 selected per sample by ``additional_t_cond`` (Qwen-Image-Layered: RGB vs RGBA)
            self.addition_t_embedding = ops.Embedding(2, dim, device=device, dtype=dtype)

    def forward(self, timestep: torch.Tensor, compute_dtype: torch.dtype,
                additional_t_cond: torch.Tensor | None = None) -> torch.Tensor:
        """``timestep`` ``[B]`` (already in ``compute_dtype``, as the reference casts it) -> ``[B, dim]``."""
        emb = self.timestep_embedder(timestep_sinusoids(timestep).to(compute_dtype))
        if not self.use_additional_t_cond:
            return emb
        if additional_t_cond is None:
            raise ValueError("TimestepEmbedding: this model has use_additional_t_cond=True, so additional_t_cond "
                             "(a [B] long tensor of 0/1) must be given")
        extra = self.addition_t_embedding(additional_t_cond.long()).to(compute_dtype)  # [B', dim]
        if extra.shape[0] != emb.shape[0]:
            # zero_cond_t doubles the timestep batch ([t, 0]); the flag applies to both halves
            extra = extra.repeat(emb.shape[0] // extra.shape[0], 1)
        return emb + extra
