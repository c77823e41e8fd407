"""FireRedTransformer: the Qwen-Image dual-stream MMDiT that FireRed-Image-Edit denoises with.

Inputs are packed latent tokens (target first, then every reference image), the condition encoder's hidden states
with their padding mask, and the flow-matching time ``s`` in [0, 1]. The output is the velocity ``eps - x0`` for
the target tokens only: reference tokens steer the target through attention but are cropped before the last,
per-token, layers.

    img  [B, N, in_channels] --img_in--> [B, N, dim] --+
    text [B, L, joint_dim] --RMSNorm--txt_in--> [B, L, dim] --+
    s    [B] --sinusoids x1000--MLP--> temb [B, dim]          |
                    num_layers x DualStreamBlock (joint attention over [text, image], 3D RoPE, AdaLN)
    img[:, :N_target] --norm_out(temb)--proj_out--> [B, N_target, patch^2 * out_channels]

The module tree and parameter names are exactly those of diffusers' ``QwenImageTransformer2DModel``, so its
state dicts (and ComfyUI's bare-key files) load with ``strict=True``; ``tests/core/test_transformer_parity.py`` checks
the outputs against it. Every layer is built through ``ops`` (see ``firered_core.ops``): fp8/bf16 storage with
compute-time upcast and unmerged LoRA adapters need no change here. Build on ``torch.device("meta")`` and load
with ``load_state_dict(..., assign=True)`` to avoid allocating 20 B parameters twice.

Config flags (``TransformerConfig``): ``zero_cond_t`` modulates reference tokens with t = 0; ``use_additional_t_cond``
adds a learned per-sample flag embedding to temb; ``use_layer3d_rope`` switches to the layered-image RoPE, whose
last image is the condition, so there the target is every image but the last. ``guidance_embeds`` is refused:
the reference defines no guidance weights for this architecture and fails if guidance is passed.

Public API: ``FireRedTransformer``.
"""

from __future__ import annotations

import logging
from math import prod
from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import RMSNorm, joint_attention_mask
from .blocks import BlockContext, DualStreamBlock, OutputNorm
from .config import ConfigError, TransformerConfig
from .embeddings import TimestepEmbedding
from .ops import DEFAULT_OPS
from .rope import ImageShape, RotaryEmbedding

__all__ = ["FireRedTransformer"]

log = logging.getLogger(__name__)

ROPE_THETA = 10000


