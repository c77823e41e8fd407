"""Typed conversion between plain values (YAML, command-line text) and nested config dataclasses.

The training config is a tree of frozen dataclasses whose field annotations are the schema: nothing else lists
the keys or their types. This module reads that schema with ``typing.get_type_hints`` and

- ``build(cls, mapping, path)``: makes ``cls`` from a plain mapping, coercing every value to its field's type and
  refusing unknown keys;
- ``parse_text(text, type, path)``: turns the text of a ``--a.b=value`` override into a value of ``type``;
- ``type_at(cls, keys)``: follows a dotted key through dataclasses and mappings to the type of its leaf;
- ``to_plain(obj)``: the reverse of ``build``, plain dicts/lists/scalars that ``yaml.safe_dump`` writes.

Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``Sequence[X]``, ``dict[K, V]`` / ``Mapping[K, V]`` and nested dataclasses. Every
error is a ``ConfigError`` whose message starts with the full key path (``optim.betas[1]: expected a float ...``).

Coercion is deliberately forgiving only where YAML itself is awkward: PyYAML reads ``1e-4`` as a string (YAML 1.1
wants a dot in floats), so numeric fields accept numeric strings; ``3e5`` is accepted for an int because it is
an integer. A string never becomes a number for a ``str`` field and a number never becomes a bool.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import types
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from firered_core.config import ConfigError

__all__ = ["build", "coerce", "describe", "field_error", "parse_text", "strip_optional", "to_plain", "type_at"]

_NONE_WORDS = {"null", "none", "~"}
_TRUE_WORDS = {"true", "yes", "on"}
_FALSE_WORDS = {"false", "no", "off"}
_SEQUENCE_ORIGINS = (list, collections.abc.Sequence)
_MAPPING_ORIGINS = (dict, collections.abc.Mapping)


def field_error(key: str, message: str) -> ConfigError:
    """A ``ConfigError`` about field ``key`` of one section; ``build`` prefixes it with the section's path.

    ``__post_init__`` checks know their own field but not where their section sits in the tree, so they raise
    this and the loader turns ``lr: must be positive`` into ``optim.lr: must be positive``.
    """
    err = ConfigError(f"{key}: {message}")
    err.key, err.detail = key, message  # type: ignore[attr-defined]
    return err


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _allows_none(tp: Any) -> bool:
    return tp is type(None) or (_is_union(tp) and type(None) in get_args(tp))


def strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; other types unchanged."""
    if _is_union(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def describe(tp: Any) -> str:
    """A short human name of an annotation, for error messages."""
    origin, args = get_origin(tp), get_args(tp)
    if _is_union(tp):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0])}"
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin in _SEQUENCE_ORIGINS:
        return f"a list of {describe(args[0]) if args else 'values'}"
    if origin in _MAPPING_ORIGINS:
        return f"a mapping of {describe(args[0])} to {describe(args[1])}" if args else "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__} mapping"
    return {bool: "a bool", int: "an int", float: "a float", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _bad(path: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{path or 'config'}: expected {describe(tp)}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------------------------------------------------------
# scalars


def _to_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise _bad(path, bool, value)


def _to_int(value: Any, path: str) -> int:
    if isinstance(value, bool):  # bool is an int subclass; True as a step count is always a mistake
        raise _bad(path, int, value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                raise _bad(path, int, value) from None
            if number.is_integer():
                return int(number)
    raise _bad(path, int, value)


def _to_float(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise _bad(path, float, value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _bad(path, float, value)


def _to_str(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected a string, got {value!r} ({type(value).__name__}); quote it in YAML")


def _to_literal(value: Any, tp: Any, path: str) -> Any:
    for choice in get_args(tp):
        # compare types too: 1 == True, and a Literal of strings must not accept a number
        if type(choice) is type(value) and choice == value:
            return choice
    raise ConfigError(f"{path}: must be {describe(tp)}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# containers


def _to_tuple(value: Any, tp: Any, path: str) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _bad(path, tp, value)
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {list(value)!r}")
    return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _to_list(value: Any, tp: Any, path: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _bad(path, tp, value)
    args = get_args(tp)
    return [coerce(v, args[0], f"{path}[{i}]") if args else v for i, v in enumerate(value)]


def _to_mapping(value: Any, tp: Any, path: str) -> dict:
    if not isinstance(value, Mapping):
        raise _bad(path, tp, value)
    args = get_args(tp)
    if not args:
        return dict(value)
    key_type, value_type = args
    out = {}
    for k, v in value.items():
        key = parse_text(k, key_type, _join(path, k)) if isinstance(k, str) else coerce(k, key_type, _join(path, k))
        out[key] = coerce(v, value_type, _join(path, k))
    return out


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` converted to the annotation ``tp``; ``path`` names the key in errors."""
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise _bad(path, tp, value)
        for arg in get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path)
            except ConfigError:
                continue
        raise _bad(path, tp, value)
    if value is None:
        raise ConfigError(f"{path}: must not be null (expected {describe(tp)})")
    origin = get_origin(tp)
    if origin is Literal:
        return _to_literal(value, tp, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is tuple:
        return _to_tuple(value, tp, path)
    if origin in _SEQUENCE_ORIGINS:
        return _to_list(value, tp, path)
    if origin in _MAPPING_ORIGINS:
        return _to_mapping(value, tp, path)
    scalar = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}.get(tp)
    if scalar is None:
        raise TypeError(f"{path}: the config loader does not support fields annotated {tp!r}")
    return scalar(value, path)


# ---------------------------------------------------------------------------------------------------------------
# dataclasses


def _unknown_key(cls: type, path: str, key: object) -> ConfigError:
    names = list(_init_fields(cls))
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{_join(path, key)}: unknown key{hint}; {cls.__name__} has: {', '.join(names)}")


def build(cls: type, data: Any, path: str = "") -> Any:
    """An instance of the dataclass ``cls`` from a mapping of its field names (missing fields keep defaults)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of {cls.__name__} fields, got {data!r}")
    fields, hints = _init_fields(cls), _hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(cls, path, key)
    kwargs = {k: coerce(v, hints[k], _join(path, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        key = getattr(exc, "key", None)
        if key is not None:
            raise ConfigError(f"{_join(path, key)}: {exc.detail}") from None  # type: ignore[attr-defined]
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    except (ValueError, TypeError) as exc:  # invariants of sections defined elsewhere (data sampler, SIA)
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def type_at(cls: type, keys: Sequence[str]) -> tuple[Any, list[Any]]:
    """The annotation of the leaf named by ``keys`` under ``cls``, and each key converted to its real type.

    Keys below a mapping field are converted to the mapping's key type (``source_count_weights.2`` -> ``2``), so
    an override lands on the same entry the YAML file wrote.
    """
    tp: Any = cls
    typed: list[Any] = []
    for depth, key in enumerate(keys):
        path = ".".join(keys[:depth])
        inner = strip_optional(tp)
        if dataclasses.is_dataclass(inner):
            if key not in _init_fields(inner):
                raise _unknown_key(inner, path, key)
            tp = _hints(inner)[key]
            typed.append(key)
        elif get_origin(inner) in _MAPPING_ORIGINS and get_args(inner):
            key_type, tp = get_args(inner)
            typed.append(parse_text(key, key_type, _join(path, key)))
        else:
            raise ConfigError(f"{path}: is {describe(tp)}, it has no key {key!r}")
    return tp, typed


# ---------------------------------------------------------------------------------------------------------------
# text and plain values


def _is_sequence(tp: Any) -> bool:
    return get_origin(tp) is tuple or get_origin(tp) in _SEQUENCE_ORIGINS


def _item_types(tp: Any, n: int) -> list[Any]:
    """The annotation of each of ``n`` items of the sequence type ``tp`` (fixed tuples: their own length)."""
    args = get_args(tp)
    if get_origin(tp) is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return list(args)
    return [args[0] if args else str] * n


def parse_text(text: str, tp: Any, path: str) -> Any:
    """The value of ``--key=text`` for a field annotated ``tp``.

    Strings stay verbatim (``--model.preset=001`` is the string "001"); ``null``/``none``/``~`` mean None where
    None is allowed; lists may be written ``a,b,c`` or ``[a, b, c]``; anything else is read as YAML and coerced.
    """
    if _allows_none(tp) and text.strip().lower() in _NONE_WORDS:
        return None
    inner = strip_optional(tp)
    if inner is str or (get_origin(inner) is Literal and all(isinstance(a, str) for a in get_args(inner))):
        return coerce(text, inner, path)
    if _is_sequence(inner) and not text.lstrip().startswith("["):
        items = [part.strip() for part in text.split(",")] if text.strip() else []
        item_types = _item_types(inner, len(items))
        if len(item_types) != len(items):
            raise ConfigError(f"{path}: expected {describe(inner)}, got {len(items)} values: {text!r}")
        parsed = [parse_text(item, item_tp, f"{path}[{i}]")
                  for i, (item, item_tp) in enumerate(zip(items, item_types))]
        return coerce(parsed, inner, path)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot read {text!r} as {describe(tp)}: {exc}") from None
    return coerce(value, tp, path)


def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts (init fields, in declaration order), tuples -> lists, mappings -> dicts."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_plain(getattr(obj, name)) for name in _init_fields(type(obj))}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj
