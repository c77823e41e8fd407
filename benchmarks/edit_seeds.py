"""K edits of one instruction: one batch (``FireRedEditPipeline.edit_seeds``) against K separate edits.

Run (about a minute on 2 quiet cores; 9 minutes beside two training runs):

    python benchmarks/edit_seeds.py [--samples 6] [--k 8] [--runs 3] [--threads 2]

Workload: the embedded default model as shipped (its ``defaults.json``: 10 stochastic steps, CFG 1, Picture 1 kept
outside the edit) on ``--samples`` held-out synthetic edits (``firered_bench``, seed 3), ``--k`` seeds each: what
``firered prefs`` and ``firered mine`` do for every sample. Timed, the median over ``--runs`` of the whole set:

* one at a time: ``edit(seed=s)`` for each seed (how the commands sampled before batching);
* one batch per sample: ``edit_seeds(seeds=...)``, the instruction and the references encoded once.

Printed: seconds per edit of each and their ratio, and the largest pixel difference between the two ways' results
(each seed's edit is the same up to batched rounding). ``--smoke``: 1 sample, k 2, 1 run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from firered_bench import generate
from firered_core.default import load_default_pipeline


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=6)
    p.add_argument("--k", type=int, default=8, help="seeds per sample")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--smoke", action="store_true", help="1 sample, k 2, 1 run")
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.k, args.runs = 1, 2, 1
    torch.set_num_threads(args.threads)
    pipe = load_default_pipeline()
    samples = list(generate("heldout", args.samples, seed=3))
    seeds = list(range(args.k))

    def alone() -> list[list[np.ndarray]]:
        return [[np.asarray(pipe.edit(list(s.sources), s.instruction, seed=seed).image, dtype=int) for seed in seeds]
                for s in samples]

    def batched() -> list[list[np.ndarray]]:
        return [[np.asarray(r.image, dtype=int) for r in pipe.edit_seeds(list(s.sources), s.instruction, seeds=seeds)]
                for s in samples]

    times = {"alone": [], "batched": []}
    results = {}
    for _ in range(args.runs):
        for name, fn in (("alone", alone), ("batched", batched)):  # alternated, so load changes hit both
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    edits = args.samples * args.k
    per_alone = statistics.median(times["alone"]) / edits
    per_batch = statistics.median(times["batched"]) / edits
    diff = max(int(np.abs(a - b).max()) for row_a, row_b in zip(results["alone"], results["batched"])
               for a, b in zip(row_a, row_b))
    print(f"{args.samples} samples x {args.k} seeds, {args.runs} run(s), {args.threads} thread(s)")
    print(f"one at a time: {per_alone:.3f} s per edit")
    print(f"one batch per sample: {per_batch:.3f} s per edit")
    print(f"ratio: x{per_alone / per_batch:.2f} faster batched; largest pixel difference {diff} (of 255)")


if __name__ == "__main__":
    main()
