#!/usr/bin/env bash
# The life of a SemCoder training run on a TPU VM slice, over gcloud.
#
#   pod.sh ACTION [options] [-- semcoder train overrides]
#
# Actions:
#   create     create the slice (TPU VM, or a queued resource with --queued)
#   setup      on every worker: Python venv, jax[tpu], this package (from the local checkout or --wheel),
#              optional gcsfuse mount of a bucket (gs:// run directories and data need none)
#   run        copy the config and start the same `semcoder train` on every worker, in the background,
#              logs per worker in ~/semcoder/logs/train.log (resumes when the run directory holds checkpoints)
#   up         create + setup + run
#   status     the slice's state and the run's state on every worker
#   logs       tail the logs (--worker N|all, --lines N, --follow)
#   stop       SIGTERM the run on every worker (it saves a checkpoint and exits)
#   delete     delete the slice (and its queued resource)
#   supervise  watch the slice (and its queued resource) and the run as a state machine: wait through
#              CREATING/REPAIRING/..., delete and re-request what was preempted, suspended or failed, set
#              it up and run again (the run resumes from its latest checkpoint), retry API errors with
#              backoff; ends when every worker finished with status 0
#
# Options (also from the environment as TPU_NAME, TPU_ZONE, TPU_TYPE, TPU_RUNTIME, GCP_PROJECT):
#   --name NAME  --zone ZONE  --type ACCELERATOR (v4-64, v5p-32, v5litepod-64, v6e-64...)
#   --runtime VERSION (default by type)  --project PROJECT  --spot | --preemptible  --queued
#   --config FILE  --run-dir gs://BUCKET/PATH|DIR  --export-hf gs://BUCKET/PATH|DIR
#   --bucket BUCKET (optional: also mount it at /mnt/gcs/BUCKET with gcsfuse; gs:// paths need no mount)
#   --wheel FILE (install this wheel instead of the checkout)  --jax-spec SPEC (default jax[tpu]==0.10.2)
#   --python auto|system|uv|apt (the workers' Python 3.11; default auto: the image's if 3.11, else uv)
#   --worker N|all  --lines N  --follow  --interval SECONDS  --max-restarts N  --max-api-errors N
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
PYTHON=""
WORKER="0"
LINES=50
FOLLOW=0
INTERVAL=300
MAX_RESTARTS=20
MAX_API_ERRORS=30
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
  run gcloud compute tpus "$@" --zone "$ZONE" ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"}
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
  query gcloud compute tpus tpu-vm ssh "$NAME" --worker="$worker" --command="${cmd% }" --zone "$ZONE" ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"}
}

need() {
  local var
  for var in "$@"; do
    [[ -n ${!var} ]] || die "$(echo "$var" | tr '[:upper:]_' '[:lower:]-' | sed 's/^/--/') is required for this action"
  done
}

# ---- actions ---------------------------------------------------------------------------------

# ---- checks: every action checks all it needs before it creates, copies or starts anything ---------

check_create() {
  need NAME ZONE TYPE
  if [[ -z $RUNTIME ]]; then
    default_runtime "$TYPE" >/dev/null || exit 2
  fi
  if [[ $QUEUED == 1 && $PREEMPTIBLE == 1 ]]; then
    die "--preemptible with --queued: GA queued resources take --spot (--best-effort is alpha-only)"
  fi
  return 0
}

check_setup() {
  need NAME ZONE
  if [[ -n $WHEEL && ! -f $WHEEL ]]; then die "--wheel $WHEEL: no such file"; fi
  return 0
}

# The config and the overrides are loaded and validated here, by the local semcoder ($SEMCODER, default
# `semcoder` on PATH), so that a typo fails on the workstation, not after a slice was created and billed.
check_run() {
  need NAME ZONE CONFIG RUN_DIR
  [[ -f $CONFIG ]] || die "--config $CONFIG: no such file"
  # gs:// is written natively (Orbax commits each step with a marker object, no directory rename); a
  # path on the workers is kept for a gcsfuse mount (--bucket) or a shared filesystem.
  case $RUN_DIR in
    /*) ;;
    gs://?*/?*) ;;
    gs://*) die "--run-dir $RUN_DIR: give gs://BUCKET/PATH (a folder in the bucket, not the bucket itself)" ;;
    *://*) die "--run-dir $RUN_DIR: the workers write gs://BUCKET/PATH natively; another object store needs a mount path (docs/launch.md)" ;;
    *) die "--run-dir $RUN_DIR: give gs://BUCKET/PATH or an absolute path on the workers (e.g. a --bucket mount /mnt/gcs/BUCKET/runs/NAME) so a re-created slice finds the checkpoints" ;;
  esac
  local semcoder=${SEMCODER:-semcoder}
  if command -v "$semcoder" >/dev/null; then
    "$semcoder" train --config "$CONFIG" --run-dir "$RUN_DIR" --print-config ${OVERRIDES[@]+"${OVERRIDES[@]}"} \
      >/dev/null || die "--config $CONFIG with the overrides after --: refused by $semcoder (above); nothing was done"
  else
    log "$(stamp) no local semcoder (\$SEMCODER or PATH): the config and overrides are checked on the workers only"
  fi
}

