"""Device memory of one training step of the FireRed transformer, per training setting, without a GPU.

Run (about two minutes for the five settings at full size on a 2-core CPU; ``--smoke`` takes seconds):

    python benchmarks/train_memory.py            # the 20.4 B transformer, one edit pair per step
    python benchmarks/train_memory.py --smoke    # the 'tiny' preset at 64 px (CI)

Each row is a ``firered train`` setting: the stage config and the overrides that make it. What its peak is made of,
and how each part is obtained:

* COUNTED, tensor by tensor, from the architecture built on the meta device: the transformer's weights in the
  setting's storage (fp32 4 bytes, bf16 2; fp8: Linear weights 1 byte and everything else bf16, as
  ``model.fp8`` stores them), the frozen VAE in the same dtype (the trainer keeps it for validation and online
  encoding), the trained parameters (LoRA adapters are float32 whatever the base), the optimizer state (AdamW:
  two moments in the parameter's dtype), the EMA shadow (float32 copies of the trained parameters, when the stage
  keeps one) and the optimizer step's temporary (torch's multi-tensor AdamW makes one copy of the second moment).
* MEASURED on fake tensors (``FakeTensorMode``: shapes and dtypes, no values, no memory) with
  ``DeviceMemoryTracker`` counting live storages after every op: forward and backward of one batch through the
  trainer's own ``step_loss``, with the stage's gradient checkpointing, under bf16 autocast (``precision: bf16``).
  The peak beyond the weights is the activations plus the gradients (which, for a full fine-tune, grow during
  backward). Attention is modelled as the fused kernel a GPU runs (flash / memory-efficient attention: forward
  keeps q, k, v, the output and a float32 log-sum-exp; backward allocates dq, dk, dv; never the score matrix),
  by swapping ``F.scaled_dot_product_attention`` for the duration of the measurement. The fake device is the CPU
  (a fake CUDA device cannot run backward without a driver), so autocast follows the CPU's op lists, which differ
  slightly from a GPU's.
* Peak = weights + VAE + optimizer state + EMA + max(forward/backward peak, gradients + optimizer-step temporary).

Not included: the condition encoder (these rows train from ``firered cache``'s embeddings; online encoding adds the
encoder's weights, 14.4 GB in bf16), validation sampling and its VAE decoding, the CUDA context, allocator caching
and fragmentation (the inference table reserves 1 GB for them), and what FSDP adds or removes (it shards weights,
gradients, optimizer state and EMA over the processes; activations are not sharded). GB = 2**30 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's firered_core, in any venv
from firered_core.config import get_preset  # noqa: E402
from firered_core.lora import add_trainable_lora  # noqa: E402
from firered_core.offload import GB, DeviceMemoryTracker  # noqa: E402
from firered_core.offload.weights import set_entry, weight_entries  # noqa: E402
from firered_core.transformer import FireRedTransformer  # noqa: E402
from firered_core.vae import FireRedVAE  # noqa: E402
from firered_train.loop.batch import TrainBatch  # noqa: E402
from firered_train.config.sections import ObjectiveConfig  # noqa: E402
from firered_train.loop.step import step_loss  # noqa: E402
from memory_phases import BLOCK_TOKENS, IMAGE_TOKENS, TEMPLATE_TOKENS  # noqa: E402

CARDS = (16, 24, 32, 48, 80)
RESERVE = 1.0  # GB kept free on a card, as in the inference table


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row: a training setting and the command that makes it."""

    name: str
    command: str  # the `firered train` config and overrides
    lora_rank: int | None  # None: full fine-tune
    storage: str  # "fp32" | "bf16" | "fp8": the transformer's weights
    checkpointing: bool = True
    ema: bool = False
    side: int = 1024  # pixels per side of the target and of its one source (lora.yaml's max_area)


SETTINGS = (
    Setting("LoRA rank 16, bf16 base", "lora", 16, "bf16"),
    Setting("LoRA rank 16, fp8 base", "lora --model.fp8=true", 16, "fp8"),
    Setting("LoRA rank 16, fp8 base, 512x512 pairs", "lora --model.fp8=true --data.sampler.max_area=262144 "
            "--data.sampler.token_budget=2048", 16, "fp8", side=512),
    Setting("LoRA rank 16, bf16 base, no checkpointing", "lora --model.gradient_checkpointing=false", 16, "bf16",
            checkpointing=False),
    Setting("full fine-tune, fp32 weights, AdamW, EMA", "sft", None, "fp32", ema=True),
)


# ---------------------------------------------------------------------------------------------------------------
# Counted
# ---------------------------------------------------------------------------------------------------------------


