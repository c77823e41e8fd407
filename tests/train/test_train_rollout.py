"""Rollout inputs (``objective.rollout``, ``firered_train.loop.rollout``): the corrected velocity target, which
micro-steps roll out and at which sampler level, the sampler state by hand, and real tiny training runs with the
option on (reproducible, and not the plain run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from firered_core.config import ConfigError, SchedulerConfig
from firered_core.schedule import flow_sigmas
from firered_train.loop.batch import TrainBatch
from firered_train.cache.command import cache_from_config
from firered_train.config import ObjectiveConfig, RolloutConfig, load_config
from firered_train.objectives import corrected_target, flow_target, noisy_sample
from firered_train.observe.metrics_log import read_metrics
from firered_train.loop.rollout import RolloutLevel, rollout_level, rollout_start
from firered_train.loop.step import pack_batch, seeded_noise, step_loss
from firered_train.loop.trainer import Trainer

from tests.train_fixtures import make_pairs, tiny_overrides

SCHEDULER = SchedulerConfig()


# ---------------------------------------------------------------- the target


def test_corrected_target_is_the_flow_target_from_x0_and_leads_back_to_x0_from_elsewhere() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps, start = (torch.randn(3, 5, 4, generator=g) for _ in range(3))
    s = torch.tensor([0.9, 0.5, 0.2])
    assert torch.allclose(corrected_target(x0, eps, x0, s), flow_target(x0, eps), atol=0, rtol=0)
    x_s = noisy_sample(start, eps, s)
    v = corrected_target(x0, eps, start, s)
    assert torch.allclose(x_s - s.reshape(-1, 1, 1) * v, x0, atol=1e-5)
    assert not torch.allclose(v, flow_target(x0, eps))


def test_corrected_target_refuses_level_zero_and_mismatched_shapes() -> None:
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="must be > 0"):
        corrected_target(x, x, x, torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="differ in shape"):
        corrected_target(x, x, torch.zeros(2, 3, 5), 0.5)


# ---------------------------------------------------------------- which steps, which level


def test_rollout_level_off_always_and_on_always() -> None:
    off = RolloutConfig(prob=0.0)
    assert all(rollout_level(off, SCHEDULER, seed=0, micro_step=i, tokens=64) is None for i in range(50))
    cfg = RolloutConfig(prob=1.0, steps=10, min_level=0.1)
    sigmas = flow_sigmas(10, 64, SCHEDULER)
    usable = {i for i in range(1, 10) if sigmas[i] >= 0.1}
    assert usable == set(range(1, 9))  # 0.02, the last level before 0, is left out
    picked = [rollout_level(cfg, SCHEDULER, seed=0, micro_step=i, tokens=64) for i in range(400)]
    assert all(p is not None for p in picked)
    indices = [p.index for p in picked]  # type: ignore[union-attr]
    assert set(indices) == usable
    assert all(torch.equal(p.sigmas, sigmas) for p in picked)  # type: ignore[union-attr]
    assert picked[7].level == pytest.approx(float(sigmas[picked[7].index]))  # type: ignore[union-attr]


def test_rollout_level_is_seeded_by_the_micro_step_and_follows_the_share() -> None:
    cfg = RolloutConfig(prob=0.3)
    draws = [rollout_level(cfg, SCHEDULER, seed=5, micro_step=i, tokens=64) for i in range(1000)]
    again = [rollout_level(cfg, SCHEDULER, seed=5, micro_step=i, tokens=64) for i in range(1000)]
    assert [d and d.index for d in draws] == [d and d.index for d in again]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.25 < share < 0.35, share
    other = [rollout_level(cfg, SCHEDULER, seed=6, micro_step=i, tokens=64) for i in range(1000)]
    assert [d and d.index for d in draws] != [d and d.index for d in other]


def test_no_usable_level_gives_a_plain_step() -> None:
    cfg = RolloutConfig(prob=1.0, steps=2, min_level=0.99)
    assert rollout_level(cfg, SCHEDULER, seed=0, micro_step=0, tokens=64) is None


@pytest.mark.parametrize("override,match", [
    ("--objective.rollout.prob=1.5", "prob"), ("--objective.rollout.steps=1", "steps"),
    ("--objective.rollout.min_level=0", "min_level"), ("--objective.rollout.min_level=1", "min_level"),
])
def test_bad_rollout_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config("tiny_sft", [override])


def test_rollout_is_off_by_default_and_read_from_the_config() -> None:
    assert ObjectiveConfig().rollout.prob == 0.0
    cfg = load_config("tiny_sft", ["--objective.rollout.prob=0.5", "--objective.rollout.steps=6"])
    assert (cfg.objective.rollout.prob, cfg.objective.rollout.steps) == (0.5, 6)


# ---------------------------------------------------------------- the sampler state, by hand


class _Scaled(nn.Module):
    """Velocity ``v = a * x`` for the target tokens: every sampler state can be written down by hand."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a
        self.modes: list[tuple[bool, bool]] = []  # (training, gradients on) of every call

    def forward(self, hidden: torch.Tensor, embeds: torch.Tensor, mask: object, s: torch.Tensor,
                img_shapes: list[tuple[int, int, int]]) -> torch.Tensor:
        self.modes.append((self.training, torch.is_grad_enabled()))
        _, h, w = img_shapes[0]
        return self.a * hidden[:, :h * w]