do_create() {
  check_create
  local runtime=$RUNTIME
  if [[ -z $runtime ]]; then
    runtime=$(default_runtime "$TYPE") || exit 2
  fi
  local -a flags=(--accelerator-type "$(api_type "$TYPE")")
  if [[ $QUEUED == 1 ]]; then
    flags+=(--runtime-version "$runtime" --node-id "$NAME")
    [[ $SPOT == 1 ]] && flags+=(--spot)
    gcloud_tpu queued-resources create "$NAME" "${flags[@]}"
  else
    flags+=(--version "$runtime")
    [[ $SPOT == 1 ]] && flags+=(--spot)
    [[ $PREEMPTIBLE == 1 ]] && flags+=(--preemptible)
    gcloud_tpu tpu-vm create "$NAME" "${flags[@]}"
  fi
}

# Asks the TPU API for a resource's state: prints the state, GONE when the API says the resource does not
# exist, or ERROR when it could not answer (logged): a transient API error must never read as "gone".
describe_state() {
  local kind=$1 field=$2 out err rc=0
  if [[ $DRY_RUN == 1 ]]; then
    run gcloud compute tpus "$kind" describe "$NAME" --zone "$ZONE" ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} \
      --format="value($field)" >&3
    return 0
  fi
  err=$(mktemp)
  out=$(gcloud compute tpus "$kind" describe "$NAME" --zone "$ZONE" ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} \
    --format="value($field)" 2>"$err") || rc=$?
  if [[ $rc == 0 ]]; then
    echo "${out:-UNKNOWN}"
  elif grep -q 'NOT_FOUND' "$err"; then
    echo GONE
  else
    log "$(stamp) $kind describe $NAME failed (status $rc): $(grep -v '^[[:space:]]*$' "$err" | tail -n 1)"
    echo ERROR
  fi
  rm -f "$err"
}

node_state() { describe_state tpu-vm state; }
queued_state() { describe_state queued-resources state.state; }
stamp() { date -u '+%Y-%m-%dT%H:%M:%SZ'; }

# Until the slice is READY; an API error is retried, a FAILED or SUSPENDED request ends the wait at once.
wait_ready() {
  [[ $DRY_RUN == 1 ]] && { node_state; return 0; }
  local state qstate
  for _ in $(seq 1 720); do
    state=$(node_state)
    [[ $state == READY ]] && return 0
    if [[ $QUEUED == 1 ]]; then
      qstate=$(queued_state)
      case $qstate in
        FAILED|SUSPENDED) die "queued resource $NAME is $qstate: delete it (pod.sh delete --queued) and create again" ;;
      esac
    fi
    log "$(stamp) waiting for $NAME to be READY (node: $state$([[ $QUEUED == 1 ]] && echo ", queued resource: $qstate"))"
    sleep 10
  done
  die "$NAME did not become READY in 2 hours"
}

do_setup() {
  check_setup
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
  [[ -n $PYTHON ]] && args+=(--python "$PYTHON")
  remote all ${args[@]+"${args[@]}"}
}

do_run() {
  need NAME ZONE CONFIG RUN_DIR
  gcloud_tpu tpu-vm scp "$CONFIG" "$SCRIPT_DIR/worker.sh" "$NAME:$REMOTE_HOME/" --worker=all
  local -a args=(bash "$REMOTE_HOME/worker.sh" start --venv "$REMOTE_VENV"
                 --config "$REMOTE_HOME/$(basename "$CONFIG")" --run-dir "$RUN_DIR")
  [[ -n $EXPORT_HF ]] && args+=(--export-hf "$EXPORT_HF")
  remote all ${args[@]+"${args[@]}"} -- ${OVERRIDES[@]+"${OVERRIDES[@]}"}
}

