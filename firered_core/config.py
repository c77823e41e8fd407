"""Typed configuration for every FireRed component, with named presets.

The field names mirror the ``config.json`` files of diffusers-format weights (``transformer/config.json``,
``vae/config.json``, ``scheduler/scheduler_config.json``) so a config read from disk maps one-to-one onto a
dataclass, and a preset can be written back out as a config.json that diffusers itself accepts. Each class checks
its invariants in ``__post_init__`` and raises ``ConfigError`` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value violates an invariant of the architecture."""


T = TypeVar("T")

# keys diffusers writes into config.json that carry no architecture information
_BOOKKEEPING_KEYS = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values"}


def _from_dict(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """Build ``cls`` from a config.json mapping: bookkeeping keys dropped, unknown keys logged, not fatal.

    Unknown keys are logged rather than refused because newer releases of the reference add flags; a flag we do
    not know is reported by name so a user can tell why outputs might differ.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    known = {k: v for k, v in data.items() if k in names}
    unknown = sorted(k for k in data if k not in names and k not in _BOOKKEEPING_KEYS)
    if unknown:
        log.warning("%s: ignoring config keys this version does not know: %s", source, ", ".join(unknown))
    for k, v in known.items():
        if isinstance(v, list):
            known[k] = tuple(v)
    return cls(**known)  # type: ignore[call-arg]


def _to_dict(obj: Any, class_name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"_class_name": class_name}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# ---------------------------------------------------------------------------------------------------------------
# Transformer (MMDiT)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerConfig:
    """The dual-stream MMDiT. Names follow diffusers' ``QwenImageTransformer2DModel`` config.json."""

    patch_size: int = 2  # latent pixels per token side; one token covers (8*patch)^2 image pixels
    in_channels: int = 64  # latent channels x patch^2 (16 x 2 x 2 for the released weights)
    out_channels: int = 16  # latent channels predicted per latent pixel
    num_layers: int = 60  # dual-stream blocks
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584  # width of the condition encoder's hidden states (Qwen2.5-VL-7B)
    guidance_embeds: bool = False  # distilled-guidance embedding; no released FireRed weight uses it
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)  # RoPE split of a head: (frame, height, width)
    zero_cond_t: bool = False  # reference tokens modulated with t=0 (Qwen-Image-Edit-2511 family)
    use_additional_t_cond: bool = False  # extra learned embedding added to the timestep embedding
    use_layer3d_rope: bool = False  # layered-image RoPE variant (Qwen-Image-Layered)

    def __post_init__(self) -> None:
        for name in ("patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim",
                     "num_attention_heads", "joint_attention_dim"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.axes_dims_rope) != 3:
            raise ConfigError(f"TransformerConfig.axes_dims_rope needs 3 entries (frame, h, w), got {self.axes_dims_rope}")
        if any(d % 2 for d in self.axes_dims_rope):
            raise ConfigError(f"TransformerConfig.axes_dims_rope entries must be even, got {self.axes_dims_rope}")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ConfigError(
                f"TransformerConfig.axes_dims_rope {self.axes_dims_rope} must sum to attention_head_dim "
                f"{self.attention_head_dim}"
            )
        if self.in_channels % (self.patch_size**2):
            raise ConfigError(
                f"TransformerConfig.in_channels {self.in_channels} must be a multiple of patch_size^2 "
                f"{self.patch_size ** 2}"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent this transformer denoises (in_channels unpacked)."""
        return self.in_channels // (self.patch_size**2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "transformer config") -> "TransformerConfig":
        return _from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, "QwenImageTransformer2DModel")


# ---------------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------------

_QWEN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
_QWEN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    """The Qwen-Image causal 3D-conv VAE. Names follow diffusers' ``AutoencoderKLQwenImage`` config.json."""

    base_dim: int = 96
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # channel multiplier per resolution level
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # (sic) diffusers' spelling, kept for config.json
    dropout: float = 0.0
    input_channels: int = 3
    latents_mean: tuple[float, ...] = _QWEN_LATENTS_MEAN
    latents_std: tuple[float, ...] = _QWEN_LATENTS_STD

    def __post_init__(self) -> None:
        if self.base_dim <= 0 or self.z_dim <= 0 or self.num_res_blocks <= 0:
            raise ConfigError("VAEConfig.base_dim, z_dim and num_res_blocks must be positive")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ConfigError(
                f"VAEConfig.temperal_downsample needs len(dim_mult)-1 = {len(self.dim_mult) - 1} entries, "
                f"got {len(self.temperal_downsample)}"
            )
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ConfigError(f"VAEConfig.{name} needs z_dim={self.z_dim} entries, got {len(getattr(self, name))}")
        if any(s <= 0 for s in self.latents_std):
            raise ConfigError("VAEConfig.latents_std entries must be positive")

    @property
    def spatial_compression(self) -> int:
        """Image pixels per latent pixel along one side (8 for the released VAE)."""
        return 2 ** len(self.temperal_downsample)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "vae config") -> "VAEConfig":
        return _from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, "AutoencoderKLQwenImage")


