"""DiffusionNFT (``objectives.nft``, ``loop.policy_samples``): rewards to optimality by hand, the loss by hand and
against an independent flow-matching loss, the direction of its gradients, the old policy's schedule and update,
and the old policy's sampler on a tiny random FireRed transformer (seeded, independent of batch composition)."""

from __future__ import annotations

import math

import pytest
import torch

from firered_core.config import ConfigError, SchedulerConfig
from firered_core.latents import pack_latents
from firered_core.sampler import euler_sample
from firered_core.schedule import flow_sigmas
from firered_core.transformer import FireRedTransformer
from firered_train.loop.batch import TrainBatch
from firered_train.loop.policy_samples import sample_policy
from firered_train.loop.step import pack_batch, seeded_noise, velocity
from firered_train.objectives import (NFT_PRESETS, NFTConfig, group_advantages, nft_loss, old_policy_decay,
                                      per_sample_flow_loss, update_old_policy)

from tests.node_fixtures import TINY, randomise


def _t(*rows: list[float] | float) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- rewards -> r


def test_group_advantages_by_hand_with_clip_and_a_zero_std_group() -> None:
    # row 0: mean 1, population std sqrt(3); A = (-1, -1, -1, 3) / sqrt(3) = (-0.577, .., 1.732); c = 1 clips 1.732
    # row 1: all equal -> r = 0.5; row 2: mean 2.5, std 0.5, A = (-1, 1, -1, 1) -> r = 0, 1, 0, 1 exactly at c = 1
    rewards = _t([0, 0, 0, 4], [7, 7, 7, 7], [2, 3, 2, 3])
    r = group_advantages(rewards, NFTConfig(adv_clip=1.0, std_eps=0.0))
    low = -1 / math.sqrt(3) / 2 + 0.5  # 0.2113
    expected = torch.tensor([[low, low, low, 1.0], [0.5] * 4, [0.0, 1.0, 0.0, 1.0]])
    assert r.dtype == torch.float32
    assert torch.allclose(r, expected, atol=1e-6, rtol=0)


def test_group_advantages_default_clip_of_five() -> None:
    # 29 zeros and a one: mean 1/30, std sqrt(29)/30; the one has A = sqrt(29) = 5.39 > 5 -> clipped -> r = 1;
    # each zero has A = -1/sqrt(29) -> r = 0.5 - 1/(10 sqrt(29)) = 0.48143
    rewards = torch.zeros(1, 30, dtype=torch.float64)
    rewards[0, 3] = 1.0
    r = group_advantages(rewards, NFTConfig(std_eps=0.0))
    assert r[0, 3].item() == 1.0
    others = torch.cat([r[0, :3], r[0, 4:]])
    assert torch.allclose(others, torch.full((29,), 0.5 - 1 / (10 * math.sqrt(29))), atol=1e-6, rtol=0)
    # the reference's + 1e-4 on the std (the default) moves it by about 1e-4 / std relative
    eps_r = group_advantages(rewards)
    assert abs(eps_r[0, 0].item() - (0.5 - (1 / 30) / (math.sqrt(29) / 30 + 1e-4) / 10)) < 1e-6


def test_group_advantages_refuses_bad_shapes_and_nan() -> None:
    with pytest.raises(ValueError, match=r"\[G prompts, K samples\]"):
        group_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([[1.0, float("nan")]]))


# ---------------------------------------------------------------- the loss by hand


def _hand_case() -> dict[str, torch.Tensor]:
    # one sample, two elements, t = 0.5: x0 = (1, 0), eps = (0, 2) -> x_t = (0.5, 1), v = eps - x0 = (-1, 2)
    x0, eps = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    return {"v_theta": torch.tensor([[[0.0, 2.0]]]), "v_old": torch.tensor([[[-1.0, 1.0]]]),
            "v_ref": torch.tensor([[[0.0, 0.0]]]), "x_t": 0.5 * x0 + 0.5 * eps, "t": torch.tensor([0.5]),
            "x0": x0, "eps": eps, "r": torch.tensor([0.75])}


