"""DiffusionNFT (Zheng et al. 2025, NVlabs/DiffusionNFT): reinforcement on the forward process, FireRed's last stage.

No likelihoods and no sampler in the loss. The old policy samples clean images (any ODE solver, no CFG:
``firered_train.loop.policy_samples``), a reward scores them, and the trained model learns from plain noisy
versions of those images through two *implicit* policies built from the old and the current velocity.

Rewards -> optimality ``r`` (``group_advantages``), per prompt group of ``K`` samples, ``c = adv_clip``::

    A = (R - mean_K R) / (std_K R + std_eps)              # population std, as the reference's stat tracker
    r = clip( clip(A, -c, c) / (2c) + 0.5, 0, 1 )         # in [0, 1]; c = 5 gives the report's clip(A)/10 + 0.5

A group whose rewards are all equal (zero std) carries no preference: ``A = 0`` and ``r = 0.5`` for each sample
(the reference reaches the same through its ``+ 1e-4``; here it is explicit, so ``std_eps = 0`` is allowed).

The loss (``nft_loss``) on ``x_t = (1 - t) x0 + t eps`` for a sampled clean ``x0``, ``v = eps - x0``, with
``b = beta``::

    v+ = (1 - b) v_old + b v_theta                        # implicit positive policy
    v- = (1 + b) v_old - b v_theta                        # implicit negative policy (mirror of v+ about v_old)
    x0± = x_t - t v±                                      # the clean estimates, where the loss is measured
    w±  = max( mean |x0± - x0|, 1e-5 )                    # per sample, detached, in float64: the adaptive weight
    L±  = mean (x0± - x0)^2 / w±                          # per sample, mean over every element of the sample
    policy = (c / b) * mean_B [ r L+ + (1 - r) L- ]
    kl     = mean_B mean (v_theta - v_ref)^2
    loss   = policy + kl_weight * kl

Sources and choices. The report (section 2 of the brief) gives the implicit policies, ``r``, and the velocity-space
loss ``r ||v+ - v||^2 + (1 - r) ||v- - v||^2``; it says the reference code works in x0 space with the detached
adaptive weight, a ``5 / b`` scale and ``1e-4 ||v_theta - v_ref||^2``. Read from the reference trainer
(``scripts/train_nft_sd3.py``): the weight is the mean absolute x0 error of *each sample* (over all its elements,
computed in float64, clipped below at 1e-5); each ``L±`` is the mean over the sample's elements, the batch mean is
taken last; the ``5`` is the advantage clip ``adv_clip_max`` (so the scale here is ``adv_clip / beta``, 5 / b at the
default), and the KL term is a plain per-element mean. All of that is reproduced. In exact arithmetic
``x0± - x0 = t (v - v±)``, so without the adaptive weight (``adaptive_weight=False``) ``L± = t^2 mean (v± - v)^2``:
the velocity-space loss of the report times ``t^2``. The loss uses ``x_t`` itself (the tensor the model saw, with
its rounding), as the reference does; ``eps`` only feeds the logged plain flow-matching error.

Gradients. With ``r = 1`` and ``b = 1``, ``v+ = v_theta`` and the policy term is an (adaptively weighted)
flow-matching loss on the sample: it pulls ``v_theta`` towards ``v``. With ``r = 0`` only ``v-`` counts, and
lowering its error moves ``v_theta`` to the far side of ``v_old``: away from ``v``.

The old policy (``old_policy_decay``, ``update_old_policy``) is a second copy of the trained weights (a second LoRA
adapter), moved towards the trained weights after each sampling round: ``old <- d old + (1 - d) theta`` with
``d = min(rate * max(0, step - flat), cap)``. ``d = 0`` (early steps) makes the old policy the current one, i.e.
fully on-policy sampling; a growing ``d`` slows it down for stability.

Settings (``NFTConfig``; ``NFT_PRESETS``): the reference's defaults are ``b = 1``, decay 0.001 / 0 / 0.5; its OCR
(and, for ``b``, mixed-reward) runs use ``b = 0.1`` and decay 0.0075 / 75 / 0.999. FireRed's report gives 500 steps
and none of these numbers.

Public API: ``NFTConfig``, ``NFT_PRESETS``, ``NFTTerms``, ``group_advantages``, ``nft_loss``, ``old_policy_decay``,
``update_old_policy``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..config.nft_section import NFTConfig

__all__ = ["NFTConfig", "NFT_PRESETS", "NFTTerms", "group_advantages", "nft_loss", "old_policy_decay",
           "update_old_policy"]

WEIGHT_FLOOR = 1e-5  # the reference's lower clip of the adaptive weight (a perfect estimate must not divide by 0)


NFT_PRESETS: dict[str, NFTConfig] = {
    "default": NFTConfig(),  # the reference's GenEval / PickScore / HPSv2 runs
    "ocr": NFTConfig(beta=0.1, decay_rate=0.0075, decay_flat=75, decay_cap=0.999),  # the reference's OCR run
    "multi_reward": NFTConfig(beta=0.1),  # the reference's PickScore + HPSv2 + CLIPScore run
}


# ----------------------------------------------------------------------------------- rewards -> r


def group_advantages(rewards: torch.Tensor, config: NFTConfig = NFTConfig()) -> torch.Tensor:
    """Optimality ``r [G, K]`` in [0, 1] (float32) of rewards ``[G, K]``: ``K`` samples of each of ``G`` prompts.

    Normalised within each row (see the module docstring); a row with zero std gives 0.5 everywhere.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 1 or rewards.shape[0] < 1:
        raise ValueError(f"group_advantages: rewards must be [G prompts, K samples], got {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("group_advantages: rewards contain NaN or inf (a failed reward call? score it again)")
    reward = rewards.detach().to(torch.float64)
    centred = reward - reward.mean(dim=1, keepdim=True)  # [G, K]
    std = reward.std(dim=1, unbiased=False, keepdim=True)  # [G, 1], population std
    advantage = torch.where(std > 0, centred / (std + config.std_eps), torch.zeros_like(centred))
    c = config.adv_clip
    return (advantage.clamp(-c, c) / (2 * c) + 0.5).clamp(0, 1).float()


# ----------------------------------------------------------------------------------- the loss


@dataclass(frozen=True)
class NFTTerms:
    """A batch's NFT loss and what to log; every field but ``loss`` is detached, float32 ``[]``."""

    loss: torch.Tensor  # differentiable: policy + kl_weight * kl
    policy: torch.Tensor  # (c / b) * mean_B [r L+ + (1 - r) L-]
    positive: torch.Tensor  # mean_B L+ (not weighted by r)
    negative: torch.Tensor  # mean_B L- (not weighted by 1 - r)
    kl: torch.Tensor  # mean (v_theta - v_ref)^2, before kl_weight
    mean_r: torch.Tensor  # mean optimality of the batch (0.5 for a balanced batch)
    old_deviation: torch.Tensor  # mean (v_theta - v_old)^2: how far the trained policy has moved from the old one
    flow_mse: torch.Tensor  # mean (v_theta - (eps - x0))^2: the plain flow-matching error on the sampled images


def _check_inputs(named: dict[str, torch.Tensor], t: torch.Tensor, r: torch.Tensor) -> None:
    shapes = {name: tuple(x.shape) for name, x in named.items()}
    if len(set(shapes.values())) != 1 or named["x0"].ndim < 2 or named["x0"].shape[0] == 0:
        raise ValueError(f"nft_loss: expected v_theta, v_old, v_ref, x_t, x0, eps of one shape [B, ...], got {shapes}")
    batch = named["x0"].shape[0]
    for name, x in (("t", t), ("r", r)):
        if tuple(x.shape) != (batch,):
            raise ValueError(f"nft_loss: {name} must be per sample, shape ({batch},), got {tuple(x.shape)}")
    if not bool(((r >= 0) & (r <= 1)).all()):
        raise ValueError(f"nft_loss: r must lie in [0, 1] (group_advantages gives it), got {r.tolist()}")


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim)))  # [B, ...] -> [B]


