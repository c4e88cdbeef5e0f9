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
run attention 90 "$py" benchmarks/attention.py
run train_1.3b 180 "$py" benchmarks/train_step.py --preset deepseek-coder-1.3b --seq 2048 --batch 8 --dtype bfloat16 \
    --remat full --attention cudnn --steps 6 --json "$OUT/train_step.jsonl"
run train_6.7b 180 "$py" benchmarks/train_step.py --preset deepseek-coder-6.7b --layers 8 --seq 2048 --batch 8 \
    --dtype bfloat16 --remat full --attention cudnn --steps 6 --json "$OUT/train_step.jsonl"
run generate_1.3b 100 "$py" benchmarks/generate.py --preset deepseek-coder-1.3b --batch 16 --prompt-len 256 --new-tokens 256
