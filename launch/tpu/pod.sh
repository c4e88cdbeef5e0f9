#!/usr/bin/env bash
# The life of a SemCoder training run on a TPU VM slice, over gcloud.
#
#   pod.sh ACTION [options] [-- semcoder train overrides]
#
# Actions:
#   create     create the slice (TPU VM, or a queued resource with --queued)
#   setup      on every worker: Python venv, jax[tpu], this package (from the local checkout or --wheel),
#              optional GCS bucket mount for data and checkpoints
#   run        copy the config and start the same `semcoder train` on every worker, in the background,
#              logs per worker in ~/semcoder/logs/train.log (resumes when the run directory holds checkpoints)
#   up         create + setup + run
#   status     the slice's state and the run's state on every worker
#   logs       tail the logs (--worker N|all, --lines N, --follow)
#   stop       SIGTERM the run on every worker (it saves a checkpoint and exits)
#   delete     delete the slice (and its queued resource)
#   supervise  watch the run; when the slice is preempted or gone, re-create it, set it up and run again
#              (the run resumes from its latest checkpoint); ends when every worker finished with status 0
#
# Options (also from the environment as TPU_NAME, TPU_ZONE, TPU_TYPE, TPU_RUNTIME, GCP_PROJECT):
#   --name NAME  --zone ZONE  --type ACCELERATOR (v4-64, v5p-32, v5litepod-64, v6e-64...)
#   --runtime VERSION (default by type)  --project PROJECT  --spot | --preemptible  --queued
#   --config FILE  --run-dir DIR  --export-hf DIR  --bucket BUCKET (mounted at /mnt/gcs/BUCKET)
#   --wheel FILE (install this wheel instead of the checkout)  --jax-spec SPEC (default jax[tpu]==0.10.2)
#   --worker N|all  --lines N  --follow  --interval SECONDS  --max-restarts N
#   --dry-run    print every command instead of running it
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
DIST_DIR=${SEMCODER_DIST_DIR:-$REPO_DIR/dist}

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
TYPE=${TPU_TYPE:-}
RUNTIME=${TPU_RUNTIME:-}
PROJECT=${GCP_PROJECT:-}
SPOT=0
PREEMPTIBLE=0
QUEUED=0
CONFIG=""
RUN_DIR=""
EXPORT_HF=""
BUCKET=""
WHEEL=""
JAX_SPEC="jax[tpu]==0.10.2"
WORKER="0"
LINES=50
FOLLOW=0
INTERVAL=300
MAX_RESTARTS=20
DRY_RUN=0
OVERRIDES=()
# Relative to the worker's home directory (gcloud ssh starts there); a quoted "~" would not expand.
REMOTE_HOME=semcoder
REMOTE_VENV=semcoder/venv

die() { echo "pod.sh: $*" >&2; exit 2; }
log() { echo "pod.sh: $*" >&2; }

# Runs a command, or prints it (shell-quoted, one line) under --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "$@" | sed 's/ $//'
    echo
  else
    "$@"
  fi
}

# A query whose output is parsed: under --dry-run it is printed (on fd 3, the script's stdout, which
# command substitution does not capture) and answers nothing.
exec 3>&1
query() {
  if [[ $DRY_RUN == 1 ]]; then
    run "$@" >&3
  else
    "$@"
  fi
}

default_runtime() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "--type $1: unknown accelerator type (v4-N, v5litepod-N, v5p-N, v6e-N); pass --runtime" ;;
  esac
}

# The accelerator type as the TPU API spells it: our v5e-N alias is v5litepod-N there.
api_type() {
  case $1 in
    v5e-*) echo "v5litepod-${1#v5e-}" ;;
    *) echo "$1" ;;
  esac
}

gcloud_tpu() {
  local -a extra=()
  [[ -n $PROJECT ]] && extra+=(--project "$PROJECT")
  run gcloud compute tpus "$@" --zone "$ZONE" ${extra[@]+"${extra[@]}"}
}

# ssh to workers; the remote command is built from quoted words so that any argument survives.
remote() {
  local worker=$1
  shift
  local cmd
  cmd=$(printf '%q ' "$@")
  gcloud_tpu tpu-vm ssh "$NAME" --worker="$worker" --command="${cmd% }"
}

