"""CompactVAE (the embedded default's VAE) and the VAE training run (``target: vae``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from firered_core.compact_vae import CompactVAE, create_vae
from firered_core.config import CompactVAEConfig, VAEConfig, get_preset
from firered_core.loading import save_component_folder
from firered_core.loading.diffusers_folder import load_vae_dir
from firered_core.vae import FireRedVAE
from firered_train.state.checkpoint import list_checkpoints
from firered_train.config import load_config
from firered_train.model.components import load_trained_vae
from firered_train.loop.vae_trainer import VAETrainer, psnr_db

from ..train_fixtures import make_pairs

CFG = CompactVAEConfig(base_dim=8, z_dim=4, levels=2, latents_mean=(0.1, -0.2, 0.3, 0.0),
                       latents_std=(1.5, 0.8, 1.2, 1.0))


def test_interface_matches_the_qwen_vae() -> None:
    vae = CompactVAE(CFG)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z = vae.encode(x)
    assert z.shape == (2, 4, 8, 12) and vae.spatial_compression == 4 and vae.z_dim == 4
    torch.testing.assert_close(vae.normalize(vae.encode_raw(x)), z)
    torch.testing.assert_close(vae.denormalize(z), vae.encode_raw(x), atol=1e-6, rtol=1e-6)
    out = vae.decode(z)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="multiples of 4"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match="expected latents"):
        vae.decode(torch.zeros(1, 5, 8, 8))
    assert isinstance(create_vae(CFG), CompactVAE)
    assert isinstance(create_vae(get_preset("tiny").vae), FireRedVAE)
    assert isinstance(get_preset("firered-default").vae, CompactVAEConfig)


def test_config_checks_and_round_trip() -> None:
    with pytest.raises(Exception, match="latents_mean"):
        CompactVAEConfig(z_dim=3)
    with pytest.raises(Exception, match="levels"):
        dataclasses.replace(CFG, levels=0)
    data = CFG.to_dict()
    assert data["_class_name"] == "FireRedCompactVAE"
    assert CompactVAEConfig.from_dict(data) == CFG
    assert not isinstance(VAEConfig(), CompactVAEConfig)


def test_folder_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = CompactVAE(CFG)
    save_component_folder(vae, tmp_path / "model" / "vae")
    with pytest.raises(FileExistsError):
        save_component_folder(vae, tmp_path / "model" / "vae")
    assert json.loads((tmp_path / "model" / "vae" / "config.json").read_text())["_class_name"] == "FireRedCompactVAE"
    loaded = load_vae_dir(tmp_path / "model")
    assert isinstance(loaded, CompactVAE) and loaded.config == CFG
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), vae.decode(vae.encode(x)), atol=0, rtol=0)
    # model.vae_weights accepts the export folder, a diffusers folder or the vae/ folder itself
    for path in (tmp_path / "model", tmp_path / "model" / "vae"):
        assert isinstance(load_trained_vae(str(path)), CompactVAE)
    with pytest.raises(FileNotFoundError, match="vae_weights"):
        load_trained_vae(str(tmp_path / "missing"))


@pytest.fixture
def vae_step(recipes_dir: Path) -> Path:
    """The embedded default's VAE run (step 1 of its recipe), the VAE training config these tests vary."""
    return recipes_dir / "default_model" / "01_vae.yaml"


def _vae_cfg(config: Path, tmp_path: Path, steps: int, extra: tuple[str, ...] = ()):  # noqa: ANN202
    make_pairs(tmp_path / "pairs", 12)
    (tmp_path / "pairs" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "pairs" / "broken_target.png").write_bytes(b"not a png either")
    (tmp_path / "pairs" / "broken.txt").write_text("make it blue")
    return load_config(config, [f"--data.path={tmp_path / 'pairs'}", "--data.reader=folder",
                                f"--output_dir={tmp_path / 'run'}", f"--schedule.max_steps={steps}",
                                "--optim.warmup_steps=1", "--vae.batch_size=4", "--vae.crop=16",
                                "--vae.stats_images=8", "--vae.val_images=4", "--checkpoint.every_steps=3",
                                "--logging.every_steps=1", *extra])


def test_vae_run_learns_exports_and_resumes_exactly(vae_step: Path, tmp_path: Path) -> None:
    cfg = _vae_cfg(vae_step, tmp_path, steps=6)
    first = VAETrainer(cfg)
    assert first.skips.total >= 1  # the broken pair is counted and skipped, never fatal
    before = first.validate()
    result = first.run()
    assert result.steps == 6 and result.exported == [tmp_path / "run" / "export" / "vae"]
    assert result.val_psnr is not None and result.val_psnr > before  # it learns
    report = json.loads((tmp_path / "run" / "export" / "vae_report.json").read_text())
    assert len(report["latents_std"]) == 16 and all(s > 0 for s in report["latents_std"])
    exported = load_trained_vae(str(tmp_path / "run" / "export"))
    assert exported.config.latents_mean == tuple(report["latents_mean"])
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")] == [3, 6]

    # resumed from the step-3 checkpoint, the run ends bitwise equal to the uninterrupted one
    step3 = tmp_path / "run" / "checkpoints" / "step-000003"
    resumed = VAETrainer(dataclasses.replace(cfg, output_dir=str(tmp_path / "resumed"),
                                             checkpoint=dataclasses.replace(cfg.checkpoint, resume=str(step3))))
    resumed.run()
    for (name, a), b in zip(first.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), name


