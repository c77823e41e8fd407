"""Everything the FireRed nodes take from ComfyUI, in one place, each with a fallback for running without it.

The nodes are plain classes that unit tests call directly, with no ComfyUI installed. Every ComfyUI module is
therefore imported here, lazily, at the moment it is needed:

==================================  =================================================  ==============================
need                                inside ComfyUI                                      without ComfyUI
==================================  =================================================  ==============================
model files by name                 ``folder_paths`` (``diffusion_models``, ...)         absolute paths only
progress                            ``comfy.utils.ProgressBar``                         none
live previews: on or off, size      ``comfy.cli_args``: ``--preview-method``,            off
                                    ``--preview-size``
interruption                        ``comfy.model_management``'s interrupt flag        none
progress text on a node             ``PromptServer.instance.send_progress_text``         a DEBUG log line
where trained LoRAs go              ``models/loras`` (first folder), runs under         ``$FIRERED_LORA_DIR``
                                    ``output/firered_lora_runs``                        (absolute), runs in its
                                                                                        ``.firered_lora_runs``
memory: load, offload, free         ``comfy.model_patcher.ModelPatcher`` +              the model stays on the CPU
                                    ``comfy.model_management.load_models_gpu``
default compute dtype               bfloat16 where ComfyUI says the device has it       float32
server-owned settings files         ``folder_paths.get_user_directory()``               none
==================================  =================================================  ==============================

Model names are checked before any path is built: a name with a ``..`` part or an absolute path inside ComfyUI
is refused (the front end only ever offers names from the model folders), so a graph cannot make the plugin read
files elsewhere.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path, PurePath
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .common import FireRedNodeError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".sft")  # pickled formats are refused by the core, so they are not offered
# GGUF transformers (ComfyUI-GGUF's files) sit in diffusion_models (= unet); ComfyUI's own listing leaves .gguf out
GGUF_SUFFIX = ".gguf"
GGUF_KINDS = ("diffusion_models", "unet")


def comfy_module(name: str) -> ModuleType | None:
    """The ComfyUI module ``name`` (e.g. ``"folder_paths"``, ``"comfy.utils"``), or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def in_comfyui() -> bool:
    return comfy_module("folder_paths") is not None


# ---------------------------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------------------------


def model_files(kind: str) -> list[str]:
    """Names of the weight files in ComfyUI's model folder ``kind`` (``loras``, ``vae``...); [] outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    names = {n for n in folder_paths.get_filename_list(kind) if n.lower().endswith(WEIGHT_SUFFIXES)}
    if kind in GGUF_KINDS:
        names.update(_gguf_files(folder_paths.get_folder_paths(kind)))
    return sorted(names)


def _gguf_files(bases: list[str]) -> set[str]:
    """``.gguf`` files under the folders ``bases``, relative, '/'-separated (as ComfyUI names model files)."""
    found = set()
    for base in bases:
        for root, _, files in os.walk(base, followlinks=True):
            found.update(PurePath(os.path.relpath(os.path.join(root, f), base)).as_posix()
                         for f in files if f.lower().endswith(GGUF_SUFFIX))
    return found


def diffusers_folders() -> list[str]:
    """Folders with a ``model_index.json`` under ComfyUI's ``models/diffusers``, relative, '/'-separated."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return []
    found = set()
    for base in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base, followlinks=True):
            if "model_index.json" in files:
                found.add(PurePath(os.path.relpath(root, base)).as_posix())
                dirs.clear()  # a model folder's own subfolders (transformer/, vae/...) are not models
    return sorted(found)


def check_name(name: Any, what: str) -> str:
    """``name`` as a non-empty string without path tricks (``..`` parts, NUL bytes)."""
    if not isinstance(name, str) or not name.strip():
        raise FireRedNodeError(f"{what}: no file chosen")
    if "\x00" in name:
        raise FireRedNodeError(f"{what}: {name!r} contains a NUL byte")
    if ".." in name.replace("\\", "/").split("/"):
        raise FireRedNodeError(f"{what}: {name!r} is refused: names may not contain '..' parts")
    return name


