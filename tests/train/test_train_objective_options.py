"""The objective options the trainer uses, against hand-computed values: ``global`` vs ``rank`` stratification of
the noise levels, the loss denominator (``kept`` vs ``all``) and the edit-region weighting
(``changed_token_weight``) through ``step.step_loss``, the EMA built from the config, and the config keys that
select them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from firered_core.config import ConfigError
from firered_train.loop.batch import TrainBatch
from firered_train.config import EMAConfig, ObjectiveConfig, TrainConfig, load_config
from firered_train.scale.distributed import sample_generator
from firered_train.objectives import (EMA, TimestepConfig, TimestepSampler, flow_matching_loss, timestep_generator,
                                      timestep_generators)
from firered_train.loop.step import changed_token_weights, pack_batch, seeded_levels, step_loss


def _uniform(**kw: object) -> TimestepSampler:
    return TimestepSampler(TimestepConfig(mode="uniform", shift="none", **kw))  # type: ignore[arg-type]


def _raw(seed: int, step: int, sample: int) -> float:
    """The uniform a sample's own generator gives (what ``global`` stratification moves into its stratum)."""
    return torch.rand((), generator=sample_generator(seed, step, sample, "timestep"), dtype=torch.float64).item()


# ---------------------------------------------------------------- global stratification


def test_global_strata_follow_the_position_in_the_global_batch_and_rotate() -> None:
    sampler = _uniform(stratification="global", rotate_every=10)
    assert sampler.global_strata(4, step=0).tolist() == [0, 1, 2, 3]
    assert sampler.global_strata(4, step=10).tolist() == [1, 2, 3, 0]
    assert sampler.global_strata(4, step=35).tolist() == [3, 0, 1, 2]
    # two processes of two: rank r's i-th sample is global position 2i + r (the bucket sampler deals r::2)
    assert sampler.global_strata(2, step=0, rank=0, world_size=2).tolist() == [0, 2]
    assert sampler.global_strata(2, step=0, rank=1, world_size=2).tolist() == [1, 3]
    assert sampler.global_strata(2, step=19, rank=1, world_size=2).tolist() == [2, 0]


def test_global_quantiles_by_hand() -> None:
    sampler = _uniform(stratification="global", rotate_every=10)
    samples = [7, 8, 9, 10]
    u = sampler.quantiles(4, step=10, generator=timestep_generators(3, 5, samples))
    # stratum (p + 1) % 4 of width 1/4, the sample's own uniform inside it
    expected = [(k + _raw(3, 5, i)) / 4 for k, i in zip([1, 2, 3, 0], samples)]
    assert u.tolist() == expected
    assert sorted((u * 4).floor().long().tolist()) == [0, 1, 2, 3]


def test_global_levels_are_the_same_for_one_and_two_processes() -> None:
    sampler = TimestepSampler(TimestepConfig(stratification="global"))  # logit-normal, resolution shift
    one = sampler.sample(4, step=3, image_seq_len=256, generator=timestep_generators(0, 3, [0, 1, 2, 3]))
    rank0 = sampler.sample(2, step=3, rank=0, world_size=2, image_seq_len=256,
                           generator=timestep_generators(0, 3, [0, 2]))
    rank1 = sampler.sample(2, step=3, rank=1, world_size=2, image_seq_len=256,
                           generator=timestep_generators(0, 3, [1, 3]))
    assert torch.equal(one, torch.stack([rank0[0], rank1[0], rank0[1], rank1[1]]))


def _batch(indices: list[int], step: int = 3) -> TrainBatch:
    n = len(indices)
    return TrainBatch(step=step, indices=tuple(indices), ids=tuple(map(str, indices)),
                      target=torch.zeros(n, 4, 16, 16), sources=(), embeds=torch.zeros(n, 1, 8), mask=None,
                      languages=("en",) * n)