@dataclass(frozen=True)
class CompactVAEConfig:
    """The small convolutional VAE of the embedded default (``compact_vae.CompactVAE``), same interface as the
    Qwen-Image VAE: ``levels`` stride-2 stages (compression ``2**levels``), ``z_dim`` latent channels."""

    base_dim: int = 32
    z_dim: int = 16
    levels: int = 2
    input_channels: int = 3
    latents_mean: tuple[float, ...] = (0.0,) * 16
    latents_std: tuple[float, ...] = (1.0,) * 16

    def __post_init__(self) -> None:
        for name in ("base_dim", "z_dim", "levels", "input_channels"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"CompactVAEConfig.{name} must be positive, got {getattr(self, name)}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ConfigError(f"CompactVAEConfig: latents_mean/latents_std need {self.z_dim} entries (z_dim)")
        if any(not v > 0 for v in self.latents_std):
            raise ConfigError("CompactVAEConfig.latents_std entries must be positive")

    @property
    def spatial_compression(self) -> int:
        return 2 ** self.levels

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "vae config") -> "CompactVAEConfig":
        return _from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, COMPACT_VAE_CLASS)


COMPACT_VAE_CLASS = "FireRedCompactVAE"  # config.json _class_name of a CompactVAE folder




# ---------------------------------------------------------------------------------------------------------------
# Scheduler
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerConfig:
    """Flow-matching sigma schedule. Names follow diffusers' ``FlowMatchEulerDiscreteScheduler`` config.

    Only the options the Qwen-Image family uses are modelled; the loader refuses configs that switch on others
    (karras/exponential/beta sigmas, inverted sigmas) rather than silently sampling differently.
    ``stochastic_sampling`` is modelled: it makes ``"stochastic"`` the default sampler, whose steps re-noise the
    predicted clean latents (``sampler.stochastic_step``).
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0  # static shift, used only when use_dynamic_shifting is False
    use_dynamic_shifting: bool = True
    base_shift: float = 0.5  # mu at base_image_seq_len tokens
    max_shift: float = 0.9  # mu at max_image_seq_len tokens
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    shift_terminal: float | None = 0.02  # the last sigma is stretched to this value
    time_shift_type: str = "exponential"  # "exponential" or "linear"
    invert_sigmas: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    stochastic_sampling: bool = False

    def __post_init__(self) -> None:
        if self.time_shift_type not in ("exponential", "linear"):
            raise ConfigError(f"SchedulerConfig.time_shift_type must be 'exponential' or 'linear', got {self.time_shift_type!r}")
        unsupported = [n for n in ("invert_sigmas", "use_karras_sigmas", "use_exponential_sigmas",
                                   "use_beta_sigmas") if getattr(self, n)]
        if unsupported:
            raise ConfigError(f"SchedulerConfig: options not supported by FireRed sampling: {', '.join(unsupported)}")
        if self.max_image_seq_len <= self.base_image_seq_len:
            raise ConfigError("SchedulerConfig.max_image_seq_len must exceed base_image_seq_len")
        if self.shift_terminal is not None and not 0.0 < self.shift_terminal < 1.0:
            raise ConfigError(f"SchedulerConfig.shift_terminal must lie in (0, 1), got {self.shift_terminal}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scheduler config") -> "SchedulerConfig":
        return _from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, "FlowMatchEulerDiscreteScheduler")


# ---------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPreset:
    """A named bundle of component configs."""

    transformer: TransformerConfig
    vae: VAEConfig | CompactVAEConfig = field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


_TINY_VAE = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, temperal_downsample=(False, True),
                      latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.8, 1.2, 1.0))

# The embedded default model (docs/default_model/RECIPE.md): a 6-block MMDiT of width 192 over CompactVAE's 16 channels.
_DEFAULT_TRANSFORMER = TransformerConfig(patch_size=2, in_channels=64, out_channels=16, num_layers=6,
                                         attention_head_dim=32, num_attention_heads=6, joint_attention_dim=384,
                                         axes_dims_rope=(8, 12, 12))
_DEFAULT_VAE = CompactVAEConfig(base_dim=32, z_dim=16, levels=2)

PRESETS: dict[str, ModelPreset] = {
    # The published FireRed-Image-Edit 1.0 / 1.1 transformer: 20,430,401,088 parameters.
    "firered-1.0": ModelPreset(transformer=TransformerConfig()),
    # Tiny, for unit and parity tests: 2 layers, 2 heads of 16, a 4-channel latent with 4x compression.
    "tiny": ModelPreset(
        transformer=TransformerConfig(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                      axes_dims_rope=(4, 6, 6)),
        vae=_TINY_VAE,
    ),
    # 'tiny' with a 384-wide condition: the width of the MiniLM-L6 text encoder (encoder.MiniLMConditionEncoder).
    "tiny-minilm": ModelPreset(
        transformer=TransformerConfig(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=384,
                                      axes_dims_rope=(4, 6, 6)),
        vae=_TINY_VAE,
    ),
    # The embedded default (firered_core.default): a 6-block MMDiT over the 16-channel, 4x-compressed latent of a
    # small convolutional VAE, conditioned by MiniLM-L6 (width 384). Trained from scratch on CPU by
    # recipes/default_model/ (docs/default_model/RECIPE.md says why its VAE is not the Qwen-Image architecture).
    "firered-default": ModelPreset(transformer=_DEFAULT_TRANSFORMER, vae=_DEFAULT_VAE),
    # firered-default grown to 8 blocks (firered grow-depth: copies of blocks 1 and 3 with zeroed gates), the
    # shipped default's architecture from recipes/default_model/10_deep.yaml on.
    "firered-default-deep": ModelPreset(transformer=dataclasses.replace(_DEFAULT_TRANSFORMER, num_layers=8),
                                        vae=_DEFAULT_VAE),
    # Mid-size, for benchmarks: big enough that matmuls dominate, small enough for a 2-core CPU.
    "bench-mid": ModelPreset(
        transformer=TransformerConfig(num_layers=4, attention_head_dim=64, num_attention_heads=8,
                                      joint_attention_dim=512, axes_dims_rope=(8, 28, 28)),
    ),
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; the error lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
