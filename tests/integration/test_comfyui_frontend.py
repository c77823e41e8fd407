"""Every workflow in ``workflows/`` loads in ComfyUI's real front end as a dropped file would, and cleanly.

The server of tests/comfyui_harness.py serves its own front end (comfyui-frontend-package 1.32.9); headless
Chromium opens it through playwright-core (tests/frontend_harness.py, set up by scripts/frontend_env.sh),
dismisses the template browser a first visit opens, and calls ``app.loadGraphData`` with each file. Asserted per
workflow: no toast (the schema alert "Invalid workflow against zod schema" is one, link repairs are another), no
dialog (the missing-node warning is one), every node type known to the front end, no two node rectangles (title
bar included) overlapping, the front end keeps every saved value, and its own API conversion
(``app.graphToPrompt``) equals ours (tests/workflow_convert.py), which test_comfyui_workflows.py sends to /prompt.
A screenshot of each loaded workflow is taken (palette PNG, small) into the test's temp folder; with
``FIRERED_REFRESH_SCREENSHOTS=1`` into docs/workflows/<name>.png instead, which is how the committed pictures are
refreshed by hand (the tests never write into the checkout otherwise). No model weights are needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ..comfyui_harness import REPO, require_comfyui, start_server
from ..frontend_harness import problems, require_frontend, run_frontend, shrink_png
from ..workflow_convert import VIRTUAL_NODES, to_api
from ..workflow_inputs import write_example_inputs

pytestmark = pytest.mark.slow

WORKFLOWS_DIR = REPO / "workflows"
DOCS_SCREENSHOTS = REPO / "docs" / "workflows"
REFRESH_ENV = "FIRERED_REFRESH_SCREENSHOTS"
EXPECTED = ("basic_edit", "multi_image_edit", "text_edit", "identity_edit", "lightning_edit", "train_lora_then_edit")
NODE_FIELDS = ("id", "type", "pos", "size", "flags", "order", "mode", "properties")  # what the schema requires
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every workflow loaded in one browser session: name -> the driver's report; plus /object_info."""
    require_comfyui()
    require_frontend()
    base = tmp_path_factory.mktemp("comfyui-frontend")
    write_example_inputs(base / "input")  # the Load Image previews (a user's own pictures in real life)
    shots = DOCS_SCREENSHOTS if os.environ.get(REFRESH_ENV) == "1" else base / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    tasks = [{"name": p.stem, "load": _load(p), "screenshot": shots / f"{p.stem}.png"} for p in WORKFLOWS]
    with start_server(base) as server:
        object_info = server.get_json("/object_info")
        result = run_frontend(server.url, tasks)
    for task in tasks:
        shrink_png(task["screenshot"])
    return {"setup": result["setup"], "tasks": {t["name"]: t for t in result["tasks"]}, "object_info": object_info,
            "screenshots": shots}


def test_every_use_has_a_workflow() -> None:
    assert sorted(p.stem for p in WORKFLOWS) == sorted(EXPECTED)


def test_first_visit_popups_are_dismissed(loaded: dict[str, Any]) -> None:
    # a fresh user directory: the front end opens its template browser once, and the driver closed it
    assert loaded["setup"]["firstVisit"] is True
    assert len(loaded["setup"]["dismissed"]) == 1 and "Templates" in loaded["setup"]["dismissed"][0], loaded["setup"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_file_is_a_saved_ui_workflow(path: Path) -> None:
    workflow = _load(path)
    assert workflow.get("version") == 0.4 and "links" in workflow and "last_node_id" in workflow
    for node in workflow["nodes"]:
        missing = [f for f in NODE_FIELDS if f not in node]
        assert not missing, (node.get("id"), node.get("type"), missing)
    loaders = [n for n in workflow["nodes"] if n["type"] == "FireRedModelLoader"]
    assert loaders and all(n["widgets_values"][0] == "firered-default" for n in loaders)
    assert any(n["type"] == "Note" and n["widgets_values"][0].strip() for n in workflow["nodes"]), "no Note node"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_without_warnings(loaded: dict[str, Any], path: Path) -> None:
    task = loaded["tasks"][path.stem]
    assert not problems(task), problems(task)
    assert len(task["rects"]) == len(_load(path)["nodes"])
    screenshot = loaded["screenshots"] / f"{path.stem}.png"
    assert screenshot.is_file() and 5_000 < screenshot.stat().st_size < 400_000, screenshot


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_front_end_keeps_every_saved_value(loaded: dict[str, Any], path: Path) -> None:
    saved = _load(path)
    after = loaded["tasks"][path.stem]["workflowAfterLoad"]
    by_id = {n["id"]: n for n in after["nodes"]}
    for node in saved["nodes"]:
        assert by_id[node["id"]]["type"] == node["type"]
        # a node without widgets is saved without widgets_values or with [], depending on when it was sized
        assert (by_id[node["id"]].get("widgets_values") or []) == (node.get("widgets_values") or []), \
            (node["id"], node["type"])
    assert sorted(map(tuple, after["links"])) == sorted(map(tuple, saved["links"]))


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_our_api_conversion_matches_the_front_ends(loaded: dict[str, Any], path: Path) -> None:
    ours = to_api(_load(path), loaded["object_info"])
    theirs = loaded["tasks"][path.stem]["prompt"]
    assert sorted(ours) == sorted(theirs)
    for node_id, node in ours.items():
        assert node["class_type"] == theirs[node_id]["class_type"]
        # the front end also sends values of its own display widgets (Preview as Text's "preview"), which the
        # server's node does not declare and ignores: compare what the node declares
        spec = loaded["object_info"][node["class_type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        sent = {k: v for k, v in theirs[node_id]["inputs"].items() if k in declared}
        assert node["inputs"] == sent, (node_id, node["class_type"])
    virtual = [n for n in _load(path)["nodes"] if n["type"] in VIRTUAL_NODES]
    assert all(str(n["id"]) not in ours for n in virtual)
