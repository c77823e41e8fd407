"""One edit sample: N source images, a target image, instructions and a task label.

Every reader turns its format into ``EditRecord`` values, and everything downstream (bucket sampler, instruction
alignment, caching, the trainer) sees only records. A record is metadata plus a way to reach the pixels:

- ``ImageRef`` holds an image's width and height (read from the file header, so building a record never decodes
  pixels) and either a file path (folders, JSONL manifests), a byte range of a file (a member of an indexed,
  uncompressed tar shard: ``readers.tar_index``), a ``ByteLocator`` that reads it out of a file (a cell of an
  indexed parquet shard: ``readers.parquet_index``) or the encoded bytes (other shards). ``ImageRef.open()`` reads
  and decodes it to an upright RGB ``PIL.Image`` when the pixels are finally needed.
- ``EditRecord`` has 0..N sources (0 = text-to-image; FireRed trains with up to 3, but nothing here fixes N), one
  target, the instruction in English and/or Chinese, optional inverse instructions (FireRed's "describe the
  source from the target" texts, used by swapping source and target when there is exactly one source), a task
  label (the data-weight and bucket group) and an id that names the sample in logs. Optionally, the landmarks of
  the faces in the target (``target_landmarks``: 2, 3 or 5 (x, y) points per face, in the target's upright pixels),
  which the SFT stage's consistency loss aligns its face crops with.

A sample that cannot be used raises ``BadSampleError`` carrying a ``SkipReason`` and the sample id; readers and
loaders catch it, count it in a ``SkipLog`` and go on, so one broken file never stops a run.
"""

from __future__ import annotations

import enum
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageOps

# EXIF orientations 5..8 rotate by 90 degrees: the upright image has width and height swapped.
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class SkipReason(str, enum.Enum):
    """Why a sample was skipped; the value is the counter name the trainer logs."""

    MISSING_FILE = "missing_file"
    UNDECODABLE_IMAGE = "undecodable_image"
    EMPTY_TEXT = "empty_text"
    MALFORMED = "malformed"  # broken JSON, wrong field types, ambiguous or incomplete file naming


class BadSampleError(ValueError):
    """A sample that cannot be trained on; readers skip and count it instead of stopping."""

    def __init__(self, reason: SkipReason, sample_id: str, detail: str) -> None:
        super().__init__(f"sample {sample_id!r}: {reason.value}: {detail}")
        self.reason = reason
        self.sample_id = sample_id
        self.detail = detail


