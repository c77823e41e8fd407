"""Workflows saved with earlier versions of the plugin still load, validate and run in the real ComfyUI 0.3.75.

ComfyUI's front end gives a saved node its ``widgets_values`` by position, so a widget added anywhere but last, or
a reordered one, would put an old file's values on the wrong inputs. The fixtures in
``tests/nodes/fixtures/previous_workflows/`` are this project's own ``workflows/*.json`` as committed before each
change of a node's widget list (their README says which commit each comes from); they are never edited.

Per fixture, all in one headless-Chromium page of the real front end (tests/frontend_harness.py): the file loads as
a dropped file would with no toast, dialog or missing node; every saved value is read back from the widget it was
saved for (``WIDGETS_SINCE``: each node type's widget names over the project's history) and each widget added
since holds its default; the front end's API prompt (``app.graphToPrompt``, what Queue sends) carries those values,
and the graph it re-saves converts (tests/workflow_convert.py) to that same prompt. Every prompt then passes the
server's own validation (``execution.validate_prompt`` in a ComfyUI process with this plugin loaded, which is what
POST /prompt calls before queueing; a broken prompt beside them shows the check can fail). The oldest version of
each workflow runs to an image on the real server with the embedded default model (the one-run train-then-edit
graph: its first version trained and loaded the LoRA in two runs); together they use every FireRed node type.
Runs are made faster as in test_comfyui_workflows.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Mapping

import pytest

from firered_core.default import is_available as default_model_shipped

from ..comfyui_harness import REPO, ComfyServer, make_base_dir, require_comfyui, run_in_comfyui, start_server
from ..frontend_harness import problems, require_frontend, run_frontend
from ..workflow_convert import VIRTUAL_NODES, extra_widgets, has_widget, node_ids, to_api
from ..workflow_inputs import LIGHTNING_LORA, TRAINED_LORA, write_example_inputs, write_placeholder_loras
from .test_comfyui_workflows import _check_saved_images, _faster, _run, _save_lightning_lora, _text_outputs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not default_model_shipped(), reason="embedded default model not shipped yet"),
]

PREVIOUS_DIR = REPO / "tests" / "nodes" / "fixtures" / "previous_workflows"
PREVIOUS = sorted(PREVIOUS_DIR.glob("*.json"))
NAME = re.compile(r"(?P<workflow>[a-z_]+)_(?P<date>\d{4}-\d{2}-\d{2}T\d{4})")
CONTROL = "control_after_generate"  # the front end's own widget after a seed, saved with the others
SAMPLING = ("negative_prompt", "steps", "true_cfg_scale", "seed", CONTROL, "width", "height")
REFERENCE = ("size_mode", "vae_ref_area", "cond_ref_area")  # the size mode and reference areas, appended last

# Each FireRed node type's widgets in saved order, from the date (of the commit changing the node) they took that
# form: a fixture saved at date D has the widgets of the last entry dated before D. Written from git history, not
# from today's node, so a value landing on another widget than it was saved for is caught.
WIDGETS_SINCE: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "FireRedModelLoader": [
        ("2026-11-30T0000", ("model", "text_encoder", "vae", "weight_dtype")),
        ("2026-12-06T1306", ("model", "text_encoder", "vae", "weight_dtype", "encoder_storage")),
    ],
    "FireRedLoraLoader": [("2026-11-30T0000", ("lora_name", "strength"))],
    "FireRedEdit": [
        ("2026-11-30T0000", ("instruction", *SAMPLING)),
        ("2026-12-01T0710", ("instruction", *SAMPLING, "keep_unedited")),
        ("2026-12-01T1433", ("instruction", *SAMPLING, "keep_unedited", "sampler")),
        ("2026-12-06T1836", ("instruction", *SAMPLING, "keep_unedited", "sampler", *REFERENCE)),
    ],
    "FireRedTextEdit": [
        ("2026-11-30T0000", ("instruction", "candidates", *SAMPLING, "old_text")),
        ("2026-12-01T0739", ("instruction", "candidates", *SAMPLING, "old_text", "keep_unedited")),
        ("2026-12-01T1433", ("instruction", "candidates", *SAMPLING, "old_text", "keep_unedited", "sampler")),
        ("2026-12-06T2150", ("instruction", "candidates", *SAMPLING, "old_text", "keep_unedited", "sampler",
                             *REFERENCE)),
    ],
    "FireRedIdentityEdit": [
        ("2026-11-30T0000", ("instruction", "candidates", "preserve_face", "identity_weight", *SAMPLING)),
        ("2026-12-01T1433", ("instruction", "candidates", "preserve_face", "identity_weight", *SAMPLING, "sampler")),
        ("2026-12-06T2150", ("instruction", "candidates", "preserve_face", "identity_weight", *SAMPLING, "sampler",
                             *REFERENCE)),
    ],
    "FireRedMultiImage": [
        ("2026-11-30T0000", ("instruction", *SAMPLING, "max_composites", "vlm_endpoint", "vlm_model")),
        ("2026-12-01T1433", ("instruction", *SAMPLING, "max_composites", "vlm_endpoint", "vlm_model", "sampler")),
        ("2026-12-06T1836", ("instruction", *SAMPLING, "max_composites", "vlm_endpoint", "vlm_model", "sampler",
                             *REFERENCE)),
    ],
    "FireRedTrainLoRA": [
        ("2026-11-30T0000", ("data_folder", "instructions", "steps", "learning_rate", "rank", "alpha", "resolution",
                             "batch_size", "seed", CONTROL, "lora_name", "resume", "overwrite", "lr_schedule",
                             "warmup_steps", "checkpoint_every", "preview_every", "preview_steps")),
    ],
}
# the oldest version of each workflow that runs in one queued run (see the module docstring)
RUNS = ("basic_edit_2026-11-30T0316", "identity_edit_2026-11-30T0316", "lightning_edit_2026-11-30T0316",
        "multi_image_edit_2026-11-30T0316", "text_edit_2026-11-30T0316", "train_lora_then_edit_2026-11-30T0400")
BROKEN = "a broken prompt"  # validated beside the fixtures: the check must be able to fail

_VALIDATE = """
import asyncio, execution, nodes

