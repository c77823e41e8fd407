"""PixelVAE (the lossless space-to-depth autoencoder of preset firered-pixel) and its statistics-only VAE run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from firered_core.compact_vae import create_vae
from firered_core.config import PixelVAEConfig, get_preset
from firered_core.loading import save_component_folder
from firered_core.loading.diffusers_folder import load_vae_dir
from firered_core.pixel_vae import PixelVAE
from firered_train.config import load_config
from firered_train.model.components import load_trained_vae
from firered_train.loop.vae_trainer import VAETrainer

from ..train_fixtures import make_pairs

MEAN = tuple(0.1 * (i % 3) for i in range(12))
STD = tuple(0.5 + 0.05 * i for i in range(12))
CFG = PixelVAEConfig(factor=2, latents_mean=MEAN, latents_std=STD)


def test_round_trip_is_lossless_and_latents_are_the_pixels() -> None:
    vae = PixelVAE(CFG)
    x = torch.rand(2, 3, 8, 12) * 2 - 1
    raw = vae.encode_raw(x)
    assert raw.shape == (2, 12, 4, 6) and vae.z_dim == 12 and vae.spatial_compression == 2
    # channel c * 4 + i * 2 + j of latent (y, x) is colour c of pixel (2y + i, 2x + j)
    assert raw[1, 2 * 4 + 1 * 2 + 0, 3, 5] == x[1, 2, 7, 10]
    z = vae.encode(x)
    std = torch.tensor(STD).view(1, 12, 1, 1)
    torch.testing.assert_close(z, (raw - torch.tensor(MEAN).view(1, 12, 1, 1)) / std)
    torch.testing.assert_close(vae.decode(z), x, atol=1e-6, rtol=0)
    assert vae.decode(z * 10).abs().max() <= 1  # decode clamps like every VAE of the project
    assert list(vae.parameters()) == [] and vae.state_dict() == {}


def test_bad_shapes_and_configs_are_refused() -> None:
    vae = PixelVAE(CFG)
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 7, 8))
    with pytest.raises(ValueError, match=r"expected images \[B, 3"):
        vae.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="expected latents"):
        vae.decode(torch.zeros(1, 48, 4, 4))
    with pytest.raises(Exception, match="latents_mean"):
        PixelVAEConfig(factor=2)  # the default statistics are for 48 channels (factor 4)
    with pytest.raises(Exception, match="factor"):
        PixelVAEConfig(factor=0)
    with pytest.raises(Exception, match="latents_std"):
        PixelVAEConfig(factor=2, latents_mean=MEAN, latents_std=(0.0,) * 12)
    with pytest.raises(TypeError, match="PixelVAEConfig"):
        PixelVAE(get_preset("firered-default").vae)  # type: ignore[arg-type]


def test_preset_and_folder_round_trip(tmp_path: Path) -> None:
    preset = get_preset("firered-pixel")
    assert isinstance(create_vae(preset.vae), PixelVAE)
    assert preset.transformer.in_channels == preset.vae.z_dim * preset.transformer.patch_size ** 2
    assert preset.transformer.out_channels == preset.vae.z_dim
    data = CFG.to_dict()
    assert data["_class_name"] == "FireRedPixelVAE" and PixelVAEConfig.from_dict(data) == CFG
    save_component_folder(PixelVAE(CFG), tmp_path / "model" / "vae")
    assert load_file(str(tmp_path / "model" / "vae" / "diffusion_pytorch_model.safetensors")) == {}
    loaded = load_vae_dir(tmp_path / "model")
    assert isinstance(loaded, PixelVAE) and loaded.config == CFG
    assert isinstance(load_trained_vae(str(tmp_path / "model" / "vae")), PixelVAE)


def test_vae_run_only_measures_statistics(recipes_dir: Path, tmp_path: Path) -> None:
    make_pairs(tmp_path / "pairs", 8)
    cfg = load_config(recipes_dir / "default_model" / "01_vae.yaml",
                      [f"--data.path={tmp_path / 'pairs'}", "--data.reader=folder", "--model.preset=firered-pixel",
                       f"--output_dir={tmp_path / 'run'}", "--vae.stats_images=6", "--vae.val_images=2"])
    trainer = VAETrainer(cfg)
    result = trainer.run()
    assert result.steps == 0 and trainer.optimizer is None
    assert result.val_psnr is not None and result.val_psnr > 100  # lossless: only float rounding is left
    report = json.loads((tmp_path / "run" / "export" / "vae_report.json").read_text())
    # the statistics are those of the pixels: every latent channel is one colour at one place in a 4x4 block
    pixels = torch.cat([trainer.vae.encode_raw(trainer._open(i)[None]).flatten(2) for i in range(6)], dim=2)[0]
    torch.testing.assert_close(torch.tensor(report["latents_mean"]), pixels.mean(1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(report["latents_std"]), pixels.std(1), atol=1e-5, rtol=0)
    exported = load_trained_vae(str(tmp_path / "run" / "export"))
    assert isinstance(exported, PixelVAE) and list(exported.config.latents_mean) == report["latents_mean"]
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_a_pixel_model_exports_and_edits(tmp_path: Path) -> None:
    from PIL import Image

    from firered_core.loading.save import write_safetensors
    from firered_core.pipeline import FireRedEditPipeline
    from firered_core.transformer import FireRedTransformer
    from firered_train.export.default_model import export_default
    from firered_bench.evaluate.bench import vae_round_trip

    torch.manual_seed(0)
    preset = get_preset("firered-pixel")
    write_safetensors(tmp_path / "transformer.safetensors", FireRedTransformer(preset.transformer).state_dict())
    save_component_folder(PixelVAE(preset.vae), tmp_path / "vae_run" / "vae")
    out = export_default(tmp_path / "transformer.safetensors", tmp_path / "vae_run", tmp_path / "model",
                         defaults={"steps": 2, "true_cfg_scale": 1.0, "area": 4096}, preset="firered-pixel")
    pipe = FireRedEditPipeline.from_pretrained(out)
    assert isinstance(pipe.vae, PixelVAE)
    with pytest.raises(ValueError, match="does not fit preset 'firered-default'"):
        export_default(tmp_path / "transformer.safetensors", tmp_path / "vae_run", tmp_path / "other", defaults={})
    write_safetensors(tmp_path / "latent.safetensors",
                      FireRedTransformer(get_preset("firered-default").transformer).state_dict())
    with pytest.raises(ValueError, match="48 latent channels but the transformer of preset 'firered-default'"):
        export_default(tmp_path / "latent.safetensors", tmp_path / "vae_run", tmp_path / "other", defaults={})
    assert not (tmp_path / "other").exists()
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    image.paste((20, 40, 220), (8, 8, 30, 20))
    assert vae_round_trip(pipe.vae, image).tobytes() == image.tobytes()  # the benchmark's ceiling: exact
    result = pipe.edit([image], "make the background blue", steps=2, seed=0, width=64, height=64)
    assert result.image.size == (64, 64)
