"""``firered grow-depth``: a deeper model folder that computes what the original computed, and can learn more."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from firered_core.cli import main as firered_main
from firered_core.compact_vae import CompactVAE
from firered_core.config import get_preset
from firered_core.loading import ModelDefaults, save_component_folder
from firered_core.loading.diffusers_folder import load_transformer_dir
from firered_core.loading.save import write_safetensors
from firered_core.transformer import FireRedTransformer
from firered_train.export.default_model import export_default
from firered_train.export.grow_depth import grow_depth, grow_state


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A firered-default folder whose every weight (the gates included) is random and non-zero."""
    root = tmp_path_factory.mktemp("grow")
    torch.manual_seed(0)
    preset = get_preset("firered-default")
    transformer = FireRedTransformer(preset.transformer)
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0.0, 0.05)
    write_safetensors(root / "transformer.safetensors", transformer.state_dict())
    save_component_folder(CompactVAE(preset.vae), root / "vae_run" / "vae")
    return export_default(root / "transformer.safetensors", root / "vae_run", root / "model",
                          defaults=ModelDefaults(steps=2, true_cfg_scale=1.0, area=4096), storage_dtype=torch.float32)


def _inputs() -> tuple:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 128, 64, generator=gen)  # 64 target + 64 reference tokens
    txt = torch.randn(2, 7, 384, generator=gen)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    return x, txt, mask, torch.tensor([0.3, 0.9]), [[(1, 8, 8), (1, 8, 8)]] * 2


def test_the_grown_model_computes_what_the_original_computed(model_folder: Path, tmp_path: Path) -> None:
    out = grow_depth(model_folder, tmp_path / "deep", after=[1, 3])
    small, deep = load_transformer_dir(model_folder), load_transformer_dir(out)
    assert deep.config == dataclasses.replace(small.config, num_layers=8)
    assert deep.config == get_preset("firered-default-deep").transformer
    with torch.no_grad():
        expected, got = small(*_inputs()), deep(*_inputs())
    assert expected.abs().mean() > 0.1  # a real output, not zeros
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in model_folder.iterdir())
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (model_folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_copies_keep_their_block_but_start_with_closed_gates(model_folder: Path) -> None:
    state = load_transformer_dir(model_folder).state_dict()
    grown, origin = grow_state(state, 6, after=[3, 1])
    assert origin == [0, 1, 1, 2, 3, 3, 4, 5]
    dim = 192
    for new, old in enumerate(origin):
        copy = new in (2, 5)
        for key in ("attn.to_q.weight", "img_mlp.net.2.weight", "txt_mod.1.weight"):
            src, dst = state[f"transformer_blocks.{old}.{key}"], grown[f"transformer_blocks.{new}.{key}"]
            if key.endswith("mod.1.weight") and copy:
                for chunk in range(6):
                    part = dst[chunk * dim:(chunk + 1) * dim]
                    if chunk in (2, 5):
                        assert not part.any(), f"block {new}: gate chunk {chunk} must start at zero"
                    else:
                        assert torch.equal(part, src[chunk * dim:(chunk + 1) * dim])
            else:
                assert torch.equal(dst, src)
    assert state["transformer_blocks.1.img_mod.1.bias"][2 * dim:3 * dim].any()  # the source block is untouched


def test_training_opens_the_new_gates(model_folder: Path, tmp_path: Path) -> None:
    deep = load_transformer_dir(grow_depth(model_folder, tmp_path / "deep", after=[1]))
    x, txt, mask, t, shapes = _inputs()
    loss = (deep(x, txt, mask, t, shapes) - torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(2))) \
        .pow(2).mean()
    loss.backward()
    gate_grad = deep.transformer_blocks[2].img_mod[1].weight.grad[2 * 192:3 * 192]
    assert gate_grad.abs().sum() > 0  # the closed gate gets a gradient, so training can open it


def test_bad_requests_are_refused_and_nothing_is_replaced(model_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="blocks are 0..4"):
        grow_depth(model_folder, tmp_path / "a", after=[5])  # the last block
    with pytest.raises(ValueError, match="at least one"):
        grow_depth(model_folder, tmp_path / "a", after=[])
    with pytest.raises(FileNotFoundError, match="not a diffusers model folder"):
        grow_depth(tmp_path, tmp_path / "a", after=[1])
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="must differ"):
        grow_depth(model_folder, model_folder, after=[1], overwrite=True)
    assert load_transformer_dir(model_folder).config.num_layers == 6  # the input is untouched
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--overwrite"):
        grow_depth(model_folder, out, after=[1])
    assert (out / "keep.txt").read_text() == "keep"
    assert firered_main(["grow-depth", str(model_folder), "--after", "9", "--out", str(tmp_path / "b")]) == 2
    assert firered_main(["grow-depth", str(model_folder), "--after", "0", "--out", str(tmp_path / "b")]) == 0
    assert load_transformer_dir(tmp_path / "b").config.num_layers == 7
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
