"""``TrainConfig``: everything one training run needs, as one frozen tree of dataclasses.

::

    stage / seed / precision / output_dir
    model       ModelConfig        preset or weights, dtype, gradient checkpointing, full or LoRA
    lora        LoRAConfig         rank, alpha, dropout, target modules, init, export format
    data        DataConfig         reader + path, bucket sampler, SIA, cache, workers
    objective   ObjectiveConfig    kind (flow / dpo), timestep sampling, outlier mask
    dpo         DPOConfig          beta, omega, SFT weight, reference (only for ``objective.kind: dpo``)
    consistency ConsistencyConfig  the SFT identity loss: weight, cut-off, face-feature file, landmark source
    nft         NFTConfig          samples per prompt, reward, beta, KL, old-policy decay (``objective.kind: nft``)
    optim       OptimConfig        AdamW (0.9, 0.999), weight decay 0.01, clip 1.0, warm-up, LR schedule
    schedule    ScheduleConfig     max steps, gradient accumulation
    ema         EMAConfig
    checkpoint  CheckpointConfig   dir, every, keep last, resume
    logging     LoggingConfig      log interval, TensorBoard, validation grids, loss bins
    vae         VAETrainConfig     only for ``target: vae`` (train the model's VAE as an autoencoder)

Checks that span sections live here; each section checks its own fields. Use ``dataclasses.replace`` to derive
a variant; YAML files and ``--a.b=value`` overrides are handled by ``yaml_io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .coerce import field_error
from .consistency_section import ConsistencyConfig
from .dpo_section import DPOConfig
from .nft_section import NFTConfig
from .sections import (CheckpointConfig, DataConfig, EMAConfig, LoggingConfig, LoRAConfig, ModelConfig,
                       ObjectiveConfig, OptimConfig, ScheduleConfig)
from .vae_section import VAETrainConfig

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run (a stage of FireRed's recipe, or a LoRA)."""

    stage: str = "sft"  # a label for logs and checkpoints: pretrain, continued, sft, lora or any name
    # What trains: the transformer (every FireRed stage) or, for a model built from scratch, its VAE first.
    target: Literal["transformer", "vae"] = "transformer"
    # Seeds model init (LoRA adapters, random-init tests), noise and timesteps. The data order has its own seeds
    # (data.sampler.seed, data.sia.seed) so a new init seed does not also reshuffle the data.
    seed: int = 0
    # "bf16": bfloat16 autocast for the forward/backward compute (FireRed trains in BF16); "fp32": none.
    precision: Literal["fp32", "bf16"] = "bf16"
    output_dir: str = "runs/firered"  # logs, samples, loss curve, checkpoints (unless checkpoint.dir is set)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    nft: NFTConfig = field(default_factory=NFTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)

    def __post_init__(self) -> None:
        if not self.stage.strip():
            raise field_error("stage", "must not be empty")
        if self.target not in ("transformer", "vae"):
            raise field_error("target", f"must be 'transformer' or 'vae', got {self.target!r}")
        if not self.output_dir.strip():
            raise field_error("output_dir", "must not be empty")
        if self.optim.warmup_steps > self.schedule.max_steps:
            raise field_error("optim.warmup_steps", f"{self.optim.warmup_steps} exceeds schedule.max_steps "
                                                    f"{self.schedule.max_steps}")
        if self.precision == "bf16" and self.model.dtype == "float16":
            raise field_error("model.dtype", "float16 weights with bf16 autocast mix two half formats; use "
                                             "bfloat16 or float32")
        self._check_dpo()
        self._check_consistency()
        self._check_nft()

    def _check_dpo(self) -> None:
        """A DPO run reads preference pairs online and needs a reference its fine-tuning mode can give."""
        dpo, preference = self.objective.kind == "dpo", self.data.reader == "preference"
        if preference and not dpo:
            raise field_error("data.reader", "'preference' pairs train only with objective.kind: dpo")
        if not dpo:
            return
        if not preference:
            raise field_error("data.reader", f"objective.kind: dpo needs data.reader: preference (JSONL preference "
                                             f"manifests), got {self.data.reader!r}")
        if self.data.cache_dir is not None:
            raise field_error("data.cache_dir", "DPO encodes its pairs online: there is no latent cache for "
                                                "preference pairs; remove data.cache_dir")
        if self.objective.rollout.prob > 0:
            raise field_error("objective.rollout.prob", "rollout inputs are for flow runs; DPO noises winner and "
                                                        "loser alike from their own latents: set it to 0")
        if self.target != "transformer":
            raise field_error("target", "objective.kind: dpo trains the transformer; use target: transformer")
        if self.dpo.reference == "lora_disabled" and not self.is_lora:
            raise field_error("dpo.reference", "'lora_disabled' needs a LoRA run (model.finetune: lora); use "
                                               "'frozen_copy' for full fine-tuning")

    def _check_consistency(self) -> None:
        """The identity loss rides on the flow loss of a transformer run; manifest landmarks come from JSONL."""
        if not self.consistency.enabled:
            return
        if self.target != "transformer" or self.objective.kind != "flow":
            raise field_error("consistency.enabled", f"the consistency loss is added to the flow loss of a "
                                                     f"transformer run (target: transformer, objective.kind: flow), "
                                                     f"got target {self.target!r}, kind {self.objective.kind!r}")
        if self.consistency.landmarks == "manifest" and self.data.reader != "jsonl":
            raise field_error("consistency.landmarks", f"'manifest' reads the target_landmarks of JSONL manifests "
                                                       f"but data.reader is {self.data.reader!r}; use 'detect' (the "
                                                       f"face extra's detector) or a JSONL manifest")

    def _check_nft(self) -> None:
        """A DiffusionNFT run samples its own training images from prompts it encodes online."""
        if self.objective.kind != "nft":
            return
        if self.data.reader == "preference":
            raise field_error("data.reader", "objective.kind: nft reads prompts (edit samples whose targets are "
                                             "ignored but for their size), not preference pairs")
        if self.data.cache_dir is not None:
            raise field_error("data.cache_dir", "NFT scores decoded results against the source pictures, which "
                                                "a latent cache does not keep: remove data.cache_dir")
        if self.objective.rollout.prob > 0:
            raise field_error("objective.rollout.prob", "rollout inputs are for flow runs; NFT trains on its own "
                                                        "samples: set it to 0")
        if self.target != "transformer":
            raise field_error("target", "objective.kind: nft trains the transformer; use target: transformer")

    @property
    def is_lora(self) -> bool:
        return self.model.finetune == "lora"

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoints go: ``checkpoint.dir`` or ``<output_dir>/checkpoints``."""
        return Path(self.checkpoint.dir) if self.checkpoint.dir is not None else Path(self.output_dir) / "checkpoints"
