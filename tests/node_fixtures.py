"""Tiny models and a stand-in ComfyUI for the node tests (no ComfyUI, no network, seconds on a CPU).

::

    from tests.node_fixtures import tiny_model, image_tensor, FakeComfy

    model = tiny_model()                          # a FIRERED_MODEL over the 'tiny' preset with a stub encoder
    image = image_tensor(2, 48, 64)               # IMAGE [2, 48, 64, 3] in [0, 1]
    with FakeComfy.installed(monkeypatch, tmp_path) as comfy:   # folder_paths, comfy.utils, comfy.model_management
        comfy.add_file("loras", "style.safetensors", tensors)
        comfy.interrupt_after_polls = 3

The stub encoder maps a prompt to fixed random embeddings (seeded by the prompt's bytes), so edits differ by
prompt and are reproducible without a tokenizer or transformers.
"""

from __future__ import annotations

import sys
import types
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from PIL import Image

from firered_core.config import SchedulerConfig, get_preset
from firered_core.encoder.base import EncodedCondition
from firered_core.pipeline import FireRedEditPipeline
from firered_core.transformer import FireRedTransformer
from firered_core.vae import FireRedVAE

if TYPE_CHECKING:  # pytest is not installed where ComfyUI's venv runs these fixtures
    import pytest

TINY = get_preset("tiny")
REF_AREA = 64 * 64  # references are VAE-encoded at this area to keep the tiny model fast


class StubEncoder:
    """Condition encoder stand-in: [1, 6, 32] embeddings per prompt, seeded by the prompt text."""

    dim = TINY.transformer.joint_attention_dim

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def encode(self, prompts: list[str], images: list[Image.Image]) -> EncodedCondition:
        (prompt,) = prompts
        self.calls.append((prompt, len(images)))
        gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode("utf-8")) + 97 * len(images))
        return EncodedCondition(torch.randn(1, 6, self.dim, generator=gen), torch.ones(1, 6, dtype=torch.long))

    def to(self, device=None, dtype=None) -> "StubEncoder":
        return self


def randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights with real magnitudes, so every layer (and every LoRA) changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.1 * noise if "norm" in name and p.ndim == 1 else 0.15 * noise)
    return module


def tiny_pipeline(seed: int = 1) -> FireRedEditPipeline:
    transformer = randomise(FireRedTransformer(TINY.transformer), seed).eval()
    vae = FireRedVAE(TINY.vae).eval()
    pipe = FireRedEditPipeline(transformer, vae, StubEncoder(), SchedulerConfig())
    pipe.reference_area = REF_AREA
    pipe.output_area = REF_AREA
    return pipe


def tiny_model(seed: int = 1):
    from nodes.model_handle import FireRedModel, LoadedFireRed

    return FireRedModel(LoadedFireRed.wrap(tiny_pipeline(seed), label="tiny"))


def image_tensor(batch: int, height: int, width: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A ComfyUI IMAGE of smooth gradients plus noise, float32 [B, H, W, C] in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx / width, yy / height, (xx + yy) / (width + height)], axis=-1)
    out = []
    for b in range(batch):
        pixels = np.clip(base * (0.5 + 0.1 * b) + rng.normal(0, 0.08, base.shape), 0, 1)
        out.append(pixels[..., :channels] if channels <= 3 else
                   np.concatenate([pixels, np.ones((height, width, channels - 3))], axis=-1))
    return torch.from_numpy(np.stack(out).astype(np.float32))


class Interrupted(Exception):
    """Stands in for comfy.model_management.InterruptProcessingException."""


class FakeComfy:
    """The slices of ComfyUI the bridge uses: folder_paths, comfy.utils.ProgressBar, comfy.model_management,
    comfy.model_patcher.ModelPatcher - recording what the nodes do with them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.progress: list[tuple[int, int]] = []
        self.loaded: list[object] = []
        self.polls = 0
        self.interrupt_after_polls: int | None = None
        self.free_memory = 1 << 40  # bytes the compute device reports free

    # -- model folders ----------------------------------------------------------------------------------------
    def folder(self, kind: str) -> Path:
        path = self.root / "models" / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_file(self, kind: str, name: str, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        path = self.folder(kind) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return path

    def _modules(self) -> dict[str, types.ModuleType]:
        fake = self
        folder_paths = types.ModuleType("folder_paths")
        folder_paths.get_folder_paths = lambda kind: [str(fake.folder(kind))]
        folder_paths.get_filename_list = lambda kind: sorted(
            p.relative_to(fake.folder(kind)).as_posix() for p in fake.folder(kind).rglob("*") if p.is_file())

        def get_full_path(kind: str, name: str) -> str | None:
            path = fake.folder(kind) / name
            return str(path) if path.is_file() else None

        folder_paths.get_full_path = get_full_path

        utils = types.ModuleType("comfy.utils")

        class ProgressBar:
            def __init__(self, total: int) -> None:
                self.total = total

            def update_absolute(self, value: int, total: int | None = None, preview: object = None) -> None:
                fake.progress.append((value, total if total is not None else self.total))

        utils.ProgressBar = ProgressBar

        management = types.ModuleType("comfy.model_management")
        management.InterruptProcessingException = Interrupted
        management.get_torch_device = lambda: torch.device("cpu")
        management.unet_offload_device = lambda: torch.device("cpu")
        management.should_use_bf16 = lambda device=None: False

        def throw_exception_if_processing_interrupted() -> None:
            fake.polls += 1
            if fake.interrupt_after_polls is not None and fake.polls > fake.interrupt_after_polls:
                raise Interrupted()

        management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        management.load_models_gpu = lambda models, force_full_load=False, **kw: fake.loaded.append(
            (list(models), force_full_load))
        management.get_free_memory = lambda device=None: fake.free_memory
        management.minimum_inference_memory = lambda: 1 << 20

        patcher = types.ModuleType("comfy.model_patcher")

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device) -> None:
                self.model, self.load_device, self.offload_device = model, load_device, offload_device
                self.size = 0  # ComfyUI caches the measured size here

            def model_size(self) -> int:
                return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())

            def loaded_size(self) -> int:
                return 0

        patcher.ModelPatcher = ModelPatcher
        comfy = types.ModuleType("comfy")
        comfy.utils, comfy.model_management, comfy.model_patcher = utils, management, patcher
        return {"folder_paths": folder_paths, "comfy": comfy, "comfy.utils": utils,
                "comfy.model_management": management, "comfy.model_patcher": patcher}

    @classmethod
    @contextmanager
    def installed(cls, monkeypatch: pytest.MonkeyPatch, root: Path) -> Iterator["FakeComfy"]:
        fake = cls(root)
        for name, module in fake._modules().items():
            monkeypatch.setitem(sys.modules, name, module)
        yield fake
