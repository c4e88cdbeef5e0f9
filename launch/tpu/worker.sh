#!/usr/bin/env bash
# What runs on every worker of a TPU VM slice (copied there by pod.sh; pod.sh calls it through
# `gcloud compute tpus tpu-vm ssh --worker=all`).  One file so that quoting stays in one place.
#
#   worker.sh setup  --venv DIR --jax-spec SPEC --package FILE [--bucket NAME] [--python auto|system|uv|apt|PATH]
#                    [--expect-platform tpu] [--find-links URL] [--rename-dir-limit N] [--check-timeout S]
#   worker.sh start  --venv DIR --config FILE --run-dir gs://BUCKET/PATH|DIR [--export-hf gs://BUCKET/PATH|DIR] [-- OVERRIDES...]
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

# ---- setup -----------------------------------------------------------------------------------------
# The package needs Python 3.11 (pyproject: >=3.11,<3.12; jax 0.10.2: >=3.11).  The Ubuntu 22.04 TPU
# images (tpu-ubuntu2204-base, v2-alpha-*) ship 3.10, so setup brings its own 3.11 (--python):
#   auto    the image's python3.11 / python3 when it is a 3.11 release, else uv (the default)
#   system  the image's python3.11 / python3, which must be 3.11
#   uv      uv $UV_VERSION (pip-installed into ~/semcoder/uv with the image's python3) installs
#           python-build-standalone's CPython 3.11 into ~/semcoder/python: no root, a current 3.11.x,
#           the same on every worker; needs github.com (where the builds are downloaded from)
#   apt     Ubuntu's python3.11 + python3.11-venv packages (jammy: universe, jammy-updates) through the
#           image's own apt sources; on 22.04 that is 3.11.0~rc1, a release candidate without security
#           updates, so it is the fallback for workers that cannot reach github.com, not the default
#   PATH    that interpreter
PY_WANT=3.11
UV_VERSION=0.13.9
LIBTPU_LINKS=https://storage.googleapis.com/jax-releases/libtpu_releases.html
GCSFUSE_KEYRING=/usr/share/keyrings/cloud.google.asc
GCSFUSE_LIST=/etc/apt/sources.list.d/gcsfuse.list

# One line on stderr and exit 1: what failed and what is missing.
fail() { echo "$TAG setup failed: $*" >&2; exit 1; }

# The first and the last non-empty line of a command's output, for one-line failure messages.
brief() {
  local first last
  first=$(printf '%s\n' "$1" | sed 's/^[[:space:]]*//; /^$/d' | head -n 1)
  last=$(printf '%s\n' "$1" | sed 's/^[[:space:]]*//; /^$/d' | tail -n 1)
  if [[ $first == "$last" ]]; then echo "$first"; else echo "$first ... $last"; fi
}

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# apt-get as root, without prompts; waits for a boot-time unattended-upgrades run to release the lock.
apt_get() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -qq "$@"
}

# "3.10.12 final", "3.11.0 candidate": an interpreter's version and release level.
py_version() {
  "$1" -c 'import sys; v = sys.version_info; print("%d.%d.%d %s" % (v[0], v[1], v[2], v.releaselevel))' 2>/dev/null
}

# The image's own Python $PY_WANT (python3.11, then python3); with "final", a release only.
system_python() {
  local cand path ver
  for cand in "python$PY_WANT" python3; do
    path=$(command -v "$cand") || continue
    ver=$(py_version "$path") || continue
    [[ $ver == "$PY_WANT".* ]] || continue
    [[ $1 != final || $ver == *" final" ]] || continue
    echo "$path"
    return 0
  done
  return 1
}

uv_python() {
  local uv=$HOME_DIR/uv/bin/uv boot out
  if [[ $("$uv" --version 2>/dev/null) != "uv $UV_VERSION"* ]]; then
    boot=$(command -v python3) || fail "--python uv: no python3 to install uv $UV_VERSION with"
    "$boot" -m pip --version >/dev/null 2>&1 ||
      fail "--python uv: python3 has no pip to install uv $UV_VERSION with (apt-get install python3-pip), or use --python apt"
    rm -rf "$HOME_DIR/uv"
    out=$("$boot" -m pip install --quiet --disable-pip-version-check --target "$HOME_DIR/uv" "uv==$UV_VERSION" 2>&1) ||
      fail "--python uv: pip could not install uv $UV_VERSION: $(brief "$out")"
  fi
  out=$(UV_PYTHON_INSTALL_DIR=$HOME_DIR/python "$uv" python install --no-bin "$PY_WANT" 2>&1) ||
    fail "--python uv: uv could not install Python $PY_WANT ($(brief "$out")); without github.com use --python apt"
  PY=$(UV_PYTHON_INSTALL_DIR=$HOME_DIR/python "$uv" python find --system --managed-python "$PY_WANT" 2>/dev/null) ||
    fail "--python uv: uv installed Python $PY_WANT but does not find it in $HOME_DIR/python"
  PY_FROM="uv $UV_VERSION"
}

