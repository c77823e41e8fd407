"""FireRed Multi-Image Edit: grouping, region-of-interest crops, stitching, reference rewriting, the VLM hook."""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from nodes.common import FireRedNodeError, pils_to_tensor
from nodes.composite import Placement, group_pictures, make_composites, roi_box, stitch
from nodes.multi_image import FireRedMultiImage
from nodes.reference_rewrite import rewrite_for_composites
from nodes.vlm_endpoints import endpoint_url
from nodes.vlm_hook import parse_boxes
from tests.chat_server import ChatServer, chat_answer
from tests.node_fixtures import tiny_model

SETTINGS = dict(negative_prompt=" ", steps=2, true_cfg_scale=4.0, seed=0, width=32, height=32, max_composites=3)


def _object_on_white(size: tuple[int, int], box: tuple[int, int, int, int], colour=(200, 30, 30)) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(img).ellipse(box, fill=colour)
    return img


# ---------------------------------------------------------------------------------------------------------------
# The heuristic
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, k, groups", [
    (3, 3, [[1], [2], [3]]),
    (4, 3, [[1], [2, 3], [4]]),
    (5, 3, [[1], [2, 3], [4, 5]]),
    (8, 3, [[1], [2, 3, 4, 5], [6, 7, 8]]),
    (5, 2, [[1], [2, 3, 4, 5]]),
    (4, 1, [[1, 2, 3, 4]]),
    (1, 3, [[1]]),
])
def test_grouping(n: int, k: int, groups: list) -> None:
    assert group_pictures(n, k) == groups


def test_roi_finds_the_object_with_a_margin() -> None:
    left, top, right, bottom = roi_box(_object_on_white((200, 100), (120, 30, 160, 70)))
    assert 110 <= left <= 120 and 20 <= top <= 30 and 160 <= right <= 170 and 70 <= bottom <= 80


def test_roi_keeps_plain_and_busy_pictures_whole() -> None:
    assert roi_box(Image.new("RGB", (64, 48), (10, 200, 10))) == (0, 0, 64, 48)
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert roi_box(Image.fromarray(noise)) == (0, 0, 64, 48)


def test_roi_of_a_tiny_object_is_at_least_16_px() -> None:
    left, top, right, bottom = roi_box(_object_on_white((100, 100), (50, 50, 52, 52)))
    assert right - left >= 16 and bottom - top >= 16


def test_stitch_picks_the_squarer_layout() -> None:
    tall = [Image.new("RGB", (20, 60)) for _ in range(3)]
    row, direction = stitch(tall)
    assert direction == "row" and row.height == 60 and row.width == 3 * 20 + 2 * 8
    wide = [Image.new("RGB", (60, 20)) for _ in range(3)]
    assert stitch(wide)[1] == "column"


def test_composites_are_deterministic_and_keep_picture_one_whole() -> None:
    pictures = [_object_on_white((96, 64), (10 + 10 * i, 10, 40 + 10 * i, 40)) for i in range(5)]
    plan = make_composites(pictures, 3)
    again = make_composites(pictures, 3)
    assert len(plan.images) == 3 and plan.images[0] is pictures[0]
    assert [np.asarray(a).tobytes() for a in plan.images] == [np.asarray(b).tobytes() for b in again.images]
    assert plan.placements[1] == Placement(1, 1, 1, 1, "row")
    assert (plan.placements[3].composite, plan.placements[3].slot, plan.placements[3].count) == (2, 2, 2)
    assert set(plan.boxes) == {2, 3, 4, 5}


def test_given_boxes_replace_the_heuristic() -> None:
    pictures = [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(4)]
    plan = make_composites(pictures, 3, boxes={2: (0, 0, 32, 32)})
    assert plan.boxes[2] == (0, 0, 32, 32) and plan.boxes[3] == (0, 0, 64, 64)


# ---------------------------------------------------------------------------------------------------------------
# Rewriting references
# ---------------------------------------------------------------------------------------------------------------