def test_batches_depend_on_seed_and_step_only(vae_step: Path, tmp_path: Path) -> None:
    trainer = VAETrainer(_vae_cfg(vae_step, tmp_path, steps=2))
    assert torch.equal(trainer.batch(5), trainer.batch(5))
    assert not torch.equal(trainer.batch(5), trainer.batch(6))
    assert trainer.batch(0).shape == (4, 3, 16, 16)


def test_psnr_db_on_levels() -> None:
    a = -torch.ones(1, 3, 4, 4)  # level 0
    assert torch.isfinite(psnr_db(a, a)).all()  # identical images: a large finite value
    b = a + 2 / 255  # level 1 everywhere: MSE 1
    assert abs(float(psnr_db(a, b)) - 10 * torch.log10(torch.tensor(255.0 ** 2 / 1.0)).item()) < 0.2


def _reference_psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The hand-written per-image PSNR that ``kornia.metrics.psnr`` replaced."""
    to_levels = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    mse = (to_levels(a) - to_levels(b)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-10))


def test_psnr_db_is_the_formula_it_replaced() -> None:
    """Same float32 arithmetic (kornia also forms 255^2 / MSE and its log10); only the MSE's sum may run in
    another order, which matters once a sum of squared 8-bit differences passes 2**24: at most one float32 ulp of
    the dB value (2**-23 relative). Identical images give the same capped 148.13 dB, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    for size, noise in ((16, 0.02), (64, 0.1), (128, 0.3), (256, 0.3)):
        a = torch.rand(3, 3, size, size, generator=gen) * 2 - 1
        b = a + noise * torch.randn(a.shape, generator=gen)
        b[1] = a[1]  # one identical pair in the batch
        got, want = psnr_db(a, b), _reference_psnr_db(a, b)
        assert got.shape == want.shape == (3,) and torch.equal(got[1], want[1])
        assert torch.allclose(got, want, rtol=2**-23, atol=0)


def test_bad_vae_section_names_the_key(vae_step: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="vae.batch_size"):
        load_config(vae_step, ["--vae.batch_size=0"])
    with pytest.raises(Exception, match="target"):
        load_config(vae_step, ["--target=decoder"])
    make_pairs(tmp_path / "wide", 2, size=(64, 32))
    cfg = load_config(vae_step, [f"--data.path={tmp_path / 'wide'}", "--data.reader=folder",
                                 f"--output_dir={tmp_path / 'run'}", "--vae.crop=48", "--vae.val_images=0"])
    with pytest.raises(ValueError, match="vae.crop"):
        VAETrainer(cfg).batch(0)


def test_decoder_only_run_keeps_the_latents_exactly(vae_step: Path, tmp_path: Path) -> None:
    """vae.train_parts: decoder continues an exported VAE with its encoder frozen: the latents (and the statistics
    they are normalised with) stay bitwise the same, so a transformer trained on them stays valid."""
    VAETrainer(_vae_cfg(vae_step, tmp_path, steps=3)).run()
    base = load_trained_vae(str(tmp_path / "run" / "export"))
    cfg = _vae_cfg(vae_step, tmp_path, steps=4, extra=(f"--model.vae_weights={tmp_path / 'run' / 'export'}",
                                            "--vae.train_parts=decoder", f"--output_dir={tmp_path / 'decoder'}"))
    trainer = VAETrainer(cfg)
    names = {n for n, p in trainer.vae.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("decoder.") for n in names)
    assert sum(p.numel() for p in trainer.trainable) < sum(p.numel() for p in trainer.vae.parameters())
    result = trainer.run()
    tuned = load_trained_vae(str(tmp_path / "decoder" / "export"))
    assert tuned.config == base.config  # same latents_mean / latents_std
    x = trainer.batch(0)
    with torch.no_grad():
        assert torch.equal(tuned.encode(x), base.encode(x))
        assert not torch.equal(tuned.decode_raw(tuned.encode_raw(x)), base.decode_raw(base.encode_raw(x)))
    assert result.steps == 4


def test_decoder_only_needs_a_vae_to_start_from(vae_step: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="vae.train_parts"):
        load_config(vae_step, ["--vae.train_parts=encoder"])
    with pytest.raises(Exception, match="needs model.vae_weights"):
        VAETrainer(_vae_cfg(vae_step, tmp_path, steps=1, extra=("--vae.train_parts=decoder",)))