remote_query() {
  local worker=$1
  shift
  local cmd
  cmd=$(printf '%q ' "$@")
  local -a extra=()
  [[ -n $PROJECT ]] && extra+=(--project "$PROJECT")
  query gcloud compute tpus tpu-vm ssh "$NAME" --worker="$worker" --command="${cmd% }" --zone "$ZONE" ${extra[@]+"${extra[@]}"}
}

need() {
  local var
  for var in "$@"; do
    [[ -n ${!var} ]] || die "$(echo "$var" | tr '[:upper:]_' '[:lower:]-' | sed 's/^/--/') is required for this action"
  done
}

# ---- actions ---------------------------------------------------------------------------------

do_create() {
  need NAME ZONE TYPE
  local runtime=$RUNTIME
  if [[ -z $runtime ]]; then
    runtime=$(default_runtime "$TYPE") || exit 2
  fi
  local -a flags=(--accelerator-type "$(api_type "$TYPE")")
  if [[ $QUEUED == 1 ]]; then
    flags+=(--runtime-version "$runtime" --node-id "$NAME")
    [[ $SPOT == 1 ]] && flags+=(--spot)
    [[ $PREEMPTIBLE == 1 ]] && die "--preemptible with --queued: GA queued resources take --spot (--best-effort is alpha-only)"
    gcloud_tpu queued-resources create "$NAME" "${flags[@]}"
    wait_ready
  else
    flags+=(--version "$runtime")
    [[ $SPOT == 1 ]] && flags+=(--spot)
    [[ $PREEMPTIBLE == 1 ]] && flags+=(--preemptible)
    gcloud_tpu tpu-vm create "$NAME" "${flags[@]}"
  fi
}

slice_state() {
  local -a extra=()
  [[ -n $PROJECT ]] && extra+=(--project "$PROJECT")
  query gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" ${extra[@]+"${extra[@]}"} --format='value(state)' \
    2>/dev/null || true
}

wait_ready() {
  [[ $DRY_RUN == 1 ]] && { slice_state; return 0; }
  local state
  for _ in $(seq 1 720); do
    state=$(slice_state)
    [[ $state == READY ]] && return 0
    log "waiting for $NAME to be READY (state: ${state:-none})"
    sleep 10
  done
  die "$NAME did not become READY"
}

do_setup() {
  need NAME ZONE
  local package
  remote all mkdir -p "$REMOTE_HOME/logs"
  if [[ -n $WHEEL ]]; then
    package="$REMOTE_HOME/$(basename "$WHEEL")"
    gcloud_tpu tpu-vm scp "$WHEEL" "$SCRIPT_DIR/worker.sh" "$NAME:$REMOTE_HOME/" --worker=all
  else
    # The committed tree of the local checkout, as a source archive pip builds on each worker.
    run mkdir -p "$DIST_DIR"
    run git -C "$REPO_DIR" archive --format=tar.gz --prefix=semcoder-jax/ -o "$DIST_DIR/semcoder-src.tar.gz" HEAD
    package="$REMOTE_HOME/semcoder-src.tar.gz"
    gcloud_tpu tpu-vm scp "$DIST_DIR/semcoder-src.tar.gz" "$SCRIPT_DIR/worker.sh" "$NAME:$REMOTE_HOME/" --worker=all
  fi
  local -a args=(bash "$REMOTE_HOME/worker.sh" setup --venv "$REMOTE_VENV" --jax-spec "$JAX_SPEC" --package "$package")
  [[ -n $BUCKET ]] && args+=(--bucket "$BUCKET")
  remote all ${args[@]+"${args[@]}"}
}

