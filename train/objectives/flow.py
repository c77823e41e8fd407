"""The rectified-flow training objective: noisy inputs, velocity targets and the masked MSE.

Convention (the project's, see ``docs/ARCHITECTURE.md``): a clean latent ``x0``, Gaussian noise ``eps`` and a noise
level ``s`` in [0, 1] give the model input ``x_s = (1 - s) x0 + s eps`` (s = 1 is pure noise); the model predicts the
velocity ``v = eps - x0``, which is constant along the straight path, so one MSE serves every ``s``::

    x_t = noisy_sample(x0, eps, s)                       # [B, N, D]; s [B]
    pred = model(x_t, s, ...)                            # [B, N, D], target tokens only
    out = flow_matching_loss(pred, flow_target(x0, eps), token_mask=mask)
    out.loss.backward()                                  # out.per_sample [B] feeds "loss per timestep bin"

The outlier mask (FireRed's released trainer). Elements whose error ``|pred - target|`` exceeds
``outlier_threshold`` (50 there) are left out of the loss, so one wild element (a rare blown-up activation, a
corrupt latent) cannot dominate a step's gradient. The released code multiplies the squared error by the mask and
then takes the plain mean over *all* elements, i.e. a masked element counts as a zero error and still counts in the
denominator. ``denominator="all"`` (the default) reproduces that; ``denominator="kept"`` divides by the elements
that were kept instead (a true mean of the remaining errors, the same gradient direction, a slightly larger scale
when something was masked). A NaN error is not "greater than" the threshold: it is kept and makes the loss NaN, so a
diverging run is noticed rather than silently masked. Masked elements get an exactly zero gradient.

The token mask. ``token_mask [B, N]`` (1 / True = a real target token, 0 = padding) removes padding tokens from both
the numerator and the denominator, so a sample's loss is the mean over its own tokens only.

Token weights. ``token_weight [B, N]`` (>= 0) multiplies each token's squared errors in the numerator only: a token
of weight 4 counts like four tokens' errors while the denominator still counts it once, so a sample whose tokens
all weigh 1 has exactly the unweighted loss (the edit-region weighting of ``firered_train.loop.step``).

Reductions over the batch (after optional per-sample ``weighting [B]``, e.g. an SD3-style loss weighting or a
DPO/NFT coefficient; FireRed uses none with logit-normal sampling):

- ``"mean"``: ``sum_b w_b L_b / B``: every sample counts equally (FireRed's, since its batches share one shape);
- ``"token_mean"``: weighted squared errors summed over the batch / the batch's counted elements: every token
  counts equally when samples have different numbers of valid tokens;
- ``"sum"``: ``sum_b w_b L_b``.

Everything is computed in float32 whatever the prediction's dtype: bf16 squared errors lose too many bits.

``per_sample_flow_loss`` gives the per-sample losses ``L(theta) [B]`` alone, differentiable: the DPO objective
compares ``L_w`` and ``L_l`` of winner and loser under the trained and the reference model.

Public API: ``noisy_sample``, ``flow_target``, ``corrected_target``, ``clean_estimate``, ``per_sample_flow_loss``,
``flow_matching_loss``, ``LossOutput``, ``Denominator``, ``Reduction``, ``FIRERED_OUTLIER_THRESHOLD``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["FIRERED_OUTLIER_THRESHOLD", "Denominator", "LossOutput", "Reduction", "clean_estimate",
           "corrected_target", "flow_matching_loss", "flow_target", "noisy_sample", "per_sample_flow_loss"]

Denominator = Literal["all", "kept"]
Reduction = Literal["mean", "token_mean", "sum"]

FIRERED_OUTLIER_THRESHOLD = 50.0  # the released trainer's value (|pred - target| > 50 is dropped)


# ---------------------------------------------------------------------------------------------------------------
# the straight path


def _levels_like(s: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """``s`` (a float, ``[]`` or ``[B]``) shaped ``[B, 1, ..., 1]`` to broadcast over ``x [B, ...]``.

    At least float32: bf16 keeps 8 significant bits, so rounding the levels to the latents' dtype would move each
    level by up to 0.4% before any arithmetic (0.123 -> 0.12305).
    """
    level = torch.as_tensor(s, device=x.device).to(torch.promote_types(x.dtype, torch.float32))
    if level.ndim == 0:
        return level
    if level.ndim != 1 or level.shape[0] != x.shape[0]:
        raise ValueError(f"noise level s must be a scalar or [B] with B = {x.shape[0]}, got {tuple(level.shape)}")
    return level.reshape(-1, *([1] * (x.ndim - 1)))


def noisy_sample(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """``x_s = (1 - s) x0 + s eps`` for clean ``x0 [B, ...]``, noise ``eps`` (same shape) and levels ``s [B]``.

    Computed in at least float32, returned in ``x0``'s dtype (one rounding, of the result only).
    """
    if x0.shape != eps.shape:
        raise ValueError(f"noisy_sample: x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} differ in shape")
    level = _levels_like(s, x0)
    return ((1 - level) * x0 + level * eps).to(x0.dtype)


def flow_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The velocity the model learns, ``v = eps - x0`` (d x_s / d s, the same at every ``s``)."""
    if x0.shape != eps.shape:
        raise ValueError(f"flow_target: x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} differ in shape")
    return eps - x0


