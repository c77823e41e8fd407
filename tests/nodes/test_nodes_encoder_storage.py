"""The FireRed Model Loader's ``encoder_storage`` input, in the stand-in ComfyUI model tree of test_nodes_loaders.

The input is the node's last (optional) one, so a workflow saved before it existed keeps every widget value in
place and gets the default ("default": an fp8 text-encoder file stays fp8, any other follows weight_dtype).
"""

from __future__ import annotations

import pytest
import torch

from nodes.common import FireRedNodeError
from nodes.edit import FireRedEdit
from nodes.loaders import FireRedModelLoader
from nodes.model_sources import DEFAULT_CHOICE, FROM_MODEL
from tests.node_fixtures import image_tensor
from tests.nodes.test_nodes_loaders import SINGLE, comfy, tree  # noqa: F401  (the model tree and its ComfyUI stand-in)

FP8 = torch.float8_e4m3fn


def _encoder_weight(model) -> torch.Tensor:
    return model.loaded.pipeline.encoder.model.language_model.layers[0].mlp.up_proj.weight


def test_encoder_storage_is_the_last_input_and_optional() -> None:
    spec = FireRedModelLoader.INPUT_TYPES()
    assert list(spec["required"]) == ["model", "text_encoder", "vae", "weight_dtype"]  # positions of saved values
    assert list(spec["optional"]) == ["encoder_storage"]
    choices, options = spec["optional"]["encoder_storage"]
    assert choices == ["default", "fp8", "weight_dtype"] and options["default"] == "default"


def test_fp8_encoder_from_a_file_and_from_a_folder(comfy) -> None:  # noqa: F811
    (files,) = FireRedModelLoader().load(SINGLE[0], SINGLE[1], SINGLE[2], "float32", "fp8")
    assert _encoder_weight(files).dtype == FP8
    assert files.loaded.pipeline.transformer.img_in.weight.dtype == torch.float32  # the transformer is not fp8
    (folder,) = FireRedModelLoader().load("diffusers/tiny", FROM_MODEL, FROM_MODEL, "float32", "fp8")
    assert _encoder_weight(folder).dtype == FP8
    folder.loaded.pipeline.reference_area = 64 * 64
    image, _ = FireRedEdit().edit(folder, "make it blue", " ", 2, 4.0, 0, 32, 32, image1=image_tensor(1, 32, 32))
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(image).all()


def test_default_and_weight_dtype_keep_a_full_precision_file_as_it_is(comfy) -> None:  # noqa: F811
    (default,) = FireRedModelLoader().load(SINGLE[0], SINGLE[1], SINGLE[2], "float32")
    assert _encoder_weight(default).dtype == torch.float32
    (forced,) = FireRedModelLoader().load(SINGLE[0], SINGLE[1], SINGLE[2], "bfloat16", "weight_dtype")
    assert _encoder_weight(forced).dtype == torch.bfloat16


def test_bad_choice_and_the_embedded_default_are_refused(comfy) -> None:  # noqa: F811
    with pytest.raises(FireRedNodeError, match=r"encoder_storage: 'int4' is not one of default, fp8, weight_dtype"):
        FireRedModelLoader().load(SINGLE[0], SINGLE[1], SINGLE[2], "float32", "int4")
    with pytest.raises(FireRedNodeError, match="fp8 storage is for the large models"):
        FireRedModelLoader().load(DEFAULT_CHOICE, FROM_MODEL, FROM_MODEL, "default", "fp8")
