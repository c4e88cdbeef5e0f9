"""launch/gpu/slurm.sbatch on a real one-node SLURM cluster (127.0.0.1, started by tests/launch/slurm_cluster.py):
2-task CPU jobs of the tiny config run to completion, save on SIGTERM, requeue themselves and resume.

Slow (several minutes; installs slurmctld/slurmd/munge with apt-get when root and they are missing):
    .venv/bin/pytest -q -m slow tests/launch/test_slurm_cluster.py
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from tests.launch.slurm_cluster import SlurmCluster, SlurmError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "launch" / "gpu" / "slurm.sbatch"
CONFIG = REPO / "launch" / "configs" / "tiny_cpu.yaml"
SEMCODER = Path(sys.executable).parent / "semcoder"
# The header asks for 8 GPUs and 16 CPUs per task on one node with one task: a CPU partition overrides them.
CPU = ["--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0"]
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
        "DEADLINE"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not SEMCODER.exists():
        pytest.skip(f"{SEMCODER} not installed")
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        assert not slurm.leftovers(), "processes of the test cluster survived its teardown"


def job_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """What the trainers see (sbatch exports the submitting environment): one CPU device per process, and a
    compilation cache shared by the module's jobs."""
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "JAX_COMPILATION_CACHE_DIR": str(cluster.root / "jax-cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TF_CPP_MIN_LOG_LEVEL": "3",
           "TF_ENABLE_ONEDNN_OPTS": "0"}
    env.update(extra)
    return env


class Job:
    def __init__(self, cluster: SlurmCluster, job_id: int, log: Path, run_dir: Path):
        self.cluster, self.id, self.log, self.run_dir = cluster, job_id, log, run_dir

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def info(self) -> dict[str, str]:
        return self.cluster.job(self.id)

    def wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise SlurmError(f"job {self.id}: no {what} in {timeout:.0f} s: {self.info()}\n"
                                 f"{self.cluster.job_log(self.log)}")
            time.sleep(1)

    def wait_log(self, pattern: str, timeout: float = 300, count: int = 1) -> re.Match:
        self.wait(lambda: len(re.findall(pattern, self.text(), re.M)) >= count, timeout, f"{pattern!r} in the log")
        return list(re.finditer(pattern, self.text(), re.M))[count - 1]

    def wait_restarts(self, n: int, timeout: float = 300) -> None:
        self.wait(lambda: int(self.info().get("Restarts", 0)) >= n, timeout, f"restart {n}")

    def wait_done(self, timeout: float = 600) -> dict[str, str]:
        self.wait(lambda: self.info().get("JobState") in DONE, timeout, "end")
        return self.info()

    def assert_completed(self, timeout: float = 600) -> dict[str, str]:
        info = self.wait_done(timeout)
        assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{self.text()}"
        return info

    def metrics(self) -> list[dict]:
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def checkpoints(self) -> list[int]:
        path = self.run_dir / "checkpoints"
        return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


def submit(cluster: SlurmCluster, tmp: Path, *overrides: str, sbatch: tuple[str, ...] = (),
           script: tuple[str, ...] = ("--semcoder", str(SEMCODER)), env: dict[str, str] | None = None,
           name: str = "job") -> Job:
    """sbatch of the real slurm.sbatch on 2 CPU tasks with the tiny config (+ overrides)."""
    log, run_dir = tmp / f"{name}.out", tmp / f"{name}-run"
    job_id = cluster.sbatch(*CPU, f"--output={log}", f"--job-name={name}", *sbatch, str(SBATCH), *script, "--",
                            "--config", str(CONFIG), "--run-dir", str(run_dir), *overrides,
                            env=env or job_env(cluster), cwd=REPO)
    return Job(cluster, job_id, log, run_dir)


def saved_at(job: Job, run: int = 1) -> int:
    """The step of the run's "stopped by SIGTERM" save, which the next run resumes from."""
    m = job.wait_log(r"^0: semcoder train: stopped by SIGTERM after step (\d+); checkpoint saved", count=run)
    return int(m.group(1))


def assert_resumed(job: Job, step: int, total: int) -> None:
    text = job.text()
    assert re.search(rf"^0: semcoder train: resuming {re.escape(str(job.run_dir))} from step {step}$", text, re.M), text
    steps = [r["step"] for r in job.metrics() if "loss" in r]
    assert steps and steps[-1] == total and steps == sorted(set(steps)), (steps, text)


