"""A workflow run in the real ComfyUI server on an emulated small GPU: ComfyUI's own budget logic loads the FireRed
transformer partially, and the edit is the same picture as with everything loaded.

The server runs on the CPU, where ComfyUI switches its memory budget off. A probe custom node that the test writes
into the server's ``custom_nodes`` (never into the checkout) stands in for a GPU: when switched on it reports the
load device as not-a-CPU and its free memory as a capacity minus what is loaded, and sets NVIDIA's weight-memory
ratio (0), so ``load_models_gpu`` computes each model's budget exactly as it would on a card of that size. It also
lists ``current_loaded_models``. Nothing else of ComfyUI is touched, and nothing moves between devices (both are
the CPU): what is proven is that the plugin's components are separate entries, that ComfyUI's budget reaches the
transformer and leaves it partially loaded, and that the partially loaded model computes the same edit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from firered_core.default import is_available as default_model_shipped

from ..comfyui_harness import REPO, ComfyServer, make_base_dir, require_comfyui, start_server
from .test_comfyui_workflows import _faster, _load, _run, _view
from ..workflow_convert import node_ids, to_api
from ..workflow_inputs import write_example_inputs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_shipped(), reason="embedded default model not shipped yet"),
]

PROBE = '''
"""Test probe: emulates a GPU of a given capacity for ComfyUI's budget logic; lists the loaded models."""
import comfy.model_management as mm
from aiohttp import web
from server import PromptServer

STATE = {"spare": None}
_is_cpu, _free = mm.is_device_cpu, mm.get_free_memory


def _loaded():
    return sum(m.model_loaded_memory() for m in mm.current_loaded_models)


def is_device_cpu(device):
    return False if STATE["spare"] is not None else _is_cpu(device)


def get_free_memory(dev=None, torch_free_too=False):
    if STATE["spare"] is None:
        return _free(dev, torch_free_too)
    capacity = mm.minimum_inference_memory() + STATE["spare"]
    free = max(0, capacity - _loaded())
    return (free, free) if torch_free_too else free


mm.is_device_cpu, mm.get_free_memory = is_device_cpu, get_free_memory


@PromptServer.instance.routes.post("/firered_probe/gpu")
async def gpu(request):
    STATE["spare"] = (await request.json()).get("spare")
    if STATE["spare"] is not None:
        mm.vram_state = mm.VRAMState.NORMAL_VRAM
        mm.MIN_WEIGHT_MEMORY_RATIO = 0.0
    return web.json_response({"spare": STATE["spare"]})


@PromptServer.instance.routes.get("/firered_probe/loaded")
async def loaded(request):
    return web.json_response([{"name": type(m.model.model).__name__, "size": m.model.model_size(),
                               "loaded": m.model_loaded_memory(),
                               "lowvram": bool(getattr(m.model.model, "model_lowvram", False))}
                              for m in mm.current_loaded_models])


NODE_CLASS_MAPPINGS = {}
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    require_comfyui()
    base = make_base_dir(tmp_path_factory.mktemp("comfyui-budget"))
    write_example_inputs(base / "input")
    probe = base / "custom_nodes" / "firered_gpu_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text(PROBE, encoding="utf-8")
    with start_server(base) as running:
        running.object_info = running.get_json("/object_info")  # type: ignore[attr-defined]
        yield running


def _loaded(server: ComfyServer) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in server.get_json("/firered_probe/loaded")}


def _unload_all(server: ComfyServer) -> None:
    """POST /free (unload every model, forget cached outputs), then wait until the worker has done it."""
    server.request("/free", {"unload_models": True, "free_memory": True})
    deadline = time.monotonic() + 60
    while _loaded(server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _loaded(server)


def _edit(server: ComfyServer) -> np.ndarray:
    workflow = _load(REPO / "workflows" / "basic_edit.json")
    entry = _run(server, _faster(to_api(workflow, server.object_info)))  # type: ignore[attr-defined]
    (save,) = node_ids(workflow, "SaveImage")
    (image,) = entry["outputs"][save]["images"]
    return np.asarray(_view(server, image).convert("RGB"))


def test_a_workflow_under_a_small_gpu_budget_loads_the_transformer_partially(server: ComfyServer) -> None:
    whole = _edit(server)
    entries = _loaded(server)
    # the components are separate entries of ComfyUI's model management, each loaded whole here
    assert {"FireRedEncoderWeights", "FireRedTransformerWeights", "FireRedVAEWeights"} <= set(entries), entries
    assert not any(e["lowvram"] for e in entries.values()), entries
    sizes = {name: e["size"] for name, e in entries.items()}

    _unload_all(server)
    # a card with room for the encoder, the VAE and a third of the transformer beside ComfyUI's inference reserve
    spare = sizes["FireRedEncoderWeights"] + sizes["FireRedVAEWeights"] + sizes["FireRedTransformerWeights"] // 3
    server.request("/firered_probe/gpu", {"spare": spare})
    try:
        budgeted = _edit(server)
        entries = _loaded(server)
    finally:
        server.request("/firered_probe/gpu", {"spare": None})
    transformer = entries["FireRedTransformerWeights"]
    assert transformer["lowvram"] and 0 < transformer["loaded"] <= sizes["FireRedTransformerWeights"] // 3, entries
    assert not entries["FireRedEncoderWeights"]["lowvram"], entries
    assert "loaded partially" in server.log
    np.testing.assert_array_equal(budgeted, whole)
