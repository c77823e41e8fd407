"""FireRed Text Edit and FireRed Identity Edit, called directly (no ComfyUI) on the tiny random-weight model.

The tiny model paints noise, so two kinds of test: the node run end to end on it (outputs, candidate count,
report, face blending), and the node's choice checked by standing in for the generator with known candidates
(rendered text, edited photos) while OCR and face scoring stay real. Bad inputs must fail with a
``FireRedNodeError`` before anything is generated.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from firered_core.pipeline import EditResult
from nodes.common import FireRedNodeError, pils_to_tensor
from nodes.identity_edit import NO_FACE, FireRedIdentityEdit
from nodes.text_edit import FireRedTextEdit
from tests.node_fixtures import FakeComfy, image_tensor, tiny_model

SETTINGS = dict(negative_prompt=" ", steps=2, true_cfg_scale=4.0, seed=7, width=32, height=32)
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")



def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_ocr = pytest.mark.skipif(not _installed("rapidocr", "onnxruntime"), reason="the 'ocr' extra is not installed")
needs_face = pytest.mark.skipif(not _installed("dlib", "face_recognition_models", "skimage"),
                                reason="the 'face' extra (or scikit-image) is not installed")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def card(text: str | None, xy: tuple[int, int] = (20, 40), px: int = 32, size=(256, 128)) -> Image.Image:
    image = Image.new("RGB", size, (236, 232, 220))
    if text:
        font = ImageFont.truetype(str(DEJAVU), px) if DEJAVU.is_file() else ImageFont.load_default(size=px)
        ImageDraw.Draw(image).text(xy, text, font=font, fill=(25, 25, 30))
    return image


def astronaut(side: int = 256) -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS)


def serve_candidates(monkeypatch: pytest.MonkeyPatch, model, images: list[Image.Image]) -> list[int]:
    """Make the model's pipeline return ``images[i]`` for seed ``SETTINGS['seed'] + i``; returns the seeds asked."""
    asked: list[int] = []

    def edit(refs, instruction, *, seed, **kwargs):
        asked.append(seed)
        image = images[seed - SETTINGS["seed"]]
        latents = torch.zeros(1, 4, image.height // 4, image.width // 4)
        return EditResult(image=image, latents=latents, width=image.width, height=image.height, seed=seed)

    monkeypatch.setattr(model.loaded.pipeline, "edit", edit)
    return asked


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------------
# The node contract
# ---------------------------------------------------------------------------------------------------------------


def test_node_declarations() -> None:
    from nodes import identity_edit, text_edit

    for module, node_id, cls in ((text_edit, "FireRedTextEdit", FireRedTextEdit),
                                 (identity_edit, "FireRedIdentityEdit", FireRedIdentityEdit)):
        assert module.NODE_CLASSES == {node_id: cls} and set(module.DISPLAY_NAMES) == {node_id}
        assert cls.CATEGORY == "FireRed" and callable(getattr(cls(), cls.FUNCTION))
        required = cls.INPUT_TYPES()["required"]
        assert required["model"] == ("FIRERED_MODEL",) and required["image"] == ("IMAGE",)
        assert {"instruction", "candidates", "steps", "true_cfg_scale", "seed"} <= set(required)
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        # the size mode and reference areas come after every older widget: saved workflows load by position
        assert list(cls.INPUT_TYPES()["optional"])[-3:] == ["size_mode", "vae_ref_area", "cond_ref_area"]
    assert FireRedTextEdit.RETURN_TYPES == ("IMAGE", "FLOAT", "IMAGE", "STRING")
    assert FireRedIdentityEdit.RETURN_TYPES == ("IMAGE", "FLOAT", "STRING")


@pytest.mark.parametrize("overrides, message", [
    (dict(instruction="make the sign say hello"), "put the new text in quotes"),
    (dict(instruction="   "), "instruction is empty"),
    (dict(candidates=0), "candidates must be an integer"),
    (dict(candidates=2.5), "candidates must be an integer"),
    (dict(image=torch.rand(1, 3, 64, 64)), "channels-first"),
    (dict(image=torch.rand(64, 64, 3)), "4 dimensions"),
    (dict(image=torch.rand(2, 64, 64, 3)), "batch of 2"),
    (dict(steps=-1), "steps must be"),
    (dict(keep_unedited="yes"), "keep_unedited must be one of"),
    (dict(size_mode="match Picture 1", width=64), "set width and height to 0"),
    (dict(vae_ref_area=-5), "vae_ref_area"),
])
def test_text_edit_bad_inputs(model, overrides: dict, message: str) -> None:
    args = dict(image=image_tensor(1, 64, 64), instruction='Write "HELLO"', candidates=2, **SETTINGS)
    args.update(overrides)
    with pytest.raises(FireRedNodeError, match=message):
        FireRedTextEdit().edit(model, **args)


@pytest.mark.parametrize("overrides, message", [
    (dict(instruction=""), "instruction is empty"),
    (dict(candidates=-1), "candidates must be an integer"),
    (dict(identity_weight=1.5), "identity_weight must be"),
    (dict(image=torch.rand(1, 64, 64, 2)), "needs 3 channels"),
    (dict(image=torch.rand(3, 64, 64, 3)), "batch of 3"),
    (dict(size_mode="match Picture 1", height=32), "set width and height to 0"),
    (dict(size_mode="picture size"), "size_mode must be one of"),
])
def test_identity_edit_bad_inputs(model, overrides: dict, message: str) -> None:
    args = dict(image=image_tensor(1, 64, 64), instruction="wear a hat", candidates=2, preserve_face=True,
                identity_weight=0.7, **SETTINGS)
    args.update(overrides)
    with pytest.raises(FireRedNodeError, match=message):
        FireRedIdentityEdit().edit(model, **args)


def test_missing_ocr_extra_is_a_node_error(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from firered_core.rewards import ocr_reader

    monkeypatch.setattr(ocr_reader, "_DEFAULT", None)
    monkeypatch.setitem(sys.modules, "rapidocr", None)
    with pytest.raises(FireRedNodeError, match=r"comfyui-firered\[ocr\]"):
        FireRedTextEdit().edit(model, image=image_tensor(1, 64, 64), instruction='Write "HI"', candidates=1,
                               **SETTINGS)


def test_missing_face_extra_is_a_node_error(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from firered_core.rewards import identity

    monkeypatch.setattr(identity, "_DEFAULT", None)
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(FireRedNodeError, match=r"comfyui-firered\[face\]"):
        FireRedIdentityEdit().edit(model, image=image_tensor(1, 64, 64), instruction="wear a hat", candidates=1,
                                   preserve_face=True, identity_weight=0.7, **SETTINGS)


def test_registered_in_the_node_pack() -> None:
    import nodes

    assert nodes.NODE_CLASS_MAPPINGS["FireRedTextEdit"] is FireRedTextEdit
    assert nodes.NODE_CLASS_MAPPINGS["FireRedIdentityEdit"] is FireRedIdentityEdit
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["FireRedTextEdit"] == "FireRed Text Edit (OCR-aware)"


# ---------------------------------------------------------------------------------------------------------------
# FireRed Text Edit
# ---------------------------------------------------------------------------------------------------------------


@needs_ocr
def test_text_edit_runs_on_the_tiny_model(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = pils_to_tensor([card("HELLO")])
    with FakeComfy.installed(monkeypatch, tmp_path) as comfy:
        image, score, overlay, report = FireRedTextEdit().edit(
            model, image=source, instruction='Change "HELLO" to "WORLD"', candidates=3, **SETTINGS)
    assert image.shape == overlay.shape == (1, 32, 32, 3)
    assert isinstance(score, float) and 0.0 <= score <= 1.0
    assert report.startswith("want 'WORLD'; old text found in source line 'HELLO'")
    assert [line[2:10] for line in report.splitlines()[1:]] == ["seed 7: ", "seed 8: ", "seed 9: "]
    assert comfy.progress[-1] == (6, 6)  # 3 candidates x 2 steps on one bar


@needs_ocr
def test_text_edit_keep_unedited_reaches_the_pipeline(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_unedited overrides the model's own setting; a threshold no latent reaches marks nothing as
    edited, so 'kept' means every candidate is the source itself (at the output's 64x32 size)."""
    from firered_core.preserve import PreserveConfig

    source = card("HELLO")
    expected = np.asarray(source.resize((64, 32), Image.Resampling.LANCZOS), np.float32) / 255
    pipeline = model.loaded.pipeline
    pipeline.keep_unedited = PreserveConfig(latent_threshold=1e9)
    outputs = {}
    try:
        with FakeComfy.installed(monkeypatch, tmp_path):
            for choice in ("model default", "off"):
                outputs[choice] = FireRedTextEdit().edit(
                    model, image=pils_to_tensor([source]), instruction='Change "HELLO" to "WORLD"', candidates=1,
                    **{**SETTINGS, "width": 64, "height": 32}, keep_unedited=choice)[0][0].numpy()
    finally:
        pipeline.keep_unedited = None
    assert np.abs(outputs["model default"] - expected).max() <= 1 / 255 + 1e-6
    assert np.abs(outputs["off"] - expected).max() > 0.1


@needs_ocr
def test_text_edit_match_picture_1_keeps_the_sources_size(model, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    source = card("HELLO", size=(200, 100))
    with FakeComfy.installed(monkeypatch, tmp_path):
        image, _, overlay, _ = FireRedTextEdit().edit(
            model, image=pils_to_tensor([source]), instruction='Change "HELLO" to "WORLD"', candidates=1,
            **{**SETTINGS, "width": 0, "height": 0}, size_mode="match Picture 1")
    assert image.shape == overlay.shape == (1, 100, 200, 3)


@needs_ocr
def test_text_edit_returns_the_candidate_with_the_text_in_place(model, monkeypatch: pytest.MonkeyPatch) -> None:
    candidates = [card("PLANE"), card("WORLD", xy=(120, 80)), card("WORLD"), card("WORLD", px=64, xy=(0, 20))]
    asked = serve_candidates(monkeypatch, model, candidates)
    image, score, overlay, report = FireRedTextEdit().edit(
        model, image=pils_to_tensor([card("HELLO")]), instruction="Replace \u201cHELLO\u201d with \u201cWORLD\u201d",
        candidates=4, **SETTINGS)
    assert asked == [7, 8, 9, 10]
    assert np.array_equal(np.asarray(to_pil(image)), np.asarray(candidates[2]))
    assert score > 0.9
    assert "* seed 9" in report and "read 'WORLD'" in report
    assert not torch.equal(overlay, image)  # boxes drawn


# ---------------------------------------------------------------------------------------------------------------
# FireRed Identity Edit
# ---------------------------------------------------------------------------------------------------------------


@needs_face
def test_identity_edit_runs_on_the_tiny_model_with_face_blending(model) -> None:
    source = pils_to_tensor([astronaut()])
    image, similarity, report = FireRedIdentityEdit().edit(
        model, image=source, instruction="give her a red helmet", candidates=2, preserve_face=True,
        identity_weight=0.7, **{**SETTINGS, "width": 64, "height": 64})
    assert image.shape == (1, 64, 64, 3)
    assert isinstance(similarity, float) and 0.0 <= similarity <= 1.0
    assert report.startswith("1 face(s) in the source; face regions kept by latent blending")
    assert len(report.splitlines()) == 3


@needs_face
def test_identity_edit_without_a_face_makes_one_plain_edit(model, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = Image.new("RGB", (96, 96), (120, 160, 200))
    asked = serve_candidates(monkeypatch, model, [plain])
    image, similarity, report = FireRedIdentityEdit().edit(
        model, image=image_tensor(1, 96, 96), instruction="make it blue", candidates=4, preserve_face=True,
        identity_weight=0.7, **SETTINGS)
    assert asked == [7] and similarity == NO_FACE
    assert "no face found in the source" in report
    assert np.array_equal(np.asarray(to_pil(image)), np.asarray(plain))


@needs_face
def test_identity_edit_match_picture_1_keeps_the_sources_size(model) -> None:
    image, _, _ = FireRedIdentityEdit().edit(
        model, image=pils_to_tensor([astronaut(90)]), instruction="give her a red helmet", candidates=1,
        preserve_face=True, identity_weight=0.7, **{**SETTINGS, "width": 0, "height": 0}, size_mode="match Picture 1")
    assert image.shape == (1, 90, 90, 3)


@needs_face
def test_identity_edit_prefers_the_edit_that_keeps_the_person(model, monkeypatch: pytest.MonkeyPatch) -> None:
    from skimage import data

    source = astronaut()
    face_box = (60, 20, 160, 120)  # around her face at 256 px
    other = source.copy()
    lfw = (data.lfw_subset()[1] * 255).astype(np.uint8)
    other.paste(Image.fromarray(lfw).resize((100, 100), Image.Resampling.BICUBIC).convert("RGB"), face_box[:2])
    edited = ImageOps.invert(source)
    edited.paste(source.crop(face_box), face_box[:2])
    swapped = ImageOps.invert(other)
    swapped.paste(other.crop(face_box), face_box[:2])
    candidates = [source, swapped, edited]  # no edit / other person / a real edit keeping her
    serve_candidates(monkeypatch, model, candidates)
    image, similarity, report = FireRedIdentityEdit().edit(
        model, image=pils_to_tensor([source]), instruction="invert the background", candidates=3,
        preserve_face=False, identity_weight=0.7, **SETTINGS)
    assert np.array_equal(np.asarray(to_pil(image)), np.asarray(edited))
    assert similarity > 0.8 and "* seed 9" in report
