"""Sigma schedules against diffusers' FlowMatchEulerDiscreteScheduler, configured as Qwen-Image ships it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_shift

from firered_core.config import SchedulerConfig
from firered_core.schedule import compute_mu, flow_sigmas, flow_timesteps

# Qwen-Image's scheduler/scheduler_config.json, written out here so a wrong default in SchedulerConfig shows up.
QWEN_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    invert_sigmas=False, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
    stochastic_sampling=False,
)

# (height, width) -> target tokens (H/16)*(W/16)
SIZES = [(256, 256), (512, 768), (1024, 1024), (1328, 800)]
STEPS = [2, 4, 8, 40, 50]


def _reference(config: dict, num_steps: int, seq_len: int, sigmas: list[float] | None = None):
    """sigmas and timesteps as QwenImageEditPlusPipeline makes the scheduler produce them."""
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    mu = None
    if config["use_dynamic_shifting"]:
        mu = calculate_shift(seq_len, config["base_image_seq_len"], config["max_image_seq_len"],
                             config["base_shift"], config["max_shift"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's 0/0 in the 1-step case
        scheduler.set_timesteps(num_steps, sigmas=sigmas, mu=mu)
    return scheduler.sigmas, scheduler.timesteps


def _assert_same(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= 1e-7
    assert torch.equal(ours, ref), "expected bitwise equality with the reference"


def test_defaults_are_qwen_image_scheduler() -> None:
    assert SchedulerConfig().to_dict() | {"_class_name": None} == QWEN_SCHEDULER | {"_class_name": None}


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("num_steps", STEPS)
def test_sigmas_and_timesteps_match_reference(height: int, width: int, num_steps: int) -> None:
    seq_len = (height // 16) * (width // 16)
    config = SchedulerConfig()
    ref_sigmas, ref_timesteps = _reference(QWEN_SCHEDULER, num_steps, seq_len)
    sigmas = flow_sigmas(num_steps, seq_len, config)
    _assert_same(sigmas, ref_sigmas)
    _assert_same(flow_timesteps(sigmas, config), ref_timesteps)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert sigmas[-2].item() == pytest.approx(0.02, abs=1e-6)  # shift_terminal
    assert bool((sigmas[1:] < sigmas[:-1]).all())


@pytest.mark.parametrize("seq_len", [1, 256, 1536, 4096, 4150, 8192, 20000])
def test_mu_matches_calculate_shift(seq_len: int) -> None:
    ref = calculate_shift(seq_len, 256, 8192, 0.5, 0.9)
    assert compute_mu(seq_len, SchedulerConfig()) == ref


def test_mu_hand_values() -> None:
    config = SchedulerConfig()
    assert compute_mu(256, config) == pytest.approx(0.5, abs=1e-12)
    assert compute_mu(8192, config) == pytest.approx(0.9, abs=1e-12)
    assert compute_mu(4224, config) == pytest.approx(0.7, abs=1e-12)  # midpoint


@pytest.mark.parametrize("num_steps", [2, 8, 40])
@pytest.mark.parametrize("seq_len", [256, 4150])
def test_linear_time_shift(num_steps: int, seq_len: int) -> None:
    ref_config = QWEN_SCHEDULER | {"time_shift_type": "linear"}
    ref_sigmas, ref_timesteps = _reference(ref_config, num_steps, seq_len)
    config = SchedulerConfig(time_shift_type="linear")
    sigmas = flow_sigmas(num_steps, seq_len, config)
    _assert_same(sigmas, ref_sigmas)
    _assert_same(flow_timesteps(sigmas, config), ref_timesteps)


# 1.15 and 0.3 are not exact in float32, so forming (shift - 1) in float32 instead of float64 would show
@pytest.mark.parametrize("shift,terminal", [(3.0, None), (1.0, None), (2.5, 0.1), (1.15, None), (0.3, 0.02)])
def test_static_shift(shift: float, terminal: float | None) -> None:
    ref_config = QWEN_SCHEDULER | {"use_dynamic_shifting": False, "shift": shift, "shift_terminal": terminal}
    ref_sigmas, _ = _reference(ref_config, 28, 4096)
    config = SchedulerConfig(use_dynamic_shifting=False, shift=shift, shift_terminal=terminal)
    _assert_same(flow_sigmas(28, 4096, config), ref_sigmas)


def test_sweep_of_step_counts_and_sizes() -> None:
    # a wider net than the named cases: every step count up to 64 at token counts from tiny to past the maximum
    config = SchedulerConfig()
    for seq_len in (16, 255, 1024, 3600, 6889, 9000):
        for num_steps in range(2, 65):
            ref_sigmas, _ = _reference(QWEN_SCHEDULER, num_steps, seq_len)
            assert torch.equal(flow_sigmas(num_steps, seq_len, config), ref_sigmas), (seq_len, num_steps)


def test_no_terminal_stretch_hand_values() -> None:
    # mu = 0 makes the exponential shift the identity: sigmas are plain linspace(1, 1/N, N) then 0
    config = SchedulerConfig(shift_terminal=None, base_shift=0.0, max_shift=0.0)
    sigmas = flow_sigmas(4, 1000, config)
    assert torch.equal(sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_custom_sigmas() -> None:
    custom = [1.0, 0.9, 0.7, 0.4, 0.2]
    ref_sigmas, ref_timesteps = _reference(QWEN_SCHEDULER, 5, 1536, sigmas=custom)
    config = SchedulerConfig()
    sigmas = flow_sigmas(5, 1536, config, custom_sigmas=custom)
    _assert_same(sigmas, ref_sigmas)
    _assert_same(flow_timesteps(sigmas, config), ref_timesteps)


def test_single_step_is_noise_to_data() -> None:
    # the reference divides 0 by 0 here; we document and return the one sensible schedule instead
    ref_sigmas, _ = _reference(QWEN_SCHEDULER, 1, 4096)
    assert torch.isnan(ref_sigmas[0])
    assert torch.equal(flow_sigmas(1, 4096, SchedulerConfig()), torch.tensor([1.0, 0.0]))
    unstretched = SchedulerConfig(shift_terminal=None)
    _assert_same(flow_sigmas(1, 4096, unstretched), _reference(QWEN_SCHEDULER | {"shift_terminal": None}, 1, 4096)[0])


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_bad_step_count_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(bad, 256, SchedulerConfig())  # type: ignore[arg-type]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="custom_sigmas has 2 entries"):
        flow_sigmas(3, 256, SchedulerConfig(), custom_sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_sigmas(2, 256, SchedulerConfig(), custom_sigmas=[1.5, 0.5])
    with pytest.raises(ValueError, match="image_seq_len"):
        compute_mu(0, SchedulerConfig())
    with pytest.raises(ValueError, match="num_steps \\+ 1"):
        flow_timesteps(torch.tensor([1.0]), SchedulerConfig())
