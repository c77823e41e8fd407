"""A GGUF transformer the way users run it: ``firered edit --model x.gguf,enc.safetensors,vae.safetensors`` and the
FireRed Model Loader + FireRed Edit nodes, against the float model it was quantised from; and the real ComfyUI
offering ``.gguf`` files of ``models/diffusion_models`` and ``models/unet`` in the loader.

The GGUF file is written by the test (``tests/gguf_fixtures.py``: ComfyUI-GGUF's layout, Q8_0 block weights);
the float model is the same transformer saved as a safetensors single file. Q8_0 keeps ~8 bits per weight, so
the edits must agree to within 1.0 of 255 in mean absolute pixel difference (and they do differ: the file is
quantised).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firered_core import cli
from firered_core.loading import save_comfy_transformer, save_comfy_vae
from firered_core.pipeline import FireRedEditPipeline
from firered_core.quant import quantised_parameters
from nodes.edit import FireRedEdit
from nodes.loaders import FireRedModelLoader
from tests.node_fixtures import FakeComfy, image_tensor, tiny_pipeline
from tests.core.test_pipeline_parity import full_folder  # noqa: F401  (module fixture: tiny diffusers folder)

pytest.importorskip("gguf")
fixtures = pytest.importorskip("tests.encoder_fixtures")
from tests.gguf_fixtures import write_transformer_gguf  # noqa: E402

MAX_MEAN_ABS = 1.0  # of 255


def _mean_abs_255(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _small_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FireRedEditPipeline, "reference_area", 64 * 64)  # the tiny VAE compresses 4x


def _cli_edit(files: list[Path], image: Path, out: Path) -> np.ndarray:
    code = cli.main(["edit", str(image), "--instruction", "turn the square blue", "--model",
                     ",".join(map(str, files)), "--steps", "2", "--width", "32", "--height", "48", "--seed", "5",
                     "-o", str(out)])
    assert code == 0
    return np.asarray(Image.open(out).convert("RGB"))


def test_cli_edit_from_gguf(full_folder, tmp_path: Path) -> None:  # noqa: F811
    pipe = FireRedEditPipeline.from_pretrained(full_folder.folder)
    files = tmp_path / "files"
    files.mkdir()
    transformer = save_comfy_transformer(pipe.transformer, files / "transformer.safetensors")
    q8 = write_transformer_gguf(pipe.transformer.state_dict(), files / "transformer-Q8_0.gguf")
    vae = save_comfy_vae(pipe.vae, files / "vae.safetensors")
    encoder = fixtures.save_single_file(files / "qwen2.5vl.safetensors", full_folder.edit.text_encoder)
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (56, 40, 3), dtype=np.uint8)).save(image)

    expected = _cli_edit([transformer, encoder, vae], image, tmp_path / "float.png")
    got = _cli_edit([vae, q8, encoder], image, tmp_path / "q8.png")  # any order: files are told by content
    diff = _mean_abs_255(got, expected)
    print(f"\n[gguf cli] Q8_0 vs float32 edit: mean abs pixel diff {diff:.3f} / 255")
    assert 0 < diff <= MAX_MEAN_ABS


# ---------------------------------------------------------------------------------------------------------------
# Nodes (stand-in ComfyUI model folders, as in test_nodes_loaders)
# ---------------------------------------------------------------------------------------------------------------

FILES = {"float": "tiny-transformer.safetensors", "q8": "gguf/tiny-Q8_0.gguf", "encoder": "tiny-qwen-vl.safetensors",
         "vae": "tiny-vae.safetensors"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("comfy-gguf")
    fake = FakeComfy(root)
    pipe = tiny_pipeline(seed=3)
    save_comfy_transformer(pipe.transformer, fake.folder("diffusion_models") / FILES["float"])
    (fake.folder("diffusion_models") / "gguf").mkdir()
    write_transformer_gguf(pipe.transformer.state_dict(), fake.folder("diffusion_models") / FILES["q8"])
    fixtures.save_single_file(fake.folder("text_encoders") / FILES["encoder"], fixtures.build_tiny_qwen_vl(seed=0))
    save_comfy_vae(pipe.vae, fake.folder("vae") / FILES["vae"])
    (fake.folder("vae") / "not-offered.gguf").write_bytes(b"GGUF")  # GGUF is offered for transformers only
    return root


def _node_edit(model_name: str) -> tuple[np.ndarray, object]:
    (model,) = FireRedModelLoader().load(model_name, FILES["encoder"], FILES["vae"], "float32")
    model.loaded.pipeline.reference_area = 64 * 64
    image, _ = FireRedEdit().edit(model, "make it blue", " ", 2, 4.0, 0, 32, 32, image1=image_tensor(1, 32, 32))
    return (image[0].numpy() * 255.0), model.loaded.pipeline.transformer


def test_model_loader_lists_and_edits_gguf(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeComfy.installed(monkeypatch, tree):
        required = FireRedModelLoader.INPUT_TYPES()["required"]
        assert FILES["q8"] in required["model"][0] and FILES["float"] in required["model"][0]
        assert "not-offered.gguf" not in required["vae"][0]
        expected, _ = _node_edit(FILES["float"])
        got, transformer = _node_edit(FILES["q8"])
    assert len(quantised_parameters(transformer)) == 2 * 14
    diff = _mean_abs_255(got, expected)
    print(f"\n[gguf nodes] Q8_0 vs float32 edit: mean abs pixel diff {diff:.3f} / 255")
    assert 0 < diff <= MAX_MEAN_ABS


# ---------------------------------------------------------------------------------------------------------------
# The real ComfyUI: which files the loader offers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_comfyui_offers_gguf_from_diffusion_models_and_unet(tmp_path: Path) -> None:
    """ComfyUI's own file lists leave .gguf out (not a 'supported_pt_extension'); the loader adds them, from both
    folders of ComfyUI's diffusion_models (models/diffusion_models and the legacy models/unet)."""
    from tests.comfyui_harness import start_server

    base = tmp_path / "comfy"
    for rel in ("models/unet/qwen-image-edit-2509-Q4_K_M.gguf", "models/diffusion_models/sub/edit-Q8_0.gguf",
                "models/vae/some.gguf", "models/diffusion_models/plain.safetensors"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"GGUF" if rel.endswith(".gguf") else b"")
    with start_server(base) as server:
        info = server.get_json("/object_info/FireRedModelLoader")["FireRedModelLoader"]
    required = info["input"]["required"]
    models = required["model"][0]
    assert {"qwen-image-edit-2509-Q4_K_M.gguf", "sub/edit-Q8_0.gguf", "plain.safetensors"} <= set(models), models
    assert "some.gguf" not in required["vae"][0]