@pytest.mark.parametrize("beta, positive, negative, policy", [
    # b = 1: v+ = v_theta = (0, 2), v- = 2 v_old - v_theta = (-2, 0)
    #   x0+ = x_t - 0.5 v+ = (0.5, 0), error (-0.5, 0), w = 0.25, L+ = mean(0.25, 0) / 0.25 = 0.5
    #   x0- = (1.5, 1), error (0.5, 1), w = 0.75, L- = mean(0.25, 1) / 0.75 = 0.8333
    #   policy = 5 / 1 * (0.75 * 0.5 + 0.25 * 0.8333) = 2.916667
    (1.0, 0.5, 0.625 / 0.75, 5.0 * (0.75 * 0.5 + 0.25 * 0.625 / 0.75)),
    # b = 0.5: v+ = 0.5 v_old + 0.5 v_theta = (-0.5, 1.5), v- = 1.5 v_old - 0.5 v_theta = (-1.5, 0.5)
    #   x0+ = (0.75, 0.25), error (-0.25, 0.25), w = 0.25, L+ = 0.0625 / 0.25 = 0.25
    #   x0- = (1.25, 0.75), error (0.25, 0.75), w = 0.5, L- = mean(0.0625, 0.5625) / 0.5 = 0.625
    #   policy = 5 / 0.5 * (0.75 * 0.25 + 0.25 * 0.625) = 3.4375
    (0.5, 0.25, 0.625, 3.4375),
])
def test_nft_loss_by_hand(beta: float, positive: float, negative: float, policy: float) -> None:
    config = NFTConfig(beta=beta, kl_weight=0.01)
    terms = nft_loss(**_hand_case(), config=config)
    kl = 2.0  # mean((0 - 0)^2, (2 - 0)^2)
    assert terms.positive.item() == pytest.approx(positive, rel=1e-6)
    assert terms.negative.item() == pytest.approx(negative, rel=1e-6)
    assert terms.policy.item() == pytest.approx(policy, rel=1e-6)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-6)
    assert terms.loss.item() == pytest.approx(policy + 0.01 * kl, rel=1e-6)
    assert terms.mean_r.item() == 0.75
    assert terms.old_deviation.item() == pytest.approx(1.0)  # mean((0 + 1)^2, (2 - 1)^2)
    assert terms.flow_mse.item() == pytest.approx(0.5)  # mean((0 + 1)^2, (2 - 2)^2)