def resolve_model_file(kind: str, name: Any, what: str) -> Path:
    """The file chosen as ``name`` in ComfyUI's ``kind`` folder (outside ComfyUI: an absolute path)."""
    name = check_name(name, what)
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        path = Path(name)
        if not path.is_absolute():
            raise FireRedNodeError(f"{what}: {name!r} is not an absolute path; outside ComfyUI model files cannot "
                                   f"be looked up in its '{kind}' folder")
    else:
        if os.path.isabs(name):
            raise FireRedNodeError(f"{what}: {name!r} is an absolute path; choose a file from ComfyUI's '{kind}' "
                                   "model folder")
        full = folder_paths.get_full_path(kind, name)
        if full is None:
            searched = ", ".join(folder_paths.get_folder_paths(kind)) or "no folders"
            raise FireRedNodeError(f"{what}: {name!r} was not found in ComfyUI's '{kind}' folders ({searched})")
        path = Path(full)
    if not path.is_file():
        raise FireRedNodeError(f"{what}: model file {str(path)!r} does not exist")
    return path


def resolve_diffusers_folder(name: Any, what: str) -> Path:
    """The diffusers folder ``name`` (relative to ``models/diffusers``; outside ComfyUI an absolute path)."""
    name = check_name(name, what)
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        candidates = [Path(name)] if Path(name).is_absolute() else []
    elif os.path.isabs(name):
        raise FireRedNodeError(f"{what}: {name!r} is an absolute path; choose a folder from models/diffusers")
    else:
        candidates = [Path(base) / name for base in folder_paths.get_folder_paths("diffusers")]
    for folder in candidates:
        if (folder / "model_index.json").is_file():
            return folder
    raise FireRedNodeError(f"{what}: no diffusers model folder (with model_index.json) named {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# Progress and interruption
# ---------------------------------------------------------------------------------------------------------------


def cancel_hook() -> Callable[[], bool] | None:
    """A ``firered_core.progress.CancelFn`` that raises ComfyUI's own interrupt exception when the user stops.

    Raising ComfyUI's exception (rather than returning True, which makes the core raise ``Cancelled``) lets
    ComfyUI report the run as interrupted, not failed. Outside ComfyUI there is nothing to poll: None.
    """
    management = comfy_module("comfy.model_management")
    if management is None:
        return None

    def poll() -> bool:
        management.throw_exception_if_processing_interrupted()
        return False

    return poll


PREVIEW_SIZE = 512  # px, longest side of a preview image (ComfyUI's --preview-size default)


def progress_with_preview(total: int, max_size: int = PREVIEW_SIZE
                          ) -> Callable[[int, "Image.Image | None"], None] | None:
    """``update(done, preview)`` for ComfyUI's progress bar, ``preview`` a PIL image shown on the node (or None),
    which ComfyUI scales to fit ``max_size`` px as it sends it; None outside ComfyUI."""
    utils = comfy_module("comfy.utils")
    if utils is None:
        return None
    bar = utils.ProgressBar(total)

    def update(done: int, preview: "Image.Image | None" = None) -> None:
        bar.update_absolute(done, total, None if preview is None else ("JPEG", preview, max_size))

    return update


def sampling_preview_size() -> int | None:
    """The longest side of sampler previews when ComfyUI shows them (``--preview-method`` other than ``none``),
    its ``--preview-size``; None when previews are off or outside ComfyUI.

    Every method but ``none`` gets the plugin's latent -> RGB projection: ComfyUI itself falls back to its own
    projection when it has no TAESD decoder for a model, and there is none for this model's latents.
    """
    cli_args = comfy_module("comfy.cli_args") if in_comfyui() else None
    args = getattr(cli_args, "args", None)
    method = getattr(args, "preview_method", None)
    if method is None or method == cli_args.LatentPreviewMethod.NoPreviews:
        return None
    return int(args.preview_size)


def progress_text(text: str, node_id: str | None) -> None:
    """Show ``text`` on node ``node_id`` in ComfyUI's front end (``send_progress_text``); a DEBUG line elsewhere."""
    server = comfy_module("server") if in_comfyui() and node_id is not None else None
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    send = getattr(instance, "send_progress_text", None)
    if send is None:
        log.debug("progress: %s", text)
        return
    send(text, node_id)


# ---------------------------------------------------------------------------------------------------------------
# Where training writes
# ---------------------------------------------------------------------------------------------------------------

LORA_DIR_ENV = "FIRERED_LORA_DIR"
RUNS_FOLDER = "firered_lora_runs"


def lora_output_folder() -> Path:
    """The folder trained LoRAs are written to: ComfyUI's first ``loras`` folder, else ``$FIRERED_LORA_DIR``."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is not None:
        folders = folder_paths.get_folder_paths("loras")
        if not folders:
            raise FireRedNodeError("ComfyUI has no 'loras' model folder to write the trained LoRA to")
        return Path(folders[0])
    configured = os.environ.get(LORA_DIR_ENV, "")
    if not configured or not os.path.isabs(configured):
        raise FireRedNodeError(f"outside ComfyUI, set the environment variable {LORA_DIR_ENV} to the absolute path "
                               f"of the folder trained LoRAs go to (now {configured!r})")
    return Path(configured)


def lora_runs_folder() -> Path:
    """Where training runs keep checkpoints and logs: ComfyUI's output folder (its temp folder is emptied at
    every start, and a run must survive a restart to be resumed), else a hidden folder beside the LoRAs."""
    folder_paths = comfy_module("folder_paths")
    output = getattr(folder_paths, "get_output_directory", None)
    if output is not None:
        return Path(output()) / RUNS_FOLDER
    return lora_output_folder() / f".{RUNS_FOLDER}"


def user_config_file(relative: str) -> Path | None:
    """``relative`` under ComfyUI's user folder (``folder_paths.get_user_directory()``); None outside ComfyUI.

    The server's owner edits these files; the front end's userdata API only reaches per-user folders
    (``user/default``, ``user/<name>_<uuid>``), so a FireRed subfolder there is out of a browser's reach.
    """
    folder_paths = comfy_module("folder_paths")
    user_directory = getattr(folder_paths, "get_user_directory", None)
    return None if user_directory is None else Path(user_directory()) / relative


# ---------------------------------------------------------------------------------------------------------------
# Devices and memory
# ---------------------------------------------------------------------------------------------------------------


def devices() -> tuple["torch.device", "torch.device"]:
    """(device to compute on, device to keep weights on when idle): ComfyUI's choice, else CPU for both."""
    import torch

    management = comfy_module("comfy.model_management")
    if management is None:
        cpu = torch.device("cpu")
        return cpu, cpu
    return management.get_torch_device(), management.unet_offload_device()


