"""FireRedTransformer against diffusers' QwenImageTransformer2DModel, the reference, at tiny sizes on CPU.

Both models get the same random weights (diffusers' state dict loaded into ours with strict=True, which also
proves the key names), then the same inputs; outputs must agree to 1e-5 in float32. The cases cover what
FireRed's call pattern exercises (references of different sizes, non-square and odd grids, padded text in a
batch) plus the config flags of the wider Qwen-Image family. Run with ``-s`` to see the measured differences.
"""

from __future__ import annotations

import dataclasses
from math import prod

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import QwenImageTransformer2DModel  # noqa: E402
from diffusers.models.transformers.transformer_qwenimage import (  # noqa: E402
    QwenEmbedLayer3DRope,
    QwenEmbedRope,
    QwenTimestepProjEmbeddings,
)

from firered_core.config import ConfigError, TransformerConfig, get_preset  # noqa: E402
from firered_core.embeddings import TimestepEmbedding  # noqa: E402
from firered_core.rope import RotaryTable, _apply_rope_real, apply_rope, build_rotary_table  # noqa: E402
from firered_core.transformer import FireRedTransformer  # noqa: E402

TOL = 1e-5
TINY = get_preset("tiny").transformer


def _reference_kwargs(cfg: TransformerConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}


def _random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights with non-trivial norms and modulations (default inits zero nothing here, but ones in norms)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in model.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        state[name] = 1 + 0.1 * noise if "norm" in name and value.ndim == 1 else 0.15 * noise
    return state


def _pair(cfg: TransformerConfig, seed: int = 0) -> tuple[torch.nn.Module, FireRedTransformer]:
    reference = QwenImageTransformer2DModel(**_reference_kwargs(cfg)).eval()
    ours = FireRedTransformer(cfg).eval()
    state = _random_state(reference, seed)
    reference.load_state_dict(state, strict=True)
    ours.load_state_dict(state, strict=True)
    return reference, ours


