"""The pictures the shipped workflows' Load Image nodes name, made on the spot for the generator and the tests.

Users replace them with their own (the workflows' notes say so); here they fill ComfyUI's ``input/`` folder so
the Load Image choices are valid, the front end shows real previews in the screenshots, and the graphs run.
Sources: scikit-image's sample photographs (public domain; the astronaut is a real face for the identity edit)
and pictures drawn with PIL (plain subjects on white for the multi-image composites, a sign for the text edit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

SIDE = 384  # small: the embedded default model works at a few hundred pixels, and CPU time matters in CI
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")

PHOTO = "firered_example_photo.png"
PORTRAIT = "firered_example_portrait.png"
SIGN = "firered_example_sign.png"
SCENE = "firered_example_scene.png"
SUBJECTS = tuple(f"firered_example_subject{i}.png" for i in range(1, 5))
PAIR_SOURCE = "firered_example_pair_source.png"
PAIR_TARGET = "firered_example_pair_target.png"
SIGN_TEXT = "SALE"
LIGHTNING_LORA = "FireRed-Image-Edit-1.0-Lightning-8steps-v1.0.safetensors"  # the published file's name
TRAINED_LORA = "firered_lora"  # what the train-then-edit workflow's FireRed Train LoRA writes (+ .safetensors)


def _sample(name: str) -> Image.Image:
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    scale = SIDE / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


def _subject(shape: str, colour: str) -> Image.Image:
    img = Image.new("RGB", (SIDE, SIDE), "white")
    draw = ImageDraw.Draw(img)
    box = (SIDE // 4, SIDE // 4, 3 * SIDE // 4, 3 * SIDE // 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(SIDE // 2, SIDE // 5), (4 * SIDE // 5, 4 * SIDE // 5), (SIDE // 5, 4 * SIDE // 5)], fill=colour)
    return img


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.truetype(str(FONT), size) if FONT.is_file() else ImageFont.load_default(size=size)


def _sign(text: str = SIGN_TEXT, background: str = "#f4e9d8", ink: str = "#b0201a") -> Image.Image:
    img = Image.new("RGB", (SIDE, SIDE * 2 // 3), background)
    draw = ImageDraw.Draw(img)
    draw.rectangle((8, 8, img.width - 9, img.height - 9), outline=ink, width=6)
    draw.text((img.width // 2, img.height // 2), text, fill=ink, font=_font(96), anchor="mm")
    return img


def _pair_target() -> Image.Image:
    img = _sample("chelsea")
    tinted = Image.new("RGB", img.size, (255, 170, 60))
    return Image.blend(img, tinted, 0.35)  # "make it warm and golden"


PICTURES: dict[str, Callable[[], Image.Image]] = {
    PHOTO: lambda: _sample("chelsea"),
    PORTRAIT: lambda: _sample("astronaut"),
    SIGN: _sign,
    SCENE: lambda: _sample("coffee"),
    SUBJECTS[0]: lambda: _subject("circle", "#d62728"),
    SUBJECTS[1]: lambda: _subject("square", "#1f77b4"),
    SUBJECTS[2]: lambda: _subject("triangle", "#2ca02c"),
    SUBJECTS[3]: lambda: _subject("circle", "#ffbf00"),
    PAIR_SOURCE: lambda: _sample("chelsea"),
    PAIR_TARGET: _pair_target,
}


def write_example_inputs(folder: Path) -> list[Path]:
    """Write every picture the workflows name into ``folder`` (ComfyUI's ``input/``); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in PICTURES.items():
        path = folder / name
        make().save(path)
        written.append(path)
    return written


def write_placeholder_loras(loras_folder: Path) -> None:
    """Empty files under the LoRA names the workflows choose, so ComfyUI offers those names (front end only:
    nothing loads them)."""
    loras_folder.mkdir(parents=True, exist_ok=True)
    for name in (LIGHTNING_LORA, f"{TRAINED_LORA}.safetensors"):
        (loras_folder / name).write_bytes(b"")
