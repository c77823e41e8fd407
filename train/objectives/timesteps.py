"""Which noise levels ``s`` in [0, 1] a training batch sees (s = 1 is pure noise).

Every level starts as a quantile ``u`` in [0, 1) and goes through four steps, each a setting of ``TimestepConfig``
(the ``objective.timesteps`` section of a training config)::

    sampler = TimestepSampler(TimestepConfig(mode="logit_normal", shift="resolution", stratification="global"))
    gen = sampler.generators(seed, step, rank, samples)      # what the stratification needs, see below
    s = sampler.sample(batch, step=step, rank=rank, world_size=world, image_seq_len=n_tokens, generator=gen)
    bins = loss_bins(s, 10)                                    # [B] bin index, for "loss per timestep bin"

1. Stratification (``stratification``; FireRed's "distributed stratified timestep sampling"), so that one step's
   global batch spans every noise level instead of leaving it to chance. Two ways to cut [0, 1):

   - ``global``: the step's global batch of ``G = B x world_size`` samples gets ``G`` equal strata, one per sample,
     by the sample's position in the global batch: rank ``r``'s ``i``-th sample is position ``p = i x world_size +
     r``, the order in which the bucket sampler deals a bucket out to the ranks (rank ``r`` takes ``r::world_size``),
     and it draws in stratum ``(p + step // rotate_every) % G``. With one generator per *sample*
     (``timestep_generators``) the levels do not depend on how the global batch is split across processes, so
     1 and N processes train the same model. The strata rotate by one every ``rotate_every`` steps.
   - ``rank``: the report's wording. [0, 1) is cut into ``world_size`` strata and rank ``r`` draws only from stratum
     ``k = (r + step // rotate_every) % world_size``; the assignment rotates every ``rotate_every`` steps so that
     no rank keeps the same levels (and the same slice of the data stream) for the whole run. Inside its stratum a
     rank of batch ``B`` stratifies again: sample ``j`` gets sub-stratum ``perm[j]`` of ``B`` equal parts (``perm``
     a random permutation from the rank's generator, so no batch position is tied to low or high noise). The draws
     of a rank come from one generator per (seed, step, rank) (``timestep_generator``), so 1 and N processes differ.

   Either way the strata of all samples of a step are disjoint and cover [0, 1). ``none`` draws independently.
   FireRed's released trainer gives each group of ranks a fixed sub-range of the discrete timestep indices, without
   rotation; the report adds the periodic rotation, which both ways follow.
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

Draws (CPU, float64 internally, float32 out). ``generator`` is one ``torch.Generator`` (the first ``B`` uniforms,
then one ``randperm(B)`` for ``rank``) or a sequence of ``B`` generators, one uniform from each (``none`` and
``global`` only: ``rank`` needs its permutation from one generator). ``generators`` picks the right kind for the
configured stratification. The same generators, step, rank and world size give the same levels.

Public API: ``TimestepSampler``, ``TimestepConfig`` (from ``config.sections``), ``timestep_generator``,
``timestep_generators``, ``loss_bins``, ``Generators``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from firered_core.config import SchedulerConfig
from firered_core.schedule import compute_mu

from ..config.sections import TimestepConfig
from ..scale.distributed import sample_generator, step_seed

__all__ = ["Generators", "TimestepConfig", "TimestepSampler", "loss_bins", "timestep_generator",
           "timestep_generators"]

# one generator for the batch, or one per sample (see the module docstring)
Generators = torch.Generator | Sequence[torch.Generator] | None


def timestep_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator owned by (seed, step, rank): levels are reproducible after a resume, on any machine."""
    return torch.Generator().manual_seed(step_seed(seed, "timesteps", step, rank))


def timestep_generators(seed: int, step: int, samples: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample, owned by (seed, step, sample): the same on any rank and process count."""
    return [sample_generator(seed, step, i, "timestep") for i in samples]


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

    def __init__(self, config: TimestepConfig | None = None, scheduler: SchedulerConfig | None = None) -> None:
        self.config = config if config is not None else TimestepConfig()
        self.scheduler = scheduler if scheduler is not None else SchedulerConfig()

    # ----------------------------------------------------------------------------------- step 1 and 2: quantiles

    def generators(self, seed: int, step: int, rank: int, samples: Sequence[int]) -> Generators:
        """The generator(s) the configured stratification draws from at ``step``: one per sample of ``samples``
        (``none``, ``global``: levels independent of the process count), one per rank (``rank``)."""
        if self.config.stratification == "rank":
            return timestep_generator(seed, step, rank)
        return timestep_generators(seed, step, samples)

    def stratum(self, step: int, rank: int, world_size: int) -> int:
        """``rank`` stratification: the stratum (0 .. world_size - 1) rank ``rank`` draws from at ``step``."""
        return (rank + step // self.config.rotate_every) % world_size

    def global_strata(self, batch: int, *, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """``global`` stratification: the stratum (0 .. batch x world_size - 1) of each of this rank's samples."""
        positions = torch.arange(batch, dtype=torch.int64) * world_size + rank  # [B] place in the global batch
        return (positions + step // self.config.rotate_every) % (batch * world_size)

    def curriculum_floor(self, step: int) -> float:
        """The lower end ``lo`` of the quantile range at ``step`` (0 once the curriculum is over)."""
        cfg = self.config
        if cfg.curriculum == "none" or step >= cfg.curriculum_steps:
            return 0.0
        return (1.0 - cfg.curriculum_start_width) * (1.0 - step / cfg.curriculum_steps)

    def quantiles(self, batch: int, *, step: int, rank: int = 0, world_size: int = 1,
                  generator: Generators = None) -> torch.Tensor:
        """Quantiles ``u [B]`` (float64, in [0, 1)) after stratification and curriculum."""
        _check_position(batch, step, rank, world_size)
        u = _uniforms(batch, generator)  # [B]
        mode = self.config.stratification
        if mode == "global":
            strata = self.global_strata(batch, step=step, rank=rank, world_size=world_size).to(torch.float64)
            u = (strata + u) / (batch * world_size)
        elif mode == "rank":
            if generator is not None and not isinstance(generator, torch.Generator):
                raise ValueError("TimestepSampler: 'rank' stratification draws a permutation per rank: pass one "
                                 "generator, not one per sample")
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
               generator: Generators = None) -> torch.Tensor:
        """Noise levels ``s [batch]`` (float32, CPU) for this rank at this optimizer step."""
        u = self.quantiles(batch, step=step, rank=rank, world_size=world_size, generator=generator)
        return self.to_levels(u, image_seq_len=image_seq_len)


def _uniforms(batch: int, generator: Generators) -> torch.Tensor:
    """``[B]`` float64 uniforms in [0, 1): ``B`` from one generator, or one from each of ``B`` generators."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(batch, generator=generator, dtype=torch.float64)
    if len(generator) != batch:
        raise ValueError(f"TimestepSampler: {len(generator)} per-sample generators for a batch of {batch}")
    return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generator])


def _check_position(batch: int, step: int, rank: int, world_size: int) -> None:
    if batch < 1:
        raise ValueError(f"TimestepSampler: batch must be >= 1, got {batch}")
    if step < 0:
        raise ValueError(f"TimestepSampler: step must be >= 0, got {step}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"TimestepSampler: need 0 <= rank < world_size, got rank {rank} of {world_size}")
