"""Loading and saving round trips, checked against diffusers (the reference) and against the original modules.

A tiny FireRed transformer and VAE with random weights are saved as a diffusers folder (single file and
sharded), loaded back by diffusers' own ``from_pretrained`` and by ``load_components``: all three must compute
the same outputs. The same models saved as ComfyUI single files (bare and ``model.diffusion_model.`` keys, Wan VAE
names) must load back bit-identically. Detection must infer the configs from shapes alone (files without our
metadata), the Wan VAE names must agree with diffusers' own converter, and fp8 storage must load and run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from firered_core.config import TransformerConfig, VAEConfig, get_preset
from firered_core.loading import (WeightFileError, classify, infer_transformer_config, infer_vae_config,
                                  load_components, load_into, load_transformer_file, load_vae_file, open_sharded,
                                  open_weights, read_header, save_comfy_transformer, save_comfy_vae,
                                  save_diffusers_folder)
from firered_core.loading.comfy_files import diffusers_to_wan_vae_keys, wan_to_diffusers_vae_keys
from firered_core.transformer import FireRedTransformer
from firered_core.vae import FireRedVAE

TINY = get_preset("tiny")
SHAPES = [(1, 4, 4), (1, 2, 2)]  # target 4x4 tokens + one 2x2 reference


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if "norm" in name else 0.0  # norm scales near one, like trained weights
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + offset)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_models() -> tuple[FireRedTransformer, FireRedVAE]:
    return _randomise(FireRedTransformer(TINY.transformer), 1), _randomise(FireRedVAE(TINY.vae), 2)


def _transformer_inputs(cfg: TransformerConfig) -> dict:
    gen = torch.Generator().manual_seed(3)
    n = sum(f * h * w for f, h, w in SHAPES)
    return dict(hidden_states=torch.randn(2, n, cfg.in_channels, generator=gen),
                encoder_hidden_states=torch.randn(2, 5, cfg.joint_attention_dim, generator=gen),
                encoder_hidden_states_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
                timestep=torch.tensor([0.3, 0.8]))


def _run(model: FireRedTransformer) -> torch.Tensor:
    with torch.no_grad():
        return model(**_transformer_inputs(model.config), img_shapes=SHAPES)


def _images() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------------------------------------------
# diffusers folders
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_bytes", [None, 40_000], ids=["single", "sharded"])
def test_diffusers_folder_loads_in_diffusers_and_in_ours(tmp_path: Path, tiny_models, shard_bytes) -> None:
    diffusers = pytest.importorskip("diffusers")
    transformer, vae = tiny_models
    folder = save_diffusers_folder(transformer, vae, TINY.scheduler, tmp_path / "model", max_shard_bytes=shard_bytes)
    shards = list((folder / "transformer").glob("*.safetensors"))
    assert (len(shards) > 1) == (shard_bytes is not None)

    ref_t = diffusers.QwenImageTransformer2DModel.from_pretrained(folder / "transformer").eval()
    ref_v = diffusers.AutoencoderKLQwenImage.from_pretrained(folder / "vae").eval()
    ours = load_components(folder, load_encoder=False)
    assert ours.encoder is None and ours.scheduler_config == TINY.scheduler
    assert ours.transformer.config == TINY.transformer and ours.vae.config == TINY.vae
    _assert_same_state(ours.transformer, transformer)
    _assert_same_state(ours.vae, vae)

    expected = _run(transformer)
    args = _transformer_inputs(TINY.transformer)
    with torch.no_grad():
        reference = ref_t(**args, img_shapes=[SHAPES] * 2, return_dict=False)[0][:, : expected.shape[1]]
        assert torch.equal(_run(ours.transformer), expected)
        torch.testing.assert_close(reference, expected, atol=1e-5, rtol=0)

        img = _images()
        ref_z = ref_v.encode(img[:, :, None]).latent_dist.mode()[:, :, 0]
        torch.testing.assert_close(ours.vae.encode_raw(img), ref_z, atol=1e-5, rtol=0)


def test_diffusers_folder_is_never_overwritten_by_accident(tmp_path: Path, tiny_models) -> None:
    transformer, vae = tiny_models
    folder = save_diffusers_folder(transformer, vae, TINY.scheduler, tmp_path / "m")
    marker = folder / "transformer" / "config.json"
    before = marker.read_text()
    with pytest.raises(FileExistsError, match="already exists"):
        save_diffusers_folder(transformer, vae, TINY.scheduler, folder)
    save_diffusers_folder(transformer, vae, TINY.scheduler, folder, overwrite=True)
    assert marker.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI single files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bare", "prefixed"])
def test_comfy_files_round_trip_identically(tmp_path: Path, tiny_models, prefix: str) -> None:
    transformer, vae = tiny_models
    t_path = save_comfy_transformer(transformer, tmp_path / "transformer.safetensors", prefix=prefix)
    v_path = save_comfy_vae(vae, tmp_path / "vae.safetensors")
    keys = list(read_header(t_path))
    assert all(k.startswith(prefix) for k in keys) and f"{prefix}txt_norm.weight" in keys
    assert "decoder.head.2.weight" in read_header(v_path)  # ComfyUI's Wan names

    parts = load_components([v_path, t_path], load_encoder=False)  # order does not matter
    _assert_same_state(parts.transformer, transformer)
    _assert_same_state(parts.vae, vae)
    assert torch.equal(_run(parts.transformer), _run(transformer))


def test_wan_vae_names_agree_with_diffusers_converter() -> None:
    """Our Wan <-> diffusers VAE names, for the released structure, match diffusers' single-file converter."""
    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    keys = list(FireRedVAE(VAEConfig(), device="meta").state_dict())
    to_wan = diffusers_to_wan_vae_keys(keys)
    assert len(set(to_wan.values())) == len(keys)
    converted = single_file_utils.convert_wan_vae_to_diffusers({w: d for d, w in to_wan.items()})
    assert converted == {d: d for d in keys}
    back = wan_to_diffusers_vae_keys(list(to_wan.values()))
    assert {to_wan[k]: k for k in keys} == back


