#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# A real ComfyUI 0.3.75 (in .cache/comfyui, its own venv) for the interop tests, and headless Chromium +
# playwright-core (.cache/frontend) for the front-end tests; FIRERED_SKIP_COMFYUI=1 skips both set-ups locally, and
# those tests then skip with the reason (CI sets FIRERED_REQUIRE_COMFYUI=1, so they can't).
if [ "${FIRERED_SKIP_COMFYUI:-0}" != 1 ]; then
    bash scripts/comfyui_env.sh
    bash scripts/frontend_env.sh
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
