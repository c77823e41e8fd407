"""nodes.common: IMAGE tensors <-> PIL, input checks, and the translation of core errors into node errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nodes.common import (FireRedNodeError, node_errors, pils_to_tensor, require_image, require_instruction,
                          tensor_to_pils)
from tests.node_fixtures import image_tensor


def test_round_trip_is_exact_for_8_bit_values() -> None:
    pixels = torch.randint(0, 256, (2, 20, 30, 3)).float() / 255
    pils = tensor_to_pils(pixels)
    assert [p.size for p in pils] == [(30, 20)] * 2 and all(p.mode == "RGB" for p in pils)
    assert torch.equal(pils_to_tensor(pils), pixels)


def test_grey_and_rgba_are_converted() -> None:
    grey = tensor_to_pils(image_tensor(1, 20, 20, channels=1))[0]
    assert grey.mode == "RGB" and np.ptp(np.asarray(grey).astype(int), axis=2).max() == 0
    rgba = torch.zeros(1, 20, 20, 4)  # fully transparent black: composited over white
    assert np.asarray(tensor_to_pils(rgba)[0]).min() == 255


def test_values_outside_unit_range_are_clamped() -> None:
    out = np.asarray(tensor_to_pils(torch.full((1, 16, 16, 3), 1.7))[0])
    assert out.min() == 255


@pytest.mark.parametrize("bad, message", [
    (torch.rand(32, 32, 3), "4 dimensions"),
    (torch.rand(1, 1, 32, 32, 3), "4 dimensions"),
    (torch.rand(1, 32, 32, 2), "2 in shape"),
    (torch.rand(1, 3, 32, 32), "channels-first"),
    (torch.rand(0, 32, 32, 3), "empty"),
    (torch.rand(1, 8, 32, 3), "too small"),
    (torch.full((1, 32, 32, 3), float("nan")), "NaN"),
    (torch.zeros(1, 32, 32, 3, dtype=torch.uint8), "floats"),
    (np.zeros((1, 32, 32, 3)), "tensor"),
    (None, "tensor"),
])
def test_bad_images_are_node_errors_naming_the_input(bad, message: str) -> None:
    with pytest.raises(FireRedNodeError, match=message) as info:
        tensor_to_pils(bad, "image2")
    assert "image2" in str(info.value)


def test_require_image_passes_a_good_one_through() -> None:
    image = image_tensor(1, 16, 16)
    assert require_image(image) is image


def test_pils_to_tensor_refuses_mixed_sizes_and_nothing() -> None:
    with pytest.raises(FireRedNodeError, match="different sizes"):
        pils_to_tensor([Image.new("RGB", (16, 16)), Image.new("RGB", (17, 16))])
    with pytest.raises(FireRedNodeError, match="no images"):
        pils_to_tensor([])


@pytest.mark.parametrize("text", ["", "   \n\t", None, 3])
def test_empty_instruction_is_refused(text) -> None:
    with pytest.raises(FireRedNodeError, match="instruction is empty"):
        require_instruction(text)


def test_instruction_is_stripped() -> None:
    assert require_instruction("  make it blue \n") == "make it blue"


def test_node_errors_translates_input_errors_only() -> None:
    with pytest.raises(FireRedNodeError, match="loading: bad file") as info:
        with node_errors("loading"):
            raise ValueError("bad file")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(FireRedNodeError, match="x: .*missing"):
        with node_errors("x"):
            raise FileNotFoundError("missing")
    with pytest.raises(RuntimeError):  # not an input problem: passes through unchanged
        with node_errors("x"):
            raise RuntimeError("out of memory")