@pytest.mark.parametrize("stratification,same", [("global", True), ("none", True), ("rank", False)])
def test_trainer_levels_depend_on_the_process_count_only_with_rank_strata(stratification: str, same: bool) -> None:
    sampler = TimestepSampler(TimestepConfig(stratification=stratification))  # type: ignore[arg-type]
    one = seeded_levels(sampler, _batch([0, 1, 2, 3]), seed=0, patch=2, step=3, rank=0, world_size=1)
    two = [seeded_levels(sampler, _batch([r, r + 2]), seed=0, patch=2, step=3, rank=r, world_size=2)
           for r in range(2)]
    assert torch.equal(one, torch.stack([two[0][0], two[1][0], two[0][1], two[1][1]])) is same


# ---------------------------------------------------------------- rank stratification


def test_rank_quantiles_by_hand() -> None:
    sampler = _uniform(stratification="rank", rotate_every=10)
    for step, stratum in ((0, 1), (10, 0), (25, 1)):
        u = sampler.quantiles(2, step=step, rank=1, world_size=2, generator=torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)  # the same draws by hand: 2 uniforms, then the permutation
        raw = torch.rand(2, generator=g, dtype=torch.float64)
        perm = torch.randperm(2, generator=g).to(torch.float64)
        assert u.tolist() == ((stratum + (perm + raw) / 2) / 2).tolist()
        assert bool(((u >= stratum / 2) & (u < (stratum + 1) / 2)).all())


def test_rank_strata_need_one_generator_per_rank() -> None:
    sampler = _uniform(stratification="rank")
    assert isinstance(sampler.generators(0, 1, 1, [4, 5]), torch.Generator)
    assert torch.equal(torch.rand(1, generator=sampler.generators(0, 1, 1, [4, 5])),
                       torch.rand(1, generator=timestep_generator(0, 1, 1)))
    assert len(_uniform(stratification="global").generators(0, 1, 1, [4, 5])) == 2  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one generator"):
        sampler.quantiles(2, step=0, generator=timestep_generators(0, 0, [0, 1]))
    with pytest.raises(ValueError, match="3 per-sample generators for a batch of 2"):
        _uniform(stratification="global").quantiles(2, step=0, generator=timestep_generators(0, 0, [0, 1, 2]))


def test_logit_normal_levels_by_hand() -> None:
    sampler = TimestepSampler(TimestepConfig(mode="logit_normal", logit_mean=0.2, shift="none"))
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # Phi(1)
    s = sampler.to_levels(torch.tensor([0.5, phi1], dtype=torch.float64))
    assert s.tolist() == pytest.approx([1 / (1 + math.exp(-0.2)), 1 / (1 + math.exp(-1.2))], abs=1e-6)


# ---------------------------------------------------------------- the loss denominator through step_loss


