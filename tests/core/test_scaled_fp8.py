"""Scaled-fp8 transformer files: kept fp8 in memory with ``fp8=True``, equal to the dequantised path, clear errors.

Files are written here from a tiny random transformer in ComfyUI's two scaled-fp8 layouts
(``tests/scaled_fp8_fixtures.py``): the older ``scale_weight`` + ``scaled_fp8`` marker under
``model.diffusion_model.``, and the newer bare ``weight_scale`` / ``input_scale`` / ``comfy_quant`` + metadata.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from firered_core.config import get_preset
from firered_core.loading import WeightFileError, load_transformer_file, save_comfy_transformer
from firered_core.loading.scaled_fp8 import ScaledFP8
from firered_core.lora import LoRAError, add_trainable_lora, apply_lora, lora_state_dict, merge_lora
from firered_core.transformer import FireRedTransformer
from tests.scaled_fp8_fixtures import dequantised, quant_json, scaled_fp8_state

TINY = get_preset("tiny")
SHAPES = [(1, 4, 4), (1, 2, 2)]  # target 4x4 tokens + one 2x2 reference
LAYER = "transformer_blocks.0.attn.to_q"


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def transformer() -> FireRedTransformer:
    return _randomise(FireRedTransformer(TINY.transformer), 1)


def _linear_weights(model: torch.nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _run(model: FireRedTransformer, dtype: torch.dtype) -> torch.Tensor:
    cfg = model.config
    gen = torch.Generator().manual_seed(3)
    n = sum(f * h * w for f, h, w in SHAPES)
    with torch.no_grad():
        return model(hidden_states=torch.randn(2, n, cfg.in_channels, generator=gen).to(dtype),
                     encoder_hidden_states=torch.randn(2, 5, cfg.joint_attention_dim, generator=gen).to(dtype),
                     encoder_hidden_states_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
                     timestep=torch.tensor([0.3, 0.8]), img_shapes=SHAPES)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def _scaled_file(tmp_path: Path, model: FireRedTransformer, **kwargs) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors, metadata = scaled_fp8_state(model.state_dict(), _linear_weights(model), **kwargs)
    return _write(tmp_path / "scaled.safetensors", tensors, metadata), tensors


# ---------------------------------------------------------------------------------------------------------------
# kept as stored, same results
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, prefix, per_row", [("older", "model.diffusion_model.", False),
                                                      ("newer", "", False), ("newer", "", True)],
                         ids=["older-prefixed", "newer", "newer-per-row"])
def test_scaled_file_stays_fp8_and_equals_the_dequantised_path(tmp_path: Path, transformer, layout: str,
                                                               prefix: str, per_row: bool) -> None:
    path, tensors = _scaled_file(tmp_path, transformer, layout=layout, prefix=prefix, per_row=per_row)
    for dtype in (torch.float32, torch.bfloat16):
        kept = load_transformer_file(path, dtype=dtype, fp8=True)
        expanded = load_transformer_file(path, dtype=dtype, fp8=False)
        linear = set(_linear_weights(kept))
        for name, p in kept.named_parameters():
            assert p.dtype == (torch.float8_e4m3fn if name in linear else dtype), name
        for name in linear:
            layer = kept.get_submodule(name[: -len(".weight")])
            assert isinstance(layer.weight_format, ScaledFP8), name
            # the file's own bytes, not a second rounding of the dequantised values
            assert torch.equal(layer.weight.view(torch.uint8), tensors[prefix + name].view(torch.uint8)), name
            assert torch.equal(layer.weight_format.dequantize(layer.weight, torch.float32),
                               dequantised(tensors, prefix + name)), name
        assert not any(getattr(m, "weight_format", None) for m in expanded.modules())
        assert torch.equal(_run(kept, dtype), _run(expanded, dtype)), dtype


def test_kept_fp8_is_closer_to_the_file_than_re_rounding(tmp_path: Path, transformer) -> None:
    # the old behaviour (dequantise, then round again to unscaled fp8) loses what the scale preserved
    path, tensors = _scaled_file(tmp_path, transformer, layout="older")
    kept = load_transformer_file(path, fp8=True)
    name = f"{LAYER}.weight"
    truth = dequantised(tensors, name)
    layer = kept.get_submodule(LAYER)
    rerounded = truth.to(torch.float8_e4m3fn).float()
    assert torch.equal(layer.weight_format.dequantize(layer.weight, torch.float32), truth)
    assert (rerounded - truth).abs().max() > 0  # small tiny-model weights sit in fp8's coarse subnormal range


def test_the_scale_follows_the_weight_to_each_device() -> None:
    raw = torch.randn(4, 3).to(torch.float8_e4m3fn)
    fmt = ScaledFP8(torch.tensor([0.5, 1.0, 2.0, 4.0]).reshape(4, 1), tuple(raw.shape))
    assert torch.equal(fmt.dequantize(raw, torch.float16), (raw.float() * fmt.scale).half())
    on_meta = fmt.dequantize(raw.to("meta"), torch.bfloat16)  # a second device, as a GPU would be
    assert on_meta.device.type == "meta" and on_meta.dtype == torch.bfloat16 and on_meta.shape == (4, 3)
    assert fmt.scale.device.type == "cpu"  # the original stays; each device gets its own copy once


def test_parameters_take_half_the_bytes_of_bf16(tmp_path: Path, transformer) -> None:
    path, _ = _scaled_file(tmp_path, transformer, layout="older")
    kept = load_transformer_file(path, dtype=torch.bfloat16, fp8=True)
    expanded = load_transformer_file(path, dtype=torch.bfloat16)
    linear = set(_linear_weights(kept))

    def nbytes(model: torch.nn.Module, names: set[str] | None = None) -> int:
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if names is None or n in names)

    assert nbytes(kept, linear) * 2 == nbytes(expanded, linear)
    assert nbytes(kept) < 0.6 * nbytes(expanded)


def test_lora_runs_unmerged_on_scaled_weights_and_refuses_to_merge(tmp_path: Path, transformer) -> None:
    trained = FireRedTransformer(TINY.transformer)
    add_trainable_lora(trained, rank=4)
    _randomise(trained, 3)
    lora = tmp_path / "lora.safetensors"
    save_file(lora_state_dict(trained, "train", "comfyui"), str(lora))
    path, _ = _scaled_file(tmp_path, transformer, layout="newer")
    kept, expanded = load_transformer_file(path, fp8=True), load_transformer_file(path)
    assert apply_lora(kept, lora).applied == apply_lora(expanded, lora).applied > 0
    assert torch.equal(_run(kept, torch.float32), _run(expanded, torch.float32))
    with pytest.raises(LoRAError, match=r"cannot merge into layer '[\w.]+': its weight is stored quantised"):
        merge_lora(kept)


def test_saving_a_model_held_scaled_is_refused(tmp_path: Path, transformer) -> None:
    path, _ = _scaled_file(tmp_path, transformer)
    kept = load_transformer_file(path, fp8=True)
    with pytest.raises(WeightFileError, match=r"held in a quantised format .*without fp8 storage"):
        save_comfy_transformer(kept, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------
# clear errors, each naming the tensor
# ---------------------------------------------------------------------------------------------------------------


def _broken(tmp_path: Path, transformer, edit, layout: str = "newer") -> Path:
    tensors, metadata = scaled_fp8_state(transformer.state_dict(), _linear_weights(transformer), layout=layout)
    edit(tensors, metadata)
    return _write(tmp_path / "broken.safetensors", tensors, metadata)


def _drop_scale(tensors: dict, metadata: dict, keep: tuple[str, ...]) -> None:
    del tensors[f"{LAYER}.weight_scale"]
    for suffix in (".input_scale", ".comfy_quant"):
        if suffix not in keep:
            del tensors[LAYER + suffix]
    if "metadata" not in keep:
        metadata.clear()


@pytest.mark.parametrize("keep", [(".comfy_quant",), (".input_scale",), ("metadata",)])
def test_missing_scale_names_the_weight(tmp_path: Path, transformer, keep: tuple[str, ...]) -> None:
    path = _broken(tmp_path, transformer, lambda t, m: _drop_scale(t, m, keep))
    for fp8 in (False, True):
        with pytest.raises(WeightFileError, match=rf"'{LAYER}\.weight' is declared scaled fp8 .* has no scale"):
            load_transformer_file(path, fp8=fp8)


@pytest.mark.parametrize("shape", [(3,), (32, 2), (2, 16)])
def test_misshaped_scale_names_the_scale_and_both_shapes(tmp_path: Path, transformer, shape) -> None:
    def edit(tensors: dict, metadata: dict) -> None:
        tensors[f"{LAYER}.scale_weight"] = torch.ones(shape)

    path = _broken(tmp_path, transformer, edit, layout="older")
    with pytest.raises(WeightFileError, match=rf"scale '{LAYER}\.scale_weight' has shape \[[\d, ]+\], which fits "
                                              r"neither .* the weight \[32, 32\]"):
        load_transformer_file(path, fp8=True)


def test_scale_without_weight_is_named(tmp_path: Path, transformer) -> None:
    path = _broken(tmp_path, transformer, lambda t, m: t.update({"extra.proj.weight_scale": torch.tensor(1.0)}))
    with pytest.raises(WeightFileError, match=r"scale 'extra\.proj\.weight_scale' has no weight 'extra\.proj\.weight'"):
        load_transformer_file(path)


def test_non_finite_and_integer_scales_are_named(tmp_path: Path, transformer) -> None:
    nan = _broken(tmp_path, transformer, lambda t, m: t.update({f"{LAYER}.weight_scale": torch.tensor(float("nan"))}))
    for fp8 in (False, True):
        with pytest.raises(WeightFileError, match=rf"scale '{LAYER}\.weight_scale' of '{LAYER}\.weight' is not finite"):
            load_transformer_file(nan, fp8=fp8)
    ints = _broken(tmp_path, transformer, lambda t, m: t.update({f"{LAYER}.weight_scale": torch.tensor(2)}))
    with pytest.raises(WeightFileError, match=rf"scale '{LAYER}\.weight_scale' .* is torch\.int64"):
        load_transformer_file(ints)


def test_other_quantisations_are_refused_by_layer(tmp_path: Path, transformer) -> None:
    per_layer = _broken(tmp_path, transformer, lambda t, m: t.update({f"{LAYER}.comfy_quant": quant_json("nvfp4")}))
    with pytest.raises(WeightFileError, match=rf"layer '{LAYER}' is quantised as 'nvfp4'"):
        load_transformer_file(per_layer)

    def metadata_int4(tensors: dict, metadata: dict) -> None:
        metadata["_quantization_metadata"] = metadata["_quantization_metadata"].replace(
            f'"{LAYER}": {{"format": "float8_e4m3fn"}}', f'"{LAYER}": {{"format": "int4"}}')

    in_metadata = _broken(tmp_path, transformer, metadata_int4)
    with pytest.raises(WeightFileError, match=rf"layer '{LAYER}' is quantised as 'int4' \(_quantization_metadata"):
        load_transformer_file(in_metadata)
