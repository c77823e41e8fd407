"""Building blocks of the Qwen-Image VAE, specialised to single images (one frame).

The Qwen-Image VAE is a Wan-2.1 style *video* autoencoder: every convolution is a causal 3D convolution (the
temporal kernel only looks at the current and past frames, with zeros in front of the first frame), and the
resampling layers carry an extra temporal convolution. FireRed only ever feeds it one image at a time, i.e. a
video of T=1 frames, and for T=1 the video machinery collapses exactly:

* a causal conv with temporal kernel ``kt`` sees ``kt - 1`` zero frames and then the image, so only the LAST
  temporal slice of its weight touches real data: it equals a 2D conv with ``weight[:, :, -1]``. We compute that
  (a third of the FLOPs of a 3x3x3 conv) but keep the 5-D weight, so state-dict keys and shapes stay diffusers';
* the reference encodes the first frame alone with an empty feature cache; with an empty cache the temporal
  convolutions of ``downsample3d`` / ``upsample3d`` are skipped for that frame, so ``time_conv`` weights exist
  (for loading) but are never used here;
* nothing ever mixes frames, so tensors stay 4-D ``[B, C, H, W]`` inside these blocks.

Module and parameter names mirror diffusers' ``AutoencoderKLQwenImage`` exactly (``norm1.gamma``,
``conv_shortcut``, ``resample.1``, ``time_conv``, ``to_qkv``, ``down_blocks``/``up_blocks``/``mid_block``...),
because real checkpoints use them. Layers are built through an ``ops`` namespace (see ``firered_core.ops``) so
weights may be stored in a lower precision and cast to the input's dtype at compute time.

Public names: ``VAEEncoder``, ``VAEDecoder``, ``make_causal_conv``, ``causal_conv``, and the blocks they use.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .ops import DEFAULT_OPS, CastWeights, cast_param

# dtypes whose L2 normalisation the reference runs in float32 (then casts back)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------------------------
# Causal 3D convolution, evaluated for one frame
# ---------------------------------------------------------------------------------------------------------------


def make_causal_conv(ops: SimpleNamespace, in_ch: int, out_ch: int, kernel: int | tuple[int, int, int], *,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.Conv3d:
    """An ``ops.Conv3d`` holding a causal conv's 5-D weight; run it with ``causal_conv``.

    The module stores the spatial "same" padding (``k // 2``) and no temporal padding: causality is handled by
    ``causal_conv`` reading only the last temporal slice. Built from ``ops`` so a host's Conv3d class (weight
    casting, skipped init) owns the parameters.
    """
    kt, kh, kw = (kernel, kernel, kernel) if isinstance(kernel, int) else kernel
    return ops.Conv3d(in_ch, out_ch, (kt, kh, kw), padding=(0, kh // 2, kw // 2), device=device, dtype=dtype)


def causal_conv(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Apply the causal 3D conv ``conv`` to a single frame ``x`` [B, C, H, W] -> [B, C', H', W'].

    The reference pads ``kt - 1`` zero frames in front of the frame; every temporal tap but the last multiplies
    zeros, so the result is a 2D conv with the last temporal slice of the weight.
    """
    weight = cast_param(conv, "weight", x)[:, :, -1]  # [O, I, kt, kh, kw] -> [O, I, kh, kw]
    return F.conv2d(x, weight, cast_param(conv, "bias", x), stride=conv.stride[1:], padding=conv.padding[1:])


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and attention
# ---------------------------------------------------------------------------------------------------------------


class ChannelRMSNorm(CastWeights, nn.Module):
    """RMS norm over channels: ``x / ||x||_2 * sqrt(C) * gamma`` (the reference's ``RMS_norm``, no bias).

    ``gamma`` keeps the reference shape, ``[C, 1, 1, 1]`` in video blocks and ``[C, 1, 1]`` in attention
    (``images=True``), so checkpoints load unchanged; it is viewed as ``[C, 1, 1]`` for our 4-D tensors.
    """

    def __init__(self, dim: int, *, images: bool, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
        self._init_cast()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # half precision would under/overflow the sum of squares, so normalise in float32 like the reference
        wide = x.float() if x.dtype in _LOW_PRECISION or x.dtype.itemsize == 1 else x
        normed = F.normalize(wide, dim=1).to(x.dtype)
        return normed * self.scale * cast_param(self, "gamma", x).reshape(-1, 1, 1)


class SpatialAttention(nn.Module):
    """Single-head self-attention over the pixels of one frame, with a residual connection."""

    def __init__(self, dim: int, *, ops: SimpleNamespace = DEFAULT_OPS, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True, device=device, dtype=dtype)
        self.to_qkv = ops.Conv2d(dim, dim * 3, 1, device=device, dtype=dtype)
        self.proj = ops.Conv2d(dim, dim, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x))  # [B, 3C, H, W]
        qkv = qkv.flatten(2).transpose(1, 2).unsqueeze(1)  # [B, 1, H*W, 3C]: one head, pixels as tokens
        q, k, v = qkv.chunk(3, dim=-1)  # each [B, 1, H*W, C]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, H*W, C]
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)  # back to an image
        return self.proj(out) + x


