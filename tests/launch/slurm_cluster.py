"""A real one-node SLURM cluster on 127.0.0.1 for tests: munged, slurmctld and slurmd started from a
temporary directory (their own slurm.conf, munge key, sockets, ports, state and logs), torn down after.

    cluster = SlurmCluster(tmp_dir)       # or: with SlurmCluster(tmp_dir) as cluster: ...
    cluster.start()                       # installs the Debian packages first when root and missing
    job = cluster.sbatch("--ntasks=2", "script.sbatch", "arg")
    cluster.wait_state(job, {"COMPLETED"}, timeout=300)
    cluster.stop()                        # cancels the jobs, stops the daemons, kills what is left

Client commands find the cluster through ``SLURM_CONF`` (``cluster.env``).  The node declares more CPUs
than the machine has (``SlurmdParameters=config_overrides``), so two 2-task jobs run at once on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "sinfo", "squeue")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
NODE = "localhost"
CPUS = 8
MARK = "SEMCODER_TEST_SLURM_CLUSTER"  # in the daemons' environment, so in every slurmstepd's
KILL_WAIT = 60  # seconds from SIGTERM to SIGKILL at the time limit, on scancel and requeue: time to save
CRED_EXPIRE = 10  # a requeued job may start again after this (SLURM default: 120 s)


def _missing() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if shutil.which(name, path=_path()) is None]


def _path() -> str:
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin"])


def ensure_installed() -> None:
    """Installs the SLURM and munge packages when root with apt-get; otherwise skips, saying why."""
    missing = _missing()
    if not missing:
        return
    why = f"SLURM test cluster: {', '.join(missing)} not installed"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{why} (install {' '.join(PACKAGES)}, or run as root with apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = None
    for attempt in range(20):  # another apt-get may hold the dpkg lock for a while
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        if "lock" not in proc.stderr:
            if attempt == 0:  # a stale package list: update once
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
                continue
            break
        time.sleep(15)
    if _missing():
        tail = (proc.stdout + proc.stderr)[-2000:] if proc else ""
        pytest.skip(f"{why} and `{' '.join(install)}` failed:\n{tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmError(AssertionError):
    pass


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=_path())
        for key in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":  # a test run inside a SLURM job must not leak that job's settings
                del self.env[key]
        self.daemons: dict[str, subprocess.Popen] = {}

    # ---- setup and teardown ------------------------------------------------------------------

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=semcodertest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait={KILL_WAIT}
MinJobAge=3600
InactiveLimit=0
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2,bf_interval=2
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN
PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> SlurmCluster:
        ensure_installed()
        self.write_config()
        r = self.root
        self._spawn("munged", "munged", "-F", "-f", f"--socket={self.munge_socket}",
                    f"--key-file={r}/munge/munge.key", f"--pid-file={r}/munge/munged.pid",
                    f"--seed-file={r}/munge/munged.seed", f"--log-file={r}/log/munged.log")
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not create its socket")
        self._spawn("slurmctld", "slurmctld", "-D", "-c", "-i", "-f", str(self.conf))
        self._wait(lambda: self._run("scontrol", "ping").returncode == 0, timeout, "slurmctld does not answer")
        self._spawn("slurmd", "slurmd", "-D", "-N", NODE, "-f", str(self.conf))
        self._wait(self._node_idle, timeout, "the node did not become idle")
        return self

    def _spawn(self, name: str, *argv: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        env = {**self.env, MARK: str(self.root)}  # inherited by slurmstepd: see leftovers()
        self.daemons[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _node_idle(self) -> bool:
        proc = self._run("sinfo", "-h", "-N", "-o", "%T")
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise SlurmError(f"{what} in {timeout:.0f} s\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancels every job, stops the daemons and kills whatever process of this cluster is left."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            try:  # scancel retries for a while on a job that is already completing: do not wait for it
                self._run("scancel", "--partition=cpu", timeout=10)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self._run("squeue", "-h", timeout=10).stdout.strip():
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        for name in reversed(DAEMONS):
            proc = self.daemons.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self.kill_leftovers()

    def leftovers(self) -> list[int]:
        """This cluster's processes: its daemons and slurmstepd (which carry MARK in their environment), the
        processes below them, and job processes (SLURM_JOB_ID with this SLURM_CONF) that lost their parent."""
        mark = f"{MARK}={self.root}".encode()
        conf = f"SLURM_CONF={self.conf}".encode()
        parents, ours = {}, set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if mark in environ or (conf in environ and any(v.startswith(b"SLURM_JOB_ID=") for v in environ)):
                ours.add(pid)
        grown = True
        while grown:
            below = {pid for pid, parent in parents.items() if parent in ours} - ours
            ours |= below
            grown = bool(below)
        ours.discard(os.getpid())
        return sorted(ours)

    def kill_leftovers(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while (pids := self.leftovers()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- client commands ---------------------------------------------------------------------

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """A client command (sbatch, scontrol, scancel, ...) against this cluster."""
        proc = subprocess.run([str(a) for a in argv], env={**self.env, **kw.pop("env", {})}, capture_output=True,
                              text=True, timeout=kw.pop("timeout", 60), **kw)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(map(str, argv))} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, *argv: str, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> int:
        """Submits; returns the job id."""
        out = self.run("sbatch", "--parsable", *argv, env=env or {}, cwd=cwd).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, StdOut, ...)."""
        proc = self.run("scontrol", "-o", "show", "job", str(job_id))
        fields = {}
        for word in proc.stdout.strip().split(" "):
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_state(self, job_id: int, states: set[str], timeout: float, log: Path | None = None,
                   until=None) -> dict[str, str]:
        """Polls until the job is in one of ``states`` (and ``until(job)`` holds); fails with the job's log."""
        deadline = time.monotonic() + timeout
        job = {}
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in states and (until is None or until(job)):
                return job
            time.sleep(1)
        raise SlurmError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s: {job}\n"
                         f"{self.job_log(log)}")

    def job_log(self, log: Path | None) -> str:
        if log is None:
            return ""
        text = Path(log).read_text(errors="replace") if Path(log).exists() else "(no log file)"
        return f"---- {log} ----\n{text[-6000:]}"

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"---- {path.name} ----\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)