def corrected_target(x0: torch.Tensor, eps: torch.Tensor, start: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """The velocity that leads from ``x_s = noisy_sample(start, eps, s)`` to ``x0`` in one step, ``(x_s - x0) / s``,
    written as ``(eps - x0) + (1 - s) / s * (start - x0)``: exactly ``flow_target`` when ``start`` is ``x0``.

    ``start`` is a clean estimate other than ``x0`` (the model's own, in rollout training), ``s [B]`` > 0.
    """
    if not x0.shape == eps.shape == start.shape:
        raise ValueError(f"corrected_target: x0 {tuple(x0.shape)}, eps {tuple(eps.shape)} and start "
                         f"{tuple(start.shape)} differ in shape")
    level = _levels_like(s, x0)
    if bool((level <= 0).any()):
        raise ValueError("corrected_target: every noise level must be > 0")
    return (flow_target(x0, eps) + (1 - level) / level * (start - x0)).to(x0.dtype)


def clean_estimate(x_s: torch.Tensor, v: torch.Tensor, s: torch.Tensor | float) -> torch.Tensor:
    """The clean sample implied by a velocity, ``x0_hat = x_s - s v`` (exact for the true ``v``), in ``x_s``'s dtype."""
    return (x_s - _levels_like(s, x_s) * v).to(x_s.dtype)


# ---------------------------------------------------------------------------------------------------------------
# the masked MSE


@dataclass(frozen=True)
class LossOutput:
    """A batch's loss: the scalar to backpropagate and what the metrics need."""

    loss: torch.Tensor  # [] float32, differentiable
    per_sample: torch.Tensor  # [B] float32, differentiable, unweighted (for per-timestep-bin metrics and DPO)
    n_masked: torch.Tensor  # [] int64, detached: counted elements dropped by the outlier mask (.item() to log)


@dataclass(frozen=True)
class _Sums:
    """Per-sample pieces of the masked MSE, before any division."""

    squared: torch.Tensor  # [B] sum of kept squared errors (differentiable)
    kept: torch.Tensor  # [B] int64, kept elements (inside the token mask, not outliers)
    counted: torch.Tensor  # [B] int64, elements inside the token mask


def _check_shapes(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"flow loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim < 2:
        raise ValueError(f"flow loss: expected [B, ...] with at least 2 dims, got {tuple(pred.shape)}")
    if token_mask is not None and (token_mask.ndim != 2 or token_mask.shape != pred.shape[:2]):
        raise ValueError(f"flow loss: token_mask must be [B, N] = {tuple(pred.shape[:2])} for a prediction "
                         f"[B, N, ...], got {tuple(token_mask.shape)}")


def _masked_sums(pred: torch.Tensor, target: torch.Tensor, token_mask: torch.Tensor | None,
                 outlier_threshold: float | None, token_weight: torch.Tensor | None = None) -> _Sums:
    _check_shapes(pred, target, token_mask)
    if token_weight is not None and tuple(token_weight.shape) != tuple(pred.shape[:2]):
        raise ValueError(f"flow loss: token_weight must be [B, N] = {tuple(pred.shape[:2])}, "
                         f"got {tuple(token_weight.shape)}")
    if outlier_threshold is not None and not outlier_threshold > 0:
        raise ValueError(f"flow loss: outlier_threshold must be > 0 or None, got {outlier_threshold!r}")
    diff = pred.float() - target.float()  # [B, N, D]
    counted = torch.ones_like(diff, dtype=torch.bool)
    if token_mask is not None:
        counted = counted & token_mask.to(device=diff.device, dtype=torch.bool).reshape(
            *token_mask.shape, *([1] * (diff.ndim - 2)))
    keep = counted
    if outlier_threshold is not None:
        # "not greater" rather than "less or equal": NaN compares False either way, and must stay in the loss
        keep = keep & ~(diff.abs() > outlier_threshold)
    # Zero the dropped errors *before* squaring: multiplying a squared inf by 0 would give NaN in the value and
    # in the gradient, where() on the error keeps both exactly 0.
    kept_diff = torch.where(keep, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    squared = kept_diff.square()
    if token_weight is not None:
        squared = squared * token_weight.to(device=diff.device, dtype=diff.dtype).reshape(
            *token_weight.shape, *([1] * (diff.ndim - 2)))
    return _Sums(squared=squared.flatten(1).sum(1),
                 kept=keep.flatten(1).sum(1), counted=counted.flatten(1).sum(1))


def _per_sample(sums: _Sums, denominator: Denominator) -> torch.Tensor:
    if denominator == "all":
        denom = sums.counted
    elif denominator == "kept":
        denom = sums.kept
    else:
        raise ValueError(f"flow loss: denominator must be 'all' or 'kept', got {denominator!r}")
    # a sample with nothing to count (all padding / all outliers) contributes 0, not 0/0
    return sums.squared / denom.clamp_min(1).to(sums.squared.dtype)


def per_sample_flow_loss(pred: torch.Tensor, target: torch.Tensor, *, token_mask: torch.Tensor | None = None,
                         outlier_threshold: float | None = FIRERED_OUTLIER_THRESHOLD,
                         denominator: Denominator = "all") -> torch.Tensor:
    """Per-sample masked MSE ``[B]`` (float32, differentiable); the masks as in the module docstring."""
    return _per_sample(_masked_sums(pred, target, token_mask, outlier_threshold), denominator)


def _check_weighting(weighting: torch.Tensor | None, batch: int) -> None:
    if weighting is not None and tuple(weighting.shape) != (batch,):
        raise ValueError(f"flow loss: weighting must be per sample, shape ({batch},), got {tuple(weighting.shape)}")


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, *, token_mask: torch.Tensor | None = None,
                       outlier_threshold: float | None = FIRERED_OUTLIER_THRESHOLD,
                       weighting: torch.Tensor | None = None, reduction: Reduction = "mean",
                       denominator: Denominator = "all", token_weight: torch.Tensor | None = None) -> LossOutput:
    """The batch loss of ``pred [B, N, D]`` against ``target = eps - x0`` (see the module docstring).

    ``token_mask [B, N]``: 1 for target tokens, 0 for padding. ``outlier_threshold``: elements with
    ``|pred - target|`` above it are dropped (None keeps all). ``weighting [B]``: per-sample factors applied before
    the reduction (``per_sample`` stays unweighted). ``reduction``: "mean" | "token_mean" | "sum".
    ``token_weight [B, N]``: per-token factors on the squared errors (numerator only; ``per_sample`` includes them).
    """
    sums = _masked_sums(pred, target, token_mask, outlier_threshold, token_weight)
    per_sample = _per_sample(sums, denominator)
    batch = per_sample.shape[0]
    _check_weighting(weighting, batch)
    w = None if weighting is None else weighting.to(device=per_sample.device, dtype=per_sample.dtype)
    weighted = per_sample if w is None else per_sample * w
    if reduction == "mean":
        loss = weighted.sum() / batch
    elif reduction == "sum":
        loss = weighted.sum()
    elif reduction == "token_mean":
        squared = sums.squared if w is None else sums.squared * w
        denom = sums.counted if denominator == "all" else sums.kept
        loss = squared.sum() / denom.sum().clamp_min(1).to(squared.dtype)
    else:
        raise ValueError(f"flow loss: reduction must be 'mean', 'token_mean' or 'sum', got {reduction!r}")
    n_masked = (sums.counted - sums.kept).sum()
    return LossOutput(loss=loss, per_sample=per_sample, n_masked=n_masked)