def test_scaled_fp8_weights_are_dequantised(tmp_path: Path, tiny_models) -> None:
    transformer, _ = tiny_models
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    key = "transformer_blocks.0.attn.to_q.weight"
    fp8 = state[key].to(torch.float8_e4m3fn)
    state[key] = fp8
    state[key.replace(".weight", ".weight_scale")] = torch.tensor(0.5)
    state[key.replace(".weight", ".input_scale")] = torch.tensor(1.0)
    path = tmp_path / "scaled.safetensors"
    save_file(state, str(path))
    loaded = load_transformer_file(path, config=TINY.transformer)
    assert torch.equal(loaded.state_dict()[key], fp8.float() * 0.5)


# ---------------------------------------------------------------------------------------------------------------
# detection from shapes alone
# ---------------------------------------------------------------------------------------------------------------


def _meta_shapes(model: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("config", [
    TINY.transformer,
    TransformerConfig(num_layers=3, attention_head_dim=128, num_attention_heads=1, joint_attention_dim=24,
                      in_channels=64, out_channels=16, zero_cond_t=True, use_additional_t_cond=True),
    TransformerConfig(patch_size=1, in_channels=6, out_channels=3, num_layers=1, attention_head_dim=16,
                      num_attention_heads=3, joint_attention_dim=8, axes_dims_rope=(4, 6, 6)),
], ids=["tiny", "128-head-2511-flags", "patch1"])
def test_transformer_config_is_inferred_from_shapes(config: TransformerConfig) -> None:
    shapes = _meta_shapes(FireRedTransformer(config, device="meta"))
    if config.zero_cond_t:
        shapes["__index_timestep_zero__"] = (0,)
    assert classify(list(shapes), "x").kind == "transformer"
    assert infer_transformer_config(shapes, "x") == config


def test_released_transformer_shapes_give_the_released_config() -> None:
    config = get_preset("firered-1.0").transformer
    assert infer_transformer_config(_meta_shapes(FireRedTransformer(config, device="meta")), "x") == config


def test_unknown_head_dim_needs_axes(tmp_path: Path) -> None:
    config = TransformerConfig(num_layers=1, attention_head_dim=24, num_attention_heads=2, joint_attention_dim=8,
                               in_channels=16, out_channels=4, axes_dims_rope=(4, 10, 10))
    shapes = _meta_shapes(FireRedTransformer(config, device="meta"))
    with pytest.raises(WeightFileError, match="head dim 24"):
        infer_transformer_config(shapes, "x")
    assert infer_transformer_config(shapes, "x", axes_dims_rope=(4, 10, 10)) == config


def test_plain_comfy_file_without_metadata_is_detected(tmp_path: Path, tiny_models) -> None:
    """A file written by other tools (no firered metadata) loads by shape inference, prefix stripped."""
    transformer, _ = tiny_models
    path = tmp_path / "other_tool.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in transformer.state_dict().items()}, str(path))
    kind = classify(open_weights(path).keys(), "x")
    assert (kind.kind, kind.prefix) == ("transformer", "model.diffusion_model.")
    loaded = load_transformer_file(path)
    assert loaded.config == TINY.transformer
    _assert_same_state(loaded, transformer)


@pytest.mark.parametrize("config", [TINY.vae, VAEConfig()], ids=["tiny", "released"])
def test_vae_config_is_inferred_from_shapes(config: VAEConfig) -> None:
    shapes = _meta_shapes(FireRedVAE(config, device="meta"))
    assert infer_vae_config(shapes, "x") == config
    wan = diffusers_to_wan_vae_keys(list(shapes))
    kind = classify(list(wan.values()), "x")
    assert (kind.kind, kind.layout) == ("vae", "wan")


def test_vae_with_unknown_structure_gets_identity_statistics(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY.vae, base_dim=4, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    vae = _randomise(FireRedVAE(config), 5)
    path = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))  # diffusers names, no metadata
    loaded = load_vae_file(path)
    assert loaded.config == config
    _assert_same_state(loaded, vae)


