"""The consistency loss of one step, from the transformer's tokens: what the trainer adds to the flow loss.

::

    x0_hat tokens = x_t - s v                                      (objectives.x0_from_velocity)
    x0_hat latents [B, C, h, w] = unpack(tokens)
    box_b = the target pixels the sample's alignment warps read    (objectives.face_alignment.sampled_box)
    estimate_b = decode_regions(vae, x0_hat latents, box_b)        with gradient, only the box's latent tiles
    truth_b    = decode_regions(vae, target latents, box_b)        without gradient
    loss       = consistency_loss(estimate, truth, regions moved into each box, features, s)

Samples at or above ``sigma_max``, or without a face, are not decoded at all. ``regions[b]`` are the ``[2, 3]``
alignment transforms of sample ``b`` in full-image pixels, found on the target image (``find_regions``). The result
equals the loss on fully decoded images up to float rounding, because ``decode_regions`` is exact and the box covers
every pixel the warps read (checked in tests/train/test_train_consistency.py).

Public API: ``consistency_terms``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from firered_core.latents import unpack_latents
from firered_core.vae import FireRedVAE

from ..model.region_decode import decode_regions
from ..objectives.consistency import ConsistencyConfig, ConsistencyTerms, consistency_loss, consistency_weight
from ..objectives.consistency import x0_from_velocity
from ..objectives.face_alignment import sampled_box, shift_alignment

__all__ = ["consistency_terms"]


def consistency_terms(vae: FireRedVAE, features: nn.Module, x_t: torch.Tensor, v: torch.Tensor, s: torch.Tensor,
                      target: torch.Tensor, regions: Sequence[Sequence[torch.Tensor]], config: ConsistencyConfig, *,
                      patch: int) -> ConsistencyTerms:
    """The module docstring's loss: ``x_t``, ``v`` target tokens ``[B, N, C*p*p]``, ``s [B]``, ``target [B, C, h, w]``
    normalised latents, ``regions[b]`` full-image ``[2, 3]`` transforms."""
    f = vae.spatial_compression
    height, width = target.shape[-2] * f, target.shape[-1] * f
    active = (consistency_weight(s, config) > 0).tolist()
    boxes = [sampled_box(regions[b], config.crop, height, width) if active[b] and regions[b] else None
             for b in range(len(regions))]
    n, empty = len(regions), target.new_zeros(0)
    if all(box is None for box in boxes):
        return consistency_loss([empty] * n, [empty] * n, [[] for _ in range(n)], features, s, config)
    x0_hat = unpack_latents(x0_from_velocity(x_t, v, s), height, width, f, patch)  # [B, C, h, w]
    estimate = decode_regions(vae, x0_hat, boxes)
    with torch.no_grad():
        truth = decode_regions(vae, target, boxes)
    moved = [[shift_alignment(torch.as_tensor(m), crop.origin) for m in regions[b]] if (crop := estimate[b]) else []
             for b in range(n)]
    return consistency_loss([c.pixels if c else empty for c in estimate], [c.pixels if c else empty for c in truth],
                            moved, features, s, config)
