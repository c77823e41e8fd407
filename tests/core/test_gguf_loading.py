"""GGUF transformer files (ComfyUI-GGUF's layout) through ``firered_core.loading``: loaded quantised, computing
what gguf-py's dequantised weights compute, refused clearly when broken, with LoRA and saving rules.

Files are written by the test from a tiny random transformer (``tests/gguf_fixtures.py``: gguf-py's writer and
quantiser, the converter's type choices). The reference for "the same model" is the float model holding gguf-py's
own dequantisation of every tensor: in float32 ours must equal it exactly. diffusers' GGUF loader is the second,
independent reference (its own reader and dequantiser); see its section for why it is checked in two steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from firered_core.loading import (WeightFileError, load_components, load_gguf_transformer, load_transformer_file,
                                  open_gguf, read_header, save_comfy_transformer, save_diffusers_folder)
from firered_core.lora import LoRAError, add_trainable_lora, apply_lora, lora_state_dict, merge_lora
from firered_core.quant import GGMLFormat, quantised_parameters
from firered_core.transformer import FireRedTransformer
from tests.node_fixtures import TINY, randomise

gguf = pytest.importorskip("gguf")
from tests.gguf_fixtures import (encode, gguf_dequantised_state, tensor_type, write_gguf,  # noqa: E402
                                 write_transformer_gguf)

TOL = 1e-4  # tests/core/test_transformer_parity.py: ours vs diffusers in float32


@pytest.fixture(scope="module")
def float_model() -> FireRedTransformer:
    return randomise(FireRedTransformer(TINY.transformer), seed=2).eval()


@pytest.fixture(scope="module")
def q8_file(float_model: FireRedTransformer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_transformer_gguf(float_model.state_dict(), tmp_path_factory.mktemp("gguf") / "tiny-Q8_0.gguf")


def _inputs(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 12 + 6, TINY.transformer.in_channels, generator=gen),
                encoder_hidden_states=torch.randn(1, 5, TINY.transformer.joint_attention_dim, generator=gen),
                encoder_hidden_states_mask=None, timestep=torch.tensor([0.4]), img_shapes=[(1, 3, 4), (1, 2, 3)])


def _run(model: torch.nn.Module, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**{**_inputs(), **kw})


def _reference(path: Path) -> FireRedTransformer:
    """The float model holding gguf-py's dequantisation of every tensor of ``path``."""
    model = FireRedTransformer(TINY.transformer).eval()
    model.load_state_dict(gguf_dequantised_state(path), strict=True)
    return model


