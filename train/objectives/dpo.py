"""Diffusion-DPO with asymmetric gradients (FireRed's "positive sample reinforcement").

A preference pair shares its sources and instruction and has a winner ``w`` and a loser ``l``. Both are noised with
the same noise and the same level (``firered_train.loop.pair_step.pair_losses``), and the per-sample flow-matching
losses ``L [B]`` (mean squared velocity error) of the trained model ``theta`` and of a frozen reference give::

    margin_b = beta * [ (L_l(theta) - L_l(ref)) - omega * (L_w(theta) - L_w(ref)) ]
    loss     = mean_b( -log sigmoid(margin_b) + lambda * L_w(theta) )

With ``omega = 1, lambda = 0`` this is Diffusion-DPO (Wallace et al. 2023): lower the winner's loss relative to the
reference more than the loser's. Under that objective both losses tend to *rise* together ("double degradation":
the margin grows because the loser gets worse faster, not because the winner gets better). FireRed's fix is
asymmetric: ``omega > 1`` gives the winner term a larger gradient, and ``lambda * L_w`` is a plain SFT anchor that
keeps pulling the winner's loss down. The report prints ``- lambda * L_w``, which would *reward* a larger winner loss
and contradict its own motivation; the sign is treated as a typo here.

The gradients, with ``p_b = sigmoid(-margin_b)`` (how wrong the pair still is)::

    d loss / d L_w(theta)_b = ( omega * beta * p_b + lambda ) / B
    d loss / d L_l(theta)_b = -beta * p_b / B

``-log sigmoid`` is ``F.logsigmoid``, finite for any margin (beta in the thousands makes margins of +-100 common).

What to watch (``DPOTerms``): the winner's and loser's losses and their differences to the reference. A healthy run
has ``diff_w < 0``; ``diff_w > 0`` together with ``diff_l > 0`` is the double degradation. ``reward_margin`` is the
Diffusion-DPO implicit reward margin ``beta * [(L_l - L_l_ref) - (L_w - L_w_ref)]`` (without ``omega``, so runs
with different ``omega`` compare), ``accuracy`` the share of pairs where it is positive.

Public API: ``DPOConfig``, ``DPOTerms``, ``dpo_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config.dpo_section import DPOConfig  # the config's ``dpo`` section, re-exported here

__all__ = ["DPOConfig", "DPOTerms", "dpo_loss"]


@dataclass(frozen=True)
class DPOTerms:
    """A batch of pairs' DPO loss and what to log; every field but ``loss`` is detached, float32 ``[]``."""

    loss: torch.Tensor  # differentiable: the mean over pairs of -log sigmoid(margin) + lambda * L_w
    loss_w: torch.Tensor  # mean L_w(theta): should fall
    loss_l: torch.Tensor  # mean L_l(theta)
    diff_w: torch.Tensor  # mean L_w(theta) - L_w(ref): < 0 is good; > 0 with diff_l > 0 is double degradation
    diff_l: torch.Tensor  # mean L_l(theta) - L_l(ref)
    reward_margin: torch.Tensor  # mean beta * [(L_l - L_l_ref) - (L_w - L_w_ref)] (omega left out)
    accuracy: torch.Tensor  # share of pairs whose reward margin is > 0


def _check(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor) -> None:
    named = {"model_w": model_w, "model_l": model_l, "ref_w": ref_w, "ref_l": ref_l}
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) != 1 or model_w.ndim != 1 or model_w.shape[0] == 0:
        raise ValueError(f"dpo_loss: expected four per-sample losses of one shape [B], B > 0, got {shapes}")


def dpo_loss(model_w: torch.Tensor, model_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             config: DPOConfig = DPOConfig()) -> DPOTerms:
    """The asymmetric DPO loss of per-sample flow losses ``[B]`` (see the module docstring).

    ``model_*``: the trained model's losses (differentiable); ``ref_*``: the reference's (used detached).
    """
    _check(model_w, model_l, ref_w, ref_l)
    model_w, model_l = model_w.float(), model_l.float()
    diff_w = model_w - ref_w.detach().float()  # [B]
    diff_l = model_l - ref_l.detach().float()  # [B]
    margin = config.beta * (diff_l - config.omega * diff_w)  # [B]
    loss = (-F.logsigmoid(margin) + config.sft_weight * model_w).mean()
    with torch.no_grad():
        reward = config.beta * (diff_l - diff_w)  # [B]
        return DPOTerms(loss=loss, loss_w=model_w.mean().detach(), loss_l=model_l.mean().detach(),
                        diff_w=diff_w.mean().detach(), diff_l=diff_l.mean().detach(), reward_margin=reward.mean(),
                        accuracy=(reward > 0).float().mean())
