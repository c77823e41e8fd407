"""Forward speed, peak memory and FLOP rate of FireRedTransformer against diffusers' QwenImageTransformer2DModel.

Run (CPU, about a minute on 2 cores):

    python benchmarks/transformer_forward.py [--preset bench-mid] [--runs 7] [--mask none|full|padded]

Workload: a FireRed edit call at the preset's width: a target of ``--image-px`` squared pixels plus ``--refs``
references of the same size (1024 tokens each at 512 px) and ``--text-len`` condition tokens, batch 1. Both
models get identical weights; the output difference is printed as a sanity check.

How each number is measured, and why that way:

* Time: both models live in this process; after ``--warmup`` calls each, ``--runs`` iterations time one forward
  of each, alternating which goes first, under ``torch.inference_mode``. The median per model is reported, so a
  burst of load from other processes on a shared machine hits both sides alike and does not skew the ratio.
* Peak memory: torch's CPU allocations are invisible to ``tracemalloc`` and torch has no CPU allocator
  statistics, so each model runs in its own fresh subprocess and the kernel's accounting is read from
  ``/proc/self/status``: after a warm-up forward, the resident high-water mark is reset (``echo 5 >
  /proc/self/clear_refs``), one forward runs, and ``VmHWM - VmRSS(before)`` is the extra memory that forward
  needed at its peak (activations and workspaces; the weights were already resident). glibc would otherwise keep
  freed tensor memory cached and hide the reuse, so the children run with a fixed ``MALLOC_MMAP_THRESHOLD_`` that
  makes every large tensor its own mapping, returned to the kernel when freed. Linux only.
* FLOP/s: the matmul FLOPs of one forward are counted analytically from the config and token counts (projections,
  MLPs, modulations, both attention products QK^T and AV; 2 FLOPs per multiply-add), for each model the work it
  actually does (ours skips the last block's work for cropped-away tokens), and divided by the median time.
  The yardstick is a plain ``torch.matmul`` of the MLP's shape ``[S, dim] x [dim, 4 dim]`` on the same threads,
  i.e. what this machine's BLAS reaches on this problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from math import prod

import torch

from firered_core.config import TransformerConfig, get_preset
from firered_core.transformer import FireRedTransformer
from procmem import measure_in_child, print_peak_extra, ratio_text


# ---------------------------------------------------------------------------------------------------------------
# workload
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Workload:
    cfg: TransformerConfig
    img_shapes: list[tuple[int, int, int]]
    text_len: int
    mask: str  # none | full | padded

    @property
    def image_tokens(self) -> int:
        return sum(prod(s) for s in self.img_shapes)


def make_workload(args: argparse.Namespace) -> Workload:
    cfg = get_preset(args.preset).transformer
    side = args.image_px // 16  # one token covers 16x16 pixels
    return Workload(cfg, [(1, side, side)] * (1 + args.refs), args.text_len, args.mask)


def make_inputs(w: Workload) -> dict:
    gen = torch.Generator().manual_seed(1)
    mask = None
    if w.mask != "none":
        mask = torch.ones(1, w.text_len, dtype=torch.long)
        if w.mask == "padded":
            mask[:, w.text_len * 3 // 4:] = 0
    return dict(
        hidden_states=torch.randn(1, w.image_tokens, w.cfg.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(1, w.text_len, w.cfg.joint_attention_dim, generator=gen),
        encoder_hidden_states_mask=mask,
        timestep=torch.tensor([0.5]),
    )


def build_models(w: Workload, which: str = "both") -> dict[str, torch.nn.Module]:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    models: dict[str, torch.nn.Module] = {}
    reference = QwenImageTransformer2DModel(**{k: v for k, v in w.cfg.to_dict().items() if not k.startswith("_")})
    if which in ("both", "diffusers"):
        models["diffusers"] = reference.eval()
    if which in ("both", "ours"):
        ours = FireRedTransformer(w.cfg)
        ours.load_state_dict(reference.state_dict(), strict=True)
        models["ours"] = ours.eval()
    return models


def run(name: str, model: torch.nn.Module, w: Workload, inputs: dict) -> torch.Tensor:
    if name == "ours":
        return model(**inputs, img_shapes=w.img_shapes)
    return model(**inputs, img_shapes=[w.img_shapes], return_dict=False)[0][:, : prod(w.img_shapes[0])]


# ---------------------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------------------

def time_models(models: dict[str, torch.nn.Module], w: Workload, inputs: dict, runs: int,
                warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                run(name, models[name], w, inputs)
        for i in range(runs):
            for name in names if i % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                run(name, models[name], w, inputs)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def memory_child(which: str, args: argparse.Namespace) -> None:
    """In a fresh process: peak extra resident memory of one forward of one model, as JSON on stdout."""
    w = make_workload(args)
    model = build_models(w, which)[which]
    inputs = make_inputs(w)
    with torch.inference_mode():
        run(which, model, w, inputs)  # warm-up: lazy inits and caches are not the forward's working set
        print_peak_extra(lambda: run(which, model, w, inputs))


def measure_memory(which: str, args: argparse.Namespace) -> dict:
    return measure_in_child(__file__, which, _forwarded(args), args.threads)


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--preset", args.preset, "--image-px", str(args.image_px), "--refs", str(args.refs),
            "--text-len", str(args.text_len), "--mask", args.mask, "--threads", str(args.threads)]


def forward_flops(w: Workload, lean_last_block: bool) -> float:
    """Matmul FLOPs of one forward (2 per multiply-add); elementwise work is not counted.

    ``lean_last_block``: the last block computes queries, output projection and MLP for the target tokens only
    and skips the text stream (FireRedTransformer); diffusers runs it in full.
    """
    cfg, d = w.cfg, w.cfg.inner_dim
    n, l, n_out = w.image_tokens, w.text_len, prod(w.img_shapes[0])
    s = n + l
    full_block = (s * 12 * d * d  # q, k, v, out (4 d^2) + MLP (8 d^2) per token, each stream its own weights
                  + 2 * 6 * d * d  # img_mod and txt_mod of the batch's temb
                  + 2 * s * s * d)  # QK^T and AV over all heads
    last_block = full_block
    if lean_last_block:
        last_block = (s * 2 * d * d + n_out * 10 * d * d  # k, v for all; q, out, MLP for the target
                      + 2 * 6 * d * d + 2 * n_out * s * d)
    outside = (n * cfg.in_channels * d + l * cfg.joint_attention_dim * d  # img_in, txt_in
               + 256 * d + d * d  # timestep MLP
               + 2 * d * d + n_out * d * cfg.patch_size**2 * cfg.out_channels)  # norm_out, proj_out
    return 2.0 * ((cfg.num_layers - 1) * full_block + last_block + outside)


def matmul_gflops(w: Workload, runs: int) -> float:
    d, s = w.cfg.inner_dim, w.image_tokens + w.text_len
    a, b = torch.randn(s, d), torch.randn(d, 4 * d)
    ts = []
    for _ in range(runs + 2):
        start = time.perf_counter()
        torch.matmul(a, b)
        ts.append(time.perf_counter() - start)
    return 2.0 * s * d * 4 * d / statistics.median(ts[2:]) / 1e9


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench-mid")
    p.add_argument("--image-px", type=int, default=512, help="side of the target and of each reference image")
    p.add_argument("--refs", type=int, default=1, help="reference images after the target")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--mask", choices=("none", "full", "padded"), default="none",
                   help="text mask: none (pipeline default when nothing is padded), all ones, or 25%% padded")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--memory-child", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    w = make_workload(args)
    models, inputs = build_models(w), make_inputs(w)
    with torch.inference_mode():
        diff = (run("ours", models["ours"], w, inputs) - run("diffusers", models["diffusers"], w, inputs)).abs().max()
    times = time_models(models, w, inputs, args.runs, args.warmup)
    del models
    memory = {name: measure_memory(name, args) for name in ("ours", "diffusers")}
    flops = {"ours": forward_flops(w, lean_last_block=True), "diffusers": forward_flops(w, lean_last_block=False)}
    peak = matmul_gflops(w, args.runs)

    cfg = w.cfg
    print(f"preset {args.preset}: dim {cfg.inner_dim}, {cfg.num_layers} layers, {cfg.num_attention_heads} heads; "
          f"image tokens {w.image_tokens} ({len(w.img_shapes)} x {w.img_shapes[0][1]}x{w.img_shapes[0][2]}), "
          f"text {w.text_len} (mask: {w.mask}); {args.threads} threads; torch {torch.__version__}")
    print(f"output max abs diff vs diffusers: {diff.item():.2e}")
    print(f"forward time (median of {args.runs}, alternating): ours {times['ours'] * 1e3:.0f} ms, "
          f"diffusers {times['diffusers'] * 1e3:.0f} ms -> ratio ours/diffusers "
          f"{times['ours'] / times['diffusers']:.3f}")
    print(f"peak extra memory of one forward: ours {memory['ours']['peak_extra_mb']:.1f} MB, diffusers "
          f"{memory['diffusers']['peak_extra_mb']:.1f} MB -> ratio ours/diffusers "
          f"{ratio_text(memory['ours']['peak_extra_mb'], memory['diffusers']['peak_extra_mb'])}")
    rate = {name: flops[name] / t / 1e9 for name, t in times.items()}
    print(f"forward matmul work: ours {flops['ours'] / 1e9:.1f} GFLOP (lean last block), diffusers "
          f"{flops['diffusers'] / 1e9:.1f} GFLOP")
    print(f"achieved: ours {rate['ours']:.1f} GFLOP/s, diffusers {rate['diffusers']:.1f} GFLOP/s; plain torch.matmul "
          f"[{w.image_tokens + w.text_len}x{cfg.inner_dim}]x[{cfg.inner_dim}x{4 * cfg.inner_dim}] {peak:.1f} GFLOP/s "
          f"-> ours at {rate['ours'] / peak:.2f} of matmul, diffusers at {rate['diffusers'] / peak:.2f}")

if __name__ == "__main__":
    main()
