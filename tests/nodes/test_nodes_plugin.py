"""The plugin as ComfyUI sees it: registration, the V1 contract, an import that does no work, packaging metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, NODE_MODULES
from nodes import comfy_bridge
from nodes.package_finder import PluginPackageFinder

ROOT = Path(__file__).resolve().parents[2]
MINE = {"FireRedModelLoader", "FireRedLoraLoader", "FireRedEdit", "FireRedMultiImage"}
V1_TYPES = {"IMAGE", "LATENT", "STRING", "INT", "FLOAT", "MASK", "BOOLEAN", "FIRERED_MODEL"}

# Load the plugin the way ComfyUI's load_custom_node does, under a folder name with a hyphen, then report.
LOAD_LIKE_COMFYUI = """
import importlib.util, json, os, sys
root = sys.argv[1]
spec = importlib.util.spec_from_file_location("ComfyUI-FireRed", os.path.join(root, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print(json.dumps({"nodes": sorted(module.NODE_CLASS_MAPPINGS), "has_v3": hasattr(module, "comfy_entrypoint"),
                  "loaded": sorted(m for m in ("torch", "numpy", "PIL", "safetensors", "transformers", "firered_core",
                                               "firered_train", "nodes", "train", "comfy") if m in sys.modules)}))
"""


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _load_like_comfyui(plugin: Path = ROOT, cwd: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD_LIKE_COMFYUI, str(plugin)], check=True, capture_output=True,
                         text=True, env=env, cwd=cwd).stdout
    return json.loads(out.strip().splitlines()[-1])


def _copy_plugin(target: Path) -> Path:
    """The plugin's import surface (root __init__.py and nodes/) alone, so nothing else writes into it."""
    import shutil

    shutil.copytree(ROOT / "nodes", target / "nodes", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "__init__.py", target / "__init__.py")
    return target


def test_import_registers_every_node_and_imports_nothing_heavy(tmp_path: Path) -> None:
    report = _load_like_comfyui(cwd=tmp_path)
    assert MINE <= set(report["nodes"])
    assert not report["has_v3"]  # one node API per pack
    assert report["loaded"] == [], f"importing the plugin imported {report['loaded']}"


def test_import_creates_no_files_or_folders(tmp_path: Path) -> None:
    plugin = _copy_plugin(tmp_path / "plugin")
    work = tmp_path / "cwd"
    work.mkdir()
    before = _tree(plugin)
    assert MINE <= set(_load_like_comfyui(plugin, cwd=work)["nodes"])
    assert _tree(plugin) == before and not any(work.iterdir())


def test_plain_clone_finds_its_own_packages_without_exposing_nodes_or_train(tmp_path: Path) -> None:
    # -S: no site-packages, so no editable install: only the plugin's finder can provide firered_core
    code = (LOAD_LIKE_COMFYUI + "\nimport firered_core, firered_train, importlib.util\n"
            "print(json.dumps({'core': firered_core.__file__, 'train': firered_train.__file__, "
            "'nodes': importlib.util.find_spec('nodes') is not None, "
            "'top_train': importlib.util.find_spec('train') is not None}))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""}).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["core"] == str(ROOT / "firered_core" / "__init__.py")
    assert found["train"] == str(ROOT / "train" / "__init__.py")
    assert not found["nodes"] and not found["top_train"]


def test_finder_answers_only_for_its_two_packages() -> None:
    finder = PluginPackageFinder()
    assert finder.find_spec("firered_train").origin == str(ROOT / "train" / "__init__.py")
    for name in ("nodes", "train", "tests", "firered_core.loading", "comfy"):
        assert finder.find_spec(name) is None


def test_every_node_follows_the_v1_contract() -> None:
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("FireRed") and NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("FireRed")
        assert cls.CATEGORY == "FireRed" or cls.CATEGORY.startswith("FireRed/"), node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
        assert isinstance(cls.RETURN_TYPES, tuple) and set(cls.RETURN_TYPES) <= V1_TYPES, node_id
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), node_id
        assert cls.DESCRIPTION, node_id
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional", "hidden"}, node_id
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                kind = entry[0]
                assert isinstance(kind, list) or kind in V1_TYPES, (node_id, name, kind)


def test_my_nodes_inputs_and_outputs() -> None:
    edit = NODE_CLASS_MAPPINGS["FireRedEdit"]
    assert edit.RETURN_TYPES == ("IMAGE", "LATENT")
    spec = edit.INPUT_TYPES()
    assert list(spec["required"]) == ["model", "instruction", "negative_prompt", "steps", "true_cfg_scale", "seed",
                                      "width", "height"]
    assert list(spec["optional"]) == ["image1", "image2", "image3", "keep_unedited", "sampler", "size_mode",
                                      "vae_ref_area", "cond_ref_area"]
    assert NODE_CLASS_MAPPINGS["FireRedLoraLoader"].RETURN_TYPES == ("FIRERED_MODEL", "STRING")
    assert NODE_CLASS_MAPPINGS["FireRedModelLoader"].RETURN_TYPES == ("FIRERED_MODEL",)
    assert NODE_CLASS_MAPPINGS["FireRedMultiImage"].RETURN_TYPES == ("IMAGE", "LATENT", "STRING", "IMAGE")


def test_a_broken_node_module_is_logged_and_skipped(tmp_path: Path) -> None:
    plugin = _copy_plugin(tmp_path / "plugin")
    (plugin / "nodes" / "identity_edit.py").write_text("raise ImportError('no face model here')\n")
    result = subprocess.run([sys.executable, "-c", LOAD_LIKE_COMFYUI, str(plugin)], capture_output=True, text=True,
                            check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert MINE <= set(report["nodes"]) and "FireRedIdentityEdit" not in report["nodes"]
    assert "identity_edit" in result.stderr and "no face model here" in result.stderr


def test_node_modules_list_names_existing_files() -> None:
    assert {"text_edit", "identity_edit"} <= set(NODE_MODULES)
    assert all((ROOT / "nodes" / f"{m}.py").is_file() for m in NODE_MODULES if m not in {"text_edit", "identity_edit"})


# ---------------------------------------------------------------------------------------------------------------
# The bridge outside ComfyUI
# ---------------------------------------------------------------------------------------------------------------


def test_bridge_without_comfyui() -> None:
    import torch

    assert not comfy_bridge.in_comfyui()
    assert comfy_bridge.model_files("loras") == [] and comfy_bridge.diffusers_folders() == []
    assert comfy_bridge.progress_with_preview(10) is None and comfy_bridge.cancel_hook() is None
    assert comfy_bridge.sampling_preview_size() is None
    assert comfy_bridge.devices() == (torch.device("cpu"), torch.device("cpu"))
    assert comfy_bridge.default_dtype() == torch.float32
    assert comfy_bridge.manage(torch.nn.Linear(2, 2)) is None
    comfy_bridge.load_for_use([None])  # nothing to do, no error


@pytest.mark.parametrize("name", ["../x", "a/../../b", "..\\x", "x\x00.safetensors", "", "  ", None, 3])
def test_names_with_path_tricks_are_refused(name) -> None:
    from nodes.common import FireRedNodeError

    with pytest.raises(FireRedNodeError):
        comfy_bridge.check_name(name, "lora_name")


# ---------------------------------------------------------------------------------------------------------------
# Packaging for ComfyUI-Manager and the Comfy Registry
# ---------------------------------------------------------------------------------------------------------------


def test_registry_metadata() -> None:
    comfy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui", "includes"} <= set(comfy)
    assert comfy["requires-comfyui"].startswith(">=")


def test_requirements_never_name_torch_and_cover_the_core() -> None:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {line.split("=")[0].split(">")[0].split("<")[0].strip().lower() for line in lines if line}
    assert not names & {"torch", "torchvision", "torchaudio", "comfyui-firered", ".", "-e ."}
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    core_names = {d.split("=")[0].split(">")[0].split("<")[0].strip().lower() for d in core} - {"torch"}
    assert core_names <= names
