"""LoRAs that firered_core saves load in the real ComfyUI 0.3.75 and change its weights exactly as merge_lora does.

The proof of interop, run against ComfyUI's own code (``scripts/comfyui_env.sh`` sets it up; see
``tests/comfyui_harness.py``):

1. A FireRedTransformer with random weights is saved with ``save_comfy_transformer`` into ComfyUI's
   ``models/diffusion_models``. ComfyUI's detection (``comfy/model_detection.py``: the key ``txt_norm.weight``)
   infers only ``in_channels`` and ``num_layers`` from a Qwen-Image file; every other size is a default of its
   ``QwenImageTransformer2DModel`` (24 heads of 128, joint_attention_dim 3584). So the smallest model ComfyUI can
   build is one full-width block: 380 M parameters, 760 MB in bfloat16 - not the 'tiny' preset.
2. For each layout ``save_lora`` writes (comfyui, kohya, peft) a LoRA of rank 4 on every Linear layer (20
   layers, every layer name the architecture has: attention and MLPs of both streams, modulation, input, time
   and output layers) with random ``up`` factors, so it is not a no-op.
3. In ComfyUI's venv: ``comfy.sd.load_diffusion_model`` loads the model, ``comfy.utils.load_torch_file`` +
   ``comfy.sd.load_lora_for_models`` the LoRA, ``ModelPatcher.patch_model`` applies it. Asserted: no
   "lora key not loaded" / "NOT LOADED" line in the log, one patch per LoRA layer, and every patched weight equal
   to ``firered_core.lora.merge_lora`` of the same file on the same base (loaded by firered_core's own loader).
4. Through the server: ``UNETLoader -> LoraLoaderModelOnly -> ModelSave`` (ModelSave is an output node, so the
   graph executes) writes ComfyUI's merged model to disk, which is compared with merge_lora the same way.

The peft layout keeps alpha only in diffusers' metadata, which ComfyUI ignores (it applies scale 1): its LoRA
here has alpha = rank, the only case where that layout means the same to ComfyUI (comfyui/kohya use alpha 2).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from firered_core.config import TransformerConfig
from firered_core.loading import load_transformer_file, open_weights, save_comfy_transformer
from firered_core.lora import add_trainable_lora, merge_lora, remove_lora, save_lora
from firered_core.transformer import FireRedTransformer

from ..comfyui_harness import make_base_dir, require_comfyui, run_in_comfyui, start_server

log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

CONFIG = TransformerConfig(num_layers=1)  # full width: see the module docstring
RANK = 4
ALPHAS = {"comfyui": 2.0, "kohya": 2.0, "peft": None}  # None: alpha = rank
MODEL_NAME = "firered-one-block.safetensors"
TOL = 1e-6  # |ComfyUI - merge_lora|; both add a float32 low-rank product to the same float32 base
NOT_LOADED = ("lora key not loaded", "NOT LOADED")
LOAD_PROBLEMS = ("unet missing", "unet unexpected", "left over keys")


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def _random_transformer(seed: int) -> FireRedTransformer:
    """One full-width block in bfloat16, N(0, 0.02) weights (built on meta: no throw-away default init)."""
    gen = torch.Generator().manual_seed(seed)
    model = FireRedTransformer(CONFIG, device="meta", dtype=torch.bfloat16).to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def _linear_paths(model: nn.Module) -> list[str]:
    """Every layer that takes LoRA adapters (each ops.Linear)."""
    return [n for n, m in model.named_modules() if isinstance(getattr(m, "adapters", None), nn.ModuleList)]


def _save_random_lora(model: nn.Module, fmt: str, folder: Path, seed: int) -> Path:
    name = f"interop_{fmt}"
    torch.manual_seed(seed)  # the kaiming-initialised down factors
    add_trainable_lora(model, rank=RANK, alpha=ALPHAS[fmt], target_modules=_linear_paths(model), name=name,
                       freeze_base=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            for adapter in getattr(layer, "adapters", ()):
                if adapter.name == name:
                    adapter.up.weight.normal_(0.0, 0.1, generator=gen)  # trained-looking, not zero
    path = save_lora(model, folder / f"firered-{fmt}.safetensors", format=fmt, name=name)
    remove_lora(model, name)
    return path


@pytest.fixture(scope="module")
def comfy_base(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A ComfyUI base directory holding the one-block model and one LoRA per layout."""
    require_comfyui()
    base = make_base_dir(tmp_path_factory.mktemp("comfyui-lora"))
    model = _random_transformer(seed=0)
    model_path = save_comfy_transformer(model, base / "models" / "diffusion_models" / MODEL_NAME)
    loras = {fmt: _save_random_lora(model, fmt, base / "models" / "loras", seed=i + 1)
             for i, fmt in enumerate(ALPHAS)}
    return {"base": base, "model": model_path, "loras": loras, "layers": len(_linear_paths(model))}


# ---------------------------------------------------------------------------------------------------------------
# Python API route
# ---------------------------------------------------------------------------------------------------------------

