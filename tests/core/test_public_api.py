"""The names `firered_core` promises resolve, and importing the package itself stays cheap (no torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import firered_core


@pytest.mark.parametrize("name", firered_core.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(firered_core, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        firered_core.no_such_thing  # noqa: B018


def test_import_loads_no_torch() -> None:
    code = "import sys, firered_core; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