def storage_dtypes(storage: str) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of Linear weights, dtype of every other floating tensor)."""
    return {"fp32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.bfloat16),
            "fp8": (torch.float8_e4m3fn, torch.bfloat16)}[storage]


def module_bytes(module: nn.Module, storage: str) -> int:
    linear_dtype, other_dtype = storage_dtypes(storage)
    linear = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    total = 0
    for _, _, _, t in weight_entries(module):
        dtype = (linear_dtype if id(t) in linear else other_dtype) if t.is_floating_point() else t.dtype
        total += t.numel() * dtype.itemsize
    return total


@dataclasses.dataclass(frozen=True)
class Counted:
    weights: int
    vae: int
    trained: int  # parameters
    gradients: int
    optimizer: int
    ema: int
    step_temporary: int


def count(setting: Setting, weights: int, vae: int, trained: list[nn.Parameter]) -> Counted:
    """The counted parts; ``weights`` and ``vae`` in bytes, as ``module_bytes`` gives them before training starts."""
    n = sum(p.numel() for p in trained)
    size = trained[0].dtype.itemsize  # AdamW's moments and the gradients take the parameter's dtype
    return Counted(weights=weights, vae=vae, trained=n, gradients=n * size, optimizer=2 * n * size,
                   ema=4 * n if setting.ema else 0, step_temporary=n * size)


# ---------------------------------------------------------------------------------------------------------------
# Measured
# ---------------------------------------------------------------------------------------------------------------


class FusedAttention(torch.autograd.Function):
    """What a flash / memory-efficient attention kernel allocates and saves (see the module docstring)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # q [B, H, Lq, D]
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # [B, H, Lq, Dv]
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # [B, H, Lq]
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` as ``FusedAttention`` while measuring. A function attribute, not a torch
    function mode: checkpointing recomputes blocks inside backward, where a mode entered around the forward is
    no longer active."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, attn_mask=None, **_: FusedAttention.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def fake_weights(module: nn.Module, storage: str) -> None:
    """Every tensor of ``module`` (built on meta) as a fake CPU tensor of the setting's storage. Under the fake mode."""
    linear_dtype, other_dtype = storage_dtypes(storage)
    linear = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    for owner, name, is_param, t in list(weight_entries(module)):
        dtype = (linear_dtype if id(t) in linear else other_dtype) if t.is_floating_point() else t.dtype
        set_entry(owner, name, is_param, torch.empty(t.shape, dtype=dtype))


def make_trained(setting: Setting, transformer: FireRedTransformer) -> list[nn.Parameter]:
    if setting.lora_rank is not None:
        return add_trainable_lora(transformer, setting.lora_rank)  # freezes the base, adapters float32
    return [p.requires_grad_(True) for p in transformer.parameters()]  # make_trainable's "full"


def fake_batch(lat: int, channels: int, text_tokens: int, text_dim: int) -> tuple[TrainBatch, torch.Tensor,
                                                                                    torch.Tensor]:
    """A cached batch of one pair: target and source latents [1, C, lat, lat], the condition, s and noise."""
    batch = TrainBatch(step=0, indices=(0,), ids=("x",), target=torch.empty(1, channels, lat, lat),
                       sources=(torch.empty(1, channels, lat, lat),), embeds=torch.empty(1, text_tokens, text_dim),
                       mask=None, languages=("en",))
    return batch, torch.full((1,), 0.5), torch.empty(1, (lat // 2) ** 2, channels * 4)


def measure(setting: Setting, preset: str, side: int) -> tuple[Counted, int]:
    """(the counted parts, the measured forward/backward peak beyond the weights) of ``setting``."""
    cfg = get_preset(preset)
    with torch.device("meta"):
        transformer = FireRedTransformer(cfg.transformer)
        vae = FireRedVAE(cfg.vae)
    weights = module_bytes(transformer, setting.storage)  # before adapters are attached
    vae_bytes = module_bytes(vae, "bf16" if setting.storage == "fp8" else setting.storage)
    text_tokens = TEMPLATE_TOKENS - 64 + IMAGE_TOKENS + BLOCK_TOKENS  # the edit template with one condition image
    with FakeTensorMode(), fused_attention():
        fake_weights(transformer, setting.storage)
        trained = make_trained(setting, transformer)
        transformer.gradient_checkpointing = setting.checkpointing
        transformer.train()
        latent_side = side // cfg.vae.spatial_compression
        batch, s, noise = fake_batch(latent_side, cfg.transformer.out_channels, text_tokens,
                                     cfg.transformer.joint_attention_dim)
        with DeviceMemoryTracker("cpu") as tracker:
            start = tracker.live
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = step_loss(transformer, batch, s, noise, ObjectiveConfig(), patch=cfg.transformer.patch_size)
            out.loss.backward()
            peak = tracker.peak - start
    return count(setting, weights, vae_bytes, trained), peak


# ---------------------------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------------------------


def gb(nbytes: float) -> str:
    return f"{nbytes / GB:.1f}" if nbytes >= GB / 20 else f"{nbytes / GB:.2f}"


def peak_bytes(c: Counted, measured: int) -> int:
    return c.weights + c.vae + c.optimizer + c.ema + max(measured, c.gradients + c.step_temporary)


def smallest_card(peak: int) -> str:
    fits = [card for card in CARDS if peak + RESERVE * GB <= card * GB]
    return f"{fits[0]} GB" if fits else f"> {CARDS[-1]} GB"


def table(rows: list[tuple[Setting, Counted, int]], how: str) -> str:
    lines = [how, "", "| setting | `firered train` | trained parameters | weights + VAE | optimizer + EMA | "
             "activations + gradients (measured) | peak | smallest card (peak + 1 GB) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for setting, c, measured in rows:
        peak = peak_bytes(c, measured)
        lines.append(f"| {setting.name} | `{setting.command}` | {c.trained / 1e6:,.1f} M | {gb(c.weights + c.vae)} "
                     f"| {gb(c.optimizer + c.ema)} | {gb(measured)} | **{gb(peak)}** | {smallest_card(peak)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="the 'tiny' preset at 64 px (seconds; for CI)")
    args = p.parse_args(argv)
    preset = "tiny" if args.smoke else "firered-1.0"
    started = time.perf_counter()
    rows = [(setting, *measure(setting, preset, 64 if args.smoke else setting.side)) for setting in SETTINGS]
    pairs = ("SMOKE: preset tiny, every pair 64x64 (not the model's figures)" if args.smoke
             else "the 20.4 B transformer; a pair is 1024x1024 unless the row says otherwise")
    how = (f"{pairs}; batch 1: one target and one source, condition from the cache; GB = 2^30 bytes; "
           f"forward/backward measured on fake tensors, torch {torch.__version__}")
    print(table(rows, how))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