# ---------------------------------------------------------------------------------------------------------------
# fp8 storage, streaming, shards
# ---------------------------------------------------------------------------------------------------------------


def test_fp8_storage_loads_and_runs(tmp_path: Path, tiny_models) -> None:
    transformer, vae = tiny_models
    folder = save_diffusers_folder(transformer, vae, TINY.scheduler, tmp_path / "m")
    parts = load_components(folder, fp8=True, load_encoder=False)
    model = parts.transformer
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name, value in model.state_dict().items():
        assert value.dtype == (torch.float8_e4m3fn if name in linear else torch.float32), name
    assert all(v.dtype == torch.float32 for v in parts.vae.state_dict().values())
    out, ref = _run(model), _run(transformer)
    assert torch.isfinite(out).all()
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.1, rel  # e4m3 keeps 3 mantissa bits: a few percent, never exact


def test_load_into_converts_dtype_and_saturates_fp8(tmp_path: Path) -> None:
    src = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    with torch.no_grad():
        src[0].weight[0, 0] = 1000.0  # beyond e4m3's largest finite value (448)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = torch.nn.Sequential(torch.nn.Linear(4, 3, device="meta"), torch.nn.LayerNorm(3, device="meta"))
    with open_weights(path) as source:
        report = load_into(dst, source, dtype=torch.bfloat16, linear_weight_dtype=torch.float8_e4m3fn)
    assert report.loaded == 4
    assert dst[0].weight.dtype == torch.float8_e4m3fn and dst[0].bias.dtype == torch.bfloat16
    assert dst[1].weight.dtype == torch.bfloat16
    assert dst[0].weight[0, 0].float().item() == 448.0