PLACED = {1: Placement(1, 1, 1, 1, "row"), 2: Placement(2, 2, 1, 2, "row"), 3: Placement(3, 2, 2, 2, "row"),
          4: Placement(4, 3, 1, 1, "row")}


@pytest.mark.parametrize("text, expected", [
    ("Put the hat from Picture 3 on the man in Picture 1",
     "Put the hat from the right part of Picture 2 on the man in Picture 1"),
    ("Use the fourth image as background", "Use the third image as background"),
    ("Take the second image's colours", "Take the left part of Picture 2's colours"),
    ("把图3中的帽子戴到图1的人头上，背景用图四", "把图2的右侧部分中的帽子戴到图1的人头上，背景用图三"),
    ("Picture 9 is not given; picture 2 is", "Picture 9 is not given; the left part of Picture 2 is"),
    ("Picture 3 goes left. Picture 2 too", "The right part of Picture 2 goes left. The left part of Picture 2 too"),
    ("no references at all", "no references at all"),
])
def test_rewrite(text: str, expected: str) -> None:
    assert rewrite_for_composites(text, PLACED) == expected


def test_rewrite_columns_and_long_groups() -> None:
    placed = {5: Placement(5, 2, 2, 3, "column"), 6: Placement(6, 3, 4, 4, "row")}
    assert rewrite_for_composites("Picture 5 and 图6", placed) == \
        "The middle part of Picture 2 and 图3中从左数第4张"
    assert rewrite_for_composites("Use Picture 6", placed) == "Use the 4th image from the left in Picture 3"


# ---------------------------------------------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _objects(n: int) -> torch.Tensor:
    return pils_to_tensor([_object_on_white((64, 48), (8 + 6 * i, 8, 30 + 6 * i, 30), (40 * i, 90, 200))
                           for i in range(n)])


def test_five_pictures_become_three_composites(model) -> None:
    encoder = model.loaded.pipeline.encoder
    encoder.calls.clear()
    image, latent, instruction, composites = FireRedMultiImage().edit(
        model, "Put the cup from Picture 5 next to the vase in Picture 1", image1=_objects(1),
        image2=_objects(4), **SETTINGS)
    assert image.shape == (1, 32, 32, 3) and latent["samples"].shape == (1, 4, 1, 8, 8)
    assert instruction == "Put the cup from the right part of Picture 3 next to the vase in Picture 1"
    assert composites.shape[0] == 3
    assert encoder.calls[0] == (instruction, 3)


def test_three_pictures_pass_through_unchanged(model) -> None:
    text = "Swap Picture 1 and Picture 3"
    _, _, instruction, composites = FireRedMultiImage().edit(model, text, image1=_objects(3), **SETTINGS)
    assert instruction == text and torch.equal(composites, _objects(3))


def test_automatic_size_follows_picture_one(model) -> None:
    wide = pils_to_tensor([Image.new("RGB", (128, 32), (250, 250, 250))])
    image, *_ = FireRedMultiImage().edit(model, "make Picture 1 red", image1=wide, image2=_objects(4),
                                         **{**SETTINGS, "width": 0, "height": 0})
    assert image.shape[2] > 2 * image.shape[1]


@pytest.mark.parametrize("inputs, message", [
    ({"image1": None}, "image1 is required"),
    ({"image1": torch.rand(48, 64, 3)}, "image1"),
    ({"image1": torch.rand(1, 48, 64, 3), "image4": torch.rand(1, 48, 64, 2)}, "image4"),
    ({"image1": torch.rand(1, 48, 64, 3), "image9": torch.rand(1, 48, 64, 3)}, "unknown inputs: image9"),
    ({"image1": torch.rand(1, 48, 64, 3), "max_composites": 4}, "max_composites"),
    ({"image1": torch.rand(1, 48, 64, 3), "instruction": ""}, "instruction is empty"),
])
def test_bad_inputs_are_node_errors(model, inputs: dict, message: str) -> None:
    args = {"instruction": "edit Picture 1", **SETTINGS, **inputs}
    with pytest.raises(FireRedNodeError, match=message):
        FireRedMultiImage().edit(model, **args)


