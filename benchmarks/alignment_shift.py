"""How far an edit is shifted against Picture 1, in size mode "area" (the default) and "match".

Run (the full setting took 26 s on 2 cores, the smoke one seconds; figures in docs/ALIGNMENT.md):

    python benchmarks/alignment_shift.py            # the embedded model at 64x64 .. 123x77, the tiny one larger
    python benchmarks/alignment_shift.py --smoke    # one size per model, one step: seconds (CI)

Picture 1 is a held-out scene of the synthetic benchmark (``firered_bench``, a recolour edit: one object changes,
nothing else should) drawn at 128x128, cropped to the aspect of each size and resized to it. Each edit is taken
back to Picture 1's pixel grid the way a user overlays it - "area" results resized to Picture 1's size (Lanczos),
"match" results as they are, already that size - and compared with Picture 1 by phase correlation
(``firered_bench.grade.alignment.phase_shift``: dx, dy in px, sub-pixel, and the peak, 1 for a pure
translation), plus the mean absolute difference in 8-bit levels (MAE; it includes the edit itself).

Models and rows:

- ``default``: the embedded model (``firered_core/default/model``, trained at 64x64, 8 px tokens) with its own
  steps; ``keep off`` is the model's own output, ``keep on`` with ``keep_unedited`` as its defaults.json sets it.
- ``tiny``: the ``tiny`` preset with random weights (seeded) and a seeded stand-in condition: its output has
  nothing of Picture 1 (``keep off`` rows show a low peak and a meaningless shift), so its informative rows are
  ``geometry``: ``keep_unedited`` with a threshold no latent difference reaches, i.e. an edit that changes
  nothing - what the pipeline's sizing alone does to the area an edit leaves alone. Model and reference areas are
  128x128 (the class's 1024^2 would need tens of GB in the tiny VAE's attention).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firered_bench.generate.generator import GeneratorConfig, generate  # noqa: E402
from firered_bench.generate.scene_sampler import SceneOptions  # noqa: E402
from firered_bench.grade.alignment import phase_shift  # noqa: E402
from firered_core.preserve import PreserveConfig  # noqa: E402

DEFAULT_SIZES = ((64, 64), (80, 48), (100, 60), (123, 77))
TINY_SIZES = ((128, 128), (150, 90), (200, 120), (246, 154))
TINY_AREA = 128 * 128
NOTHING_EDITED = PreserveConfig(latent_threshold=1e9)  # every latent pixel counts as unedited


@dataclass(frozen=True)
class Row:
    model: str
    size: tuple[int, int]
    refs: int
    keep: str
    mode: str
    output: tuple[int, int]
    dx: float
    dy: float
    peak: float
    mae: float
    seconds: float


class _SeededCondition:
    """Stand-in condition encoder for the random tiny model: seeded embeddings ``[1, 8, width]`` per prompt."""

    def __init__(self, width: int) -> None:
        self.dim = width

    def encode(self, prompts: list[str], images: list) -> object:
        from firered_core.encoder.base import EncodedCondition

        generator = torch.Generator().manual_seed(len(prompts[0]) + 31 * len(images))
        return EncodedCondition(torch.randn(1, 8, self.dim, generator=generator), torch.ones(1, 8, dtype=torch.long))

    def to(self, device=None, dtype=None) -> "_SeededCondition":
        return self


def tiny_random_pipeline(seed: int = 1):
    """The ``tiny`` preset, transformer weights drawn with real magnitudes from ``seed``, default-initialised VAE."""
    from firered_core.config import SchedulerConfig, get_preset
    from firered_core.pipeline import FireRedEditPipeline
    from firered_core.transformer import FireRedTransformer
    from firered_core.vae import FireRedVAE

    preset = get_preset("tiny")
    transformer = FireRedTransformer(preset.transformer).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(1 + 0.1 * noise if "norm" in name and p.ndim == 1 else 0.15 * noise)
    pipe = FireRedEditPipeline(transformer, FireRedVAE(preset.vae).eval(),
                               _SeededCondition(preset.transformer.joint_attention_dim), SchedulerConfig())
    pipe.output_area = pipe.reference_area = TINY_AREA
    pipe.default_steps, pipe.default_true_cfg_scale = 4, 1.0
    return pipe


def scenes() -> tuple[Image.Image, Image.Image, str]:
    """Two held-out recolour edits' Picture 1 (128x128, several shapes) and the first one's instruction."""
    config = GeneratorConfig(scene=SceneOptions(size=128, min_shapes=4, max_shapes=6, text_probability=0.0),
                             tasks=("color",))
    first, second = generate("heldout", 2, seed=11, config=config)
    return first.sources[0], second.sources[0], first.instruction


def picture_at(source: Image.Image, width: int, height: int) -> Image.Image:
    """``source`` centre-cropped to ``width``:``height`` and resized to that size (Lanczos)."""
    aspect = width / height
    crop_w, crop_h = (source.width, round(source.width / aspect)) if aspect >= 1 else \
        (round(source.height * aspect), source.height)
    left, top = (source.width - crop_w) // 2, (source.height - crop_h) // 2
    return source.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.LANCZOS)


def measure(pipe, model: str, refs: list[Image.Image], instruction: str, mode: str, keep: str,
            steps: int | None) -> Row:
    keep_setting = {"off": False, "on": True, "geometry": NOTHING_EDITED}[keep]
    picture = refs[0]
    start = time.perf_counter()
    result = pipe.edit(refs, instruction, steps=steps, seed=0, size_mode=mode, keep_unedited=keep_setting)
    seconds = time.perf_counter() - start
    back = result.image if result.image.size == picture.size else \
        result.image.resize(picture.size, Image.Resampling.LANCZOS)
    shift = phase_shift(picture, back)
    mae = float(np.abs(np.asarray(back, np.float64) - np.asarray(picture, np.float64)).mean())
    return Row(model, picture.size, len(refs), keep, mode, result.image.size, shift.dx, shift.dy, shift.peak, mae,
               seconds)


def run(smoke: bool) -> list[Row]:
    from firered_core.default import load_default_pipeline

    source, other, instruction = scenes()
    plans = [("default", load_default_pipeline(), DEFAULT_SIZES[1:2] if smoke else DEFAULT_SIZES, ("off", "on"), 64),
             ("tiny", tiny_random_pipeline(), TINY_SIZES[1:2] if smoke else TINY_SIZES, ("geometry", "off"), 128)]
    rows = []
    for model, pipe, sizes, keeps, side in plans:
        steps = 1 if smoke else None
        picture_2 = other.resize((side, side), Image.Resampling.LANCZOS)  # square: the area output follows it
        for width, height in sizes:
            picture = picture_at(source, width, height)
            for refs in ([picture], [picture, picture_2]):
                for keep in keeps:
                    for mode in ("area", "match"):
                        rows.append(measure(pipe, model, refs, instruction, mode, keep, steps))
                        print(_line(rows[-1]), flush=True)
    return rows


HEADER = ("| model | Picture 1 | refs | keep_unedited | size mode | made at | dx, dy (px) | shift (px) | peak | MAE |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _line(r: Row) -> str:
    made = f"{r.output[0]}x{r.output[1]}" if r.mode == "match" else \
        f"{r.output[0]}x{r.output[1]} -> resized"
    return (f"| {r.model} | {r.size[0]}x{r.size[1]} | {r.refs} | {r.keep} | {r.mode} | {made} | "
            f"{r.dx:+.2f}, {r.dy:+.2f} | "
            f"{(r.dx ** 2 + r.dy ** 2) ** 0.5:.2f} | {r.peak:.2f} | {r.mae:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one size per model, one step (seconds; for CI)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    start = time.perf_counter()
    print(HEADER, flush=True)
    rows = run(args.smoke)
    print("\nsummary (largest shift over the sizes, mean MAE):")
    for model in ("default", "tiny"):
        for refs in (1, 2):
            for keep in sorted({r.keep for r in rows if r.model == model}):
                for mode in ("area", "match"):
                    picked = [r for r in rows if (r.model, r.refs, r.keep, r.mode) == (model, refs, keep, mode)]
                    worst = max((r.dx ** 2 + r.dy ** 2) ** 0.5 for r in picked)
                    mean_mae = sum(r.mae for r in picked) / len(picked)
                    print(f"{model:8s} {refs} ref(s) keep {keep:8s} {mode:5s}: largest shift {worst:5.2f} px, "
                          f"lowest peak {min(r.peak for r in picked):.2f}, mean MAE {mean_mae:5.1f}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
