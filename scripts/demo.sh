#!/usr/bin/env bash
# Set up the environment if needed, then edit the shipped example image with the embedded default model.
# The embedded default model (a small FireRed-architecture model trained by this project) is not shipped yet;
# until it is, this script says so and exits with status 2. Pass --model PATH to use real weights instead:
#   bash scripts/demo.sh --model path/to/FireRed-Image-Edit-1.1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
example=examples/input.png
if [ ! -f "$example" ] || [ ! -d firered_core/default ]; then
    echo "demo: the embedded default model and example image are not shipped yet (issue 4);" \
         "run 'firered edit IMAGE --instruction TEXT -o OUT.png --model PATH' with real weights" >&2
    exit 2
fi
exec .venv/bin/firered edit "$example" --instruction "${FIRERED_DEMO_INSTRUCTION:-make the circle blue}" \
    -o outputs/demo.png "$@"
