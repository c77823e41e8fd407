"""firered_core.lora against diffusers + PEFT (the reference) and against ComfyUI's key rules, on the tiny preset.

Each file layout is written here by hand (independently of formats.py) with random factors for every Linear of
the tiny transformer, ranks and alphas varying per layer. The same file is loaded by diffusers' own Qwen-Image
LoRA path (``QwenImageLoraLoaderMixin.load_lora_weights`` on a stand-in pipeline, so the key conversion, alpha
folding and metadata handling are diffusers') into ``QwenImageTransformer2DModel`` with the same base weights.
Checked: no unmatched keys; unmerged output == diffusers output; merged == unmerged; strength, stacking,
removal; refusals; save -> load round trips in every save layout, also read back by diffusers; and that every key
we save is one ComfyUI's LoraLoader consumes for this model family (no "lora key not loaded").
"""

from __future__ import annotations

import json
import logging
from math import prod
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from diffusers import QwenImageTransformer2DModel  # noqa: E402
from diffusers.loaders import QwenImageLoraLoaderMixin  # noqa: E402

from firered_core import ops  # noqa: E402
from firered_core.config import get_preset  # noqa: E402
from firered_core.loading import WeightFileError  # noqa: E402
from firered_core.lora import (LoRAError, add_trainable_lora, apply_lora, collect_lora, list_loras,  # noqa: E402
                               load_lora, lora_state_dict, merge_lora, remove_lora, save_lora, set_strength)
from firered_core.transformer import FireRedTransformer  # noqa: E402

TINY = get_preset("tiny").transformer
SHAPES = [(1, 3, 4), (1, 2, 3)]  # target 3x4 tokens + one 2x3 reference
REF_TOL = 1e-4  # ours vs diffusers (the base models alone agree to ~1e-6; see test_transformer_parity.py)
MERGE_TOL = 1e-5  # unmerged vs merged, same model


# ---------------------------------------------------------------------------------------------------------------
# models and inputs
# ---------------------------------------------------------------------------------------------------------------

def _base_state(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    reference = QwenImageTransformer2DModel(**{k: v for k, v in TINY.to_dict().items() if not k.startswith("_")})
    return {name: (1 + 0.1 * torch.randn(v.shape, generator=gen)) if "norm" in name and v.ndim == 1
            else 0.15 * torch.randn(v.shape, generator=gen) for name, v in reference.state_dict().items()}


BASE = _base_state()


def _ours() -> FireRedTransformer:
    model = FireRedTransformer(TINY).eval()
    model.load_state_dict(BASE, strict=True)
    return model


def _reference() -> QwenImageTransformer2DModel:
    model = QwenImageTransformer2DModel(**{k: v for k, v in TINY.to_dict().items() if not k.startswith("_")}).eval()
    model.load_state_dict(BASE, strict=True)
    return model


def _inputs() -> dict:
    gen = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, sum(prod(s) for s in SHAPES), TINY.in_channels, generator=gen),
                encoder_hidden_states=torch.randn(1, 5, TINY.joint_attention_dim, generator=gen),
                encoder_hidden_states_mask=torch.ones(1, 5, dtype=torch.long),
                timestep=torch.tensor([0.6]), img_shapes=SHAPES)


INPUTS = _inputs()


@torch.no_grad()
def _run(model: torch.nn.Module) -> torch.Tensor:
    return model(**INPUTS)


@torch.no_grad()
def _run_reference(model: QwenImageTransformer2DModel) -> torch.Tensor:
    out = model(**{**INPUTS, "img_shapes": [SHAPES]}, return_dict=False)[0]
    return out[:, :prod(SHAPES[0])]


LINEARS = [n for n, m in FireRedTransformer(TINY, device="meta").named_modules() if isinstance(m, ops.Linear)]


# ---------------------------------------------------------------------------------------------------------------
# LoRA files written by hand, one layout each
# ---------------------------------------------------------------------------------------------------------------

