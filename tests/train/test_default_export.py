"""``firered export-default``: the embedded default's folder assembled from a transformer and a VAE run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from firered_core.compact_vae import CompactVAE
from firered_core.config import get_preset
from firered_core.loading import ModelDefaults, read_model_defaults, save_component_folder
from firered_core.loading.save import write_safetensors
from firered_core.pipeline import FireRedEditPipeline
from firered_core.transformer import FireRedTransformer
from firered_train.export.default_model import export_default

DEFAULTS = ModelDefaults(steps=2, true_cfg_scale=3.0, area=4096)


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
    assert json.loads((out / "defaults.json").read_text()) == {"steps": 2, "true_cfg_scale": 3.0, "area": 4096}
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 25e6  # bf16 transformer + float32 VAE fit the 25 MB budget
    pipe = FireRedEditPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, CompactVAE) and type(pipe.encoder).__name__ == "MiniLMConditionEncoder"
    w = pipe.transformer.transformer_blocks[0].attn.to_q.weight
    assert w.dtype == torch.float32  # stored bf16, computed in float32
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    result = pipe.edit([image], "make the background blue", steps=2, true_cfg_scale=3.0, seed=0, width=64, height=64)
    assert result.image.size == (64, 64)


def test_the_vaes_latent_preview_table_travels_with_it(parts: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from firered_core.latent_preview import PREVIEW_FILE, LatentPreview, fit_from_vae

    vae_run = tmp_path / "vae_run"
    shutil.copytree(parts["vae"], vae_run)
    table = fit_from_vae(FireRedEditPipeline.from_pretrained(
        export_default(parts["transformer"], parts["vae"], tmp_path / "plain", defaults=DEFAULTS)).vae)
    assert not (tmp_path / "plain" / "vae" / PREVIEW_FILE).exists()  # the VAE run had none
    table.save(vae_run / "vae" / PREVIEW_FILE)
    out = export_default(parts["transformer"], vae_run, tmp_path / "model", defaults=DEFAULTS)
    assert LatentPreview.load(out / "vae" / PREVIEW_FILE) == LatentPreview.load(vae_run / "vae" / PREVIEW_FILE)
    (vae_run / "vae" / PREVIEW_FILE).write_text("{}")
    with pytest.raises(ValueError, match=PREVIEW_FILE):
        export_default(parts["transformer"], vae_run, tmp_path / "broken", defaults=DEFAULTS)
    assert not (tmp_path / "broken").exists()


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
    """defaults.json travels with the folder: ``from_pretrained`` applies it, so the CLI's and the benchmark's
    --model and the node's folder loader use its area (a 64x64 model fed 1 MP references would be slow and wrong),
    and its steps / CFG."""
    import subprocess
    import sys

    from firered_bench.evaluate.bench import _pipeline

    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    assert read_model_defaults(out) == DEFAULTS and read_model_defaults(tmp_path) == ModelDefaults()
    # other model sources (a weights file, a list of component files) have no defaults
    assert read_model_defaults(parts["transformer"]) == ModelDefaults()
    assert read_model_defaults([parts["transformer"], parts["vae"]]) == ModelDefaults()
    for pipe in (FireRedEditPipeline.from_pretrained(out), _pipeline(str(out))):
        assert (pipe.output_area, pipe.reference_area) == (4096, 4096)
        assert (pipe.default_steps, pipe.default_true_cfg_scale) == (2, 3.0)
        assert pipe.sampling_choice(None, None) == (2, 3.0) and pipe.sampling_choice(7, 0.0) == (7, 0.0)
    bare = FireRedEditPipeline.from_pretrained(out).apply_defaults(ModelDefaults())  # unset: nothing changes
    assert (bare.default_steps, bare.reference_area) == (2, 4096)
    (out / "defaults.json").unlink()
    bare = FireRedEditPipeline.from_pretrained(out)
    assert bare.reference_area != 4096  # the class's own default: the file is what changes it
    assert (bare.default_steps, bare.default_true_cfg_scale) == (40, 4.0)
    export_default(parts["transformer"], parts["vae"], out, defaults=DEFAULTS, overwrite=True)

    source = tmp_path / "in.png"
    Image.new("RGB", (640, 480), (200, 30, 30)).save(source)
    proc = subprocess.run([sys.executable, "-m", "firered_core.cli", "edit", str(source), "--instruction",
                           "make it blue", "--model", str(out), "-o", str(tmp_path / "out.png")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = pipe.output_size([Image.open(source)])
    unset_w, unset_h = bare.output_size([Image.open(source)])
    assert expected[0] * expected[1] <= 2 * DEFAULTS.area < unset_w * unset_h
    assert Image.open(tmp_path / "out.png").size == expected  # about 4096 px, not the class's 1 MP
    assert f"{DEFAULTS.steps} steps" in proc.stdout
    meta = json.loads(Image.open(tmp_path / "out.png").info["firered"])
    assert (meta["steps"], meta["cfg"]) == (2, 3.0)  # what ran: the folder's own, recorded from the result


def test_the_node_folder_loader_uses_the_folders_area(parts: dict[str, Path], tmp_path: Path) -> None:
    from nodes.model_sources import Precision, _load_folder

    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    pipe = _load_folder(out, None, None, Precision.parse("float32"))
    assert (pipe.output_area, pipe.reference_area) == (4096, 4096)


def test_defaults_json_errors_name_the_file_and_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "defaults.json"
    for bad, match in (({"area": -1}, "area must be an integer >= 0"), ({"steps": 0}, "steps must be an integer >= 1"),
                       ({"steps": 2.5}, "steps must be"), ({"true_cfg_scale": -1}, "true_cfg_scale must be"),
                       ({"true_cfg_scale": True}, "true_cfg_scale must be"), ({"area": "4096"}, "area must be")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"{path}: {match}"):
            read_model_defaults(tmp_path)
    path.write_text('{"true_cfg_scale": Infinity}')
    with pytest.raises(ValueError, match="true_cfg_scale must be a finite number"):
        read_model_defaults(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="defaults.json: expected a JSON object"):
        read_model_defaults(tmp_path)
    path.write_text('{"steps": 3, "sampler": "stochastic"}')
    with caplog.at_level("WARNING"):
        assert read_model_defaults(tmp_path) == ModelDefaults(steps=3)  # an unknown key is named, not fatal
    assert "sampler" in caplog.text and "known: steps, true_cfg_scale, area, keep_unedited" in caplog.text


def test_the_writer_and_the_reader_agree_and_the_shipped_file_is_what_the_writer_writes() -> None:
    from firered_core.default import MODEL_DIR
    from firered_core.preserve import PreserveConfig

    for defaults in (DEFAULTS, ModelDefaults(), ModelDefaults(keep_unedited=PreserveConfig(dilate=3), area=64),
                     ModelDefaults(steps=10, true_cfg_scale=1.0, area=4096, keep_unedited=PreserveConfig())):
        assert ModelDefaults.from_dict(json.loads(defaults.to_json())) == defaults
    shipped = MODEL_DIR / "defaults.json"
    if shipped.is_file():
        assert read_model_defaults(MODEL_DIR).to_json() == shipped.read_text(encoding="utf-8")


def test_a_folder_written_with_the_old_key_loads_with_it_on(parts: dict[str, Path], tmp_path: Path) -> None:
    """The embedded default of older installs (and folders exported before the rename) say preserve_unedited."""
    from firered_core.preserve import PreserveConfig

    out = export_default(parts["transformer"], parts["vae"], tmp_path / "model", defaults=DEFAULTS)
    (out / "defaults.json").write_text(json.dumps({"steps": 2, "area": 4096, "preserve_unedited": True}))
    pipe = FireRedEditPipeline.from_pretrained(out)
    assert pipe.keep_unedited == PreserveConfig() and pipe.default_steps == 2


def test_the_command_can_turn_keep_unedited_on(parts: dict[str, Path], tmp_path: Path) -> None:
    """``firered export-default --keep-unedited`` writes it into defaults.json (the older --preserve-unedited
    too); a folder loaded through the benchmark's --model then keeps Picture 1's pixels outside the edit;
    without the flag the key is absent."""
    import argparse

    from firered_core.preserve import PreserveConfig
    from firered_train.export.default_model import register_export_default
    from firered_bench.evaluate.bench import _pipeline

    parser = argparse.ArgumentParser()
    run = register_export_default(parser)
    common = ["--transformer", str(parts["transformer"]), "--vae", str(parts["vae"])]
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "on"), "--keep-unedited"])) == 0
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "old"), "--preserve-unedited"])) == 0
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "off")])) == 0
    for on in ("on", "old"):
        assert json.loads((tmp_path / on / "defaults.json").read_text())["keep_unedited"] is True
        assert _pipeline(str(tmp_path / on)).keep_unedited == PreserveConfig()
    assert "keep_unedited" not in json.loads((tmp_path / "off" / "defaults.json").read_text())
    assert _pipeline(str(tmp_path / "off")).keep_unedited is None


def test_the_command_can_make_the_stochastic_sampler_the_default(parts: dict[str, Path], tmp_path: Path) -> None:
    """``--sampler stochastic`` (the older ``--stochastic-sampling`` too) goes into the folder's scheduler config
    as diffusers' ``stochastic_sampling``, which the loader (and diffusers) read."""
    import argparse

    from firered_train.export.default_model import register_export_default
    from firered_bench.evaluate.bench import _pipeline

    parser = argparse.ArgumentParser()
    run = register_export_default(parser)
    common = ["--transformer", str(parts["transformer"]), "--vae", str(parts["vae"])]
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "on"), "--sampler", "stochastic"])) == 0
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "old"), "--stochastic-sampling"])) == 0
    assert run(parser.parse_args([*common, "--out", str(tmp_path / "off")])) == 0
    for on in ("on", "old"):
        config = json.loads((tmp_path / on / "scheduler" / "scheduler_config.json").read_text())
        assert config["stochastic_sampling"] is True
        assert _pipeline(str(tmp_path / on)).sampler_choice(None) == "stochastic"
    assert _pipeline(str(tmp_path / "off")).scheduler_config.stochastic_sampling is False
