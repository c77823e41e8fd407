"""``lora_disabled``: a trained adapter switched off for a block gives the base output exactly, then comes back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from firered_core import ops
from firered_core.lora import add_trainable_lora, list_loras, lora_disabled, set_strength


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = ops.Linear(6, 8)
        self.second = ops.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def _trained(seed: int = 0) -> tuple[_TwoLayers, torch.Tensor, torch.Tensor]:
    """A model with a LoRA "train" whose up factors are no longer zero, and the base output for an input."""
    torch.manual_seed(seed)
    model = _TwoLayers()
    x = torch.randn(3, 6)
    base = model(x).detach()
    params = add_trainable_lora(model, rank=2, target_modules=["first", "second"])
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))  # a zero up factor would make "disabled" trivially equal
    return model, x, base


def test_disabled_lora_gives_the_base_output_exactly_and_is_restored() -> None:
    model, x, base = _trained()
    adapted = model(x).detach()
    assert not torch.allclose(adapted, base, atol=1e-3)
    with lora_disabled(model, "train") as n:
        assert n == 2
        assert torch.equal(model(x), base)
    assert list_loras(model) == {"train": 1.0}
    assert torch.equal(model(x), adapted)


def test_strengths_are_restored_after_an_error_and_all_loras_by_default() -> None:
    model, x, base = _trained(1)
    set_strength(model, "train", 0.7)
    with pytest.raises(RuntimeError, match="inside"):
        with lora_disabled(model):
            assert torch.equal(model(x), base)
            raise RuntimeError("inside")
    assert list_loras(model) == {"train": 0.7}


def test_disabling_a_lora_that_is_not_there_names_it() -> None:
    model, _, _ = _trained()
    with pytest.raises(KeyError, match="'other'"):
        with lora_disabled(model, "other"):
            pass
    with pytest.raises(KeyError, match="is applied to disable"):
        with lora_disabled(_TwoLayers()):
            pass