async def check():
    await nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False)
    found = {}
    for name, prompt in INPUTS["prompts"].items():
        ok, error, outputs, node_errors = await execution.validate_prompt(name, prompt, None)
        found[name] = {"ok": ok, "error": error, "outputs": sorted(outputs), "node_errors": node_errors}
    return found

emit(asyncio.run(check()))
"""


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _saved_on(path: Path) -> str:
    match = NAME.fullmatch(path.stem)
    assert match, f"{path.name}: not named <workflow>_<commit date>.json"
    return match["date"]


def widgets_then(node_type: str, date: str) -> tuple[str, ...]:
    """The widget names ``node_type`` had at ``date`` (``WIDGETS_SINCE``)."""
    return [names for since, names in WIDGETS_SINCE[node_type] if since <= date][-1]


def widgets_now(info: Mapping[str, Any]) -> tuple[str, ...]:
    """The widget names the front end gives a node of ``/object_info`` entry ``info``, in saved order (a FireRed
    node's only extra widget is the seed's ``CONTROL``)."""
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    names: list[str] = []
    for name in [*info["input_order"].get("required", []), *info["input_order"].get("optional", [])]:
        if has_widget(specs[name]):
            names.append(name)
            names += [CONTROL] * extra_widgets(name, specs[name])
    return tuple(names)


def _default(info: Mapping[str, Any], name: str) -> Any:
    spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}[name]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return options["default"] if "default" in options else spec[0][0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ComfyServer:
    """The real server: the example pictures, a Lightning LoRA for the embedded model, and an (empty) trained-LoRA
    file as a user of the first release would have had (its LoRA loader names it); the train run replaces it."""
    require_comfyui()
    base = make_base_dir(tmp_path_factory.mktemp("comfyui-previous"))
    write_example_inputs(base / "input")
    _save_lightning_lora(base / "models" / "loras" / LIGHTNING_LORA)
    (base / "models" / "loras" / f"{TRAINED_LORA}.safetensors").write_bytes(b"")
    with start_server(base) as running:
        running.object_info = running.get_json("/object_info")  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def loaded(server: ComfyServer) -> dict[str, dict[str, Any]]:
    """Every fixture loaded in one front-end page: file stem -> the driver's report."""
    require_frontend()
    result = run_frontend(server.url, [{"name": p.stem, "load": _load(p)} for p in PREVIOUS])
    return {task["name"]: task for task in result["tasks"]}