do_run() {
  need NAME ZONE CONFIG RUN_DIR
  [[ -f $CONFIG ]] || die "--config $CONFIG: no such file"
  case $RUN_DIR in
    /*|gs://*) ;;
    *) die "--run-dir $RUN_DIR: give an absolute path on the workers (e.g. /mnt/gcs/BUCKET/runs/NAME) so a re-created slice finds the checkpoints" ;;
  esac
  gcloud_tpu tpu-vm scp "$CONFIG" "$SCRIPT_DIR/worker.sh" "$NAME:$REMOTE_HOME/" --worker=all
  local -a args=(bash "$REMOTE_HOME/worker.sh" start --venv "$REMOTE_VENV"
                 --config "$REMOTE_HOME/$(basename "$CONFIG")" --run-dir "$RUN_DIR")
  [[ -n $EXPORT_HF ]] && args+=(--export-hf "$EXPORT_HF")
  remote all ${args[@]+"${args[@]}"} -- ${OVERRIDES[@]+"${OVERRIDES[@]}"}
}

do_status() {
  need NAME ZONE
  local state
  state=$(slice_state)
  echo "slice $NAME: ${state:-not found}"
  if [[ $state == READY || $DRY_RUN == 1 ]]; then
    remote all bash "$REMOTE_HOME/worker.sh" status
  fi
}

do_logs() {
  need NAME ZONE
  local -a args=(bash "$REMOTE_HOME/worker.sh" logs --lines "$LINES")
  [[ $FOLLOW == 1 ]] && args+=(--follow)
  remote "$WORKER" ${args[@]+"${args[@]}"}
}

do_stop() {
  need NAME ZONE
  remote all bash "$REMOTE_HOME/worker.sh" stop
}

do_delete() {
  need NAME ZONE
  if [[ $QUEUED == 1 ]]; then
    gcloud_tpu queued-resources delete "$NAME" --force --quiet
  else
    gcloud_tpu tpu-vm delete "$NAME" --quiet
  fi
}

# The run's exit codes on all workers, one per line ("running", "none" or a number).
exit_codes() {
  remote_query all bash "$REMOTE_HOME/worker.sh" exit-code
}

do_supervise() {
  need NAME ZONE TYPE CONFIG RUN_DIR
  local restarts=0 state codes
  while true; do
    state=$(slice_state)
    if [[ $state == READY ]]; then
      codes=$(exit_codes || true)
      if [[ -n $codes ]] && ! grep -qv '^0$' <<<"$codes"; then
        log "every worker finished with status 0: done"
        return 0
      fi
      if grep -q '^running$' <<<"$codes"; then
        [[ $DRY_RUN == 1 ]] && return 0
        sleep "$INTERVAL"
        continue
      fi
      # READY but not running on every worker: a worker failed or never started; stop the rest, restart.
      log "slice READY but the run is not running everywhere (exit codes: $(tr '\n' ' ' <<<"$codes")); restarting it"
      [[ $restarts -ge $MAX_RESTARTS ]] && die "gave up after $restarts restarts"
      restarts=$((restarts + 1))
      do_stop
      do_run
    else
      [[ $restarts -ge $MAX_RESTARTS ]] && die "gave up after $restarts restarts"
      restarts=$((restarts + 1))
      log "slice $NAME is ${state:-gone}: re-creating it (restart $restarts of at most $MAX_RESTARTS)"
      [[ -n $state ]] && do_delete
      do_create
      wait_ready
      do_setup
      do_run
    fi
    [[ $DRY_RUN == 1 ]] && return 0
    sleep "$INTERVAL"
  done
}

# ---- arguments -------------------------------------------------------------------------------

[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 2; }
ACTION=$1
shift
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) NAME=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --type) TYPE=$2; shift 2 ;;
    --runtime) RUNTIME=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --preemptible) PREEMPTIBLE=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --config) CONFIG=$2; shift 2 ;;
    --run-dir) RUN_DIR=$2; shift 2 ;;
    --export-hf) EXPORT_HF=$2; shift 2 ;;
    --bucket) BUCKET=$2; shift 2 ;;
    --wheel) WHEEL=$2; shift 2 ;;
    --jax-spec) JAX_SPEC=$2; shift 2 ;;
    --worker) WORKER=$2; shift 2 ;;
    --lines) LINES=$2; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --max-restarts) MAX_RESTARTS=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see pod.sh without arguments)" ;;
  esac
done
[[ $SPOT == 1 && $PREEMPTIBLE == 1 ]] && die "--spot and --preemptible exclude each other"

case $ACTION in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run ;;
  up) do_create; wait_ready; do_setup; do_run ;;
  status) do_status ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  supervise) do_supervise ;;
  *) die "unknown action $ACTION (create, setup, run, up, status, logs, stop, delete, supervise)" ;;
esac
