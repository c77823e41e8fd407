"""The SFT stage's consistency (identity) loss: keep faces recognisable through an edit.

FireRed adds to the flow-matching loss a feature-space term on the model's clean estimate, with a weight that grows
with the noise level and switches off near pure noise (where the estimate is a blur that carries no identity)::

    x0_hat = x_t - sigma * v                      the flow convention x_t = (1 - s) x0 + s eps, v = eps - x0
    L_b    = mean_r [ 1 - cos( phi(T_r x0_hat_b), phi(T_r x_gt_b) ) ]     over the sample's face regions r
    loss   = mean_b w(sigma_b) * L_b,   w(sigma) = eta * sigma^2 if sigma < sigma_max else 0

``T_r`` is an alignment warp found on the GROUND TRUTH (``face_alignment.find_regions``) and applied identically to
both images with kornia's differentiable ``warp_affine``, so the comparison is between the same crop of each;
``phi`` is a frozen face-recognition network (``firered_train.model.face_features``). ``x0_hat`` is in pixels, i.e.
the VAE decode of the latent estimate (``firered_train.model.region_decode.decode_regions`` decodes only the face
tiles, with gradient). Pixels are in [-1, 1], which is what ArcFace-style networks take ((x - 127.5) / 127.5).

Choices where the report is silent: ``eta`` is not published (a setting); samples without a face contribute 0 and
still count in the batch mean, so the loss's scale does not jump with the share of faces in a batch; the ground
truth's features are computed without gradient (nothing trains through them); the warp, the features and the cosine
run in the feature network's dtype with autocast off, whatever the decode ran in. Samples at or above ``sigma_max``
are skipped before any warp or feature pass: their loss and gradient are exactly 0 and they build no graph.

``ConsistencyConfig`` is the config's ``consistency`` section (``firered_train.config.consistency_section``),
re-exported here as the loss's own settings; ``firered_train.loop.consistency_stage`` wires the loss into the
trainer.

Public API: ``ConsistencyConfig``, ``ConsistencyTerms``, ``consistency_loss``, ``consistency_weight``,
``x0_from_velocity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from torch import nn

from ..config.consistency_section import ConsistencyConfig

__all__ = ["ConsistencyConfig", "ConsistencyTerms", "consistency_loss", "consistency_weight", "x0_from_velocity"]


@dataclass(frozen=True)
class ConsistencyTerms:
    """The loss to add to the flow loss and what to log (detached)."""

    loss: torch.Tensor  # [] mean over samples of w(sigma_b) * L_b; a constant 0 without an active region
    per_sample: torch.Tensor  # [B] L_b before weighting (0 for skipped samples), detached
    weight: torch.Tensor  # [B] w(sigma_b)
    n_regions: int  # face regions that entered the loss


def x0_from_velocity(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The clean estimate ``x_t - sigma v``; ``sigma`` a float or ``[B]`` (broadcast over the other dims)."""
    s = torch.as_tensor(sigma, dtype=x_t.dtype, device=x_t.device)
    if s.ndim == 1:
        s = s.reshape(-1, *([1] * (x_t.ndim - 1)))  # [B] -> [B, 1, ...]
    return x_t - s * v


def consistency_weight(sigma: torch.Tensor, config: ConsistencyConfig) -> torch.Tensor:
    """``[B]`` float64: ``eta * sigma^2`` below ``sigma_max``, exactly 0 at and above it."""
    active = sigma.detach() < config.sigma_max  # in sigma's own dtype: float32 0.9 is not "below" 0.9
    s = sigma.detach().to(torch.float64)
    return torch.where(active, config.eta * s**2, torch.zeros_like(s))


def _aligned(image: torch.Tensor, matrices: torch.Tensor, crop: int) -> torch.Tensor:
    """``[R, C, crop, crop]``: ``image [C, H, W]`` warped by each of ``matrices [R, 2, 3]``."""
    batch = image.unsqueeze(0).expand(matrices.shape[0], -1, -1, -1)  # [R, C, H, W]
    return warp_affine(batch, matrices.to(image.dtype), dsize=(crop, crop), align_corners=True)


def _sample_loss(x0_hat: torch.Tensor, gt: torch.Tensor, matrices: torch.Tensor, features: nn.Module,
                 crop: int) -> torch.Tensor:
    """``[]``: mean over regions of 1 - cos(phi(T x0_hat), phi(T gt)) for one sample, in the feature network's dtype
    with autocast off (bfloat16 resolves 1 - cos only to ~4e-3: nearby embeddings would all give 0)."""
    param = next(features.parameters(), None)
    dtype = x0_hat.dtype if param is None else param.dtype
    with torch.autocast(x0_hat.device.type, enabled=False):
        with torch.no_grad():
            target = features(_aligned(gt.to(dtype), matrices, crop))  # [R, D]
        estimate = features(_aligned(x0_hat.to(dtype), matrices, crop))  # [R, D]
        return (1.0 - F.cosine_similarity(estimate, target.to(estimate.dtype), dim=-1)).mean()


def consistency_loss(x0_hat_pixels: torch.Tensor | Sequence[torch.Tensor],
                     gt_pixels: torch.Tensor | Sequence[torch.Tensor], regions: Sequence[Sequence[torch.Tensor]],
                     features: nn.Module, sigma: torch.Tensor, config: ConsistencyConfig) -> ConsistencyTerms:
    """The module docstring's loss for a batch.

    ``x0_hat_pixels`` / ``gt_pixels``: ``[B, C, H, W]`` or ``B`` tensors ``[C, H_b, W_b]`` (e.g. decoded crops) in
    [-1, 1]; ``regions[b]``: the ``[2, 3]`` alignment transforms of sample ``b`` in the coordinates of its pixels
    (``face_alignment.shift_alignment`` moves them into a crop); ``sigma [B]``: the samples' noise levels.
    """
    n = len(regions)
    if len(x0_hat_pixels) != n or len(gt_pixels) != n or sigma.shape != (n,):
        raise ValueError(f"x0_hat_pixels, gt_pixels, regions and sigma must describe the same {n} samples, got "
                         f"{len(x0_hat_pixels)}, {len(gt_pixels)}, {n} and sigma shape {tuple(sigma.shape)}")
    weight = consistency_weight(sigma, config)
    per_sample = torch.zeros(n, dtype=torch.float64)
    total, n_regions = None, 0
    for b in range(n):
        if weight[b] == 0 or not regions[b]:
            continue  # no warp, no feature pass: exactly 0 and no graph
        matrices = torch.stack([torch.as_tensor(m) for m in regions[b]]).to(x0_hat_pixels[b].device)  # [R, 2, 3]
        term = _sample_loss(x0_hat_pixels[b], gt_pixels[b], matrices, features, config.crop)
        per_sample[b] = term.detach().to(torch.float64).cpu()
        weighted = term * weight[b].to(term.dtype)
        total = weighted if total is None else total + weighted
        n_regions += len(regions[b])
    if total is None:
        reference = x0_hat_pixels[0] if n else sigma
        loss = torch.zeros((), dtype=reference.dtype, device=reference.device)
    else:
        loss = total / n
    return ConsistencyTerms(loss=loss, per_sample=per_sample, weight=weight, n_regions=n_regions)
