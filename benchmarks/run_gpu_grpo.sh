#!/usr/bin/env bash
# Issue 20's GPU time split in one device call (one H100/H200, CUDA jax): a GRPO step of a
# deepseek-coder-1.3b-shaped model (random bf16 weights, float32 master weights and Adam) with 64 rollouts
# of 256 tokens, then 256 rollouts in 4 micro-batches.  About 4 minutes.
# Usage: OUT=/some/dir bash benchmarks/run_gpu_grpo.sh
# Results: $OUT/run_gpu_grpo.log and $OUT/results.tgz (`tar -xzf results.tgz -C benchmarks/results`).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/semcoder-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
py=${PYTHON:-python3}
stamp=$(mktemp)
run() {  # run NAME SECONDS CMD...: time-boxed, output kept even on failure
  local name=$1 secs=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/run_gpu_grpo.log"
  timeout "$secs" "$@" 2>&1 | grep -v -i "warning" | tee -a "$OUT/run_gpu_grpo.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/run_gpu_grpo.log"
model=(--preset deepseek-coder-1.3b --dtype bfloat16 --workers 16)
run grpo_64 120 "$py" benchmarks/grpo_step.py "${model[@]}" --prompts-per-step 8 --group-size 8 \
    --max-new-tokens 256 --slots 64 --steps 3 --record
run grpo_256 150 "$py" benchmarks/grpo_step.py "${model[@]}" --prompts-per-step 32 --group-size 8 \
    --max-new-tokens 256 --slots 128 --micro-batches 4 --steps 2 --record
find benchmarks/results -name 'grpo_step_*.json' -newer "$stamp" -printf '%f\n' > "$OUT/new_records.txt"
tar -czf "$OUT/results.tgz" -C benchmarks/results -T "$OUT/new_records.txt"
cat "$OUT/new_records.txt"
