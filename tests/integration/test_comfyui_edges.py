"""What a user's graph meets in the real ComfyUI 0.3.75: a saved workflow with the loader's old float16 choice
still validates and runs (in bfloat16, with a warning in the log), and a width the model cannot make, sent through
the API, ends the run with an error naming the nearest sizes instead of a silently resized picture."""

from __future__ import annotations

from typing import Any

import pytest

from firered_core.default import is_available as default_model_shipped

from ..comfyui_harness import ComfyServer, require_comfyui, start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_shipped(), reason="embedded default model not shipped yet"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    require_comfyui()
    with start_server(tmp_path_factory.mktemp("comfyui-edges")) as running:
        yield running


def _graph(weight_dtype: str, width: int, height: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "FireRedModelLoader", "inputs": {
            "model": "firered-default", "text_encoder": "(from model)", "vae": "(from model)",
            "weight_dtype": weight_dtype}},
        "2": {"class_type": "FireRedEdit", "inputs": {
            "model": ["1", 0], "instruction": "a red square", "negative_prompt": " ", "steps": 1,
            "true_cfg_scale": -1.0, "seed": 0, "width": width, "height": height}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def _errors(entry: dict[str, Any]) -> list[str]:
    return [str(data.get("exception_message")) for kind, data in entry["status"].get("messages", [])
            if kind == "execution_error"]


def test_a_workflow_saved_with_float16_runs_in_bfloat16(server: ComfyServer) -> None:
    entry = server.wait_for(server.queue(_graph("float16", 32, 32)), timeout=600)
    assert entry["status"]["status_str"] == "success", (_errors(entry), server.log[-4000:])
    assert "weight_dtype float16: this model family overflows in it" in server.log


def test_a_width_the_model_cannot_make_is_an_error_naming_the_nearest(server: ComfyServer) -> None:
    entry = server.wait_for(server.queue(_graph("default", 13, 0)), timeout=600)
    assert entry["status"]["status_str"] == "error"
    assert any("width=13 is not a size this model can make" in e and "nearest: 8 or 16" in e
               for e in _errors(entry)), _errors(entry)