def test_a_run_completes_with_its_evals_labelled_plain_lines_and_ends_completed(cluster, tmp_path):
    job = submit(cluster, tmp_path, "train.steps=60")  # the tiny config's eval every 50 steps, logs every 10
    info = job.assert_completed()
    assert info["Restarts"] == "0"
    records = job.metrics()
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [50] and evals[0]["eval_tokens"] > 0, records
    assert [r["step"] for r in records if "loss" in r] == [10, 20, 30, 40, 50, 60]
    assert job.checkpoints() == [50, 60]
    text = job.text()
    assert "\r" not in text  # no progress bar in a batch log
    # every trainer line carries its rank (srun --label); the batch shell's own lines do not
    assert re.search(r"^0: step 60/60: loss", text, re.M), text
    for line in text.splitlines():
        if "semcoder train:" in line or re.search(r"\bstep \d+/\d+", line):
            assert re.match(r"\d+: ", line), line
    assert "slurm.sbatch: training reached its last step" in text
    assert f"coordinator localhost:{20000 + job.id % 20000}" in text


def test_a_failing_run_ends_failed_and_is_not_requeued(cluster, tmp_path):
    job = submit(cluster, tmp_path, "train.steps=notanumber")
    info = job.wait_done(300)
    assert (info["JobState"], info["Restarts"]) == ("FAILED", "0"), f"{info}\n{job.text()}"
    status = info["ExitCode"].split(":")[0]
    assert status != "0", f"{info}\n{job.text()}"
    assert f"training failed with status {status} (not requeued)" in job.text()
    assert "expected an integer, got 'notanumber'" in job.text()


def test_scontrol_requeue_mid_run_saves_and_the_job_resumes_to_completion(cluster, tmp_path):
    job = submit(cluster, tmp_path, "train.steps=100", "checkpoint.every=1000", "run.tensorboard=false")
    job.wait_log(r"^0: step 10/100")
    cluster.run("scontrol", "requeue", str(job.id))
    step = saved_at(job)  # SLURM's own kill (TERM, KillWait, KILL) reaches the trainers, which save
    assert 10 <= step < 100 and job.checkpoints()[:1] == [step]
    info = job.assert_completed()
    assert info["Restarts"] == "1"
    assert_resumed(job, step, 100)
    assert f"job {job.id} run 2 on" in job.text()


def test_the_time_limit_signal_saves_and_the_job_requeues_itself_and_resumes(cluster, tmp_path):
    """--signal=B:TERM@60 with --time=2: slurmctld checks time limits every 30 s and sends the warning up to
    30 s early, so it arrives 30-60 s into the run, before the 500 steps can be done (at most ~8 steps/s
    here).  The batch shell passes it on, the trainers save and exit 75, the script requeues the job.  A
    requeued job keeps its 2-minute limit (each run would save and requeue again, some steps further every
    time), so once it has been requeued the test raises the limit (`scontrol update`) and the next run
    finishes."""
    job = submit(cluster, tmp_path, "train.steps=500", "checkpoint.every=1000", "run.tensorboard=false",
                 sbatch=("--time=2", "--signal=B:TERM@60"))
    step = saved_at(job)
    job.wait_restarts(1)
    cluster.run("scontrol", "update", f"JobId={job.id}", "TimeLimit=15")
    text = job.text()
    assert "slurm.sbatch: SIGTERM: asking the trainers to save and stop" in text
    assert f"checkpoint saved before the last step; job {job.id} requeued" in text
    assert "DUE TO TIME LIMIT" not in text  # saved and requeued before the limit itself
    assert 0 < step < 500
    info = job.assert_completed()
    assert info["Restarts"] == "1"
    assert_resumed(job, step, 500)


