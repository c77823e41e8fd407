"""FireRed Model Loader and FireRed LoRA Loader on tiny models in a stand-in ComfyUI model tree.

The tree holds what users download: a diffusers folder (models/diffusers/tiny, with a tiny random Qwen2.5-VL
text encoder), ComfyUI single files (transformer in models/diffusion_models, the encoder in models/text_encoders,
the VAE in models/vae) and LoRAs (models/loras): one for this model, one with a key that fits no layer, one for
another architecture.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from firered_core.config import SchedulerConfig
from firered_core.loading import save_comfy_transformer, save_comfy_vae, save_diffusers_folder
from firered_core.lora import add_trainable_lora, list_loras, lora_state_dict
from firered_core.transformer import FireRedTransformer
from nodes.common import FireRedNodeError
from nodes.edit import FireRedEdit
from nodes.loaders import FireRedModelLoader
from nodes.lora_loader import FireRedLoraLoader
from nodes.model_sources import DEFAULT_CHOICE, FROM_MODEL
from tests.node_fixtures import TINY, FakeComfy, image_tensor, randomise, tiny_pipeline

fixtures = pytest.importorskip("tests.encoder_fixtures")

SINGLE = ("tiny-transformer.safetensors", "tiny-qwen-vl.safetensors", "tiny-vae.safetensors")


def _lora(seed: int) -> dict[str, torch.Tensor]:
    """A ComfyUI-layout LoRA for the tiny transformer with random (non-zero) factors."""
    model = FireRedTransformer(TINY.transformer)
    add_trainable_lora(model, rank=4)
    randomise(model, seed)
    return lora_state_dict(model, "train", "comfyui")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("comfy")
    fake = FakeComfy(root)
    pipe = tiny_pipeline()
    encoder = fixtures.build_tiny_qwen_vl(seed=0)
    folder = save_diffusers_folder(pipe.transformer, pipe.vae, SchedulerConfig(), fake.folder("diffusers") / "tiny")
    fixtures.save_diffusers_layout(folder, encoder, fixtures.offline_tokenizer())
    save_comfy_transformer(pipe.transformer, fake.folder("diffusion_models") / SINGLE[0])
    fixtures.save_single_file(fake.folder("text_encoders") / SINGLE[1], encoder)
    save_comfy_vae(pipe.vae, fake.folder("vae") / SINGLE[2])
    fake.add_file("loras", "style.safetensors", _lora(3))
    stray = {"diffusion_model.transformer_blocks.7.attn.to_q.lora_down.weight": torch.randn(4, 32),
             "diffusion_model.transformer_blocks.7.attn.to_q.lora_up.weight": torch.randn(32, 4)}
    fake.add_file("loras", "sub/partial.safetensors", {**_lora(4), **stray})
    flux = {f"diffusion_model.double_blocks.{i}.img_attn.qkv.lora_{p}.weight": torch.randn(*s)
            for i in range(3) for p, s in (("down", (4, 64)), ("up", (192, 4)))}
    fake.add_file("loras", "flux_style.safetensors", flux)
    return root


@pytest.fixture
def comfy(tree: Path, monkeypatch: pytest.MonkeyPatch) -> FakeComfy:
    with FakeComfy.installed(monkeypatch, tree) as fake:
        yield fake


@pytest.fixture(scope="module")
def folder_model(tree: Path):
    """Loaded once: views reconcile the shared LoRA stack on every use, so tests cannot leak LoRAs."""
    with pytest.MonkeyPatch.context() as monkeypatch, FakeComfy.installed(monkeypatch, tree):
        (model,) = FireRedModelLoader().load("diffusers/tiny", FROM_MODEL, FROM_MODEL, "float32")
    model.loaded.pipeline.reference_area = 64 * 64
    return model


def _edit(model, seed: int = 0) -> torch.Tensor:
    image, _ = FireRedEdit().edit(model, "make it blue", " ", 2, 4.0, seed, 32, 32, image1=image_tensor(1, 32, 32))
    return image


# ---------------------------------------------------------------------------------------------------------------
# Model loader
# ---------------------------------------------------------------------------------------------------------------


def test_choices_list_default_folders_and_files(comfy) -> None:
    from firered_core.default import DEFAULT_NAME

    required = FireRedModelLoader.INPUT_TYPES()["required"]
    assert DEFAULT_CHOICE == DEFAULT_NAME
    assert required["model"][0] == [DEFAULT_CHOICE, "diffusers/tiny", SINGLE[0]]
    assert required["text_encoder"][0] == [FROM_MODEL, SINGLE[1]]
    assert required["vae"][0] == [FROM_MODEL, SINGLE[2]]
    assert "fp8_e4m3fn" in required["weight_dtype"][0]


def test_default_is_offered_outside_comfyui_too() -> None:
    assert FireRedModelLoader.INPUT_TYPES()["required"]["model"][0] == [DEFAULT_CHOICE]


def test_diffusers_folder_loads_and_edits(folder_model, comfy) -> None:
    assert set(folder_model.loaded.patchers) == {"encoder", "transformer", "vae"}  # each handed to ComfyUI
    assert _edit(folder_model).shape == (1, 32, 32, 3)


def test_single_files_give_the_same_model_as_the_folder(folder_model, comfy) -> None:
    (model,) = FireRedModelLoader().load(SINGLE[0], SINGLE[1], SINGLE[2], "float32")
    model.loaded.pipeline.reference_area = 64 * 64
    assert torch.equal(_edit(model), _edit(folder_model))


def test_dtype_choices(comfy) -> None:
    (bf16,) = FireRedModelLoader().load("diffusers/tiny", FROM_MODEL, FROM_MODEL, "bfloat16")
    assert bf16.loaded.pipeline.transformer.img_in.weight.dtype == torch.bfloat16
    (fp8,) = FireRedModelLoader().load(SINGLE[0], SINGLE[1], SINGLE[2], "fp8_e4m3fn")
    assert fp8.loaded.pipeline.transformer.img_in.weight.dtype == torch.float8_e4m3fn
    with pytest.raises(FireRedNodeError, match="weight_dtype"):
        FireRedModelLoader().load("diffusers/tiny", FROM_MODEL, FROM_MODEL, "int4")


def test_single_transformer_file_needs_encoder_and_vae(comfy) -> None:
    with pytest.raises(FireRedNodeError, match="choose the text_encoder and vae"):
        FireRedModelLoader().load(SINGLE[0], FROM_MODEL, FROM_MODEL, "float32")
    with pytest.raises(FireRedNodeError, match="choose the vae"):
        FireRedModelLoader().load(SINGLE[0], SINGLE[1], FROM_MODEL, "float32")


def test_files_in_the_wrong_slots_are_named(comfy) -> None:
    # a LoRA copied into the diffusion_models folder and picked as the model
    lora = Path(comfy.folder("loras")) / "style.safetensors"
    (comfy.folder("diffusion_models") / "oops.safetensors").write_bytes(lora.read_bytes())
    try:
        with pytest.raises(FireRedNodeError, match="is a LoRA"):
            FireRedModelLoader().load("oops.safetensors", SINGLE[1], SINGLE[2], "float32")
    finally:
        (comfy.folder("diffusion_models") / "oops.safetensors").unlink()


@pytest.mark.parametrize("model, encoder, vae, message", [
    ("missing.safetensors", SINGLE[1], SINGLE[2], "'missing.safetensors' was not found"),
    ("../../etc/x.safetensors", SINGLE[1], SINGLE[2], "'..' parts"),
    (SINGLE[0], "..\\..\\x.safetensors", SINGLE[2], "'..' parts"),
    ("/abs/transformer.safetensors", SINGLE[1], SINGLE[2], "absolute path"),
    ("diffusers/nothing-here", FROM_MODEL, FROM_MODEL, "no diffusers model folder"),
    ("diffusers/../tiny", FROM_MODEL, FROM_MODEL, "'..' parts"),
    ("", FROM_MODEL, FROM_MODEL, "no file chosen"),
])
def test_bad_model_choices_are_node_errors(comfy, model: str, encoder: str, vae: str, message: str) -> None:
    with pytest.raises(FireRedNodeError, match=message):
        FireRedModelLoader().load(model, encoder, vae, "float32")


def test_outside_comfyui_only_absolute_paths(tree: Path, tmp_path: Path) -> None:
    files = [str(tree / "models" / kind / name)
             for kind, name in zip(("diffusion_models", "text_encoders", "vae"), SINGLE)]
    with pytest.raises(FireRedNodeError, match="not an absolute path"):
        FireRedModelLoader().load(SINGLE[0], files[1], files[2], "float32")
    with pytest.raises(FireRedNodeError, match="does not exist"):
        FireRedModelLoader().load(str(tmp_path / "gone.safetensors"), files[1], files[2], "float32")
    (model,) = FireRedModelLoader().load(*files, "float32")
    assert model.loaded.patchers == {}  # no ComfyUI: nothing to register with


def test_truncated_file_is_a_node_error(comfy) -> None:
    good = comfy.folder("vae") / SINGLE[2]
    broken = comfy.folder("vae") / "broken.safetensors"
    broken.write_bytes(good.read_bytes()[:-100])
    try:
        with pytest.raises(FireRedNodeError, match="broken.safetensors"):
            FireRedModelLoader().load(SINGLE[0], SINGLE[1], "broken.safetensors", "float32")
    finally:
        broken.unlink()


def test_missing_default_weights_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import firered_core.default as default

    monkeypatch.setattr(default, "is_available", lambda: False)
    with pytest.raises(FireRedNodeError, match="embedded default model .*not installed"):
        FireRedModelLoader().load(DEFAULT_CHOICE, FROM_MODEL, FROM_MODEL, "default")


@pytest.mark.skipif(not __import__("firered_core.default").default.is_available(),
                    reason="this checkout has no embedded default weights yet")
def test_default_loads_and_edits() -> None:
    from firered_core.default import MODEL_DIR
    from firered_core.loading import read_model_defaults

    (model,) = FireRedModelLoader().load(DEFAULT_CHOICE, FROM_MODEL, FROM_MODEL, "default")
    settings = read_model_defaults(MODEL_DIR)
    source = image_tensor(1, 64, 64)
    image, _ = FireRedEdit().edit(model, "make the circle red", " ", settings.steps, settings.true_cfg_scale,
                                  0, 64, 64, image1=source)
    assert image.shape == (1, 64, 64, 3)
    # a freshly added node (steps 0, CFG -1) samples with the folder's own defaults.json
    own, _ = FireRedEdit().edit(model, "make the circle red", " ", 0, -1.0, 0, 64, 64, image1=source)
    assert torch.equal(own, image)


def test_default_refuses_foreign_parts_and_fp8() -> None:
    with pytest.raises(FireRedNodeError, match="its own condition encoder and VAE"):
        FireRedModelLoader().load(DEFAULT_CHOICE, FROM_MODEL, SINGLE[2], "float32")
    with pytest.raises(FireRedNodeError, match="fp8"):
        FireRedModelLoader().load(DEFAULT_CHOICE, FROM_MODEL, FROM_MODEL, "fp8_e4m3fn")


# ---------------------------------------------------------------------------------------------------------------
# LoRA loader
# ---------------------------------------------------------------------------------------------------------------


def test_lora_changes_the_edit_and_leaves_the_input_model_alone(folder_model, comfy) -> None:
    base = _edit(folder_model)
    folder_model.loaded.transformer_patcher.size = 12345  # as measured by ComfyUI before the LoRA
    styled, report = FireRedLoraLoader().load_lora(folder_model, "style.safetensors", 1.0)
    assert folder_model.loaded.transformer_patcher.size == 0  # adapters added: ComfyUI re-measures
    assert "every key matched" in report and "24 layers" in report
    assert not torch.equal(_edit(styled), base)
    assert torch.equal(_edit(folder_model), base)  # the base view runs without the LoRA again
    assert list_loras(folder_model.loaded.pipeline.transformer) == {}


def test_lora_stack_and_strength(folder_model, comfy) -> None:
    loader = FireRedLoraLoader()
    half, _ = loader.load_lora(folder_model, "style.safetensors", 0.5)
    stacked, report = loader.load_lora(half, "sub/partial.safetensors", -1.0)
    assert "2 keys matched no layer" in report  # its down and up factors
    assert "diffusion_model.transformer_blocks.7.attn.to_q" in report
    stacked_image = _edit(stacked)
    assert sorted(list_loras(folder_model.loaded.pipeline.transformer).values()) == [-1.0, 0.5]
    zero, _ = loader.load_lora(folder_model, "style.safetensors", 0.0)
    assert torch.equal(_edit(zero), _edit(folder_model))
    assert torch.equal(_edit(stacked), stacked_image)  # back to the same stack, same picture


@pytest.mark.parametrize("name, message", [
    ("flux_style.safetensors", "another architecture"),
    ("../../x", "'..' parts"),
    ("../loras/style.safetensors", "'..' parts"),
    ("nope.safetensors", "was not found"),
    ("", "no file chosen"),
])
def test_bad_loras_are_node_errors(folder_model, comfy, name: str, message: str) -> None:
    with pytest.raises(FireRedNodeError, match=message):
        FireRedLoraLoader().load_lora(folder_model, name, 1.0)
    assert list_loras(folder_model.loaded.pipeline.transformer) == {}  # nothing half-applied


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), "1", True])
def test_bad_lora_strength(folder_model, comfy, strength) -> None:
    with pytest.raises(FireRedNodeError, match="strength"):
        FireRedLoraLoader().load_lora(folder_model, "style.safetensors", strength)


def test_lora_loader_needs_a_model(comfy) -> None:
    with pytest.raises(FireRedNodeError, match="FIRERED_MODEL"):
        FireRedLoraLoader().load_lora(None, "style.safetensors", 1.0)


def test_a_component_with_our_lora_is_loaded_whole_when_it_fits(folder_model, comfy) -> None:
    """ComfyUI never moves a layer that carries adapters on a partial load, so the placement asks for a full load
    of a component with LoRAs whenever the device has room for all of it; otherwise ComfyUI decides."""
    def transformer_loads() -> list[bool]:
        patcher = styled.loaded.transformer_patcher
        return [full for models, full in comfy.loaded if models == [patcher]]

    styled, _ = FireRedLoraLoader().load_lora(folder_model, "style.safetensors", 1.0)
    comfy.loaded.clear()
    _edit(folder_model)
    assert transformer_loads() == [False]  # no LoRA attached: ComfyUI's own choice
    comfy.loaded.clear()
    _edit(styled)
    assert transformer_loads() == [True]
    comfy.loaded.clear()
    comfy.free_memory = 1 << 10  # a card too small for the whole transformer
    _edit(styled)
    assert transformer_loads() == [False]
