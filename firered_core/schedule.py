"""Flow-matching noise levels (sigmas) for sampling, bit-identical to the reference scheduler.

Convention (shared by the whole project): ``x_s = (1 - s) x0 + s eps``, ``s = 1`` is pure noise, sampling walks
``s`` from 1 down to 0. A schedule of ``N`` steps is ``N + 1`` sigmas, the last one 0.

How the Qwen-Image / FireRed pipeline builds its sigmas (diffusers' ``FlowMatchEulerDiscreteScheduler`` called
with ``sigmas=linspace(1, 1/N, N)`` and ``mu``):

1. ``N`` evenly spaced levels from 1 down to ``1/N`` (computed in float64, then stored as float32);
2. a resolution-dependent shift that spends more steps at high noise for larger images. ``mu`` grows linearly
   with the image token count (``compute_mu``) and the shift maps ``t -> e^mu / (e^mu + 1/t - 1)``
   ("exponential") or ``t -> mu / (mu + 1/t - 1)`` ("linear"). Without dynamic shifting a static
   ``shift * t / (1 + (shift - 1) t)`` is used instead;
3. ``shift_terminal``: the schedule is stretched in ``1 - t`` so its last level lands exactly on that value
   (0.02 for Qwen-Image) instead of ``1/N`` shifted;
4. a final 0 is appended.

Every arithmetic step here runs in float32 with the scalars rounded to float32 first, which is what NumPy 2
(the reference's array library, NEP 50 promotion) does, so the result equals the reference bit for bit; the tests
check this. The timesteps the reference hands the model are ``sigma * num_train_timesteps`` (``flow_timesteps``).

One deliberate deviation: with a single step and ``shift_terminal`` set, the reference divides 0 by 0 and returns
a NaN sigma. Here the stretch is skipped when there is nothing to stretch, giving ``[1, 0]``: one Euler step from
noise to data.

Public API: ``compute_mu``, ``flow_sigmas``, ``flow_timesteps``.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch

from .config import SchedulerConfig

log = logging.getLogger(__name__)

__all__ = ["compute_mu", "flow_sigmas", "flow_timesteps"]


def compute_mu(image_seq_len: int, config: SchedulerConfig) -> float:
    """The shift exponent ``mu`` for an image of ``image_seq_len`` tokens (target tokens only, no references).

    Linear through ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)``, extrapolated
    beyond them. The operations run in the reference's order so the float64 result is identical.
    """
    if image_seq_len <= 0:
        raise ValueError(f"compute_mu: image_seq_len must be a positive token count, got {image_seq_len}")
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    intercept = config.base_shift - slope * config.base_image_seq_len
    return image_seq_len * slope + intercept


def _f32(value: float) -> torch.Tensor:
    """A Python float rounded to a float32 scalar, as NumPy 2 rounds a Python scalar meeting a float32 array."""
    return torch.tensor(value, dtype=torch.float32)


def _even_levels(num_steps: int) -> torch.Tensor:
    """``linspace(1, 1/N, N)`` with NumPy's float64 recipe (``start + i * step``, exact endpoint) -> float32."""
    stop = 1.0 / num_steps
    if num_steps == 1:
        levels = [1.0]
    else:
        step = (stop - 1.0) / (num_steps - 1)
        levels = [i * step + 1.0 for i in range(num_steps - 1)] + [stop]
    return torch.tensor(levels, dtype=torch.float64).to(torch.float32)


def _custom_levels(custom_sigmas: Sequence[float] | torch.Tensor, num_steps: int) -> torch.Tensor:
    levels = torch.as_tensor(custom_sigmas, dtype=torch.float64).flatten().to(torch.float32)
    if levels.numel() != num_steps:
        raise ValueError(f"flow_sigmas: custom_sigmas has {levels.numel()} entries but num_steps is {num_steps}")
    if not bool(((levels >= 0) & (levels <= 1)).all()):
        raise ValueError(f"flow_sigmas: custom_sigmas must lie in [0, 1], got {levels.tolist()}")
    return levels


def _dynamic_shift(t: torch.Tensor, mu: float, kind: str) -> torch.Tensor:
    # The reference raises (1/t - 1) to the power 1.0 here, an exact no-op, so it is left out.
    odds = 1 / t - 1  # [N] float32; the noise-to-signal odds of each level
    if kind == "exponential":
        e_mu = _f32(math.exp(mu))
        return e_mu / (e_mu + odds)
    m = _f32(mu)
    return m / (m + odds)


def _static_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    # (shift - 1) is formed in float64 before it meets the float32 array, as in the reference
    return (_f32(shift) * t) / (1 + _f32(shift - 1.0) * t)


def _stretch_to_terminal(t: torch.Tensor, terminal: float) -> torch.Tensor:
    one_minus = 1 - t
    if float(one_minus[-1]) == 0.0:
        log.warning("flow_sigmas: a schedule ending at sigma 1 cannot be stretched to shift_terminal=%s; "
                    "using it unstretched (the reference returns NaN here)", terminal)
        return t
    scale = one_minus[-1] / _f32(1.0 - terminal)
    return 1 - one_minus / scale


def flow_sigmas(
    num_steps: int,
    image_seq_len: int,
    config: SchedulerConfig,
    custom_sigmas: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``num_steps + 1`` float32 sigmas (last one 0) the reference scheduler uses for this image size.

    ``image_seq_len`` is the number of target tokens, ``(H/16) * (W/16)`` for the released model; it only matters
    with ``config.use_dynamic_shifting``. ``custom_sigmas`` replaces the even levels of step 1 (one per step,
    shifting and stretching still apply, as in the reference's ``set_timesteps(sigmas=...)``).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"flow_sigmas: num_steps must be an integer >= 1, got {num_steps!r}")
    if custom_sigmas is None:
        levels = _even_levels(num_steps)
    else:
        levels = _custom_levels(custom_sigmas, num_steps)
    if config.use_dynamic_shifting:
        levels = _dynamic_shift(levels, compute_mu(image_seq_len, config), config.time_shift_type)
    else:
        levels = _static_shift(levels, config.shift)
    if config.shift_terminal:
        levels = _stretch_to_terminal(levels, config.shift_terminal)
    return torch.cat([levels, torch.zeros(1, dtype=torch.float32)])


def flow_timesteps(sigmas: torch.Tensor, config: SchedulerConfig) -> torch.Tensor:
    """The reference's ``timesteps``: one per step, ``sigma * num_train_timesteps`` in float32 (0..1000 scale)."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"flow_timesteps: expected 1-D sigmas of length num_steps + 1, got {tuple(sigmas.shape)}")
    return sigmas[:-1].to(torch.float32) * config.num_train_timesteps
