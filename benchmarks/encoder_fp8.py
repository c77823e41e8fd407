"""fp8 storage of the Qwen2.5-VL condition encoder: loaded bytes, peak memory while loading, and output error.

What it does:

1. counts, on the meta device (no memory), what the real Qwen2.5-VL-7B backbone takes in bf16 and with fp8
   Linear weights (every Linear of the language model and vision tower; embeddings, norms, the patch convolution
   stay bf16);
2. writes, in a temporary folder, a single file in ComfyUI's key layout with Qwen2.5-VL-7B's real widths but only
   ``--text-layers`` / ``--vision-blocks`` blocks (random weights, bf16; the ``--smoke`` preset is narrow), plus a
   scaled-fp8 copy in the layout of ``qwen_2.5_vl_7b_fp8_scaled.safetensors`` (``scale_weight`` per tensor);
3. loads each in a fresh process and reports the peak RSS above the process's baseline (the kernel's VmHWM, reset
   at the baseline), the bytes of the loaded parameters, and the last hidden state for fixed random tokens:
   ``bf16`` (the bf16 file in bf16, the reference), ``fp8`` (the bf16 file with ``fp8=True``), ``scaled-kept`` (the
   scaled file, kept fp8 as by default) and ``scaled-expanded`` (the scaled file, ``fp8=False``);
4. prints each one's bytes and peak as ratios to the bf16 load and its relative L2 output error against it.

Run: ``python benchmarks/encoder_fp8.py`` (7B widths, 2 text layers + 2 vision blocks: a 2.0 GiB file whose
vocabulary table alone is 1.0 GiB, so the weights ratio stays far above the 7B's; about two minutes) or
``--smoke`` (narrow widths, about 30 s, mostly four interpreter starts). Error figures on random weights only say
that nothing breaks; the encoder's error is measured on the test model in tests/core/test_encoder_fp8.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procmem import status_kb  # noqa: E402

MODES = ("bf16", "fp8", "scaled-kept", "scaled-expanded")
SMOKE_WIDTHS = {"text": dict(hidden_size=512, intermediate_size=1536, num_attention_heads=4, num_key_value_heads=1,
                             vocab_size=8192, bos_token_id=None, eos_token_id=None),
                "vision": dict(hidden_size=320, intermediate_size=864, num_heads=4, out_hidden_size=512)}


def encoder_config(text_layers: int, vision_blocks: int, smoke: bool) -> dict:
    """Qwen2.5-VL-7B's config with fewer blocks (and, for ``smoke``, narrower widths)."""
    from firered_core.encoder.qwen_keys import QWEN25_VL_7B

    config = copy.deepcopy(QWEN25_VL_7B)
    config["text_config"].update(num_hidden_layers=text_layers, max_window_layers=text_layers)
    config["vision_config"].update(depth=vision_blocks, fullatt_block_indexes=[vision_blocks - 1])
    if smoke:
        config["text_config"].update(SMOKE_WIDTHS["text"])
        config["vision_config"].update(SMOKE_WIDTHS["vision"])
    return config


def storage_bytes_7b() -> tuple[int, int]:
    """(bf16 bytes, fp8-storage bytes) of the real 7B backbone, counted on the meta device."""
    from firered_core.encoder.qwen_keys import QWEN25_VL_7B
    from firered_core.encoder.qwen_loading import _as_config, _meta_model

    model = _meta_model(_as_config(QWEN25_VL_7B))
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    total = sum(p.numel() for p in model.parameters())
    in_linear = sum(p.numel() for n, p in model.named_parameters() if n in linear)
    return 2 * total, in_linear + 2 * (total - in_linear)


