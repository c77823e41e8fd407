#!/usr/bin/env bash
# Run the memory and speed benchmarks at their smallest settings, so that none of them can rot unnoticed (CI runs
# this after the tests). The figures printed here are not the ones the README quotes: those come from the full
# settings named in each script's docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
comfy_py=.cache/comfyui/venv/bin/python  # the CUDA build of torch, for FakeTensorMode's fake cuda:0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

log=.cache/bench_smoke.log
mkdir -p .cache
run() {
    local started=$SECONDS rc=0
    echo "== $*"
    "$@" > "$log" 2>&1 || rc=$?
    tail -n 12 "$log"
    echo "   (exit $rc, $((SECONDS - started)) s)"
    return "$rc"
}

run "$py" benchmarks/plugin_import.py --runs 2
run "$py" benchmarks/transformer_forward.py --preset tiny --image-px 64 --runs 1 --warmup 0
run "$py" benchmarks/load_memory.py --layers 1
run "$py" benchmarks/train_step.py --preset tiny --image-px 64 --runs 1
run "$py" benchmarks/train_memory.py --smoke
run "$py" benchmarks/gguf_forward.py --smoke
run "$py" benchmarks/offload_overhead.py --smoke
run "$py" benchmarks/encoder_fp8.py --smoke
run "$py" benchmarks/real_size.py --smoke
run "$py" benchmarks/latent_preview.py --latent 8 --runs 1
run "$py" benchmarks/alignment_shift.py --smoke
run "$py" benchmarks/edit_seeds.py --smoke
rm -rf .cache/bench_consistency
run "$py" benchmarks/train_consistency.py .cache/bench_consistency --runs 1
if [ -x "$comfy_py" ]; then
    run "$comfy_py" benchmarks/memory_table.py --smoke
else
    echo "== benchmarks/memory_table.py needs ComfyUI's venv (bash scripts/comfyui_env.sh); skipped"
fi
