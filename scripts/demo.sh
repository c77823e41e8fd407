#!/usr/bin/env bash
# The README's first command: set up the environment if needed, then edit the shipped example image with the
# embedded default model (a small FireRed-architecture model trained by this project, firered_core/default/),
# offline, on the CPU. Writes outputs/demo/result.png and outputs/demo/result_compare.png (before | after); an
# existing result is never replaced: the next free name (result-2.png, ...) is used instead.
#   bash scripts/demo.sh                                  # the example edit
#   bash scripts/demo.sh IMAGE "INSTRUCTION"              # your own image and instruction
#   bash scripts/demo.sh IMAGE "INSTRUCTION" --seed 3     # any further 'firered edit' options
set -euo pipefail
cd "$(dirname "$0")/.."
FIRERED_EXTRAS=${FIRERED_EXTRAS:-test} bash scripts/setup.sh
image=${1:-examples/input.png}
instruction=${2:-$(cat examples/instruction.txt)}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p outputs/demo
out=outputs/demo/result.png
n=1
while [ -e "$out" ] || [ -e "${out%.png}_compare.png" ]; do
    n=$((n + 1))
    out=outputs/demo/result-$n.png
done
exec .venv/bin/firered edit "$image" --instruction "$instruction" -o "$out" --compare "$@"
