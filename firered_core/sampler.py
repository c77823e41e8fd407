"""The sampling loop: seeded starting noise, true classifier-free guidance and Euler steps on the flow.

Convention: ``x_s = (1 - s) x0 + s eps``; the model predicts the velocity ``v = eps - x0``; sampling walks the
sigmas of ``firered_core.schedule.flow_sigmas`` from 1 to 0 with one Euler step per pair of sigmas,
``x <- x + (s_next - s) v``. Everything happens on packed tokens ``[B, N, C*4]`` (``firered_core.latents``).

The model contract is one plain function per condition, ``VelocityFn(x, t) -> v``:

* ``x``: the current target tokens ``[B, N, D]``; ``t``: the noise level per sample ``[B]`` in ``x``'s dtype;
* it returns ``v`` shaped like ``x`` (target tokens only). Appending reference-image tokens, passing the text
  condition and cropping the transformer output all live inside the function, usually a closure the pipeline
  builds over the transformer and one encoded condition.

``euler_sample`` takes the conditional function and, optionally, a negative one. True CFG (two passes per step)
runs only when a negative function is given AND ``cfg_scale > 1``, the reference pipeline's rule; otherwise the
negative function is never called, so a distilled (Lightning, CFG 1) run costs one pass per step.

Faithfulness to diffusers' QwenImageEditPlusPipeline, operation by operation:

* ``initial_noise`` draws with a CPU ``torch.Generator`` seeded with ``seed`` in the pipeline's latent shape
  ``[B, 1, C, H/8, W/8]`` and the requested dtype, then packs, so a seed gives the same start as the reference;
* the time the model sees is the reference's ``(sigma * 1000)`` cast to ``x``'s dtype, then divided by 1000
  (not bit-identical to ``sigma``, and the model is sensitive to it at bf16);
* the Euler update is computed on a float32 copy of ``x`` and cast back to the model output's dtype, as the
  reference scheduler's ``step`` does;
* guidance is ``uncond + scale * (cond - uncond)`` rescaled per token to the norm of ``cond``;
* with the stochastic sampler (the reference scheduler's ``stochastic_sampling``, ``stochastic_step``) a step
  predicts the clean latents ``x0 = x - s v`` and re-noises them to the next level with fresh Gaussian noise,
  ``(1 - s_next) x0 + s_next eps'``, in float32. The reference draws that noise from the global RNG; here it comes
  from the caller's seeded CPU generator, so a seed gives the same result on every run and machine.

The two step rules are the samplers a caller chooses between by name (``SAMPLERS``: ``"euler"``, ``"stochastic"``).

Public API: ``VelocityFn``, ``SAMPLERS``, ``initial_noise``, ``cfg_combine``, ``euler_step``, ``stochastic_step``,
``euler_sample``.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from .latents import pack_latents
from .progress import CancelFn, ProgressFn, check_cancel

log = logging.getLogger(__name__)

__all__ = ["VelocityFn", "SAMPLERS", "initial_noise", "cfg_combine", "euler_step", "stochastic_step",
           "euler_sample"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SAMPLERS = ("euler", "stochastic")  # deterministic Euler steps; re-noised steps (``stochastic_step``)


def initial_noise(
    latent_shape: Sequence[int],
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    patch: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Seeded Gaussian noise for latents of shape ``(B, C, h, w)``, returned packed as ``[B, h*w/4, C*4]``.

    Drawn on the CPU (so a seed means the same thing on every machine) in the shape ``(B, 1, C, h, w)`` that the
    reference pipeline uses, in ``dtype``, then moved to ``device``. ``generator``: a CPU generator already
    seeded with ``seed`` to draw from (so the caller can keep drawing from it, e.g. for ``stochastic_step``).
    """
    if len(latent_shape) != 4 or any(int(n) <= 0 for n in latent_shape):
        raise ValueError(f"initial_noise: latent_shape must be 4 positive sizes (B, C, h, w), got {tuple(latent_shape)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"initial_noise: seed must be an integer in [0, 2**64), got {seed!r}")
    b, c, h, w = (int(n) for n in latent_shape)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((b, 1, c, h, w), generator=generator, device="cpu", dtype=dtype).to(device)
    # [B, 1, C, h, w] -> [B, C, h, w]: the size-1 frame axis leaves memory order unchanged
    return pack_latents(noise.reshape(b, c, h, w), patch)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """True CFG, ``uncond + scale * (cond - uncond)``, rescaled so each token keeps the norm of ``cond``.

    The norm is taken over the last (feature) dimension. The rescale keeps large guidance scales from blowing up
    the velocity's magnitude; only its direction is guided.
    """
    if cond.shape != uncond.shape:
        raise ValueError(f"cfg_combine: cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} differ in shape")
    combined = uncond + scale * (cond - uncond)
    cond_norm = torch.norm(cond, dim=-1, keepdim=True)
    combined_norm = torch.norm(combined, dim=-1, keepdim=True)
    return combined * (cond_norm / combined_norm)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step from noise level ``sigma`` to ``sigma_next`` (float32 scalars), in ``v``'s dtype."""
    return (x.to(torch.float32) + (sigma_next - sigma) * v).to(v.dtype)


def stochastic_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                    generator: torch.Generator | Sequence[torch.Generator]) -> torch.Tensor:
    """One stochastic step: the predicted clean latents ``x - sigma v`` re-noised to ``sigma_next`` with fresh
    noise from the CPU ``generator`` (float32 arithmetic, the result in ``v``'s dtype). A sequence of generators,
    one per row of ``x``: row ``i``'s noise comes from generator ``i`` alone, as if it were sampled by itself."""
    x0 = x.to(torch.float32) - sigma * v
    if isinstance(generator, torch.Generator):
        noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=torch.float32)
    else:
        if len(generator) != x.shape[0]:
            raise ValueError(f"stochastic_step: {len(generator)} generators for a batch of {x.shape[0]}")
        noise = torch.cat([torch.randn((1, *x.shape[1:]), generator=g, device="cpu", dtype=torch.float32)
                           for g in generator])
    return ((1.0 - sigma_next) * x0 + sigma_next * noise.to(x.device)).to(v.dtype)


