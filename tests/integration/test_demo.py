"""The README's first command: the embedded default model edits the shipped example, and bad input fails cleanly.

Every case runs the real ``firered edit`` command in a subprocess (``python -m firered_core``), the way
``scripts/demo.sh`` does, with the shipped weights in ``firered_core/default/model/``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firered_core.default import MODEL_DIR, is_available
from firered_core.loading import read_model_defaults
from firered_bench import check, generate, psnr
from firered_bench.generate.generator import GeneratorConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "input.png"
INSTRUCTION = (ROOT / "examples" / "instruction.txt").read_text(encoding="utf-8").strip() \
    if (ROOT / "examples" / "instruction.txt").is_file() else ""

pytestmark = pytest.mark.skipif(not is_available(), reason="the embedded default model is not in this checkout")


def _edit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "firered_core", "edit", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_example_edit_really_edits(tmp_path: Path) -> None:
    out = tmp_path / "result.png"
    done = _edit(str(EXAMPLE), "--instruction", INSTRUCTION, "-o", str(out), "--compare")
    assert done.returncode == 0, done.stderr
    result = Image.open(out).convert("RGB")
    source = Image.open(EXAMPLE).convert("RGB")
    assert result.size == source.size == (64, 64)
    assert (tmp_path / "result_compare.png").is_file()
    assert np.abs(np.asarray(result, float) - np.asarray(source, float)).mean() > 1.0  # something changed
    # the example is a held-out sample of the synthetic split: the model's edit must pass its success check
    sample = _example_sample()
    verdict = check(list(sample.sources), result, sample.spec, target=sample.target)
    assert verdict.passed, verdict.failures
    assert psnr(result, sample.target) > psnr(source, sample.target)


def _example_sample():  # noqa: ANN202 - the generator's sample type
    spec = (ROOT / "examples" / "sample.txt").read_text(encoding="utf-8").split()
    task, seed, index = spec[0], int(spec[1]), int(spec[2])
    samples = list(generate("heldout", index + 1, seed=seed, config=GeneratorConfig(tasks=(task,))))
    sample = samples[index]
    assert np.array_equal(np.asarray(sample.sources[0].convert("RGB")), np.asarray(Image.open(EXAMPLE).convert("RGB")))
    assert sample.instruction == INSTRUCTION
    return sample


def test_the_default_sampling_settings_are_shipped() -> None:
    tuned = read_model_defaults(MODEL_DIR)
    assert tuned.area == 64 * 64 and tuned.steps >= 1 and tuned.true_cfg_scale >= 1 and tuned.keep_unedited


@pytest.mark.parametrize("case", ["unreadable", "tiny", "huge", "empty_instruction", "missing"])
def test_bad_input_is_a_clear_error(tmp_path: Path, case: str) -> None:
    image, instruction = tmp_path / "in.png", "make the circle red"
    if case == "unreadable":
        image.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
        expect = "not an image"
    elif case == "tiny":
        Image.new("RGB", (1, 1), "white").save(image)
        expect = "too small"
    elif case == "huge":
        Image.new("1", (10000, 10000)).save(image)
        expect = "too large"
    elif case == "empty_instruction":
        Image.new("RGB", (64, 64), "white").save(image)
        instruction = "   "
        expect = "instruction is empty"
    else:
        expect = "does not exist"
    out = tmp_path / "out.png"
    done = _edit(str(image), "--instruction", instruction, "-o", str(out))
    assert done.returncode == 2, done.stderr
    assert expect in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_an_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"my precious file")
    done = _edit(str(EXAMPLE), "--instruction", INSTRUCTION, "-o", str(out), "--steps", "2")
    assert done.returncode == 2 and "exists" in done.stderr
    assert out.read_bytes() == b"my precious file"
    compare = tmp_path / "out_compare.png"
    compare.write_bytes(b"mine too")
    done = _edit(str(EXAMPLE), "--instruction", INSTRUCTION, "-o", str(tmp_path / "out.png"), "--compare",
                 "--overwrite", "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (64, 64) and compare.read_bytes() != b"mine too"