def _one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(WeightFileError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def test_weights_stay_quantised_and_compute_like_gguf_py(q8_file: Path) -> None:
    model = load_gguf_transformer(q8_file)
    to_q = model.transformer_blocks[0].attn.to_q
    assert to_q.weight.dtype == torch.uint8 and not to_q.weight.requires_grad
    assert to_q.weight_format == GGMLFormat.of("Q8_0", (32, 32)) and tuple(to_q.weight.shape) == (32, 34)
    assert (to_q.in_features, to_q.out_features) == (32, 32)
    assert model.img_in.weight.dtype == torch.float32 and model.txt_norm.weight.dtype == torch.float32
    quantised = quantised_parameters(model)
    assert len(quantised) == 2 * 14  # every 2-D block weight: 12 attention/MLP layers + 2 modulations per block
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    assert stored < sum(p.numel() * 4 for p in _reference(q8_file).parameters()) * 0.45  # 34 bytes per 32 values
    assert torch.equal(_run(model), _run(_reference(q8_file)))


@pytest.mark.parametrize("qtype, float_type, prefix", [
    ("Q4_0", "BF16", "model.diffusion_model."),
    ("Q5_1", "F16", ""),
])
def test_other_types_prefix_and_float_types(float_model: FireRedTransformer, tmp_path: Path, qtype: str,
                                            float_type: str, prefix: str) -> None:
    path = write_transformer_gguf(float_model.state_dict(), tmp_path / f"{qtype}.gguf", qtype=qtype,
                                  float_type=float_type, prefix=prefix)
    model = load_transformer_file(path)  # the safetensors entry point recognises GGUF by content
    assert model.transformer_blocks[1].img_mlp.net[2].weight_format.name == qtype
    reference = _reference_from(path, prefix)
    assert torch.equal(_run(model), _run(reference))


def _reference_from(path: Path, prefix: str) -> FireRedTransformer:
    model = FireRedTransformer(TINY.transformer).eval()
    model.load_state_dict({k[len(prefix):]: v for k, v in gguf_dequantised_state(path).items()}, strict=True)
    return model


def test_bfloat16_compute(q8_file: Path) -> None:
    model = load_gguf_transformer(q8_file, dtype=torch.bfloat16)
    assert model.img_in.weight.dtype == torch.bfloat16
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.uint8
    bf16 = dict(hidden_states=_inputs()["hidden_states"].bfloat16(),
                encoder_hidden_states=_inputs()["encoder_hidden_states"].bfloat16())
    got = _run(model, **bf16)
    assert got.dtype == torch.bfloat16
    # dequantised in float32 and rounded once to bfloat16, like the reference's weights cast to bfloat16
    assert torch.equal(got, _run(_reference(q8_file).to(torch.bfloat16), **bf16))


def test_noted_original_shape_wins(float_model: FireRedTransformer, tmp_path: Path) -> None:
    """The converter stores some tensors as rows of 256 values and notes their torch shape in the metadata."""
    state = float_model.state_dict()
    tensors = {k: (encode(v, "F32" if v.ndim == 1 else "F16"), "F32" if v.ndim == 1 else "F16")
               for k, v in state.items()}
    key = "transformer_blocks.0.img_mlp.net.0.proj.weight"  # [128, 32]: 4096 values = 16 rows of 256
    tensors[key] = (encode(state[key].reshape(16, 256), "Q8_0"), "Q8_0")
    path = write_gguf(tmp_path / "reshaped.gguf", tensors, metadata={f"comfy.gguf.orig_shape.{key}": [128, 32]})
    model = load_gguf_transformer(path)
    proj = model.transformer_blocks[0].img_mlp.net[0].proj
    assert proj.weight_format.shape == (128, 32) and tuple(proj.weight.shape) == (128, 34)
    assert torch.equal(_run(model), _run(_reference_with(path, {key: (128, 32)})))


def _reference_with(path: Path, shapes: dict[str, tuple[int, ...]]) -> FireRedTransformer:
    state = gguf_dequantised_state(path)
    state.update({k: state[k].reshape(s) for k, s in shapes.items()})
    model = FireRedTransformer(TINY.transformer).eval()
    model.load_state_dict(state, strict=True)
    return model


def test_quantised_bias_and_norm_weight(float_model: FireRedTransformer, tmp_path: Path) -> None:
    """Converters never quantise 1-D tensors, but a file that does still works: ``bias_format`` and a norm's
    ``weight_format`` are dequantised at compute time like Linear weights."""
    state = float_model.state_dict()
    tensors = {k: (encode(v, "F32"), "F32") for k, v in state.items()}
    for key in ("transformer_blocks.0.attn.to_q.bias", "txt_norm.weight"):  # 32 values: one Q8_0 block each
        tensors[key] = (encode(state[key], "Q8_0"), "Q8_0")
    path = write_gguf(tmp_path / "odd-1d.gguf", tensors)
    model = load_gguf_transformer(path)
    assert model.transformer_blocks[0].attn.to_q.bias_format.name == "Q8_0"
    assert model.txt_norm.weight_format.shape == (32,)
    assert torch.equal(_run(model), _run(_reference(path)))


def test_unnamed_architecture_is_judged_by_keys(float_model: FireRedTransformer, tmp_path: Path) -> None:
    path = write_transformer_gguf(float_model.state_dict(), tmp_path / "pig.gguf", arch="pig")
    with open_gguf(path) as source:
        assert source.architecture == "pig" and source.type_counts["Q8_0"] == 2 * 14
    assert torch.equal(_run(load_gguf_transformer(path)), _run(_reference(path)))


def test_gguf_with_vae_file_through_load_components(q8_file: Path, tmp_path: Path) -> None:
    from firered_core.loading import save_comfy_vae
    from firered_core.vae import FireRedVAE

    vae = save_comfy_vae(FireRedVAE(TINY.vae).eval(), tmp_path / "vae.safetensors")
    transformer, loaded_vae, encoder, _ = load_components([vae, q8_file], load_encoder=False)
    assert encoder is None and isinstance(loaded_vae, FireRedVAE)
    assert quantised_parameters(transformer)
    # the safetensors reader names GGUF and where it is read, if one is handed to it directly
    assert "GGUF" in _one_line_error(read_header, q8_file) and "load_components" in _one_line_error(read_header,
                                                                                                       q8_file)


# ---------------------------------------------------------------------------------------------------------------
# Refusals: one line each, before any module exists
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_file(q8_file: Path, tmp_path: Path, keep: float) -> None:
    data = q8_file.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    message = _one_line_error(load_gguf_transformer, cut)
    assert "truncated" in message and str(cut) in message and f"only {int(len(data) * keep)} bytes" in message


def test_another_architecture(float_model: FireRedTransformer, tmp_path: Path) -> None:
    path = write_transformer_gguf(float_model.state_dict(), tmp_path / "flux.gguf", arch="flux")
    message = _one_line_error(load_gguf_transformer, path)
    assert "architecture is 'flux'" in message and "qwen_image" in message


def test_unsupported_quant_type(float_model: FireRedTransformer, tmp_path: Path) -> None:
    tensors = {k: (encode(v, "F32"), "F32") for k, v in float_model.state_dict().items()}
    key = "transformer_blocks.1.attn.to_v.weight"  # [32, 32]: IQ4_NL blocks of 32 values, random bytes
    tensors[key] = (np.random.default_rng(0).integers(0, 255, (32, 18), dtype=np.uint8), "IQ4_NL")
    path = write_gguf(tmp_path / "iq4.gguf", tensors)
    message = _one_line_error(load_gguf_transformer, path)
    assert f"tensor '{key}' is stored as IQ4_NL, which is not supported" in message


def test_keys_and_shapes_must_fit(float_model: FireRedTransformer, tmp_path: Path) -> None:
    state = dict(float_model.state_dict())
    state.pop("transformer_blocks.1.attn.to_k.bias")
    state["transformer_blocks.0.attn.to_out.0.weight"] = torch.zeros(32, 64)
    path = write_transformer_gguf(state, tmp_path / "bad.gguf")
    message = _one_line_error(load_gguf_transformer, path)
    assert "transformer_blocks.0.attn.to_out.0.weight': model expects [32, 32], file has [32, 64]" in message
    assert "missing keys: transformer_blocks.1.attn.to_k.bias" in message


def test_not_a_transformer(tmp_path: Path) -> None:
    tensors = {"encoder.conv1.weight": (np.zeros((8, 8), dtype=np.float32), "F32")}
    message = _one_line_error(load_gguf_transformer, write_gguf(tmp_path / "odd.gguf", tensors))
    assert "odd.gguf" in message


# ---------------------------------------------------------------------------------------------------------------
# LoRA and saving
# ---------------------------------------------------------------------------------------------------------------


def _lora_file_state(seed: int) -> dict[str, torch.Tensor]:
    donor = FireRedTransformer(TINY.transformer)
    add_trainable_lora(donor, rank=4)
    randomise(donor, seed)
    return lora_state_dict(donor, "train", "comfyui")


def test_lora_on_gguf_changes_the_output_as_on_the_float_model(q8_file: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    lora = tmp_path / "style.safetensors"
    save_file(_lora_file_state(7), str(lora))
    quantised, reference = load_gguf_transformer(q8_file), _reference(q8_file)
    base = _run(quantised)
    for model in (quantised, reference):
        assert apply_lora(model, lora, strength=0.8).applied == 2 * 12
    with_lora = _run(quantised)
    assert (with_lora - base).abs().max() > 1e-2  # the LoRA does something
    assert torch.equal(with_lora, _run(reference))
    with pytest.raises(LoRAError, match="stored quantised .*Q8_0.*keep the LoRA unmerged"):
        merge_lora(quantised)
    with pytest.raises(LoRAError, match="stored quantised"):
        merge_lora(quantised, lora)
    assert torch.equal(_run(quantised), with_lora)  # the refusals changed nothing


def test_trainable_lora_on_gguf_layers(q8_file: Path) -> None:
    model = load_gguf_transformer(q8_file)
    params = add_trainable_lora(model, rank=2)
    assert params and all(p.requires_grad for p in params)
    assert model.transformer_blocks[0].img_mlp.net[0].proj.adapters[0].down.weight.shape == (2, 32)


def test_saving_a_gguf_model_is_refused(q8_file: Path, tmp_path: Path) -> None:
    from firered_core.config import SchedulerConfig
    from firered_core.vae import FireRedVAE

    model = load_gguf_transformer(q8_file)
    message = _one_line_error(save_comfy_transformer, model, tmp_path / "out.safetensors")
    assert "quantised format" in message and "Q8_0" in message
    _one_line_error(save_diffusers_folder, model, FireRedVAE(TINY.vae), SchedulerConfig(), tmp_path / "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no partial folder left


# ---------------------------------------------------------------------------------------------------------------
# diffusers' own GGUF loader as a second reference
# ---------------------------------------------------------------------------------------------------------------
#
# diffusers 0.42.1 loads this file (QwenImageTransformer2DModel maps single-file keys as they are, so the bare
# diffusers names of ComfyUI-GGUF files fit; the config comes from a folder). Its Q8_0 kernel multiplies the
# float16 scale by the int8 values in float16 (``dtype=None`` keeps the scale in float16 whatever compute_dtype
# says), so its weights are gguf-py's rounded to float16 (11 significant bits) and its output differs from ours by
# ~1e-3 on a random file: more than the core's parity tolerance. Hence two checks: its weights are exactly ours
# rounded to float16 on a gguf-py file, and on a file whose Q8_0 scales are powers of two (products exact in
# float16) the whole forward agrees within the parity tolerance.


def _diffusers_gguf(path: Path, tmp_path: Path) -> torch.nn.Module:
    from diffusers import GGUFQuantizationConfig, QwenImageTransformer2DModel

    kwargs = {k: v for k, v in TINY.transformer.to_dict().items() if not k.startswith("_")}
    QwenImageTransformer2DModel(**kwargs).save_config(tmp_path / "config")
    return QwenImageTransformer2DModel.from_single_file(
        str(path), config=str(tmp_path / "config"), local_files_only=True, torch_dtype=torch.float32,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32)).eval()


def test_diffusers_reads_the_same_weights(q8_file: Path, tmp_path: Path) -> None:
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    reference = _diffusers_gguf(q8_file, tmp_path)
    ours = load_gguf_transformer(q8_file)
    layers = {n: m for n, m in reference.named_modules() if type(m).__name__ == "GGUFLinear"}
    assert sorted(layers) == sorted(k.rsplit(".", 1)[0] for k in quantised_parameters(ours))
    for name, layer in layers.items():
        mine = ours.get_submodule(name)
        expected = mine.weight_format.dequantize(mine.weight, torch.float32).half()
        assert torch.equal(dequantize_gguf_tensor(layer.weight), expected), name


def _power_of_two_q8(value: torch.Tensor) -> np.ndarray:
    """Q8_0 blocks of ``value`` whose scales are powers of two, so d * q is exact even in float16."""
    blocks = value.detach().float().numpy().reshape(-1, 32)
    d = 2.0 ** np.ceil(np.log2(np.abs(blocks).max(axis=1, keepdims=True) / 127))
    q = np.clip(np.round(blocks / d), -127, 127).astype(np.int8)
    raw = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return raw.reshape(value.shape[0], -1)


def test_diffusers_gguf_forward_agrees(float_model: FireRedTransformer, tmp_path: Path) -> None:
    tensors = {k: ((_power_of_two_q8(v), "Q8_0") if quantised_key(k, v) else (encode(v, "F32"), "F32"))
               for k, v in float_model.state_dict().items()}
    path = write_gguf(tmp_path / "pow2-Q8_0.gguf", tensors)
    reference = _diffusers_gguf(path, tmp_path)
    assert sum(type(m).__name__ == "GGUFLinear" for m in reference.modules()) == 2 * 14
    inputs = _inputs()
    shapes = inputs.pop("img_shapes")
    with torch.no_grad():
        expected = reference(**inputs, img_shapes=[shapes], return_dict=False)[0][:, :12]
    got = _run(load_gguf_transformer(path))
    diff = (got - expected).abs().max().item()
    print(f"\n[gguf parity] ours vs diffusers GGUF: max abs diff {diff:.3e} (output scale "
          f"{expected.abs().max().item():.2f})")
    assert diff <= TOL, diff


def quantised_key(key: str, value: torch.Tensor) -> bool:
    return tensor_type(key, value, "Q8_0", "F32") == "Q8_0"
