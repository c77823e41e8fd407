"""fp8 storage of the Qwen2.5-VL condition encoder, and scaled-fp8 encoder files kept fp8, on tiny random models.

Measured on the tiny model of ``tests/encoder_fixtures.py`` (seeds 0-2, edit prompts with two pictures and text-only
prompts): fp8 storage moves the embeddings by 4.1-6.1 % (relative L2) from the same model with full storage, in
float32 and in bfloat16 compute alike, where bf16 storage alone moves them by 0.75-0.94 % from float32. The
tiny model's weights are drawn wide (std 0.5 / sqrt(fan-in)) so every layer matters, which makes this a pessimistic
figure. ``TOL`` allows for that spread; the lower bound checks that fp8 storage is really in effect.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from firered_core import cli, ops
from firered_core.encoder import QwenVLConditionEncoder
from firered_core.encoder.qwen_keys import config_metadata, to_original_key
from firered_core.encoder.qwen_loading import load_single_file_model
from firered_core.encoder.qwen_processor import QwenVLProcessor, build_image_processor
from firered_core.loading import WeightFileError, save_comfy_transformer, save_comfy_vae
from firered_core.loading.scaled_fp8 import ScaledFP8
from firered_core.pipeline import FireRedEditPipeline
from tests.encoder_fixtures import (TINY_QWEN_VL_CONFIG, build_tiny_qwen_vl, offline_tokenizer, sample_images,
                                    save_diffusers_layout, save_single_file)
from tests.scaled_fp8_fixtures import scaled_fp8_state
from tests.core.test_pipeline_parity import full_folder  # noqa: F401  (module-scoped fixture)

FP8 = torch.float8_e4m3fn
TOL = 0.08  # relative L2 error of fp8 storage; measured 0.041-0.061 (module docstring)
PROMPTS = ["Make the sky pink and add a hot-air balloon.", "把猫换成老虎", "remove the text"]


@pytest.fixture(scope="module")
def model():
    return build_tiny_qwen_vl(seed=0)


@pytest.fixture(scope="module")
def processor() -> QwenVLProcessor:
    return QwenVLProcessor(offline_tokenizer(), build_image_processor())


@pytest.fixture(scope="module")
def plain_file(model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_single_file(tmp_path_factory.mktemp("enc") / "qwen2.5vl.safetensors", model)


def _original_state(model) -> dict[str, torch.Tensor]:
    return {to_original_key(k): v for k, v in model.state_dict().items() if k != "lm_head.weight"}


def _linear_keys(model) -> list[str]:
    """Original-layout names of every Linear weight of the backbone (language model, vision tower, merger)."""
    return [to_original_key(f"{n}.weight") for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != "lm_head"]


def _encode(encoder: QwenVLConditionEncoder, with_images: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cond = encoder.encode(PROMPTS, sample_images() if with_images else [])
    return cond.embeds.float(), cond.mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _nbytes(module: torch.nn.Module, only_linear: bool = False) -> int:
    linear = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)}
    return sum(p.numel() * p.element_size() for n, p in module.named_parameters()
               if not only_linear or n in linear)


# ---------------------------------------------------------------------------------------------------------------
# fp8 storage of a full-precision file
# ---------------------------------------------------------------------------------------------------------------


def test_fp8_storage_is_linear_weights_only_and_half_their_bytes(plain_file: Path, processor) -> None:
    fp8 = QwenVLConditionEncoder.from_single_file(plain_file, processor=processor, dtype=torch.bfloat16, fp8=True)
    full = QwenVLConditionEncoder.from_single_file(plain_file, processor=processor, dtype=torch.bfloat16)
    linear = {n for n, m in fp8.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert any(n.startswith("language_model.") for n in linear) and any(n.startswith("visual.") for n in linear)
    for name, module in fp8.model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if name in linear:
            assert type(module) is ops.Linear and own["weight"].dtype == FP8, name  # adopted: upcast at compute
        elif "weight" in own:
            assert own["weight"].dtype == torch.bfloat16, name  # embeddings, norms, the patch convolution
    assert _nbytes(fp8.model, only_linear=True) * 2 == _nbytes(full.model, only_linear=True)
    assert not any(type(m) is ops.Linear for m in full.model.modules())  # without fp8 nothing changes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_images", [True, False], ids=["edit", "text"])
def test_fp8_encoder_stays_within_the_measured_error(plain_file: Path, processor, dtype: torch.dtype,
                                                     with_images: bool) -> None:
    full, full_mask = _encode(QwenVLConditionEncoder.from_single_file(plain_file, processor=processor, dtype=dtype),
                              with_images)
    fp8, fp8_mask = _encode(QwenVLConditionEncoder.from_single_file(plain_file, processor=processor, dtype=dtype,
                                                                    fp8=True), with_images)
    assert torch.equal(fp8_mask, full_mask)
    assert torch.isfinite(fp8).all()
    assert 0.01 < _rel(fp8, full) < TOL


def test_fp8_bytes_of_a_model_shaped_like_the_7b(tmp_path: Path) -> None:
    # the 7B encoder: 7.2 of its 7.75 B backbone parameters are Linear weights, so fp8 storage keeps 53.5 % of the
    # bf16 bytes. This model has the same kinds of layers at widths where the Linear weights dominate likewise.
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    config = copy.deepcopy(TINY_QWEN_VL_CONFIG)
    config["text_config"].update(vocab_size=2048, hidden_size=512, intermediate_size=1536, num_hidden_layers=3,
                                 num_attention_heads=4, num_key_value_heads=1,  # 128-wide heads as in the 7B
                                 bos_token_id=None, eos_token_id=None)  # ids beyond this small vocabulary
    config["text_config"]["rope_parameters"]["mrope_section"] = [16, 24, 24]
    config["vision_config"].update(hidden_size=256, intermediate_size=768, num_heads=2, out_hidden_size=512)
    torch.manual_seed(0)
    backbone = Qwen2_5_VLModel(Qwen2_5_VLConfig(**config))
    path = tmp_path / "wide.safetensors"
    save_file({to_original_key("model." + k): v.contiguous() for k, v in backbone.state_dict().items()}, str(path),
              metadata=config_metadata(config))
    fp8 = load_single_file_model(path, dtype=torch.bfloat16, fp8=True)
    full = load_single_file_model(path, dtype=torch.bfloat16)
    assert _nbytes(fp8, only_linear=True) * 2 == _nbytes(full, only_linear=True)
    assert 0.5 < _nbytes(fp8) / _nbytes(full) < 0.58


def test_folder_streams_fp8_like_the_single_file(model, plain_file: Path, processor, tmp_path: Path) -> None:
    folder = save_diffusers_layout(tmp_path / "pipe", model, offline_tokenizer())
    from_folder = QwenVLConditionEncoder.from_pretrained_dir(folder, dtype=torch.float32, fp8=True)
    from_file = QwenVLConditionEncoder.from_single_file(plain_file, processor=processor, dtype=torch.float32,
                                                        fp8=True)
    assert from_folder.model.language_model.layers[0].mlp.up_proj.weight.dtype == FP8
    for with_images in (True, False):
        assert torch.equal(_encode(from_folder, with_images)[0], _encode(from_file, with_images)[0])
    by_default = QwenVLConditionEncoder.from_pretrained_dir(folder)  # a float32 folder stays float32
    assert by_default.model.language_model.layers[0].mlp.up_proj.weight.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------
# files that are fp8 already
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, per_row", [("older", False), ("newer", True)], ids=["older", "newer-per-row"])
def test_scaled_file_stays_fp8_by_default_and_equals_the_dequantised_path(model, processor, tmp_path: Path,
                                                                          layout: str, per_row: bool) -> None:
    tensors, metadata = scaled_fp8_state(_original_state(model), _linear_keys(model), layout=layout, per_row=per_row)
    path = tmp_path / "qwen_2.5_vl_fp8_scaled.safetensors"
    save_file(tensors, str(path), metadata={**metadata, **config_metadata(TINY_QWEN_VL_CONFIG)})
    for dtype in (torch.float32, torch.bfloat16):
        kept = QwenVLConditionEncoder.from_single_file(path, processor=processor, dtype=dtype)
        expanded = QwenVLConditionEncoder.from_single_file(path, processor=processor, dtype=dtype, fp8=False)
        formats = [m.weight_format for m in kept.model.modules() if getattr(m, "weight_format", None) is not None]
        assert len(formats) == len(_linear_keys(model)) and all(isinstance(f, ScaledFP8) for f in formats)
        q_proj = kept.model.language_model.layers[1].self_attn.q_proj
        assert torch.equal(q_proj.weight.view(torch.uint8),
                           tensors["model.layers.1.self_attn.q_proj.weight"].view(torch.uint8))
        assert expanded.model.language_model.layers[1].self_attn.q_proj.weight.dtype == dtype
        for with_images in (True, False):
            assert torch.equal(_encode(kept, with_images)[0], _encode(expanded, with_images)[0]), (dtype, with_images)


def test_plain_fp8_file_stays_fp8_by_default(model, processor, tmp_path: Path) -> None:
    linear = set(_linear_keys(model))
    state = {k: (v.to(FP8) if k in linear else v.to(torch.bfloat16)) for k, v in _original_state(model).items()}
    path = tmp_path / "qwen_fp8_e4m3fn.safetensors"
    save_file(state, str(path), metadata=config_metadata(TINY_QWEN_VL_CONFIG))
    kept = QwenVLConditionEncoder.from_single_file(path, processor=processor)
    expanded = QwenVLConditionEncoder.from_single_file(path, processor=processor, fp8=False)
    assert kept.model.visual.blocks[0].attn.qkv.weight.dtype == FP8
    assert kept.model.language_model.embed_tokens.weight.dtype == torch.bfloat16  # the file's own dtype
    assert expanded.model.visual.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert torch.equal(_encode(kept, True)[0], _encode(expanded, True)[0])


def test_misshaped_scale_in_an_encoder_file_is_named(model, tmp_path: Path) -> None:
    tensors, metadata = scaled_fp8_state(_original_state(model), _linear_keys(model))
    tensors["visual.blocks.0.mlp.down_proj.scale_weight"] = torch.ones(5)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path), metadata={**metadata, **config_metadata(TINY_QWEN_VL_CONFIG)})
    with pytest.raises(WeightFileError, match=r"broken\.safetensors: scale 'visual\.blocks\.0\.mlp\.down_proj"
                                              r"\.scale_weight' has shape \[5\]"):
        QwenVLConditionEncoder.from_single_file(path)


# ---------------------------------------------------------------------------------------------------------------
# the command line, end to end
# ---------------------------------------------------------------------------------------------------------------


def _edit(model: str, image: Path, out: Path, *flags: str) -> int:
    return cli.main(["edit", str(image), "--instruction", "turn the square blue", "--model", model, "--steps", "2",
                     "--width", "32", "--height", "48", "--seed", "5", "-o", str(out), *flags])


def test_cli_runs_scaled_files_kept_fp8_with_the_expanded_png(full_folder, tmp_path: Path,  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FireRedEditPipeline, "reference_area", 64 * 64)  # the tiny VAE compresses only 4x
    pipe = FireRedEditPipeline.from_pretrained(full_folder.folder)
    transformer_state = pipe.transformer.state_dict()
    linear = [f"{n}.weight" for n, m in pipe.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    tensors, metadata = scaled_fp8_state(transformer_state, linear, prefix="model.diffusion_model.",
                                         rest_dtype=torch.float32)
    transformer = tmp_path / "firered_fp8_scaled.safetensors"
    save_file(tensors, str(transformer), metadata=metadata)
    encoder_model = full_folder.edit.text_encoder
    tensors, metadata = scaled_fp8_state(_original_state(encoder_model), _linear_keys(encoder_model),
                                         rest_dtype=torch.float32)
    encoder = tmp_path / "qwen_2.5_vl_fp8_scaled.safetensors"
    save_file(tensors, str(encoder), metadata={**metadata, **config_metadata(TINY_QWEN_VL_CONFIG)})
    vae = save_comfy_vae(pipe.vae, tmp_path / "vae.safetensors")
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (56, 40, 3), dtype=np.uint8)).save(image)
    files = ",".join(map(str, (transformer, encoder, vae)))

    assert _edit(files, image, tmp_path / "kept.png", "--fp8") == 0  # both stay scaled fp8 in memory
    assert _edit(files, image, tmp_path / "expanded.png", "--no-fp8-encoder") == 0  # both dequantised
    kept, expanded = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("kept", "expanded"))
    assert kept.shape == (48, 32, 3) and np.array_equal(kept, expanded)

    plain = save_single_file(tmp_path / "qwen.safetensors", encoder_model)
    plain_transformer = save_comfy_transformer(pipe.transformer, tmp_path / "firered.safetensors")
    plain_files = ",".join(map(str, (plain_transformer, plain, vae)))
    assert _edit(plain_files, image, tmp_path / "fp8_encoder.png", "--fp8-encoder") == 0
    assert np.asarray(Image.open(tmp_path / "fp8_encoder.png")).shape == (48, 32, 3)
