"""The same edit from ComfyUI single files as from the diffusers folder they were written from.

A user with `FireRed-Image-Edit-1.1-transformer.safetensors`, `qwen2.5vl-7b-bf16.safetensors` and
`qwen_image_vae.safetensors` (ComfyUI's layouts: bare transformer keys, the original Qwen2.5-VL key names, Wan VAE
names) must get the same picture as from the diffusers folder - the tokenizer and processor are built offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firered_core import cli
from firered_core.loading import save_comfy_transformer, save_comfy_vae
from firered_core.pipeline import FireRedEditPipeline
from tests.encoder_fixtures import save_single_file
from tests.core.test_pipeline_parity import full_folder  # noqa: F401  (module-scoped fixture)


@pytest.fixture(autouse=True)
def _small_references(monkeypatch: pytest.MonkeyPatch) -> None:
    # the tiny VAE compresses 4x, so ~1024^2 references would cost GBs for nothing here
    monkeypatch.setattr(FireRedEditPipeline, "reference_area", 64 * 64)


def _edit(model: str, image: Path, out: Path) -> int:
    return cli.main(["edit", str(image), "--instruction", "turn the square blue", "--model", model,
                     "--steps", "2", "--width", "32", "--height", "48", "--seed", "5", "-o", str(out)])


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_single_files_give_the_folder_png(full_folder, tmp_path: Path, prefix: str) -> None:  # noqa: F811
    ours = FireRedEditPipeline.from_pretrained(full_folder.folder)
    files = tmp_path / "comfy"
    files.mkdir()
    transformer = save_comfy_transformer(ours.transformer, files / "firered-transformer.safetensors", prefix=prefix)
    vae = save_comfy_vae(ours.vae, files / "vae.safetensors")
    encoder = save_single_file(files / "qwen2.5vl.safetensors", full_folder.edit.text_encoder)
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (56, 40, 3), dtype=np.uint8)).save(image)

    assert _edit(str(full_folder.folder), image, tmp_path / "folder.png") == 0
    # files named in a shuffled order on purpose: each is recognised by its keys, not its name or position
    model = ",".join(str(p) for p in (vae, encoder, transformer))
    assert _edit(model, image, tmp_path / "single.png") == 0
    a = np.asarray(Image.open(tmp_path / "folder.png"))
    b = np.asarray(Image.open(tmp_path / "single.png"))
    assert a.shape == b.shape == (48, 32, 3)
    assert np.array_equal(a, b)
