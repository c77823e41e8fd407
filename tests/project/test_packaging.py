"""What `pip install` puts into site-packages: firered_core, and never a top-level `nodes` or `train`.

ComfyUI owns the top-level module name `nodes`; a plugin that installs its own shadows it and breaks the host.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked files copied to ``dest``: building writes build/ and *.egg-info into its source."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_wheel_has_no_top_level_nodes_or_train(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {t for t in tops if not t.endswith((".dist-info", ".data"))}
    assert {"firered_core", "firered_train", "firered_bench"} <= packages
    assert not packages & {"nodes", "train", "tests", "benchmarks", "scripts"}, packages


def test_licence_is_gpl3_or_later() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "GPL-3.0-or-later"
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]
    assert "Version 3" in (ROOT / "LICENSE").read_text()[:300]


def test_every_package_folder_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("firered_core", "firered_bench") for p in (ROOT / top).rglob("__init__.py")}
    train = ROOT / "train"
    if train.is_dir():
        found |= {".".join(("firered_train",) + p.parent.relative_to(train).parts) for p in train.rglob("__init__.py")}
    assert found <= listed, f"package folders missing from pyproject's packages list: {sorted(found - listed)}"