class _Fixed(nn.Module):
    """A 'transformer' that predicts a fixed velocity (the loss arithmetic alone)."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = nn.Parameter(pred)

    def forward(self, hidden: torch.Tensor, *_: object) -> torch.Tensor:
        return self.pred


def _one_token_batch(weight: float = 1.0) -> TrainBatch:
    # a 2x2 latent of 1 channel with patch 2 is one token of width 4; zero latents and zero noise: target v = 0
    return TrainBatch(step=0, indices=(0,), ids=("a",), target=torch.zeros(1, 1, 2, 2), sources=(),
                      embeds=torch.zeros(1, 1, 8), mask=None, languages=("en",), weight=weight)


@pytest.mark.parametrize("denominator,threshold,expected,grad", [
    ("kept", 50.0, 14 / 3, [2 / 3, 4 / 3, 0.0, 2.0]),  # (1 + 4 + 9) / 3 kept elements; 60 is an outlier
    ("all", 50.0, 3.5, [0.5, 1.0, 0.0, 1.5]),  # the released code: (1 + 4 + 0 + 9) / 4
    ("kept", None, (1 + 4 + 3600 + 9) / 4, [0.5, 1.0, 30.0, 1.5]),
])
def test_step_loss_denominator_by_hand(denominator: str, threshold: float | None, expected: float,
                                       grad: list[float]) -> None:
    model = _Fixed(torch.tensor([[[1.0, 2.0, 60.0, 3.0]]]))
    objective = ObjectiveConfig(outlier_threshold=threshold, denominator=denominator)  # type: ignore[arg-type]
    out = step_loss(model, _one_token_batch(), torch.tensor([0.5]), torch.zeros(1, 1, 4), objective, patch=2)
    assert out.loss.item() == pytest.approx(expected) and out.per_sample.tolist() == pytest.approx([expected])
    assert int(out.n_masked) == (0 if threshold is None else 1)
    out.loss.backward()
    assert model.pred.grad.flatten().tolist() == pytest.approx(grad)
    placeholder = step_loss(model, _one_token_batch(weight=0.0), torch.tensor([0.5]), torch.zeros(1, 1, 4),
                            objective, patch=2)
    assert placeholder.loss.item() == 0.0


# ---------------------------------------------------------------- EMA from the config


def test_ema_from_config_by_hand() -> None:
    param = nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA.from_config({"w": param}, EMAConfig(decay=0.5))
    with torch.no_grad():
        param.copy_(torch.tensor([3.0, 4.0]))
    ema.update(1)
    assert ema.shadow["w"].tolist() == [2.0, 3.0]  # 0.5 * old + 0.5 * new
    late = EMA.from_config({"w": param}, EMAConfig(decay=0.9, start_step=5, update_every=1))
    with torch.no_grad():
        param.copy_(torch.tensor([7.0, 7.0]))
    late.update(3)
    assert late.shadow["w"].tolist() == [7.0, 7.0] and late.n_updates == 0  # up to start_step: a plain copy
    warm = EMA.from_config({"w": param}, EMAConfig(decay=0.999, warmup=1.0))
    for step, value in enumerate((1.0, 2.0, 6.0), start=1):  # power 1: d_n = n / (n + 1), a running mean
        with torch.no_grad():
            param.fill_(value)
        warm.update(step)
    assert warm.shadow["w"].tolist() == pytest.approx([3.0, 3.0])
    assert warm.state_dict()["warmup"] == 1.0


# ---------------------------------------------------------------- config keys


def test_defaults_keep_global_strata_and_the_kept_denominator() -> None:
    cfg = TrainConfig()
    assert cfg.objective.timesteps.stratification == "global" and cfg.objective.denominator == "kept"
    assert cfg.ema.warmup is None
    for name in ("pretrain", "continued", "sft", "lora", "tiny_sft", "tiny_lora"):
        loaded = load_config(name)
        assert loaded.objective.timesteps.stratification == "global", name
        assert loaded.objective.denominator == "kept", name


def test_config_selects_the_options() -> None:
    cfg = load_config("tiny_sft", ["--objective.timesteps.stratification=rank", "--objective.denominator=all",
                                   "--objective.timesteps.curriculum=high_noise_first",
                                   "--objective.timesteps.curriculum_steps=10",
                                   "--objective.timesteps.curriculum_start_width=0.25", "--ema.warmup=0.75"])
    assert cfg.objective.timesteps.stratification == "rank" and cfg.objective.denominator == "all"
    assert TimestepSampler(cfg.objective.timesteps).curriculum_floor(0) == 0.75
    assert cfg.ema.warmup == 0.75


@pytest.mark.parametrize("override,match", [
    ("--objective.timesteps.stratification=ranks",
     r"objective\.timesteps\.stratification: must be one of 'none', 'global', 'rank'"),
    ("--objective.timesteps.stratified=true", r"objective\.timesteps\.stratified: unknown key"),
    ("--objective.denominator=some", r"objective\.denominator: must be one of 'kept', 'all'"),
    ("--objective.timesteps.curriculum_start_width=0", r"objective\.timesteps\.curriculum_start_width: must lie"),
    ("--ema.warmup=-1", r"ema\.warmup: must be a positive number"),
    ("--objective.changed_token_weight=-1", r"objective\.changed_token_weight: must be >= 0"),
    ("--objective.changed_token_weight=inf", r"objective\.changed_token_weight: must be finite"),
    ("--objective.changed_token_threshold=0", r"objective\.changed_token_threshold: must be > 0"),
])
def test_bad_option_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_sft", [override])


# ---------------------------------------------------------------- the edit-region weighting


def _edit_batch(target: torch.Tensor, sources: tuple[torch.Tensor, ...]) -> TrainBatch:
    return TrainBatch(step=0, indices=(0,), ids=("a",), target=target, sources=sources,
                      embeds=torch.zeros(1, 1, 8), mask=None, languages=("en",), weight=1.0)


def _two_token_edit(change: float) -> TrainBatch:
    # 1 channel, 2x4 latent, patch 2 -> two tokens of width 4; the source differs from the target in token 1 only
    target = torch.zeros(1, 1, 2, 4)
    source = target.clone()
    source[..., 2:] = change
    return _edit_batch(target, (source,))


def test_only_the_tokens_that_differ_from_picture_1_weigh_more() -> None:
    packed = pack_batch(_two_token_edit(0.5), patch=2)
    assert changed_token_weights(packed, 3.0, 0.1).tolist() == [[1.0, 4.0]]
    # a difference at or below the threshold is "unchanged" (VAE noise at the edges of an edit)
    assert changed_token_weights(pack_batch(_two_token_edit(0.1), 2), 3.0, 0.1).tolist() == [[1.0, 1.0]]
    assert changed_token_weights(packed, 0.0, 0.1) is None  # off
    # normalised: the same 1:4 ratio with mean 1, so the sample as a whole weighs what its plain loss does
    assert changed_token_weights(packed, 3.0, 0.1, normalize=True)[0].tolist() == pytest.approx([0.4, 1.6])
    every = pack_batch(_edit_batch(torch.zeros(1, 1, 2, 4), (torch.ones(1, 1, 2, 4),)), 2)  # a whole-image edit
    assert changed_token_weights(every, 3.0, 0.1).tolist() == [[4.0, 4.0]]
    assert changed_token_weights(every, 3.0, 0.1, normalize=True).tolist() == [[1.0, 1.0]]


def test_no_source_or_another_grid_is_weighted_uniformly() -> None:
    assert changed_token_weights(pack_batch(_edit_batch(torch.zeros(1, 1, 2, 4), ()), 2), 3.0, 0.1) is None
    other_grid = _edit_batch(torch.zeros(1, 1, 2, 4), (torch.ones(1, 1, 4, 2),))
    assert changed_token_weights(pack_batch(other_grid, 2), 3.0, 0.1) is None
    # the second source's tokens are never compared: only Picture 1 is "the image being edited"
    two = _edit_batch(torch.zeros(1, 1, 2, 4), (torch.zeros(1, 1, 2, 4), torch.ones(1, 1, 2, 4)))
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
    normalised = step_loss(_Fixed(pred.clone()), batch, s, noise,
                           ObjectiveConfig(changed_token_weight=3.0, changed_token_normalize=True), patch=2)
    assert normalised.loss.item() == pytest.approx((0.4 * 4 + 1.6 * 4) / 8)  # weights 0.4 and 1.6
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


def test_config_keys(recipes_dir: Path) -> None:
    assert ObjectiveConfig().changed_token_weight == 0.0  # off unless a config asks
    cfg = load_config("tiny_sft", ["--objective.changed_token_weight=2", "--objective.changed_token_threshold=0.2"])
    assert (cfg.objective.changed_token_weight, cfg.objective.changed_token_threshold) == (2.0, 0.2)
    assert load_config(recipes_dir / "default_model" / "05_edit.yaml").objective.changed_token_weight == 3.0
