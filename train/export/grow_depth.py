"""``firered grow-depth``: a deeper copy of a trained model that computes exactly what the model computed.

::

    firered grow-depth runs/default_model_mix2/export_fp32 --after 1 3 --out runs/default_model_mix2/deep8

Each block named by ``--after`` is followed by a copy of itself whose residual gates (``gate1`` and ``gate2`` of
``img_mod.1`` and ``txt_mod.1``, adaLN-Zero style) are zeroed, so the new block adds nothing until training opens
its gates: the grown model starts from the trained model's outputs, and training continues with more capacity.
The copy (rather than a random block) starts with features the model already uses. The last block is not a good
place (it skips the text stream's update, so its text weights never learnt anything); ``--after`` refuses it.

The input is a diffusers folder (``firered export-default`` writes one); everything but the transformer is copied
unchanged. The output is written under a temporary name and renamed into place; an existing folder is replaced
only with ``--overwrite``.

Public API: ``grow_state``, ``grow_depth``, ``register_grow_depth``, ``run_grow_depth``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import uuid
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from firered_core.loading.diffusers_folder import load_transformer_dir
from firered_core.loading.save import save_component_folder, swap_into_place
from firered_core.transformer import FireRedTransformer

log = logging.getLogger(__name__)

__all__ = ["grow_state", "grow_depth", "register_grow_depth", "run_grow_depth"]

_BLOCKS = "transformer_blocks."
_GATES = (2, 5)  # chunks of the 6 x dim modulation output: (shift1, scale1, gate1, shift2, scale2, gate2)


def _check_after(after: Sequence[int], num_layers: int) -> list[int]:
    chosen = sorted(set(int(i) for i in after))
    if not chosen:
        raise ValueError("--after: name at least one block to copy")
    bad = [i for i in chosen if not 0 <= i < num_layers - 1]
    if bad:
        raise ValueError(f"--after {bad}: blocks are 0..{num_layers - 2} here (the model has {num_layers}; the last "
                         f"block skips the text stream, so a copy of it would not start from trained text weights)")
    return chosen


def _zero_gates(state: dict[str, torch.Tensor], prefix: str) -> None:
    for stream in ("img_mod.1", "txt_mod.1"):
        for part in ("weight", "bias"):
            tensor = state[f"{prefix}{stream}.{part}"].clone()
            dim = tensor.shape[0] // 6
            for chunk in _GATES:
                tensor[chunk * dim:(chunk + 1) * dim] = 0
            state[f"{prefix}{stream}.{part}"] = tensor


def grow_state(state: Mapping[str, torch.Tensor], num_layers: int,
               after: Sequence[int]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The grown state dict and, per new block, the old block it copies (gates of the copies zeroed)."""
    chosen = _check_after(after, num_layers)
    origin: list[int] = []
    copies: list[int] = []  # new indices of the copies
    for i in range(num_layers):
        origin.append(i)
        if i in chosen:
            copies.append(len(origin))
            origin.append(i)
    grown = {k: v for k, v in state.items() if not k.startswith(_BLOCKS)}
    for new, old in enumerate(origin):
        prefix = f"{_BLOCKS}{old}."
        for key, value in state.items():
            if key.startswith(prefix):
                grown[f"{_BLOCKS}{new}.{key[len(prefix):]}"] = value
    for new in copies:
        _zero_gates(grown, f"{_BLOCKS}{new}.")
    return grown, origin


def grow_depth(folder: str | Path, out: str | Path, *, after: Sequence[int], overwrite: bool = False) -> Path:
    """Write ``out``: the diffusers folder ``folder`` with a deeper transformer (see the module docstring)."""
    folder, out = Path(folder), Path(out)
    if not (folder / "transformer").is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a diffusers model folder (no transformer/ inside)")
    if out.resolve() == folder.resolve():
        raise ValueError("--out must differ from the input folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    model = load_transformer_dir(folder, dtype=torch.float32)
    state, origin = grow_state(model.state_dict(), model.config.num_layers, after)
    deeper = FireRedTransformer(dataclasses.replace(model.config, num_layers=len(origin)))
    deeper.load_state_dict(state, strict=True)
    staging = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copytree(folder, staging, ignore=lambda d, names: ["transformer"] if Path(d) == folder else [])
        save_component_folder(deeper, staging / "transformer")
        swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("grew %s from %d to %d blocks (new blocks copy %s) into %s", folder, model.config.num_layers,
             len(origin), sorted(set(after)), out)
    return out


def register_grow_depth(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.description = ("Write a deeper copy of a model folder's transformer: each block named by --after is "
                          "followed by a copy with zeroed residual gates, so the grown model computes the same "
                          "outputs until it is trained further.")
    parser.add_argument("model", help="diffusers model folder (e.g. a firered export-default output)")
    parser.add_argument("--after", type=int, nargs="+", required=True, metavar="BLOCK",
                        help="indices of the blocks to copy (0-based; not the last block)")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--overwrite", action="store_true")
    return run_grow_depth


def run_grow_depth(args: argparse.Namespace) -> int:
    out = grow_depth(args.model, args.out, after=args.after, overwrite=args.overwrite)
    print(f"wrote {out}", flush=True)
    return 0
