"""``pod.sh supervise``: a state machine over the TPU node, its queued resource and the run.

A scripted stand-in ``gcloud`` answers each ``describe`` with the next line of a per-resource script (a
state, ``NOT_FOUND`` or ``ERROR`` — the last line repeats) and each worker query with the next line of the
workers' run states; it records every call.  Each test drives one real-world sequence (Spot preemption with
and without a queued resource, a FAILED request, transient API errors, a repair, a failed run) and asserts
the exact actions supervise takes, in order.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POD = REPO / "launch" / "tpu" / "pod.sh"
CONFIG = REPO / "launch" / "configs" / "tiny_cpu.yaml"

SCRIPTED_GCLOUD = r"""#!/usr/bin/env bash
printf '%q ' gcloud "$@" >>"$SCRIPTED_DIR/calls"; echo >>"$SCRIPTED_DIR/calls"
n=$(wc -l <"$SCRIPTED_DIR/calls")
if [[ $n -gt 400 ]]; then echo "ERROR: scripted gcloud: too many calls" >&2; exit 1; fi
pop() {  # the first line of a script; the last line stays and repeats
  local f=$SCRIPTED_DIR/$1 first
  first=$(head -n 1 "$f")
  if [[ $(wc -l <"$f") -gt 1 ]]; then sed -i 1d "$f"; fi
  echo "$first"
}
state() {
  local answer
  answer=$(pop "$1")
  case $answer in
    NOT_FOUND) echo "ERROR: (gcloud.compute.tpus.$2.describe) NOT_FOUND: Resource 'projects/p/locations/z/$1s/sc' was not found" >&2; exit 1 ;;
    ERROR) echo "ERROR: (gcloud.compute.tpus.$2.describe) UNAVAILABLE: The service is currently unavailable." >&2; exit 1 ;;
    *) echo "$answer" ;;
  esac
}
case "$*" in
  *"tpu-vm describe"*) state node tpu-vm ;;
  *"queued-resources describe"*) state queued queued-resources ;;
  *"worker.sh exit-code"*) for code in $(pop workers); do echo "$code"; done ;;
