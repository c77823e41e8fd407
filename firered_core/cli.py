"""The ``firered`` command line (also ``python -m firered_core``).

``firered edit [IMAGE...] --instruction TEXT -o OUT.png`` runs the edit pipeline with a progress bar and writes
the result atomically (an existing file is kept unless ``--overwrite``). No image means text-to-image. Without
``--model`` the embedded default model (``firered_core/default/``) is used when it is installed. ``--model``
takes a diffusers-format folder or ComfyUI single files (repeat it or separate with commas; the transformer may
be a ComfyUI-GGUF ``.gguf`` file, kept quantised); ``--lora
PATH[:STRENGTH]`` may be repeated. Computation is float32 on the CPU unless ``--dtype``/``--device`` say
otherwise (bfloat16 is the default on CUDA). ``--offload none|model|blocks`` and ``--max-vram GB`` choose how the
model shares the device's memory (``FireRedEditPipeline.set_offload``; docs/MEMORY.md): everything on the device
(the default), one component at a time, or the transformer's blocks streamed within the budget.
``--size-mode match`` makes the output at Picture 1's own pixel size, aligned with it (not shifted or zoomed);
``--vae-ref-area`` / ``--cond-ref-area`` set the pixels the references are encoded at for the VAE and for the
condition encoder (default: the model's, ~1024^2 and ~384^2 for the released model).

Subcommands are pluggable: besides the built-in ``edit``, any installed distribution can add one through the
entry-point group ``firered.commands``. The entry point's name is the subcommand; its object is a function
``register(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]`` that adds its arguments to
``parser`` (and may set ``parser.description``) and returns the function that runs the command and returns the
exit code. An entry point is imported only when its subcommand runs, so a heavy or broken plugin never slows
down or breaks ``firered edit``, and this package never imports the packages that provide them.

Exit codes: 0 success; 2 bad usage or bad input, reported as one line on stderr without a traceback (missing or
unreadable files, invalid images, weights or configs, an empty instruction, a size the model cannot make, an
existing output without ``--overwrite`` or an output folder that is not writable; all but the weights and
configs are checked before torch is imported, so a rejection takes a fraction of a second); 130 interrupted (Ctrl-C or a cancel hook). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from . import __version__

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "firered.commands"
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default" / "model"  # firered_core.default.MODEL_DIR
DTYPES = ("float32", "bfloat16")  # no float16: this model family overflows in it (black or NaN images)
SIZE_MODES = ("area", "match")  # sizing.SIZE_MODES
SAMPLERS = ("euler", "stochastic")  # sampler.SAMPLERS, named here so `firered --help` need not import torch
OFFLOAD_MODES, GB = ("none", "model", "blocks"), 2**30  # offload's, named here so a bad flag is refused without torch

Runner = Callable[[argparse.Namespace], int]
Register = Callable[[argparse.ArgumentParser], Runner]


# ---------------------------------------------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``firered`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    top = _top_parser()
    args = top.parse_args(list(sys.argv[1:] if argv is None else argv))
    _configure_logging(args.verbose)
    if args.command is None:
        top.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        register = _find_command(args.command)
        sub = argparse.ArgumentParser(prog=f"firered {args.command}")
        run = register(sub)
        return int(run(sub.parse_args(args.args)))
    except BaseException as exc:
        if isinstance(exc, _interruptions()):
            print(f"firered {args.command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if not isinstance(exc, _expected_errors()):
            raise
        if args.verbose >= 2:
            log.exception("firered %s failed", args.command)
        print(f"firered {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _top_parser() -> argparse.ArgumentParser:
    names = ", ".join(sorted(_command_names()))
    parser = argparse.ArgumentParser(
        prog="firered", description="FireRed-Image-Edit in plain PyTorch.",
        epilog=f"commands: {names}. Run 'firered COMMAND --help' for the options of a command.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v: info; -vv: debug, and tracebacks for input errors)")
    parser.add_argument("--version", action="version", version=f"firered {__version__}")
    parser.add_argument("command", nargs="?", metavar="COMMAND", help=names)
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _command_names() -> set[str]:
    return {"edit"} | set(_entry_points())


def _find_command(name: str) -> Register:
    if name == "edit":  # built in; a plugin cannot shadow it
        return register_edit
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(sorted(_command_names()))
        raise ValueError(f"unknown command {name!r} (available: {known})")
    register = ep.load()
    if not callable(register):
        raise TypeError(f"entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r} is not callable")
    return register


def _interruptions() -> tuple[type[BaseException], ...]:
    """Ctrl-C, and the cancel hook's exception once its module (which pulls in torch) has been imported: before
    that nothing can have raised it, and a rejected input must not pay for importing torch."""
    progress = sys.modules.get(f"{__package__}.progress")
    return (KeyboardInterrupt,) if progress is None else (KeyboardInterrupt, progress.Cancelled)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: reported in one line. Anything else is a bug and keeps its traceback."""
    from .config import ConfigError

    errors: list[type[BaseException]] = [ValueError, ConfigError, FileNotFoundError, FileExistsError,
                                         IsADirectoryError, NotADirectoryError, PermissionError]
    safetensors_io = sys.modules.get(f"{__package__}.loading.safetensors_io")  # imported only once weights are read
    if safetensors_io is not None:
        errors.append(safetensors_io.WeightFileError)
    return tuple(errors)


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="firered: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# firered edit
# ---------------------------------------------------------------------------------------------------------------


