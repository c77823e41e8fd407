"""``firered mine MANIFEST --out MINED.jsonl``: semi-hard prompt mining for the DiffusionNFT stage.

FireRed trains its NFT stage on prompts mined under the previous checkpoint: prompts the model already handles on
average but not reliably - a good mean reward with a high spread or a low worst case. The reason is the group
normalisation: a prompt whose K results all score alike (all pass, or all fail) has every advantage at 0 and
costs a sampling round for no signal.

Every sample is edited ``k`` times with seeds ``seed .. seed + k - 1`` (the model's own sampler and steps, as
``firered prefs`` does), the edits are scored with a reward of ``scoring``, and the sample is kept when

    mean >= min_mean  and  (std >= min_std  or  lowest <= max_lowest)

(``std`` over the K rewards, population form; ``lowest`` their minimum). The kept manifest lines are written
unchanged but for their picture paths, re-based to the output file's folder, and a ``mining`` field with the
figures ``{"k", "mean", "std", "lowest"}``; the file is written whole to a temporary name and moved into place,
and an existing one is refused without ``--overwrite``.

Public API: ``MiningConfig``, ``PromptStats``, ``mine_prompts``, ``register_mine``, ``run_mine``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from firered_core.config import ConfigError

from .command import EditFn, add_run_arguments, add_scoring_arguments, checked_inputs, model_edit_fn, read_rows
from .scoring import PrefSample, score_edits

log = logging.getLogger(__name__)

__all__ = ["MiningConfig", "PromptStats", "mine_prompts", "register_mine", "run_mine"]

PATH_FIELDS = ("source_image", "target_image", "edit_image")


@dataclass(frozen=True)
class MiningConfig:
    """Which prompts count as semi-hard (see the module docstring)."""

    k: int = 8
    min_mean: float = 0.25
    min_std: float = 0.2
    max_lowest: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise ConfigError(f"k: must be an integer >= 2 (a spread needs two edits), got {self.k!r}")
        for name in ("min_mean", "min_std", "max_lowest"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}: must be a finite number, got {value!r}")


@dataclass(frozen=True)
class PromptStats:
    """The K rewards of one prompt, summarised."""

    k: int
    mean: float
    std: float
    lowest: float

    @classmethod
    def of(cls, rewards: Sequence[float]) -> "PromptStats":
        if not rewards:
            raise ValueError("no rewards to summarise")
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
        return cls(len(rewards), mean, std, min(rewards))

    def semi_hard(self, config: MiningConfig) -> bool:
        return self.mean >= config.min_mean and (self.std >= config.min_std or self.lowest <= config.max_lowest)

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "mean": round(self.mean, 6), "std": round(self.std, 6), "lowest": round(self.lowest, 6)}


def _rebased(row: dict[str, Any], base: Path, out_dir: Path) -> dict[str, Any]:
    """``row`` with its relative picture paths (relative to ``base``) made relative to ``out_dir``."""
    def move(rel: str) -> str:
        if not rel.strip() or Path(rel).is_absolute():
            return rel
        target = (base / rel).resolve()
        try:
            return Path(os.path.relpath(target, out_dir.resolve())).as_posix()
        except ValueError:  # another drive (Windows): no relative path exists
            return str(target)

    out = dict(row)
    for key in PATH_FIELDS:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = move(value)
        elif isinstance(value, list):
            out[key] = [move(v) if isinstance(v, str) else v for v in value]
    return out


def mine_prompts(rows: Sequence[tuple[dict[str, Any], Path, PrefSample]], edit: EditFn, reward: str,
                 config: MiningConfig, out: Path, *, seed: int = 0, reward_mode: str = "pass",
                 overwrite: bool = False, judge: Any = None) -> tuple[int, int]:
    """Edit and score every sample, write the semi-hard ones' lines to ``out``; returns (seen, kept)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    lines = []
    for row, base, sample in rows:
        edits = edit(sample, range(seed, seed + config.k))
        stats = PromptStats.of(score_edits(reward, sample, edits, reward_mode, judge))
        keep = stats.semi_hard(config)
        log.info("%s: mean %.3f, std %.3f, lowest %.3f -> %s", sample.id, stats.mean, stats.std, stats.lowest,
                 "kept" if keep else "left out")
        if keep:
            lines.append(json.dumps({**_rebased(row, base, out.parent), "mining": stats.as_dict()},
                                    ensure_ascii=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("mine: kept %d of %d samples in %s", len(lines), len(rows), out)
    return len(rows), len(lines)


def register_mine(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = ("Semi-hard prompt mining for the NFT stage: K edits per sample of a JSONL manifest with "
                          "a model, scored with a reward; samples with a good mean but a wide spread or a low "
                          "worst case are written to a new manifest.")
    parser.add_argument("manifest", help="JSONL manifest (docs/DATA_FORMAT.md)")
    parser.add_argument("--out", required=True, help="the mined manifest to write (.jsonl)")
    add_scoring_arguments(parser, reward_mode="pass")
    parser.add_argument("-k", type=int, default=8, help="edits per sample (default 8)")
    parser.add_argument("--min-mean", type=float, default=0.25, help="keep only a mean reward >= this (0.25)")
    parser.add_argument("--min-std", type=float, default=0.2, help="... and a spread >= this (0.2)")
    parser.add_argument("--max-lowest", type=float, default=0.5, help="... or a worst reward <= this (0.5)")
    add_run_arguments(parser)
    return run_mine


def run_mine(args: argparse.Namespace) -> int:
    config = MiningConfig(k=args.k, min_mean=args.min_mean, min_std=args.min_std, max_lowest=args.max_lowest)
    out, manifest, judge = checked_inputs(args)
    rows = read_rows(manifest)
    if args.limit is not None:
        rows = rows[:args.limit]
    seen, kept = mine_prompts(rows, model_edit_fn(args.model, args.steps), args.reward, config, out, seed=args.seed,
                              reward_mode=args.reward_mode, overwrite=args.overwrite, judge=judge)
    log.info("mine: %d of %d samples are semi-hard (%s)", kept, seen, out)
    return 0