apt_python() {
  command -v apt-get >/dev/null || fail "--python apt: this image has no apt-get"
  apt_get update || fail "--python apt: apt-get update failed"
  apt_get install -y "python$PY_WANT" "python$PY_WANT-venv" ||
    fail "--python apt: apt-get could not install python$PY_WANT python$PY_WANT-venv (Ubuntu 22.04: universe, jammy-updates)"
  PY=$(command -v "python$PY_WANT") || fail "--python apt: no python$PY_WANT on PATH after apt-get install"
  PY_FROM="apt python$PY_WANT"
}

# Sets PY (an interpreter of Python $PY_WANT) and PY_FROM (where it came from).
pick_python() {
  local ver shown
  case $1 in
    auto)
      if PY=$(system_python final); then PY_FROM=image; else uv_python; fi ;;
    system)
      PY=$(system_python any) ||
        fail "--python system: the image has no Python $PY_WANT (python3 is $(py_version python3 || echo missing)); use --python uv or --python apt"
      PY_FROM=image ;;
    uv) uv_python ;;
    apt) apt_python ;;
    */*) [[ -x $1 ]] || fail "--python $1: no such executable"; PY=$1; PY_FROM=given ;;
    esac
  ver=$(py_version "$PY") || fail "$PY ($PY_FROM) does not run"
  [[ $ver == "$PY_WANT".* ]] || fail "$PY ($PY_FROM) is Python ${ver%% *}, not $PY_WANT"
  PY_VERSION=$ver
  shown=$ver
  [[ $ver != *" final" ]] || shown=${ver%% *}
  echo "$TAG python: $PY ($shown, $PY_FROM)"
}

# gcsfuse from Google's apt repository (the documented source: gcsfuse-<codename>, signed by
# packages.cloud.google.com's key), then the bucket at /mnt/gcs/BUCKET.  Orbax commits a checkpoint by
# renaming its temporary directory, which gcsfuse refuses unless --rename-dir-limit is above the
# directory's number of descendants; --implicit-dirs shows directories that exist only as prefixes.
mount_bucket() {
  local bucket=$1 limit=$2 dir=/mnt/gcs/$1 codename key
  if ! command -v gcsfuse >/dev/null; then
    command -v apt-get >/dev/null || fail "gcsfuse is not installed and this image has no apt-get"
    command -v curl >/dev/null || fail "gcsfuse is not installed and there is no curl to fetch its apt key"
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || codename=$(lsb_release -cs 2>/dev/null) || true
    [[ -n $codename ]] || fail "gcsfuse: cannot tell the distribution's codename (/etc/os-release, lsb_release)"
    key=$(mktemp)
    curl -fsSL -o "$key" https://packages.cloud.google.com/apt/doc/apt-key.gpg ||
      { rm -f "$key"; fail "gcsfuse: could not download https://packages.cloud.google.com/apt/doc/apt-key.gpg"; }
    as_root tee "$GCSFUSE_KEYRING" <"$key" >/dev/null || { rm -f "$key"; fail "cannot write $GCSFUSE_KEYRING"; }
    rm -f "$key"
    echo "deb [signed-by=$GCSFUSE_KEYRING] https://packages.cloud.google.com/apt gcsfuse-$codename main" |
      as_root tee "$GCSFUSE_LIST" >/dev/null || fail "cannot write $GCSFUSE_LIST"
    apt_get update || fail "gcsfuse: apt-get update failed (source gcsfuse-$codename in $GCSFUSE_LIST)"
    apt_get install -y gcsfuse || fail "gcsfuse: apt-get install gcsfuse failed (source gcsfuse-$codename)"
    command -v gcsfuse >/dev/null || fail "gcsfuse: installed, but not on PATH"
  fi
  if mountpoint -q "$dir"; then
    echo "$TAG $dir is mounted already: left as it is"
    return 0
  fi
  as_root mkdir -p "$dir" || fail "cannot create $dir (a stale gcsfuse mount? fusermount -u $dir)"
  as_root chown "$(id -u):$(id -g)" "$dir" || fail "cannot chown $dir to $(id -u):$(id -g)"
  gcsfuse --implicit-dirs --rename-dir-limit="$limit" "$bucket" "$dir" || fail "gcsfuse could not mount gs://$bucket at $dir"
  mountpoint -q "$dir" || fail "gcsfuse returned but $dir is not a mount point"
  echo "$TAG mounted gs://$bucket at $dir (--implicit-dirs --rename-dir-limit=$limit)"
}

# Run by the venv's python with the expected platform: one line on stdout, exit 1 when it is wrong.
CHECK_PY='
import sys
want = sys.argv[1]
v = "%d.%d.%d" % sys.version_info[:3]
if sys.version_info[:2] != (3, 11):
    print("the venv has Python %s, not 3.11" % v)
    sys.exit(1)
import jax
devices = jax.local_devices()
platforms = sorted({d.platform for d in devices})
if platforms != [want]:
    print("jax %s sees %s devices, not %s: %s" % (jax.__version__, "/".join(platforms) or "no", want, devices))
    sys.exit(1)
print("python %s, jax %s, %d %s devices: %s" % (v, jax.__version__, len(devices), want, devices))
'

cmd_setup() {
  local venv="" jax_spec="" package="" bucket="" python=auto expect=tpu links=$LIBTPU_LINKS limit=200000
  local check_timeout=600 have out err rc
  while [[ $# -gt 0 ]]; do
    [[ $1 != --* || $# -ge 2 ]] || die "setup: $1 needs a value"
    case $1 in
      --venv) venv=$2; shift 2 ;;
      --jax-spec) jax_spec=$2; shift 2 ;;
      --package) package=$2; shift 2 ;;
      --bucket) bucket=$2; shift 2 ;;
      --python)
        case $2 in auto|system|uv|apt|*/*) python=$2 ;; *) die "setup: --python takes auto, system, uv, apt or a path" ;; esac
        shift 2 ;;
      --expect-platform) expect=$2; shift 2 ;;
      --find-links) links=$2; shift 2 ;;
      --rename-dir-limit) limit=$2; shift 2 ;;
      --check-timeout) check_timeout=$2; shift 2 ;;
      *) die "setup: unknown argument $1" ;;
    esac
  done
  [[ -n $venv && -n $jax_spec && -n $package ]] || die "setup needs --venv, --jax-spec and --package"
  [[ $limit =~ ^[0-9]+$ && $check_timeout =~ ^[0-9]+$ ]] || die "setup: --rename-dir-limit and --check-timeout take numbers"
  mkdir -p "$HOME_DIR" "$LOG_DIR"
  # Checkpoints and data on GCS through a FUSE mount: every file API (Orbax, tf.io, open) works on it.
  [[ -z $bucket ]] || mount_bucket "$bucket" "$limit"

  pick_python "$python"
  have=""
  [[ -x $venv/bin/python ]] && have=$(py_version "$venv/bin/python" || true)
  if [[ $have == "$PY_VERSION" ]]; then
    echo "$TAG keeping $venv (Python ${have%% *})"
  else
    [[ -z $have ]] || echo "$TAG $venv has Python ${have%% *}: re-creating it"
    out=$("$PY" -m venv --clear "$venv" 2>&1) || fail "$PY -m venv $venv: $(brief "$out")"
  fi
  local -a pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check) find_links=()
  [[ -z $links ]] || find_links=(-f "$links")
  "${pip[@]}" --upgrade pip || fail "pip could not upgrade itself in $venv"
  "${pip[@]}" "$jax_spec" ${find_links[@]+"${find_links[@]}"} || fail "pip could not install $jax_spec"
  "${pip[@]}" "$package" || fail "pip could not install $package"
  [[ -x $venv/bin/semcoder ]] || fail "$package installed no semcoder command into $venv/bin"

  # On a multi-host slice the TPU runtime starts once every worker's process has started it, so this
  # waits for the other workers' setup (pod.sh runs it on all of them at once) up to --check-timeout.
  err=$LOG_DIR/setup-check.err
  rc=0
  out=$(timeout "$check_timeout" "$venv/bin/python" -c "$CHECK_PY" "$expect" 2>"$err") || rc=$?
  out=$(printf '%s\n' "$out" | sed '/^[[:space:]]*$/d' | tail -n 1)
  if [[ $rc == 124 ]]; then
    fail "jax.local_devices() did not answer within ${check_timeout}s (a multi-host slice needs every worker to run it; stderr: $err)"
  elif [[ $rc != 0 ]]; then
    [[ -n $out ]] || out=$(sed '/^[[:space:]]*$/d' "$err" | tail -n 1)
    fail "$out"
  fi
  echo "$TAG setup done: $out"
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
