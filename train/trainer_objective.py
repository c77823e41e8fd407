"""The objective as the trainer uses it: per-sample noise levels, the per-sample loss, and the EMA.

Noise levels (``objective.timesteps``). Every sample draws a quantile ``u`` in (0, 1) from its own generator,
seeded by (seed, micro-step, sample), and turns it into the noise level ``s``:

1. stratification (``stratified``): the micro-step's global batch of ``G = per-rank batch x world size`` samples
   is split into ``G`` equal quantile strata and every sample draws inside its own stratum, so each global batch
   covers all noise levels and no two samples duplicate a level. The stratum of a sample is its position in the
   global batch (rank ``r``'s ``i``-th sample is position ``i x world + r``, the order in which the bucket sampler
   deals a bucket out to ranks), rotated by one every ``rotate_every`` steps. The report phrases this as "each
   rank draws from its own sub-interval"; dealing strata by global position keeps that aim and additionally
   makes the draw independent of how the global batch is split across processes, so 1 and N processes train the
   same model (tested);
2. curriculum (``high_noise_first``): during the first ``curriculum_steps`` steps only the upper part of the
   quantile range is used, ``[lo, 1)`` with ``lo`` falling linearly from 0.5 to 0 (high noise first, then all);
3. distribution: ``uniform`` (``s = u``) or ``logit_normal`` (``s = sigmoid(mean + std * Phi^-1(u))``);
4. shift: ``resolution`` applies the inference schedule's exponential shift ``e^mu / (e^mu + 1/s - 1)`` with ``mu``
   from the target's token count (``firered_core.schedule.compute_mu``), so training sees the noise levels
   sampling spends its steps on; ``static`` the fixed ``shift s / (1 + (shift - 1) s)``; ``none`` nothing.

Loss (``objective.outlier_threshold``): per-sample mean of ``(v - (eps - x0))^2`` over the target tokens, leaving
out elements whose absolute error exceeds the threshold (FireRed's released trainer: 50), as that trainer does.

EMA (``ema``): a float32 shadow of every trained parameter, ``shadow = d shadow + (1 - d) param`` every
``update_every`` steps, a plain copy before ``start_step``. Its ``state_dict`` is the shadow by parameter name, so
checkpoints resume it exactly and ``ema_weights()`` feeds the EMA exports.

Public API: ``Objective``, ``TrainEMA``, ``quantile_to_level``, ``stratified_quantiles``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from firered_core.config import SchedulerConfig
from firered_core.schedule import compute_mu

from .batch import TrainBatch
from .config import TimestepConfig, TrainConfig
from .distributed import sample_generator

__all__ = ["Objective", "TrainEMA", "quantile_to_level", "stratified_quantiles"]

_U_EPS = 1e-5  # quantiles stay inside (0, 1): s = 0 would make the shift divide by zero


def stratified_quantiles(uniforms: torch.Tensor, positions: Sequence[int], batch: int, world: int, step: int,
                         cfg: TimestepConfig) -> torch.Tensor:
    """Uniform draws ``[B]`` moved into the strata of their global positions (item 1 of the module docstring)."""
    if not cfg.stratified:
        return uniforms
    strata = batch * world
    rotation = step // cfg.rotate_every
    k = torch.tensor([(p + rotation) % strata for p in positions], dtype=uniforms.dtype)
    return (k + uniforms) / strata


def quantile_to_level(u: torch.Tensor, cfg: TimestepConfig, step: int, image_tokens: int,
                      scheduler: SchedulerConfig) -> torch.Tensor:
    """Quantiles ``[B]`` in (0, 1) -> noise levels ``s`` (items 2-4 of the module docstring)."""
    if cfg.curriculum == "high_noise_first" and step < cfg.curriculum_steps:
        low = 0.5 * (1.0 - step / cfg.curriculum_steps)
        u = low + (1.0 - low) * u
    u = u.clamp(_U_EPS, 1.0 - _U_EPS).double()
    if cfg.mode == "logit_normal":
        s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.special.ndtri(u))
    else:
        s = u
    if cfg.shift == "resolution":
        e_mu = math.exp(compute_mu(image_tokens, scheduler))
        s = e_mu / (e_mu + 1.0 / s - 1.0)
    elif cfg.shift == "static":
        s = cfg.static_shift * s / (1.0 + (cfg.static_shift - 1.0) * s)
    return s.float()


class TrainEMA:
    """Float32 shadow of named parameters (see the module docstring)."""

    def __init__(self, named: Mapping[str, nn.Parameter], decay: float, update_every: int = 1,
                 start_step: int = 0) -> None:
        self.params = dict(named)
        self.decay, self.update_every, self.start_step = decay, update_every, start_step
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step`` (1-based)."""
        if step % self.update_every:
            return
        for name, p in self.params.items():
            if step <= self.start_step:
                self.shadow[name].copy_(p.detach())
            else:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise ValueError("EMA state does not match the trained parameters (another finetune/LoRA setting?)")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)


class Objective:
    """Timesteps, loss and EMA of one run (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, named_params: Mapping[str, nn.Parameter], scheduler: SchedulerConfig, *,
                 patch: int, rank: int, world_size: int) -> None:
        self.cfg, self.scheduler, self.patch, self.rank, self.world = cfg, scheduler, patch, rank, world_size
        self.ema = (TrainEMA(named_params, cfg.ema.decay, cfg.ema.update_every, cfg.ema.start_step)
                    if cfg.ema.enabled else None)

    def timesteps(self, batch: TrainBatch, micro_step: int, step: int) -> torch.Tensor:
        """Noise levels ``s [B]`` of ``batch`` at ``micro_step`` (optimizer step ``step`` for curriculum/rotation)."""
        tc = self.cfg.objective.timesteps
        u = torch.stack([torch.rand((), generator=sample_generator(self.cfg.seed, micro_step, i, "timestep"))
                         for i in batch.indices])
        positions = [i * self.world + self.rank for i in range(batch.size)]
        u = stratified_quantiles(u, positions, batch.size, self.world, step, tc)
        tokens = batch.target.shape[-2] * batch.target.shape[-1] // self.patch**2  # target tokens
        return quantile_to_level(u, tc, step, tokens, self.scheduler)

    def loss_fn(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample MSE ``[B]`` with the outlier mask."""
        sq = (pred - target).pow(2).flatten(1)  # [B, N*D]
        threshold = self.cfg.objective.outlier_threshold
        if threshold is None:
            return sq.mean(1)
        keep = (sq <= threshold * threshold).to(sq.dtype)
        return (sq * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def ema_update(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(step)

    def ema_weights(self) -> dict[str, torch.Tensor] | None:
        """The EMA shadow by parameter name (None without EMA), for exports."""
        return None if self.ema is None else dict(self.ema.shadow)
