"""Latent packing, seeded noise, CFG and the Euler loop against QwenImageEditPlusPipeline and its scheduler."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

from firered_core.config import SchedulerConfig
from firered_core.latents import pack_latents, token_grid, unpack_latents
from firered_core.progress import Cancelled, tqdm_progress
from firered_core.sampler import cfg_combine, euler_sample, initial_noise, stochastic_step
from firered_core.schedule import compute_mu, flow_sigmas

Pipe = QwenImageEditPlusPipeline


# ---------------------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b,c,h,w", [(1, 16, 4, 6), (2, 4, 8, 2), (3, 16, 10, 12)])
def test_pack_matches_pipeline(b: int, c: int, h: int, w: int) -> None:
    z = torch.randn(b, c, h, w)
    ref = Pipe._pack_latents(z.unsqueeze(2), b, c, h, w)
    ours = pack_latents(z)
    assert ours.shape == (b, (h // 2) * (w // 2), c * 4)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("height,width", [(64, 96), (128, 32), (160, 176)])
def test_unpack_matches_pipeline_and_round_trips(height: int, width: int) -> None:
    gh, gw = token_grid(height, width)
    tokens = torch.randn(2, gh * gw, 64)
    ref = Pipe._unpack_latents(tokens, height, width, 8)  # [B, C, 1, H, W]
    ours = unpack_latents(tokens, height, width)
    assert ours.shape == (2, 16, height // 8, width // 8)
    assert torch.equal(ours, ref.squeeze(2))
    assert torch.equal(pack_latents(ours), tokens)


def test_pack_order_hand_computed() -> None:
    # one channel-major token: features are (c0: tl, tr, bl, br), (c1: tl, tr, bl, br)
    z = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert pack_latents(z).tolist() == [[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]]
    # two tokens side by side: the second token starts at column 2
    z = torch.arange(8.0).reshape(1, 1, 2, 4)
    assert pack_latents(z).tolist() == [[[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0]]]


def test_token_grid_and_size_errors() -> None:
    assert token_grid(1024, 768) == (64, 48)
    assert token_grid(1328, 800) == (83, 50)
    assert token_grid(32, 16, compression=4, patch=2) == (4, 2)
    with pytest.raises(ValueError, match="height_px=1000"):
        token_grid(1000, 768)
    with pytest.raises(ValueError, match="width_px=0"):
        token_grid(64, 0)
    with pytest.raises(ValueError, match="multiples of patch"):
        pack_latents(torch.zeros(1, 16, 5, 4))
    with pytest.raises(ValueError, match="4 tokens do not fit"):
        unpack_latents(torch.zeros(1, 4, 64), 64, 64)
    with pytest.raises(ValueError, match="B, C, H, W"):
        pack_latents(torch.zeros(16, 4, 4))


# ---------------------------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,height,width,seed", [(1, 256, 256, 43), (2, 128, 384, 0), (1, 1328, 800, 2**40)])
def test_initial_noise_matches_prepare_latents(dtype: torch.dtype, batch: int, height: int, width: int, seed: int) -> None:
    pipe = Pipe.__new__(Pipe)  # prepare_latents without images needs only the VAE scale factor
    pipe.vae_scale_factor = 8
    generator = torch.Generator().manual_seed(seed)
    ref, _ = pipe.prepare_latents(None, batch, 16, height, width, dtype, torch.device("cpu"), generator)
    ours = initial_noise((batch, 16, height // 8, width // 8), seed, dtype=dtype)
    assert ours.dtype == dtype
    assert torch.equal(ours, ref)


def test_initial_noise_depends_on_seed_only() -> None:
    torch.manual_seed(123)  # the global RNG must not matter
    a = initial_noise((1, 16, 8, 8), 7)
    torch.manual_seed(456)
    assert torch.equal(a, initial_noise((1, 16, 8, 8), 7))
    assert not torch.equal(a, initial_noise((1, 16, 8, 8), 8))
    with pytest.raises(ValueError, match="seed"):
        initial_noise((1, 16, 8, 8), -1)
    with pytest.raises(ValueError, match="latent_shape"):
        initial_noise((16, 8, 8), 1)


# ---------------------------------------------------------------------------------------------------------------
# CFG
# ---------------------------------------------------------------------------------------------------------------


def test_cfg_combine_hand_computed() -> None:
    cond = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # norms 5 and 2
    uncond = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    out = cfg_combine(cond, uncond, 2.0)
    # token 0: 1 + 2*(3-1) = 5, 0 + 2*(4-0) = 8 -> rescaled to norm 5
    # token 1: 0, 1 + 2*(2-1) = 3 -> rescaled to norm 2
    expected = torch.tensor([[[5.0 * 5 / math.sqrt(89), 8.0 * 5 / math.sqrt(89)], [0.0, 2.0]]])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.linalg.vector_norm(out, dim=-1), torch.linalg.vector_norm(cond, dim=-1))
    # scale 1 returns cond itself (up to rounding)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)


# ---------------------------------------------------------------------------------------------------------------
# Euler loop vs the reference scheduler
# ---------------------------------------------------------------------------------------------------------------


def _toy(weight: float, bias: float):
    """A velocity that depends on both x and t, in x's dtype, like a real model's output."""
    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype)
        return weight * x + (bias + t.to(x.dtype)[:, None, None]) * ramp - 0.3 * t[:, None, None].to(x.dtype) * x
    return fn


def _reference_loop(x, num_steps, seq_len, cond_fn, uncond_fn, scale, generator=None):
    """The denoising loop of QwenImageEditPlusPipeline.__call__ with the transformer replaced by toy functions;
    a ``generator`` turns on the scheduler's stochastic sampling and feeds it."""
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256,
        max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
        stochastic_sampling=generator is not None)
    mu = calculate_shift(seq_len, 256, 8192, 0.5, 0.9)
    scheduler.set_timesteps(num_steps, sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
    scheduler.set_begin_index(0)
    latents = x
    for t in scheduler.timesteps:
        timestep = t.expand(latents.shape[0]).to(latents.dtype)
        noise_pred = cond_fn(latents, timestep / 1000)
        if uncond_fn is not None and scale > 1:
            neg = uncond_fn(latents, timestep / 1000)
            comb = neg + scale * (noise_pred - neg)
            noise_pred = comb * (torch.norm(noise_pred, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        latents = scheduler.step(noise_pred, t, latents, return_dict=False, generator=generator)[0]
    return latents


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_steps,scale,negative", [(8, 4.0, True), (5, 1.0, True), (4, 4.0, False), (40, 2.5, True)])
def test_euler_sample_matches_scheduler(dtype: torch.dtype, num_steps: int, scale: float, negative: bool) -> None:
    seq_len = 24
    x = initial_noise((2, 16, 4, 24), 43, dtype=dtype)
    cond, uncond = _toy(-0.8, 0.2), (_toy(-0.5, -0.1) if negative else None)
    ref = _reference_loop(x.clone(), num_steps, seq_len, cond, uncond, scale)
    sigmas = flow_sigmas(num_steps, seq_len, SchedulerConfig())
    ours = euler_sample(cond, x.clone(), sigmas, predict_negative=uncond, cfg_scale=scale)
    assert ours.dtype == dtype
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_steps,scale", [(8, 1.0), (20, 3.0)])
def test_stochastic_sample_matches_scheduler(dtype: torch.dtype, num_steps: int, scale: float) -> None:
    # the reference's stochastic_sampling with the same seeded CPU generator feeding its step noise
    x = initial_noise((1, 16, 4, 24), 7, dtype=dtype)
    cond, uncond = _toy(-0.8, 0.2), _toy(-0.5, -0.1)
    ref = _reference_loop(x.clone(), num_steps, 24, cond, uncond, scale, generator=torch.Generator().manual_seed(5))
    sigmas = flow_sigmas(num_steps, 24, SchedulerConfig(stochastic_sampling=True))
    ours = euler_sample(cond, x.clone(), sigmas, predict_negative=uncond, cfg_scale=scale,
                        step_noise=torch.Generator().manual_seed(5))
    assert ours.dtype == dtype and torch.equal(ours, ref)
    euler = euler_sample(cond, x.clone(), sigmas, predict_negative=uncond, cfg_scale=scale)
    assert not torch.allclose(ours, euler)  # the re-noising really changes the path
    other = euler_sample(cond, x.clone(), sigmas, predict_negative=uncond, cfg_scale=scale,
                         step_noise=torch.Generator().manual_seed(6))
    assert not torch.equal(ours, other)


def test_stochastic_step_hand_computed() -> None:
    # x0 = x - s v, then (1 - s_next) x0 + s_next * noise; at s_next = 0 the noise drops out exactly
    x, v = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.5, -1.0]]])
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((1, 1, 2), generator=torch.Generator().manual_seed(0))
    out = stochastic_step(x, v, torch.tensor(0.5), torch.tensor(0.25), gen)
    torch.testing.assert_close(out, 0.75 * torch.tensor([[[0.75, 2.5]]]) + 0.25 * noise)
    last = stochastic_step(x, v, torch.tensor(0.5), torch.tensor(0.0), torch.Generator().manual_seed(1))
    torch.testing.assert_close(last, torch.tensor([[[0.75, 2.5]]]))