def test_scancel_signal_term_saves_and_requeues_but_full_lets_srun_kill_the_trainers(cluster, tmp_path):
    """`scancel --signal=TERM JOB` signals the job's steps, i.e. the trainers: they save, exit 75 and the
    script requeues the job.  `--full` also signals the batch shell's children, srun among them, and srun
    answers a SIGTERM by SIGKILLing its tasks ("srun: forcing job termination"): the trainers cannot save;
    the script still requeues and the next run resumes from the last periodic checkpoint."""
    job = submit(cluster, tmp_path, "train.steps=200", "checkpoint.every=10", "run.tensorboard=false")
    job.wait_log(r"^0: step 20/200")
    cluster.run("scancel", "--signal=TERM", str(job.id))
    first = saved_at(job)
    job.wait_restarts(1)
    job.wait_log(rf"^0: semcoder train: resuming .* from step {first}$")
    job.wait(lambda: (job.checkpoints() or [0])[-1] > first, 120, "periodic checkpoint in the second run")
    cluster.run("scancel", "--signal=TERM", "--full", str(job.id))
    job.wait_restarts(2)
    text = job.text()
    second_run = text[text.index(f"job {job.id} run 2 on"):]
    assert "srun: forcing job termination" in second_run, text
    assert "stopped by SIGTERM" not in second_run, text  # killed, not saved
    assert "the trainers ended by a signal (status 137) after SIGTERM" in second_run, text
    info = job.assert_completed()
    assert info["Restarts"] == "2"
    resumed = [int(s) for s in re.findall(r"^0: semcoder train: resuming .* from step (\d+)$", job.text(), re.M)]
    assert resumed[0] == first and resumed[1] > first and resumed[1] % 10 == 0, job.text()
    assert_resumed(job, resumed[1], 200)


PROBE = """#!{python}
# Stands in for semcoder: initialises jax.distributed as `semcoder train` does and prints what JAX pins.
import sys
from semcoder_jax.train.config import DistributedSection
from semcoder_jax.train.loop import initialize_distributed

args = sys.argv[2:]
value = {{a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}}
local = [a.split("=", 1)[1] for a in args if a.startswith("distributed.local_device_ids=")]
initialize_distributed(DistributedSection(coordinator=value["--coordinator"],
                                          num_processes=int(value["--num-processes"]),
                                          process_id=int(value["--process-id"]), local_device_ids=(local or [None])[0]))
import jax
print(f"process {{jax.process_index()}}: jax_cuda_visible_devices={{jax.config.read('jax_cuda_visible_devices')}}",
      flush=True)
"""


def test_per_gpu_pins_each_process_to_its_local_gpu_and_per_node_sees_them_all(cluster, tmp_path):
    """On the CPU backend distributed.local_device_ids only sets jax_cuda_visible_devices; a probe standing in
    for semcoder shows what each process would see on GPUs.  Per node, SLURM_LOCALID must not reach JAX:
    jax.distributed.initialize would recognise SLURM and pin every process to GPU SLURM_LOCALID alone."""
    probe = tmp_path / "probe"
    probe.write_text(PROBE.format(python=sys.executable))
    probe.chmod(0o755)
    seen = {}
    for mode, script in (("node", ()), ("gpu", ("--per-gpu",))):
        job = submit(cluster, tmp_path, sbatch=("--time=5",), script=(*script, "--semcoder", str(probe)), name=mode)
        job.assert_completed(180)
        seen[mode] = sorted(re.findall(r"^\d: process (\d): jax_cuda_visible_devices=(\S+)$", job.text(), re.M))
    assert seen == {"node": [("0", "all"), ("1", "all")], "gpu": [("0", "0"), ("1", "1")]}


def test_per_gpu_trains_to_completion(cluster, tmp_path):
    job = submit(cluster, tmp_path, "train.steps=20", "run.tensorboard=false", script=("--per-gpu", "--semcoder",
                                                                                        str(SEMCODER)))
    job.assert_completed()
    assert "2 processes (per GPU)" in job.text()
    assert [r["step"] for r in job.metrics() if "loss" in r][-1] == 20


def test_two_jobs_on_one_node_at_once_both_finish_one_finding_semcoder_in_the_submit_dirs_venv(cluster, tmp_path):
    """Their coordinator ports follow their job ids.  The second job names no --semcoder and has no semcoder on
    PATH: the script takes $SLURM_SUBMIT_DIR/.venv/bin/semcoder (submitted from the checkout)."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not (Path(p) / "semcoder").exists())
    if not (REPO / ".venv" / "bin" / "semcoder").exists():
        pytest.skip("no .venv/bin/semcoder in the checkout")
    a = submit(cluster, tmp_path, "train.steps=20", "run.tensorboard=false", name="a")
    b = submit(cluster, tmp_path, "train.steps=20", "run.tensorboard=false", name="b", script=(),
               env=job_env(cluster, PATH=path))
    a.wait(lambda: a.info()["JobState"] == b.info()["JobState"] == "RUNNING", 120, "moment when both run")
    for job in (a, b):
        job.assert_completed()
        assert f"coordinator localhost:{20000 + job.id % 20000}" in job.text()
        assert [r["step"] for r in job.metrics() if "loss" in r][-1] == 20