def _x0_loss(x0_hat: torch.Tensor, x0: torch.Tensor, adaptive: bool) -> torch.Tensor:
    """``mean (x0_hat - x0)^2 / w`` per sample ``[B]``, ``w`` the detached mean absolute error (or 1)."""
    error = x0_hat - x0
    loss = _per_sample_mean(error**2)
    if not adaptive:
        return loss
    with torch.no_grad():
        weight = _per_sample_mean(error.detach().double().abs()).clamp(min=WEIGHT_FLOOR)
    return loss / weight.to(loss.dtype)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, v_ref: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             x0: torch.Tensor, eps: torch.Tensor, r: torch.Tensor, config: NFTConfig = NFTConfig()) -> NFTTerms:
    """The DiffusionNFT loss of one batch (see the module docstring), computed in float32.

    ``v_theta`` (differentiable), ``v_old``, ``v_ref`` (used detached): velocities of the trained, old and
    reference models at ``x_t = (1 - t) x0 + t eps``; all ``[B, ...]`` like ``x0``; ``t [B]`` the noise levels,
    ``r [B]`` the optimality of each sample (``group_advantages``).
    """
    _check_inputs({"v_theta": v_theta, "v_old": v_old, "v_ref": v_ref, "x_t": x_t, "x0": x0, "eps": eps}, t, r)
    v_theta = v_theta.float()
    v_old, v_ref = v_old.detach().float(), v_ref.detach().float()
    x_t, x0, eps, r = x_t.detach().float(), x0.detach().float(), eps.detach().float(), r.detach().float()
    t = t.detach().float().reshape(-1, *([1] * (x0.ndim - 1)))  # [B, 1, ...]
    b = config.beta
    v_pos = (1 - b) * v_old + b * v_theta
    v_neg = (1 + b) * v_old - b * v_theta
    loss_pos = _x0_loss(x_t - t * v_pos, x0, config.adaptive_weight)  # [B]
    loss_neg = _x0_loss(x_t - t * v_neg, x0, config.adaptive_weight)  # [B]
    policy = (config.adv_clip / b) * (r * loss_pos + (1 - r) * loss_neg).mean()
    kl = _per_sample_mean((v_theta - v_ref) ** 2).mean()
    loss = policy + config.kl_weight * kl
    with torch.no_grad():
        return NFTTerms(loss=loss, policy=policy.detach(), positive=loss_pos.mean().detach(),
                        negative=loss_neg.mean().detach(), kl=kl.detach(), mean_r=r.mean(),
                        old_deviation=((v_theta - v_old) ** 2).mean(), flow_mse=((v_theta - (eps - x0)) ** 2).mean())


