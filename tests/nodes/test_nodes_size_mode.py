"""The size-mode and reference-area widgets of FireRed Edit and Multi-Image Edit: appended after every older widget
(saved workflows keep loading by position), reaching the pipeline, and refused before the model is prepared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nodes.common import FireRedNodeError
from nodes.edit import FireRedEdit
from nodes.multi_image import FireRedMultiImage
from tests.node_fixtures import image_tensor, tiny_model
from tests.workflow_convert import node_inputs

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(negative_prompt=" ", steps=2, true_cfg_scale=4.0, seed=5, width=0, height=0)
NEW = ["size_mode", "vae_ref_area", "cond_ref_area"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _object_info(cls: type) -> dict:
    """What /object_info says about a node class: its inputs and their order."""
    types = cls.INPUT_TYPES()
    return {"input": types, "input_order": {k: list(v) for k, v in types.items()}}


@pytest.mark.parametrize("cls, workflow, kept", [
    (FireRedEdit, "basic_edit.json", {"keep_unedited": "model default", "sampler": "model default", "seed": 0}),
    (FireRedMultiImage, "multi_image_edit.json", {"max_composites": 3, "vlm_endpoint": "",
                                                  "sampler": "model default"}),
])
def test_saved_workflows_keep_loading_by_position(cls: type, workflow: str, kept: dict) -> None:
    """The new widgets come last, so a workflow saved before them gives every older widget its saved value and
    the new ones their defaults (the front end's rule, followed by tests/workflow_convert.py)."""
    info = _object_info(cls)
    assert list(info["input"]["optional"])[-3:] == NEW
    saved = next(n for n in json.loads((ROOT / "workflows" / workflow).read_text())["nodes"]
                 if n["type"] == cls.__name__)
    inputs = node_inputs({**saved, "inputs": []}, info, {})
    assert {k: inputs[k] for k in kept} == kept
    assert [inputs[k] for k in NEW] == ["model area", 0, 0]
    assert inputs["instruction"] == saved["widgets_values"][0]


def test_match_gives_picture_1s_size_for_every_edit_of_a_batch(model) -> None:
    images, latent = FireRedEdit().edit(model, "make it blue", **SETTINGS, image1=image_tensor(2, 41, 57),
                                        image2=image_tensor(1, 32, 64), size_mode="match Picture 1")
    assert images.shape == (2, 41, 57, 3)
    assert latent["samples"].shape == (2, 4, 1, 48 // 4, 64 // 4)  # the padded canvas, 8-px tokens
    default, _ = FireRedEdit().edit(model, "make it blue", **SETTINGS, image1=image_tensor(2, 41, 57),
                                    image2=image_tensor(1, 32, 64))
    assert default.shape[1:3] != (41, 57)


def test_the_defaults_are_bit_identical_and_the_vae_area_reaches_the_pipeline(model) -> None:
    picture = image_tensor(1, 40, 56)
    before, _ = FireRedEdit().edit(model, "make it blue", **SETTINGS, image1=picture)
    same, _ = FireRedEdit().edit(model, "make it blue", **SETTINGS, image1=picture, size_mode="model area",
                                 vae_ref_area=0, cond_ref_area=0)
    smaller, _ = FireRedEdit().edit(model, "make it blue", **SETTINGS, image1=picture, vae_ref_area=32 * 32)
    assert torch.equal(before, same) and not torch.equal(before, smaller)


@pytest.mark.parametrize("inputs, message", [
    ({"size_mode": "fit"}, "size_mode must be one of model area, match Picture 1"),
    ({"size_mode": "match Picture 1", "width": 64}, "takes the output size from Picture 1: set width and height"),
    ({"vae_ref_area": 100}, r"vae_ref_area must be an integer number of pixels from 1024 .*\(0 = the model's own\)"),
    ({"cond_ref_area": -1}, r"cond_ref_area must be an integer in \[0, 67108864\]"),
    ({"cond_ref_area": 4096}, "the condition encoder StubEncoder has no setting for the area"),
])
def test_bad_settings_are_refused_before_the_model_is_prepared(model, monkeypatch, inputs: dict,
                                                               message: str) -> None:
    monkeypatch.setattr(type(model), "prepare", lambda self: pytest.fail("the model was prepared"))
    for cls, extra in ((FireRedEdit, {}), (FireRedMultiImage, {"max_composites": 3})):
        with pytest.raises(FireRedNodeError, match=message):
            cls().edit(model, "make it blue", **{**SETTINGS, **inputs}, image1=image_tensor(1, 32, 32), **extra)


def test_multi_image_match_follows_picture_1_and_needs_it_whole(model) -> None:
    node = FireRedMultiImage()
    image, _, _, _ = node.edit(model, "put Picture 2 in Picture 1", image_tensor(1, 41, 57), **SETTINGS,
                               max_composites=3, size_mode="match Picture 1", image2=image_tensor(1, 30, 30))
    assert image.shape == (1, 41, 57, 3)
    with pytest.raises(FireRedNodeError, match="picture 1 was stitched with others .* use 2 or 3"):
        node.edit(model, "put Picture 2 in Picture 1", image_tensor(1, 41, 57), **SETTINGS, max_composites=1,
                  size_mode="match Picture 1", image2=image_tensor(1, 30, 30))
