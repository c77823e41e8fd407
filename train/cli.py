"""``firered train`` and ``firered cache``: the training subcommands of the ``firered`` command.

::

    firered train CONFIG.yaml [--a.b=value ...] [--resume latest|PATH]
    firered cache CONFIG.yaml [--a.b=value ...] [--batch-size 8] [--shard-size 256] [--latent-dtype float32]
    accelerate launch --num_processes N -m firered_core train CONFIG.yaml ...     # the same, on N processes

``CONFIG`` is a YAML file or the name of a shipped stage config (``tiny_sft``, ``sft``, ``lora`` ...; see
``firered_train.config``). Every other ``--section.key=value`` argument overrides one config value;
``--resume latest`` is short for ``--checkpoint.resume=latest`` (continue from the newest complete checkpoint in
the run's checkpoint folder; a fresh run when there is none yet).

``firered cache`` runs the offline step (``cache.build``): it encodes every training and validation sample of the
config into ``data.cache_dir`` (which must be set), split across the processes when launched with accelerate.
Training with the same config then reads the cache and loads no condition encoder.

The commands reach the ``firered`` dispatcher (``firered_core.cli``) through the entry-point group
``firered.commands`` declared in pyproject.toml; ``python -m firered_train.cli train ...`` runs them without it.
Exit codes follow the dispatcher: 0 done, 2 bad usage or input (one line on stderr), 130 interrupted.

Public API: ``register_train``, ``register_cache``, ``run_train``, ``run_cache``, ``split_overrides``, ``main``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from .config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["register_train", "register_cache", "run_train", "run_cache", "split_overrides", "main"]

Runner = Callable[[argparse.Namespace], int]
_CACHE_OPTIONS = ("batch-size", "shard-size", "latent-dtype")


def split_overrides(items: Sequence[str], options: Sequence[str] = ("resume",)) -> tuple[list[str], dict[str, str]]:
    """Config overrides (``--a.b=value``) and the named ``options`` (``--name VALUE`` or ``--name=VALUE``).

    argparse hands everything after CONFIG over unparsed (overrides are free-form), so the command's own options
    are picked out here; ``--resume X`` becomes the override ``--checkpoint.resume=X``.
    """
    overrides: list[str] = []
    found: dict[str, str] = {}
    items = list(items)
    i = 0
    while i < len(items):
        item = items[i]
        name, sep, value = item[2:].partition("=") if item.startswith("--") else ("", "", "")
        if name in options:
            if not sep:
                if i + 1 >= len(items):
                    raise ValueError(f"--{name} needs a value")
                i += 1
                value = items[i]
            found[name] = value
        elif sep and name:
            overrides.append(item)  # the config loader names unknown keys
        else:
            raise ValueError(f"unexpected argument {item!r}: config overrides look like --section.key=value")
        i += 1
    if "resume" in found:
        overrides.append(f"--checkpoint.resume={found['resume']}")
    return overrides, found


def _load(config: str, overrides: list[str]) -> "TrainConfig":
    from .config import load_config

    return load_config(config, overrides)


def register_train(parser: argparse.ArgumentParser) -> Runner:
    """Arguments of ``firered train``; returns its runner."""
    parser.description = ("Train FireRed-Image-Edit (full fine-tune or LoRA) from a stage config. Any "
                          "--section.key=value overrides the config; --resume latest continues a run.")
    parser.add_argument("config", help="YAML config file or shipped config name (tiny_sft, sft, lora, ...)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--a.b=value",
                        help="config overrides, and --resume latest|PATH")
    return run_train


def run_train(args: argparse.Namespace) -> int:
    from .scale.distributed import leave_process_group

    overrides, _ = split_overrides(args.overrides, ("resume",))
    cfg = _load(args.config, overrides)
    try:
        exported = _train(cfg)
    finally:
        leave_process_group()
    for path in exported:
        print(f"wrote {path}", flush=True)
    return 0


def _train(cfg: TrainConfig) -> list[Path]:
    """Run the config's trainer (the transformer's, or the VAE's for ``target: vae``); returns the exported files."""
    if cfg.target == "vae":
        from .loop.vae_trainer import VAETrainer

        vae_result = VAETrainer(cfg).run()
        log.info("done: %d VAE steps, final loss %.5f", vae_result.steps, vae_result.final_loss)
        return list(vae_result.exported)
    from .loop.trainer import Trainer

    result = Trainer(cfg).run()
    log.info("done: %d steps, final loss %.5f", result.steps, result.final_loss)
    return list(result.exported)


def register_cache(parser: argparse.ArgumentParser) -> Runner:
    """Arguments of ``firered cache``; returns its runner."""
    parser.description = ("Encode every training and validation sample of a config once (VAE latents and "
                          "condition embeddings) into data.cache_dir, for training without the encoder.")
    parser.add_argument("config", help="YAML config file or shipped config name")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per VAE call (default 8)")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per cache file (default 256)")
    parser.add_argument("--latent-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="storage of latents (default float32)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--a.b=value", help="config overrides")
    return run_cache


def run_cache(args: argparse.Namespace) -> int:
    from .cache.command import cache_from_config
    from .scale.distributed import leave_process_group

    overrides, found = split_overrides(args.overrides, _CACHE_OPTIONS)
    batch_size = int(found.get("batch-size", args.batch_size))
    shard_size = int(found.get("shard-size", args.shard_size))
    latent_dtype = found.get("latent-dtype", args.latent_dtype)
    if batch_size < 1 or shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be >= 1")
    if latent_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--latent-dtype must be float32 or bfloat16, got {latent_dtype!r}")
    cfg = _load(args.config, overrides)
    try:
        written = cache_from_config(cfg, batch_size=batch_size, shard_size=shard_size, latent_dtype=latent_dtype)
    finally:
        leave_process_group()
    print(f"cached {written} samples in {cfg.data.cache_dir}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m firered_train.cli {train,cache} ...``: the same commands without the ``firered`` dispatcher."""
    from firered_core.cli import EXIT_INTERRUPTED, EXIT_USAGE, _configure_logging, _expected_errors, _one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = 0
    while argv and argv[0] in ("-v", "-vv"):
        verbose += len(argv.pop(0)) - 1
    commands = {"train": register_train, "cache": register_cache}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m firered_train.cli [-v] {{{','.join(commands)}}} CONFIG [--a.b=value ...]",
              file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(verbose)
    sub = argparse.ArgumentParser(prog=f"firered {argv[0]}")
    run = commands[argv[0]](sub)
    try:
        return int(run(sub.parse_args(argv[1:])))
    except KeyboardInterrupt:
        print("firered: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected_errors() as exc:
        print(f"firered {argv[0]}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
