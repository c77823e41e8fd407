"""Offload runs on a ``cuda:0`` device without a GPU, measured op by op; run in ComfyUI's venv (CUDA build of torch)
by test_offload_fake_device.py and importable anywhere (no pytest here).

``edit_on_fake_cuda``: whole edits (encode -> sample -> decode) on the emulated device of ``fake_cuda`` (real
values, CUDA's device checks) under every offload mode, each compared bit for bit with the same pipeline computing
resident on the CPU, while ``DeviceMemoryTracker`` counts live device storages after every op:

* ``weights``: bytes of the storages behind the pipeline's parameters and buffers on the device (independent of
  the placement: found by walking the modules), which must never exceed the placement's ledger (and reach it);
* ``unaccounted``: live device bytes minus the ledger, i.e. everything that is not a placed weight - activations,
  inputs, caches. It must not grow with offloading: the placements allocate nothing they do not count.

``phases_under_fake_tensor_mode``: the sampling and decoding phases under ``FakeTensorMode`` (no values at all;
the whole edit cannot run there, it reads values), to check the tracker and ledgers on the fake tensors the memory
table is measured with. ``device_errors_on_fake_cuda``: what the emulated device refuses, a faulty placement
included, so the checks above can fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from typing import Any

import numpy as np
import torch
from PIL import Image

from firered_core.compact_vae import create_vae
from firered_core.config import CompactVAEConfig, SchedulerConfig
from firered_core.offload import DeviceMemoryTracker, OffloadPlacement, required_bytes
from firered_core.offload.weights import set_entry, weight_entries
from firered_core.pipeline import FireRedEditPipeline
from firered_core.transformer import FireRedTransformer
from firered_core.vae import FireRedVAE
from tests.node_fixtures import REF_AREA, TINY, StubEncoder, randomise

__all__ = ["build_pipeline", "edit_on_fake_cuda", "phases_under_fake_tensor_mode", "device_errors_on_fake_cuda"]


def build_pipeline(encoder: str = "stub", layers: int = 4) -> FireRedEditPipeline:
    """The tiny test model, ``layers`` blocks four times as wide, with the stub encoder or the tiny Qwen2.5-VL."""
    torch.manual_seed(0)
    config = dataclasses.replace(TINY.transformer, num_layers=layers, num_attention_heads=4, attention_head_dim=32,
                                 axes_dims_rope=(8, 12, 12))
    transformer = randomise(FireRedTransformer(config), 1).eval()
    vae = FireRedVAE(TINY.vae).eval()
    if encoder == "qwen":
        from firered_core.encoder import QwenVLConditionEncoder
        from firered_core.encoder.qwen_processor import build_qwen_vl_processor
        from tests.encoder_fixtures import build_tiny_qwen_vl

        condition = QwenVLConditionEncoder(build_tiny_qwen_vl(seed=0), build_qwen_vl_processor())
    else:
        condition = StubEncoder()
    pipe = FireRedEditPipeline(transformer, vae, condition, SchedulerConfig())
    pipe.reference_area = pipe.output_area = REF_AREA
    return pipe


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)) for _ in range(2)]


def _edit(pipe: FireRedEditPipeline) -> Any:
    return pipe.edit(_images(), "make the left one red", steps=2, true_cfg_scale=2.0, seed=4, keep_unedited=True)


class _Watch:
    """The per-op numbers of one run (see the module docstring)."""

    def __init__(self, pipe: FireRedEditPipeline, placement: OffloadPlacement) -> None:
        self.pipe, self.placement = pipe, placement
        self.max_weights = self.max_weights_over_ledger = self.max_unaccounted = self.ops = 0
        self.max_weights_over_ledger = -1 << 62

    def __call__(self, tracker: DeviceMemoryTracker) -> None:
        modules = self.pipe.components().values()
        tensors = [t for m in modules for t in itertools.chain(m.parameters(), m.buffers())]
        weights = tracker.bytes_of(tensors)
        ledger = self.placement.ledger.resident
        self.ops += 1
        self.max_weights = max(self.max_weights, weights)
        self.max_weights_over_ledger = max(self.max_weights_over_ledger, weights - ledger)
        self.max_unaccounted = max(self.max_unaccounted, tracker.live - ledger)


def edit_on_fake_cuda(mode: str, budget: str, encoder: str = "stub") -> dict[str, Any]:
    """One edit under ``mode`` on the emulated ``cuda:0``; ``budget`` "none" (no limit) or "minimum" (the smallest
    ``max_vram`` the mode accepts for this model)."""
    from tests.fake_cuda import EmulatedCuda

    pipe = build_pipeline(encoder)
    reference = _edit(pipe)
    parts = pipe.components()
    max_vram = None if budget == "none" else required_bytes(mode, parts)[0]
    placement = OffloadPlacement(mode, "cuda", max_vram)
    plans = placement.check(parts)  # what set_offload does, with the ledger watched from the first byte
    watch = _Watch(pipe, placement)
    with EmulatedCuda():
        tracker = DeviceMemoryTracker("cuda", on_op=watch)
        with tracker:
            placement.prepare(parts)
            pipe.placement = placement
            result = _edit(pipe)
            parameter_devices = sorted({str(p.device) for m in parts.values() for p in m.parameters()})
    return {
        "same_latents": bool(torch.equal(result.latents, reference.latents)),
        "same_pixels": bool(np.array_equal(np.asarray(result.image), np.asarray(reference.image))),
        "keep_unedited": result.keep_unedited, "max_vram": max_vram, "ops": watch.ops,
        "streamed": {part: len(plan.streamed) for part, plan in plans.items()},
        "plan_peak": max(plan.peak_bytes for plan in plans.values()),
        "ledger_peak": placement.ledger.peak, "ledger_after": placement.ledger.resident,
        "max_weights": watch.max_weights, "max_weights_over_ledger": watch.max_weights_over_ledger,
        "max_unaccounted": watch.max_unaccounted, "tracker_peak": tracker.peak,
        "parameter_devices": parameter_devices,
    }


def phases_under_fake_tensor_mode(mode: str, budget: str) -> dict[str, Any]:
    """Sampling steps and the decode of a 64x48 edit with 2 references under ``FakeTensorMode`` on ``cuda:0``."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    pipe = build_pipeline("stub")
    parts = pipe.components()
    max_vram = None if budget == "none" else required_bytes(mode, parts)[0]
    placement = OffloadPlacement(mode, "cuda:0", max_vram)
    placement.check(parts)
    watch = _Watch(pipe, placement)
    config = pipe.transformer.config
    shapes = [(1, 4, 3)] * 3  # target + 2 references of 64x48 pixels (16 px per token)
    with torch.inference_mode(), FakeTensorMode() as fake:
        for module in parts.values():  # host weights become fake CPU tensors, as in a model built under the mode
            for owner, name, is_param, t in list(weight_entries(module)):
                set_entry(owner, name, is_param, fake.from_tensor(t))
        tracker = DeviceMemoryTracker("cuda", on_op=watch)
        with tracker:
            placement.prepare(parts)
            pipe.placement = placement
            tokens = torch.randn(1, 36, config.in_channels, device="cuda:0")
            text = torch.randn(1, 6, config.joint_attention_dim, device="cuda:0")
            with placement.use("transformer", pipe.transformer):
                for step in range(2):  # two steps with true CFG: four forwards
                    for _ in range(2):
                        out = pipe.transformer(tokens, text, None, torch.full((1,), 1.0 - step / 2, device="cuda:0"),
                                               shapes)
            latents = torch.randn(1, TINY.vae.z_dim, 16, 12, device="cuda:0")
            with placement.use("vae", pipe.vae):
                pixels = pipe.vae.decode(latents)
            result_devices = sorted({str(out.device), str(pixels.device)})
    return {"max_vram": max_vram, "ledger_peak": placement.ledger.peak, "ledger_after": placement.ledger.resident,
            "max_weights": watch.max_weights, "max_weights_over_ledger": watch.max_weights_over_ledger,
            "max_unaccounted": watch.max_unaccounted, "tracker_peak": tracker.peak, "ops": watch.ops,
            "result_devices": result_devices}