esac
exit 0
"""

COMMON = ["--name", "sc", "--zone", "us-east5-a", "--type", "v5p-32", "--config", str(CONFIG),
          "--run-dir", "/mnt/gcs/b/runs/x", "--interval", "0", "--max-api-errors", "5"]
# What a (re-)created slice gets: the package and worker.sh copied, the venv set up, the run started.
SETUP_AND_RUN = ["ssh mkdir", "scp", "ssh setup", "scp", "ssh start"]
STAMPED = re.compile(r"^pod\.sh: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")


@pytest.fixture
def world(tmp_path):
    """Writes the scripts, runs ``pod.sh supervise`` against them, and lists the actions it took."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(SCRIPTED_GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "calls").write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SCRIPTED_DIR=str(tmp_path),
               SEMCODER_DIST_DIR=str(tmp_path / "dist"))
    for key in ("TPU_NAME", "TPU_ZONE", "TPU_TYPE", "TPU_RUNTIME", "GCP_PROJECT"):
        env.pop(key, None)

    class World:
        def supervise(self, *extra: str, node: list[str], workers: list[str], queued: list[str] | None = None,
                      expect_rc: int = 0) -> subprocess.CompletedProcess:
            (tmp_path / "node").write_text("\n".join(node) + "\n")
            (tmp_path / "workers").write_text("\n".join(workers) + "\n")
            (tmp_path / "queued").write_text("\n".join(queued or ["GONE"]) + "\n")
            proc = subprocess.run(["bash", str(POD), "supervise", *COMMON, *extra], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == expect_rc, proc.stderr[-4000:]
            return proc

        def calls(self) -> list[list[str]]:
            return [shlex.split(line) for line in (tmp_path / "calls").read_text().splitlines()]

        def actions(self) -> list[str]:
            """Every call that changes something, as "tpu-vm create", "ssh start", ...; queries left out."""
            out = []
            for call in self.calls():
                verb = call[3:5]
                if verb[1] == "describe":
                    continue
                if verb == ["tpu-vm", "ssh"]:
                    (command,) = [a.split("=", 1)[1] for a in call if a.startswith("--command=")]
                    words = shlex.split(command)
                    if words[:2] == ["bash", "semcoder/worker.sh"]:
                        if words[2] == "exit-code":
                            continue
                        out.append(f"ssh {words[2]}")
                    else:
                        out.append(f"ssh {words[0]}")
                elif verb == ["tpu-vm", "scp"]:
                    out.append("scp")
                else:
                    out.append(" ".join(verb))
            return out

        def call(self, action: str) -> list[str]:
            (found,) = [c for c in self.calls() if " ".join(c[3:5]) == action]
            return found

    return World()


def test_a_spot_slice_preempted_is_deleted_recreated_set_up_and_run_again(world):
    proc = world.supervise("--spot", node=["READY", "PREEMPTED", "NOT_FOUND", "CREATING", "READY"],
                           workers=["running running", "0 0"])
    assert world.actions() == ["tpu-vm delete", "tpu-vm create", *SETUP_AND_RUN]
    assert "--spot" in world.call("tpu-vm create")
    assert "every worker finished with status 0: done" in proc.stderr


def test_a_queued_spot_slice_suspended_after_preemption_is_deleted_with_its_request_and_requested_again(world):
    """After a Spot preemption the queued resource is SUSPENDED and its node gone: creating it again would
    fail with ALREADY_EXISTS, so the request is deleted (--force takes the node too) and made again."""
    world.supervise(
        "--spot", "--queued",
        queued=["ACTIVE", "SUSPENDED", "DELETING", "NOT_FOUND", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"],
        node=["READY", "NOT_FOUND", "NOT_FOUND", "NOT_FOUND", "NOT_FOUND", "NOT_FOUND", "READY"],
        workers=["running running", "0 0"])
    assert world.actions() == ["queued-resources delete", "queued-resources create", *SETUP_AND_RUN]
    assert "--force" in world.call("queued-resources delete")
    assert "--spot" in world.call("queued-resources create")


def test_a_queued_node_preempted_while_its_request_still_shows_active_is_deleted_through_the_request(world):
    world.supervise("--spot", "--queued", queued=["ACTIVE", "DELETING", "NOT_FOUND", "ACTIVE"],
                    node=["PREEMPTED", "NOT_FOUND", "NOT_FOUND", "READY"], workers=["0 0"])
    assert world.actions() == ["queued-resources delete", "queued-resources create", *SETUP_AND_RUN]


def test_a_failed_queued_request_is_deleted_and_made_again_at_once_not_polled_for_hours(world):
    proc = world.supervise("--queued", queued=["FAILED", "NOT_FOUND", "ACTIVE"],
                           node=["NOT_FOUND", "NOT_FOUND", "READY"], workers=["0 0"])
    assert world.actions() == ["queued-resources delete", "queued-resources create", *SETUP_AND_RUN]
    assert "queued resource sc is FAILED" in proc.stderr


def test_transient_api_errors_are_retried_with_backoff_and_never_read_as_a_gone_slice(world):
    proc = world.supervise(node=["READY", "ERROR", "ERROR", "ERROR", "READY"], workers=["running running", "0 0"])
    assert world.actions() == []  # a READY slice is never deleted or re-created because describe failed
    assert "UNAVAILABLE" in proc.stderr
    assert [int(n) for n in re.findall(r"API error (\d) in a row", proc.stderr)] == [1, 2, 3]


def test_persistent_api_errors_end_supervision_with_one_line_instead_of_deleting_anything(world):
    proc = world.supervise(node=["ERROR"], workers=["running"], expect_rc=2)
    assert world.actions() == []
    assert "API errors in a row; giving up" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("transient", ["REPAIRING", "RESTARTING", "STARTING", "CREATING"])
def test_a_slice_that_is_repairing_restarting_or_starting_is_waited_for_not_recreated(world, transient):
    proc = world.supervise(node=["READY", transient, transient, "READY"],
                           workers=["running running", "running running", "0 0"])
    assert world.actions() == []
    assert f"slice sc is {transient}: waiting" in proc.stderr


def test_a_failed_worker_stops_the_others_and_the_run_starts_again_once_none_runs(world):
    world.supervise(node=["READY"], workers=["1 running", "1 running", "1 75", "running running", "0 0"])
    assert world.actions() == ["ssh stop", "scp", "ssh start"]  # one stop, then one start on every worker


def test_a_run_stopped_by_sigterm_on_a_ready_slice_is_resumed_without_stopping_anything(world):
    world.supervise(node=["READY"], workers=["75 75", "running running", "0 0"])
    assert world.actions() == ["scp", "ssh start"]


def test_restarts_are_bounded(world):
    proc = world.supervise("--max-restarts", "1", node=["READY"], workers=["1 1"], expect_rc=2)
    assert world.actions() == ["scp", "ssh start"]
    assert "gave up after 1 restarts" in proc.stderr


def test_every_change_and_action_is_logged_once_with_its_utc_time(world):
    proc = world.supervise("--spot", node=["READY", "PREEMPTED", "NOT_FOUND", "CREATING", "CREATING", "READY"],
                           workers=["running running", "running running", "0 0"])
    log = [line for line in proc.stderr.splitlines() if line.startswith("pod.sh: ")]
    assert log and all(STAMPED.match(line) for line in log), log
    messages = [STAMPED.sub("", line) for line in log if "no local semcoder" not in line]
    assert messages == [
        "slice sc is READY, the run is running (workers: running running)",
        "slice sc is PREEMPTED: deleting it to create it again",
        "slice sc is gone: creating it again (restart 1 of at most 20)",
        "slice sc is CREATING: waiting",
        "slice sc is READY: setting it up and starting the run (it resumes from the latest checkpoint)",
        "slice sc is READY, the run is running (workers: running running)",
        "every worker finished with status 0: done",
    ]
