#!/usr/bin/env bash
# What runs on every worker of a TPU VM slice (copied there by pod.sh; pod.sh calls it through
# `gcloud compute tpus tpu-vm ssh --worker=all`).  One file so that quoting stays in one place.
#
#   worker.sh setup  --venv DIR --jax-spec SPEC --package FILE [--bucket NAME]
#   worker.sh start  --venv DIR --config FILE --run-dir DIR [--export-hf DIR] [-- OVERRIDES...]
#   worker.sh stop        SIGTERM to the trainer (it saves a checkpoint and exits)
#   worker.sh status      running / finished with status N / not started
#   worker.sh exit-code   the finished run's exit status, or "running" / "none"
#   worker.sh logs [--lines N] [--follow]
#
# Logs, the pid and the exit status live in $SEMCODER_HOME/logs (default ~/semcoder/logs).
set -euo pipefail

HOME_DIR=${SEMCODER_HOME:-$HOME/semcoder}
LOG_DIR=$HOME_DIR/logs
LOG=$LOG_DIR/train.log
PID_FILE=$LOG_DIR/train.pid
EXIT_FILE=$LOG_DIR/train.exit
TRAINER_PID_FILE=$LOG_DIR/train.trainer.pid
TAG="[$(hostname)]"

die() { echo "worker.sh: $*" >&2; exit 2; }

is_running() {
  [[ -f $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

cmd_setup() {
  local venv="" jax_spec="" package="" bucket=""
  while [[ $# -gt 0 ]]; do
    case $1 in
      --venv) venv=$2; shift 2 ;;
      --jax-spec) jax_spec=$2; shift 2 ;;
      --package) package=$2; shift 2 ;;
      --bucket) bucket=$2; shift 2 ;;
      *) die "setup: unknown argument $1" ;;
    esac
  done
  [[ -n $venv && -n $jax_spec && -n $package ]] || die "setup needs --venv, --jax-spec and --package"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "$jax_spec" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  "$venv/bin/pip" install --quiet "$package"
  if [[ -n $bucket ]]; then
    # Checkpoints and data on GCS through a FUSE mount: every file API (Orbax, tf.io, open) works on it.
    if ! command -v gcsfuse >/dev/null; then
      sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
    fi
    sudo mkdir -p "/mnt/gcs/$bucket" && sudo chown "$(id -u):$(id -g)" "/mnt/gcs/$bucket"
    mountpoint -q "/mnt/gcs/$bucket" || gcsfuse --implicit-dirs "$bucket" "/mnt/gcs/$bucket"
  fi
  echo "$TAG setup done: $("$venv/bin/python" -c 'import jax; print("jax", jax.__version__)')"
}

cmd_start() {
  local venv="" config="" run_dir="" export_hf=""
  while [[ $# -gt 0 ]]; do
    case $1 in
      --venv) venv=$2; shift 2 ;;
      --config) config=$2; shift 2 ;;
      --run-dir) run_dir=$2; shift 2 ;;
      --export-hf) export_hf=$2; shift 2 ;;
      --) shift; break ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  [[ -n $venv && -n $config && -n $run_dir ]] || die "start needs --venv, --config and --run-dir"
  [[ -x $venv/bin/semcoder ]] || die "$venv/bin/semcoder not found: run pod.sh setup first"
  venv=$(cd "$venv" && pwd)
  if is_running; then
    echo "$TAG already running (pid $(cat "$PID_FILE"))"
    return 0
  fi
  mkdir -p "$LOG_DIR"
  rm -f "$EXIT_FILE" "$TRAINER_PID_FILE"
  local -a cmd=("$venv/bin/semcoder" train --config "$config" --run-dir "$run_dir")
  [[ -n $export_hf ]] && cmd+=(--export-hf "$export_hf")
  cmd+=(distributed.auto=true "$@")
  # setsid: the run outlives the ssh session.  The wrapper records the trainer's pid (what `stop` signals)
  # and, when the trainer ends, its exit status (what `supervise` reads).
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid bash -c '"$@" >>"$0" 2>&1 & echo $! >"${0%.log}.trainer.pid"; wait $!; echo $? >"$0.exit.tmp"
                  mv "$0.exit.tmp" "${0%.log}.exit"' "$LOG" "${cmd[@]}" </dev/null >/dev/null 2>&1 &
  echo $! >"$PID_FILE"
  echo "$TAG started pid $! : ${cmd[*]}"
}

cmd_stop() {
  if is_running; then
    for _ in $(seq 1 50); do [[ -s $TRAINER_PID_FILE ]] && break; sleep 0.1; done
    local pid
    pid=$(cat "$TRAINER_PID_FILE")
    kill -TERM "$pid"
    echo "$TAG sent SIGTERM to the trainer (pid $pid); it saves a checkpoint and exits"
  else
    echo "$TAG not running"
  fi
}

cmd_exit_code() {
  if is_running; then echo running
  elif [[ -f $EXIT_FILE ]]; then cat "$EXIT_FILE"
  else echo none
  fi
}

cmd_status() {
  local code
  code=$(cmd_exit_code)
  case $code in
    running) echo "$TAG running (pid $(cat "$PID_FILE")); last line: $(tail -n 1 "$LOG" 2>/dev/null || true)" ;;
    none) echo "$TAG not started" ;;
    *) echo "$TAG finished with status $code" ;;
  esac
}

cmd_logs() {
  local lines=50 follow=0
  while [[ $# -gt 0 ]]; do
    case $1 in
      --lines) lines=$2; shift 2 ;;
      --follow) follow=1; shift ;;
      *) die "logs: unknown argument $1" ;;
    esac
  done
  [[ -f $LOG ]] || { echo "$TAG no log yet ($LOG)"; return 0; }
  if [[ $follow == 1 ]]; then
    tail -n "$lines" -F "$LOG" | sed -u "s/^/$TAG /"
  else
    tail -n "$lines" "$LOG" | sed "s/^/$TAG /"
  fi
}

[[ $# -ge 1 ]] || die "usage: worker.sh setup|start|stop|status|exit-code|logs ..."
action=$1
shift
case $action in
  setup) cmd_setup "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  exit-code) cmd_exit_code ;;
  logs) cmd_logs "$@" ;;
  *) die "unknown action $action" ;;
esac
