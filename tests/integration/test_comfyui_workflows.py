"""Every workflow in ``workflows/`` runs in the real ComfyUI 0.3.75 with the embedded default model.

Each file is converted to the API format (tests/workflow_convert.py, checked against the front end's own
conversion by test_comfyui_frontend.py) and sent to POST /prompt; asserted: /history says success and every
Save Image output is a real picture fetched from /view. The example pictures the Load Image nodes name are written
to the server's input folder (tests/workflow_inputs.py). Files that cannot exist here are made by the test:

* the Lightning workflow's LoRA (the published 20B Lightning LoRA does not fit the embedded model) is a LoRA on
  every Linear layer of the embedded model, saved by ``firered_core.lora.save_lora`` under the workflow's file
  name; its loader's report must say that every key matched a layer;
* the train-then-edit workflow runs in one queued run: FireRed Train LoRA writes the LoRA and hands FireRed Edit
  the model with it on top.

To keep CI's CPU time small the graphs run with fewer steps and candidates (``FASTER``, ``TRAIN_FASTER``; empty
them to run the files exactly as shipped). Also: an interrupt (POST /interrupt) during FireRed Train LoRA stops it
within one step, seen on the websocket's progress events.
"""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from firered_core.default import is_available as default_model_shipped

from ..comfyui_harness import REPO, ComfyServer, make_base_dir, network_attempts, require_comfyui, start_server
from ..comfyui_ws import EventStream
from ..workflow_convert import node_ids, to_api
from ..workflow_inputs import LIGHTNING_LORA, TRAINED_LORA, write_example_inputs

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_shipped(), reason="embedded default model not shipped yet"),
]

