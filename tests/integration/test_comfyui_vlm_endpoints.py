"""In the real ComfyUI 0.3.75: the shipped Multi-Image workflow may only reach VLM servers the server configured.

The server starts with ``FIRERED_VLM_ALLOW_LOOPBACK=0`` and ``<base>/user/firered/vlm_endpoints.json`` (found
through ComfyUI's ``folder_paths.get_user_directory()``) naming one local stand-in VLM, its key in an environment
variable. A second local server plays a collector the workflow names by URL: the run fails and it sees nothing;
the configured one, picked by name, gets the pictures with the key in the Authorization header.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from firered_core.default import is_available as default_model_shipped

from ..chat_server import ChatServer, chat_answer
from ..comfyui_harness import ComfyServer, make_base_dir, require_comfyui, start_server
from ..workflow_convert import node_ids, to_api
from ..workflow_inputs import write_example_inputs
from .test_comfyui_workflows import WORKFLOWS_DIR, _faster, _load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_shipped(), reason="embedded default model not shipped yet"),
]

KEY_ENV = "FIRERED_TEST_VLM_KEY"
KEY = "test-key-not-in-the-workflow"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ComfyServer, ChatServer, ChatServer]]:
    require_comfyui()
    no_box = chat_answer(json.dumps({"boxes": [None] * 5}))  # "no box" for each of the workflow's 5 pictures
    with ChatServer(no_box) as house, ChatServer(no_box) as collector:
        yield from _comfy_with_endpoints(tmp_path_factory, house, collector)


def _comfy_with_endpoints(tmp_path_factory: pytest.TempPathFactory, house: ChatServer,
                          collector: ChatServer) -> Iterator[tuple[ComfyServer, ChatServer, ChatServer]]:
    base = make_base_dir(tmp_path_factory.mktemp("comfyui-vlm"))
    write_example_inputs(base / "input")
    config = base / "user" / "firered" / "vlm_endpoints.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"endpoints": [{"name": "house-vlm", "api_key_env": KEY_ENV,
                                                 "url": house.url}]}))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FIRERED_VLM_ALLOW_LOOPBACK", "0")
        env.setenv(KEY_ENV, KEY)
        env.delenv("FIRERED_VLM_ENDPOINTS", raising=False)
        env.delenv("FIRERED_VLM_CONFIG", raising=False)
        with start_server(base) as comfy:
            comfy.object_info = comfy.get_json("/object_info")  # type: ignore[attr-defined]
            yield comfy, house, collector


def _run_with_endpoint(comfy: ComfyServer, endpoint: str) -> dict[str, Any]:
    workflow = _load(WORKFLOWS_DIR / "multi_image_edit.json")
    api = _faster(to_api(workflow, comfy.object_info))  # type: ignore[attr-defined]
    (node_id,) = node_ids(workflow, "FireRedMultiImage")
    api[node_id]["inputs"]["vlm_endpoint"] = endpoint
    return comfy.wait_for(comfy.queue(api), timeout=1800)


def test_a_url_the_server_did_not_configure_is_refused_before_sending(setup) -> None:
    comfy, house, collector = setup
    entry = _run_with_endpoint(comfy, collector.url)
    assert entry["status"]["status_str"] == "error"
    errors = [m for kind, m in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and "not an allowed VLM endpoint" in errors[0]["exception_message"], entry["status"]
    assert "firered/vlm_endpoints.json" in errors[0]["exception_message"]
    assert collector.requests == [] and house.requests == []


def test_the_configured_endpoint_gets_the_pictures_and_the_key(setup) -> None:
    comfy, house, collector = setup
    entry = _run_with_endpoint(comfy, "house-vlm")
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy.log[-4000:])
    (path, headers, _), = house.requests
    assert path == "/v1/chat/completions" and headers["Authorization"] == f"Bearer {KEY}"
    assert collector.requests == []
    assert KEY not in json.dumps(entry)
