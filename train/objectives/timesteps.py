"""Which noise levels ``s`` in [0, 1] a training batch sees (s = 1 is pure noise).

Every level starts as a quantile ``u`` in [0, 1) and goes through four steps, each a setting of
``TimestepSamplerConfig``::

    sampler = TimestepSampler(TimestepSamplerConfig(mode="logit_normal", shift="resolution", stratified=True))
    gen = timestep_generator(seed, step, rank)                 # same (seed, step, rank) -> same levels
    s = sampler.sample(batch, step=step, rank=rank, world_size=world, image_seq_len=n_tokens, generator=gen)
    bins = loss_bins(s, 10)                                    # [B] bin index, for "loss per timestep bin"

1. Stratification (``stratified``; FireRed's "distributed stratified timestep sampling"). [0, 1) is cut into
   ``world_size`` strata and rank ``r`` draws only from stratum ``k = (r + step // rotate_every) % world_size``, so
   one optimizer step's global batch spans every noise level instead of leaving it to chance, and the
   assignment rotates every ``rotate_every`` steps so that no rank keeps the same levels (and the same slice of
   the data stream's noise levels) for the whole run. Inside its stratum a rank of batch ``B`` stratifies again:
   sample ``j`` of the batch gets sub-stratum ``perm[j]`` of ``B`` equal parts (``perm`` a random permutation, so
   no batch position is tied to low or high noise). The strata of all ranks in a step are disjoint and cover [0, 1).
   FireRed's released trainer gives each group of ranks a fixed sub-range of the discrete timestep indices, without
   rotation; the report adds the periodic rotation, which this follows.
2. Curriculum (``curriculum="high_noise_first"``): during the first ``curriculum_steps`` steps the quantile is
   squeezed into ``[lo, 1)`` with ``lo = (1 - curriculum_start_width) * (1 - step / curriculum_steps)``: at step 0
   only the top ``curriculum_start_width`` of the range (the noisiest levels, where the global layout is decided),
   widening linearly to the full range at ``curriculum_steps``, then the full range for good. It acts on the
   quantile, so it composes with stratification (the strata are squeezed together, still disjoint) and with any
   distribution and shift (all monotone: the top quantiles stay the noisiest levels).
3. Distribution (``mode``): ``uniform`` is ``s = u``; ``logit_normal`` is ``s = sigmoid(logit_mean + logit_std *
   Phi^-1(u))``, the SD3 / FireRed density (its mass around s = 0.5 for mean 0). Going through the normal quantile
   function instead of drawing a normal directly is what lets stratification apply to it.
4. Shift (``shift``): ``resolution`` moves levels towards noise by the inference schedule's dynamic exponential
   shift, ``s' = e^mu / (e^mu + 1/s - 1)`` with ``mu = firered_core.schedule.compute_mu(image_seq_len, scheduler)``
   (linear in the target token count: 0.5 at 256 tokens, 0.9 at 8192 for FireRed; ``mu / (mu + 1/s - 1)`` when the
   scheduler's ``time_shift_type`` is "linear"), so a large image trains on the levels its sampler spends its steps
   on. ``static`` uses a fixed ``static_shift``: ``shift s / (1 + (shift - 1) s)``, the same map with
   ``e^mu = shift``. ``none`` leaves ``s`` as it is. The inference schedule's ``shift_terminal`` stretch is not
   applied: it only re-spaces a finite list of sampling steps; training draws continuous levels. (FireRed's
   released trainer instead indexes the shifted, stretched N-step inference schedule; the continuous form is the
   same curve without the discretisation.)

Draws use the ``generator`` passed in (CPU, float64 internally, float32 out): the first ``B`` uniforms, then one
``randperm(B)`` when stratified. The same generator state, step, rank and world size give the same levels.

Public API: ``TimestepSamplerConfig``, ``TimestepSampler``, ``timestep_generator``, ``loss_bins``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from firered_core.config import SchedulerConfig
from firered_core.schedule import compute_mu

from ..config.coerce import field_error
from ..distributed import step_seed

__all__ = ["TimestepSampler", "TimestepSamplerConfig", "loss_bins", "timestep_generator"]


@dataclass(frozen=True)
class TimestepSamplerConfig:
    """How the noise level of each training sample is drawn (steps 1-4 of the module docstring)."""

    mode: Literal["uniform", "logit_normal"] = "logit_normal"  # FireRed: logit-normal
    logit_mean: float = 0.0  # mean 0 centres the logit-normal mass on s = 0.5
    logit_std: float = 1.0
    # "resolution": exp(mu) with mu from the target token count (as inference); "static": ``static_shift``
    shift: Literal["none", "static", "resolution"] = "resolution"
    static_shift: float = 1.0  # 1.0 is the identity; > 1 moves levels towards noise
    stratified: bool = True  # per-rank strata of [0, 1), stratified again within the batch
    rotate_every: int = 100  # steps between rotations of the rank -> stratum assignment (*unknown*: a guess)
    curriculum: Literal["none", "high_noise_first"] = "none"  # report: high noise first, then the full range
    curriculum_steps: int = 0  # steps until the full range is reached (the report gives no number)
    curriculum_start_width: float = 0.5  # fraction of the quantile range (its top) used at step 0

    def __post_init__(self) -> None:
        if self.mode not in ("uniform", "logit_normal"):
            raise field_error("mode", f"must be 'uniform' or 'logit_normal', got {self.mode!r}")
        if self.shift not in ("none", "static", "resolution"):
            raise field_error("shift", f"must be 'none', 'static' or 'resolution', got {self.shift!r}")
        if self.curriculum not in ("none", "high_noise_first"):
            raise field_error("curriculum", f"must be 'none' or 'high_noise_first', got {self.curriculum!r}")
        if not math.isfinite(self.logit_mean):
            raise field_error("logit_mean", f"must be finite, got {self.logit_mean!r}")
        for name in ("logit_std", "static_shift"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise field_error(name, f"must be a positive number, got {value!r}")
        if isinstance(self.rotate_every, bool) or self.rotate_every < 1:
            raise field_error("rotate_every", f"must be an integer >= 1, got {self.rotate_every!r}")
        if self.curriculum_steps < 0:
            raise field_error("curriculum_steps", f"must be >= 0, got {self.curriculum_steps!r}")
        if self.curriculum != "none" and self.curriculum_steps == 0:
            raise field_error("curriculum_steps", f"must be > 0 with curriculum {self.curriculum!r}")
        if not 0.0 < self.curriculum_start_width <= 1.0:
            raise field_error("curriculum_start_width", f"must lie in (0, 1], got {self.curriculum_start_width!r}")


def timestep_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator owned by (seed, step, rank): levels are reproducible after a resume, on any machine."""
    return torch.Generator().manual_seed(step_seed(seed, "timesteps", step, rank))


