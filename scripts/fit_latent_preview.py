"""Fit a model folder's latent -> RGB preview table on images the model generates, and write it to the folder.

::

    .venv/bin/python scripts/fit_latent_preview.py                           # the embedded default, in place
    .venv/bin/python scripts/fit_latent_preview.py --model FOLDER --samples 32 --out table.json

The model edits ``--samples`` synthetic benchmark inputs (``firered_bench``'s held-out split, seeded) with its
own settings (``keep_unedited`` off, so every pixel is the VAE's decode). Even-numbered edits are the fit set
(``firered_core.latent_preview.fit_latent_preview``: their final latents against their decoded images averaged
to the latent grid), odd-numbered ones are held out. Printed: the RMSE (in [-1, 1] image units) and PSNR of the
table on both halves, and for comparison the same on the held-out half for the fallback a folder without a table
gets (``fit_from_vae``: decoded random latents). The table is written to ``--out``, by default the folder's
``vae/latent_preview.json`` (atomically), where ``FireRedEditPipeline.from_pretrained`` finds it.

Fitting generates images, so it suits models that sample quickly (the embedded default: about a second per
edit on a CPU). For the released 20B model the fallback fits from the VAE alone (docs/LATENT_PREVIEW.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import torch

from firered_bench.generate.generator import generate
from firered_core.default import model_dir
from firered_core.images import to_tensor
from firered_core.latent_preview import PREVIEW_FILE, LatentPreview, downsample, fit_from_vae, fit_latent_preview
from firered_core.pipeline import FireRedEditPipeline

log = logging.getLogger("fit_latent_preview")


def edit_pairs(pipe: FireRedEditPipeline, samples: int, seed: int,
               steps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(final normalised latents [N, C, h, w], decoded images [N, 3, H, W] in [-1, 1]) of ``samples`` edits."""
    latents, images = [], []
    for i, sample in enumerate(generate("heldout", samples, seed=seed)):
        result = pipe.edit(list(sample.sources), sample.instruction, seed=seed + i, steps=steps,
                           keep_unedited=False)
        latents.append(result.latents.float())
        images.append(to_tensor(result.image, result.width, result.height))
        log.info("edit %d/%d: %s", i + 1, samples, sample.instruction)
    return torch.cat(latents), torch.cat(images)


def errors(table: LatentPreview, latents: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """(RMSE in [-1, 1] units, PSNR in dB over the [0, 1] range) of the table's preview against the decoded
    images averaged to the latent grid."""
    target = downsample(images, tuple(latents.shape[-2:]))
    rmse = float((table.apply(latents) - target).pow(2).mean().sqrt())
    return rmse, 20 * math.log10(2.0 / rmse)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a diffusers-layout model folder (default: the "
                                                                 "embedded default model)")
    parser.add_argument("--samples", type=int, default=24, help="edits to generate, half fitted, half held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the table (default: the "
                                                               f"folder's vae/{PREVIEW_FILE})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = args.model or model_dir()
    if not (folder / "vae").is_dir():
        parser.error(f"--model {folder}: not a diffusers-layout model folder (no vae/ subfolder)")
    if args.samples < 2:
        parser.error(f"--samples must be at least 2 (one fitted, one held out), got {args.samples}")
    out = args.out or folder / "vae" / PREVIEW_FILE
    if not out.parent.is_dir():
        parser.error(f"--out {out}: folder {out.parent} does not exist")

    pipe = FireRedEditPipeline.from_pretrained(folder)
    latents, images = edit_pairs(pipe, args.samples, args.seed, args.steps)
    fit_idx, held_idx = slice(0, None, 2), slice(1, None, 2)
    table = fit_latent_preview(latents[fit_idx], images[fit_idx],
                               f"{latents[fit_idx].shape[0]} edits of firered_bench heldout inputs, seed {args.seed}")
    fallback = fit_from_vae(pipe.vae)
    for name, which, subset in (("fitted table, fit set", table, fit_idx), ("fitted table, held out", table, held_idx),
                                ("random-latent fallback, held out", fallback, held_idx)):
        rmse, psnr = errors(which, latents[subset], images[subset])
        print(f"{name:34s} RMSE {rmse:.4f}  PSNR {psnr:5.2f} dB")
    table.save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