do_status() {
  need NAME ZONE
  local state
  state=$(node_state)
  echo "slice $NAME: $state"
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

# The run's exit codes on all workers, one word per worker ("running", "none" or a number), or nothing when
# the workers could not be asked.
exit_codes() {
  local out
  out=$(remote_query all bash "$REMOTE_HOME/worker.sh" exit-code 2>/dev/null) || return 0
  { grep -E '^(running|none|[0-9]+)$' || true; } <<<"$out" | tr '\n' ' ' | sed 's/ $//'
}

# ---- supervise: a state machine over the node, the queued resource and the run ---------------------
#
# Every pass observes (node state, queued-resource state with --queued, the workers' run states) and takes
# at most one action:
#   API error (describe failed, not NOT_FOUND)        retry with backoff; never read as "gone"
#   queued: WAITING_FOR_RESOURCES ACCEPTED PROVISIONING CREATING SUSPENDING DELETING       wait
#   queued: SUSPENDED FAILED (or ACTIVE without its node)  delete the queued resource (--force: its node too)
#   queued: GONE                                      create the queued resource
#   node: CREATING STARTING RESTARTING REPAIRING REIMAGING UNHIDING DELETING STOPPING     wait
#   node: PREEMPTED TERMINATED STOPPED HIDDEN         delete the node (queued: the queued resource), re-create
#   node: GONE (not queued)                           create it
#   node: READY, after a (re-)create                  setup + run
#   node: READY, every worker finished with 0         done
#   node: READY, a worker failed/stopped/never ran    stop the others; once none runs, run again (resumes)
# Every change of what it observes and every action is logged with its UTC time.

SUP_RESTARTS=0
SUP_API_ERRORS=0
SUP_NEED_SETUP=0
SUP_STOP_SENT=0
SUP_LAST=""

note() {
  if [[ $1 != "$SUP_LAST" ]]; then
    log "$(stamp) $1"
    SUP_LAST=$1
  fi
}

count_restart() {
  [[ $SUP_RESTARTS -ge $MAX_RESTARTS ]] && die "$(stamp) gave up after $SUP_RESTARTS restarts (--max-restarts)"
  SUP_RESTARTS=$((SUP_RESTARTS + 1))
  log "$(stamp) $1 (restart $SUP_RESTARTS of at most $MAX_RESTARTS)"
}

# Runs an action; a failure (e.g. a create refused for quota, an ssh cut) is logged and retried later.
attempt() {
  local what=$1
  shift
  if "$@"; then return 0; fi
  log "$(stamp) $what failed; trying again in the next pass"
  SUP_API_ERRORS=$((SUP_API_ERRORS + 1))
  return 1
}

backoff_sleep() {
  local delay=$((INTERVAL < 10 ? INTERVAL : 10)) i
  for ((i = 1; i < SUP_API_ERRORS && delay < 600; i++)); do delay=$((delay * 2)); done
  [[ $delay -gt 600 ]] && delay=600
  [[ $SUP_API_ERRORS -gt $MAX_API_ERRORS ]] && die "$(stamp) $SUP_API_ERRORS API errors in a row; giving up"
  log "$(stamp) API error $SUP_API_ERRORS in a row: next try in ${delay} s"
  sleep "$delay"
}

# One pass; returns 0 to go on, 10 when the run is done.
supervise_pass() {
  local node qstate codes
  qstate=-
  if [[ $QUEUED == 1 ]]; then
    qstate=$(queued_state)
    [[ $qstate == ERROR ]] && { SUP_API_ERRORS=$((SUP_API_ERRORS + 1)); backoff_sleep; return 0; }
  fi
  node=$(node_state)
  [[ $node == ERROR ]] && { SUP_API_ERRORS=$((SUP_API_ERRORS + 1)); backoff_sleep; return 0; }
  SUP_API_ERRORS=0
  if [[ $QUEUED == 1 ]]; then
    case $qstate in
      GONE)
        count_restart "queued resource $NAME is gone: requesting it again"
        attempt "queued-resources create" do_create && SUP_NEED_SETUP=1
        return 0 ;;
      SUSPENDED|FAILED)
        note "queued resource $NAME is $qstate (node: $node): deleting it to request it again"
        attempt "queued-resources delete" gcloud_tpu queued-resources delete "$NAME" --force --quiet
        return 0 ;;
      ACTIVE)
        if [[ $node == GONE ]]; then
          note "queued resource $NAME is ACTIVE but its node is gone: deleting it to request it again"
          attempt "queued-resources delete" gcloud_tpu queued-resources delete "$NAME" --force --quiet
          return 0
        fi ;;
      *)
        note "queued resource $NAME is $qstate (node: $node): waiting"
        return 0 ;;
    esac
  fi
  case $node in
    READY) ;;
    CREATING|STARTING|RESTARTING|REPAIRING|REIMAGING|UNHIDING|DELETING|STOPPING|HIDING)
      note "slice $NAME is $node: waiting"
      return 0 ;;
    PREEMPTED|TERMINATED|STOPPED|HIDDEN)
      note "slice $NAME is $node: deleting it to create it again"
      if [[ $QUEUED == 1 ]]; then
        attempt "queued-resources delete" gcloud_tpu queued-resources delete "$NAME" --force --quiet
      else
        attempt "tpu-vm delete" gcloud_tpu tpu-vm delete "$NAME" --quiet
      fi
      return 0 ;;
    GONE)
      count_restart "slice $NAME is gone: creating it again"
      attempt "tpu-vm create" do_create && SUP_NEED_SETUP=1
      return 0 ;;
    *)
      note "slice $NAME is in state $node (not known to this script): waiting"
      return 0 ;;
  esac
  if [[ $SUP_NEED_SETUP == 1 ]]; then
    note "slice $NAME is READY: setting it up and starting the run (it resumes from the latest checkpoint)"
    attempt "setup" do_setup || return 0
    attempt "run" do_run || return 0
    SUP_NEED_SETUP=0
    SUP_STOP_SENT=0
    return 0
  fi
  codes=$(exit_codes)
  if [[ -z $codes ]]; then
    note "slice $NAME is READY but its workers did not answer"
    SUP_API_ERRORS=$((SUP_API_ERRORS + 1))
    backoff_sleep
    return 0
  fi
  if [[ " $codes " =~ ^(\ 0)+\ $ ]]; then
    note "every worker finished with status 0: done"
    return 10
  fi
  if [[ " $codes " =~ ^(\ (running|0))+\ $ ]]; then
    note "slice $NAME is READY, the run is running (workers: $codes)"
    return 0
  fi
  # A worker failed, stopped (75: SIGTERM, resumable) or never ran: stop the rest, then run everywhere.
  if [[ " $codes " == *" running "* ]]; then
    if [[ $SUP_STOP_SENT == 0 ]]; then
      note "slice $NAME is READY but not every worker runs (workers: $codes): stopping the others"
      attempt "stop" do_stop && SUP_STOP_SENT=1
    else
      note "waiting for the stopped workers to save and exit (workers: $codes)"
    fi
    return 0
  fi
  count_restart "slice $NAME is READY and no worker runs (workers: $codes): starting the run again"
  attempt "run" do_run && SUP_STOP_SENT=0
  return 0
}