def loss_bins(s: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index ``[B]`` (int64) of each level in ``n_bins`` equal-width bins of [0, 1]; s = 1 is in the last."""
    if n_bins < 1:
        raise ValueError(f"loss_bins: n_bins must be >= 1, got {n_bins}")
    levels = s.detach().reshape(-1).to(torch.float64)
    if levels.numel() and not bool(((levels >= 0) & (levels <= 1)).all()):
        raise ValueError("loss_bins: levels must lie in [0, 1] (s, not t * 1000)")
    return (levels * n_bins).floor().to(torch.int64).clamp_(max=n_bins - 1)


class TimestepSampler:
    """Draws noise levels ``s [B]`` (see the module docstring); ``scheduler`` supplies ``mu`` for the shift."""

    def __init__(self, config: TimestepSamplerConfig | None = None, scheduler: SchedulerConfig | None = None) -> None:
        self.config = config if config is not None else TimestepSamplerConfig()
        self.scheduler = scheduler if scheduler is not None else SchedulerConfig()

    # ----------------------------------------------------------------------------------- step 1 and 2: quantiles

    def stratum(self, step: int, rank: int, world_size: int) -> int:
        """The stratum (0 .. world_size - 1) rank ``rank`` draws from at ``step``."""
        return (rank + step // self.config.rotate_every) % world_size

    def curriculum_floor(self, step: int) -> float:
        """The lower end ``lo`` of the quantile range at ``step`` (0 once the curriculum is over)."""
        cfg = self.config
        if cfg.curriculum == "none" or step >= cfg.curriculum_steps:
            return 0.0
        return (1.0 - cfg.curriculum_start_width) * (1.0 - step / cfg.curriculum_steps)

    def quantiles(self, batch: int, *, step: int, rank: int = 0, world_size: int = 1,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """Quantiles ``u [B]`` (float64, in [0, 1)) after stratification and curriculum."""
        _check_position(batch, step, rank, world_size)
        u = torch.rand(batch, generator=generator, dtype=torch.float64)  # [B]
        if self.config.stratified:
            sub = torch.randperm(batch, generator=generator).to(torch.float64)  # [B] sub-stratum of each sample
            u = (self.stratum(step, rank, world_size) + (sub + u) / batch) / world_size
        lo = self.curriculum_floor(step)
        return lo + (1.0 - lo) * u

    # ----------------------------------------------------------------------------------- step 3 and 4: levels

    def shift_levels(self, s: torch.Tensor, image_seq_len: int | None = None) -> torch.Tensor:
        """Step 4 alone: levels moved by the configured shift (float64 in, float64 out)."""
        cfg = self.config
        if cfg.shift == "none":
            return s
        if cfg.shift == "static":
            return cfg.static_shift * s / (1.0 + (cfg.static_shift - 1.0) * s)
        if image_seq_len is None:
            raise ValueError("TimestepSampler: shift='resolution' needs image_seq_len (the target's token count)")
        mu = compute_mu(image_seq_len, self.scheduler)
        scale = math.exp(mu) if self.scheduler.time_shift_type == "exponential" else mu
        # s = 0 gives 1/s = inf and a level of exactly 0, no NaN
        return scale / (scale + (1.0 / s - 1.0))

    def to_levels(self, u: torch.Tensor, *, image_seq_len: int | None = None) -> torch.Tensor:
        """Quantiles ``u`` -> levels ``s`` (float32): distribution (step 3), then shift (step 4)."""
        u = u.to(torch.float64)
        if self.config.mode == "logit_normal":
            s = torch.sigmoid(self.config.logit_mean + self.config.logit_std * torch.special.ndtri(u))
        else:
            s = u
        return self.shift_levels(s, image_seq_len).to(torch.float32)

    def sample(self, batch: int, *, step: int, rank: int = 0, world_size: int = 1, image_seq_len: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise levels ``s [batch]`` (float32, CPU) for this rank at this optimizer step."""
        u = self.quantiles(batch, step=step, rank=rank, world_size=world_size, generator=generator)
        return self.to_levels(u, image_seq_len=image_seq_len)


def _check_position(batch: int, step: int, rank: int, world_size: int) -> None:
    if batch < 1:
        raise ValueError(f"TimestepSampler: batch must be >= 1, got {batch}")
    if step < 0:
        raise ValueError(f"TimestepSampler: step must be >= 0, got {step}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"TimestepSampler: need 0 <= rank < world_size, got rank {rank} of {world_size}")
