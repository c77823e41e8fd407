"""Cost of streaming the transformer's blocks (offload ``blocks``) against the resident forward, on the CPU.

Run (about a minute on 2 cores):

    python benchmarks/offload_overhead.py [--preset bench-mid] [--image-px 512] [--refs 1] [--runs 7]
    python benchmarks/offload_overhead.py --smoke      # 256 px, 3 runs: seconds

Workload: ``transformer_forward.py``'s (a target of ``--image-px`` squared pixels plus ``--refs`` references,
``--text-len`` condition tokens). Two copies of the model with identical weights live in this process: one computes
resident; the other runs inside ``OffloadPlacement("blocks", "cpu").use(...)`` opened once, as one edit's sampling
does, so every forward copies each block's weights into a slot just before the block runs (on the CPU too: the
streamer always copies) and releases it afterwards. After ``--warmup`` calls each, ``--runs`` iterations time one
forward of each, alternating which goes first; medians are compared. Outputs must be bit-identical.

What it measures on a CPU: the machinery (hooks, slot bookkeeping, views, one memcpy of every block weight per
forward). On a GPU the copy crosses PCIe on a side stream and overlaps the previous block's compute; that overlap
is not measured here (docs/MEMORY.md). Goal: ratio blocks / resident <= 1.15.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from firered_core.config import get_preset
from firered_core.offload import OffloadPlacement, format_gb
from firered_core.transformer import FireRedTransformer
from transformer_forward import Workload, make_inputs

GOAL = 1.15


def time_both(resident: torch.nn.Module, streamed: torch.nn.Module, w: Workload, inputs: dict, runs: int,
              warmup: int) -> dict[str, float]:
    models = {"resident": resident, "blocks": streamed}
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                models[name](**inputs, img_shapes=w.img_shapes)
        for i in range(runs):
            for name in names if i % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                models[name](**inputs, img_shapes=w.img_shapes)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench-mid")
    p.add_argument("--image-px", type=int, default=512, help="side of the target and of each reference image")
    p.add_argument("--refs", type=int, default=1)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--smoke", action="store_true", help="256 px, 3 runs (seconds; for CI)")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_px, args.runs, args.warmup = 256, 3, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = get_preset(args.preset).transformer
    side = args.image_px // 16
    w = Workload(cfg, [(1, side, side)] * (1 + args.refs), args.text_len, "none")
    torch.manual_seed(0)
    resident = FireRedTransformer(cfg).eval()
    streamed = copy.deepcopy(resident)
    inputs = make_inputs(w)
    placement = OffloadPlacement("blocks", "cpu")
    plan = placement.plan("transformer", streamed)
    with placement.use("transformer", streamed):
        with torch.inference_mode():
            same = torch.equal(resident(**inputs, img_shapes=w.img_shapes), streamed(**inputs, img_shapes=w.img_shapes))
        times = time_both(resident, streamed, w, inputs, args.runs, args.warmup)
    copied = sum(plan.block_bytes[i] for i in plan.streamed)
    ratio = times["blocks"] / times["resident"]
    print(f"preset {args.preset}: dim {cfg.inner_dim}, {cfg.num_layers} blocks; image tokens {w.image_tokens}, text "
          f"{w.text_len}; {args.threads} threads; torch {torch.__version__}")
    print(f"blocks mode: {len(plan.streamed)} blocks streamed through 2 slots of {format_gb(max(plan.block_bytes))}, "
          f"{format_gb(copied)} copied per forward; outputs bit-identical: {same}")
    print(f"forward time (median of {args.runs}, alternating): resident {times['resident'] * 1e3:.0f} ms, blocks "
          f"{times['blocks'] * 1e3:.0f} ms -> ratio blocks/resident {ratio:.3f} (goal <= {GOAL})")
    if not same:
        raise SystemExit("offload_overhead: the streamed forward differs from the resident one")


if __name__ == "__main__":
    main()
