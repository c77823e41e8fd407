"""The real 20.4 B-parameter transformer on this machine: one sampling step through ``offload="blocks"``, peak RSS.

Run (about 15-25 minutes on 2 cores; needs ~35 GB free in the system temp folder, removed afterwards):

    python benchmarks/real_size.py                 # firered-1.0: an fp8 file and a GGUF Q4_K file
    python benchmarks/real_size.py --smoke         # the same machinery at the bench-mid size, in seconds

What it does, per storage format, each in a fresh child process so its peak RSS is its own:

1. The parent writes the transformer of the preset with random weights (``benchmarks/real_weights.py``: a ComfyUI
   fp8 single file, 20.4 GB; a ComfyUI-GGUF Q4_K file, 11.6 GB) and the real Qwen-Image VAE (random, bf16) to a
   fresh folder under the system temp folder.
2. The child loads them as ``FireRedEditPipeline.from_pretrained(..., offload="blocks")`` does (transformer blocks
   file-backed), sets ``offload="blocks"`` on the CPU with no budget (every block streams through the two slots),
   and runs a 256x256 edit with one reference picture and ONE sampling step (true CFG off: one transformer
   forward), bfloat16 compute.
3. It prints the load time, the edit time and the peak resident memory of the whole child (``VmHWM``: loading and
   the step together), and the parent a table.

The condition encoder is not part of this measurement: a stand-in returns seeded embeddings of the real width
(3584) and a realistic length, because the 7 B Qwen2.5-VL with random weights adds minutes and its own memory,
which ``benchmarks/memory_table.py`` accounts for. The CPU is the compute device here, so "device memory" is the
process's own: what the figure shows is that neither format's 11-20 GB ever becomes resident.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL_GB = 6.0
TEXT_TOKENS = 80  # instruction + template of a short edit prompt, after the dropped prefix


def _peak_rss_gb() -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


class _RandomCondition:
    """Stand-in for the condition encoder: seeded embeddings ``[1, TEXT_TOKENS, width]`` per prompt."""

    def __init__(self, width: int) -> None:
        self.width = width

    def encode(self, prompts: list[str], images: list) -> object:
        from firered_core.encoder.base import EncodedCondition

        gen = torch.Generator().manual_seed(len(prompts[0]))
        return EncodedCondition(torch.randn(1, TEXT_TOKENS, self.width, generator=gen),
                                torch.ones(1, TEXT_TOKENS, dtype=torch.long))


def _child(fmt: str, transformer_path: str, vae_path: str, size: int) -> dict:
    from PIL import Image

    from firered_core.config import SchedulerConfig
    from firered_core.loading import load_transformer_file, load_vae_file
    from firered_core.pipeline import FireRedEditPipeline

    started = time.perf_counter()
    transformer = load_transformer_file(transformer_path, dtype=torch.bfloat16, fp8=fmt == "fp8", map_blocks=True)
    vae = load_vae_file(vae_path, dtype=torch.bfloat16)
    pipe = FireRedEditPipeline(transformer, vae, _RandomCondition(transformer.config.joint_attention_dim),
                               SchedulerConfig())
    pipe.set_offload("blocks", device="cpu")
    loaded = time.perf_counter()
    picture = Image.new("RGB", (size, size), (90, 140, 200))
    result = pipe.edit([picture], "make the sky purple", steps=1, true_cfg_scale=1.0, width=size, height=size)
    done = time.perf_counter()
    finite = bool(torch.isfinite(result.latents).all())
    return {"format": fmt, "load_s": loaded - started, "step_s": done - loaded, "peak_rss_gb": _peak_rss_gb(), "finite": finite}


def _write(preset: str, folder: Path) -> dict[str, tuple[Path, float]]:
    from real_weights import write_fp8_safetensors, write_q4_k_gguf

    from firered_core.config import get_preset
    from firered_core.loading import save_comfy_vae
    from firered_core.vae import FireRedVAE

    config = get_preset(preset)
    files = {}
    for fmt, name, writer in (("fp8", "transformer-fp8.safetensors", write_fp8_safetensors),
                              ("Q4_K", "transformer-Q4_K.gguf", write_q4_k_gguf)):
        started = time.perf_counter()
        size = writer(config.transformer, folder / name)
        print(f"wrote {name}: {size / 1e9:.2f} GB in {time.perf_counter() - started:.0f} s", flush=True)
        files[fmt] = (folder / name, size / 1e9)
    torch.manual_seed(0)
    vae = FireRedVAE(config.vae, dtype=torch.bfloat16)
    save_comfy_vae(vae, folder / "vae.safetensors")
    files["vae"] = (folder / "vae.safetensors", (folder / "vae.safetensors").stat().st_size / 1e9)
    return files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="firered-1.0")
    p.add_argument("--size", type=int, default=256, help="side of the output and of the reference picture")
    p.add_argument("--smoke", action="store_true", help="bench-mid at 64 px instead of the real size (CI)")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fmt, transformer_path, vae_path, size = args.child
        print(json.dumps(_child(fmt, transformer_path, vae_path, int(size))))
        return 0
    from firered_core.config import get_preset
    from firered_core.transformer import FireRedTransformer

    preset = "bench-mid" if args.smoke else args.preset
    if args.smoke:
        args.size = 64
    folder = Path(tempfile.mkdtemp(prefix="firered-real-size-"))
    try:
        free = shutil.disk_usage(folder).free / 1e9
        need = 1.0 if args.smoke else 35.0
        if free < need:
            print(f"error: {folder} has {free:.1f} GB free; the files need about {need:.0f} GB", file=sys.stderr)
            return 2
        files = _write(preset, folder)
        rows = []
        for fmt in ("fp8", "Q4_K"):
            cmd = [sys.executable, __file__, "--child", fmt, str(files[fmt][0]), str(files["vae"][0]), str(args.size)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"file_gb": files[fmt][1]})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    params = sum(t.numel() for t in FireRedTransformer(get_preset(preset).transformer, device="meta").parameters())
    print(f"\npreset {preset} ({params:,} transformer parameters), {args.size}x{args.size} edit, 1 reference, "
          "1 step, offload blocks on the CPU, bf16 compute")
    print("| storage | file (GB) | load (s) | one step, VAE included (s) | peak RSS (GB) | finite |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['file_gb']:.2f} | {r['load_s']:.1f} | {r['step_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {r['finite']} |")
    if not args.smoke:
        worst = max(r["peak_rss_gb"] for r in rows)
        print(f"largest peak RSS {worst:.2f} GB, goal <= {GOAL_GB} GB: {'met' if worst <= GOAL_GB else 'NOT met'}")
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
