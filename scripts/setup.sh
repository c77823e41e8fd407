#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv, inside the checkout and ignored by git.
#
# Idempotent: a stamp records the hash of the files that define the install, so a second run with nothing
# changed returns at once. torch is installed first and pinned (FIRERED_TORCH, default the CPU build 2.13.0) so
# that no later requirement can pull a second, CUDA build of torch onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
venv=.venv
extras=${FIRERED_EXTRAS:-test}
torch_spec=${FIRERED_TORCH:-torch==2.13.0}
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$PWD/.cache/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1

want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras-$torch_spec
stamp=$venv/.firered-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
pip_install() { "$venv/bin/python" -m pip install --quiet "$@"; }
pip_install --upgrade pip
pip_install "$torch_spec"
pip_install -e ".[$extras]"
echo "$want" > "$stamp"
echo "environment ready in $venv" >&2
