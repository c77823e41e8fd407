"""The ``firered`` command line: every bad input gives exit code 2 and one clear line on stderr (no traceback),
an existing output is never touched without --overwrite, odd image modes are converted, and subcommands can be
plugged in through entry points. The end-to-end pixel parity of ``firered edit`` lives in
test_pipeline_parity.py; here a tiny model folder from the same builder is used for the happy paths."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firered_core import cli
from firered_core.cli import main, parse_lora, resolve_model
from tests.core.test_pipeline_parity import full_folder  # noqa: F401  (module fixture: tiny diffusers folder)

ROOT = Path(__file__).resolve().parents[2]


def _write_rgb(path: Path, width: int = 64, height: int = 96, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "expected an error message on stderr"
    assert "Traceback" not in err
    last = lines[-1]
    assert last.startswith("firered edit: error:"), err
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    return _write_rgb(tmp_path / "in.png")


@pytest.fixture()
def fake_model(tmp_path: Path) -> Path:
    """A model folder that exists, for tests that must fail before any weights are read."""
    folder = tmp_path / "model"
    folder.mkdir()
    return folder


# --- usage --------------------------------------------------------------------------------------------------------

def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run([], capsys)
    assert code == 2 and "edit" in err


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["paint"], capsys)
    assert code == 2 and "unknown command 'paint'" in err and "edit" in err


def test_missing_required_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["edit", "in.png"])
    assert exc.value.code == 2
    assert "--instruction" in capsys.readouterr().err


# --- bad input, each exit 2 with one clear line ---------------------------------------------------------------------

def test_missing_model_without_default(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import firered_core.default as default

    monkeypatch.setattr(cli, "DEFAULT_MODEL_DIR", tmp_path / "no-default")
    monkeypatch.setattr(default, "MODEL_DIR", tmp_path / "no-default")
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2
    _assert_one_line_error(err, "no --model given", "embedded default model is not installed")


def test_missing_model_path(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    _assert_one_line_error(err, "--model", "nowhere", "does not exist")


def test_empty_instruction(image: Path, fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(image), "--instruction", "   ", "-o", str(tmp_path / "o.png"),
                         "--model", str(fake_model)], capsys)
    assert code == 2
    _assert_one_line_error(err, "--instruction is empty")


def test_missing_image(fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(tmp_path / "ghost.png"), "--instruction", "x", "-o",
                         str(tmp_path / "o.png"), "--model", str(fake_model)], capsys)
    assert code == 2
    _assert_one_line_error(err, "ghost.png", "does not exist")


def test_empty_image(fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    code, _, err = _run(["edit", str(empty), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(fake_model)], capsys)
    assert code == 2
    _assert_one_line_error(err, "empty.png", "empty (0 bytes)")


def test_huge_image(fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.core.test_images import _png_header_only

    bomb = tmp_path / "huge.png"
    _png_header_only(bomb, 30_000, 30_000)
    code, _, err = _run(["edit", str(bomb), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(fake_model)], capsys)
    assert code == 2
    _assert_one_line_error(err, "huge.png", "too large")


def test_not_an_image(fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "photo.jpg"
    text.write_text("not really a photo")
    code, _, err = _run(["edit", str(text), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(fake_model)], capsys)
    assert code == 2
    _assert_one_line_error(err, "photo.jpg", "not an image")


def test_existing_output_untouched(image: Path, fake_model: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.png"
    out.write_bytes(b"precious")
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(out), "--model", str(fake_model)],
                        capsys)
    assert code == 2
    _assert_one_line_error(err, "o.png", "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"


def test_bad_output_extension(image: Path, fake_model: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(tmp_path / "o.txt"),
                         "--model", str(fake_model)], capsys)
    assert code == 2
    _assert_one_line_error(err, "o.txt", "extension")


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--width", "-5"), ("--seed", "-1")])
def test_bad_numbers(image: Path, fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                     flag: str, value: str) -> None:
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(fake_model), flag, value], capsys)
    assert code == 2
    _assert_one_line_error(err, flag)


def test_missing_lora(image: Path, fake_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(fake_model), "--lora", str(tmp_path / "style.safetensors:0.5")], capsys)
    assert code == 2
    _assert_one_line_error(err, "--lora", "style.safetensors", "does not exist")


def test_pickle_model_file(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("firered_core.loading")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"transformer_blocks.0.attn.to_q.weight": [0.0]}))
    code, _, err = _run(["edit", str(image), "--instruction", "x", "-o", str(tmp_path / "o.png"),
                         "--model", str(ckpt)], capsys)
    assert code == 2
    _assert_one_line_error(err, "model.ckpt")
    assert not (tmp_path / "o.png").exists()


# --- happy paths on the tiny model ---------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _small_references(monkeypatch: pytest.MonkeyPatch) -> None:
    """VAE-encode references at ~64x64 instead of 1024^2: the tiny VAE's full-resolution attention would need
    tens of GB at 1024^2 (the released VAE compresses 8x, not 4x)."""
    from firered_core.pipeline import FireRedEditPipeline

    monkeypatch.setattr(FireRedEditPipeline, "reference_area", 64 * 64)


def _edit(folder: Path, images: list[Path], out: Path, *extra: str) -> list[str]:
    return ["edit", *map(str, images), "--instruction", "make it pop", "--model", str(folder), "--steps", "1",
            "--width", "32", "--height", "32", "--seed", "3", "-o", str(out), *extra]


def test_odd_image_modes_are_converted(full_folder, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    deep = tmp_path / "deep.png"
    Image.fromarray(np.linspace(0, 65535, 40 * 48).reshape(48, 40).astype(np.uint16)).save(deep)
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((48, 40), 90, dtype=np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((48, 40, 4), (200, 10, 10, 100), dtype=np.uint8), mode="RGBA").save(rgba)
    for src in (deep, gray, rgba):
        out = tmp_path / f"out-{src.stem}.png"
        code, stdout, err = _run(_edit(full_folder.folder, [src], out), capsys)
        assert code == 0, err
        assert f"wrote {out}" in stdout
        assert Image.open(out).mode == "RGB" and Image.open(out).size == (32, 32)


def test_text_to_image_overwrite_and_metadata(full_folder, tmp_path: Path,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    out = tmp_path / "t2i.png"
    out.write_bytes(b"old")
    code, _, err = _run(_edit(full_folder.folder, [], out, "--overwrite"), capsys)
    assert code == 0, err
    meta = json.loads(Image.open(out).text["firered"])
    assert meta["instruction"] == "make it pop" and meta["seed"] == 3 and meta["steps"] == 1
    assert meta["sampler"] == "euler" and meta["keep_unedited"] is False  # what ran: the folder's own
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2i.png"]  # no temp file left
    code, _, err = _run(_edit(full_folder.folder, [], out, "--overwrite", "--stochastic-sampling"), capsys)
    assert code == 0, err
    assert json.loads(Image.open(out).text["firered"])["sampler"] == "stochastic"  # the older flag still works


def _tiny_lora(path: Path, transformer_dim: int = 32, rank: int = 2) -> Path:
    from safetensors.torch import save_file

    gen = np.random.default_rng(0)
    tensors = {}
    for block in range(2):
        for layer in ("to_q", "to_v", "add_k_proj"):
            base = f"diffusion_model.transformer_blocks.{block}.attn.{layer}"
            tensors[f"{base}.lora_down.weight"] = gen.normal(0, 0.5, (rank, transformer_dim)).astype(np.float32)
            tensors[f"{base}.lora_up.weight"] = gen.normal(0, 0.5, (transformer_dim, rank)).astype(np.float32)
    import torch

    save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, str(path))
    return path


def test_lora_strength(full_folder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    image = _write_rgb(tmp_path / "in.png", 40, 48)
    lora = _tiny_lora(tmp_path / "style.safetensors")
    outs = {}
    for label, extra in (("none", []), ("zero", ["--lora", f"{lora}:0"]), ("full", ["--lora", f"{lora}:1.5"])):
        outs[label] = tmp_path / f"{label}.png"
        code, _, err = _run(_edit(full_folder.folder, [image], outs[label], *extra), capsys)
        assert code == 0, err
    pixels = {k: np.asarray(Image.open(v)).astype(int) for k, v in outs.items()}
    assert np.array_equal(pixels["none"], pixels["zero"])
    assert np.abs(pixels["none"] - pixels["full"]).max() > 0


# --- argument helpers ---------------------------------------------------------------------------------------------

def test_keep_unedited_and_sampler_flags_and_their_older_names() -> None:
    """``--[no-]keep-unedited`` and ``--sampler``; the names before the rename still parse, hidden from the help."""
    from firered_core.sampler import SAMPLERS

    parser = argparse.ArgumentParser()
    cli.register_edit(parser)

    def parse(*flags: str) -> argparse.Namespace:
        return parser.parse_args(["--instruction", "x", "-o", "o.png", *flags])

    assert (parse().keep_unedited, parse().sampler) == (None, None)  # the model's own
    for flags, keep in ((["--keep-unedited"], True), (["--no-keep-unedited"], False),
                        (["--preserve-unedited"], True), (["--no-preserve-unedited"], False)):
        assert parse(*flags).keep_unedited is keep
    for flags, sampler in ((["--sampler", "euler"], "euler"), (["--sampler=stochastic"], "stochastic"),
                           (["--stochastic-sampling"], "stochastic"), (["--no-stochastic-sampling"], "euler")):
        assert parse(*flags).sampler == sampler
    with pytest.raises(SystemExit):
        parse("--sampler", "ddim")
    text = parser.format_help()
    assert "--keep-unedited" in text and "--sampler {euler,stochastic}" in text
    assert "preserve-unedited" not in text and "stochastic-sampling" not in text
    assert cli.SAMPLERS == SAMPLERS


def test_the_offload_names_the_cli_checks_without_torch_are_the_offload_packages() -> None:
    from firered_core import offload

    assert (cli.OFFLOAD_MODES, cli.GB) == (offload.OFFLOAD_MODES, offload.GB)


def test_the_benchmark_takes_the_same_flags_and_their_older_names() -> None:
    from firered_bench.evaluate.bench import register_bench

    parser = argparse.ArgumentParser()
    register_bench(parser)
    args = parser.parse_args(["synthetic", "--no-preserve-unedited", "--stochastic-sampling"])
    assert (args.keep_unedited, args.sampler) == (False, "stochastic")
    args = parser.parse_args(["synthetic", "--keep-unedited", "--sampler", "euler"])
    assert (args.keep_unedited, args.sampler) == (True, "euler")


def test_parse_lora(tmp_path: Path) -> None:
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    assert parse_lora(str(f)) == (f, 1.0)
    assert parse_lora(f"{f}:0.75") == (f, 0.75)
    assert parse_lora(f"{f}:-1") == (f, -1.0)


def test_resolve_model(tmp_path: Path) -> None:
    a, b = tmp_path / "t.safetensors", tmp_path / "v.safetensors"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    assert resolve_model([str(tmp_path)]) == tmp_path
    assert resolve_model([f"{a},{b}"]) == [a, b]
    assert resolve_model([str(a), str(b)]) == [a, b]
    with pytest.raises(ValueError, match="folder"):
        resolve_model([str(tmp_path), str(a)])


# --- plug-in subcommands ------------------------------------------------------------------------------------------

def _register_hello(parser: argparse.ArgumentParser):
    parser.add_argument("--name", default="world")

    def run(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 0
    return run


def test_entry_point_subcommand(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ep = importlib.metadata.EntryPoint(name="hello", value=f"{__name__}:_register_hello", group=cli.ENTRY_POINT_GROUP)
    monkeypatch.setattr(cli, "_entry_points", lambda: {"hello": ep})
    code, out, _ = _run(["hello", "--name", "firered"], capsys)
    assert code == 0 and out.strip() == "hello firered"
    code, _, err = _run([], capsys)
    assert "hello" in err  # listed in the help without being imported


def test_python_dash_m_works(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "firered_core", "edit", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "--instruction" in proc.stdout


def _register_cancelled(parser: argparse.ArgumentParser):
    from firered_core.progress import Cancelled

    def run(args: argparse.Namespace) -> int:
        raise Cancelled("euler_sample before step 2/3: cancelled by the caller")
    return run


def _register_bug(parser: argparse.ArgumentParser):
    def run(args: argparse.Namespace) -> int:
        raise RuntimeError("internal bug")
    return run


def test_cancel_exits_130_and_bugs_keep_their_traceback(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    eps = {name: importlib.metadata.EntryPoint(name=name, value=f"{__name__}:{func}", group=cli.ENTRY_POINT_GROUP)
           for name, func in (("stop", "_register_cancelled"), ("bug", "_register_bug"))}
    monkeypatch.setattr(cli, "_entry_points", lambda: eps)
    code, _, err = _run(["stop"], capsys)
    assert code == 130 and "interrupted" in err
    with pytest.raises(RuntimeError, match="internal bug"):
        main(["bug"])


# --- rejected early: before torch, before any model work ------------------------------------------------------------

@pytest.mark.parametrize("width,needles", [
    ("13", ("--width=13", "multiples of 8 px from 8 to 8192", "nearest: 8 or 16")),  # the embedded model: 8-px tokens
    ("8192", ("--width=8192 at the reference aspect 0.667", "gives 8192x12288", "limit of 8192 px")),  # 64x96 image
])
def test_a_width_the_model_cannot_make_is_refused_saying_why(image: Path, tmp_path: Path, width: str,
                                                             needles: tuple[str, ...],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(image), "-p", "x", "-o", str(tmp_path / "o.png"), "--width", width], capsys)
    assert code == 2
    _assert_one_line_error(err, *needles)
    assert not (tmp_path / "o.png").exists()


def test_a_bad_width_is_refused_without_importing_torch(image: Path, tmp_path: Path) -> None:
    code = ("import sys, time; start = time.perf_counter(); from firered_core.cli import main; "
            f"c = main(['edit', {str(image)!r}, '-p', 'x', '-o', {str(tmp_path / 'o.png')!r}, '--width', '13']); "
            "print(c, 'torch' in sys.modules, time.perf_counter() - start)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    exit_code, torch_loaded, seconds = done.stdout.split()
    assert (exit_code, torch_loaded) == ("2", "False"), done.stderr
    assert "--width=13" in done.stderr
    assert float(seconds) < 1.5, wall  # ~0.2 s here (0.35 s with the interpreter); it took 9-13 s with torch


def test_an_unwritable_output_folder_is_refused_before_the_model(image: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):  # root writes anywhere but where the kernel says no, as in /sys
        folder = Path("/sys")
    code, _, err = _run(["edit", str(image), "-p", "x", "-o", str(folder / "o.png"), "--model",
                         str(tmp_path / "missing")], capsys)
    assert code == 2
    _assert_one_line_error(err, "output folder", "is not writable")


def test_float16_is_refused_saying_why(image: Path, fake_model: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["edit", str(image), "-p", "x", "-o", str(tmp_path / "o.png"), "--model", str(fake_model),
                         "--dtype", "float16"], capsys)
    assert code == 2
    _assert_one_line_error(err, "--dtype must be one of float32, bfloat16", "overflows in float16")


def test_help_names_the_models_default_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    out = capsys.readouterr().out
    assert "1024^2" not in out and "the model's default area" in out


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_images_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from firered_core.images import save_image

    old = os.umask(umask)
    try:
        out = save_image(Image.new("RGB", (16, 16)), tmp_path / "o.png")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_steps_far_above_the_models_range_warn(full_folder, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    from firered_core.pipeline import FireRedEditPipeline

    pipe = FireRedEditPipeline.from_pretrained(full_folder.folder)
    pipe.default_steps = 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="firered_core.pipeline"):
        pipe.edit([], "a red square", steps=8, width=32, height=32)
    assert "useful range" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="firered_core.pipeline"):
        pipe.edit([], "a red square", steps=9, width=32, height=32)
    assert "steps=9 is far above this model's useful range (1-8, 4x its default of 2)" in caplog.text
