"""The training objective: rectified-flow loss, noise-level sampling and the weight EMA.

| module | job |
|---|---|
| ``flow.py`` | ``x_s = (1 - s) x0 + s eps``, target ``v = eps - x0`` (or to ``x0`` from another start), masked MSE |
| ``timesteps.py`` | noise levels: uniform / logit-normal, shift, global or rank strata, rotation, curriculum, bins |
| ``dpo.py`` | Diffusion-DPO with FireRed's asymmetric winner weight and SFT anchor, and what to log of it |
| ``nft.py`` | DiffusionNFT: per-prompt optimality from rewards, the implicit-policy loss, the old policy's decay |
| ``old_policy.py`` | the NFT old policy: a float32 copy of the trained weights on the decay schedule, swappable in |
| ``consistency.py`` | the SFT identity loss: ``eta sigma^2 (1 - cos)`` of face features of ``x0_hat`` and the target |
| ``face_alignment.py`` | face landmarks -> 2x3 similarity onto ArcFace's five-point template; regions on the target |
| ``ema.py`` | float32 moving average of trained weights: warm-up, validation swap, exact state |

::

    from firered_train.objectives import TimestepSampler, flow_matching_loss, flow_target, noisy_sample

    sampler = TimestepSampler(cfg.objective.timesteps, scheduler)
    gen = sampler.generators(seed, step, rank, sample_indices)
    s = sampler.sample(B, step=step, rank=rank, world_size=world, image_seq_len=n_tok, generator=gen)   # [B]
    out = flow_matching_loss(model(noisy_sample(x0, eps, s), s, ...), flow_target(x0, eps), token_mask=mask,
                             outlier_threshold=cfg.objective.outlier_threshold,
                             denominator=cfg.objective.denominator)

The configs are sections of the training config (``config.sections``: ``TimestepConfig``, ``ObjectiveConfig``,
``EMAConfig``). Each module's docstring gives the formulas and the choices made where the report is silent.
"""

from .consistency import ConsistencyConfig, ConsistencyTerms, consistency_loss, consistency_weight, x0_from_velocity
from .dpo import DPOConfig, DPOTerms, dpo_loss
from .ema import EMA
from .nft import NFT_PRESETS, NFTConfig, NFTTerms, group_advantages, nft_loss, old_policy_decay, update_old_policy
from .old_policy import OldPolicy
from .flow import (FIRERED_OUTLIER_THRESHOLD, Denominator, LossOutput, Reduction, clean_estimate, corrected_target,
                   flow_matching_loss, flow_target, noisy_sample, per_sample_flow_loss)
from .timesteps import Generators, TimestepConfig, TimestepSampler, loss_bins, timestep_generator, timestep_generators

__all__ = [
    "ConsistencyConfig", "ConsistencyTerms", "consistency_loss", "consistency_weight", "x0_from_velocity",
    "DPOConfig", "DPOTerms", "EMA", "FIRERED_OUTLIER_THRESHOLD", "Denominator", "Generators", "LossOutput",
    "NFTConfig", "NFTTerms", "NFT_PRESETS", "OldPolicy", "Reduction", "TimestepConfig", "TimestepSampler", "clean_estimate",
    "corrected_target", "dpo_loss", "flow_matching_loss", "flow_target", "group_advantages", "loss_bins", "nft_loss",
    "noisy_sample", "old_policy_decay", "per_sample_flow_loss", "timestep_generator", "timestep_generators",
    "update_old_policy",
]
