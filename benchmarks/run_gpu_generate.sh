#!/usr/bin/env bash
# Issue 19's GPU figures in one device call (one H100/H200, CUDA jax + torch): the engine's decode step
# against the memory roofline, then the eval-shaped workload beside transformers, for a
# deepseek-coder-1.3b-shaped model with random bf16 weights.
# Usage: OUT=/some/dir bash benchmarks/run_gpu_generate.sh
# Results: $OUT/run_gpu_generate.log and $OUT/results.tgz (this run's benchmarks/results/*.json records;
# `tar -xzf results.tgz -C benchmarks/results`, then `python benchmarks/figures.py --write`).
# Time boxes add up to 560 s: the roofline at 1/16/64/256 slots over a 1,152-column ring (256 slots: 54 GiB
# of KV cache), then a quarter of the eval workload (41 HumanEval x 10 + 200 CRUXEval-O) on 64 slots, the
# engine beside transformers (the batched sampler too when time is left: it is the slowest).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/semcoder-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
py=${PYTHON:-python3}
stamp=$(mktemp)
run() {  # run NAME SECONDS CMD...: time-boxed, output kept even on failure
  local name=$1 secs=$2; shift 2
  echo "=== $name: $*" | tee -a "$OUT/run_gpu_generate.log"
  timeout "$secs" "$@" 2>&1 | grep -v -i "warning" | tee -a "$OUT/run_gpu_generate.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/run_gpu_generate.log"
model=(--preset deepseek-coder-1.3b --dtype bfloat16)
run roofline 150 "$py" benchmarks/generate.py --workload roofline "${model[@]}" --batches 1,16,64,256 \
    --context 1024 --new-tokens 64 --record
run eval 300 "$py" benchmarks/generate.py --workload eval "${model[@]}" --fraction 0.25 --batch 64 \
    --samplers engine,transformers --record
run eval_batched 110 "$py" benchmarks/generate.py --workload eval "${model[@]}" --fraction 0.05 --batch 64 \
    --record
find benchmarks/results -name '*.json' -newer "$stamp" -printf '%f\n' > "$OUT/new_records.txt"
tar -czf "$OUT/results.tgz" -C benchmarks/results -T "$OUT/new_records.txt"
cat "$OUT/new_records.txt"
