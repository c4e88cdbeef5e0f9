#!/usr/bin/env bash
# SemCoder training on GPU nodes without a scheduler: run this once on every node.
#
#   launch/gpu/multinode.sh --coordinator node0:12355 --nnodes 2 --node-rank 0 -- --config CFG --run-dir DIR
#   launch/gpu/multinode.sh --coordinator node0:12355 --nnodes 2 --node-rank 1 --per-gpu 8 -- --config CFG ...
#
# Default: one process per node owning all its GPUs (process id = node rank, count = nnodes).
# --per-gpu G: G processes per node, one GPU each (id = rank * G + local GPU, count = nnodes * G).
# A failing local process stops the node's other processes.  --semcoder CMD (default `semcoder`),
# --dry-run prints the commands.  After "--": `semcoder train` arguments, KEY=VALUE overrides last.
set -euo pipefail

COORDINATOR=""
NNODES=""
NODE_RANK=""
PER_GPU=0
SEMCODER=semcoder
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --coordinator) COORDINATOR=$2; shift 2 ;;
    --nnodes) NNODES=$2; shift 2 ;;
    --node-rank) NODE_RANK=$2; shift 2 ;;
    --per-gpu) PER_GPU=$2; shift 2 ;;
    --semcoder) SEMCODER=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    *) echo "multinode.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
TRAIN_ARGS=("$@")
die() { echo "multinode.sh: $*" >&2; exit 2; }
[[ -n $COORDINATOR && $COORDINATOR == *:* ]] || die "--coordinator HOST:PORT is required"
[[ $NNODES =~ ^[1-9][0-9]*$ ]] || die "--nnodes N (a positive integer) is required"
[[ $NODE_RANK =~ ^[0-9]+$ && $NODE_RANK -lt $NNODES ]] || die "--node-rank R with 0 <= R < nnodes is required"
[[ $PER_GPU =~ ^[0-9]+$ ]] || die "--per-gpu G: G must be a number of GPUs"
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die "give the semcoder train arguments after --"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}

commands=()
if [[ $PER_GPU == 0 ]]; then
  commands+=("$(printf '%q ' "$SEMCODER" train --coordinator "$COORDINATOR" --num-processes "$NNODES" \
    --process-id "$NODE_RANK" "${TRAIN_ARGS[@]}")")
else
  for ((gpu = 0; gpu < PER_GPU; gpu++)); do
    commands+=("$(printf '%q ' "$SEMCODER" train --coordinator "$COORDINATOR" \
      --num-processes "$((NNODES * PER_GPU))" --process-id "$((NODE_RANK * PER_GPU + gpu))" \
      "${TRAIN_ARGS[@]}" "distributed.local_device_ids=$gpu")")
  done
fi

if [[ $DRY_RUN == 1 ]]; then
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  for c in "${commands[@]}"; do echo "${c% }"; done
  exit 0
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup TERM INT
for i in "${!commands[@]}"; do
  # bash -c of one command execs it: $! is the trainer itself, which `cleanup` signals.
  bash -c "${commands[$i]}" > >(sed -u "s/^/[rank$NODE_RANK.$i] /") 2>&1 &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    echo "multinode.sh: a process failed; stopping this node's others" >&2
    cleanup
  fi
done
exit "$status"
