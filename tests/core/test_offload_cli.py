"""``firered edit --offload/--max-vram`` and ``from_pretrained(..., offload=...)``: the flags reach the pipeline, the
output does not change, and bad values exit 2 with one line (before any weights are read when the value alone is
wrong; after loading when the model is too big for the budget)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core.offload import GB, OffloadPlacement
from firered_core.pipeline import FireRedEditPipeline
from tests.core.test_cli import _assert_one_line_error, _edit, _run, _write_rgb
from tests.core.test_pipeline_parity import full_folder  # noqa: F401  (module fixture: tiny diffusers folder)


@pytest.fixture(autouse=True)
def _small_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """References VAE-encoded at ~64x64: the tiny VAE compresses 4x, 1024^2 would need tens of GB."""
    monkeypatch.setattr(FireRedEditPipeline, "reference_area", 64 * 64)


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every ``set_offload`` call's arguments; the real method still runs."""
    seen: list[tuple] = []
    real = FireRedEditPipeline.set_offload

    def spy(self: FireRedEditPipeline, offload: str | None, device=None, max_vram=None):  # noqa: ANN001, ANN202
        seen.append((offload, None if device is None else torch.device(device), max_vram))
        return real(self, offload, device=device, max_vram=max_vram)

    monkeypatch.setattr(FireRedEditPipeline, "set_offload", spy)
    return seen


def test_the_flags_reach_the_pipeline_and_change_no_pixel(full_folder, tmp_path: Path,  # noqa: F811
                                                          capsys: pytest.CaptureFixture[str],
                                                          calls: list[tuple]) -> None:
    image = _write_rgb(tmp_path / "in.png", 40, 48)
    runs = {"default": [], "blocks": ["--offload", "blocks"], "model": ["--offload", "model", "--max-vram", "0.5"]}
    pixels = {}
    for label, flags in runs.items():
        out = tmp_path / f"{label}.png"
        code, _, err = _run(_edit(full_folder.folder, [image], out, "--device", "cpu", *flags), capsys)
        assert code == 0, err
        pixels[label] = np.asarray(Image.open(out))
    cpu = torch.device("cpu")
    assert calls == [("none", cpu, None), ("blocks", cpu, None), ("model", cpu, int(0.5 * GB))]
    assert np.array_equal(pixels["default"], pixels["blocks"]) and np.array_equal(pixels["default"],
                                                                                   pixels["model"])


@pytest.mark.parametrize("flags,needle", [
    (["--offload", "fast"], "--offload must be one of none, model, blocks, got 'fast'"),
    (["--offload", "blocks", "--max-vram", "-2"], "--max-vram must be a positive number of GB, got '-2'"),
    (["--max-vram", "eight"], "--max-vram must be a number of GB, got 'eight'"),
    (["--offload", "model", "--max-vram", "nan"], "--max-vram must be a positive number of GB"),
])
def test_bad_values_exit_2_before_loading(flags: list[str], needle: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str], calls: list[tuple]) -> None:
    empty_model = tmp_path / "model"
    empty_model.mkdir()  # would fail to load: the flags must be refused first
    code, _, err = _run(_edit(empty_model, [_write_rgb(tmp_path / "in.png")], tmp_path / "o.png", *flags), capsys)
    assert code == 2
    _assert_one_line_error(err, needle)
    assert not calls


def test_a_budget_too_small_for_the_model_exits_2_naming_the_minimum(full_folder, tmp_path: Path,  # noqa: F811
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.png"
    code, _, err = _run(_edit(full_folder.folder, [], out, "--offload", "blocks", "--max-vram", "0.000001"), capsys)
    assert code == 2 and not out.exists()
    _assert_one_line_error(err, "too small for offload='blocks'", "at least", "GB")


def test_from_pretrained_with_offload(full_folder) -> None:  # noqa: F811
    resident = FireRedEditPipeline.from_pretrained(full_folder.folder)
    streamed = FireRedEditPipeline.from_pretrained(full_folder.folder, device="cpu", offload="blocks",
                                                   max_vram=GB // 2)
    assert isinstance(streamed.placement, OffloadPlacement) and streamed.placement.mode == "blocks"
    image = Image.fromarray(np.full((48, 40, 3), 120, dtype=np.uint8))
    a = resident.edit([image], "make it pop", steps=1, width=32, height=32, seed=3)
    b = streamed.edit([image], "make it pop", steps=1, width=32, height=32, seed=3)
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="max_vram needs an offload mode"):
        FireRedEditPipeline.from_pretrained(full_folder.folder, max_vram=GB)
    with pytest.raises(ValueError, match="offload must be one of"):
        FireRedEditPipeline.from_pretrained(full_folder.folder, offload="gpu")
