"""Live previews on FireRed Edit in the real ComfyUI 0.3.75, received on the websocket as its front end receives them.

The shipped basic-edit workflow (embedded default model, 4 steps, keep_unedited off) runs on two servers: one
started with ``--preview-method latent2rgb --preview-size 256``, one with ComfyUI's default ``none``. The test's
websocket client announces ``supports_preview_metadata`` first, as the front end does, so previews arrive as
binary event-4 messages naming the node they belong to (tests/comfyui_ws.py decodes them like the front end).

With previews on: one JPEG per sampling step for the edit node, each at the latent grid's size scaled by ComfyUI
to fit 256 px, and the last one is the output picture seen through the projection (close to it once both are
averaged to the latent grid). The same model as a diffusers folder without its ``vae/latent_preview.json`` gets
its table fitted from its VAE on first use, inside ComfyUI's model management, and previews as well. With
previews off: progress, but not one preview message.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from firered_core.default import is_available as default_model_shipped, model_dir
from firered_core.latent_preview import PREVIEW_FILE

from ..comfyui_harness import REPO, ComfyServer, make_base_dir, require_comfyui, start_server
from ..comfyui_ws import EventStream
from ..workflow_convert import node_ids, to_api
from ..workflow_inputs import write_example_inputs

log = logging.getLogger(__name__)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_shipped(), reason="embedded default model not shipped yet"),
]

CLIENT_ID = "firered-preview-tests"
FRONT_END_FLAGS = {"supports_preview_metadata": True}  # what ComfyUI's front end announces on connecting
STEPS = 4
PREVIEW_SIZE = 256
RUN_TIMEOUT = 900
NO_TABLE = "firered_no_table"  # the embedded model as a diffusers folder without its preview table
FITTED = "latent preview fitted on this VAE's decodes of random latents"  # the pipeline's log line for the fallback


def _server(base: Path, extra_args: tuple[str, ...]) -> Any:
    require_comfyui()
    make_base_dir(base)
    write_example_inputs(base / "input")
    return start_server(base, extra_args=extra_args)


@pytest.fixture(scope="module")
def previews_on(tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    args = ("--preview-method", "latent2rgb", "--preview-size", str(PREVIEW_SIZE))
    base = tmp_path_factory.mktemp("comfyui-previews-on")
    folder = base / "models" / "diffusers" / NO_TABLE
    shutil.copytree(model_dir(), folder, ignore=shutil.ignore_patterns(PREVIEW_FILE))
    with _server(base, args) as server:
        yield server


@pytest.fixture(scope="module")
def previews_off(tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    with _server(tmp_path_factory.mktemp("comfyui-previews-off"), ()) as server:  # ComfyUI's default: none
        yield server


def _edit_graph(server: ComfyServer, model: str | None = None) -> tuple[dict[str, Any], str, str]:
    """(API graph of workflows/basic_edit.json at STEPS steps with keep_unedited off - on ``model`` when given -,
    edit node id, save node id)."""
    workflow = json.loads((REPO / "workflows" / "basic_edit.json").read_text(encoding="utf-8"))
    api = to_api(workflow, server.get_json("/object_info"))
    (edit_id,) = node_ids(workflow, "FireRedEdit")
    (save_id,) = node_ids(workflow, "SaveImage")
    api[edit_id]["inputs"].update(steps=STEPS, keep_unedited="off")
    if model is not None:
        (loader_id,) = node_ids(workflow, "FireRedModelLoader")
        api[loader_id]["inputs"]["model"] = model
    return api, edit_id, save_id


def _run(server: ComfyServer, model: str | None = None) -> dict[str, Any]:
    """Run the edit with a front-end-like websocket open: its progress values, previews and saved picture."""
    api, edit_id, save_id = _edit_graph(server, model)
    progress: list[int] = []
    with EventStream(server.port, CLIENT_ID, feature_flags=FRONT_END_FLAGS) as events:
        answer = server.request("/prompt", {"prompt": api, "client_id": CLIENT_ID})
        assert not answer.get("node_errors"), answer
        prompt_id, outcome = str(answer["prompt_id"]), None
        for event in events.iter(timeout=RUN_TIMEOUT):
            data = event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if event["type"] == "progress" and str(data.get("node")) == edit_id:
                progress.append(data["value"])
            elif event["type"] in ("execution_error", "execution_interrupted", "execution_success"):
                outcome = event["type"]
                break
        frames = events.preview_frames()
    assert outcome == "execution_success", (outcome, server.log[-4000:])
    entry = server.wait_for(prompt_id, timeout=60)
    (saved,) = entry["outputs"][save_id]["images"]
    query = urllib.parse.urlencode({k: saved[k] for k in ("filename", "subfolder", "type")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as resp:
        output = Image.open(io.BytesIO(resp.read())).convert("RGB")
    return {"edit_id": edit_id, "progress": progress, "frames": frames, "output": output}


def _psnr_on_grid(a: Image.Image, b: Image.Image, grid: tuple[int, int]) -> float:
    """PSNR (dB) of two pictures averaged down to ``grid`` (w, h) pixels."""
    x, y = (np.asarray(im.resize(grid, Image.Resampling.BOX), dtype=np.float64) / 255.0 for im in (a, b))
    return 10 * math.log10(1.0 / float(((x - y) ** 2).mean()))


def test_previews_on_show_every_step_on_the_edit_node(previews_on: ComfyServer) -> None:
    from firered_core.default import load_default_pipeline

    fits_before = previews_on.log.count(FITTED)
    run = _run(previews_on)
    frames, output = run["frames"], run["output"]
    assert previews_on.log.count(FITTED) == fits_before  # the shipped table, no fit
    assert run["progress"][-1] == STEPS and len(run["progress"]) >= STEPS, run["progress"]
    assert len(frames) == STEPS, [meta for meta, _ in frames]  # one per step
    compression = load_default_pipeline().compression
    grid = (output.width // compression, output.height // compression)
    expected = ImageOps.contain(Image.new("RGB", grid), (PREVIEW_SIZE, PREVIEW_SIZE)).size  # ComfyUI's own scaling
    for meta, image in frames:
        assert meta["display_node_id"] == meta["node_id"] == run["edit_id"], meta
        assert meta["image_type"] == "image/jpeg" and image.format == "JPEG", (meta, image.format)
        assert image.size == expected and max(image.size) == PREVIEW_SIZE, (image.size, expected)
    # the last step's clean estimate is the result: its preview is the output seen through the projection
    # (the fit's held-out error is about 28 dB on this grid; JPEG and ComfyUI's bilinear scaling cost a little)
    last = _psnr_on_grid(frames[-1][1].convert("RGB"), output, grid)
    first = _psnr_on_grid(frames[0][1].convert("RGB"), output, grid)
    log.info("preview vs output on the %dx%d latent grid: step 1 %.1f dB, step %d %.1f dB", *grid, first, STEPS, last)
    assert last > 20.0, (first, last)


def test_previews_off_send_no_preview_at_all(previews_off: ComfyServer) -> None:
    run = _run(previews_off)
    assert run["progress"][-1] == STEPS, run["progress"]
    assert run["frames"] == [], [meta for meta, _ in run["frames"]]


def test_a_folder_without_a_table_fits_one_and_previews(previews_on: ComfyServer) -> None:
    run = _run(previews_on, f"diffusers/{NO_TABLE}")
    assert len(run["frames"]) == STEPS, [meta for meta, _ in run["frames"]]
    assert all(meta["node_id"] == run["edit_id"] for meta, _ in run["frames"])
    assert FITTED in previews_on.log