class FireRedTransformer(nn.Module):
    """The MMDiT. ``forward`` documents the call; ``gradient_checkpointing`` trades compute for memory."""

    def __init__(self, config: TransformerConfig, *, ops=DEFAULT_OPS, device=None, dtype=None) -> None:
        super().__init__()
        if config.guidance_embeds:
            raise ConfigError(
                "TransformerConfig.guidance_embeds=True is not supported: diffusers' QwenImageTransformer2DModel "
                "has no guidance-embedding weights for it (its forward fails when guidance is passed) and no "
                "released Qwen-Image/FireRed weight sets it; use guidance_embeds=False"
            )
        self.config = config
        dim, kw = config.inner_dim, dict(ops=ops, device=device, dtype=dtype)
        self.pos_embed = RotaryEmbedding(config.axes_dims_rope, ROPE_THETA, layered=config.use_layer3d_rope)
        self.time_text_embed = TimestepEmbedding(dim, use_additional_t_cond=config.use_additional_t_cond, **kw)
        self.txt_norm = RMSNorm(config.joint_attention_dim, 1e-6, device=device, dtype=dtype)
        self.img_in = ops.Linear(config.in_channels, dim, device=device, dtype=dtype)
        self.txt_in = ops.Linear(config.joint_attention_dim, dim, device=device, dtype=dtype)
        self.transformer_blocks = nn.ModuleList(
            DualStreamBlock(dim, config.num_attention_heads, config.attention_head_dim, **kw)
            for _ in range(config.num_layers)
        )
        self.norm_out = OutputNorm(dim, **kw)
        out_features = config.patch_size**2 * config.out_channels
        self.proj_out = ops.Linear(dim, out_features, device=device, dtype=dtype)
        self.gradient_checkpointing = False

    # -----------------------------------------------------------------------------------------------------------
    # forward
    # -----------------------------------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_mask: torch.Tensor | None,
        timestep: torch.Tensor,
        img_shapes: Sequence[ImageShape],
        additional_t_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for the target tokens.

        hidden_states: ``[B, N_target + N_refs, in_channels]`` packed tokens, target first.
        encoder_hidden_states: ``[B, L, joint_attention_dim]``; encoder_hidden_states_mask ``[B, L]`` (1 valid,
        0 pad) or None. timestep: ``[B]`` (or a scalar) flow time s in [0, 1]. img_shapes: one
        ``(frames, h_tokens, w_tokens)`` per image, shared by the batch (diffusers' per-sample nested list is
        accepted when all samples agree). additional_t_cond: ``[B]`` long, only with use_additional_t_cond.
        Returns ``[B, N_target, patch^2 * out_channels]``.
        """
        shapes = _normalise_img_shapes(img_shapes)
        timestep = self._check_inputs(hidden_states, encoder_hidden_states, encoder_hidden_states_mask, timestep,
                                      shapes, additional_t_cond)
        img = self.img_in(hidden_states)  # [B, N, dim]
        txt = self.txt_in(self.txt_norm(encoder_hidden_states))  # [B, L, dim]
        ctx = self._context(img, txt.shape[1], encoder_hidden_states_mask, timestep, shapes, additional_t_cond)

        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        # the last block may skip work only the cropped-away tokens need (see DualStreamBlock), unless the target
        # is not one prefix of the modulation split (layered RoPE: several target images)
        n_out = self.target_token_count(shapes)
        last = len(self.transformer_blocks) - 1 if n_out == ctx.n_target else -1
        for i, block in enumerate(self.transformer_blocks):
            if use_checkpoint:
                img, txt = checkpoint(block, img, txt, ctx, i == last, use_reentrant=False)
            else:
                img, txt = block(img, txt, ctx, i == last)

        # norm_out and proj_out act per token: crop first, reference tokens need no output
        img = img[:, :n_out]  # [B, N_target, dim]
        return self.proj_out(self.norm_out(img, ctx.temb))

    def target_token_count(self, img_shapes: Sequence[ImageShape]) -> int:
        """Image tokens the output covers: the first image, or all but the condition image for layered RoPE."""
        shapes = _normalise_img_shapes(img_shapes)
        targets = shapes[:-1] if self.config.use_layer3d_rope and len(shapes) > 1 else shapes[:1]
        return sum(prod(s) for s in targets)

    def _context(self, img: torch.Tensor, text_len: int, text_mask: torch.Tensor | None, timestep: torch.Tensor,
                 shapes: list[ImageShape], additional_t_cond: torch.Tensor | None) -> BlockContext:
        """Everything the blocks share: timestep embeddings, RoPE table, attention mask."""
        t = timestep.to(img.dtype)  # the reference rounds the time to the compute dtype first
        temb_ref = None
        if self.config.zero_cond_t:
            # one embedding pass over [t, 0] as the reference does; references are clean, so they see t = 0
            both = self.time_text_embed(torch.cat([t, t * 0]), img.dtype, additional_t_cond)  # [2B, dim]
            temb, temb_ref = both.chunk(2, dim=0)
        else:
            temb = self.time_text_embed(t, img.dtype, additional_t_cond)  # [B, dim]
        return BlockContext(
            temb=temb,
            temb_ref=temb_ref,
            n_target=prod(shapes[0]),  # modulation split: the first image is the one being denoised
            rope=self.pos_embed(shapes, text_len, img.device),
            attn_mask=joint_attention_mask(text_mask, img.shape[1]),
        )

    def _check_inputs(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                      mask: torch.Tensor | None, timestep: torch.Tensor, shapes: list[ImageShape],
                      additional_t_cond: torch.Tensor | None) -> torch.Tensor:
        """Raise ValueError naming the bad argument; returns the timestep as a ``[B]`` tensor."""
        cfg = self.config
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != cfg.in_channels:
            raise ValueError(f"FireRedTransformer: hidden_states must be [B, N, {cfg.in_channels}], "
                             f"got {tuple(hidden_states.shape)}")
        batch, n_tokens = hidden_states.shape[:2]
        expected = sum(prod(s) for s in shapes)
        if n_tokens != expected:
            raise ValueError(f"FireRedTransformer: hidden_states has {n_tokens} tokens but img_shapes {shapes} "
                             f"describe {expected}")
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != batch \
                or encoder_hidden_states.shape[-1] != cfg.joint_attention_dim:
            raise ValueError(f"FireRedTransformer: encoder_hidden_states must be [{batch}, L, "
                             f"{cfg.joint_attention_dim}], got {tuple(encoder_hidden_states.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(encoder_hidden_states.shape[:2]):
            raise ValueError(f"FireRedTransformer: encoder_hidden_states_mask must be "
                             f"{tuple(encoder_hidden_states.shape[:2])}, got {tuple(mask.shape)}")
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if tuple(timestep.shape) != (batch,):
            raise ValueError(f"FireRedTransformer: timestep must be [{batch}] or a scalar, got {tuple(timestep.shape)}")
        if additional_t_cond is not None and tuple(additional_t_cond.shape) != (batch,):
            raise ValueError(f"FireRedTransformer: additional_t_cond must be [{batch}] (one 0/1 flag per sample), "
                             f"got {tuple(additional_t_cond.shape)}")
        return timestep


def _normalise_img_shapes(img_shapes: Sequence) -> list[ImageShape]:
    """``[(f, h, w), ...]``; diffusers' per-sample form ``[[(f, h, w), ...], ...]`` if every sample agrees."""
    if not img_shapes:
        raise ValueError("FireRedTransformer: img_shapes is empty; it needs one (frames, h, w) per image")
    if isinstance(img_shapes[0][0], (list, tuple)):
        first = [tuple(s) for s in img_shapes[0]]
        if any([tuple(s) for s in sample] != first for sample in img_shapes):
            raise ValueError(f"FireRedTransformer: img_shapes must be shared by the batch, got {img_shapes}")
        img_shapes = first
    shapes = [tuple(int(v) for v in s) for s in img_shapes]
    bad = [s for s in shapes if len(s) != 3 or min(s) <= 0]
    if bad:
        raise ValueError(f"FireRedTransformer: img_shapes entries must be positive (frames, h, w), got {bad}")
    return shapes  # type: ignore[return-value]