def test_open_sharded_reads_every_shard(tmp_path: Path, tiny_models) -> None:
    transformer, vae = tiny_models
    folder = save_diffusers_folder(transformer, vae, TINY.scheduler, tmp_path / "m", max_shard_bytes=10_000)
    with open_sharded(folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json") as src:
        assert len(src.paths) > 3
        state = transformer.state_dict()
        assert sorted(src.keys()) == sorted(state)
        for key in src.keys():
            assert torch.equal(src.get(key), state[key])
        assert src.get("img_in.weight", dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("keys, kind", [
    (["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "visual.blocks.0.attn.qkv.weight"],
     "text_encoder"),
    (["transformer_blocks.0.attn.to_q.lora_A.weight", "transformer_blocks.0.attn.to_q.lora_B.weight"], "lora"),
    (["diffusion_model.transformer_blocks.0.attn.to_q.lora_down.weight"], "lora"),
    (["lora_unet_transformer_blocks_0_attn_to_q.lora_up.weight", "lora_unet_transformer_blocks_0_attn_to_q.alpha"],
     "lora"),
    (["transformer.transformer_blocks.0.img_mlp.net.2.lora_B.default.weight"], "lora"),
], ids=["comfy-text-encoder", "peft", "comfy-lora", "kohya", "peft-default"])
def test_other_files_are_classified_by_keys(keys: list[str], kind: str) -> None:
    assert classify(keys, "x").kind == kind


class _WithBuffer(torch.nn.Module):
    def __init__(self, device: str | None = None) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(2, 2, device=device)
        self.register_buffer("table", torch.arange(3.0, device=device), persistent=False)

    def materialize_buffers(self, device: str) -> None:
        self.table = torch.arange(3.0, device=device)


def test_non_strict_load_zero_fills_and_buffers_are_materialised(tmp_path: Path) -> None:
    path = tmp_path / "partial.safetensors"
    save_file({"proj.weight": torch.ones(2, 2), "unused": torch.ones(1)}, str(path))
    model = _WithBuffer(device="meta")
    with open_weights(path) as src:
        report = load_into(model, src, strict=False)
    assert report.missing == ["proj.bias"] and report.unexpected == ["unused"]
    assert torch.equal(model.proj.bias, torch.zeros(2)) and torch.equal(model.table, torch.arange(3.0))
    with open_weights(path) as src, pytest.raises(WeightFileError, match="missing keys: proj.bias"):
        load_into(_WithBuffer(device="meta"), src)


def test_meta_leftovers_without_a_materialiser_are_an_error(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2, device="meta")
    model.register_buffer("cache", torch.empty(3, device="meta"), persistent=False)
    path = tmp_path / "lin.safetensors"
    save_file({"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, str(path))
    with open_weights(path) as src, pytest.raises(RuntimeError, match="meta device.*cache"):
        load_into(model, src)


def test_2511_marker_switches_on_zero_cond_t(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY.transformer, zero_cond_t=True)
    model = _randomise(FireRedTransformer(config), 6)
    state = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["model.diffusion_model.__index_timestep_zero__"] = torch.empty(0)
    path = tmp_path / "edit_2511_style.safetensors"
    save_file(state, str(path))  # no firered metadata: the marker alone must say zero_cond_t
    loaded = load_transformer_file(path)
    assert loaded.config == config
    assert torch.equal(_run(loaded), _run(model))
    ours = save_comfy_transformer(loaded, tmp_path / "ours.safetensors")
    assert "__index_timestep_zero__" in read_header(ours)


def test_fp8_dtype_applies_to_linear_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    tensors = {"0.weight": torch.ones(3, 4), "0.bias": torch.ones(3), "1.weight": torch.ones(3),
               "1.bias": torch.ones(3)}
    save_file(tensors, str(path))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3, device="meta"), torch.nn.LayerNorm(3, device="meta"))
    with open_weights(path) as src:
        load_into(model, src, dtype=torch.float8_e4m3fn)
    assert [p.dtype for p in model.parameters()] == [torch.float8_e4m3fn] + [torch.float32] * 3