def register_edit(parser: argparse.ArgumentParser) -> Runner:
    """Arguments of ``firered edit``; returns its runner."""
    parser.description = "Edit images following an instruction (no image: generate from the instruction)."
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="reference images, 1-3 natively; the output "
                        "takes the aspect of the last one")
    parser.add_argument("--instruction", "-p", required=True, help="what to do, e.g. 'make the sky purple'")
    parser.add_argument("-o", "--output", required=True, help="output image file (.png recommended)")
    parser.add_argument("--model", action="append", default=[], metavar="PATH",
                        help="diffusers folder or ComfyUI .safetensors files, the transformer possibly a .gguf "
                        "(repeat or comma-separate); default: the embedded model")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                        help="LoRA file and strength (default 1.0); repeatable")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model folder's "
                        "defaults.json, e.g. 10 for the embedded model; 40 without one)")
    parser.add_argument("--cfg", type=float, default=None, help="true CFG scale; <= 1 disables it (default: "
                        "the model folder's defaults.json, e.g. 1 for the embedded model; 4 without one)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--width", type=int, default=None, help="output width, a multiple of the model's token "
                        "size (default: the model's default area at the last image's aspect; with only --height, "
                        "follows that aspect)")
    parser.add_argument("--height", type=int, default=None, help="output height (likewise)")
    parser.add_argument("--size-mode", choices=SIZE_MODES, default="area",
                        help="area (default): the model's area at the last image's aspect, or --width/--height; "
                        "match: Picture 1's own pixel size, aligned with it (padded to the model's token size "
                        "internally and cropped back)")
    parser.add_argument("--vae-ref-area", default=None, metavar="PIXELS", help="pixels each reference is resized "
                        "to for the VAE, as N or WxH (e.g. 1024x1024; default: the model's area)")
    parser.add_argument("--cond-ref-area", default=None, metavar="PIXELS", help="pixels each reference is resized "
                        "to for the condition encoder, as N or WxH (default: the encoder's own, 384x384 for "
                        "Qwen2.5-VL; the embedded model's encoder reads no images and ignores it)")
    parser.add_argument("--negative", default=" ", help="negative prompt for true CFG (default ' ')")
    parser.add_argument("--dtype", default=None, metavar="{" + ",".join(DTYPES) + "}", help="compute dtype "
                        "(default float32 on CPU, bfloat16 on CUDA; no float16: the model overflows in it)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--fp8", action="store_true", help="store transformer weights in fp8 (less memory; "
                        "scaled-fp8 files stay as stored)")
    parser.add_argument("--fp8-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="store the condition encoder's weights in fp8 (~half its memory); default: as its "
                        "file is (fp8 files such as qwen_2.5_vl_7b_fp8_scaled stay fp8, --no-fp8-encoder expands "
                        "them)")
    parser.add_argument("--offload", default="none", metavar="MODE",
                        help="how weights share the device: none (default: all on --device), model (one component "
                        "at a time), blocks (also stream the transformer's blocks); see docs/MEMORY.md")
    parser.add_argument("--max-vram", default=None, metavar="GB",
                        help="most weights to keep on the device, in GB (2^30 bytes); with --offload blocks as many "
                        "transformer blocks stay resident as fit (default: no limit)")
    add_keep_unedited(parser, "keep Picture 1's own pixels outside the area the edit changed (default: the "
                      "model folder's defaults.json; on for the embedded model, off otherwise)")
    add_sampler(parser, "euler: deterministic steps; stochastic: re-noise every step (default: the model folder's "
                "scheduler config; stochastic for the embedded model, euler for the released ones)")
    parser.add_argument("--compare", action="store_true", help="also write OUTPUT's stem + '_compare' + suffix: "
                        "the inputs and the result side by side")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT (and the comparison) if it exists")
    return run_edit


