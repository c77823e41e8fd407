"""The training objective (firered_train.objectives): flow loss, noise-level sampling and EMA, against hand values."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from firered_core.config import ConfigError, SchedulerConfig
from firered_core.schedule import compute_mu, flow_sigmas
from firered_train.objectives import (EMA, TimestepConfig, TimestepSampler, clean_estimate,
                                      flow_matching_loss, flow_target, loss_bins, noisy_sample,
                                      per_sample_flow_loss, timestep_generator)

# ---------------------------------------------------------------- flow: path and target


def test_noisy_sample_and_target_identities() -> None:
    x0 = torch.tensor([[[1.0, -2.0]], [[0.5, 4.0]]])  # [B=2, N=1, D=2]
    eps = torch.tensor([[[3.0, 2.0]], [[-1.5, 0.0]]])
    s = torch.tensor([0.25, 0.5])
    # (1 - s) x0 + s eps by hand: 0.75*1 + 0.25*3 = 1.5, 0.75*-2 + 0.25*2 = -1; 0.5*0.5 + 0.5*-1.5 = -0.5, 2
    assert torch.equal(noisy_sample(x0, eps, s), torch.tensor([[[1.5, -1.0]], [[-0.5, 2.0]]]))
    assert torch.equal(noisy_sample(x0, eps, 0.0), x0)
    assert torch.equal(noisy_sample(x0, eps, 1.0), eps)
    v = flow_target(x0, eps)
    assert torch.equal(v, torch.tensor([[[2.0, 4.0]], [[-2.0, -4.0]]]))
    # v is the derivative of the path, the same at every level
    a, b = noisy_sample(x0, eps, torch.tensor([0.25, 0.25])), noisy_sample(x0, eps, torch.tensor([0.75, 0.75]))
    assert torch.equal((b - a) / 0.5, v)
    # the true velocity gives back the clean sample
    assert torch.equal(clean_estimate(noisy_sample(x0, eps, s), v, s), x0)


def test_noisy_sample_keeps_levels_exact_for_bf16_latents() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1000, 4, 8, generator=g).to(torch.bfloat16)
    eps = torch.randn(1000, 4, 8, generator=g).to(torch.bfloat16)
    s = torch.rand(1000, generator=g)
    x = noisy_sample(x0, eps, s)
    assert x.dtype == torch.bfloat16
    # one rounding, of the result: the float32 computation cast once
    assert torch.equal(x, noisy_sample(x0.float(), eps.float(), s).to(torch.bfloat16))
    # rounding the levels to bf16 first (what a naive s.to(x0.dtype) does) would change some inputs
    lv = s.to(torch.bfloat16).reshape(-1, 1, 1)
    assert not torch.equal(x, (1 - lv) * x0 + lv * eps)


def test_noisy_sample_rejects_bad_shapes() -> None:
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="differ in shape"):
        noisy_sample(x, torch.zeros(2, 3, 5), 0.5)
    with pytest.raises(ValueError, match=r"\[B\]"):
        noisy_sample(x, x, torch.zeros(3))


# ---------------------------------------------------------------- flow: masked MSE


def test_outlier_mask_follows_firered_semantics() -> None:
    pred = torch.tensor([[[1.0, -2.0], [60.0, 3.0]]])  # [1, 2, 2]; |60 - 0| > 50 is an outlier
    target = torch.zeros_like(pred)
    out = flow_matching_loss(pred, target)
    # released trainer: mean over ALL 4 elements of the masked squared error: (1 + 4 + 0 + 9) / 4
    assert out.loss.item() == 3.5
    assert out.per_sample.tolist() == [3.5]
    assert int(out.n_masked) == 1
    kept = flow_matching_loss(pred, target, denominator="kept")
    assert kept.loss.item() == pytest.approx(14 / 3)
    # the threshold itself is kept (strictly greater is dropped), None keeps everything
    at = torch.tensor([[[50.0, 0.0]]])
    assert flow_matching_loss(at, torch.zeros_like(at)).loss.item() == 1250.0
    assert flow_matching_loss(pred, target, outlier_threshold=None).loss.item() == (1 + 4 + 3600 + 9) / 4


def test_masked_elements_get_zero_gradient() -> None:
    pred = torch.tensor([[[1.0, -2.0], [60.0, 3.0]]], requires_grad=True)
    flow_matching_loss(pred, torch.zeros(1, 2, 2)).loss.backward()
    # d/dp of sum(p^2)/4 is p/2 on kept elements, exactly 0 on the outlier
    assert pred.grad.tolist() == [[[0.5, -1.0], [0.0, 1.5]]]


def test_infinite_error_is_masked_but_nan_propagates() -> None:
    pred = torch.tensor([[[float("inf"), 2.0]]], requires_grad=True)
    out = flow_matching_loss(pred, torch.zeros(1, 1, 2))
    out.loss.backward()
    assert out.loss.item() == 2.0 and int(out.n_masked) == 1  # 4 / 2 elements
    assert pred.grad.tolist() == [[[0.0, 2.0]]]  # d/dp p^2/2 = p; no NaN leaks from the masked inf
    nan = torch.tensor([[[float("nan"), 2.0]]])
    assert math.isnan(flow_matching_loss(nan, torch.zeros(1, 1, 2)).loss.item())


def _token_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]],
                           [[2.0, 2.0], [0.0, 1.0], [100.0, -100.0]]])  # [B=2, N=3, D=2]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second sample's last token is padding
    return torch.zeros_like(target), target, mask


def test_token_mask_and_reductions() -> None:
    pred, target, mask = _token_batch()
    # sample 0: (1+1+4+0+0+9)/6 = 2.5; sample 1: (4+4+0+1)/4 = 2.25 (padding, though > 50, is not an outlier)
    out = flow_matching_loss(pred, target, token_mask=mask)
    assert out.per_sample.tolist() == [2.5, 2.25]
    assert out.loss.item() == 2.375
    assert int(out.n_masked) == 0
    assert flow_matching_loss(pred, target, token_mask=mask, reduction="sum").loss.item() == 4.75
    token_mean = flow_matching_loss(pred, target, token_mask=mask, reduction="token_mean")
    assert token_mean.loss.item() == pytest.approx(2.4)  # (15 + 9) / 10 counted elements
    w = torch.tensor([2.0, 0.5])
    weighted = flow_matching_loss(pred, target, token_mask=mask, weighting=w)
    assert weighted.loss.item() == 3.0625  # (2*2.5 + 0.5*2.25) / 2
    assert weighted.per_sample.tolist() == [2.5, 2.25]  # per-sample losses stay unweighted
    token = flow_matching_loss(pred, target, token_mask=mask, weighting=w, reduction="token_mean")
    assert token.loss.item() == pytest.approx(3.45)  # (2*15 + 0.5*9) / 10
    assert torch.equal(per_sample_flow_loss(pred, target, token_mask=mask), out.per_sample)


def test_all_padding_sample_contributes_zero() -> None:
    pred, target, _ = _token_batch()
    out = flow_matching_loss(pred, target, token_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    assert out.per_sample.tolist() == [2.5, 0.0]


def test_loss_runs_in_float32_for_bf16_predictions() -> None:
    pred = torch.tensor([[[1.0, 3.0]]], dtype=torch.bfloat16, requires_grad=True)
    out = flow_matching_loss(pred, torch.zeros(1, 1, 2, dtype=torch.bfloat16))
    assert out.loss.dtype == torch.float32 and out.loss.item() == 5.0
    out.loss.backward()
    assert pred.grad.dtype == torch.bfloat16 and pred.grad.tolist() == [[[1.0, 3.0]]]


def test_loss_rejects_bad_arguments() -> None:
    pred, target, mask = _token_batch()
    with pytest.raises(ValueError, match="token_mask"):
        flow_matching_loss(pred, target, token_mask=mask[:, :2])
    with pytest.raises(ValueError, match="weighting"):
        flow_matching_loss(pred, target, weighting=torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        flow_matching_loss(pred, target, reduction="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outlier_threshold"):
        flow_matching_loss(pred, target, outlier_threshold=0.0)


# ---------------------------------------------------------------- timesteps: stratification


def _uniform(**kw: object) -> TimestepSampler:
    return TimestepSampler(TimestepConfig(mode="uniform", shift="none", **kw))  # type: ignore[arg-type]


def test_strata_of_all_ranks_are_disjoint_and_cover_the_range() -> None:
    sampler = _uniform(stratification="rank", rotate_every=10)
    world, batch = 4, 3
    for step in (0, 7, 10, 35):
        per_rank = [sampler.quantiles(batch, step=step, rank=r, world_size=world,
                                      generator=timestep_generator(1, step, r)) for r in range(world)]
        for r, u in enumerate(per_rank):
            k = (r + step // 10) % world
            assert bool(((u >= k / world) & (u < (k + 1) / world)).all()), (step, r, u)
        cells = (torch.cat(per_rank) * world * batch).floor().long()  # one cell of width 1/12 per sample
        assert sorted(cells.tolist()) == list(range(world * batch))


def test_strata_rotate_every_k_steps() -> None:
    sampler = _uniform(stratification="rank", rotate_every=10)
    assert [sampler.stratum(s, 0, 4) for s in (0, 9, 10, 19, 20, 30, 40)] == [0, 0, 1, 1, 2, 3, 0]
    assert [sampler.stratum(10, r, 4) for r in range(4)] == [1, 2, 3, 0]
    assert sampler.stratum(123, 0, 1) == 0


def test_sampling_is_deterministic_per_seed_step_rank() -> None:
    sampler = TimestepSampler(TimestepConfig(stratification="rank"))  # logit-normal, resolution shift

    def draw(seed: int, step: int, rank: int) -> torch.Tensor:
        return sampler.sample(8, step=step, rank=rank, world_size=2, image_seq_len=1024,
                              generator=timestep_generator(seed, step, rank))

    assert torch.equal(draw(3, 5, 1), draw(3, 5, 1))
    assert not torch.equal(draw(3, 5, 0), draw(3, 5, 1))
    assert not torch.equal(draw(3, 5, 1), draw(3, 6, 1))
    assert not torch.equal(draw(3, 5, 1), draw(4, 5, 1))
    assert draw(3, 5, 1).dtype == torch.float32


def test_unstratified_uniform_is_the_raw_draw() -> None:
    u = _uniform(stratification="none").sample(5, step=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(u, torch.rand(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float())


# ---------------------------------------------------------------- timesteps: distribution and shift


@pytest.mark.parametrize("stratification", ["none", "global", "rank"])
def test_logit_normal_statistics(stratification: str) -> None:
    cfg = TimestepConfig(mode="logit_normal", logit_mean=0.3, logit_std=0.8, shift="none",
                                stratification=stratification)  # type: ignore[arg-type]
    s = TimestepSampler(cfg).sample(20000, step=0, generator=torch.Generator().manual_seed(0)).double()
    logit = torch.log(s / (1 - s))
    assert abs(logit.mean().item() - 0.3) < 0.03
    assert abs(logit.std().item() - 0.8) < 0.03
    assert bool(((s > 0) & (s < 1)).all())


def test_resolution_shift_by_hand() -> None:
    sampler = TimestepSampler(TimestepConfig(mode="uniform", shift="resolution"))
    half = torch.tensor([0.5], dtype=torch.float64)
    # at s = 1/2 the exponential shift is e^mu / (e^mu + 1) = sigmoid(mu); mu = 0.5 at 256 tokens, 0.9 at 8192
    assert sampler.shift_levels(half, 256).item() == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-12)
    assert sampler.shift_levels(half, 8192).item() == pytest.approx(1 / (1 + math.exp(-0.9)), abs=1e-12)
    ends = sampler.shift_levels(torch.tensor([0.0, 1.0], dtype=torch.float64), 4096)
    assert ends.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="image_seq_len"):
        sampler.sample(2, step=0)


def test_resolution_shift_matches_the_inference_schedule() -> None:
    scheduler = SchedulerConfig(shift_terminal=None)  # the stretch only re-spaces inference steps
    sampler = TimestepSampler(TimestepConfig(mode="uniform", shift="resolution"), scheduler)
    for tokens in (256, 1024, 4096):
        levels = torch.linspace(1.0, 1 / 12, 12, dtype=torch.float64)
        expected = flow_sigmas(12, tokens, scheduler)[:-1]
        assert torch.allclose(sampler.to_levels(levels, image_seq_len=tokens), expected, atol=1e-6, rtol=0)
    e_mu = math.exp(compute_mu(1024, scheduler))
    assert sampler.shift_levels(torch.tensor([0.2], dtype=torch.float64), 1024).item() == pytest.approx(
        e_mu / (e_mu + 4.0), abs=1e-12)


def test_static_shift_and_linear_time_shift() -> None:
    static = TimestepSampler(TimestepConfig(mode="uniform", shift="static", static_shift=3.0))
    assert static.shift_levels(torch.tensor([0.5, 0.25], dtype=torch.float64)).tolist() == [0.75, 0.5]
    linear = TimestepSampler(TimestepConfig(mode="uniform", shift="resolution"),
                             SchedulerConfig(time_shift_type="linear"))
    assert linear.shift_levels(torch.tensor([0.5], dtype=torch.float64), 256).item() == pytest.approx(0.5 / 1.5)


# ---------------------------------------------------------------- timesteps: curriculum and bins


def test_curriculum_bounds() -> None:
    cfg = TimestepConfig(mode="uniform", shift="none", curriculum="high_noise_first", curriculum_steps=100,
                                curriculum_start_width=0.25)
    sampler = TimestepSampler(cfg)
    assert [sampler.curriculum_floor(s) for s in (0, 50, 100, 1000)] == [0.75, 0.375, 0.0, 0.0]
    for step, lo in ((0, 0.75), (50, 0.375)):
        u = sampler.quantiles(4000, step=step, generator=torch.Generator().manual_seed(step))
        assert u.min().item() >= lo and u.max().item() < 1.0
        assert u.min().item() < lo + 0.01  # and the band is used down to its floor
    # stratified strata are squeezed into the band, still disjoint and covering it
    parts = [sampler.quantiles(2, step=0, rank=r, world_size=2, generator=timestep_generator(0, 0, r))
             for r in range(2)]
    cells = ((torch.cat(parts) - 0.75) / 0.25 * 4).floor().long()
    assert sorted(cells.tolist()) == [0, 1, 2, 3]
    # with logit-normal the band maps to the noisiest levels: s >= sigmoid(Phi^-1(0.75))
    noisy = TimestepSampler(TimestepConfig(mode="logit_normal", shift="none", curriculum="high_noise_first",
                                                  curriculum_steps=100, curriculum_start_width=0.25))
    floor = 1 / (1 + math.exp(-math.sqrt(2) * torch.special.erfinv(torch.tensor(0.5, dtype=torch.float64)).item()))
    s = noisy.sample(1000, step=0, generator=torch.Generator().manual_seed(1))
    assert s.min().item() >= floor - 1e-6


def test_loss_bins() -> None:
    s = torch.tensor([0.0, 0.05, 0.1, 0.55, 0.999, 1.0])
    assert loss_bins(s, 10).tolist() == [0, 0, 1, 5, 9, 9]
    assert loss_bins(s, 1).tolist() == [0] * 6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss_bins(torch.tensor([500.0]), 10)


def test_sampler_config_validation() -> None:
    with pytest.raises(ConfigError, match="curriculum_steps"):
        TimestepConfig(curriculum="high_noise_first")
    with pytest.raises(ConfigError, match="logit_std"):
        TimestepConfig(logit_std=0.0)
    with pytest.raises(ConfigError, match="rotate_every"):
        TimestepConfig(rotate_every=0)
    with pytest.raises(ValueError, match="rank"):
        _uniform().sample(2, step=0, rank=2, world_size=2)


# ---------------------------------------------------------------- EMA


class _Net(nn.Module):
    def __init__(self, value: float = 0.0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((2,), value, dtype=dtype))
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def _set(net: _Net, value: float) -> None:
    with torch.no_grad():
        net.w.fill_(value)


def test_ema_hand_computed_sequence() -> None:
    net = _Net(0.0)
    ema = EMA(net, decay=0.5)
    assert set(ema.shadow) == {"w"}  # only trainable parameters by default
    for value, expected in ((1.0, 0.5), (2.0, 1.25), (4.0, 2.625)):  # 0.5 * shadow + 0.5 * param
        _set(net, value)
        assert ema.update(step=ema.n_updates + 1)
        assert ema.shadow["w"].tolist() == [expected, expected]


def test_ema_update_every_and_start_step() -> None:
    net = _Net(0.0)
    ema = EMA(net, decay=0.5, update_every=2, start_step=2)
    _set(net, 8.0)
    assert not ema.update(1) and ema.shadow["w"][0].item() == 0.0  # skipped step
    assert ema.update(2) and ema.shadow["w"][0].item() == 8.0  # before / at start_step: a copy
    _set(net, 4.0)
    assert not ema.update(3)
    assert ema.update(4) and ema.shadow["w"][0].item() == 6.0 and ema.n_updates == 1


def test_ema_power_warmup() -> None:
    # power 1, inv_gamma 1: d_n = n / (n + 1), so the shadow is the running mean of the updates
    net = _Net(0.0)
    ema = EMA(net, decay=0.999, warmup=1.0)
    means = []
    for step, value in enumerate((1.0, 2.0, 6.0, 3.0), start=1):
        _set(net, value)
        ema.update(step)
        means.append(ema.shadow["w"][0].item())
    assert means == pytest.approx([1.0, 1.5, 3.0, 3.0])
    late = EMA(net, decay=0.9, warmup=1.0)
    late.n_updates = 1000
    assert late.current_decay() == 0.9  # capped at decay
    assert EMA(net, decay=0.9999, warmup=2 / 3).current_decay() == 0.0


def test_ema_keeps_bf16_weights_in_float32() -> None:
    net = _Net(1.0, dtype=torch.bfloat16)
    ema = EMA(net, decay=0.9999)
    assert ema.shadow["w"].dtype == torch.float32
    _set(net, 1.0078125)  # the next bf16 value above 1
    ema.update(1)
    # 1 + 7.8e-7: a few float32 ulps, far below bf16's resolution (7.8e-3 at 1), so it would be lost in bf16
    assert ema.shadow["w"][0].item() == pytest.approx(1.0 + 1e-4 * 0.0078125, abs=1.2e-7)
    assert ema.shadow["w"][0].item() > 1.0
    other = _Net(0.0, dtype=torch.bfloat16)
    ema.copy_to(other)
    assert other.w.dtype == torch.bfloat16 and other.w.tolist() == [1.0, 1.0]


def test_ema_store_restore_is_bitwise() -> None:
    net = _Net(0.0)
    ema = EMA(net, decay=0.5)
    _set(net, 1.0 / 3.0)
    ema.update(1)
    before = net.w.detach().clone()
    with ema.swapped():
        assert torch.equal(net.w.detach(), ema.shadow["w"])
    assert torch.equal(net.w.detach(), before)
    ema.store()
    ema.copy_to()
    ema.restore()
    assert torch.equal(net.w.detach(), before)
    with pytest.raises(RuntimeError, match="store"):
        ema.restore()


def test_ema_state_round_trip_is_exact() -> None:
    torch.manual_seed(0)
    net_a, net_b = _Net(0.0), _Net(0.0)
    a = EMA(net_a, decay=0.99, warmup=0.75)
    for step in range(1, 6):
        _set(net_a, torch.rand(()).item())
        a.update(step)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = EMA(net_b, decay=0.99, warmup=0.75)
    b.load_state_dict(torch.load(buffer))
    assert b.n_updates == a.n_updates == 5 and torch.equal(b.shadow["w"], a.shadow["w"])
    for step in range(6, 10):  # resumed and uninterrupted runs stay bitwise equal (the warm-up clock came along)
        value = torch.rand(()).item()
        _set(net_a, value)
        _set(net_b, value)
        a.update(step)
        b.update(step)
        assert torch.equal(a.shadow["w"], b.shadow["w"])


def test_ema_refuses_foreign_state_and_models() -> None:
    ema = EMA(_Net(), decay=0.5)
    everything = EMA(_Net(), decay=0.5, trainable_only=False)
    assert set(everything.shadow) == {"w", "frozen"}
    with pytest.raises(ValueError, match="does not match"):
        ema.load_state_dict(everything.state_dict())
    with pytest.raises(KeyError, match="no parameters named"):
        ema.copy_to(nn.Linear(2, 2))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        EMA(frozen)
    named = EMA({"a": nn.Parameter(torch.zeros(1))}, decay=0.5)
    listed = EMA([nn.Parameter(torch.zeros(1))], decay=0.5)
    assert list(named.shadow) == ["a"] and list(listed.shadow) == ["0"]