class _ForgetsTheVAE(OffloadPlacement):
    """A faulty placement: it never moves the VAE. The project's own layers would still compute (they cast
    weights to the input's device), plain torch layers must fail, and the emulated device must say so."""

    def use(self, part: str, module: torch.nn.Module):  # noqa: ANN201 - a context manager
        if part == "vae":
            return contextlib.nullcontext()
        return super().use(part, module)


def device_errors_on_fake_cuda() -> dict[str, str]:
    """What the emulated device refuses, as CUDA would: each value is the error message (empty: no error)."""
    from tests.fake_cuda import EmulatedCuda

    def error(fn: Any) -> str:
        try:
            fn()
        except (RuntimeError, TypeError) as exc:
            return str(exc).split("\n")[0]
        return ""

    pipe = build_pipeline("stub")
    # layers of plain torch (no compute-time cast to the input's device), as a VAE built outside the loaders has
    pipe.vae = create_vae(CompactVAEConfig(base_dim=8, z_dim=TINY.vae.z_dim, levels=2,
                                           latents_mean=(0.0,) * TINY.vae.z_dim, latents_std=(1.0,) * TINY.vae.z_dim))
    with EmulatedCuda():
        x = torch.ones(3, 2).to("cuda")
        pipe.placement = _ForgetsTheVAE("model", "cuda")
        return {
            "mixed": error(lambda: x + torch.ones(3, 2)),
            "cpu_scalar": error(lambda: x * torch.tensor(2.0)),
            "numpy": error(lambda: x.numpy()),
            "generator": error(lambda: torch.randn(2, generator=torch.Generator(), device="cuda")),
            "edit_with_vae_left_on_cpu": error(lambda: _edit(pipe)),
            "device": str(x.device), "cuda_available": str(torch.cuda.is_available()),
        }