def write_files(folder: Path, config: dict) -> tuple[Path, Path]:
    """A random bf16 file and its scaled-fp8 copy, both in ComfyUI's (original) key layout, with the config."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    from firered_core.encoder.qwen_keys import config_metadata, to_original_key
    from firered_core.loading.save import write_safetensors

    with torch.device("meta"):
        meta = Qwen2_5_VLModel(Qwen2_5_VLConfig(**copy.deepcopy(config)))
    linear = {f"{n}.weight" for n, m in meta.named_modules() if isinstance(m, torch.nn.Linear)}
    gen = torch.Generator().manual_seed(0)
    plain: dict[str, torch.Tensor] = {}
    scaled: dict[str, torch.Tensor] = {}
    for key, p in meta.state_dict().items():
        name = to_original_key("model." + key)
        value = (torch.ones(p.shape) if "norm" in key else torch.randn(p.shape, generator=gen) * 0.02)
        plain[name] = value.to(torch.bfloat16)
        if key in linear:
            scale = value.abs().amax() / 448
            scaled[name] = (value / scale).to(torch.float8_e4m3fn)
            scaled[name[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
        else:
            scaled[name] = plain[name]
        del value
    scaled["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    metadata = config_metadata(config)
    paths = folder / "qwen_bf16.safetensors", folder / "qwen_fp8_scaled.safetensors"
    write_safetensors(paths[0], plain, metadata=metadata)
    write_safetensors(paths[1], scaled, metadata=metadata)
    return paths


def child(path: str, mode: str, out: str) -> None:
    """In a fresh process: load ``path`` as ``mode``, run fixed tokens, save the output, print one JSON line."""
    from safetensors.torch import save_file

    from firered_core.encoder.qwen_loading import load_single_file_model

    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl  # noqa: F401  (imported before the baseline)

    fp8 = {"bf16": False, "fp8": True, "scaled-kept": None, "scaled-expanded": False}[mode]
    before = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    model = load_single_file_model(Path(path), dtype=torch.bfloat16, fp8=fp8)
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, model.config.text_config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1]
    save_file({"hidden": hidden.float().contiguous()}, out)
    print(json.dumps({"peak_extra": (peak - before) * 1024, "weights": weights, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="narrow widths: runs in a few seconds")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-blocks", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from safetensors.torch import load_file

    gib = 2**30
    bf16_7b, fp8_7b = storage_bytes_7b()
    print(f"Qwen2.5-VL-7B backbone (counted on meta): bf16 {bf16_7b / gib:.2f} GiB, fp8 Linear weights "
          f"{fp8_7b / gib:.2f} GiB = {fp8_7b / bf16_7b:.3f} x bf16")
    config = encoder_config(args.text_layers, args.vision_blocks, args.smoke)
    results = {}
    with tempfile.TemporaryDirectory(prefix="firered-encoder-fp8-") as tmp:
        plain, scaled = write_files(Path(tmp), config)
        print(f"files: {args.text_layers} text layers + {args.vision_blocks} vision blocks at "
              f"{'smoke' if args.smoke else '7B'} widths; bf16 {plain.stat().st_size / gib:.3f} GiB, scaled fp8 "
              f"{scaled.stat().st_size / gib:.3f} GiB")
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        for mode in MODES:
            out = Path(tmp) / f"{mode}.safetensors"
            path = plain if mode in ("bf16", "fp8") else scaled
            cmd = [sys.executable, __file__, "--child", str(path), mode, str(out)]
            lines = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.splitlines()
            results[mode] = {**json.loads(lines[-1]), "hidden": load_file(str(out))["hidden"]}
    ref = results["bf16"]
    print(f"{'load':<16} {'weights GiB':>11} {'x bf16':>7} {'peak extra GiB':>15} {'x bf16':>7} "
          f"{'rel. L2 error':>14} {'seconds':>8}")
    for mode, r in results.items():
        err = ((r["hidden"] - ref["hidden"]).norm() / ref["hidden"].norm()).item()
        print(f"{mode:<16} {r['weights'] / gib:>11.3f} {r['weights'] / ref['weights']:>7.3f} "
              f"{r['peak_extra'] / gib:>15.3f} {r['peak_extra'] / ref['peak_extra']:>7.3f} {err:>14.4f} "
              f"{r['seconds']:>8.2f}")
    kept, expanded = results["scaled-kept"]["hidden"], results["scaled-expanded"]["hidden"]
    print(f"scaled-kept vs scaled-expanded: max abs diff {(kept - expanded).abs().max().item():.3g} (same values, "
          "dequantised at compute time instead of while loading)")


if __name__ == "__main__":
    main()
