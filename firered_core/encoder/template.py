"""The chat templates that wrap an instruction for Qwen2.5-VL, and the resizing of the images the VLM sees.

Two templates, kept as data (``PromptTemplate``), reproduce the reference pipelines of diffusers:

``EDIT_TEMPLATE`` (``QwenImageEditPlusPipeline``; FireRed-Image-Edit and Qwen-Image-Edit-2509)
    A system prompt asking the model to describe the input image(s) and how the instruction changes them; then,
    in the user turn, ``Picture i: <|vision_start|><|image_pad|><|vision_end|>`` for each reference ``i = 1..N``
    (no separator between blocks), directly followed by the instruction. The first 64 tokens (the system turn up to
    and including ``<|im_start|>user\\n``) are dropped from the hidden states.
``TEXT_TEMPLATE`` (``QwenImagePipeline``, text-to-image)
    A system prompt asking for a detailed image description, then the instruction. 34 tokens are dropped. The
    tokens are truncated at ``TEXT_MAX_TOKENS + 34`` before encoding and the embeddings cut to the caller's
    ``max_sequence_length``, as that pipeline does.

Which one: ``select_template(n_images)`` returns the text template for **0 images** and the edit template
otherwise. The edit template's system prompt talks about "the input image", and diffusers' edit pipeline requires
at least one image; FireRed's report describes a "text-only mode" dropping 34 tokens, i.e. the Qwen-Image template.

In both, ``drop_tokens`` is exactly the token length of the template's prefix (the text before ``{}``) under the
Qwen2.5 tokenizer; ``tests/core/test_encoder.py`` checks it.

Condition images: ``condition_size`` gives about ``CONDITION_IMAGE_AREA`` (384 x 384) pixels at the image's aspect,
each side rounded to a multiple of 32 (the sizing rule of ``firered_core.images``); ``resize_condition_image``
resizes with Pillow's Lanczos filter and no reducing gap, which is what diffusers' ``VaeImageProcessor.resize``
does there, so the pixels the VLM sees are identical.

Public API: ``PromptTemplate``, ``EDIT_TEMPLATE``, ``TEXT_TEMPLATE``, ``select_template``, ``condition_size``,
``resize_condition_image``, ``CONDITION_IMAGE_AREA``, ``TEXT_MAX_TOKENS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..images import calculate_dimensions

__all__ = ["PromptTemplate", "EDIT_TEMPLATE", "TEXT_TEMPLATE", "select_template", "condition_size",
           "resize_condition_image", "CONDITION_IMAGE_AREA", "TEXT_MAX_TOKENS"]

CONDITION_IMAGE_AREA = 384 * 384  # pixels of each reference image as the VLM sees it
TEXT_MAX_TOKENS = 1024  # text-only mode: instruction tokens kept after the template prefix


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template with one ``{}`` slot for the user content, and how many prefix tokens to drop."""

    name: str
    text: str
    drop_tokens: int
    image_block: str = ""  # per reference image, ``{}`` = its 1-based number; empty: the template takes no images

    def __post_init__(self) -> None:
        if self.text.count("{}") != 1:
            raise ValueError(f"template {self.name!r} must contain exactly one '{{}}' slot")
        if self.drop_tokens < 0:
            raise ValueError(f"template {self.name!r}: drop_tokens must be >= 0, got {self.drop_tokens}")

    @property
    def prefix(self) -> str:
        """The text before the user content: what ``drop_tokens`` tokens encode."""
        return self.text.split("{}")[0]

    def format(self, instruction: str, num_images: int = 0) -> str:
        """The full prompt for ``instruction`` with ``num_images`` reference-image blocks before it."""
        if num_images and not self.image_block:
            raise ValueError(f"template {self.name!r} takes no images, got {num_images}")
        blocks = "".join(self.image_block.format(i + 1) for i in range(num_images))
        return self.text.format(blocks + instruction)


EDIT_TEMPLATE = PromptTemplate(
    name="edit",
    text=("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
          "background), then explain how the user's text instruction should alter or modify the image. Generate a "
          "new image that meets the user's requirements while maintaining consistency with the original input "
          "where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"),
    drop_tokens=64,
    image_block="Picture {}: <|vision_start|><|image_pad|><|vision_end|>",
)

TEXT_TEMPLATE = PromptTemplate(
    name="text",
    text=("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
          "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
          "<|im_start|>assistant\n"),
    drop_tokens=34,
)


def select_template(num_images: int) -> PromptTemplate:
    """``TEXT_TEMPLATE`` without reference images, ``EDIT_TEMPLATE`` with one or more (see the module docstring)."""
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    return EDIT_TEMPLATE if num_images else TEXT_TEMPLATE


def condition_size(width: int, height: int, area: int = CONDITION_IMAGE_AREA) -> tuple[int, int]:
    """(width, height) of the VLM's copy of a ``width`` x ``height`` image: ~``area`` pixels, sides multiples of 32."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    new_w, new_h = calculate_dimensions(area, width / height)
    if new_w <= 0 or new_h <= 0:
        raise ValueError(f"a {width}x{height} image is too elongated for the condition encoder: at ~{area} pixels "
                         f"one side rounds to 0 (aspect {width / height:.3g})")
    return new_w, new_h


def resize_condition_image(image: Image.Image, area: int = CONDITION_IMAGE_AREA) -> Image.Image:
    """``image`` resized to ``condition_size`` with Lanczos, as the reference pipeline resizes it."""
    width, height = condition_size(image.width, image.height, area)
    return image.resize((width, height), resample=Image.Resampling.LANCZOS, reducing_gap=None)
