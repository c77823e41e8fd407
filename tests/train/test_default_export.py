"""``firered export-default``: the embedded default's folder assembled from a transformer and a VAE run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from firered_core.compact_vae import CompactVAE
from firered_core.config import get_preset
from firered_core.loading import save_component_folder
from firered_core.loading.save import write_safetensors
from firered_core.pipeline import FireRedEditPipeline
from firered_core.transformer import FireRedTransformer
from firered_train.export.default_model import export_default

DEFAULTS = {"steps": 2, "true_cfg_scale": 3.0, "area": 4096}


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    preset = get_preset("firered-default")
    transformer = FireRedTransformer(preset.transformer)
    state = transformer.state_dict()
    write_safetensors(root / "transformer.safetensors", state)
    ckpt = root / "checkpoints" / "step-000010"  # a training checkpoint: EMA weights under ema.shadow.*
    ckpt.mkdir(parents=True)
    write_safetensors(ckpt / "ema.safetensors", {**{f"ema.shadow.{k}": v * 0.5 for k, v in state.items()},
                                                 "ema.n_updates": torch.tensor(3)})
    write_safetensors(ckpt / "model.safetensors", state)
    save_component_folder(CompactVAE(preset.vae), root / "vae_run" / "vae")
    return {"root": root, "transformer": root / "transformer.safetensors", "ckpt": ckpt, "vae": root / "vae_run"}


def test_export_loads_as_a_pipeline_that_edits(parts: dict[str, Path], tmp_path: Path) -> None:
    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    assert sorted(p.name for p in out.iterdir()) == ["defaults.json", "model_index.json", "scheduler", "text_encoder",
                                                    "transformer", "vae"]
    assert json.loads((out / "text_encoder" / "firered_encoder.json").read_text())["kind"] == "minilm-package"
    assert json.loads((out / "defaults.json").read_text()) == DEFAULTS
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 25e6  # bf16 transformer + float32 VAE fit the 25 MB budget
    pipe = FireRedEditPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, CompactVAE) and type(pipe.encoder).__name__ == "MiniLMConditionEncoder"
    w = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert w.dtype == torch.float32  # stored bf16, computed in float32
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    result = pipe.edit([image], "make the background blue", steps=2, true_cfg_scale=3.0, seed=0, width=64, height=64)
    assert result.image.size == (64, 64)


def test_a_checkpoint_folder_exports_its_ema_weights(parts: dict[str, Path], tmp_path: Path) -> None:
    out = export_default(parts["ckpt"], parts["vae"], tmp_path / "model", defaults=DEFAULTS,
                         storage_dtype=torch.float32)
    pipe = FireRedEditPipeline.from_pretrained(out)
    from firered_core.loading import open_weights

    with open_weights(parts["transformer"]) as src:
        raw = src.get("proj_out.weight")
    torch.testing.assert_close(pipe.transformer.proj_out.weight, raw * 0.5)


def test_export_never_replaces_silently_and_names_missing_inputs(parts: dict[str, Path], tmp_path: Path) -> None:
    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    (out / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_default(parts["transformer"], parts["vae"], out, defaults=DEFAULTS)
    assert (out / "mine.txt").read_text() == "keep"
    export_default(parts["transformer"], parts["vae"], out, defaults=DEFAULTS, overwrite=True)
    assert not (out / "mine.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(FileNotFoundError, match="--transformer"):
        export_default(tmp_path / "nope.safetensors", parts["vae"], tmp_path / "m2", defaults=DEFAULTS)
    with pytest.raises(FileNotFoundError, match="vae_weights"):
        export_default(parts["transformer"], tmp_path / "novae", tmp_path / "m3", defaults=DEFAULTS)


def test_an_exported_folder_runs_at_its_trained_area_wherever_it_is_loaded(parts: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    """defaults.json travels with the folder: the CLI's and the benchmark's --model and the node's folder loader
    use its area (a 64x64 model fed 1 MP references would be slow and wrong), and its steps / CFG."""
    import subprocess
    import sys

    from firered_core.default import apply_defaults, pipe_defaults
    from firered_bench.evaluate.bench import _pipeline

    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    assert pipe_defaults(out) == DEFAULTS and pipe_defaults(tmp_path) == {}
    # other model sources (a weights file, a list of component files) have no defaults
    assert pipe_defaults(parts["transformer"]) == {} and pipe_defaults([parts["transformer"], parts["vae"]]) == {}
    pipe = _pipeline(str(out))
    assert (pipe.output_area, pipe.reference_area) == (4096, 4096)
    assert (pipe.default_steps, pipe.default_true_cfg_scale) == (2, 3.0)
    assert pipe.sampling_choice(None, None) == (2, 3.0) and pipe.sampling_choice(7, 0.0) == (7, 0.0)
    bare = FireRedEditPipeline.from_pretrained(out)
    assert bare.reference_area != 4096  # the class's own default: the file is what changes it
    assert (bare.default_steps, bare.default_true_cfg_scale) == (40, 4.0)
    for bad, match in (({"area": -1}, "area must be >= 0"), ({"steps": 0}, "steps must be an integer >= 1"),
                       ({"steps": 2.5}, "steps must be"), ({"true_cfg_scale": -1}, "true_cfg_scale must be"),
                       ({"true_cfg_scale": float("inf")}, "true_cfg_scale must be")):
        with pytest.raises(ValueError, match=match):
            apply_defaults(bare, bad)

    source = tmp_path / "in.png"
    Image.new("RGB", (640, 480), (200, 30, 30)).save(source)
    proc = subprocess.run([sys.executable, "-m", "firered_core.cli", "edit", str(source), "--instruction",
                           "make it blue", "--model", str(out), "-o", str(tmp_path / "out.png")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = pipe.output_size([Image.open(source)])
    unset_w, unset_h = bare.output_size([Image.open(source)])
    assert expected[0] * expected[1] <= 2 * DEFAULTS["area"] < unset_w * unset_h
    assert Image.open(tmp_path / "out.png").size == expected  # about 4096 px, not the class's 1 MP
    assert f"{DEFAULTS['steps']} steps" in proc.stdout
    meta = json.loads(Image.open(tmp_path / "out.png").info["firered"])
    assert (meta["steps"], meta["cfg"]) == (2, 3.0)  # what ran: the folder's own, recorded from the result


def test_the_node_folder_loader_uses_the_folders_area(parts: dict[str, Path], tmp_path: Path) -> None:
    from nodes.model_sources import Precision, _load_folder

    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    pipe = _load_folder(out, None, None, Precision.parse("float32"))
    assert (pipe.output_area, pipe.reference_area) == (4096, 4096)


def test_the_command_can_turn_preserve_unedited_on(parts: dict[str, Path], tmp_path: Path) -> None:
    """``firered export-default --preserve-unedited`` writes it into defaults.json; a folder loaded through the
    benchmark's --model then keeps Picture 1's pixels outside the edit; without the flag the key is absent."""
    import argparse

    from firered_core.preserve import PreserveConfig
    from firered_train.export.default_model import register_export_default
    from firered_bench.evaluate.bench import _pipeline

    parser = argparse.ArgumentParser()
    run = register_export_default(parser)
    common = ["--transformer", str(parts["transformer"]), "--vae", str(parts["vae"])]
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "on"), "--preserve-unedited"])) == 0
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "off")])) == 0
    assert json.loads((tmp_path / "on" / "defaults.json").read_text())["preserve_unedited"] is True
    assert "preserve_unedited" not in json.loads((tmp_path / "off" / "defaults.json").read_text())
    assert _pipeline(str(tmp_path / "on")).preserve_unedited == PreserveConfig()
    assert _pipeline(str(tmp_path / "off")).preserve_unedited is None


def test_the_command_can_turn_stochastic_sampling_on(parts: dict[str, Path], tmp_path: Path) -> None:
    """``--stochastic-sampling`` goes into the folder's scheduler config, which the loader (and diffusers) read."""
    import argparse

    from firered_train.export.default_model import register_export_default
    from firered_bench.evaluate.bench import _pipeline

    parser = argparse.ArgumentParser()
    run = register_export_default(parser)
    common = ["--transformer", str(parts["transformer"]), "--vae", str(parts["vae"])]
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "on"), "--stochastic-sampling"])) == 0
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "off")])) == 0
    config = json.loads((tmp_path / "on" / "scheduler" / "scheduler_config.json").read_text())
    assert config["stochastic_sampling"] is True
    assert _pipeline(str(tmp_path / "on")).scheduler_config.stochastic_sampling is True
    assert _pipeline(str(tmp_path / "off")).scheduler_config.stochastic_sampling is False