def _random_case(seed: int, batch: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(batch, 6, 4, generator=g), torch.randn(batch, 6, 4, generator=g)
    t = torch.rand(batch, generator=g) * 0.8 + 0.1
    x_t = (1 - t.reshape(-1, 1, 1)) * x0 + t.reshape(-1, 1, 1) * eps
    return {"v_theta": torch.randn(batch, 6, 4, generator=g), "v_old": torch.randn(batch, 6, 4, generator=g),
            "v_ref": torch.randn(batch, 6, 4, generator=g), "x_t": x_t, "t": t, "x0": x0, "eps": eps,
            "r": torch.ones(batch)}


def test_r_one_and_beta_one_is_the_x0_weighted_flow_matching_loss() -> None:
    case = _random_case(0)
    x0, eps, t, v_theta = case["x0"], case["eps"], case["t"], case["v_theta"]
    config = NFTConfig(kl_weight=0.0)
    terms = nft_loss(**case, config=config)
    # independently: the x0 error is t (v - v_theta) per element, v = eps - x0; weight = its mean absolute value
    error = t.reshape(-1, 1, 1) * ((eps - x0) - v_theta)
    per_sample = (error**2).mean(dim=(1, 2)) / error.abs().mean(dim=(1, 2))
    assert terms.policy.item() == pytest.approx(5.0 * per_sample.mean().item(), rel=1e-5)
    # without the adaptive weight: t^2 times the plain velocity MSE (the project's own flow loss), times c / b = 5
    plain = nft_loss(**case, config=NFTConfig(kl_weight=0.0, adaptive_weight=False))
    mse = per_sample_flow_loss(v_theta, eps - x0, outlier_threshold=None)
    assert plain.policy.item() == pytest.approx(5.0 * (t**2 * mse).mean().item(), rel=1e-5)
    # v_old plays no part when b = 1 and r = 1
    other_old = nft_loss(**{**case, "v_old": torch.zeros_like(x0)}, config=config)
    assert other_old.policy.item() == pytest.approx(terms.policy.item(), rel=1e-6)


def test_kl_term_is_the_weighted_velocity_distance_to_the_reference() -> None:
    case = _random_case(1)
    with_kl = nft_loss(**case, config=NFTConfig(kl_weight=0.5))
    without = nft_loss(**case, config=NFTConfig(kl_weight=0.0))
    kl = ((case["v_theta"] - case["v_ref"]) ** 2).mean()
    assert with_kl.kl.item() == pytest.approx(kl.item(), rel=1e-6)
    assert (with_kl.loss - without.loss).item() == pytest.approx(0.5 * kl.item(), rel=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("r, towards", [(1.0, True), (0.0, False)])
@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_r_one_pulls_v_theta_towards_v_and_r_zero_pushes_it_away(r: float, towards: bool, beta: float) -> None:
    case = _random_case(2)
    case["v_old"] = case["v_theta"].clone()  # the first step after an old-policy copy
    case["r"] = torch.full((3,), r)
    v_theta = case.pop("v_theta").clone().requires_grad_()
    nft_loss(v_theta, **case, config=NFTConfig(beta=beta, kl_weight=0.0)).loss.backward()
    assert v_theta.grad is not None
    step = -v_theta.grad  # the descent direction
    to_v = (case["eps"] - case["x0"]) - v_theta.detach()
    # the weight is a positive scalar per sample, so the direction holds element by element
    agree = torch.sign(step) == torch.sign(to_v)
    assert bool(agree.all()) if towards else not bool(agree.any())
    assert case["v_ref"].grad is None and case["v_old"].grad is None


def test_gradient_does_not_flow_through_the_adaptive_weight() -> None:
    # one sample, b = 1, r = 1: loss = 5 mean(e^2) / w with e = t (v - v_theta) and w fixed, so
    # d loss / d v_theta = 5 * 2 e * (-t) / (n w)
    case = _random_case(3, batch=1)
    v_theta = case.pop("v_theta").clone().requires_grad_()
    nft_loss(v_theta, **case, config=NFTConfig(kl_weight=0.0)).loss.backward()
    t = case["t"].item()
    e = t * ((case["eps"] - case["x0"]) - v_theta.detach())
    expected = 5.0 * 2 * e * (-t) / (e.numel() * e.abs().mean())
    assert torch.allclose(v_theta.grad, expected, rtol=1e-5, atol=1e-7)


def test_nft_loss_refuses_mismatched_inputs_and_r_outside_the_unit_interval() -> None:
    case = _random_case(4)
    with pytest.raises(ValueError, match="one shape"):
        nft_loss(**{**case, "v_old": torch.zeros(3, 6, 5)})
    with pytest.raises(ValueError, match=r"t must be per sample"):
        nft_loss(**{**case, "t": torch.ones(2)})
    with pytest.raises(ValueError, match=r"r must lie in \[0, 1\]"):
        nft_loss(**{**case, "r": torch.tensor([0.5, 1.5, 0.0])})


# ---------------------------------------------------------------- the old policy


def test_old_policy_decay_schedules_by_hand() -> None:
    default = NFTConfig()  # 0.001 / 0 / 0.5
    assert [old_policy_decay(s, default) for s in (0, 1, 100, 499, 500, 2000)] == pytest.approx(
        [0.0, 0.001, 0.1, 0.499, 0.5, 0.5])
    ocr = NFT_PRESETS["ocr"]  # 0.0075 / 75 / 0.999
    assert [old_policy_decay(s, ocr) for s in (0, 75, 76, 100, 208, 209, 10_000)] == pytest.approx(
        [0.0, 0.0, 0.0075, 0.1875, 0.9975, 0.999, 0.999])
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        old_policy_decay(-1)


def test_update_old_policy_is_the_formula_in_place() -> None:
    g = torch.Generator().manual_seed(5)
    old = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    new = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    before = [o.clone() for o in old]
    storage = [o.data_ptr() for o in old]
    update_old_policy(old, new, 0.25)
    for o, b, n, ptr in zip(old, before, new, storage):
        assert o.data_ptr() == ptr
        exact = 0.25 * b.double() + 0.75 * n.double()
        assert torch.allclose(o.double(), exact, rtol=0, atol=2.5e-7)  # about one float32 step at |x| < 2
    update_old_policy(old, new, 0.0)  # d = 0: the old policy becomes the trained one, exactly
    assert all(torch.equal(o, n) for o, n in zip(old, new))


def test_update_old_policy_in_float32_for_a_parameter_and_refuses_mismatches() -> None:
    old = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    update_old_policy([old], [torch.ones(4, dtype=torch.bfloat16)], 0.999)
    assert torch.allclose(old.detach(), torch.full((4,), 0.001, dtype=torch.float64), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="1 old tensors but 2"):
        update_old_policy([old], [old, old], 0.5)
    with pytest.raises(ValueError, match="shape"):
        update_old_policy([old], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\]"):
        update_old_policy([old], [old], 1.5)


@pytest.mark.parametrize("kwargs, field", [
    ({"beta": 0.0}, "beta"), ({"beta": 1.5}, "beta"), ({"beta": float("nan")}, "beta"),
    ({"kl_weight": -1e-4}, "kl_weight"), ({"adv_clip": 0.0}, "adv_clip"), ({"std_eps": -1.0}, "std_eps"),
    ({"decay_rate": -0.1}, "decay_rate"), ({"decay_cap": 1.0}, "decay_cap"), ({"decay_flat": -1}, "decay_flat"),
    ({"decay_flat": 7.5}, "decay_flat"), ({"adaptive_weight": 1}, "adaptive_weight"), ({"beta": True}, "beta"),
])
def test_config_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}: "):
        NFTConfig(**kwargs)


# ---------------------------------------------------------------- the old policy's samples

PATCH = 2
SCHEDULER = SchedulerConfig()


def _model() -> FireRedTransformer:
    torch.manual_seed(0)
    return randomise(FireRedTransformer(TINY.transformer), 3)


def _prompts(indices: tuple[int, ...], lengths: tuple[int, ...]) -> TrainBatch:
    """Prompts with a source image each; record ``i`` always has the same source and condition (seeded by ``i``)."""
    from firered_train.loop.batch import pad_conditions

    dim = TINY.transformer.joint_attention_dim
    sources, rows = [], []
    for i, length in zip(indices, lengths):
        g = torch.Generator().manual_seed(100 + i)
        sources.append(torch.randn(4, 4, 4, generator=g))
        rows.append(torch.randn(length, dim, generator=g))
    embeds, mask = pad_conditions(rows)
    return TrainBatch(step=9, indices=indices, ids=tuple(f"r{i}" for i in indices),
                      target=torch.zeros(len(indices), 4, 4, 6), sources=(torch.stack(sources),), embeds=embeds,
                      mask=mask, languages=("en",) * len(indices))


def test_policy_samples_are_seeded_and_independent_of_the_other_prompts() -> None:
    model = _model()
    both = sample_policy(model, _prompts((4, 7), (5, 3)), group_size=3, steps=3, scheduler=SCHEDULER, seed=11,
                         step=2, patch=PATCH)
    alone = sample_policy(model, _prompts((7,), (3,)), group_size=3, steps=3, scheduler=SCHEDULER, seed=11, step=2,
                          patch=PATCH)
    again = sample_policy(model, _prompts((4, 7), (5, 3)), group_size=3, steps=3, scheduler=SCHEDULER, seed=11,
                          step=2, patch=PATCH)
    assert both.latents.shape == (2, 3, 4, 4, 6) and both.group_size == 3 and both.prompts == (4, 7)
    assert torch.equal(both.latents, again.latents)
    assert torch.equal(both.latents[1], alone.latents[0])  # prompt 7 with or without prompt 4, padded or not
    assert not torch.allclose(both.latents[1, 0], both.latents[1, 1])  # the K samples differ
    later = sample_policy(model, _prompts((7,), (3,)), group_size=3, steps=3, scheduler=SCHEDULER, seed=11, step=3,
                          patch=PATCH)
    assert not torch.allclose(later.latents, alone.latents)  # another training step, other noise
    assert model.training  # the training mode is restored


def test_policy_samples_are_euler_without_cfg_from_the_keyed_noise() -> None:
    from firered_core.latents import unpack_latents
    from firered_train.scale.distributed import step_seed

    model = _model().eval()
    prompts = _prompts((5,), (4,))
    out = sample_policy(model, prompts, group_size=2, steps=4, scheduler=SCHEDULER, seed=1, step=0, patch=PATCH)
    sigmas = flow_sigmas(4, 6, SCHEDULER)  # 4 x 6 latents, patch 2 -> 6 tokens
    assert torch.equal(out.sigmas, sigmas)
    # sample 1 of record 5, by hand from its key, through the core sampler on a batch of one
    g = torch.Generator().manual_seed(step_seed(1, "nft-sample", 0, 5, 1))
    x = pack_latents(torch.randn(1, 4, 4, 6, generator=g), PATCH)
    row = TrainBatch(step=9, indices=(5,), ids=("r5",), target=torch.zeros(1, 4, 4, 6),
                     sources=(prompts.sources[0],), embeds=prompts.embeds, mask=None, languages=("en",))
    packed = pack_batch(row, PATCH)
    with torch.no_grad():
        tokens = euler_sample(lambda x_t, t: velocity(model, x_t, packed, row, t), x, sigmas)
    expected = unpack_latents(tokens, 32, 48, 8, PATCH)[0]
    assert torch.allclose(out.latents[0, 1], expected, atol=1e-5, rtol=0)


def test_policy_samples_batch_is_what_the_loss_pass_needs() -> None:
    model = _model()
    prompts = _prompts((2, 6), (5, 3))
    out = sample_policy(model, prompts, group_size=2, steps=2, scheduler=SCHEDULER, seed=0, step=1, patch=PATCH)
    batch = out.batch
    assert batch.size == 4 and batch.indices == (4, 5, 12, 13) and batch.ids == ("r2", "r2", "r6", "r6")
    assert torch.equal(batch.target, out.latents.flatten(0, 1))
    assert torch.equal(batch.sources[0][2], prompts.sources[0][1]) and torch.equal(batch.sources[0][1],
                                                                                   prompts.sources[0][0])
    assert batch.mask is not None and batch.mask.sum(1).tolist() == [5, 5, 3, 3]
    assert torch.equal(batch.embeds, prompts.embeds.repeat_interleave(2, dim=0))
    noise = seeded_noise(batch, 0, PATCH)  # every row gets its own training noise
    assert not torch.allclose(noise[0], noise[1])
    with pytest.raises(ValueError, match="group_size"):
        sample_policy(model, prompts, group_size=0, steps=2, scheduler=SCHEDULER, seed=0, step=1, patch=PATCH)
