"""Device memory of FireRed-Image-Edit per storage format and offload mode, and which graphics cards run what.

Run (a few minutes; ComfyUI's venv, whose CUDA build of torch picks the fused kernels a GPU runs):

    .cache/comfyui/venv/bin/python benchmarks/memory_table.py [--update README.md]
    python benchmarks/memory_table.py --smoke          # small architectures at 256 px, seconds (CI)

What is printed, and how it is obtained:

* **Weights** of each component - the firered-1.0 transformer (``config.PRESETS``), the Qwen2.5-VL-7B backbone
  (``encoder.qwen_keys.QWEN25_VL_7B``, without the LM head the loader skips), the Qwen-Image VAE - built on the meta
  device and counted tensor by tensor in each storage format: ``fp32`` 4 bytes, ``bf16`` 2; ``fp8`` e4m3: 1 byte for
  Linear weights, everything else (norms, biases, embeddings, convolutions) bf16, as ``--fp8`` and ComfyUI's fp8
  files store them; GGUF ``Q8_0``: 34 bytes per 32 values and ``Q4_K``: 144 bytes per 256 for 2-D weights whose
  rows split into whole blocks (Q4_K falls back to Q8_0, then bf16), other tensors bf16.
* **Peak device memory** of a 1024x1024 edit with true CFG and 1 or 2 references of 1024x1024: per phase (condition
  encoding, reference encoding, one sampling step, decoding), the weights the offload mode keeps on the device in
  that phase (``firered_core.offload``'s budget rule applied to the sizes above) plus the phase's activations,
  MEASURED at full size under FakeTensorMode on a fake cuda:0 with the tracker (``memory_phases.py`` says how and
  what is left out). Activations are measured for fp32 (fp32 compute), bf16 and fp8 storage (bf16 compute; fp8
  adds the transient bf16 copy of each weight being used); GGUF formats take fp8's, as their layers also
  dequantise one weight at a time.
* **Cards**: a mode runs on a card when its peak plus ``--reserve`` GB (CUDA context, allocator caching and
  fragmentation, none of which a fake device has) fits the card's memory.

Modes: ``none`` all on the device; ``model`` one component at a time; ``blocks`` without a budget (the transformer
streams, the encoder and VAE run whole); ``blocks@min`` at the smallest ``max_vram`` the model accepts (the encoder
streams its layers too). Sizes in GB = 2**30 bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's firered_core, in any venv
from firered_core.config import TransformerConfig, VAEConfig, get_preset  # noqa: E402
from firered_core.encoder.qwen_keys import QWEN25_VL_7B  # noqa: E402
from firered_core.offload import GB, find_blocks  # noqa: E402
from firered_core.offload.plan import STREAM_SLOTS  # noqa: E402
from firered_core.offload.weights import PACK_ALIGN, weight_entries  # noqa: E402
from memory_phases import PHASES, Workload, build_on_meta, fake_device, measure  # noqa: E402

FORMATS = ("fp32", "bf16", "fp8", "q8_0", "q4_k")
GGUF_FORMATS = ("q8_0", "q4_k")  # GGUF files hold the transformer only: the encoder is counted in fp8 beside them
LABELS = {"q8_0": "GGUF Q8_0", "q4_k": "GGUF Q4_K"}
MODES = ("none", "model", "blocks", "blocks@min")
CARDS = (8, 12, 16, 24, 48, 80)
PART_OF_PHASE = {"encoder": "encoder", "vae_encode": "vae", "transformer": "transformer", "vae_decode": "vae"}
MARKERS = ("<!-- memory-table:start -->", "<!-- memory-table:end -->")


# ---------------------------------------------------------------------------------------------------------------
# Weights per storage format
# ---------------------------------------------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor, fmt: str, linear_weight: bool) -> int:
    """Bytes of one tensor stored in ``fmt`` (see the module docstring)."""
    n = t.numel()
    if not t.is_floating_point():
        return n * t.element_size()
    if fmt == "fp32":
        return 4 * n
    if fmt == "fp8" and linear_weight:
        return n
    if fmt in ("q8_0", "q4_k") and t.ndim == 2:
        if fmt == "q4_k" and t.shape[-1] % 256 == 0:
            return n // 256 * 144
        if t.shape[-1] % 32 == 0:
            return n // 32 * 34
    return 2 * n


@dataclasses.dataclass(frozen=True)
class Sizes:
    """One component in one format: all of it, what is outside its blocks, and each block packed for streaming."""

    total: int
    fixed: int
    blocks: tuple[int, ...]

    def streaming_minimum(self) -> int:
        """The smallest budget it runs in: fixed weights and two slots (its total when it has no blocks)."""
        if not self.blocks:
            return self.total
        return min(self.total, self.fixed + sum(sorted(self.blocks, reverse=True)[:STREAM_SLOTS]))

    def on_device(self, budget: int | None, stream: bool) -> int:
        """Weight bytes on the device while it runs (the budget rule of ``offload.plan``)."""
        if not stream or not self.blocks or (budget is not None and self.total <= budget):
            return self.total
        slots = sum(sorted(self.blocks, reverse=True)[:STREAM_SLOTS])
        if budget is None:
            return self.fixed + slots
        resident = self.fixed
        for size in self.blocks:  # blocks stay resident in order while the slots still fit
            if resident + size + slots > budget:
                break
            resident += size
        return resident + slots


def component_sizes(module: nn.Module, fmt: str) -> Sizes:
    linear = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}

    def count(sub: nn.Module, skip: list[nn.Module] = (), packed: bool = False) -> int:
        seen, total = set(), 0
        for _, _, _, t in weight_entries(sub, skip):
            if id(t) not in seen:
                seen.add(id(t))
                size = tensor_bytes(t, fmt, id(t) in linear)
                total += -(-size // PACK_ALIGN) * PACK_ALIGN if packed else size
        return total

    blocks = find_blocks(module)
    return Sizes(count(module), count(module, blocks), tuple(count(b, packed=True) for b in blocks))


# ---------------------------------------------------------------------------------------------------------------
# Peaks
# ---------------------------------------------------------------------------------------------------------------


def weights_in_phase(sizes: dict[str, Sizes], mode: str, part: str) -> int:
    """Weight bytes on the device while ``part`` runs under ``mode``."""
    if mode == "none":
        return sum(s.total for s in sizes.values())
    if mode == "model":
        return sizes[part].total
    if mode == "blocks":
        return sizes[part].on_device(None, stream=part == "transformer")
    budget = max(s.streaming_minimum() for s in sizes.values())
    return sizes[part].on_device(budget, stream=True)


def peak(sizes: dict[str, Sizes], activations: dict[str, int], mode: str) -> int:
    return max(weights_in_phase(sizes, mode, PART_OF_PHASE[p]) + activations[p] for p in PHASES)


def gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f}"


def tables(sizes: dict[str, dict[str, Sizes]], activations: dict[tuple[str, int], dict[str, int]],
           refs: list[int], reserve: float, how: str, side: int) -> str:
    lines = [f"Weights (GB = 2^30 bytes; {how}; GGUF columns: the transformer from a GGUF file, the encoder "
             "stored in fp8)", "", "| component | " + " | ".join(LABELS.get(f, f) for f in FORMATS) + " |",
             "|---|" + "---:|" * len(FORMATS)]
    for part in ("transformer", "encoder", "vae"):
        lines.append(f"| {part} | " + " | ".join(gb(sizes[f][part].total) for f in FORMATS) + " |")
    lines.append("| **total** | " + " | ".join(gb(sum(s.total for s in sizes[f].values())) for f in FORMATS) + " |")
    for n in refs:
        lines += ["", f"Peak device memory of a {side}x{side} edit, {n} reference{'s' if n > 1 else ''}, true CFG "
                  f"(GB; weights + measured activations)", "",
                  "| storage | " + " | ".join(MODES) + " |", "|---|" + "---:|" * len(MODES)]
        for f in FORMATS:
            lines.append(f"| {LABELS.get(f, f)} | " + " | ".join(gb(peak(sizes[f], activations[(f, n)], m))
                                                              for m in MODES) + " |")
    n = max(refs)
    lines += ["", f"Which modes fit a card ({n} reference{'s' if n > 1 else ''}; peak + {reserve:g} GB reserve)", "",
              "| storage | " + " | ".join(f"{c} GB" for c in CARDS) + " |", "|---|" + "---|" * len(CARDS)]
    for f in FORMATS:
        cells = []
        for card in CARDS:
            fit = [m for m in MODES if peak(sizes[f], activations[(f, n)], m) + reserve * GB <= card * GB]
            cells.append(", ".join(fit) if fit else "-")
        lines.append(f"| {LABELS.get(f, f)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------


def workload(smoke: bool, refs: int) -> Workload:
    if not smoke:
        return Workload(TransformerConfig(), VAEConfig(), QWEN25_VL_7B, 1024, refs)
    text = dict(QWEN25_VL_7B["text_config"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1)
    vision = dict(QWEN25_VL_7B["vision_config"], depth=2, hidden_size=160, intermediate_size=320, num_heads=2,
                  out_hidden_size=256, fullatt_block_indexes=[1])
    transformer = dataclasses.replace(get_preset("bench-mid").transformer, joint_attention_dim=256)
    return Workload(transformer, VAEConfig(), dict(QWEN25_VL_7B, text_config=text, vision_config=vision), 256, refs)


def update_readme(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = (re.escape(m) for m in MARKERS)
    if not re.search(f"{start}.*{end}", text, flags=re.S):
        raise SystemExit(f"memory_table: {path} has no {MARKERS[0]} ... {MARKERS[1]} block to rewrite")
    new = re.sub(f"{start}.*{end}", lambda _: f"{MARKERS[0]}\n{block}\n{MARKERS[1]}", text, flags=re.S)
    path.write_text(new, encoding="utf-8")
    print(f"rewrote the memory table in {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="small architectures at 256 px (seconds; for CI)")
    p.add_argument("--reserve", type=float, default=1.0, help="GB kept free on a card (default 1)")
    p.add_argument("--update", type=Path, metavar="README", help="rewrite the block between the memory-table "
                   "markers of this file")
    args = p.parse_args(argv)
    device = fake_device()
    started = time.perf_counter()
    encoder, transformer, vae = build_on_meta(workload(args.smoke, 1))
    parts = {"encoder": encoder, "transformer": transformer, "vae": vae}
    sizes = {f: {part: component_sizes(m, "fp8" if f in GGUF_FORMATS and part != "transformer" else f)
                 for part, m in parts.items()} for f in FORMATS}
    measured = {}
    for refs in (1, 2):
        w = workload(args.smoke, refs)
        for fmt, dtype, linear in (("fp32", torch.float32, torch.float32), ("bf16", torch.bfloat16, torch.bfloat16),
                                   ("fp8", torch.bfloat16, torch.float8_e4m3fn)):
            measured[(fmt, refs)] = measure(w, dtype, linear, device)
        for fmt in ("q8_0", "q4_k"):
            measured[(fmt, refs)] = measured[("fp8", refs)]
    how = (f"{'SMOKE: small architectures at 256 px, ' if args.smoke else ''}activations measured under "
           f"FakeTensorMode on {device}, torch {torch.__version__}")
    block = tables(sizes, measured, [1, 2], args.reserve, how, workload(args.smoke, 1).side)
    print(block)
    activ = measured[("bf16", 2)]
    print("\nmeasured bf16 activations, 2 references (GB): " + ", ".join(f"{k} {gb(v)}" for k, v in activ.items()))
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.update is not None:
        if args.smoke:
            raise SystemExit("memory_table: --smoke numbers are not the model's; not writing them to a README")
        update_readme(args.update, block)


if __name__ == "__main__":
    sys.exit(main())
