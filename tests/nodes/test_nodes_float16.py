"""float16 is not offered (this model family overflows in it: black or NaN images); a workflow saved with it still
loads, in bfloat16, with a warning."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from nodes.common import FireRedNodeError
from nodes.loaders import FireRedModelLoader
from nodes.model_sources import DTYPES, Precision
from tests.node_fixtures import tiny_pipeline


def _velocity(transformer: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """One transformer call whose image-token activations pass float16's largest value (65504), as the released
    model's do: the input projection is scaled up, the norms that follow take the scale out again."""
    model = copy.deepcopy(transformer).to(dtype)
    with torch.no_grad():
        model.img_in.weight.mul_(1e5)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, model.config.in_channels, generator=gen).to(dtype)  # [1, 4x4 tokens, C]
    text = torch.randn(1, 5, model.config.joint_attention_dim, generator=gen).to(dtype)
    with torch.inference_mode():
        return model(x, text, None, torch.tensor([0.5]), [[(1, 4, 4)]]).float()


def test_float16_is_not_offered_and_validation_names_the_choices() -> None:
    assert "float16" not in DTYPES
    assert "float16" not in FireRedModelLoader.INPUT_TYPES()["required"]["weight_dtype"][0]
    assert FireRedModelLoader.VALIDATE_INPUTS("bfloat16") is True
    assert FireRedModelLoader.VALIDATE_INPUTS("float16") is True  # saved workflows keep loading
    assert "float32, bfloat16" in FireRedModelLoader.VALIDATE_INPUTS("float8")
    with pytest.raises(FireRedNodeError, match="weight_dtype: 'float8' is not one of"):
        Precision.parse("float8")


def test_a_saved_float16_loads_in_bfloat16_with_a_warning_and_stays_finite(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        precision = Precision.parse("float16")
    assert precision.dtype == torch.bfloat16 and not precision.fp8
    assert "overflows" in caplog.text and "bfloat16" in caplog.text
    transformer = tiny_pipeline(1).transformer
    assert not torch.isfinite(_velocity(transformer, torch.float16)).all()  # what float16 used to give: NaN
    reference = _velocity(transformer, torch.float32)
    ours = _velocity(transformer, precision.dtype)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, reference, atol=0.1, rtol=0.05)
