"""Nested training state as a JSON tree plus named tensors: checkpoints without pickle.

``optimizer.state_dict()``, ``lr_scheduler.state_dict()``, sampler and data positions and RNG states are nests of
dicts, lists, tuples, numbers, strings, tensors and numpy arrays. ``torch.save`` would pickle them, and loading a
pickle can run code. Instead ``encode_state`` splits a nest into

- a JSON-safe tree in which every tensor is replaced by ``{"__tensor__": name}``, and
- ``{name: tensor}``, which goes into a safetensors file (names are the tensor's path in the nest,
  e.g. ``optimizer.state.0.exp_avg``);

``decode_state`` puts them back together. The round trip is exact, including what plain JSON loses: tuples stay
tuples (``{"__tuple__": [...]}``), non-string or ``__``-prefixed dict keys keep their type
(``{"__dict__": [[key, value], ...]}``; an optimizer's state is keyed by int), non-finite floats survive
(``{"__float__": "nan"}``), numpy arrays keep dtype and shape (stored as tensors), numpy scalars become Python
numbers. Floats are written with ``repr`` precision, so they read back bit for bit.

Anything else (a function, a dtype object, a custom class) raises ``StateCodecError`` naming its path in the
nest: such state has to be converted by its owner, not smuggled in.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["StateCodecError", "decode_state", "encode_state"]

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__")


class StateCodecError(TypeError):
    """A value in a training state cannot be stored as JSON + safetensors."""


def _plain_key(key: object) -> bool:
    return isinstance(key, str) and not key.startswith("__")


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _name(self, path: str) -> str:
        name, n = path, 1
        while name in self.tensors:  # two nest paths can join to the same text ({"a.b": x} vs {"a": {"b": y}})
            n += 1
            name = f"{path}#{n}"
        return name

    def _key(self, key: object, path: str) -> object:
        if key is None or isinstance(key, (str, bool, int)):
            return key
        if isinstance(key, float):
            return key if math.isfinite(key) else {"__float__": repr(key)}
        if isinstance(key, np.generic):
            return self._key(key.item(), path)
        raise StateCodecError(f"{path}: dict key {key!r} of type {type(key).__name__} cannot be stored")

    def encode(self, obj: Any, path: str) -> Any:
        if obj is None or isinstance(obj, (bool, str, int)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, torch.Tensor):
            name = self._name(path)
            self.tensors[name] = obj.detach()
            return {"__tensor__": name}
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in "biuf":
                raise StateCodecError(f"{path}: numpy array of dtype {obj.dtype} cannot be stored")
            name = self._name(path)
            self.tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
            return {"__ndarray__": name}
        if isinstance(obj, np.generic):
            return self.encode(obj.item(), path)
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{path}.{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            if all(_plain_key(k) for k in obj):
                return {k: self.encode(v, f"{path}.{k}") for k, v in obj.items()}
            return {"__dict__": [[self._key(k, path), self.encode(v, f"{path}.{k}")] for k, v in obj.items()]}
        raise StateCodecError(f"{path}: a {type(obj).__name__} cannot be stored in a checkpoint without pickle; "
                              "convert it to numbers, strings, lists, dicts or tensors first")


def encode_state(obj: Any, root: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """``(tree, tensors)``: a JSON-safe tree and the tensors it refers to by name (names start with ``root``)."""
    encoder = _Encoder()
    tree = encoder.encode(obj, root)
    return tree, encoder.tensors


def _tagged(node: dict) -> str | None:
    if len(node) == 1:
        (key,) = node
        if key in _TAGS:
            return key
    return None


def decode_state(tree: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The nest that ``encode_state`` split into ``tree`` and ``tensors``."""
    if isinstance(tree, list):
        return [decode_state(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tag = _tagged(tree)
    if tag is None:
        return {k: decode_state(v, tensors) for k, v in tree.items()}
    value = tree[tag]
    if tag in ("__tensor__", "__ndarray__"):
        try:
            tensor = tensors[value]
        except KeyError:
            raise StateCodecError(f"the checkpoint's tensor file has no tensor named {value!r}") from None
        return tensor.numpy().copy() if tag == "__ndarray__" else tensor
    if tag == "__tuple__":
        return tuple(decode_state(v, tensors) for v in value)
    if tag == "__float__":
        return float(value)
    return {decode_state(k, tensors): decode_state(v, tensors) for k, v in value}