@dataclass(frozen=True)
class _EditInputs:
    """``firered edit``'s arguments, checked; none of it needed torch."""

    output: Path
    compare: Path | None
    model: Path | list[Path]
    refs: list["Image.Image"]
    loras: list[tuple[Path, float]]
    offload: str
    max_vram: int | None
    vae_ref_area: int | None = None
    cond_ref_area: int | None = None


def check_edit_args(args: argparse.Namespace) -> _EditInputs:
    """Every cheap check of ``firered edit``, before torch is imported or a weight is read: output path (its folder
    writable), numbers, sizes the model can make, model and LoRA paths, and the images themselves."""
    from .images import check_output_path, load_image
    from .sizing import check_area, folder_token_size, match_canvas, output_size

    output = check_output_path(Path(args.output).expanduser(), overwrite=args.overwrite)
    compare = check_output_path(output.with_name(f"{output.stem}_compare{output.suffix}"),
                                overwrite=args.overwrite) if args.compare else None
    if not args.instruction.strip():
        raise ValueError("--instruction is empty: describe the edit to make")
    if args.cfg is not None and not math.isfinite(args.cfg):
        raise ValueError(f"--cfg must be a finite number, got {args.cfg}")
    for name in ("steps", "width", "height"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.dtype is not None and args.dtype not in DTYPES:
        why = " (this model family overflows in float16: black or NaN images)" if args.dtype == "float16" else ""
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {args.dtype!r}{why}")
    offload, max_vram = parse_offload(args.offload, args.max_vram)
    areas = [check_area(f"--{name}", parse_area(f"--{name}", getattr(args, name.replace("-", "_"))))
             for name in ("vae-ref-area", "cond-ref-area")]
    loras = [parse_lora(spec) for spec in args.lora]
    model = resolve_model(args.model)
    refs = [load_image(Path(p).expanduser()) for p in args.images]
    unit = folder_token_size(model) if isinstance(model, Path) else None  # files: checked once loaded
    if args.size_mode == "match":
        if not refs:
            raise ValueError("--size-mode match follows Picture 1, but no image was given")
        try:
            match_canvas(unit or 1, refs[0].width, refs[0].height, args.width, args.height)
        except ValueError as exc:
            raise ValueError(str(exc).replace("size_mode='match'", "--size-mode match").replace(
                "size_mode='area'", "--size-mode area").replace(" (0 in the node)", "")) from None
    elif unit is not None and (args.width is not None or args.height is not None):
        aspect = refs[-1].width / refs[-1].height if refs else 1.0
        try:  # the area is not needed when a side is given
            output_size(unit, 1.0, aspect, args.width, args.height)
        except ValueError as exc:
            raise ValueError(f"--{exc}") from None
    return _EditInputs(output, compare, model, refs, loras, offload, max_vram, *areas)


def run_edit(args: argparse.Namespace) -> int:
    """Validate everything cheap first (no torch yet), then load the model, edit, and write the output
    atomically."""
    start = time.perf_counter()
    checked = check_edit_args(args)
    import torch

    from .images import save_image, side_by_side
    from .pipeline import FireRedEditPipeline
    from .progress import tqdm_progress

    model, refs, loras, offload, max_vram = (checked.model, checked.refs, checked.loras, checked.offload,
                                             checked.max_vram)
    device = _resolve_device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))

    log.info("loading %s (%s on %s, offload %s)", model, dtype, device, offload)
    if model == DEFAULT_MODEL_DIR:
        from .default import load_default_pipeline

        pipe = load_default_pipeline(dtype=dtype, device=device if offload == "none" else "cpu")
        pipe.set_offload(offload, device=device, max_vram=max_vram)
    else:  # a folder from firered export-default brings its steps, CFG and area (defaults.json)
        pipe = FireRedEditPipeline.from_pretrained(model, dtype=dtype, fp8=args.fp8, device=device,
                                                   fp8_encoder=args.fp8_encoder, offload=offload,
                                                   max_vram=max_vram)
    for path, strength in loras:
        pipe.load_lora(path, strength)
    pipe.output_size(refs, args.width, args.height, args.size_mode)  # the model's own rule, before any sampling
    with tqdm_progress("firered edit") as progress:
        result = pipe.edit(refs, args.instruction, negative_prompt=args.negative, steps=args.steps,
                           true_cfg_scale=args.cfg, seed=args.seed, width=args.width, height=args.height,
                           progress=progress, keep_unedited=args.keep_unedited, sampler=args.sampler,
                           size_mode=args.size_mode, vae_ref_area=checked.vae_ref_area,
                           cond_ref_area=checked.cond_ref_area)
    meta = {"instruction": args.instruction, "negative": args.negative, "steps": result.steps,
            "cfg": result.true_cfg_scale,
            "seed": args.seed, "width": result.width, "height": result.height,
            "keep_unedited": result.keep_unedited, "sampler": result.sampler, "size_mode": result.size_mode,
            "loras": [[p.name, s] for p, s in loras]}
    save_image(result.image, checked.output, overwrite=args.overwrite, metadata={"firered": json.dumps(meta)})
    if checked.compare is not None:
        save_image(side_by_side([*refs, result.image]), checked.compare, overwrite=args.overwrite)
        print(f"wrote {checked.compare} (inputs | result)", flush=True)
    print(f"wrote {checked.output} ({result.width}x{result.height}, seed {result.seed}, {result.steps} steps, "
          f"{time.perf_counter() - start:.1f} s)", flush=True)
    return EXIT_OK


