"""Cost of live previews on the CPU: one preview frame against one VAE decode, and the fit-on-first-use fallback.

Run (about a minute on 2 cores):

    python benchmarks/latent_preview.py [--latent 32] [--runs 5] [--threads 1]

Workload: the released VAE's architecture (``VAEConfig()``, 16 latent channels, 8x compression) with seeded random
weights - the cost of a decode depends on the shapes, not the weights. Timed, medians of ``--runs`` (of
``20 * --runs`` for the cheap preview frame, after one warm-up call):

* one preview frame: ``LatentPreview.image`` on a ``[1, 16, L, L]`` latent (the projection, clamping, 8-bit
  picture), what the nodes compute per sampling step when ComfyUI's previews are on;
* one full decode of the same latent (``L * 8`` px square), what a preview by the VAE would cost per step;
* once: ``fit_from_vae`` (four decoded random 16x16 latents), what a model without a fitted table pays on its
  first previewed edit.

``--threads`` (default 1) is torch's CPU thread count for every part: on a machine shared with other jobs, two
threads waiting on each other make a sub-millisecond product take tens of milliseconds, which measures the
machine, not the work.

Also printed: how much of the decoded colour the random-weight VAE's fit explains (R^2). A VAE with random
weights has no colour in its latents to find, so a table fitted on it would mean nothing; the released weights
get theirs at first use (docs/LATENT_PREVIEW.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from firered_core.config import VAEConfig
from firered_core.latent_preview import downsample, fit_from_vae, random_decodes
from firered_core.vae import FireRedVAE


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--latent", type=int, default=32, help="latent side L (the image is 8 L px square)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = FireRedVAE(VAEConfig()).eval()
    latents = torch.randn(1, 16, args.latent, args.latent)
    with torch.inference_mode():
        start = time.perf_counter()
        table = fit_from_vae(vae)
        fit_s = time.perf_counter() - start
        table.image(latents)  # warm-up
        preview_s = median_seconds(lambda: table.image(latents), 20 * args.runs)
        decode_s = median_seconds(lambda: vae.decode(latents), max(1, args.runs // 2))
        fit_latents, images = random_decodes(vae)
    target = downsample(images, tuple(fit_latents.shape[-2:]))
    r2 = 1.0 - (table.apply(fit_latents) - target).pow(2).mean() / target.var(dim=(0, 2, 3)).mean()
    side = args.latent * 8
    print(f"preview frame ({args.latent}x{args.latent} latent): {preview_s * 1e3:8.2f} ms")
    print(f"VAE decode ({side}x{side} px):         {decode_s * 1e3:8.1f} ms")
    print(f"ratio decode / preview:               {decode_s / preview_s:8.0f}x")
    print(f"fallback fit (4 decodes of 16x16):    {fit_s:8.2f} s")
    print(f"random-weight VAE: the fit explains R^2 = {float(r2):.3f} of the decoded colour")


if __name__ == "__main__":
    main()
