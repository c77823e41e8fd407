"""One LoRA training step of firered_train against the same step written with diffusers + peft.

Run (CPU, a minute or two on 2 cores):

    python benchmarks/train_step.py [--preset bench-mid] [--image-px 256] [--rank 16] [--checkpointing]

Workload: an edit sample at the preset's width -- a target and ``--refs`` references of ``--image-px`` squared
pixels (16 px per token) and ``--text-len`` condition tokens, batch ``--batch``. A step is: noisy target
``x_s = (1 - s) x0 + s eps``, forward with the references appended, MSE against ``eps - x0`` on the target
tokens, backward, AdamW on the LoRA parameters, zero the gradients.

* ours: ``FireRedTransformer`` + ``firered_core.lora.add_trainable_lora`` (unmerged adapters in ``ops.Linear``)
  and the trainer's own ``step.step_loss``;
* reference: diffusers' ``QwenImageTransformer2DModel`` + ``add_adapter(peft.LoraConfig)`` on the same target
  modules (``firered_core.lora.DEFAULT_TARGETS``), with the same weights, adapters and inputs. The two losses of
  the first step are printed as a check that both compute the same thing.

Measurements (as in ``transformer_forward.py``):

* time: both in this process; after ``--warmup`` steps each, ``--runs`` steps alternating which goes first;
  the median per side is reported, so load from other processes hits both alike;
* peak memory: each side in its own fresh subprocess; after a warm-up step (the optimizer state exists), the
  kernel's resident high-water mark is reset and one step runs; ``VmHWM - VmRSS(before)`` is the extra memory
  the step needed at its peak (activations, gradients, workspaces). ``MALLOC_MMAP_THRESHOLD_`` makes large
  tensors their own mappings so freed memory is returned and reuse is visible. Linux only.

The target is a ratio <= 1.0 for both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from firered_core.config import get_preset
from firered_core.lora import DEFAULT_TARGETS, add_trainable_lora
from firered_core.transformer import FireRedTransformer
from firered_train.loop.batch import TrainBatch
from firered_train.config.sections import ObjectiveConfig
from firered_train.loop.step import step_loss
from procmem import measure_in_child, print_peak_extra, ratio_text


# the trainer's objective reduced to the plain per-sample MSE the reference side computes (no outlier mask)
PLAIN_MSE = ObjectiveConfig(outlier_threshold=None)


def mse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------------------------
# the two steps
# ---------------------------------------------------------------------------------------------------------------


def make_batch(args: argparse.Namespace, latent_channels: int, text_dim: int) -> tuple[TrainBatch, torch.Tensor,
                                                                                        torch.Tensor]:
    """Latents [B, C, h, w] per slot, a condition, per-sample s and packed noise (seeded)."""
    gen = torch.Generator().manual_seed(1)
    side = args.image_px // 8  # latent pixels (VAE 8x)
    lat = lambda: torch.randn(args.batch, latent_channels, side, side, generator=gen)  # noqa: E731
    batch = TrainBatch(step=0, indices=tuple(range(args.batch)), ids=("x",) * args.batch, target=lat(),
                       sources=tuple(lat() for _ in range(args.refs)),
                       embeds=torch.randn(args.batch, args.text_len, text_dim, generator=gen), mask=None,
                       languages=("en",) * args.batch)
    s = torch.rand(args.batch, generator=gen)
    noise = torch.randn(args.batch, (side // 2) ** 2, latent_channels * 4, generator=gen)
    return batch, s, noise


def build(args: argparse.Namespace, which: str) -> Callable[[], float]:
    """A closure running one training step of ``which`` ('ours' or 'diffusers'); returns the loss."""
    from diffusers import QwenImageTransformer2DModel
    from peft import LoraConfig

    cfg = get_preset(args.preset).transformer
    torch.manual_seed(0)
    reference = QwenImageTransformer2DModel(**{k: v for k, v in cfg.to_dict().items() if not k.startswith("_")})
    ours = FireRedTransformer(cfg)
    ours.load_state_dict(reference.state_dict(), strict=True)
    torch.manual_seed(1)
    params = add_trainable_lora(ours, args.rank, init="gaussian")
    ours.gradient_checkpointing = args.checkpointing
    batch, s, noise = make_batch(args, cfg.latent_channels, cfg.joint_attention_dim)
    if which == "ours":
        del reference
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True)

        def ours_step() -> float:
            out = step_loss(ours, batch, s, noise, PLAIN_MSE, patch=cfg.patch_size)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(out.loss.detach())
        return ours_step

    reference.requires_grad_(False)
    reference.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=list(DEFAULT_TARGETS),
                                     init_lora_weights="gaussian"))
    _copy_adapters(ours, reference)
    del ours
    if args.checkpointing:
        reference.enable_gradient_checkpointing()
    reference.train()
    trainable = [p for p in reference.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.01, foreach=True)
    side = args.image_px // 16
    shapes = [[(1, side, side)] * (1 + args.refs)]
    x0 = _pack(batch.target)
    refs = torch.cat([_pack(z) for z in batch.sources], dim=1) if batch.sources else None

    def reference_step() -> float:
        x_t = (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * noise
        hidden = x_t if refs is None else torch.cat([x_t, refs], dim=1)
        out = reference(hidden_states=hidden, encoder_hidden_states=batch.embeds, encoder_hidden_states_mask=None,
                        timestep=s, img_shapes=shapes, return_dict=False)[0][:, : x0.shape[1]]
        loss = mse_per_sample(out.float(), (noise - x0).float()).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
    return reference_step


def _pack(z: torch.Tensor) -> torch.Tensor:
    from firered_core.latents import pack_latents

    return pack_latents(z, 2)


def _copy_adapters(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    """PEFT's lora_A / lora_B := our down / up, so both sides train the very same LoRA."""
    ref_modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, module in ours.named_modules():
            for adapter in getattr(module, "adapters", []):
                peft_layer = ref_modules[name]
                peft_layer.lora_A["default"].weight.copy_(adapter.down.weight)
                peft_layer.lora_B["default"].weight.copy_(adapter.up.weight)