def test_euler_step_hand_computed() -> None:
    # constant velocity v = eps - x0 carries x_1 = eps exactly to x_0 = x0 along any schedule
    x0, eps = torch.tensor([[[2.0, -1.0]]]), torch.tensor([[[0.5, 0.5]]])
    sigmas = torch.tensor([1.0, 0.75, 0.25, 0.0])
    seen: list[float] = []

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.item())
        return eps - x0

    out = euler_sample(velocity, eps.clone(), sigmas)
    torch.testing.assert_close(out, x0)
    assert seen == [1.0, 0.75, 0.25]


def test_negative_pass_only_with_guidance() -> None:
    calls = {"neg": 0}

    def negative(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls["neg"] += 1
        return torch.zeros_like(x)

    sigmas = flow_sigmas(3, 256, SchedulerConfig())
    euler_sample(_toy(-1.0, 0.0), torch.ones(1, 4, 8), sigmas, predict_negative=negative, cfg_scale=1.0)
    assert calls["neg"] == 0
    euler_sample(_toy(-1.0, 0.0), torch.ones(1, 4, 8), sigmas, predict_negative=negative, cfg_scale=3.0)
    assert calls["neg"] == 3


def test_progress_and_cancel() -> None:
    sigmas = flow_sigmas(6, 256, SchedulerConfig())
    reports: list[tuple[int, int]] = []
    out = euler_sample(_toy(-1.0, 0.0), torch.ones(1, 4, 8), sigmas,
                       progress=lambda i, n, x: reports.append((i, n)))
    assert reports == [(i, 6) for i in range(1, 7)]

    model_calls: list[float] = []
    polls = {"n": 0}

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model_calls.append(t.item())
        return -x

    def cancel_after_two() -> bool:
        polls["n"] += 1
        return polls["n"] > 2

    reports.clear()
    with pytest.raises(Cancelled, match="before step 3/6"):
        euler_sample(model, torch.ones(1, 4, 8), sigmas, cancel=cancel_after_two,
                     progress=lambda i, n, x: reports.append((i, n)))
    assert len(model_calls) == 2 and reports == [(1, 6), (2, 6)]
    assert out.shape == (1, 4, 8)


def test_model_output_shape_is_checked() -> None:
    sigmas = flow_sigmas(2, 256, SchedulerConfig())
    with pytest.raises(ValueError, match="target tokens only"):
        euler_sample(lambda x, t: torch.cat([x, x], dim=1), torch.ones(1, 4, 8), sigmas)


def test_tqdm_progress_reports_absolute_steps() -> None:
    sink = io.StringIO()
    with tqdm_progress("sampling", file=sink, mininterval=0) as report:
        for i in range(1, 5):
            report(i, 4, None)
        report(4, 4, None)  # a repeated report must not overshoot
        report(1, 2, None)  # a second phase with its own total restarts the bar
    text = sink.getvalue()
    assert "sampling" in text and "4/4" in text and "5/4" not in text
    assert "1/2" in text.rsplit("4/4", 1)[-1] and "5/2" not in text


def test_mu_used_by_sampler_tests_is_the_pipeline_one() -> None:
    assert compute_mu(24, SchedulerConfig()) == calculate_shift(24, 256, 8192, 0.5, 0.9)


def test_stochastic_step_with_a_generator_per_row_draws_each_row_as_if_alone() -> None:
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    v = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(1))
    sigma, nxt = torch.tensor(0.6), torch.tensor(0.3)
    batch = stochastic_step(x, v, sigma, nxt, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for row, seed in enumerate((5, 6, 7)):
        alone = stochastic_step(x[row:row + 1], v[row:row + 1], sigma, nxt, torch.Generator().manual_seed(seed))
        assert torch.equal(batch[row:row + 1], alone)
    shared = stochastic_step(x, v, sigma, nxt, torch.Generator().manual_seed(5))
    assert torch.equal(shared[:1], batch[:1]) and not torch.equal(shared[1:], batch[1:])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        stochastic_step(x, v, sigma, nxt, [torch.Generator(), torch.Generator()])
