"""``firered edit --size-mode match`` and ``--vae-ref-area`` / ``--cond-ref-area``: checked before torch is
imported, and on the tiny model folder the output has Picture 1's size and the areas reach the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firered_core.cli import main, parse_area
from tests.core.test_pipeline_parity import full_folder  # noqa: F401  (module fixture: tiny diffusers folder)

ROOT = Path(__file__).resolve().parents[2]


def _write_rgb(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def _small_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """References and automatic outputs at ~64x64: the tiny VAE's full-resolution attention needs tens of GB at
    1024^2."""
    from firered_core.pipeline import FireRedEditPipeline

    monkeypatch.setattr(FireRedEditPipeline, "reference_area", 64 * 64)
    monkeypatch.setattr(FireRedEditPipeline, "output_area", 64 * 64)


def test_parse_area() -> None:
    assert parse_area("--x", None) is None
    assert parse_area("--x", "4096") == 4096 and parse_area("--x", "1024x768") == 1024 * 768
    assert parse_area("--x", "384X384") == 384 * 384
    for bad in ("", "12x", "x12", "1.5", "-4", "2x3x4", "big"):
        with pytest.raises(ValueError, match="--x must be a number of pixels"):
            parse_area("--x", bad)


@pytest.mark.parametrize("flags, needle", [
    (["--size-mode", "match", "--width", "64"], "--size-mode match takes the output size from Picture 1"),
    (["--vae-ref-area", "100"], "--vae-ref-area must be an integer number of pixels from 1024 (32x32)"),
    (["--cond-ref-area", "9000x9000"], "--cond-ref-area must be an integer number of pixels"),
    (["--vae-ref-area", "wide"], "--vae-ref-area must be a number of pixels (e.g. 1048576) or WxH"),
])
def test_bad_settings_are_refused_without_importing_torch(tmp_path: Path, flags: list[str], needle: str) -> None:
    image = _write_rgb(tmp_path / "in.png", 50, 30)
    argv = ["edit", str(image), "-p", "x", "-o", str(tmp_path / "o.png"), *flags]
    code = f"import sys; from firered_core.cli import main; c = main({argv!r}); print(c, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o.png").exists()


def test_match_without_an_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edit", "-p", "x", "-o", str(tmp_path / "o.png"), "--size-mode", "match"]) == 2
    assert "--size-mode match follows Picture 1, but no image was given" in capsys.readouterr().err


def test_match_makes_picture_1s_size_and_the_areas_reach_the_pipeline(full_folder, tmp_path: Path,  # noqa: F811
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = _write_rgb(tmp_path / "in.png", 50, 30)
    common = ["edit", str(image), "-p", "make it pop", "--model", str(full_folder.folder), "--steps", "1",
              "--seed", "3"]
    outs = {}
    for name, flags in (("match", ["--size-mode", "match"]), ("area", []),
                        ("areas", ["--vae-ref-area", "32x32", "--cond-ref-area", "64x64"])):
        outs[name] = tmp_path / f"{name}.png"
        code = main([*common, "-o", str(outs[name]), *flags])
        assert code == 0, capsys.readouterr().err
    assert "wrote" in capsys.readouterr().out
    match = Image.open(outs["match"])
    assert match.size == (50, 30) and json.loads(match.text["firered"])["size_mode"] == "match"
    area = Image.open(outs["area"])
    assert area.size != (50, 30) and json.loads(area.text["firered"])["size_mode"] == "area"
    areas = Image.open(outs["areas"])
    assert areas.size == area.size and areas.tobytes() != area.tobytes()  # other reference areas, another result
