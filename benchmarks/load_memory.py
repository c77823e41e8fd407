"""Peak memory of loading a >= 1 GB checkpoint with ``firered_core.loading``, relative to the file size.

What it does:

1. writes, in a temporary folder, a ComfyUI-style transformer file with FireRed's real widths (3072 hidden, 24
   heads, 3584 text dim) but only ``--layers`` blocks (2 by default: ~1.4 GB in bf16), plus the released-size VAE
   in Wan names, all with random weights;
2. starts a fresh Python process that imports everything, records its RSS (the baseline), calls
   ``load_components([transformer, vae])`` and reports its peak RSS (the kernel's ``VmHWM``, reset at the baseline);
3. prints peak - baseline divided by the files' size (target <= 1.3) and by the loaded weights' size, then deletes
   the temporary files.

Run: ``python benchmarks/load_memory.py [--layers 2] [--file-dtype bfloat16] [--load-dtype bfloat16] [--fp8]``.
Loading into another dtype than the file's changes the size of the result, hence the second ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("load_memory")


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_peak() -> None:
    """Start the kernel's peak-RSS counter afresh (Linux >= 4.0); elsewhere the peak includes start-up."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the process image, whereas ru_maxrss survives fork + exec and
    would report the parent's peak (the parent held the generated weights) instead of the loader's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; may include the parent


def write_checkpoint(folder: Path, layers: int, dtype: torch.dtype) -> tuple[Path, Path]:
    """A FireRed-width transformer with ``layers`` blocks and the released VAE, random weights, ComfyUI layout."""
    from firered_core.config import TransformerConfig, VAEConfig
    from firered_core.loading.comfy_files import diffusers_to_wan_vae_keys
    from firered_core.loading.save import write_safetensors
    from firered_core.transformer import FireRedTransformer
    from firered_core.vae import FireRedVAE

    gen = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in FireRedTransformer(TransformerConfig(num_layers=layers),
                                                        device="meta").state_dict().items()}
    state = {k: (torch.randn(s, generator=gen, dtype=torch.float32) * 0.02).to(dtype) for k, s in shapes.items()}
    transformer = folder / "transformer.safetensors"
    write_safetensors(transformer, state)
    del state
    vae_shapes = {k: v.shape for k, v in FireRedVAE(VAEConfig(), device="meta").state_dict().items()}
    names = diffusers_to_wan_vae_keys(list(vae_shapes))
    vae = folder / "vae.safetensors"
    write_safetensors(vae, {names[k]: (torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in vae_shapes.items()})
    return transformer, vae


def child(paths: list[str], load_dtype: str, fp8: bool) -> None:
    """Runs in the fresh process: load and print one JSON line of measurements."""
    from firered_core.loading import load_components

    _reset_peak()
    baseline = _rss_bytes()
    start = time.perf_counter()
    parts = load_components(paths, dtype=getattr(torch, load_dtype), fp8=fp8, load_encoder=False)
    seconds = time.perf_counter() - start
    weights = sum(t.numel() * t.element_size() for m in (parts.transformer, parts.vae)
                  for t in m.state_dict().values())
    print(json.dumps({"baseline": baseline, "peak": _peak_rss_bytes(), "after": _rss_bytes(), "weights": weights,
                      "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--file-dtype", default="bfloat16")
    parser.add_argument("--load-dtype", default=None, help="dtype to load into (default: the file's)")
    parser.add_argument("--fp8", action="store_true", help="store Linear weights as float8_e4m3fn")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    load_dtype = args.load_dtype or args.file_dtype
    if args.child:
        child(args.child, load_dtype, args.fp8)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="firered-load-memory-") as tmp:
        files = write_checkpoint(Path(tmp), args.layers, getattr(torch, args.file_dtype))
        size = sum(f.stat().st_size for f in files)
        cmd = [sys.executable, __file__, "--load-dtype", load_dtype, *(["--fp8"] if args.fp8 else []),
               "--child", *map(str, files)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    m = json.loads(out)
    delta = m["peak"] - m["baseline"]
    gib = 2**30
    print(f"checkpoint: {args.layers} FireRed-width layers + VAE, {args.file_dtype}, {size / gib:.3f} GiB on disk; "
          f"loaded as {load_dtype}{' + fp8 Linear weights' if args.fp8 else ''} in {m['seconds']:.1f} s")
    print(f"RSS baseline {m['baseline'] / gib:.3f} GiB, peak {m['peak'] / gib:.3f} GiB (absolute), "
          f"after load {m['after'] / gib:.3f} GiB")
    print(f"peak - baseline = {delta / gib:.3f} GiB = {delta / size:.3f} x file size (target <= 1.3), "
          f"{delta / m['weights']:.3f} x loaded weights ({m['weights'] / gib:.3f} GiB)")
    print(f"absolute peak / file size = {m['peak'] / size:.3f}")


if __name__ == "__main__":
    main()
