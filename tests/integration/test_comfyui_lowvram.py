"""ComfyUI's own partial loading on the FireRed components, in the real ComfyUI 0.3.75.

Each snippet runs in ComfyUI's venv (tests/comfyui_harness.py) and imports the plugin as ComfyUI does (a package
loaded from the checkout's ``__init__.py``), so the containers, patchers and placement are the plugin's own:

* ``ModelPatcher.load(device, lowvram_model_memory=B)`` on the transformer's patcher leaves it ``model_lowvram``
  with at most ``B`` bytes loaded, the layers it left behind flagged ``comfy_cast_weights``, and its output equal
  bit for bit to the fully loaded model's: plain, with one of our unmerged LoRAs attached, and with a patch
  added through ComfyUI's own ``add_patches`` (applied to the cast weight by ComfyUI's ``LowVramPatch`` when the
  layer is left behind, merged into the weight when it is loaded).
* The encoder, transformer and VAE are separate patchers: ``load_models_gpu`` lists them as separate entries,
  and making room for the transformer (``free_memory`` of its size, the transformer in use) takes it from the
  encoder (and the small VAE), never from the transformer.

What this cannot show: the compute and offload device are both the CPU here (ComfyUI turns its budget logic off
for a CPU load device, which is why the budget is passed to ``ModelPatcher.load`` directly), so no bytes really
cross a bus; the free memory of a GPU is emulated in the eviction test (a capacity minus what is loaded).
"""

from __future__ import annotations

import pytest

from ..comfyui_harness import REPO, run_in_comfyui

pytestmark = pytest.mark.slow

# The plugin imported as ComfyUI imports a custom node (its folder as a package), and a tiny transformer with
# seeded weights of real magnitudes, fed seeded inputs.
_SETUP = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("firered_plugin", INPUTS["repo"] + "/__init__.py",
                                              submodule_search_locations=[INPUTS["repo"]])
plugin = importlib.util.module_from_spec(spec); sys.modules["firered_plugin"] = plugin; spec.loader.exec_module(plugin)
from firered_plugin.nodes import weights_bundle
import comfy.model_patcher, comfy.model_management as mm
from firered_core.config import get_preset
from firered_core.transformer import FireRedTransformer

def tiny_transformer(seed):
    torch.manual_seed(seed)
    model = FireRedTransformer(get_preset("tiny").transformer).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn(p.shape) if "norm" in name and p.ndim == 1 else 0.15 * torch.randn(p.shape))
    return model

def call(model):
    cfg = model.config
    gen = torch.Generator().manual_seed(7)
    shapes = [(1, 4, 4), (1, 4, 4)]
    x = torch.randn(1, 32, cfg.in_channels, generator=gen)
    txt = torch.randn(1, 5, cfg.joint_attention_dim, generator=gen)
    with torch.inference_mode():
        return model(x, txt, None, torch.tensor([0.6]), shapes)

def patcher_for(model):
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(weights_bundle.FireRedTransformerWeights(model), load_device=cpu,
                                            offload_device=cpu)
"""


def test_partial_load_is_bit_identical_with_and_without_lora(tmp_path) -> None:
    code = _SETUP + """
from firered_core.lora import add_trainable_lora, remove_lora
cpu = torch.device("cpu")
out = {}
for case in ("plain", "our_lora", "comfy_patch"):
    model = tiny_transformer(3)
    if case == "our_lora":
        add_trainable_lora(model, rank=4, alpha=4, name="style")
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".up." in n:
                    p.normal_(0, 0.05)
    patcher = patcher_for(model)
    if case == "comfy_patch":  # ComfyUI's own weight patches, e.g. what its LoRA loader adds
        gen = torch.Generator().manual_seed(11)
        keys = [k for k in patcher.model.state_dict() if k.endswith("attn.to_q.weight") or k.endswith("img_mlp.net.2.weight")]
        shapes = dict((k, v.shape) for k, v in patcher.model.state_dict().items())
        patcher.add_patches({k: ("diff", (0.05 * torch.randn(shapes[k], generator=gen),)) for k in keys}, 1.0)
    size = patcher.model_size()
    # full load: the reference
    patcher.load(cpu, lowvram_model_memory=0, full_load=True)
    full = call(model)
    full_lowvram = bool(patcher.model.model_lowvram)
    patcher.unpatch_model(cpu)
    # partial load within a third of the weights
    budget = size // 3
    patcher.load(cpu, lowvram_model_memory=budget)
    partial = call(model)
    streamed = sorted(n for n, m in model.named_modules() if getattr(m, "comfy_cast_weights", False))
    patched = sorted(n for n, m in model.named_modules() if getattr(m, "weight_function", None))
    out[case] = dict(size=size, budget=budget, loaded=patcher.model.model_loaded_weight_memory,
                     lowvram=bool(patcher.model.model_lowvram), full_lowvram=full_lowvram,
                     streamed=len(streamed), patched=len(patched), equal=bool(torch.equal(full, partial)),
                     max_diff=float((full - partial).abs().max()), lora_effect=None)
    patcher.unpatch_model(cpu)
    if case == "our_lora":  # the adapters really change the output
        remove_lora(model, "style")
        out[case]["lora_effect"] = float((call(model) - full).abs().max())
emit(out)
"""
    result = run_in_comfyui(code, {"repo": str(REPO)})
    for case, r in result.items():
        assert r["lowvram"] and not r["full_lowvram"], (case, r)
        assert 0 < r["loaded"] <= r["budget"], (case, r)
        assert r["streamed"] > 0, (case, r)
        assert r["equal"], (case, r)
    assert result["comfy_patch"]["patched"] > 0  # ComfyUI's LowVramPatch ran on layers it left behind
    assert result["plain"]["patched"] == 0
    assert result["our_lora"]["lora_effect"] > 1e-3


def test_components_are_separate_patchers_and_the_encoder_can_be_evicted(tmp_path) -> None:
    code = _SETUP + """