# ----------------------------------------------------------------------------------- the old policy


def old_policy_decay(step: int, config: NFTConfig = NFTConfig()) -> float:
    """``d = min(rate * max(0, step - flat), cap)`` after ``step`` optimizer steps (see ``NFTConfig``)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"old_policy_decay: step must be an integer >= 0 (optimizer steps done), got {step!r}")
    return min(config.decay_rate * max(0, step - config.decay_flat), config.decay_cap)


@torch.no_grad()
def update_old_policy(old_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """``old <- d old + (1 - d) theta`` in place, pairwise in order, computed in float32 (as ``EMA.update``).

    ``old_params`` are the old adapter's tensors, ``params`` the trained adapter's, in matching order. The result
    is rounded once to the old tensor's dtype: keep the old adapter in float32, or bf16 rounding swallows updates
    smaller than its resolution (at ``d = 0.999`` most of them).
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
        raise ValueError(f"update_old_policy: decay must lie in [0, 1], got {decay!r}")
    olds, news = list(old_params), list(params)
    if len(olds) != len(news):
        raise ValueError(f"update_old_policy: {len(olds)} old tensors but {len(news)} trained ones (adapters of "
                         "different layers or ranks?)")
    for i, (old, new) in enumerate(zip(olds, news)):
        if old.shape != new.shape:
            raise ValueError(f"update_old_policy: tensor {i} has shape {tuple(old.shape)} in the old policy and "
                             f"{tuple(new.shape)} in the trained one")
    for old, new in zip(olds, news):
        mixed = old.detach().float().lerp(new.detach().to(device=old.device, dtype=torch.float32), 1.0 - decay)
        old.copy_(mixed)
