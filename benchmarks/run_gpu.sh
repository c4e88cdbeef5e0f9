#!/usr/bin/env bash
# The GPU figures of the README's performance table, in one go (one H100/H200, CUDA jax + torch).
# Usage: OUT=/some/dir bash benchmarks/run_gpu.sh    (results: $OUT/*.txt and $OUT/train_step.jsonl)
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/semcoder-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
py=${PYTHON:-python3}
run() {  # run NAME SECONDS CMD...: time-boxed, output kept even on failure
  local name=$1 secs=$2; shift 2
  echo "=== $name: $*"
  timeout "$secs" "$@" 2>&1 | grep -v -i "warning" | tee "$OUT/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$py -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
# The MFU goal's row first (6.7B shape, remat minimal; whole rows take cuDNN's causal kernel), then
# the attention check (values and gradients of cuDNN's three calls against float32 XLA), where the
# step time goes, packed rows through the segment mask and through cuDNN's packed runs, the blockwise
# loss, no remat, and decoding (the 1.3B rows of session 1 are not re-run).  The time boxes add up
# to 600 s, one device call.
six=(--preset deepseek-coder-6.7b --layers 8 --seq 2048 --batch 8 --dtype bfloat16 --attention cudnn --steps 6)
run train_6.7b_minimal 150 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal --json "$OUT/train_step.jsonl"
run attention 40 "$py" benchmarks/attention.py
run profile_6.7b_minimal 80 "$py" benchmarks/profile_step.py "${six[@]}" --remat minimal --top 25
run train_6.7b_packed_mask 70 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal --segments 4 --only jax
run train_6.7b_packed_runs 70 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal --segments 4 \
    --cudnn-packed-runs 8 --only jax
run train_6.7b_minimal_chunk 70 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal --loss-chunk 512 --only jax
# No remat at all: nothing recomputed, cuDNN's forward included (XLA:TPU plans this shape at 67.5 GiB).
run train_6.7b_none 70 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 "$py" benchmarks/train_step.py "${six[@]}" --remat none \
    --only jax
run generate_1.3b 40 "$py" benchmarks/generate.py --preset deepseek-coder-1.3b --batch 16 --prompt-len 256 --new-tokens 256
