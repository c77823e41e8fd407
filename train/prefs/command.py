"""``firered prefs MANIFEST --out DIR``: K edits per instruction with a model, scored, paired for DPO.

Reads a JSONL manifest (docs/DATA_FORMAT.md; ``python -m firered_bench`` writes one with the ``spec`` the
verifiable reward needs), edits every sample ``k`` times with seeds ``seed .. seed + k - 1`` at the target's size,
scores the edits (``scoring``) and writes the chosen pairs (``pairs``) as ``DIR/prefs.jsonl`` with its pictures.

Public API: ``register_prefs``, ``run_prefs``, ``build_preferences``, ``model_edit_fn``, ``read_rows``,
``read_samples``, ``sample_from_row``, ``add_scoring_arguments``, ``add_run_arguments``, ``checked_inputs``,
``judge_from_args``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ..config.nft_section import NFT_REWARD_MODES  # the verifiable reward's modes, named without importing it
from ..data.readers.jsonl import read_manifest_lines, record_from_row
from ..data.skips import SkipLog
from .pairs import PAIR_MODES, TARGET, PairConfig, PreferenceWriter, pick_pair
from .scoring import JUDGE_KEY_ENV, REWARDS, PrefSample, build_judge, score_edits

log = logging.getLogger(__name__)

__all__ = ["add_run_arguments", "add_scoring_arguments", "build_preferences", "checked_inputs", "judge_from_args",
           "model_edit_fn", "read_rows", "read_samples", "register_prefs", "run_prefs", "sample_from_row"]

EditFn = Callable[[PrefSample, Sequence[int]], list[Image.Image]]  # (sample, seeds) -> one edit per seed


def sample_from_row(row: Any, base: Path, where: str) -> PrefSample:
    """The sample of one manifest line, pictures decoded (raises ``BadSampleError`` like the trainer's reader)."""
    record = record_from_row(row, base, where)
    sources, target = record.open_images()
    spec = row.get("spec") if isinstance(row.get("spec"), dict) else None
    return PrefSample(record.id, record.task, record.instruction, sources, target, spec)


def read_rows(manifest: Path, skips: SkipLog | None = None) -> list[tuple[dict[str, Any], Path, PrefSample]]:
    """Each good manifest line with its folder and its decoded sample; a bad line is counted in ``skips`` and left
    out."""
    def parse(row: Any, base: Path, where: str) -> tuple[dict[str, Any], Path, PrefSample]:
        return row, base, sample_from_row(row, base, where)

    skips = skips if skips is not None else SkipLog()
    rows, _ = read_manifest_lines(manifest, parse, skips)
    if skips.total:
        log.warning("%s: %d bad lines skipped (%s)", manifest, skips.total, skips.counts)
    return rows


def read_samples(manifest: Path, skips: SkipLog | None = None) -> list[PrefSample]:
    """The manifest's samples, pictures decoded (``read_rows`` without the lines)."""
    return [sample for _, _, sample in read_rows(manifest, skips)]


def build_preferences(samples: Sequence[PrefSample], edit: EditFn, reward: str,
                      out: Path, config: PairConfig, *, seed: int = 0, reward_mode: str = "graded",
                      overwrite: bool = False, judge: Any = None) -> tuple[Path, int, int]:
    """Edit, score and pair every sample; returns (manifest path, samples seen, pairs written)."""
    writer = PreferenceWriter(out, overwrite=overwrite)
    seen = 0
    try:
        for sample in samples:
            seen += 1
            edits = edit(sample, range(seed, seed + config.k))
            scores = score_edits(reward, sample, edits, reward_mode, judge)
            chosen = pick_pair(scores, config)
            log.info("%s: rewards %s -> %s", sample.id, ", ".join(f"{s:.3f}" for s in scores),
                     "no pair" if chosen is None else f"pair {chosen}")
            if chosen is None:
                continue
            w, l = chosen
            winner, w_score = (sample.target, None) if w == TARGET else (edits[w], scores[w])
            writer.add(sample.id, sample.task, sample.instruction, sample.sources, winner, edits[l], w_score,
                       scores[l])
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    pairs = len(writer.lines)
    log.info("%d pairs from %d samples written to %s", pairs, seen, path)
    return path, seen, pairs


def register_prefs(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = ("Make DPO preference pairs: K edits per instruction of a JSONL manifest, scored with a "
                          "reward; the best and the worst (or the target and a failed edit) are written as pairs.")
    parser.add_argument("manifest", help="JSONL manifest (docs/DATA_FORMAT.md)")
    parser.add_argument("--out", required=True, help="folder to write prefs.jsonl and its pictures into")
    add_scoring_arguments(parser, reward_mode="graded")
    parser.add_argument("--mode", choices=PAIR_MODES, default="best-worst", help="how to pair")
    parser.add_argument("-k", type=int, default=4, help="edits per instruction (default 4)")
    parser.add_argument("--min-gap", type=float, default=0.1, help="best-worst: smallest reward gap (default 0.1)")
    parser.add_argument("--fail-below", type=float, default=1.0,
                        help="target-vs-failed: an edit under this reward failed (default 1.0)")
    add_run_arguments(parser)
    return run_prefs


def add_scoring_arguments(parser: argparse.ArgumentParser, *, reward_mode: str) -> None:
    """The model that edits and the reward that scores (shared by ``firered prefs`` and ``firered mine``)."""
    parser.add_argument("--model", default=None, help="diffusers folder of the checkpoint to sample with "
                        "(default: the embedded model)")
    parser.add_argument("--reward", choices=tuple(REWARDS), default="verifiable", help="what scores the edits")
    parser.add_argument("--reward-mode", choices=NFT_REWARD_MODES, default=reward_mode,
                        help="verifiable reward: the verdict, the share of criteria passed, or graded values")
    parser.add_argument("--judge-endpoint", default="", help="--reward judge: an OpenAI-compatible chat server, "
                        "e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama, LM Studio, a cloud API)")
    parser.add_argument("--judge-local", default="", help="--reward judge: instead of a server, a local Qwen2.5-VL "
                        "folder as transformers saves it (safetensors), rated from its logits in this process")
    parser.add_argument("--judge-model", default="", help="--reward judge: the server's model name")
    parser.add_argument("--judge-passes", type=int, default=1, help="--reward judge: ratings averaged per edit")
    parser.add_argument("--judge-timeout", type=float, default=120.0, help="--reward judge: seconds per request")
    parser.add_argument("--judge-key-env", default=JUDGE_KEY_ENV,
                        help=f"--reward judge: environment variable holding the API key (default {JUDGE_KEY_ENV})")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Steps, seeds, a sample limit and ``--overwrite`` (shared by ``firered prefs`` and ``firered mine``)."""
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="the first edit's seed; edit j uses seed + j")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def checked_inputs(args: argparse.Namespace) -> tuple[Path, Path, Any]:
    """``--out``, the manifest and the judge of a run, refused before any model loads: an existing ``--out``
    without ``--overwrite``, a missing manifest, ``--reward judge`` without an endpoint or local folder."""
    out, manifest = Path(args.out), Path(args.manifest)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
    return out, manifest, judge_from_args(args)


def judge_from_args(args: argparse.Namespace) -> Any:
    """The judge ``--reward judge`` asks for (``None`` for the other rewards); refuses a missing endpoint and
    local folder, or both."""
    if args.reward != "judge":
        return None
    return build_judge(args.judge_endpoint, args.judge_local, model=args.judge_model, passes=args.judge_passes,
                       timeout_s=args.judge_timeout, key_env=args.judge_key_env)


def model_edit_fn(model: str | None, steps: int | None) -> EditFn:
    """``(sample, seeds) -> edits`` with a model folder (default: the embedded model) at the target's size: the
    seeds of a sample sampled in one batch (``FireRedEditPipeline.edit_seeds``), each the edit its seed gives."""
    from firered_core.default import model_dir
    from firered_core.pipeline import FireRedEditPipeline

    pipe = FireRedEditPipeline.from_pretrained(model if model is not None else model_dir())  # its defaults.json

    def edit(sample: PrefSample, seeds: Sequence[int]) -> list[Image.Image]:
        width, height = pipe.fit_size(*sample.target.size)
        results = pipe.edit_seeds(sample.sources, sample.instruction, seeds=list(seeds), steps=steps, width=width,
                                  height=height)
        return [r.image for r in results]
    return edit


def run_prefs(args: argparse.Namespace) -> int:
    config = PairConfig(mode=args.mode, k=args.k, min_gap=args.min_gap, fail_below=args.fail_below)
    out, manifest, judge = checked_inputs(args)
    samples = read_samples(manifest)
    if args.limit is not None:
        samples = samples[:args.limit]
    path, seen, pairs = build_preferences(samples, model_edit_fn(args.model, args.steps), args.reward, out, config,
                                          seed=args.seed, reward_mode=args.reward_mode, overwrite=args.overwrite,
                                          judge=judge)
    log.info("prefs: %d pairs from %d samples in %s", pairs, seen, path)
    return 0