@pytest.fixture(scope="module")
def validated(loaded: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The server's validation of every front-end prompt (and of ``BROKEN``): name -> ok/error/outputs/node_errors."""
    base = make_base_dir(tmp_path_factory.mktemp("comfyui-validate"))
    write_example_inputs(base / "input")
    write_placeholder_loras(base / "models" / "loras")  # validation checks the names only
    prompts = {name: task["prompt"] for name, task in loaded.items()}
    broken = copy.deepcopy(prompts["basic_edit_2026-11-30T0316"])
    (edit_id,) = (i for i, node in broken.items() if node["class_type"] == "FireRedEdit")
    broken[edit_id]["inputs"]["sampler"] = "no such sampler"
    prompts[BROKEN] = broken
    return run_in_comfyui(_VALIDATE, {"prompts": prompts},
                          comfy_args=("--cpu", "--base-directory", str(base)))


def test_fixtures_are_named_by_date_and_described() -> None:
    readme = (PREVIOUS_DIR / "README.md").read_text(encoding="utf-8")
    current = {p.stem for p in (REPO / "workflows").glob("*.json")}
    assert {NAME.fullmatch(p.stem)["workflow"] for p in PREVIOUS} == current  # every workflow has its history
    for path in PREVIOUS:
        assert _saved_on(path) and path.name in readme, path.name
        assert _load(path).get("version") == 0.4, path.name


def test_the_widget_history_ends_at_todays_nodes(server: ComfyServer) -> None:
    info = server.object_info  # type: ignore[attr-defined]
    firered = sorted(t for t in info if t.startswith("FireRed"))
    assert firered == sorted(WIDGETS_SINCE)
    for node_type in firered:  # a widget added or moved today needs its line above (and must come last)
        assert WIDGETS_SINCE[node_type][-1][1] == widgets_now(info[node_type]), node_type


def test_every_fixture_is_older_than_todays_nodes(server: ComfyServer) -> None:
    info = server.object_info  # type: ignore[attr-defined]
    for path in PREVIOUS:
        saved = [n for n in _load(path)["nodes"] if n["type"] in WIDGETS_SINCE]
        assert any(len(n["widgets_values"]) < len(widgets_now(info[n["type"]])) for n in saved), path.name


@pytest.mark.parametrize("path", PREVIOUS, ids=[p.stem for p in PREVIOUS])
def test_loads_without_warnings(loaded: dict[str, dict[str, Any]], path: Path) -> None:
    task = loaded[path.stem]
    assert not problems(task), problems(task)
    assert sorted(r["id"] for r in task["rects"]) == sorted(n["id"] for n in _load(path)["nodes"])


@pytest.mark.parametrize("path", PREVIOUS, ids=[p.stem for p in PREVIOUS])
def test_saved_values_land_on_the_widgets_they_were_saved_for(server: ComfyServer,
                                                              loaded: dict[str, dict[str, Any]], path: Path) -> None:
    info = server.object_info  # type: ignore[attr-defined]
    task, date = loaded[path.stem], _saved_on(path)
    after = {n["id"]: n for n in task["workflowAfterLoad"]["nodes"]}
    for node in _load(path)["nodes"]:
        widgets = task["widgets"][str(node["id"])]
        if node["type"] not in WIDGETS_SINCE:  # ComfyUI's own nodes: kept as saved
            assert (after[node["id"]].get("widgets_values") or []) == (node.get("widgets_values") or [])
            continue
        names = widgets_then(node["type"], date)
        assert len(names) == len(node["widgets_values"]), (path.name, node["type"], node["widgets_values"])
        expected = dict(zip(names, node["widgets_values"]))
        expected.update({n: _default(info[node["type"]], n) for n in widgets_now(info[node["type"]])
                         if n not in names})  # added since: the node's default
        assert widgets == expected, (path.name, node["id"], node["type"])
        sent = task["prompt"][str(node["id"])]["inputs"]
        assert {k: v for k, v in sent.items() if k in expected} == {k: v for k, v in expected.items()
                                                                      if k != CONTROL}, (path.name, node["type"])


@pytest.mark.parametrize("path", PREVIOUS, ids=[p.stem for p in PREVIOUS])
def test_the_resaved_graph_converts_to_the_front_ends_prompt(server: ComfyServer,
                                                            loaded: dict[str, dict[str, Any]], path: Path) -> None:
    info = server.object_info  # type: ignore[attr-defined]
    task = loaded[path.stem]
    ours = to_api(task["workflowAfterLoad"], info)
    sent = {n: {k: v for k, v in node["inputs"].items()
                if k in {**info[node["class_type"]]["input"]["required"],
                         **info[node["class_type"]]["input"].get("optional", {})}}
            for n, node in task["prompt"].items()}  # less the front end's display-only widgets
    assert {n: node["inputs"] for n, node in ours.items()} == sent
    assert sorted(ours) == sorted(str(n["id"]) for n in _load(path)["nodes"] if n["type"] not in VIRTUAL_NODES)


@pytest.mark.parametrize("path", PREVIOUS, ids=[p.stem for p in PREVIOUS])
def test_the_server_validates_the_prompt(server: ComfyServer, validated: dict[str, Any],
                                         loaded: dict[str, dict[str, Any]], path: Path) -> None:
    result = validated[path.stem]
    assert result["ok"] and not result["node_errors"], json.dumps(result)[:4000]
    info = server.object_info  # type: ignore[attr-defined]
    outputs = sorted(i for i, n in loaded[path.stem]["prompt"].items() if info[n["class_type"]]["output_node"])
    assert result["outputs"] == outputs  # every output of the graph passed, none was left out


def test_the_validation_can_fail(validated: dict[str, Any]) -> None:
    result = validated[BROKEN]
    assert not result["ok"]
    assert "sampler: 'no such sampler' not in" in json.dumps(result["node_errors"])


def test_the_runs_use_every_node_type(server: ComfyServer) -> None:
    used = {n["type"] for name in RUNS for n in _load(PREVIOUS_DIR / f"{name}.json")["nodes"]}
    assert {t for t in server.object_info if t.startswith("FireRed")} <= used  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [r for r in RUNS if not r.startswith("train_lora_then_edit")])