# ---------------------------------------------------------------------------------------------------------------
# Residual block, resampling, middle block
# ---------------------------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """norm -> SiLU -> conv3 -> norm -> SiLU -> dropout -> conv3, plus a (1x1 conv when widths differ) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, *, ops: SimpleNamespace = DEFAULT_OPS,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = ChannelRMSNorm(in_dim, images=False, **kw)
        self.conv1 = make_causal_conv(ops, in_dim, out_dim, 3, **kw)
        self.norm2 = ChannelRMSNorm(out_dim, images=False, **kw)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = make_causal_conv(ops, out_dim, out_dim, 3, **kw)
        # the reference uses Identity (no keys) when the widths match
        self.conv_shortcut = make_causal_conv(ops, in_dim, out_dim, 1, **kw) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.conv_shortcut is None else causal_conv(self.conv_shortcut, x)
        h = causal_conv(self.conv1, F.silu(self.norm1(x)))
        h = causal_conv(self.conv2, self.dropout(F.silu(self.norm2(h))))
        return h + shortcut


class _NearestUpsample2x(nn.Module):
    """2x nearest-exact upsampling computed in float32 (the reference upsamples in float32, then casts back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """2x spatial down- or upsampling; ``mode`` is the reference's ``downsample2d|3d`` / ``upsample2d|3d``.

    Down: pad right/bottom by one, 3x3 conv with stride 2. Up: nearest 2x, 3x3 conv that HALVES the channels.
    The ``*3d`` modes also own a ``time_conv`` (temporal up/downsampling); it never acts on a video's first frame,
    so for single images it is loaded but unused.
    """

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str, *, ops: SimpleNamespace = DEFAULT_OPS,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        kw = dict(device=device, dtype=dtype)
        self.mode = mode
        if mode.startswith("up"):
            # Sequential so the conv's keys read ``resample.1.*`` like the reference
            self.resample = nn.Sequential(_NearestUpsample2x(), ops.Conv2d(dim, dim // 2, 3, padding=1, **kw))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), ops.Conv2d(dim, dim, 3, stride=2, **kw))
        if mode == "upsample3d":
            self.time_conv = make_causal_conv(ops, dim, dim * 2, (3, 1, 1), **kw)
        elif mode == "downsample3d":
            self.time_conv = ops.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resample(x)


class MidBlock(nn.Module):
    """Residual block, attention, residual block (keys ``resnets.{0,1}``, ``attentions.0``)."""

    def __init__(self, dim: int, dropout: float = 0.0, *, ops: SimpleNamespace = DEFAULT_OPS,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        self.attentions = nn.ModuleList([SpatialAttention(dim, **kw)])
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim, dropout, **kw), ResidualBlock(dim, dim, dropout, **kw)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x))
        return x


# ---------------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------------------------


class VAEEncoder(nn.Module):
    """Image [B, in_ch, H, W] -> posterior parameters [B, 2*z_dim, H/f, W/f] (before ``quant_conv``).

    ``down_blocks`` is one flat list, as in the reference: per level ``num_res_blocks`` residual blocks (each
    followed by attention when the level's scale is in ``attn_scales``), then a downsampler except at the last
    level. The reference's cached encode path cannot run attention there (its attention block takes no cache),
    so released weights have ``attn_scales=()``; we implement what the layout describes.
    """

    def __init__(self, config: VAEConfig, *, ops: SimpleNamespace = DEFAULT_OPS,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        dims = [config.base_dim * m for m in (1, *config.dim_mult)]
        self.conv_in = make_causal_conv(ops, config.input_channels, dims[0], 3, device=device, dtype=dtype)
        blocks: list[nn.Module] = []
        scale = 1.0
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, config.dropout, **kw))
                if scale in config.attn_scales:
                    blocks.append(SpatialAttention(out_dim, **kw))
                in_dim = out_dim
            if level != len(config.dim_mult) - 1:
                mode = "downsample3d" if config.temperal_downsample[level] else "downsample2d"
                blocks.append(Resample(out_dim, mode, **kw))
                scale /= 2.0
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1], config.dropout, **kw)
        self.norm_out = ChannelRMSNorm(dims[-1], images=False, device=device, dtype=dtype)
        self.conv_out = make_causal_conv(ops, dims[-1], config.z_dim * 2, 3, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = causal_conv(self.conv_in, x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return causal_conv(self.conv_out, F.silu(self.norm_out(x)))


class UpBlock(nn.Module):
    """``num_res_blocks + 1`` residual blocks, then an optional upsampler (keys ``resnets.*``, ``upsamplers.0``)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, dropout: float, upsample_mode: str | None,
                 *, ops: SimpleNamespace = DEFAULT_OPS, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList([ResidualBlock(i, o, dropout, **kw) for i, o in zip(dims[:-1], dims[1:])])
        self.upsamplers = nn.ModuleList([Resample(out_dim, upsample_mode, **kw)]) if upsample_mode else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class VAEDecoder(nn.Module):
    """Latent [B, z_dim, h, w] (after ``post_quant_conv``) -> image [B, in_ch, h*f, w*f], not clamped.

    Widths run ``dim_mult`` backwards; every upsampler halves the channels, so each level after the first
    starts from half the previous level's width.
    """

    def __init__(self, config: VAEConfig, *, ops: SimpleNamespace = DEFAULT_OPS,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = dict(ops=ops, device=device, dtype=dtype)
        mult = config.dim_mult
        dims = [config.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = config.temperal_downsample[::-1]
        self.conv_in = make_causal_conv(ops, config.z_dim, dims[0], 3, device=device, dtype=dtype)
        self.mid_block = MidBlock(dims[0], config.dropout, **kw)
        blocks = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the previous level's upsampler halved the channels
            mode = None
            if level != len(mult) - 1:
                mode = "upsample3d" if temporal_up[level] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, config.num_res_blocks, config.dropout, mode, **kw))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1], images=False, device=device, dtype=dtype)
        self.conv_out = make_causal_conv(ops, dims[-1], config.input_channels, 3, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = causal_conv(self.conv_in, x)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return causal_conv(self.conv_out, F.silu(self.norm_out(x)))
