"""Reading and writing training configs as YAML, with ``--a.b=value`` overrides.

::

    cfg = load_config("train/configs/sft.yaml", ["--optim.lr=2e-5", "--data.path=pairs/", "--model.preset=tiny"])
    cfg = load_config("tiny_lora")            # a shipped stage config by name (see ``shipped_configs()``)
    text = to_yaml(cfg)                        # complete and flat: load_config of it gives cfg back
    save_config(cfg, "runs/x/config.yaml")     # atomic; refuses to replace an existing file

Files. A YAML file holds any subset of ``TrainConfig``'s keys (missing ones keep their defaults). A top-level
``base: other.yaml`` (relative to the file) is loaded first and the file's keys are laid over it: sections merge
key by key, everything else (numbers, lists, mappings such as ``source_count_weights``) is replaced whole, so
what a file writes is what the run uses. Only plain YAML data is read (``yaml.safe_load``), never code.

Overrides. ``--optim.betas=0.9,0.95``, ``--lora.target_modules=[attn.to_q, attn.to_k]``,
``--data.sampler.source_count_weights.3=0.5`` (an entry of a mapping), ``--checkpoint.keep_last=null``. The
leading dashes are optional. Each value is converted to the field's type; an unknown key or a value of the wrong
type raises ``ConfigError`` naming the full key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from firered_core.config import ConfigError

from .coerce import build, parse_text, strip_optional, to_plain, type_at
from .train_config import TrainConfig

__all__ = ["CONFIG_DIR", "apply_overrides", "config_from_dict", "find_config", "load_config", "read_yaml_tree",
           "save_config", "shipped_configs", "to_yaml"]

log = logging.getLogger(__name__)

# The stage configs that ship with the package (train/configs/*.yaml).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
_BASE_KEY = "base"


def shipped_configs() -> dict[str, Path]:
    """Name -> path of every stage config shipped with the package (``sft`` -> ``.../configs/sft.yaml``)."""
    if not CONFIG_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file: an existing path, or the name of a shipped config (``tiny_sft``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise FileNotFoundError(f"config {str(name_or_path)!r}: no such file, and not a shipped config "
                            f"({', '.join(shipped) or 'none found'})")


# ---------------------------------------------------------------------------------------------------------------
# reading


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"
        raise ConfigError(f"{path}: invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections, got {type(data).__name__}")
    return data


def _merge(base: Mapping[str, Any], over: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """``over`` laid over ``base``: dataclass sections merge key by key, other values are replaced whole."""
    out = dict(base)
    for key, value in over.items():
        try:
            tp, _ = type_at(cls, [key])
        except ConfigError:
            tp = None  # unknown keys pass through: ``build`` reports them with their full path
        section = strip_optional(tp)
        if (dataclasses.is_dataclass(section) and isinstance(value, Mapping)
                and isinstance(out.get(key), Mapping)):
            out[key] = _merge(out[key], value, section)
        else:
            out[key] = value
    return out


def read_yaml_tree(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The plain mapping of a config file with its ``base`` chain resolved (nothing coerced yet)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"{path}: 'base' files form a cycle: {chain}")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist" +
                                (f" (named as 'base' in {_seen[-1]})" if _seen else ""))
    data = _read_mapping(path)
    base = data.pop(_BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {base!r}")
    parent = read_yaml_tree(path.parent / base, (*_seen, path))
    return _merge(parent, data, TrainConfig)


def _split_override(item: str) -> tuple[list[str], str]:
    text = item[2:] if item.startswith("--") else item
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected --section.key=value")
    keys = key.strip().split(".")
    if any(not k for k in keys):
        raise ConfigError(f"override {item!r}: empty part in key {key!r}")
    return keys, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``data`` (a plain config mapping) with each ``--a.b=value`` set, the value already of the field's type."""
    out: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        keys, text = _split_override(item)
        tp, typed = type_at(TrainConfig, keys)
        value = parse_text(text, tp, ".".join(keys))
        node = out
        for depth, key in enumerate(typed[:-1]):
            child = node.get(key)
            if not isinstance(child, dict):
                # absent: start from the default (an entry override of a mapping keeps the other entries);
                # null: start empty
                default = _default_at(typed[: depth + 1]) if key not in node else None
                child = to_plain(default) if isinstance(default, Mapping) else {}
                node[key] = child
            node = child
        node[typed[-1]] = value
    return out


def _default_at(keys: list[Any]) -> Any:
    """The default value under ``keys`` in ``TrainConfig()``; None where there is none."""
    value: Any = TrainConfig()
    for key in keys:
        if dataclasses.is_dataclass(value):
            value = getattr(value, key, None)
        elif isinstance(value, Mapping):
            value = value.get(key)
        else:
            return None
    return value


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def config_from_dict(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> TrainConfig:
    """A ``TrainConfig`` from a plain mapping (as read from YAML) plus overrides."""
    return build(TrainConfig, apply_overrides(data, overrides))


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> TrainConfig:
    """The ``TrainConfig`` of a YAML file (or shipped config name) with ``--a.b=value`` overrides applied."""
    file = find_config(path)
    overrides = list(overrides)
    cfg = config_from_dict(read_yaml_tree(file), overrides)
    log.info("config %s%s: stage %s, %s fine-tune of %s", file, f" + {len(overrides)} override(s)" if overrides else "",
             cfg.stage, cfg.model.finetune, cfg.model.weights or f"preset {cfg.model.preset}")
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# writing


class _Dumper(yaml.SafeDumper):
    """Block-style sections, one-line lists of scalars (``betas: [0.9, 0.999]``): how people write these files."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def to_yaml(cfg: TrainConfig) -> str:
    """The complete config as YAML, every key written out (no ``base``), in declaration order."""
    return yaml.dump(to_plain(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=120)


def save_config(cfg: TrainConfig, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``to_yaml(cfg)`` to ``path`` atomically; an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(to_yaml(cfg))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