# ---------------------------------------------------------------------------------------------------------------
# The VLM hook, against a local OpenAI-compatible stand-in on the loopback interface
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def vlm() -> Iterator[ChatServer]:
    with ChatServer() as server:
        yield server


def test_vlm_boxes_drive_the_crops(model, vlm: ChatServer) -> None:
    boxes = [None, [0, 0, 0.5, 0.5], None, [0.25, 0.25, 1, 1], None]
    vlm.reply = chat_answer("```json\n" + json.dumps({"boxes": boxes}) + "\n```")
    outputs = FireRedMultiImage().edit(model, "Picture 4 on Picture 1", image1=_objects(5), vlm_endpoint=vlm.url,
                                       vlm_model="tiny-vlm", **SETTINGS)
    (path, _, body), = vlm.requests
    assert path == "/v1/chat/completions" and body["model"] == "tiny-vlm"
    content = body["messages"][0]["content"]
    assert "Picture 4 on Picture 1" in content[0]["text"]
    assert [c["type"] for c in content[1:]] == ["image_url"] * 5
    assert outputs[2].startswith("The ") and outputs[2].endswith(" part of Picture 3 on Picture 1")
    heuristic = FireRedMultiImage().edit(model, "Picture 4 on Picture 1", image1=_objects(5), **SETTINGS)
    assert not torch.equal(outputs[3], heuristic[3])  # the VLM's boxes, not the heuristic's, made the crops


@pytest.mark.parametrize("reply, message", [
    (chat_answer("I cannot help with that"), "expected JSON"),
    (chat_answer(json.dumps({"boxes": [None, None]})), "5 entries"),
    (chat_answer(json.dumps({"boxes": [None, [0.5, 0, 0.2, 1], None, None, None]})), "box 2"),
    ((200, {"error": "no choices"}), "not a chat completion"),
    ((500, {"error": "boom"}), "HTTP 500"),
    ((200, b"<html>"), "did not answer with JSON"),
])
def test_vlm_failures_are_node_errors(model, vlm: ChatServer, reply, message: str) -> None:
    vlm.reply = reply
    with pytest.raises(FireRedNodeError, match=message):
        FireRedMultiImage().edit(model, "Picture 4 on Picture 1", image1=_objects(5), vlm_endpoint=vlm.url,
                                 **SETTINGS)


def test_vlm_unreachable_and_bad_urls() -> None:
    with pytest.raises(FireRedNodeError, match="could not be reached"):
        from nodes.vlm_endpoints import EndpointPolicy
        from nodes.vlm_hook import ask_boxes

        ask_boxes(EndpointPolicy().resolve("http://127.0.0.1:9/v1"), "", "x", [Image.new("RGB", (16, 16))])
    for bad in ("ftp://host/v1", "localhost:8000", "file:///etc/passwd"):
        with pytest.raises(FireRedNodeError, match="http"):
            endpoint_url(bad, "vlm_endpoint")
    assert endpoint_url("http://h:1/v1/chat/completions/", "vlm_endpoint") == "http://h:1/v1/chat/completions"


def test_vlm_is_not_asked_when_no_stitching_is_needed(model, vlm: ChatServer) -> None:
    vlm.reply = (500, {})
    FireRedMultiImage().edit(model, "Picture 1", image1=_objects(2), vlm_endpoint=vlm.url, **SETTINGS)
    assert vlm.requests == []


def test_parse_boxes_scales_fractions_to_pixels() -> None:
    pictures = [Image.new("RGB", (200, 100)), Image.new("RGB", (50, 50))]
    assert parse_boxes('{"boxes": [[0.1, 0.2, 0.5, 1.0], null]}', pictures) == {1: (20, 20, 100, 100)}