from torch import nn
class Pipe:  # what weights_bundle reads from a pipeline: transformer, vae, encoder.model
    pass
pipe = Pipe()
pipe.transformer = tiny_transformer(1)
torch.manual_seed(2)
pipe.vae = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3))
pipe.encoder = Pipe()
pipe.encoder.model = nn.Sequential(nn.Embedding(1000, 256), nn.Linear(256, 256), nn.Linear(256, 256))
cpu = torch.device("cpu")
patchers = {part: comfy.model_patcher.ModelPatcher(c, load_device=cpu, offload_device=cpu)
            for part, c in weights_bundle.containers(pipe).items()}
for part in ("encoder", "transformer", "vae"):  # one phase after another, as the placement asks
    mm.load_models_gpu([patchers[part]])
entries = [type(m.model.model).__name__ for m in mm.current_loaded_models]
sizes = {part: p.model_size() for part, p in patchers.items()}
# Emulated GPU: capacity = what is loaded now, free = capacity - loaded (the CPU has no such budget)
capacity = sum(m.model_loaded_memory() for m in mm.current_loaded_models)
mm.get_free_memory = lambda dev=None, torch_free_too=False: (
    (lambda f: (f, f) if torch_free_too else f)(capacity - sum(m.model_loaded_memory() for m in mm.current_loaded_models)))
mm.DISABLE_SMART_MEMORY = False
before = {part: p.loaded_size() for part, p in patchers.items()}
# what load_models_gpu does on a GPU before sampling: make room for the transformer, which is in use
in_use = [m for m in mm.current_loaded_models if m.model is patchers["transformer"]]
mm.free_memory(sizes["transformer"], cpu, keep_loaded=in_use)
after = {part: p.loaded_size() for part, p in patchers.items()}
emit(dict(entries=entries, sizes=sizes, before=before, after=after, free=mm.get_free_memory(cpu)))
"""
    r = run_in_comfyui(code, {"repo": str(REPO)})
    assert sorted(r["entries"]) == ["FireRedEncoderWeights", "FireRedTransformerWeights", "FireRedVAEWeights"]
    before, after, sizes = r["before"], r["after"], r["sizes"]
    assert before == sizes  # every component was loaded whole
    assert after["transformer"] == before["transformer"], r  # untouched
    assert r["free"] >= sizes["transformer"], r  # the room was made ...
    # ... by the encoder (unloaded as far as needed; ComfyUI offloads a model partially when that suffices)
    assert after["encoder"] <= before["encoder"] - (sizes["transformer"] - before["vae"]), r


def test_partial_load_onto_a_fake_gpu_computes_without_a_device_mismatch() -> None:
    """ComfyUI's ``load`` with a ``cuda:0`` load device under torch's FakeTensorMode (ComfyUI's venv has a CUDA build
    of torch, so fake CUDA tensors exist without a GPU, and mixing devices in one op raises): the layers it loads
    move to the fake GPU, the others stay on the CPU and stream, and a forward of the transformer (plain and with
    our LoRA) and a VAE decode run on ``cuda:0`` without a device error. (ComfyUI's own weight patches are left to
    the CPU test above: merging one into a loaded layer builds a fake parameter that ``Module.to`` cannot swap.)"""
    code = _SETUP + """
from torch._subclasses.fake_tensor import FakeTensorMode
from firered_core.lora import add_trainable_lora
from firered_core.vae import FireRedVAE
cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
out = {}
for case in ("plain", "our_lora", "vae"):
    if case == "vae":
        module = FireRedVAE(get_preset("tiny").vae).eval()
        patcher = comfy.model_patcher.ModelPatcher(weights_bundle.FireRedVAEWeights(module), load_device=cuda,
                                                   offload_device=cpu)
    else:
        module = tiny_transformer(3)
        if case == "our_lora":
            add_trainable_lora(module, rank=4, alpha=4, name="style")
        patcher = comfy.model_patcher.ModelPatcher(weights_bundle.FireRedTransformerWeights(module),
                                                   load_device=cuda, offload_device=cpu)
    size = patcher.model_size()
    with FakeTensorMode(allow_non_fake_inputs=True):
        patcher.load(cuda, lowvram_model_memory=size // 3)
        on = {}
        for _, p in module.named_parameters():
            on[p.device.type] = on.get(p.device.type, 0) + p.numel()
        if case == "vae":
            y = module.decode(torch.randn(1, module.z_dim, 4, 4, device=cuda))
        else:
            cfg = module.config
            y = module(torch.randn(1, 32, cfg.in_channels, device=cuda),
                       torch.randn(1, 5, cfg.joint_attention_dim, device=cuda), None,
                       torch.tensor([0.6], device=cuda), [(1, 4, 4), (1, 4, 4)])
    out[case] = dict(on=on, out=str(y.device), lowvram=bool(patcher.model.model_lowvram),
                     loaded=patcher.model.model_loaded_weight_memory, budget=size // 3)
emit(out)
"""
    result = run_in_comfyui(code, {"repo": str(REPO)})
    for case, r in result.items():
        assert r["out"] == "cuda:0" and r["lowvram"], (case, r)
        assert r["on"].get("cuda", 0) > 0 and r["on"].get("cpu", 0) > 0, (case, r)  # split between the devices
        assert 0 < r["loaded"] <= r["budget"], (case, r)
