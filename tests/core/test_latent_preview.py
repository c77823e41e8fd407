"""Latent previews: the least-squares fit recovers a known map, the table's shapes, file and errors, the sampler's
clean-latent hook, and the pipeline's preview hook and projection on the embedded default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from firered_core.default import is_available, load_default_pipeline
from firered_core.latent_preview import (
    PREVIEW_FILE,
    LatentPreview,
    downsample,
    fit_from_vae,
    fit_latent_preview,
    read_latent_preview,
)
from firered_core.sampler import euler_sample

needs_default = pytest.mark.skipif(not is_available(), reason="the embedded default model is not in this checkout")


def _known_map(channels: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(channels, 3, generator=generator) * 0.2, torch.tensor([0.1, -0.2, 0.3])


def _images_of(latents: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, factor: int) -> torch.Tensor:
    """Images whose every latent footprint averages to ``latents . weight + bias`` (a 0-mean pattern added)."""
    rgb = torch.einsum("nchw,cd->ndhw", latents, weight) + bias[None, :, None, None]
    up = rgb.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    checker = (torch.arange(up.shape[-1]) % 2 * 2 - 1).float() * 0.05  # +-0.05, averages to 0 per footprint
    return up + checker


def test_the_fit_recovers_a_known_linear_map_through_the_footprint_average() -> None:
    weight, bias = _known_map()
    latents = torch.randn(3, 16, 6, 5)
    table = fit_latent_preview(latents, _images_of(latents, weight, bias, 8), "known map")
    assert table.channels == 16 and table.fitted_on == "known map"
    assert torch.allclose(torch.tensor(table.factors), weight, atol=1e-6)
    assert torch.allclose(torch.tensor(table.bias), bias, atol=1e-6)
    assert table.rmse is not None and table.rmse < 1e-6


def test_the_fit_reports_the_error_it_cannot_explain() -> None:
    weight, bias = _known_map()
    latents = torch.randn(2, 16, 8, 8)
    images = _images_of(latents, weight, bias, 4)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.1
    table = fit_latent_preview(latents, images + noise.repeat_interleave(4, -2).repeat_interleave(4, -1))
    assert 0.07 < table.rmse < 0.11  # about the noise's 0.1, less the part 17 unknowns absorb


def test_apply_and_image_shapes_and_clamping() -> None:
    weight, bias = _known_map(4)
    table = LatentPreview(tuple(map(tuple, weight.tolist())), tuple(bias.tolist()))
    latents = torch.randn(2, 4, 7, 9, dtype=torch.bfloat16)
    rgb = table.apply(latents)
    assert rgb.shape == (2, 3, 7, 9) and rgb.dtype == torch.float32
    expected = torch.einsum("nchw,cd->ndhw", latents.float(), weight) + bias[None, :, None, None]
    assert torch.allclose(rgb, expected, atol=1e-6)
    image = table.image(latents)
    assert image.size == (9, 7) and image.mode == "RGB"
    white = LatentPreview(((0.0, 0.0, 0.0),) * 4, (5.0, -5.0, 0.0)).image(latents)
    assert white.getpixel((0, 0)) == (255, 0, 128)  # clamped to [-1, 1]; 0 is mid-grey
    with pytest.raises(ValueError, match=r"expected latents \[B, 4, h, w\], got \(2, 16, 7, 9\)"):
        table.apply(torch.zeros(2, 16, 7, 9))


def test_downsample_averages_footprints_and_refuses_partial_ones() -> None:
    images = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 3, 1, 1)
    assert downsample(images, (2, 2))[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    with pytest.raises(ValueError, match="not whole multiples of the latent grid 3x2"):
        downsample(images, (3, 2))


def test_the_fit_refuses_mismatched_or_too_few_pixels() -> None:
    with pytest.raises(ValueError, match="with the same N"):
        fit_latent_preview(torch.zeros(2, 16, 4, 4), torch.zeros(3, 3, 32, 32))
    with pytest.raises(ValueError, match="9 latent pixels cannot determine 17 unknowns"):
        fit_latent_preview(torch.zeros(1, 16, 3, 3), torch.zeros(1, 3, 24, 24))


def test_the_table_file_round_trips_and_bad_files_are_named(tmp_path: Path) -> None:
    weight, bias = _known_map()
    table = LatentPreview(tuple(map(tuple, weight.tolist())), tuple(bias.tolist()), 0.05, "test")
    path = table.save(tmp_path / PREVIEW_FILE)
    again = LatentPreview.load(path)
    assert torch.allclose(torch.tensor(again.factors), weight, atol=1e-6) and again.rmse == 0.05
    assert [p.name for p in tmp_path.iterdir()] == [PREVIEW_FILE]  # no temporary file left
    data = json.loads(path.read_text())
    for change, message in (({"format": 2}, "format must be 1"),
                            ({"factors": [[1.0, 2.0]]}, "one \\(r, g, b\\) row per latent channel"),
                            ({"bias": [0.0, float("nan"), 0.0]}, "finite numbers"),
                            ({"rmse": "small"}, "'rmse' must be a number")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**data, **change}))
        with pytest.raises(ValueError, match=f"bad.json: .*{message}"):
            LatentPreview.load(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        LatentPreview.load(bad)


def test_a_folder_table_is_found_only_in_its_vae_subfolder(tmp_path: Path) -> None:
    assert read_latent_preview(tmp_path) is None and read_latent_preview([tmp_path / "x.safetensors"]) is None
    (tmp_path / "vae").mkdir()
    LatentPreview(((1.0, 0.0, 0.0),), (0.0, 0.0, 0.0)).save(tmp_path / "vae" / PREVIEW_FILE)
    assert read_latent_preview(tmp_path).factors == ((1.0, 0.0, 0.0),)


def test_the_sampler_hands_the_clean_estimate_only_to_its_hook() -> None:
    clean = torch.randn(1, 4, 8)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # exact flow toward `clean`
        return (x - clean) / t[:, None, None]

    seen: list[tuple[int, int, torch.Tensor]] = []
    x = torch.randn(1, 4, 8)
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    out = euler_sample(velocity, x, sigmas, denoised=lambda s, n, x0: seen.append((s, n, x0)))
    assert [(s, n) for s, n, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(torch.allclose(x0, clean, atol=1e-5) and x0.dtype == torch.float32 for _, _, x0 in seen)
    assert torch.allclose(out, clean, atol=1e-5)
    assert torch.equal(euler_sample(velocity, x, sigmas), out)  # the hook changes nothing


@needs_default
def test_the_pipeline_previews_each_step_with_the_shipped_table() -> None:
    pipe = load_default_pipeline()
    table = pipe.preview_projection()
    assert table is pipe.latent_preview and "edits" in table.fitted_on  # vae/latent_preview.json, shipped
    seen: list[tuple[int, int, torch.Tensor]] = []
    result = pipe.edit([], "a red circle", steps=3, seed=0, sampler="euler", keep_unedited=False,
                       preview=lambda s, n, x0: seen.append((s, n, x0.clone())))
    assert [(s, n) for s, n, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(x0.shape == result.latents.shape for _, _, x0 in seen)
    # the last Euler step lands on its own clean estimate
    assert torch.allclose(seen[-1][2].cpu(), result.latents.float(), atol=1e-4)
    assert table.image(seen[-1][2]).size == (result.width // pipe.compression, result.height // pipe.compression)


@needs_default
def test_without_a_shipped_table_the_projection_is_fitted_once_from_the_vae() -> None:
    pipe = load_default_pipeline()
    pipe.latent_preview = LatentPreview(((1.0, 0.0, 0.0),) * 4, (0.0, 0.0, 0.0))  # the wrong channel count
    fitted = pipe.preview_projection()
    assert fitted.channels == 16 and "random" in fitted.fitted_on and fitted.rmse is not None
    assert pipe.preview_projection() is fitted  # kept
    again = fit_from_vae(pipe.vae)
    assert torch.allclose(torch.tensor(again.factors), torch.tensor(fitted.factors), atol=1e-9)  # seeded


def _fit_script():  # noqa: ANN202 - the script's module
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "fit_latent_preview.py"
    spec = importlib.util.spec_from_file_location("fit_latent_preview", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@needs_default
def test_the_fit_script_writes_a_table_the_pipeline_reads(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    script = _fit_script()
    out = tmp_path / PREVIEW_FILE
    assert script.main(["--samples", "2", "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted table, held out" in printed and "random-latent fallback, held out" in printed
    table = LatentPreview.load(out)
    assert table.channels == 16 and table.fitted_on.startswith("1 edits") and table.rmse > 0
    with pytest.raises(SystemExit):
        script.main(["--model", str(tmp_path), "--out", str(out)])  # no vae/ folder
    assert "not a diffusers-layout model folder" in capsys.readouterr().err
