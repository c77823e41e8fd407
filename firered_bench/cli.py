"""``python -m firered_bench``: write a synthetic split to a folder.

::

    python -m firered_bench OUT_DIR [--split train|heldout] [-n 10000] [--seed 0] [--size 64] [--overwrite]

``register_synth`` / ``run_synth`` follow the shape of ``firered_train.cli`` (a parser filler returning its
runner), so the ``firered`` dispatcher can mount the command as ``firered synth`` without changes here.
Exit codes: 0 written, 2 bad usage or an existing output folder (nothing is overwritten without --overwrite).

Public API: ``register_synth``, ``run_synth``, ``main``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Callable, Sequence

from .generate.generator import SPLITS
from .generate.writer import write_dataset

log = logging.getLogger(__name__)

Runner = Callable[[argparse.Namespace], int]
EXIT_USAGE = 2


def register_synth(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("out_dir", help="folder to create (manifest.jsonl, info.json, images/)")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("-n", type=int, default=10_000, help="number of samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels, a multiple of 16")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    return run_synth


def run_synth(args: argparse.Namespace) -> int:
    manifest = write_dataset(args.out_dir, args.split, args.n, seed=args.seed, size=args.size,
                             overwrite=args.overwrite)
    log.info("manifest: %s", manifest)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firered_bench",
                                     description="Write a seeded synthetic edit dataset with exact targets.")
    run = register_synth(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args)
    except (FileExistsError, ValueError) as exc:
        log.error("error: %s", exc)
        return EXIT_USAGE
