"""``firered bench synthetic``: the ground-truth benchmark of an edit model on the synthetic held-out split.

For ``--per-category`` samples of each category of the held-out split (``generate("heldout", ...)``, a fixed
seed, so every run grades the same cases), the model edits the sources with the sample's English instruction;
the result is graded by the category's programmatic check (``checks.check``: the edit happened where and how it
was asked, nothing else changed) and scored with PSNR/SSIM to the target and to the source. Printed: a table per
category (success rate, mean PSNR to target, share of results closer to the target than the unedited source)
and a last line ``overall NN.N%`` (successes over all graded samples). The summary also counts, per category,
how often each check was missed; the report's tables name the one missed most often, so a table says not only
how often a category fails but mostly why. Written to ``--out``: ``results.json``
(every sample's verdict, failures and metrics), ``report.html``, ``table.md`` (the table in Markdown) and one
``grid_<category>.png`` per category (rows: sources | result | target). ``--update-tables DOC...`` also puts the
Markdown table between the bench-table markers of those documents (the README, the model card).

"Closer to the target than the source" compares PSNR(result, target) with PSNR(Picture 1, target); text-to-
image samples have no source and are left out of that share.

Each sample is also graded with its exact target sent through the model's VAE (encode, decode): the "ceiling"
column, what a perfect transformer would score with this VAE, i.e. how much of the checks' budget the VAE alone
spends. When the model keeps Picture 1's pixels outside the edited area (``keep_unedited``, on for the
embedded default; ``--no-keep-unedited`` turns it off), the ceiling gets the same treatment: the target's
latents against Picture 1's decide what is kept.

Public API: ``run_benchmark``, ``register_bench``, ``run_bench``, ``vae_round_trip`` (the figures: ``summary``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from firered_core.cli import add_keep_unedited, add_sampler

from ..generate.generator import TASK_OPS, SyntheticSample, generate
from ..grade.checks import check
from ..grade.metrics import psnr
from .summary import BenchSample, format_table, summarise

log = logging.getLogger(__name__)

__all__ = ["run_benchmark", "register_bench", "run_bench", "vae_round_trip"]

EditFn = Callable[[SyntheticSample, int], Image.Image]  # (sample, seed) -> result image


def run_benchmark(edit: EditFn, per_category: int, *, seed: int = 0, tasks: Sequence[str] = tuple(TASK_OPS),
                  ceiling: EditFn | None = None) -> tuple[list[BenchSample], list[tuple[SyntheticSample,
                                                                                         Image.Image]]]:
    """Grade ``edit`` on ``per_category`` held-out samples of each task; returns verdicts and (sample, result).

    ``ceiling`` (optional) makes the best result a model could give (the target through its VAE); its verdict
    is recorded per sample as ``ceiling_passed``."""
    from ..generate.generator import GeneratorConfig

    config = GeneratorConfig(tasks=tuple(tasks))
    results: list[BenchSample] = []
    images: list[tuple[SyntheticSample, Image.Image]] = []
    started = time.monotonic()
    total = per_category * len(tasks)
    for i, sample in enumerate(generate("heldout", total, seed=seed, config=config)):
        result = edit(sample, i)
        verdict = check(list(sample.sources), result, sample.spec, target=sample.target)
        source_db = psnr(sample.sources[0], sample.target) if sample.sources else None
        best = None
        if ceiling is not None:
            best = check(list(sample.sources), ceiling(sample, i), sample.spec, scores=False).passed
        results.append(BenchSample(id=sample.id, task=sample.task, op=sample.op, instruction=sample.instruction,
                                   passed=verdict.passed, failures=list(verdict.failures),
                                   psnr_to_target=psnr(result, sample.target), source_psnr_to_target=source_db,
                                   metrics=dict(verdict.metrics), ceiling_passed=best,
                                   missed=list(verdict.missed)))
        images.append((sample, result))
        if (i + 1) % 25 == 0 or i + 1 == total:
            log.info("bench: %d/%d graded (%.1f s per edit)", i + 1, total, (time.monotonic() - started) / (i + 1))
    return results, images


# ---------------------------------------------------------------------------------------------------------------
# command


def register_bench(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = "Benchmark an edit model on a ground-truth suite (synthetic: the held-out split)."
    parser.add_argument("suite", choices=("synthetic",), help="which benchmark")
    parser.add_argument("--model", default=None, help="diffusers folder (default: the embedded default model)")
    parser.add_argument("--per-category", type=int, default=20, help="held-out samples per category (default 20)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's own)")
    parser.add_argument("--cfg", type=float, default=None, help="true CFG scale (default: the model's own)")
    parser.add_argument("--seed", type=int, default=0, help="held-out sample seed (default 0)")
    add_keep_unedited(parser, "keep Picture 1's pixels outside the edited area (default: the model's own setting)")
    add_sampler(parser, "euler or stochastic (re-noise every step); default: the model's scheduler config")
    parser.add_argument("--out", default="outputs/bench_synthetic", help="report folder (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    parser.add_argument("--update-tables", nargs="+", default=(), metavar="DOC",
                        help="after the run, put the Markdown table between the bench-table markers of these "
                        "documents (e.g. README.md firered_core/default/MODEL_CARD.md)")
    return run_bench


def _pipeline(model: str | None) -> Any:
    from firered_core.default import load_default_pipeline
    from firered_core.pipeline import FireRedEditPipeline

    if model is None:
        return load_default_pipeline()
    return FireRedEditPipeline.from_pretrained(model)  # a folder from firered export-default: its defaults.json


def vae_round_trip(vae: Any, image: Image.Image, source: Image.Image | None = None,
                   preserve: Any = None) -> Image.Image:
    """``image`` encoded and decoded by ``vae`` at its own size (no resizing beyond the VAE's).

    With ``source`` (Picture 1) and a ``PreserveConfig`` ``preserve``, the decoded image keeps the source's pixels
    outside the area where the two differ in latent space, as the pipeline's ``keep_unedited`` does."""
    import torch

    from firered_core.images import to_pil, to_tensor
    from firered_core.placement import compute_dtype
    from firered_core.preserve import keep_unedited

    dtype = compute_dtype(vae)
    with torch.inference_mode():
        latents = vae.encode(to_tensor(image, *image.size).to(dtype))
        pixels = vae.decode(latents)
        if source is not None and preserve is not None:
            pixels, _ = keep_unedited(vae, pixels, latents, to_tensor(source, *image.size), preserve)
        return to_pil(pixels)


def run_bench(args: argparse.Namespace) -> int:
    from .report import marked_block, markdown_table, settings_line, update_marked_table, write_report

    if args.per_category < 1:
        raise ValueError(f"--per-category must be >= 1, got {args.per_category}")
    for doc in args.update_tables:  # refused before the benchmark runs, not after
        marked_block(Path(doc))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace the report")
    pipe = _pipeline(args.model)
    steps, cfg = pipe.sampling_choice(args.steps, args.cfg)
    preserve = pipe.keep_unedited_config(args.keep_unedited)
    sampler = pipe.sampler_choice(args.sampler)

    def edit(sample: SyntheticSample, index: int) -> Image.Image:
        size = pipe.fit_size(*sample.target.size)
        return pipe.edit(list(sample.sources), sample.instruction, steps=steps, true_cfg_scale=cfg, seed=index,
                         width=size[0], height=size[1], keep_unedited=preserve or False,
                         sampler=sampler).image

    def through_vae(sample: SyntheticSample, index: int) -> Image.Image:
        source = sample.sources[0] if sample.sources else None
        return vae_round_trip(pipe.vae, sample.target, source, preserve)

    started = time.monotonic()
    results, images = run_benchmark(edit, args.per_category, seed=args.seed, ceiling=through_vae)
    summary = summarise(results)
    summary.update({"model": args.model or "firered-default", "steps": steps, "true_cfg_scale": cfg,
                    "keep_unedited": preserve is not None, "sampler": sampler,
                    "per_category": args.per_category, "seed": args.seed,
                    "seconds": round(time.monotonic() - started, 1)})
    write_report(out, summary, results, images, overwrite=args.overwrite)
    for doc in args.update_tables:
        update_marked_table(Path(doc), markdown_table(summary))
        log.info("benchmark table written into %s", doc)
    print(format_table(summary), flush=True)
    print(settings_line(summary), flush=True)
    print(f"report: {out / 'report.html'}", flush=True)
    return 0