# In ComfyUI's venv: load with ComfyUI, patch with each LoRA, compare with firered_core's merge_lora.
_API_SNIPPET = """
import logging
import torch
from safetensors import safe_open
import comfy.sd, comfy.utils
from firered_core.loading import load_transformer_file
from firered_core.lora import merge_lora

class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

capture = Capture()
logging.getLogger().addHandler(capture)
logging.getLogger().setLevel(logging.INFO)

patcher = comfy.sd.load_diffusion_model(INPUTS["model"])
out = {"model_class": type(patcher.model).__name__, "load_log": list(capture.lines),
       "dtype": str(next(patcher.model.diffusion_model.parameters()).dtype), "formats": {}}
base_file = safe_open(INPUTS["model"], "pt")
for fmt, path in INPUTS["loras"].items():
    capture.lines.clear()
    lora = comfy.utils.load_torch_file(path, safe_load=True)
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
    keys = sorted(patched.patches)
    patched.patch_model()
    theirs = patched.model.state_dict()
    reference = load_transformer_file(INPUTS["model"], dtype=torch.float32)
    report = merge_lora(reference, path)
    ours = reference.state_dict()
    worst, smallest_change = 0.0, float("inf")
    for key in keys:
        name = key.removeprefix("diffusion_model.")
        got = theirs[key].float()
        worst = max(worst, (got - ours[name]).abs().max().item())
        smallest_change = min(smallest_change, (got - base_file.get_tensor(name).float()).abs().max().item())
    patched.unpatch_model()
    out["formats"][fmt] = {"log": list(capture.lines), "patched": len(keys), "merged": report.applied,
                           "unmatched": report.unmatched, "max_abs_diff": worst,
                           "smallest_max_change": smallest_change, "sample_key": keys[0] if keys else None}
    del theirs, reference, ours, patched
emit(out)
"""


@pytest.fixture(scope="module")
def api_result(comfy_base: dict) -> dict:
    return run_in_comfyui(_API_SNIPPET, {"model": str(comfy_base["model"]),
                                         "loras": {f: str(p) for f, p in comfy_base["loras"].items()}})


def test_comfyui_builds_the_model_cleanly(api_result: dict) -> None:
    assert api_result["model_class"] == "QwenImage"
    assert api_result["dtype"] == "torch.float32"  # ComfyUI's CPU default: the comparison below is exact float32
    problems = [line for line in api_result["load_log"] if any(m in line for m in LOAD_PROBLEMS)]
    assert not problems, problems


@pytest.mark.parametrize("fmt", list(ALPHAS))
def test_lora_loads_in_comfyui_like_merge_lora(api_result: dict, comfy_base: dict, fmt: str) -> None:
    result = api_result["formats"][fmt]
    log.info("%s: %d patches, max |ComfyUI - merge_lora| = %.3g, smallest per-layer change %.3g", fmt,
             result["patched"], result["max_abs_diff"], result["smallest_max_change"])
    not_loaded = [line for line in result["log"] if any(m in line for m in NOT_LOADED)]
    assert not not_loaded, not_loaded[:5]
    assert result["patched"] == result["merged"] == comfy_base["layers"], result
    assert not result["unmatched"]
    assert result["smallest_max_change"] > 1e-3, "a layer was patched with a zero delta"
    assert result["max_abs_diff"] <= TOL, result


# ---------------------------------------------------------------------------------------------------------------
# Server route
# ---------------------------------------------------------------------------------------------------------------


def _graph(lora_name: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": MODEL_NAME, "weight_dtype": "default"}},
        "2": {"class_type": "LoraLoaderModelOnly",
              "inputs": {"model": ["1", 0], "lora_name": lora_name, "strength_model": 1.0}},
        "3": {"class_type": "ModelSave", "inputs": {"model": ["2", 0], "filename_prefix": "diffusion_models/merged"}},
    }


def run_lora_graph(base: Path, lora_name: str) -> Path:
    """Run ``_graph`` on a server over ``base``; checks success and a clean log, returns the saved model file."""
    with start_server(base) as server:
        info = server.get_json("/object_info")
        assert MODEL_NAME in info["UNETLoader"]["input"]["required"]["unet_name"][0]
        assert lora_name in info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0]
        entry = server.wait_for(server.queue(_graph(lora_name)))
        server_log = server.log
    assert entry["status"]["status_str"] == "success", entry["status"]
    not_loaded = [line for line in server_log.splitlines() if any(m in line for m in NOT_LOADED)]
    assert not not_loaded, not_loaded[:5]
    saved = sorted((base / "output" / "diffusion_models").glob("merged*.safetensors"))
    assert saved, "ModelSave wrote nothing"
    return saved[-1]


def test_server_graph_applies_the_lora(comfy_base: dict) -> None:
    lora_path = comfy_base["loras"]["comfyui"]
    saved = [run_lora_graph(comfy_base["base"], lora_path.name)]

    reference = load_transformer_file(comfy_base["model"], dtype=torch.float32)
    merge_lora(reference, lora_path)
    ours = reference.state_dict()
    prefix = "model.diffusion_model."
    worst, compared = 0.0, 0
    with open_weights(saved[0]) as src:
        for key in src.keys():
            if key.startswith(prefix) and key[len(prefix):] in ours:
                got = src.get(key).float()
                worst = max(worst, (got - ours[key[len(prefix):]]).abs().max().item())
                compared += 1
    log.info("server route: %d tensors compared, max |ComfyUI - merge_lora| = %.3g", compared, worst)
    assert compared == len(ours)
    assert worst <= TOL
