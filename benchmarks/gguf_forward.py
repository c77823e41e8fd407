"""Forward time of a GGUF Q8_0 transformer (weights dequantised per layer at every call) against the same model
stored in bfloat16, both computing in bfloat16, side by side in one process.

Run (CPU):

    python benchmarks/gguf_forward.py [--preset bench-mid] [--qtype Q8_0] [--runs 7]   # a few minutes on 2 cores
    python benchmarks/gguf_forward.py --smoke                                          # tiny preset, 1 run, seconds

What it does:

1. builds the preset's transformer with random weights (N(0, 0.02)), writes it to a temporary GGUF file the way
   ComfyUI-GGUF's tools do (block weights in ``--qtype`` by gguf-py's quantiser; 1-D tensors F32; img_in, txt_in,
   time_text_embed, norm_out and proj_out BF16) and loads it with ``firered_core.loading.load_gguf_transformer``
   (``dtype=bfloat16``): the quantised weights stay raw bytes;
2. the reference is the same float weights stored as bfloat16 (``FireRedTransformer.to(bfloat16)``);
3. times one forward of each per iteration, alternating which goes first, under ``torch.inference_mode``, after
   ``--warmup`` calls each; the median per model is reported with the ratio quantised / bf16 (goal <= 1.5), the
   weights' stored bytes and the relative output difference (a sanity check of the quantisation, not a metric).

The workload is a FireRed edit call at the preset's width: a target of ``--image-px`` squared pixels plus
``--refs`` references of the same size and ``--text-len`` condition tokens, batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from math import prod
from pathlib import Path

import torch

from firered_core.config import TransformerConfig, get_preset
from firered_core.loading import load_gguf_transformer
from firered_core.transformer import FireRedTransformer

# the layers ComfyUI-GGUF's quantiser leaves unquantised in Qwen-Image files
KEEP_FLOAT = ("img_in.", "txt_in.", "time_text_embed.", "proj_out.", "norm_out.")


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------

def random_model(preset: str) -> FireRedTransformer:
    torch.manual_seed(0)
    model = FireRedTransformer(get_preset(preset).transformer)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.02 * torch.randn_like(p) if "norm" in name and p.ndim == 1 else 0.02 * torch.randn_like(p))
    return model.eval()


def write_gguf(model: FireRedTransformer, path: Path, qtype: str) -> Path:
    """The model's state dict as a ComfyUI-GGUF-layout file (architecture qwen_image, diffusers key names)."""
    import gguf

    writer = gguf.GGUFWriter(path=None, arch="qwen_image")
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    for key, value in model.state_dict().items():
        if value.ndim == 1:
            kind = "F32"
        elif any(part in key for part in KEEP_FLOAT) or value.shape[-1] % block:
            kind = "BF16"
        else:
            kind = qtype
        data = gguf.quants.quantize(value.float().numpy(), gguf.GGMLQuantizationType[kind])
        writer.add_tensor(key, data, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def stored_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------

def make_inputs(args: argparse.Namespace, cfg: TransformerConfig) -> tuple[dict, list[tuple[int, int, int]]]:
    side = max(args.image_px // 16, 1)  # one token covers 16x16 pixels
    shapes = [(1, side, side)] * (1 + args.refs)
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, sum(prod(s) for s in shapes), cfg.in_channels, generator=gen),
                  encoder_hidden_states=torch.randn(1, args.text_len, cfg.joint_attention_dim, generator=gen),
                  encoder_hidden_states_mask=None, timestep=torch.tensor([0.5]))
    return {k: v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "timestep" else v
            for k, v in inputs.items()}, shapes


def time_models(models: dict[str, torch.nn.Module], inputs: dict, shapes: list[tuple[int, int, int]], runs: int,
                warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                models[name](**inputs, img_shapes=shapes)
        for i in range(runs):
            for name in names if i % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                models[name](**inputs, img_shapes=shapes)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench-mid")
    p.add_argument("--qtype", default="Q8_0", help="GGML type of the block weights (Q8_0, Q4_K, ...)")
    p.add_argument("--image-px", type=int, default=512, help="side of the target and of each reference image")
    p.add_argument("--refs", type=int, default=1, help="reference images after the target")
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--smoke", action="store_true", help="tiny preset, 64 px, 1 run: checks the script runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.preset, args.image_px, args.runs, args.warmup = "tiny", 64, 1, 0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_model(args.preset)
    cfg = model.config
    with tempfile.TemporaryDirectory(prefix="firered-gguf-bench-") as tmp:
        start = time.perf_counter()
        path = write_gguf(model, Path(tmp) / f"model-{args.qtype}.gguf", args.qtype)
        quantised = load_gguf_transformer(path, dtype=torch.bfloat16)
        prepare = time.perf_counter() - start
    models = {"gguf": quantised, "bf16": model.to(torch.bfloat16)}
    inputs, shapes = make_inputs(args, cfg)
    with torch.inference_mode():
        a, b = (models[n](**inputs, img_shapes=shapes).float() for n in ("gguf", "bf16"))
    rel = ((a - b).norm() / b.norm()).item()
    times = time_models(models, inputs, shapes, args.runs, args.warmup)

    print(f"preset {args.preset}: dim {cfg.inner_dim}, {cfg.num_layers} layers; image tokens "
          f"{sum(prod(s) for s in shapes)} ({len(shapes)} x {shapes[0][1]}x{shapes[0][2]}), text {args.text_len}; "
          f"{args.threads} threads; torch {torch.__version__}; GGUF written and loaded in {prepare:.1f} s")
    print(f"stored weights: {args.qtype} GGUF {stored_bytes(quantised) / 2**20:.1f} MiB, bf16 "
          f"{stored_bytes(models['bf16']) / 2**20:.1f} MiB -> ratio "
          f"{stored_bytes(quantised) / stored_bytes(models['bf16']):.3f}")
    print(f"output relative difference {args.qtype} vs bf16 (L2): {rel:.2e}")
    print(f"forward time (median of {args.runs}, alternating, bfloat16 compute): {args.qtype} "
          f"{times['gguf'] * 1e3:.0f} ms, bf16 {times['bf16'] * 1e3:.0f} ms -> ratio {args.qtype}/bf16 "
          f"{times['gguf'] / times['bf16']:.3f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