do_supervise() {
  check_create
  check_setup
  check_run
  if [[ $DRY_RUN == 1 ]]; then
    # What a recovery runs, in order: observe, delete, create, wait, setup, run, ask the workers.
    [[ $QUEUED == 1 ]] && queued_state
    node_state
    if [[ $QUEUED == 1 ]]; then
      gcloud_tpu queued-resources delete "$NAME" --force --quiet
    else
      gcloud_tpu tpu-vm delete "$NAME" --quiet
    fi
    do_create
    node_state
    do_setup
    do_run
    exit_codes >/dev/null || true
    return 0
  fi
  local rc
  while true; do
    rc=0
    supervise_pass || rc=$?
    [[ $rc == 10 ]] && return 0
    [[ $rc != 0 ]] && exit "$rc"
    [[ $SUP_API_ERRORS == 0 ]] && sleep "$INTERVAL"
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
    --python) PYTHON=$2; shift 2 ;;
    --worker) WORKER=$2; shift 2 ;;
    --lines) LINES=$2; shift 2 ;;
    --follow) FOLLOW=1; shift ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --max-restarts) MAX_RESTARTS=$2; shift 2 ;;
    --max-api-errors) MAX_API_ERRORS=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see pod.sh without arguments)" ;;
  esac
done
[[ $SPOT == 1 && $PREEMPTIBLE == 1 ]] && die "--spot and --preemptible exclude each other"
PROJECT_ARGS=()  # every gcloud call's --project, when one was given
if [[ -n $PROJECT ]]; then PROJECT_ARGS=(--project "$PROJECT"); fi

case $ACTION in
  create) do_create; if [[ $QUEUED == 1 ]]; then wait_ready; fi ;;
  setup) do_setup ;;
  run) check_run; do_run ;;
  up) check_create; check_setup; check_run; do_create; wait_ready; do_setup; do_run ;;
  status) do_status ;;
  logs) do_logs ;;
  stop) do_stop ;;
  delete) do_delete ;;
  supervise) do_supervise ;;
  *) die "unknown action $ACTION (create, setup, run, up, status, logs, stop, delete, supervise)" ;;
esac