# ---------------------------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------------------------


def time_steps(steps: dict[str, Callable[[], float]], runs: int, warmup: int) -> tuple[dict[str, float],
                                                                                       dict[str, float]]:
    first = {name: step() for name, step in steps.items()}  # the first step's loss: both sides must agree
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, first


def memory_child(which: str, args: argparse.Namespace) -> None:
    step = build(args, which)
    step()  # warm-up: optimizer state and lazy initialisations are not the step's working set
    print_peak_extra(step)


def measure_memory(which: str, args: argparse.Namespace) -> dict:
    return measure_in_child(__file__, which, _forwarded(args), args.threads)


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--preset", args.preset, "--image-px", str(args.image_px), "--refs", str(args.refs), "--text-len",
           str(args.text_len), "--batch", str(args.batch), "--rank", str(args.rank), "--threads", str(args.threads)]
    return out + (["--checkpointing"] if args.checkpointing else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench-mid")
    p.add_argument("--image-px", type=int, default=256, help="side of the target and of each reference")
    p.add_argument("--refs", type=int, default=1)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on both sides")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--memory-child", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    steps = {"ours": build(args, "ours"), "diffusers": build(args, "diffusers")}
    times, first = time_steps(steps, args.runs, args.warmup)
    del steps
    memory = {name: measure_memory(name, args) for name in ("ours", "diffusers")}
    cfg = get_preset(args.preset).transformer
    tokens = (1 + args.refs) * (args.image_px // 16) ** 2
    print(f"preset {args.preset}: dim {cfg.inner_dim}, {cfg.num_layers} layers; batch {args.batch}, image tokens "
          f"{tokens} ({1 + args.refs} x {args.image_px}px), text {args.text_len}; LoRA rank {args.rank} on "
          f"{len(DEFAULT_TARGETS)} module kinds; gradient checkpointing {'on' if args.checkpointing else 'off'}; "
          f"{args.threads} threads; torch {torch.__version__}")
    print(f"first-step loss: ours {first['ours']:.6f}, diffusers+peft {first['diffusers']:.6f} "
          f"(diff {abs(first['ours'] - first['diffusers']):.1e})")
    print(f"train step time (median of {args.runs}, alternating): ours {times['ours'] * 1e3:.0f} ms, "
          f"diffusers+peft {times['diffusers'] * 1e3:.0f} ms -> ratio {times['ours'] / times['diffusers']:.3f}")
    print(f"peak extra memory of one step: ours {memory['ours']['peak_extra_mb']:.1f} MB, diffusers+peft "
          f"{memory['diffusers']['peak_extra_mb']:.1f} MB -> ratio "
          f"{ratio_text(memory['ours']['peak_extra_mb'], memory['diffusers']['peak_extra_mb'])}")


if __name__ == "__main__":
    main()