def _model_time(sigma: torch.Tensor, x: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    # The reference rounds through its 0..1000 timestep and x's dtype before dividing; repeat that exactly.
    t = (sigma * num_train_timesteps).expand(x.shape[0]).to(x.dtype)
    return t / num_train_timesteps


def _predict(fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, which: str) -> torch.Tensor:
    v = fn(x, t)
    if v.shape != x.shape:
        raise ValueError(
            f"euler_sample: the {which} model function returned shape {tuple(v.shape)} for tokens of shape "
            f"{tuple(x.shape)}; it must return target tokens only (crop reference tokens away)"
        )
    return v


def euler_sample(
    predict: VelocityFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    predict_negative: VelocityFn | None = None,
    cfg_scale: float = 1.0,
    num_train_timesteps: int = 1000,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    step_noise: torch.Generator | Sequence[torch.Generator] | None = None,
    denoised: ProgressFn | None = None,
) -> torch.Tensor:
    """Integrate the flow from ``sigmas[0]`` to ``sigmas[-1]``; returns the final tokens (``x``'s shape).

    ``cancel`` is polled before every step (``Cancelled`` is raised, no step is half-done); ``progress`` gets
    ``(step, num_steps, x)`` after every step. ``step_noise``: a seeded CPU generator (or one per row of ``x``)
    turns on stochastic sampling (``stochastic_step``) and feeds it; None takes deterministic Euler steps.
    ``denoised`` gets ``(step, num_steps, x0)`` after every step, before ``progress``: the clean tokens predicted
    at that step's level, ``x0 = x - s v`` in float32 (computed only when it is given; for previews). See the
    module docstring for the model-function contract.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"euler_sample: sigmas must be 1-D with num_steps + 1 entries, got {tuple(sigmas.shape)}")
    if x.ndim != 3:
        raise ValueError(f"euler_sample: x must be packed tokens [B, N, D], got shape {tuple(x.shape)}")
    sigmas = sigmas.to(device=x.device, dtype=torch.float32)
    guided = predict_negative is not None and cfg_scale > 1.0
    total = sigmas.numel() - 1
    log.debug("euler_sample: %d %s steps, tokens %s, true CFG %s", total,
              "stochastic" if step_noise is not None else "Euler", tuple(x.shape), cfg_scale if guided else "off")
    for i in range(total):
        check_cancel(cancel, f"euler_sample before step {i + 1}/{total}")
        t = _model_time(sigmas[i], x, num_train_timesteps)
        v = _predict(predict, x, t, "conditional")
        if guided:
            v = cfg_combine(v, _predict(predict_negative, x, t, "negative"), cfg_scale)  # type: ignore[arg-type]
        if denoised is not None:
            denoised(i + 1, total, x.to(torch.float32) - sigmas[i] * v)
        if step_noise is None:
            x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        else:
            x = stochastic_step(x, v, sigmas[i], sigmas[i + 1], step_noise)
        if progress is not None:
            progress(i + 1, total, x)
    return x