def _inputs(cfg: TransformerConfig, shapes: list[tuple[int, int, int]], batch: int = 1, text_len: int = 7,
            valid: list[int] | None = None, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n = sum(prod(s) for s in shapes)
    mask = None
    if valid is not None:
        mask = torch.zeros(batch, text_len, dtype=torch.long)
        for i, v in enumerate(valid):
            mask[i, :v] = 1
    return dict(
        hidden_states=torch.randn(batch, n, cfg.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(batch, text_len, cfg.joint_attention_dim, generator=gen),
        encoder_hidden_states_mask=mask,
        timestep=torch.rand(batch, generator=gen),
        img_shapes=shapes,
    )


def _compare(cfg: TransformerConfig, shapes, n_target: int | None = None, label: str = "", **kw) -> float:
    reference, ours = _pair(cfg)
    args = _inputs(cfg, shapes, **{k: v for k, v in kw.items() if k in ("batch", "text_len", "valid")})
    extra = {k: v for k, v in kw.items() if k == "additional_t_cond"}
    n_target = prod(shapes[0]) if n_target is None else n_target
    with torch.no_grad():
        expected = reference(**{**args, "img_shapes": [shapes] * args["hidden_states"].shape[0]}, **extra,
                             return_dict=False)[0][:, :n_target]
        got = ours(**args, **extra)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    print(f"\n[parity] {label or shapes}: max abs diff {diff:.3e} (output scale {expected.abs().max().item():.2f})")
    assert diff <= TOL, f"{label}: max abs diff {diff} > {TOL}"
    return diff


# ---------------------------------------------------------------------------------------------------------------
# whole model
# ---------------------------------------------------------------------------------------------------------------

def test_text_to_image_no_references() -> None:
    _compare(TINY, [(1, 4, 6)], label="t2i 4x6")


def test_one_reference_non_square() -> None:
    _compare(TINY, [(1, 3, 7), (1, 5, 4)], label="1 ref, target 3x7")


def test_two_references_of_different_sizes_odd_grids() -> None:
    _compare(TINY, [(1, 5, 5), (1, 3, 6), (1, 7, 2)], label="2 refs 3x6 + 7x2")


def test_multi_frame_target() -> None:
    _compare(TINY, [(2, 3, 4), (1, 2, 2)], label="2-frame target")


def test_batch_with_padded_text_mask() -> None:
    _compare(TINY, [(1, 4, 4), (1, 3, 5)], batch=2, text_len=9, valid=[9, 4], label="batch 2, valid 9/4")


def test_all_valid_mask_matches_reference_with_mask() -> None:
    # ours drops an all-ones mask (faster SDPA path); the reference keeps it
    _compare(TINY, [(1, 4, 4), (1, 2, 3)], batch=2, text_len=6, valid=[6, 6], label="all-valid mask")


def test_zero_cond_t() -> None:
    cfg = dataclasses.replace(TINY, zero_cond_t=True)
    _compare(cfg, [(1, 4, 5), (1, 3, 3), (1, 2, 6)], batch=2, valid=[7, 3], label="zero_cond_t, 2 refs")
    _compare(cfg, [(1, 4, 5)], label="zero_cond_t, no refs")


def test_additional_t_cond() -> None:
    cfg = dataclasses.replace(TINY, use_additional_t_cond=True)
    _compare(cfg, [(1, 4, 4), (1, 2, 3)], batch=2, additional_t_cond=torch.tensor([0, 1]),
             label="use_additional_t_cond")


def test_layer3d_rope_crops_to_all_layers() -> None:
    cfg = dataclasses.replace(TINY, use_layer3d_rope=True, use_additional_t_cond=True)
    shapes = [(1, 3, 4), (1, 3, 4), (1, 3, 4), (1, 5, 3)]  # 3 layers, then the condition image
    _compare(cfg, shapes, n_target=36, additional_t_cond=torch.tensor([1]), label="layer3d rope, 3 layers")
    assert FireRedTransformer(cfg, device="meta").target_token_count(shapes) == 36


def test_bf16_follows_reference_rounding() -> None:
    """In bf16 we must track diffusers' bf16 result far closer than bf16 itself tracks float32."""
    cfg = dataclasses.replace(TINY, zero_cond_t=True)
    reference, ours = _pair(cfg)
    args = _inputs(cfg, [(1, 4, 4), (1, 3, 5)], batch=2, valid=[7, 4])
    ref_args = {**args, "img_shapes": [args["img_shapes"]] * 2, "return_dict": False}
    with torch.no_grad():
        ref32 = reference(**ref_args)[0][:, :16]
        reference.to(torch.bfloat16)
        ours.to(torch.bfloat16)
        half = {k: v.bfloat16() if k in ("hidden_states", "encoder_hidden_states") else v for k, v in args.items()}
        ref16 = reference(**{**ref_args, **half, "img_shapes": ref_args["img_shapes"]})[0][:, :16].float()
        got16 = ours(**half)
    assert got16.dtype == torch.bfloat16
    ours_vs_ref = (got16.float() - ref16).abs().max().item()
    bf16_error = (ref16 - ref32).abs().max().item()
    print(f"\n[parity] bf16: ours vs diffusers {ours_vs_ref:.3e}; diffusers bf16 vs fp32 {bf16_error:.3e}")
    assert ours_vs_ref < 0.1 * bf16_error


# ---------------------------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layered", [False, True])
def test_rotary_table_matches_reference_frequencies(layered: bool) -> None:
    shapes = [(1, 5, 8), (1, 3, 3), (1, 6, 1)]
    text_len = 11
    axes = list(TINY.axes_dims_rope)
    if layered:
        vid, txt = QwenEmbedLayer3DRope(10000, axes, scale_rope=True)([shapes], text_len, torch.device("cpu"))
    else:
        vid, txt = QwenEmbedRope(10000, axes, scale_rope=True)([shapes], torch.device("cpu"), max_txt_seq_len=text_len)
    expected = torch.cat([txt, vid], dim=0)
    table = build_rotary_table(shapes, text_len, axes, 10000, layered=layered)
    assert torch.allclose(table.cos, expected.real, atol=1e-6, rtol=0)
    assert torch.allclose(table.sin, expected.imag, atol=1e-6, rtol=0)


def test_real_and_complex_rope_agree() -> None:
    table = build_rotary_table([(1, 3, 4)], 5, (4, 6, 6))
    x = torch.randn(2, 17, 3, 16)
    assert torch.allclose(apply_rope(x, table), _apply_rope_real(x, table), atol=1e-6)
    with pytest.raises(ValueError, match="apply_rope"):
        apply_rope(x[:, :5], RotaryTable(table.cos, table.sin))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_timestep_embedding_matches_reference(dtype: torch.dtype) -> None:
    reference = QwenTimestepProjEmbeddings(32, use_additional_t_cond=True).to(dtype)
    ours = TimestepEmbedding(32, use_additional_t_cond=True, dtype=dtype)
    ours.load_state_dict(reference.state_dict(), strict=True)
    t = torch.tensor([0.0, 0.37, 1.0]).to(dtype)
    flag = torch.tensor([0, 1, 1])
    dummy = torch.zeros(1, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(ours(t, dtype, flag), reference(t, dummy, flag))


# ---------------------------------------------------------------------------------------------------------------
# training and errors
# ---------------------------------------------------------------------------------------------------------------

def test_gradient_checkpointing_same_output_and_grads() -> None:
    cfg = dataclasses.replace(TINY, zero_cond_t=True)
    model = FireRedTransformer(cfg)
    model.load_state_dict(_random_state(model), strict=True)
    args = _inputs(cfg, [(1, 3, 4), (1, 2, 2)], batch=2, valid=[7, 5])

    def run(flag: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = flag
        out = model(**args)
        (out.square().mean()).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out_plain, grads_plain = run(False)
    out_ckpt, grads_ckpt = run(True)
    assert torch.equal(out_plain, out_ckpt)
    # the last block's text-stream outputs do not reach the cropped image output, so some grads stay None
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > len(list(model.parameters())) // 2
    for name, g in grads_plain.items():
        assert torch.allclose(g, grads_ckpt[name], atol=1e-6, rtol=1e-5), name


def test_training_step_after_inference_mode_preview() -> None:
    # cached RoPE tables built under inference_mode must still be usable by autograd afterwards
    model = FireRedTransformer(TINY)
    args = _inputs(TINY, [(1, 3, 4), (1, 2, 2)])
    with torch.inference_mode():
        model(**args)
    model(**args).square().mean().backward()
    assert model.img_in.weight.grad is not None


def test_guidance_embeds_is_refused() -> None:
    with pytest.raises(ConfigError, match="guidance_embeds"):
        FireRedTransformer(dataclasses.replace(TINY, guidance_embeds=True), device="meta")


def test_bad_inputs_name_the_argument() -> None:
    model = FireRedTransformer(TINY)
    args = _inputs(TINY, [(1, 2, 2)])
    with pytest.raises(ValueError, match="img_shapes"):
        model(**{**args, "img_shapes": [(1, 2, 3)]})
    with pytest.raises(ValueError, match="encoder_hidden_states_mask"):
        model(**{**args, "encoder_hidden_states_mask": torch.ones(1, 3)})
    with pytest.raises(ValueError, match="timestep"):
        model(**{**args, "timestep": torch.ones(3)})
    with pytest.raises(ValueError, match="additional_t_cond"):
        FireRedTransformer(dataclasses.replace(TINY, use_additional_t_cond=True))(**args)
