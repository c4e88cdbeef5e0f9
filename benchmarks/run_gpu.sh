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
# Correctness first (values and gradients of cuDNN's three calls against float32 XLA), then the MFU
# goal's row beside torch (6.7B shape, remat minimal; whole rows take cuDNN's causal kernel), then the
# remat policies that recompute less (minimal_attention keeps cuDNN's forward out of the backward;
# none recomputes nothing), two micro-batches (the optimizer update once per 32K tokens), where the
# step time goes, and packed rows on cuDNN's packed layout.  The time boxes add up to 560 s of one
# 600 s device call; a summary table comes last.
six=(--preset deepseek-coder-6.7b --layers 8 --seq 2048 --batch 8 --dtype bfloat16 --attention cudnn --steps 6)
run attention 40 "$py" benchmarks/attention.py
run train_6.7b_minimal 150 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal --json "$OUT/train_step.jsonl"
run train_6.7b_minimal_attention 70 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal_attention --only jax
# No remat at all: nothing recomputed (XLA:TPU plans this shape at 67.5 GiB).
run train_6.7b_none 70 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 "$py" benchmarks/train_step.py "${six[@]}" \
    --remat none --only jax
run train_6.7b_minimal_attention_micro2 80 "$py" benchmarks/train_step.py "${six[@]}" --batch 16 \
    --micro-batches 2 --remat minimal_attention --only jax
run profile_6.7b_minimal_attention 80 "$py" benchmarks/profile_step.py "${six[@]}" --remat minimal_attention --top 25
run train_6.7b_packed_runs 60 "$py" benchmarks/train_step.py "${six[@]}" --remat minimal_attention --segments 4 \
    --cudnn-packed-runs 8 --only jax
echo "=== summary (ours; MFU = 6N + causal attention FLOPs over the device's dense bf16 peak)"
for f in "$OUT"/train_*.txt; do
  "$py" - "$f" <<'PY'
import json, re, sys
name = sys.argv[1].rsplit("/", 1)[-1][:-4]
for line in open(sys.argv[1]):
    if line.startswith("RESULT "):
        r = json.loads(line[7:])
        print(f"{name:40s} {r['tokens_per_second']:8.0f} tok/s  MFU {100 * r.get('mfu', 0):5.1f} %  "
              f"peak {r.get('peak_gib') or 0:5.1f} GiB  compile {r.get('compile_s', 0):4.0f} s  loss {r['loss']:.3f}")
    elif re.match(r"(jax|torch) ", line) or line.startswith("ratio"):
        print(f"{name:40s} {line.strip()}")
PY
done