WORKFLOWS_DIR = REPO / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
CLIENT_ID = "firered-workflow-tests"
FASTER = {"steps": 4, "candidates": 2}  # laid over every FireRed edit node's inputs (lower values only)
TRAIN_FASTER = {"steps": 3, "resolution": 64, "checkpoint_every": 1, "preview_steps": 2}
RUN_TIMEOUT = 1800
SINGLE_RUN = ("basic_edit", "multi_image_edit", "text_edit", "identity_edit", "lightning_edit")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _faster(api: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "FireRedTrainLoRA":
            inputs.update({k: v for k, v in TRAIN_FASTER.items() if k in inputs})
        elif node["class_type"].startswith("FireRed"):
            for name, value in FASTER.items():
                current = inputs.get(name)
                if isinstance(current, int):  # steps 0 is "the model's own", more than value
                    inputs[name] = value if current == 0 else min(current, value)
    return api


def _save_lightning_lora(path: Path) -> None:
    """A LoRA for the embedded model on every Linear layer, non-zero, in the diffusers/PEFT layout."""
    import torch

    from firered_core.default import load_default_pipeline
    from firered_core.lora import add_trainable_lora, save_lora

    transformer = load_default_pipeline().transformer
    targets = [n for n, m in transformer.named_modules() if isinstance(getattr(m, "adapters", None),
                                                                      torch.nn.ModuleList)]
    torch.manual_seed(0)
    add_trainable_lora(transformer, rank=4, alpha=4.0, target_modules=targets, name="lightning", freeze_base=True)
    with torch.no_grad():
        for layer in transformer.modules():
            for adapter in getattr(layer, "adapters", ()):
                adapter.up.weight.normal_(0.0, 1e-3)
    save_lora(transformer, path, format="peft", name="lightning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    require_comfyui()
    base = make_base_dir(tmp_path_factory.mktemp("comfyui-workflows"))
    write_example_inputs(base / "input")
    _save_lightning_lora(base / "models" / "loras" / LIGHTNING_LORA)
    with start_server(base) as running:
        running.object_info = running.get_json("/object_info")  # type: ignore[attr-defined]
        yield running


def _run(server: ComfyServer, api: dict[str, Any], targets: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": api, "client_id": CLIENT_ID}
    if targets is not None:
        body["partial_execution_targets"] = targets
    answer = server.request("/prompt", body)
    assert not answer.get("node_errors"), json.dumps(answer["node_errors"])[:4000]
    entry = server.wait_for(str(answer["prompt_id"]), timeout=RUN_TIMEOUT)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log[-6000:])
    return entry


def _view(server: ComfyServer, image: dict[str, str]) -> Any:
    from PIL import Image

    query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as resp:
        data = resp.read()
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _check_saved_images(server: ComfyServer, entry: dict[str, Any], workflow: dict[str, Any],
                        only: list[str] | None = None) -> int:
    import numpy as np

    checked = 0
    for node_id in only or node_ids(workflow, "SaveImage"):
        images = entry["outputs"].get(node_id, {}).get("images", [])
        assert images, f"Save Image {node_id} produced nothing"
        for image in images:
            assert image["type"] == "output"
            pixels = np.asarray(_view(server, image).convert("RGB"), dtype=np.float32)
            assert min(pixels.shape[:2]) >= 32 and pixels.std() > 1.0, (image, pixels.shape, pixels.std())
            checked += 1
    return checked


def _text_outputs(entry: dict[str, Any], workflow: dict[str, Any]) -> dict[str, str]:
    return {i: "".join(entry["outputs"].get(i, {}).get("text", [])) for i in node_ids(workflow, "PreviewAny")}


def _downstream(workflow: dict[str, Any], node_id: str) -> list[str]:
    """Ids of the nodes fed directly by ``node_id``."""
    return sorted({str(link[3]) for link in workflow["links"] if str(link[1]) == node_id})


def test_every_workflow_is_run_here() -> None:
    assert {p.stem for p in WORKFLOWS} == set(SINGLE_RUN) | {"train_lora_then_edit"}


@pytest.mark.parametrize("name", SINGLE_RUN)
def test_workflow_runs(server: ComfyServer, name: str) -> None:
    workflow = _load(WORKFLOWS_DIR / f"{name}.json")
    entry = _run(server, _faster(to_api(workflow, server.object_info)))  # type: ignore[attr-defined]
    assert _check_saved_images(server, entry, workflow) >= 1
    texts = _text_outputs(entry, workflow)
    assert all(texts.values()), texts
    if name == "lightning_edit":
        assert any("every key matched a layer" in t for t in texts.values()), texts


def test_train_then_edit_workflow_trains_and_edits_in_one_run(server: ComfyServer) -> None:
    workflow = _load(WORKFLOWS_DIR / "train_lora_then_edit.json")
    api = _faster(to_api(workflow, server.object_info))  # type: ignore[attr-defined]
    (train_id,) = node_ids(workflow, "FireRedTrainLoRA")
    (edit_id,) = node_ids(workflow, "FireRedEdit")
    assert api[edit_id]["inputs"]["model"] == [train_id, 3]  # the edit runs on Train LoRA's model output
    lora_file = server.base_dir / "models" / "loras" / f"{TRAINED_LORA}.safetensors"
    lora_file.unlink(missing_ok=True)
    entry = _run(server, api)
    assert lora_file.is_file() and lora_file.stat().st_size > 0
    previews = node_ids(workflow, "PreviewImage")
    assert len(previews) == 2 and all(entry["outputs"].get(i, {}).get("images") for i in previews), entry
    assert any(t.endswith(lora_file.name) for t in _text_outputs(entry, workflow).values()), entry["outputs"]
    assert _check_saved_images(server, entry, workflow) >= 1
    assert f"FireRed Train LoRA: {TRAINED_LORA}" in server.log  # trained in this run, not taken from a cache


def test_interrupt_stops_training_within_one_step(server: ComfyServer) -> None:
    workflow = _load(WORKFLOWS_DIR / "train_lora_then_edit.json")
    api = to_api(workflow, server.object_info)  # type: ignore[attr-defined]
    (train_id,) = node_ids(workflow, "FireRedTrainLoRA")
    _faster(api)[train_id]["inputs"].update(steps=10_000, lora_name="interrupted_lora", checkpoint_every=10_000)
    with EventStream(server.port, CLIENT_ID) as events:
        answer = server.request("/prompt", {"prompt": api, "client_id": CLIENT_ID,
                                            "partial_execution_targets": [train_id]})
        prompt_id = str(answer["prompt_id"])
        at_interrupt, after, outcome = None, [], None
        interrupted_at = stopped_at = 0.0
        for event in events.iter(timeout=RUN_TIMEOUT):
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if event["type"] == "progress" and str(data.get("node")) == train_id:
                if at_interrupt is None and data["value"] >= 2:
                    at_interrupt, interrupted_at = data["value"], time.monotonic()
                    server.request("/interrupt", {})
                elif at_interrupt is not None:
                    after.append(data["value"])
            elif event["type"] in ("execution_interrupted", "execution_error", "execution_success"):
                outcome, stopped_at = event["type"], time.monotonic()
                break
    assert at_interrupt is not None, "no training progress seen"
    assert outcome == "execution_interrupted", (outcome, server.log[-4000:])
    assert max(after, default=at_interrupt) <= at_interrupt + 1, (at_interrupt, after)
    entry = server.wait_for(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    assert not (server.base_dir / "models" / "loras" / "interrupted_lora.safetensors").exists()
    log.info("training interrupted at step %d; stopped %.1f s later", at_interrupt, stopped_at - interrupted_at)


def test_no_network_was_used_by_any_run(server: ComfyServer) -> None:
    """Last in this module: every workflow above ran under the network guard (tests/netguard) without one
    attempt to leave the machine - server start, plugin import, model loads, training, OCR and face models."""
    assert network_attempts(server.log) == [], network_attempts(server.log)[:5]