def _batch() -> TrainBatch:
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 4, 8, 8, generator=g)
    return TrainBatch(step=11, indices=(3, 4), ids=("a", "b"), target=target, sources=(torch.randn_like(target),),
                      embeds=torch.zeros(2, 1, 8), mask=None, languages=("en", "en"))


@pytest.mark.parametrize("index", [1, 2, 3])
def test_rollout_start_is_the_stochastic_sampler_by_hand(index: int) -> None:
    batch, a = _batch(), 0.5
    sigmas = flow_sigmas(10, 16, SCHEDULER)
    noise = [seeded_noise(batch, 7, 2, stream=f"rollout-{i}") for i in range(index)]
    x = noise[0]
    for i in range(index):
        estimate = x - float(sigmas[i]) * a * x  # x0_i = x_i - s_i v(x_i)
        if i + 1 < index:
            x = (1 - float(sigmas[i + 1])) * estimate + float(sigmas[i + 1]) * noise[i + 1]
    model = _Scaled(a).train()
    got = rollout_start(model, batch, RolloutLevel(index=index, sigmas=sigmas), seed=7, patch=2)
    assert got.shape == (2, 16, 16) and not got.requires_grad
    assert torch.allclose(got, estimate, atol=1e-6)
    assert model.modes == [(False, False)] * index and model.training  # eval mode as at inference, then restored


def test_step_loss_from_a_start_regresses_the_velocity_back_to_x0() -> None:
    batch = _batch()
    model = _Scaled(0.5)
    noise = seeded_noise(batch, 0, 2)
    s = torch.full((2,), 0.4)
    start = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(2))
    x0 = pack_batch(batch, 2).x0
    x_t = noisy_sample(start, noise, s)
    expected = ((0.5 * x_t - corrected_target(x0, noise, start, s)) ** 2).mean(dim=(1, 2))
    out = step_loss(model, batch, s, noise, ObjectiveConfig(), patch=2, start=start)
    assert torch.allclose(out.per_sample, expected, rtol=1e-5)
    plain = step_loss(model, batch, s, noise, ObjectiveConfig(), patch=2)
    assert not torch.allclose(plain.per_sample, out.per_sample)


# ---------------------------------------------------------------- real tiny runs


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout_pairs")
    make_pairs(root / "train", 8)
    cfg = load_config("tiny_sft", tiny_overrides(root, steps=6, val=False))
    assert cache_from_config(cfg, batch_size=8, shard_size=8) >= 8
    return root


def _final_weights(root: Path, name: str, *extra: str) -> dict[str, torch.Tensor]:
    overrides = tiny_overrides(root, steps=6, val=False, extra=[f"--output_dir={root / name}",
                                                                 "--logging.validation_every=0", *extra])
    trainer = Trainer(load_config("tiny_sft", overrides))
    result = trainer.run()
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.final_loss))
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_training_with_rollout_inputs_is_reproducible_and_not_the_plain_run(cached: Path) -> None:
    rollout = ("--objective.rollout.prob=1", "--objective.rollout.steps=4", "--objective.rollout.min_level=0.05")
    first = _final_weights(cached, "r1", *rollout)
    second = _final_weights(cached, "r2", *rollout)
    plain = _final_weights(cached, "plain")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], plain[k]) for k in first)
    # the losses by noise level: a rollout step's go to their own bins, never into the plain ones
    assert _binned(cached / "r1") == {"rollout_loss_by_t"}
    assert _binned(cached / "plain") == {"loss_by_t"}


def _binned(run: Path) -> set[str]:
    """The kinds of loss-by-noise-level keys the run's metrics log holds (its prefixes)."""
    return {key.split("/")[0] for line in read_metrics(run / "metrics.jsonl") for key in line if "loss_by_t/" in key}