def add_keep_unedited(parser: argparse.ArgumentParser, text: str) -> None:
    """``--keep-unedited`` / ``--no-keep-unedited`` (default None: the model's own setting); the older
    ``--[no-]preserve-unedited`` still work, hidden from the help."""
    parser.add_argument("--keep-unedited", action=argparse.BooleanOptionalAction, default=None, help=text)
    for flag, value in (("--preserve-unedited", True), ("--no-preserve-unedited", False)):
        parser.add_argument(flag, dest="keep_unedited", action="store_const", const=value, default=None,
                            help=argparse.SUPPRESS)


def add_sampler(parser: argparse.ArgumentParser, text: str, default: str | None = None) -> None:
    """``--sampler euler|stochastic`` (``sampler.SAMPLERS``); the older ``--[no-]stochastic-sampling`` still
    work, hidden from the help."""
    parser.add_argument("--sampler", choices=SAMPLERS, default=default, help=text)
    for flag, value in (("--stochastic-sampling", "stochastic"), ("--no-stochastic-sampling", "euler")):
        parser.add_argument(flag, dest="sampler", action="store_const", const=value, default=default,
                            help=argparse.SUPPRESS)


def parse_offload(mode: str, max_vram_gb: str | None) -> tuple[str, int | None]:
    """``--offload`` and ``--max-vram`` checked: (mode, budget in bytes or None)."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}, got {mode!r}")
    if max_vram_gb is None:
        return mode, None
    try:
        gb = float(max_vram_gb)
    except ValueError:
        raise ValueError(f"--max-vram must be a number of GB, got {max_vram_gb!r}") from None
    if not math.isfinite(gb) or gb <= 0:
        raise ValueError(f"--max-vram must be a positive number of GB, got {max_vram_gb!r}")
    return mode, int(gb * GB)


def parse_area(flag: str, value: str | None) -> int | None:
    """``N`` or ``WxH`` (``1024x1024``) -> pixels; None stays None (the model's own)."""
    if value is None:
        return None
    parts = value.lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdigit() for part in parts):
        return math.prod(int(part) for part in parts)
    raise ValueError(f"{flag} must be a number of pixels (e.g. 1048576) or WxH (e.g. 1024x1024), got {value!r}")


def parse_lora(spec: str) -> tuple[Path, float]:
    """``PATH[:STRENGTH]`` -> (path, strength); a suffix that is not a number is part of the path (``C:\\x``)."""
    head, sep, tail = spec.rpartition(":")
    strength = 1.0
    path = spec
    if sep and head:
        try:
            strength = float(tail)
            path = head
        except ValueError:
            pass
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--lora {spec!r}: file {str(p)!r} does not exist")
    return p, strength


def resolve_model(values: Sequence[str]) -> Path | list[Path]:
    """The --model values as one folder or a list of files; the embedded default when none is given."""
    parts = [Path(piece.strip()).expanduser() for value in values for piece in value.split(",") if piece.strip()]
    if not parts:
        return default_model()
    for p in parts:
        if not p.exists():
            raise FileNotFoundError(f"--model {str(p)!r} does not exist")
    if len(parts) == 1 and parts[0].is_dir():
        return parts[0]
    folders = [str(p) for p in parts if p.is_dir()]
    if folders:
        raise ValueError(f"--model: a folder ({folders[0]!r}) cannot be combined with other model paths")
    return parts


def default_model() -> Path:
    """The embedded default model folder, or a clear error when it is not installed."""
    from .default import DefaultModelMissing, model_dir

    try:
        return model_dir()
    except DefaultModelMissing as exc:
        raise FileNotFoundError(f"no --model given and {exc}; pass --model with a diffusers folder or ComfyUI "
                                ".safetensors files") from None


def _resolve_device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available on this machine")
    return device


if __name__ == "__main__":
    sys.exit(main())
