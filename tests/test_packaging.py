"""What `pip install` puts into site-packages: firered_core, and never a top-level `nodes` or `train`.

ComfyUI owns the top-level module name `nodes`; a plugin that installs its own shadows it and breaks the host.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_has_no_top_level_nodes_or_train(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {t for t in tops if not t.endswith((".dist-info", ".data"))}
    assert "firered_core" in packages
    assert not packages & {"nodes", "train", "tests", "benchmarks", "scripts"}, packages


def test_licence_is_gpl3_or_later() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "GPL-3.0-or-later"
    assert "GNU GENERAL PUBLIC LICENSE" in (ROOT / "LICENSE").read_text()[:200]
    assert "Version 3" in (ROOT / "LICENSE").read_text()[:300]


def test_every_package_folder_is_listed() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "firered_core").rglob("__init__.py")}
    train = ROOT / "train"
    if train.is_dir():
        found |= {".".join(("firered_train",) + p.parent.relative_to(train).parts) for p in train.rglob("__init__.py")}
    assert found <= listed, f"package folders missing from pyproject's packages list: {sorted(found - listed)}"
