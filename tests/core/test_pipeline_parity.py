"""End-to-end parity: FireRedEditPipeline (and ``firered edit``) against diffusers' QwenImageEditPlusPipeline.

A tiny random model (the 'tiny' preset: 2-layer MMDiT, 4-channel VAE with 4x compression, and the tiny random
Qwen2.5-VL of tests/encoder_fixtures.py) is assembled as a diffusers pipeline and saved as a diffusers folder.
diffusers runs it; our pipeline loads the same folder and must reach the same final latents (max abs diff
<= 1e-5) and the same 8-bit pixels; the CLI must write the same PNG pixels.

To keep the tiny model fast on a CPU, references are VAE-encoded at a small area (``REF_AREA``) instead of 1024^2:
diffusers' module constant ``VAE_IMAGE_SIZE`` is patched and our pipeline's ``reference_area`` set to match. The
output size is given explicitly (64x64); the default-size rule is checked separately without running a model.
Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

diffusers = pytest.importorskip("diffusers")
from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,  # noqa: E402
                       QwenImageEditPlusPipeline, QwenImageTransformer2DModel)

from firered_core.config import SchedulerConfig, get_preset  # noqa: E402
from firered_core.images import calculate_dimensions  # noqa: E402
from firered_core.latents import pack_latents  # noqa: E402
from firered_core.pipeline import FireRedEditPipeline  # noqa: E402
from firered_core.progress import Cancelled  # noqa: E402

EDIT_PLUS = "diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus"
TINY = get_preset("tiny")
REF_AREA = 96 * 64  # a 64x96 reference stays 64x96; a 96x64 one too
TOL = 1e-5
STEPS = 3


def _config_kwargs(cfg: object) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}  # type: ignore[attr-defined]


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights with real magnitudes (defaults leave norms at 1 and some outputs near 0)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        state[name] = 1 + 0.1 * noise if "norm" in name and value.ndim == 1 else 0.15 * noise
    model.load_state_dict(state, strict=True)


def tiny_reference_parts(joint_attention_dim: int | None = None) -> dict:
    """diffusers' transformer, VAE and scheduler at the tiny preset's sizes, with fixed random weights."""
    tcfg = _config_kwargs(TINY.transformer)
    if joint_attention_dim is not None:
        tcfg["joint_attention_dim"] = joint_attention_dim
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(**tcfg).eval()
    _randomise(transformer, seed=1)
    vae = AutoencoderKLQwenImage(**_config_kwargs(TINY.vae)).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(**_config_kwargs(SchedulerConfig()))
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler}


def _image(width: int, height: int, seed: int) -> Image.Image:
    # smooth gradients plus noise: Lanczos resizing then has real work to do
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _pixel_report(ours: Image.Image, ref: Image.Image) -> tuple[int, float]:
    a, b = np.asarray(ours).astype(int), np.asarray(ref).astype(int)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    return int(diff.max()), float((diff > 0).mean())


# ---------------------------------------------------------------------------------------------------------------
# Stage 1: transformer + VAE + schedule + sampler with given condition embeddings (no text encoder needed)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Condition:
    embeds: torch.Tensor
    mask: torch.Tensor | None


class _TableEncoder:
    """A condition encoder returning fixed embeddings per prompt, standing in for Qwen2.5-VL."""

    def __init__(self, table: dict[str, _Condition]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def encode(self, prompts: list[str], images: list[Image.Image]) -> _Condition:
        (prompt,) = prompts
        self.calls.append((prompt, len(images)))
        return self.table[prompt]


@pytest.fixture(scope="module")
def embed_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, QwenImageEditPlusPipeline]:
    parts = tiny_reference_parts()
    pipe = QwenImageEditPlusPipeline(text_encoder=None, tokenizer=None, processor=None, **parts)
    folder = tmp_path_factory.mktemp("tiny_no_encoder")
    pipe.save_pretrained(folder)
    return folder, pipe


def _table(dim: int) -> dict[str, _Condition]:
    gen = torch.Generator().manual_seed(5)
    pos_mask = torch.ones(1, 9, dtype=torch.long)
    pos_mask[:, 7:] = 0  # padded: exercises the masked attention path
    return {
        "make it blue": _Condition(torch.randn(1, 9, dim, generator=gen), pos_mask),
        " ": _Condition(torch.randn(1, 5, dim, generator=gen), torch.ones(1, 5, dtype=torch.long)),
    }


@pytest.mark.parametrize("sizes", [[(64, 96)], [(96, 64), (64, 96)]], ids=["1ref", "2refs"])
def test_matches_diffusers_given_embeddings(embed_folder, sizes, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, ref_pipe = embed_folder
    monkeypatch.setattr(f"{EDIT_PLUS}.VAE_IMAGE_SIZE", REF_AREA)
    refs = [_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    table = _table(TINY.transformer.joint_attention_dim)
    pos, neg = table["make it blue"], table[" "]
    common = dict(image=refs, prompt_embeds=pos.embeds, prompt_embeds_mask=pos.mask,
                  negative_prompt_embeds=neg.embeds, negative_prompt_embeds_mask=neg.mask, true_cfg_scale=4.0,
                  num_inference_steps=STEPS, width=64, height=64)
    ref_tokens = ref_pipe(**common, generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    ref_image = ref_pipe(**common, generator=torch.Generator("cpu").manual_seed(7), output_type="pil").images[0]

    ours = FireRedEditPipeline.from_pretrained(folder)
    ours.encoder = _TableEncoder(table)
    ours.reference_area = REF_AREA
    result = ours.edit(refs, "make it blue", negative_prompt=" ", steps=STEPS, true_cfg_scale=4.0, seed=7,
                       width=64, height=64)
    assert ours.encoder.calls == [("make it blue", len(refs)), (" ", len(refs))]
    diff = _max_diff(pack_latents(result.latents, 2), ref_tokens)
    worst, frac = _pixel_report(result.image, ref_image)
    print(f"\n[pipeline parity, given embeds, {len(refs)} ref] latents max abs diff {diff:.2e} "
          f"(scale {ref_tokens.abs().max().item():.2f}); pixels max diff {worst}, differing {frac:.2%}")
    assert (result.width, result.height, result.seed) == (64, 64, 7)
    assert diff <= TOL
    assert worst <= 1 and frac <= 0.001


def test_cfg_off_skips_negative(embed_folder, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, ref_pipe = embed_folder
    monkeypatch.setattr(f"{EDIT_PLUS}.VAE_IMAGE_SIZE", REF_AREA)
    refs = [_image(64, 96, seed=0)]
    table = _table(TINY.transformer.joint_attention_dim)
    pos = table["make it blue"]
    ref_tokens = ref_pipe(image=refs, prompt_embeds=pos.embeds, prompt_embeds_mask=pos.mask, true_cfg_scale=1.0,
                          num_inference_steps=2, width=64, height=32, output_type="latent",
                          generator=torch.Generator("cpu").manual_seed(3)).images
    ours = FireRedEditPipeline.from_pretrained(folder)
    ours.encoder = _TableEncoder(table)
    ours.reference_area = REF_AREA
    result = ours.edit(refs, "make it blue", negative_prompt=None, steps=2, seed=3, width=64, height=32)
    assert ours.encoder.calls == [("make it blue", 1)]
    assert _max_diff(pack_latents(result.latents, 2), ref_tokens) <= TOL
    # the comparison is sensitive: another seed is far outside the tolerance
    other = ours.edit(refs, "make it blue", negative_prompt=None, steps=2, seed=4, width=64, height=32)
    assert _max_diff(pack_latents(other.latents, 2), ref_tokens) > 1000 * TOL


def test_progress_and_cancel(embed_folder) -> None:
    folder, _ = embed_folder
    ours = FireRedEditPipeline.from_pretrained(folder)
    ours.encoder = _TableEncoder(_table(TINY.transformer.joint_attention_dim))
    ours.reference_area = REF_AREA
    refs = [_image(64, 96, seed=0)]
    reports: list[tuple[int, int]] = []
    ours.edit(refs, "make it blue", steps=3, width=32, height=32,
              progress=lambda step, total, preview: reports.append((step, total)))
    assert reports == [(1, 3), (2, 3), (3, 3)]
    polls: list[int] = []

    def cancel_after_two_polls() -> bool:
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(Cancelled):
        ours.edit(refs, "make it blue", steps=3, width=32, height=32, cancel=cancel_after_two_polls)


# ---------------------------------------------------------------------------------------------------------------
# Stage 2: the whole thing, Qwen2.5-VL included, from one diffusers folder; then the CLI
# ---------------------------------------------------------------------------------------------------------------

INSTRUCTION = "Picture 1: make the sky purple, keep the house from Picture 2"


@dataclass
class _Reference:
    folder: Path
    edit: QwenImageEditPlusPipeline
    text: object  # diffusers' QwenImagePipeline over the same components


@pytest.fixture(scope="module")
def full_folder(tmp_path_factory: pytest.TempPathFactory) -> _Reference:
    fixtures = pytest.importorskip("tests.encoder_fixtures")
    from diffusers import QwenImagePipeline

    text_encoder = fixtures.build_tiny_qwen_vl(seed=0)
    tokenizer = fixtures.offline_tokenizer()
    width = text_encoder.config.text_config.hidden_size
    parts = tiny_reference_parts(joint_attention_dim=width)
    edit = QwenImageEditPlusPipeline(text_encoder=text_encoder, tokenizer=tokenizer,
                                     processor=fixtures.reference_processor(tokenizer), **parts)
    folder = tmp_path_factory.mktemp("tiny_full")
    QwenImageEditPlusPipeline(text_encoder=None, tokenizer=None, processor=None, **parts).save_pretrained(folder)
    fixtures.save_diffusers_layout(folder, text_encoder, tokenizer)
    _declare_encoder_in_model_index(folder)
    text = QwenImagePipeline(text_encoder=text_encoder, tokenizer=tokenizer, **parts)
    return _Reference(folder, edit, text)


def _declare_encoder_in_model_index(folder: Path) -> None:
    import json

    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(text_encoder=["transformers", "Qwen2_5_VLForConditionalGeneration"],
                 tokenizer=["transformers", "Qwen2Tokenizer"], processor=["transformers", "Qwen2VLProcessor"])
    index_path.write_text(json.dumps(index, indent=2))


def _run_reference(pipe, output_type: str, seed: int = 11, **kwargs):
    from tests.encoder_fixtures import forwarding_mm_token_types

    # diffusers 0.42 forgets the VLM's 3D image positions (issue #14194); our encoder keeps them, as trained
    with forwarding_mm_token_types(pipe.text_encoder):
        return pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type).images


@pytest.fixture(scope="module")
def ours_full(full_folder: _Reference) -> FireRedEditPipeline:
    pipe = FireRedEditPipeline.from_pretrained(full_folder.folder)
    pipe.reference_area = REF_AREA
    return pipe


@pytest.mark.parametrize("sizes", [[(64, 96)], [(96, 64), (64, 96)]], ids=["1ref", "2refs"])
def test_end_to_end_matches_diffusers(full_folder: _Reference, ours_full: FireRedEditPipeline, sizes,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{EDIT_PLUS}.VAE_IMAGE_SIZE", REF_AREA)
    refs = [_image(w, h, seed=10 + i) for i, (w, h) in enumerate(sizes)]
    args = dict(image=refs, prompt=INSTRUCTION, negative_prompt=" ", true_cfg_scale=4.0,
                num_inference_steps=STEPS, width=64, height=64)
    ref_tokens = _run_reference(full_folder.edit, "latent", **args)
    ref_image = _run_reference(full_folder.edit, "pil", **args)[0]
    result = ours_full.edit(refs, INSTRUCTION, negative_prompt=" ", steps=STEPS, true_cfg_scale=4.0, seed=11,
                            width=64, height=64)
    diff = _max_diff(pack_latents(result.latents, 2), ref_tokens)
    worst, frac = _pixel_report(result.image, ref_image)
    print(f"\n[pipeline parity, end to end, {len(refs)} ref] latents max abs diff {diff:.2e} "
          f"(scale {ref_tokens.abs().max().item():.2f}); pixels max diff {worst}, differing {frac:.2%}")
    assert diff <= TOL
    assert worst <= 1 and frac <= 0.001


def test_text_to_image_matches_qwenimage_pipeline(full_folder: _Reference, ours_full: FireRedEditPipeline) -> None:
    # QwenImageEditPlusPipeline cannot run without an image; QwenImagePipeline is diffusers' text-to-image path
    args = dict(prompt="a lighthouse at dusk", negative_prompt=" ", true_cfg_scale=4.0,
                num_inference_steps=STEPS, width=64, height=32)
    ref_tokens = full_folder.text(**args, generator=torch.Generator("cpu").manual_seed(4), output_type="latent").images
    ref_image = full_folder.text(**args, generator=torch.Generator("cpu").manual_seed(4), output_type="pil").images[0]
    result = ours_full.edit([], "a lighthouse at dusk", steps=STEPS, seed=4, width=64, height=32)
    diff = _max_diff(pack_latents(result.latents, 2), ref_tokens)
    worst, frac = _pixel_report(result.image, ref_image)
    print(f"\n[pipeline parity, text to image] latents max abs diff {diff:.2e}; pixels max diff {worst}, "
          f"differing {frac:.2%}")
    assert diff <= TOL
    assert worst <= 1 and frac <= 0.001


def test_cli_writes_the_reference_png(full_folder: _Reference, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from firered_core.cli import main

    monkeypatch.setattr(f"{EDIT_PLUS}.VAE_IMAGE_SIZE", REF_AREA)
    monkeypatch.setattr(FireRedEditPipeline, "reference_area", REF_AREA)
    refs = [_image(96, 64, seed=20), _image(64, 96, seed=21)]
    paths = []
    for i, ref in enumerate(refs):
        paths.append(tmp_path / f"ref{i}.png")
        ref.save(paths[-1])
    ref_image = _run_reference(full_folder.edit, "pil", image=refs, prompt=INSTRUCTION, negative_prompt=" ",
                               true_cfg_scale=4.0, num_inference_steps=STEPS, width=64, height=64, seed=9)[0]
    out = tmp_path / "out.png"
    code = main(["edit", *map(str, paths), "--instruction", INSTRUCTION, "--model", str(full_folder.folder),
                 "--steps", str(STEPS), "--cfg", "4", "--seed", "9", "--width", "64", "--height", "64",
                 "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {out}" in captured.out
    written = Image.open(out)
    assert written.mode == "RGB" and written.size == (64, 64)
    worst, frac = _pixel_report(written, ref_image)
    print(f"\n[cli parity] PNG pixels max diff {worst}, differing {frac:.2%}")
    assert worst <= 1 and frac <= 0.001


# ---------------------------------------------------------------------------------------------------------------
# Sizing rule and input checks (no model run)
# ---------------------------------------------------------------------------------------------------------------


def _sizing_pipeline(compression: int = 8) -> FireRedEditPipeline:
    vae = types.SimpleNamespace(spatial_compression=compression)
    transformer = types.SimpleNamespace(config=types.SimpleNamespace(patch_size=2))
    return FireRedEditPipeline(transformer, vae, object(), SchedulerConfig())


@pytest.mark.parametrize("size", [(64, 96), (1920, 1080), (1000, 1000), (517, 1203), (3000, 400)])
def test_default_output_size_follows_last_image(size: tuple[int, int]) -> None:
    pipe = _sizing_pipeline()
    first = Image.new("RGB", (300, 300))
    last = Image.new("RGB", size)
    w, h = pipe.output_size([first, last])
    assert (w, h) == calculate_dimensions(1024 * 1024, size[0] / size[1])
    assert w % 32 == 0 and h % 32 == 0
    assert pipe.output_size([]) == (1024, 1024)


def test_sizes_the_model_cannot_make_are_refused_naming_the_nearest() -> None:
    pipe = _sizing_pipeline()  # token size 16
    tall = Image.new("RGB", (64, 96))
    assert pipe.output_size([tall], width=992, height=688) == (992, 688)
    with pytest.raises(ValueError, match=r"width=1000 .*multiples of 16 .*nearest: 992 or 1008"):
        pipe.output_size([tall], width=1000, height=688)
    with pytest.raises(ValueError, match=r"width=8 .*nearest: 16\)"):
        pipe.output_size([], width=8, height=64)
    with pytest.raises(ValueError, match=r"height=9000 .*nearest: 8192\)"):
        pipe.output_size([], width=64, height=9000)


def test_sizes_from_data_are_fitted_to_the_token_size() -> None:
    assert _sizing_pipeline().fit_size(1000, 7) == (992, 16)
    assert _sizing_pipeline().fit_size(9000, 64) == (8192, 64)


def test_one_side_given_the_other_follows_the_aspect_within_the_limits() -> None:
    pipe = _sizing_pipeline()
    tall = Image.new("RGB", (64, 96))
    assert pipe.output_size([tall], width=992) == (992, 1488)  # 992 * 3/2, a multiple of 16
    assert pipe.output_size([tall], height=96) == (64, 96)
    assert pipe.output_size([], width=8192) == (8192, 8192)
    with pytest.raises(ValueError, match=r"width=8192 .*8192x12288.*limit of 8192 px"):
        pipe.output_size([tall], width=8192)


@pytest.mark.parametrize("instruction", ["", "   ", "\n\t"])
def test_empty_instruction_refused(instruction: str) -> None:
    with pytest.raises(ValueError, match="instruction is empty"):
        _sizing_pipeline().edit([Image.new("RGB", (64, 64))], instruction)


def test_too_many_references_warns(caplog: pytest.LogCaptureFixture) -> None:
    pipe = _sizing_pipeline()
    refs = pipe._check_inputs([Image.new("RGB", (32, 32))] * 4, "x", 1, 4.0, (0,))
    assert len(refs) == 4
    assert "trained with 1-3" in caplog.text