def default_dtype() -> "torch.dtype":
    """bfloat16 where ComfyUI says the compute device handles it well, else float32.

    float16 is never chosen: this model family overflows in it (ComfyUI runs it in bf16 or fp32 only).
    """
    import torch

    management = comfy_module("comfy.model_management")
    if management is None:
        return torch.float32
    load_device, _ = devices()
    if load_device.type != "cpu" and management.should_use_bf16(load_device):
        return torch.bfloat16
    return torch.float32


def manage(module: "torch.nn.Module") -> Any | None:
    """A ComfyUI ``ModelPatcher`` over ``module`` so ComfyUI can load, offload and free it; None outside."""
    patcher = comfy_module("comfy.model_patcher")
    if patcher is None:
        return None
    load_device, offload_device = devices()
    return patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


def weights_changed(patcher: Any | None) -> None:
    """Tell ComfyUI that modules were added to or removed from the managed model (LoRA adapters), so its memory
    estimate is recomputed: ``ModelPatcher`` caches the size it measured first."""
    if patcher is not None and hasattr(patcher, "size"):
        patcher.size = 0


def fits_whole(patcher: Any) -> bool:
    """Whether ``patcher``'s whole model fits in the compute device's free memory beside ComfyUI's inference
    reserve (what it has loaded already counts as free)."""
    management = comfy_module("comfy.model_management")
    if management is None or patcher is None:
        return False
    free = management.get_free_memory(patcher.load_device) + patcher.loaded_size()
    return free >= patcher.model_size() + management.minimum_inference_memory()


def load_for_use(patchers: "Sequence[Any]", full: bool = False) -> None:
    """Ask ComfyUI to put these patchers' models on the compute device, freeing or offloading others as needed.

    Unless ``full``, no full load is forced: where the device is short of memory ComfyUI loads what fits and
    leaves the rest of the layers on the offload device, which stream their weights at compute time (every FireRed
    layer speaks ComfyUI's ``comfy_cast_weights`` protocol, see ``firered_core.ops``); ComfyUI's inference reserve
    stands for the activations. ``full`` loads every weight (training, whose trainer computes where the
    transformer's parameters are; a component with LoRA adapters that fits whole).
    """
    management = comfy_module("comfy.model_management")
    live = [p for p in patchers if p is not None]
    if management is not None and live:
        management.load_models_gpu(live, force_full_load=full)