def test_runs_to_an_image(server: ComfyServer, loaded: dict[str, dict[str, Any]], name: str) -> None:
    workflow = _load(PREVIOUS_DIR / f"{name}.json")
    entry = _run(server, _faster(copy.deepcopy(loaded[name]["prompt"])))
    assert _check_saved_images(server, entry, workflow) >= 1
    texts = _text_outputs(entry, workflow)
    assert all(texts.values()), texts
    if name.startswith("lightning_edit"):
        assert any("every key matched a layer" in t for t in texts.values()), texts


def test_train_then_edit_trains_and_edits_in_one_run(server: ComfyServer, loaded: dict[str, dict[str, Any]]) -> None:
    (name,) = (r for r in RUNS if r.startswith("train_lora_then_edit"))
    workflow = _load(PREVIOUS_DIR / f"{name}.json")
    api = _faster(copy.deepcopy(loaded[name]["prompt"]))
    (train_id,) = node_ids(workflow, "FireRedTrainLoRA")
    (edit_id,) = node_ids(workflow, "FireRedEdit")
    assert api[edit_id]["inputs"]["model"] == [train_id, 3]
    lora_file = server.base_dir / "models" / "loras" / f"{TRAINED_LORA}.safetensors"
    lora_file.unlink()  # the first release's placeholder (Train LoRA never writes over a file)
    entry = _run(server, api)
    assert lora_file.is_file() and lora_file.stat().st_size > 0
    assert _check_saved_images(server, entry, workflow) >= 1
    assert f"FireRed Train LoRA: {TRAINED_LORA}" in server.log