def _random_factors(seed: int, with_alpha: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """{layer: (down [r, in], up [out, r], alpha)} for every Linear; ranks 2 or 4, alphas != rank."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {k[: -len(".weight")]: v.shape for k, v in BASE.items() if k[: -len(".weight")] in LINEARS}
    out = {}
    for i, (name, (n_out, n_in)) in enumerate(sorted(shapes.items())):
        rank = 4 if i % 3 else 2
        alpha = (rank * 1.5 if i % 2 else rank * 0.5) if with_alpha else None
        out[name] = (0.3 * torch.randn(rank, n_in, generator=gen), 0.3 * torch.randn(n_out, rank, generator=gen), alpha)
    return out


# layout -> (stem(layer), down suffix, up suffix, writes alpha)
LAYOUTS = {
    "peft": (lambda p: f"transformer.{p}", "lora_A.weight", "lora_B.weight", False),
    "comfyui": (lambda p: f"diffusion_model.{p}", "lora_down.weight", "lora_up.weight", True),
    "comfyui_AB": (lambda p: f"diffusion_model.{p}", "lora_A.weight", "lora_B.weight", True),
    "kohya": (lambda p: "lora_unet_" + p.replace(".", "_"), "lora_down.weight", "lora_up.weight", True),
    "bare": (lambda p: p, "lora_A.weight", "lora_B.weight", False),
    "bare_default": (lambda p: p, "lora_A.default.weight", "lora_B.default.weight", False),
    "lightning": (lambda p: p, "lora_down.weight", "lora_up.weight", True),
}
EXPECTED_STYLE = {"peft": "peft", "comfyui": "comfyui", "comfyui_AB": "comfyui", "kohya": "kohya", "bare": "bare",
                  "bare_default": "bare", "lightning": "bare"}


def _write(path: Path, layout: str, seed: int = 3, extra: dict | None = None) -> Path:
    stem, down_sfx, up_sfx, with_alpha = LAYOUTS[layout]
    tensors = {}
    for layer, (down, up, alpha) in _random_factors(seed, with_alpha).items():
        tensors[f"{stem(layer)}.{down_sfx}"] = down
        tensors[f"{stem(layer)}.{up_sfx}"] = up
        if alpha is not None:
            tensors[f"{stem(layer)}.alpha"] = torch.tensor(alpha)
    save_file({**tensors, **(extra or {})}, str(path))
    return path


class _Pipe(QwenImageLoraLoaderMixin):
    """The smallest object diffusers' pipeline-level LoRA loader works on."""

    def __init__(self, transformer: QwenImageTransformer2DModel) -> None:
        self.transformer = transformer
        self.components = {"transformer": transformer}
        self.hf_device_map = None  # no accelerate offloading to undo


def _reference_with(files: list[tuple[Path, str, float]]) -> QwenImageTransformer2DModel:
    """diffusers model with each (file, layout, strength) loaded the way diffusers users load it."""
    reference = _reference()
    names = []
    for i, (path, layout, _) in enumerate(files):
        name = f"l{i}"
        if layout.startswith("bare") and layout != "bare_default":
            # unprefixed lora_A/lora_B: diffusers' pipeline filters on "transformer."; the model loader takes it
            reference.load_lora_adapter(load_file(str(path)), prefix=None, adapter_name=name)
        else:
            _Pipe(reference).load_lora_weights(str(path), adapter_name=name)
        names.append(name)
    reference.set_adapters(names, [s for _, _, s in files])
    return reference


# ---------------------------------------------------------------------------------------------------------------
# every layout: parse, apply, compare with diffusers, merge
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_diffusers_and_merge(layout: str, tmp_path: Path) -> None:
    path = _write(tmp_path / f"{layout}.safetensors", layout)
    weights = load_lora(path)
    assert weights.style == EXPECTED_STYLE[layout]
    assert len(weights) == len(LINEARS)

    model = _ours()
    base = _run(model)
    report = apply_lora(model, path, strength=1.0)
    assert report.unmatched == [] and report.applied == len(LINEARS) and report.name == layout
    unmerged = _run(model)
    expected = _run_reference(_reference_with([(path, layout, 1.0)]))
    effect = (unmerged - base).abs().max().item()
    diff = (unmerged - expected).abs().max().item()
    print(f"\n[lora {layout}] effect {effect:.3f}, vs diffusers {diff:.2e}", end="")
    assert effect > 0.05, "the LoRA should visibly change the output"
    assert diff <= REF_TOL

    merge_lora(model)
    assert list_loras(model) == {}
    merged = _run(model)
    assert (merged - unmerged).abs().max().item() <= MERGE_TOL


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # PEFT notes a second adapter
def test_strength_and_stacking_match_diffusers(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.safetensors", "comfyui", seed=5)
    b = _write(tmp_path / "b.safetensors", "kohya", seed=6)
    model = _ours()
    apply_lora(model, a, strength=1.0, name="a")
    apply_lora(model, b, strength=0.5, name="b")
    assert list_loras(model) == {"a": 1.0, "b": 0.5}
    got = _run(model)
    expected = _run_reference(_reference_with([(a, "comfyui", 1.0), (b, "kohya", 0.5)]))
    assert (got - expected).abs().max().item() <= REF_TOL

    # at the layer level the stack is exactly the sum of the deltas, each at its own strength
    layer = model.get_submodule("transformer_blocks.1.attn.to_add_out")
    x = torch.randn(3, layer.in_features)
    wa, wb = load_lora(a), load_lora(b)
    da = next(e for e in wa.entries if e.name == "transformer_blocks.1.attn.to_add_out")
    db = next(e for e in wb.entries if e.name == "transformer_blocks_1_attn_to_add_out")
    delta = da.scale * (da.up @ da.down) + 0.5 * db.scale * (db.up @ db.down)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ (layer.weight + delta).T + layer.bias, atol=1e-5)

    set_strength(model, "b", 0.0)
    only_a = _run(model)
    assert (only_a - _run_reference(_reference_with([(a, "comfyui", 1.0)]))).abs().max().item() <= REF_TOL


def test_remove_restores_exactly_and_names_are_unique(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.safetensors", "peft")
    model = _ours()
    base = _run(model)
    apply_lora(model, path, strength=0.7)
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model, path)
    assert remove_lora(model, "x") == len(LINEARS)
    assert torch.equal(_run(model), base)
    assert all(len(m.adapters) == 0 for m in model.modules() if isinstance(m, ops.Linear))
    with pytest.raises(KeyError, match="no LoRA named 'x'"):
        remove_lora(model, "x")


# ---------------------------------------------------------------------------------------------------------------
# what is refused or reported
# ---------------------------------------------------------------------------------------------------------------

def test_unmatched_keys_are_reported_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bogus = {"transformer.transformer_blocks.0.attn.bogus_proj.lora_A.weight": torch.zeros(2, 32),
             "transformer.transformer_blocks.0.attn.bogus_proj.lora_B.weight": torch.zeros(32, 2),
             "text_encoder.something.weight": torch.zeros(3)}
    path = _write(tmp_path / "bogus.safetensors", "peft", extra=bogus)
    model = _ours()
    with caplog.at_level(logging.WARNING):
        report = apply_lora(model, path)
    assert report.applied == len(LINEARS)
    assert sorted(report.unmatched) == sorted(bogus)
    assert "bogus_proj" in caplog.text and "text_encoder.something.weight" in caplog.text


def test_text_encoder_parts_are_reported_not_taken_for_another_architecture(tmp_path: Path) -> None:
    te = {f"lora_te_text_model_encoder_layers_{i}_mlp_fc1.lora_{d}.weight": torch.zeros(2, 2)
          for i in range(3 * len(LINEARS)) for d in ("down", "up")}
    report = apply_lora(_ours(), _write(tmp_path / "with_te.safetensors", "kohya", extra=te))
    assert report.applied == len(LINEARS) and sorted(report.unmatched) == sorted(te)


def test_lora_for_another_architecture_is_refused(tmp_path: Path) -> None:
    model = _ours()
    # a Flux-like key set: nothing but single-stream blocks
    flux = {f"transformer.single_transformer_blocks.{i}.proj_mlp.lora_{ab}.weight": torch.zeros(2, 2)
            for i in range(3) for ab in "AB"}
    save_file(flux, str(tmp_path / "flux.safetensors"))
    with pytest.raises(LoRAError, match=r"flux\.safetensors.*another architecture"):
        apply_lora(model, tmp_path / "flux.safetensors")
    # the right names but another width
    wide = {"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 48),
            "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(48, 4)}
    save_file(wide, str(tmp_path / "wide.safetensors"))
    with pytest.raises(LoRAError, match=r"wide\.safetensors.*other shapes"):
        apply_lora(model, tmp_path / "wide.safetensors")
    # a few shared names (Flux also has transformer_blocks.N.attn.to_q) but mostly foreign layers
    mixed = {**flux, "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 32),
             "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 2)}
    save_file(mixed, str(tmp_path / "mixed.safetensors"))
    with pytest.raises(LoRAError, match=r"mixed\.safetensors: 3 of 4 LoRA layers do not exist"):
        apply_lora(model, tmp_path / "mixed.safetensors")
    assert list_loras(model) == {}


@pytest.mark.parametrize("key, kind", [("diffusion_model.img_in.lokr_w1", "LoKr"),
                                       ("lora_unet_img_in.hada_w1_a", "LoHa"),
                                       ("transformer.img_in.lora_magnitude_vector", "DoRA")])
def test_other_adapter_types_are_refused(key: str, kind: str, tmp_path: Path) -> None:
    save_file({key: torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LoRAError, match=rf"other\.safetensors: this is a {kind} adapter"):
        load_lora(tmp_path / "other.safetensors")


def test_malformed_and_pickled_files_are_refused(tmp_path: Path) -> None:
    save_file({"diffusion_model.img_in.lora_down.weight": torch.zeros(2, 16)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoRAError, match=r"half\.safetensors: layer 'img_in' has a down matrix .* but no up"):
        load_lora(tmp_path / "half.safetensors")
    (tmp_path / "old.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(LoRAError, match=r"old\.pt: LoRA files must be \.safetensors.*pickles"):
        load_lora(tmp_path / "old.pt")
    (tmp_path / "disguised.safetensors").write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a torch.save zip
    with pytest.raises(WeightFileError, match="disguised"):
        load_lora(tmp_path / "disguised.safetensors")


# ---------------------------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------------------------

def _comfy_consumes(keys: set[str]) -> set[str]:
    """The keys ComfyUI's LoraLoader would consume for a Qwen-Image model (comfy/lora.py + weight_adapter/lora.py).

    Written from ComfyUI's rules: model_lora_keys_unet maps, for each ``diffusion_model.<p>.weight``,
    ``diffusion_model.<p>``, ``lora_unet_<p with _>``, and for QwenImage ``<p>``, ``transformer.<p>`` and
    ``lycoris_<p with _>``; load_lora then takes ``<stem>.alpha`` and an up/down pair under one of its suffixes.
    """
    stems = set()
    for k in BASE:
        if k.endswith(".weight"):
            p = k[: -len(".weight")]
            stems |= {f"diffusion_model.{p}", p, f"transformer.{p}", "lora_unet_" + p.replace(".", "_"),
                      "lycoris_" + p.replace(".", "_")}
    pairs = [("lora_up.weight", "lora_down.weight"), ("lora_B.weight", "lora_A.weight"),
             ("lora.up.weight", "lora.down.weight"), ("lora_B.default.weight", "lora_A.default.weight")]
    consumed = set()
    for stem in stems:
        if f"{stem}.alpha" in keys:
            consumed.add(f"{stem}.alpha")
        for up, down in pairs:
            if f"{stem}.{up}" in keys:
                consumed |= {f"{stem}.{up}", f"{stem}.{down}"}
                break
    return consumed


@pytest.mark.parametrize("fmt", ["comfyui", "peft", "kohya"])
def test_save_round_trip_and_readers(fmt: str, tmp_path: Path) -> None:
    source = _write(tmp_path / "source.safetensors", "comfyui", seed=8)  # per-layer ranks, alpha != rank
    model = _ours()
    apply_lora(model, source, name="style")
    out = save_lora(model, tmp_path / f"saved_{fmt}.safetensors", format=fmt)

    # identical adapters after the round trip
    again = _ours()
    report = apply_lora(again, out, name="again")
    assert report.unmatched == [] and report.applied == len(LINEARS)
    before = {e.name: e for e in collect_lora(model, "style").entries}
    after = {e.name: e for e in collect_lora(again, "again").entries}
    assert before.keys() == after.keys()
    for name, e in before.items():
        assert torch.equal(e.down, after[name].down) and torch.equal(e.up, after[name].up)
        assert e.effective_alpha == after[name].effective_alpha

    # diffusers reads the saved file to the same output (peft: through the LoraConfig metadata)
    expected = _run_reference(_reference_with([(out, fmt, 1.0)]))
    assert (_run(again) - expected).abs().max().item() <= REF_TOL

    keys = set(load_file(str(out)))
    if fmt == "comfyui":
        assert keys == _comfy_consumes(keys), "ComfyUI would log 'lora key not loaded'"
        assert keys == set(lora_state_dict(model, "style", format="comfyui"))
    if fmt == "kohya":
        assert keys == _comfy_consumes(keys)


def test_peft_metadata_is_diffusers_loraconfig(tmp_path: Path) -> None:
    model = _ours()
    apply_lora(model, _write(tmp_path / "s.safetensors", "comfyui", seed=9), name="s")
    out = save_lora(model, tmp_path / "p.safetensors", format="peft")
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.rank_pattern"]
    assert set(config["transformer.target_modules"]) == set(LINEARS)


def test_save_refuses_overwrite_and_pickle_suffix(tmp_path: Path) -> None:
    model = _ours()
    apply_lora(model, _write(tmp_path / "s.safetensors", "kohya"))
    target = save_lora(model, tmp_path / "out.safetensors")
    with pytest.raises(FileExistsError, match="out.safetensors"):
        save_lora(model, target)
    save_lora(model, target, overwrite=True, dtype=torch.bfloat16)
    assert load_file(str(target))["diffusion_model.img_in.lora_down.weight"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\.safetensors only"):
        save_lora(model, tmp_path / "out.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "s.safetensors"]  # no temp files left


# ---------------------------------------------------------------------------------------------------------------
# training and storage dtypes
# ---------------------------------------------------------------------------------------------------------------

def test_trainable_lora_starts_as_noop_trains_and_exports(tmp_path: Path) -> None:
    model = _ours()
    base = _run(model)
    params = add_trainable_lora(model, rank=4, alpha=8.0)
    assert len(params) == 2 * 12 * TINY.num_layers  # 12 default targets per block
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".adapters." not in n)
    assert torch.equal(_run(model), base), "zero-initialised up must leave the output unchanged"

    loss = model(**INPUTS).square().mean()
    loss.backward()
    # the last block's text-side outputs reach nothing (the output is image tokens): no gradient there, as in
    # the reference; every other adapter gets one
    last = f"transformer_blocks.{TINY.num_layers - 1}."
    no_grad = {n.split(".adapters.")[0] for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    assert no_grad == {last + s for s in ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2")}
    assert any(p.grad.abs().sum() > 0 for p in params if p.grad is not None)
    torch.optim.SGD(params, lr=1.0).step()
    trained = _run(model)
    assert (trained - base).abs().max().item() > 1e-4

    out = save_lora(model, tmp_path / "trained.safetensors")
    assert load_file(str(out))["diffusion_model.transformer_blocks.0.attn.to_q.alpha"].item() == 8.0
    expected = _run_reference(_reference_with([(out, "comfyui", 1.0)]))
    assert (trained - expected).abs().max().item() <= REF_TOL
    with pytest.raises(ValueError, match="no layer .* matches"):
        add_trainable_lora(model, rank=2, target_modules=["nonexistent"], name="t2")


def test_adapter_computes_in_input_dtype_and_fp8_merge(tmp_path: Path) -> None:
    model = _ours()
    path = _write(tmp_path / "l.safetensors", "comfyui")
    apply_lora(model, path, dtype=torch.float32)
    layer = model.get_submodule("img_in")
    assert layer(torch.randn(2, TINY.in_channels, dtype=torch.bfloat16)).dtype == torch.bfloat16

    # fp8 storage: the merge is done in float32 and re-quantised to the weight's dtype
    fp8 = torch.float8_e4m3fn
    w = layer.weight.detach().clone()
    layer.weight = torch.nn.Parameter(w.to(fp8), requires_grad=False)
    delta = layer.adapters[0].delta_weight()
    merge_lora(model, name="l")
    assert layer.weight.dtype == fp8
    assert torch.equal(layer.weight.float(), (w.to(fp8).float() + delta).to(fp8).float())
