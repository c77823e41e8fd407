"""images.py: every bad input refused with a message naming the file, odd modes converted, and pixel parity with
diffusers' VaeImageProcessor (resize + normalise on the way in, denormalise + round on the way out)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from firered_core import images
from firered_core.images import (ImageError, calculate_dimensions, check_output_path, ensure_rgb, load_image,
                                 save_image, to_pil, to_tensor)


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` but holds (almost) no pixel data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


# --- refusals ---------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png.*empty \(0 bytes\)"):
        load_image(p)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("hello, I am text")
    with pytest.raises(ImageError, match=r"notes\.png.*not an image"):
        load_image(p)


def test_truncated_image(tmp_path: Path) -> None:
    p = tmp_path / "cut.png"
    _noise_image(64, 64).save(p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageError, match=r"cut\.png"):
        load_image(p)


def test_tiny_image(tmp_path: Path) -> None:
    p = tmp_path / "pixel.png"
    Image.new("RGB", (1, 1)).save(p)
    with pytest.raises(ImageError, match=r"pixel\.png.*too small: 1x1"):
        load_image(p)


@pytest.mark.parametrize("side", [20_000, 100_000])  # under and over Pillow's own bomb threshold
def test_huge_image_refused_before_decoding(tmp_path: Path, side: int) -> None:
    p = tmp_path / "bomb.png"
    _png_header_only(p, side, side)
    with pytest.raises(ImageError, match=r"bomb\.png.*too large"):
        load_image(p)


def test_pillow_bomb_error_becomes_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "big.png"
    _noise_image(64, 64).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow now refuses at 2000 px and warns above 1000
    with pytest.raises(ImageError, match=r"big\.png.*too large"):
        load_image(p)


# --- conversions --------------------------------------------------------------------------------------------------

def test_rgb_roundtrip(tmp_path: Path) -> None:
    p = tmp_path / "rgb.png"
    src = _noise_image(40, 24)
    src.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (40, 24)
    assert np.array_equal(np.asarray(out), np.asarray(src))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    p = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(p)
    out = np.asarray(load_image(p))
    assert out.shape == (32, 32, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert 120 <= out[16, 0, 0] <= 135  # mid-grey stays mid-grey (clipping would give 255)
    assert (out[..., 0] == out[..., 1]).all()


def test_grayscale_and_palette(tmp_path: Path) -> None:
    gray = Image.fromarray(np.full((20, 30), 77, dtype=np.uint8))
    gray.save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png"))[0, 0].tolist() == [77, 77, 77]
    pal = _noise_image(30, 20).convert("P")
    pal.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red-ish colour stored everywhere
    rgba[:10, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[-1, 0].tolist() == [255, 255, 255]


def test_gray_with_alpha(tmp_path: Path) -> None:
    la = Image.fromarray(np.full((20, 20, 2), (10, 0), dtype=np.uint8), mode="LA")
    la.save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png"))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = _noise_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").size == (20, 40)


def test_ensure_rgb_refuses_tiny_pil() -> None:
    with pytest.raises(ImageError, match="reference 2.*too small"):
        ensure_rgb(Image.new("RGB", (8, 64)), name="reference 2")


# --- sizing rule --------------------------------------------------------------------------------------------------

def _diffusers_calculate_dimensions():
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions as ref
    return ref


@pytest.mark.parametrize("size", [(1024, 1024), (64, 96), (96, 64), (1920, 1080), (1080, 1920), (500, 333),
                                  (4000, 3000), (37, 1000), (3000, 17), (777, 555)])
@pytest.mark.parametrize("area", [1024 * 1024, 384 * 384, 6144])
def test_calculate_dimensions_matches_diffusers(size: tuple[int, int], area: int) -> None:
    ref = _diffusers_calculate_dimensions()
    assert calculate_dimensions(area, size[0] / size[1]) == ref(area, size[0] / size[1])


def test_calculate_dimensions_values() -> None:
    assert calculate_dimensions(1024 * 1024, 1.0) == (1024, 1024)
    w, h = calculate_dimensions(1024 * 1024, 16 / 9)
    assert w % 32 == 0 and h % 32 == 0 and abs(w * h - 1024 * 1024) / (1024 * 1024) < 0.05
    with pytest.raises(ImageError, match="aspect"):
        calculate_dimensions(1024 * 1024, 0.0)
    with pytest.raises(ImageError, match="aspect"):
        calculate_dimensions(1024 * 1024, math.nan)


# --- tensor parity with VaeImageProcessor -------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [((64, 96), (64, 96)), ((97, 61), (64, 32)), ((50, 70), (128, 160))])
def test_to_tensor_matches_vae_image_processor(src: tuple[int, int], dst: tuple[int, int]) -> None:
    from diffusers.image_processor import VaeImageProcessor
    img = _noise_image(*src, seed=3)
    ref = VaeImageProcessor(vae_scale_factor=16).preprocess(img, dst[1], dst[0])
    ours = to_tensor(img, dst[0], dst[1])
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, dst[1], dst[0])
    assert torch.equal(ours, ref)


def test_to_pil_matches_vae_image_processor() -> None:
    from diffusers.image_processor import VaeImageProcessor
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 24, 40, generator=gen) * 0.7
    # values that land exactly on .5 after scaling test the rounding rule
    x[0, 0, 0, :4] = torch.tensor([(0.5 / 255) * 2 - 1, (1.5 / 255) * 2 - 1, -1.5, 1.5])
    ref = VaeImageProcessor(vae_scale_factor=16).postprocess(x, output_type="pil")[0]
    assert np.array_equal(np.asarray(to_pil(x)), np.asarray(ref))
    for dtype in (torch.bfloat16, torch.float16):
        ref = VaeImageProcessor(vae_scale_factor=16).postprocess(x.to(dtype), output_type="pil")[0]
        assert np.array_equal(np.asarray(to_pil(x.to(dtype))), np.asarray(ref))


def test_to_pil_rejects_batches() -> None:
    with pytest.raises(ImageError, match="one image"):
        to_pil(torch.zeros(2, 3, 16, 16))


# --- saving -------------------------------------------------------------------------------------------------------

def test_save_is_atomic_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    img = _noise_image(32, 32)
    save_image(img, out, metadata={"firered": "{}"})
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(img))
    assert Image.open(out).text["firered"] == "{}"
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        save_image(_noise_image(32, 32, seed=1), out)
    assert out.read_bytes() == before
    save_image(_noise_image(32, 32, seed=1), out, overwrite=True)
    assert out.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]  # no temp files left behind


def test_output_path_checks(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="extension"):
        check_output_path(tmp_path / "o.txt")
    with pytest.raises(FileNotFoundError, match="folder"):
        check_output_path(tmp_path / "missing" / "o.png")
    assert check_output_path(tmp_path / "o.png") == tmp_path / "o.png"


def test_limits_are_documented() -> None:
    assert images.MAX_PIXELS == 64 * 1024 * 1024 and images.MIN_SIDE == 16
    assert "64 MiP" in (images.__doc__ or "")
