"""The full-size FireRed transformer on the meta device, and weight storage through ``ops``.

The 'firered-1.0' preset must have exactly the state-dict keys and shapes of diffusers'
QwenImageTransformer2DModel (the released weights use them) and exactly 20,430,401,088 parameters. Built on
``torch.device("meta")`` this allocates nothing. The fp8 test shows "fp8 storage, upcast at compute": Linear
weights stored as float8_e4m3fn, activations in float32, output close to the float32 model's.
"""

from __future__ import annotations

import pytest
import torch

from firered_core.config import get_preset
from firered_core.ops import Linear
from firered_core.transformer import FireRedTransformer

FIRERED_PARAMETERS = 20_430_401_088


@pytest.fixture(scope="module")
def meta_model() -> FireRedTransformer:
    with torch.device("meta"):
        return FireRedTransformer(get_preset("firered-1.0").transformer)


def test_parameter_count(meta_model: FireRedTransformer) -> None:
    assert all(p.is_meta for p in meta_model.parameters())
    assert sum(p.numel() for p in meta_model.parameters()) == FIRERED_PARAMETERS


def test_state_dict_keys_and_shapes_match_diffusers(meta_model: FireRedTransformer) -> None:
    diffusers = pytest.importorskip("diffusers")
    cfg = get_preset("firered-1.0").transformer
    with torch.device("meta"):
        reference = diffusers.QwenImageTransformer2DModel(
            **{k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
        )
    ours = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert sorted(set(ours) - set(theirs)) == [] and sorted(set(theirs) - set(ours)) == []
    assert ours == theirs


def test_meta_build_loads_with_assign() -> None:
    cfg = get_preset("tiny").transformer
    real = FireRedTransformer(cfg)
    with torch.device("meta"):
        model = FireRedTransformer(cfg)
    model.load_state_dict(real.state_dict(), strict=True, assign=True)
    assert not any(p.is_meta for p in model.parameters())


def test_fp8_storage_upcasts_at_compute() -> None:
    cfg = get_preset("tiny").transformer
    model = FireRedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    shapes = [(1, 4, 4), (1, 3, 5)]
    args = dict(
        hidden_states=torch.randn(2, 31, cfg.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(2, 6, cfg.joint_attention_dim, generator=gen),
        encoder_hidden_states_mask=torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
        timestep=torch.tensor([0.2, 0.9]),
        img_shapes=shapes,
    )
    with torch.no_grad():
        full = model(**args)
        linears = [m for m in model.modules() if isinstance(m, Linear)]
        for m in linears:
            m.weight.data = m.weight.data.to(torch.float8_e4m3fn)  # storage only; biases stay fp32
        quant = model(**args)
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    assert quant.dtype == torch.float32 and torch.isfinite(quant).all()
    rel = ((quant - full).norm() / full.norm()).item()
    # e4m3 keeps 3 mantissa bits (~3% rounding per weight): close, but visibly not identical
    print(f"\n[fp8] relative error of fp8-stored weights: {rel:.4f}")
    assert 0 < rel < 0.15, rel
