"""The edit-region weighting (``objective.changed_token_weight``): which target tokens count as changed, the
weighted loss and its gradient by hand through ``step.step_loss``, and the config keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from firered_core.config import ConfigError
from firered_train.batch import TrainBatch
from firered_train.config import ObjectiveConfig, load_config
from firered_train.objectives import flow_matching_loss
from firered_train.step import changed_token_weights, pack_batch, step_loss


class _Fixed(nn.Module):
    """A 'transformer' predicting a fixed velocity for the target tokens (the loss arithmetic alone)."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = nn.Parameter(pred)

    def forward(self, hidden: torch.Tensor, *_: object) -> torch.Tensor:
        return self.pred


def _batch(target: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> TrainBatch:
    return TrainBatch(step=0, indices=(0,), ids=("a",), target=target, sources=sources,
                      embeds=torch.zeros(1, 1, 8), mask=None, languages=("en",), weight=1.0)


def _two_token_edit(change: float) -> TrainBatch:
    # 1 channel, 2x4 latent, patch 2 -> two tokens of width 4; the source differs from the target in token 1 only
    target = torch.zeros(1, 1, 2, 4)
    source = target.clone()
    source[..., 2:] = change
    return _batch(target, (source,))


def test_only_the_tokens_that_differ_from_picture_1_weigh_more() -> None:
    packed = pack_batch(_two_token_edit(0.5), patch=2)
    assert changed_token_weights(packed, 3.0, 0.1).tolist() == [[1.0, 4.0]]
    # a difference at or below the threshold is "unchanged" (VAE noise at the edges of an edit)
    assert changed_token_weights(pack_batch(_two_token_edit(0.1), 2), 3.0, 0.1).tolist() == [[1.0, 1.0]]
    assert changed_token_weights(packed, 0.0, 0.1) is None  # off


def test_no_source_or_another_grid_is_weighted_uniformly() -> None:
    assert changed_token_weights(pack_batch(_batch(torch.zeros(1, 1, 2, 4), ()), 2), 3.0, 0.1) is None
    other_grid = _batch(torch.zeros(1, 1, 2, 4), (torch.ones(1, 1, 4, 2),))
    assert changed_token_weights(pack_batch(other_grid, 2), 3.0, 0.1) is None
    # the second source's tokens are never compared: only Picture 1 is "the image being edited"
    two = _batch(torch.zeros(1, 1, 2, 4), (torch.zeros(1, 1, 2, 4), torch.ones(1, 1, 2, 4)))
    assert changed_token_weights(pack_batch(two, 2), 3.0, 0.1).tolist() == [[1.0, 1.0]]


def test_weighted_step_loss_and_gradient_by_hand() -> None:
    # zero latents and zero noise: the target velocity is 0, so the squared errors are the prediction squared
    pred = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]]])  # token 0: 4 x 1; token 1: 4
    batch, noise, s = _two_token_edit(0.5), torch.zeros(1, 2, 4), torch.tensor([0.5])
    plain = step_loss(_Fixed(pred.clone()), batch, s, noise, ObjectiveConfig(), patch=2)
    assert plain.loss.item() == pytest.approx((4 + 4) / 8)
    model = _Fixed(pred.clone())
    weighted = step_loss(model, batch, s, noise, ObjectiveConfig(changed_token_weight=3.0), patch=2)
    assert weighted.loss.item() == pytest.approx((4 + 4 * 4) / 8)  # token 1 counts 4x, the denominator stays 8
    weighted.loss.backward()
    # d/dp (w p^2 / 8) = w p / 4: token 0 (w 1) 0.25 each, token 1 (w 4) 2 for the element of 2
    assert model.pred.grad.flatten().tolist() == pytest.approx([0.25] * 4 + [2.0, 0.0, 0.0, 0.0])


def test_unit_token_weights_change_nothing() -> None:
    pred, target = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    plain = flow_matching_loss(pred, target)
    ones = flow_matching_loss(pred, target, token_weight=torch.ones(3, 5))
    assert torch.equal(plain.loss, ones.loss) and torch.equal(plain.per_sample, ones.per_sample)
    with pytest.raises(ValueError, match=r"token_weight must be \[B, N\] = \(3, 5\), got \(3, 4\)"):
        flow_matching_loss(pred, target, token_weight=torch.ones(3, 4))


def test_config_keys() -> None:
    assert ObjectiveConfig().changed_token_weight == 0.0  # off unless a config asks
    cfg = load_config("tiny_sft", ["--objective.changed_token_weight=2", "--objective.changed_token_threshold=0.2"])
    assert (cfg.objective.changed_token_weight, cfg.objective.changed_token_threshold) == (2.0, 0.2)
    assert load_config("default_model_edit").objective.changed_token_weight == 3.0


@pytest.mark.parametrize("override,match", [
    ("--objective.changed_token_weight=-1", r"objective\.changed_token_weight: must be >= 0"),
    ("--objective.changed_token_weight=inf", r"objective\.changed_token_weight: must be finite"),
    ("--objective.changed_token_threshold=0", r"objective\.changed_token_threshold: must be > 0"),
])
def test_bad_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_sft", [override])
