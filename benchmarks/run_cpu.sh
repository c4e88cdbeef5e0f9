#!/usr/bin/env bash
# Re-records every CPU figure of the README's performance table and docs/launch.md, one benchmark after
# another (so they do not share the cores), then re-renders the docs from the records.
# Usage: bash benchmarks/run_cpu.sh [STEP ...]     (no STEP: the default steps, about 50 min on 2 cores)
# Steps: train attention plan eval checkpoint convert checkpoint_state pipeline builder
# Needs: /tmp/ep (evalplus 0.3.1, see eval_exec.py) for the EvalPlus baseline; libtpu for `plan tpu`
# (LIBTPU_DIR, default /tmp/libtpu_pkg: pip install --no-deps --target /tmp/libtpu_pkg libtpu==0.0.42.1);
# about 45 GB of free disk under /tmp for convert.  Not in the default steps: checkpoint_state (the 8-layer
# 1.3B train state), which needs ~20 GB of RAM: run it alone on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(train attention plan eval checkpoint convert pipeline builder)
for step in "${steps[@]}"; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case $step in
    train)
      "$py" benchmarks/train_step.py --preset tiny --hidden 256 --layers 4 --vocab 8192 --seq 256 --batch 8 \
        --dtype float32 --no-scan-layers --attention cpu --steps 20 --repeats 3 --record
      "$py" benchmarks/train_step.py --preset tiny --seq 256 --batch 16 --dtype float32 --no-scan-layers \
        --attention cpu --steps 20 --repeats 3 --record ;;
    attention)
      "$py" benchmarks/attention.py --batch 8 --seq 256 --heads 4 --kv-heads 4 --head-dim 64 --dtype float32 \
        --repeats 4 --record
      for shape in "16 256 4 2 16" "2 1024 8 8 64" "1 2048 8 8 128"; do
        read -r b t h kv d <<< "$shape"
        "$py" benchmarks/attention.py --batch "$b" --seq "$t" --heads "$h" --kv-heads "$kv" --head-dim "$d" \
          --dtype float32 --repeats 2 --record
      done ;;
    plan)
      "$py" benchmarks/plan.py validate --repeats 3 --record
      "$py" benchmarks/plan.py configs --record
      PYTHONPATH=${LIBTPU_DIR:-/tmp/libtpu_pkg} "$py" benchmarks/plan.py tpu --record ;;
    eval)
      "$py" benchmarks/eval_exec.py --evalplus-python /tmp/ep/bin/python --sets humaneval+,mbpp+ --workers 2 \
        --repeats 2 --record ;;
    checkpoint)
      "$py" benchmarks/checkpoint_integrity.py --workdir /tmp/ckpt-bench --preset deepseek-coder-1.3b \
        --items params --repeats 4 --record ;;
    checkpoint_state)
      "$py" benchmarks/checkpoint_integrity.py --workdir /tmp/ckpt-bench --preset deepseek-coder-1.3b \
        --items state --layers 8 --no-digests --repeats 4 --record ;;
    convert)
      "$py" benchmarks/convert.py --workdir /tmp/convert-bench --layers 32 --shard-size 5GB --repeats 2 --record ;;
    builder)
      "$py" benchmarks/pyx_build.py --seeds 200 --workers 2 --repeats 2 --record ;;
    pipeline)
      "$py" benchmarks/pipeline_throughput.py --copies 10 --resume-copies 100 --repeats 3 --record ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
"$py" benchmarks/figures.py --write