def _image_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as it will be shown upright, from the header only."""
    width, height = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION_TAG)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: Pillow ignores it when decoding too
        orientation = None
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


class ByteLocator(Protocol):
    """Where an image's encoded bytes sit inside a file that is not a plain byte range (a parquet cell).

    Implementations are small frozen dataclasses (compared, hashed and pickled to DataLoader workers with the
    record); ``read`` raises ``BadSampleError`` when the bytes cannot be had.
    """

    def read(self, path: Path, sample_id: str, name: str) -> bytes: ...


@dataclass(frozen=True)
class ImageRef:
    """An image reachable by path (whole file or a byte range of it) or as encoded bytes, with its upright size
    known without decoding."""

    width: int
    height: int
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    name: str = ""  # how logs name it: the path, or "shard.tar:key.tgt.png"
    # With ``path``: the image is the ``length`` bytes at ``offset`` of that file (None: the whole file), or what
    # ``locator`` reads out of it.
    offset: int = 0
    length: int | None = None
    locator: ByteLocator | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError(f"ImageRef {self.name!r}: give exactly one of path and data")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"ImageRef {self.name!r}: size must be positive, got {self.width}x{self.height}")
        if self.length is not None and (self.path is None or self.offset < 0 or self.length <= 0):
            raise ValueError(f"ImageRef {self.name!r}: a byte range needs a path, offset >= 0 and length > 0, got "
                             f"offset {self.offset}, length {self.length}")
        if self.locator is not None and (self.path is None or self.length is not None):
            raise ValueError(f"ImageRef {self.name!r}: a locator needs a path and no byte range")

    @property
    def is_whole_file(self) -> bool:
        """True when the image is the whole file at ``path`` (an image file, not a part of a shard)."""
        return self.path is not None and self.length is None and self.locator is None

    @classmethod
    def probe(cls, source: Path | bytes, sample_id: str, name: str = "") -> ImageRef:
        """Reference ``source`` (a path or encoded bytes) after reading its size from the header.

        Raises ``BadSampleError`` (missing file, or bytes no image decoder recognises).
        """
        label = name or (str(source) if isinstance(source, Path) else "<bytes>")
        if isinstance(source, Path) and not source.is_file():
            raise BadSampleError(SkipReason.MISSING_FILE, sample_id, f"no such file: {label}")
        try:
            with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as img:
                width, height = _image_size(img)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadSampleError(SkipReason.UNDECODABLE_IMAGE, sample_id, f"{label}: {exc}") from exc
        if isinstance(source, Path):
            return cls(width, height, path=source, name=label)
        return cls(width, height, data=source, name=label)

    def read_bytes(self, sample_id: str = "") -> bytes:
        """The encoded image: the bytes held, the file, or its byte range."""
        if self.data is not None:
            return self.data
        assert self.path is not None  # __post_init__: exactly one of path and data
        if not self.path.is_file():
            raise BadSampleError(SkipReason.MISSING_FILE, sample_id, f"no such file: {self.name}")
        if self.locator is not None:
            return self.locator.read(self.path, sample_id, self.name)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(-1 if self.length is None else self.length)
        if self.length is not None and len(data) != self.length:  # the file shrank since it was indexed
            raise BadSampleError(SkipReason.UNDECODABLE_IMAGE, sample_id,
                                 f"{self.name}: {len(data)} of {self.length} bytes at offset {self.offset}")
        return data

    def open(self, sample_id: str = "") -> Image.Image:
        """Decode to an upright RGB image; a missing, truncated or corrupt file raises ``BadSampleError``."""
        if self.path is not None and self.is_whole_file:
            if not self.path.is_file():
                raise BadSampleError(SkipReason.MISSING_FILE, sample_id, f"no such file: {self.name}")
            source: Path | io.BytesIO = self.path
        else:
            source = io.BytesIO(self.read_bytes(sample_id))
        try:
            with Image.open(source) as img:
                upright = ImageOps.exif_transpose(img) or img
                rgb = upright.convert("RGB")  # convert() forces the full decode inside the try
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadSampleError(SkipReason.UNDECODABLE_IMAGE, sample_id, f"{self.name}: {exc}") from exc
        if rgb.size != (self.width, self.height):
            # The header lied (or the file changed since the scan): buckets were planned for another size.
            raise BadSampleError(SkipReason.UNDECODABLE_IMAGE, sample_id,
                                 f"{self.name}: decoded {rgb.size}, header said {(self.width, self.height)}")
        return rgb


@dataclass(frozen=True)
class EditRecord:
    """One training sample. Construct with validated fields; use ``validate`` on data from outside."""

    id: str
    target: ImageRef
    sources: tuple[ImageRef, ...] = ()
    instruction: str = ""  # English
    instruction_cn: str = ""  # Chinese
    inverse_instruction: str = ""  # English text that turns the target back into the (single) source
    inverse_instruction_cn: str = ""
    task: str = "default"
    # Faces of the target: per face 2 (eyes), 3 (+ nose tip) or 5 (+ mouth corners) (x, y) points in the upright
    # target's pixels, the image's left eye first (``objectives.face_alignment``); () = none given.
    target_landmarks: tuple[tuple[tuple[float, float], ...], ...] = ()

    def validate(self) -> EditRecord:
        """Return self, or raise ``BadSampleError`` for a record no trainer could use."""
        if not self.id:
            raise BadSampleError(SkipReason.MALFORMED, "<no id>", "empty sample id")
        if not self.task:
            raise BadSampleError(SkipReason.MALFORMED, self.id, "empty task label")
        if not (self.instruction.strip() or self.instruction_cn.strip()):
            raise BadSampleError(SkipReason.EMPTY_TEXT, self.id, "no English or Chinese instruction")
        if (self.inverse_instruction or self.inverse_instruction_cn) and len(self.sources) != 1:
            # An inverse instruction swaps source and target, which is only defined for exactly one source.
            raise BadSampleError(SkipReason.MALFORMED, self.id,
                                 f"inverse instruction with {len(self.sources)} sources (needs exactly 1)")
        for n, face in enumerate(self.target_landmarks):
            if len(face) not in (2, 3, 5) or any(len(p) != 2 or not all(math.isfinite(c) for c in p) for p in face):
                raise BadSampleError(SkipReason.MALFORMED, self.id,
                                     f"target_landmarks[{n}] must be 2, 3 or 5 finite (x, y) points, got {face!r}")
            if len(set(face)) < 2:  # no alignment can be fitted to a single point
                raise BadSampleError(SkipReason.MALFORMED, self.id,
                                     f"target_landmarks[{n}] must not put all its points at one place, got {face!r}")
        return self

    @property
    def source_sizes(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each source, in order."""
        return tuple((s.width, s.height) for s in self.sources)

    @property
    def target_size(self) -> tuple[int, int]:
        """(width, height) of the target."""
        return (self.target.width, self.target.height)

    def open_images(self) -> tuple[list[Image.Image], Image.Image]:
        """Decode (sources, target); raises ``BadSampleError`` naming this record."""
        return [s.open(self.id) for s in self.sources], self.target.open(self.id)
