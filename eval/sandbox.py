"""Sandboxed execution of model-written programs: isolation, limits and a parallel worker pool.

The reference scorers (human-eval, EvalPlus, CRUXEval) say plainly that they are not security sandboxes.
This one is meant to be: every candidate runs in its own process, in its own PID namespace (so killing it
kills everything it forked), inside network and mount namespaces (no network, a private ``/tmp``), without
privileges (no capabilities, read-only filesystems), with a wall-clock timeout
and CPU-time, address-space, file-size and process-count limits, in a fresh temporary directory, with
stdin/stdout/stderr captured and bounded.  A hostile sample fails with a status saying why and leaves the
host, the harness and the other samples alone.

Isolation levels (``detect_isolation``): ``userns`` (root, or a normal user where unprivileged user
namespaces work: ``unshare --user --map-root-user --net --mount``, every inherited filesystem read-only, a
private tmpfs /tmp, a PID + mount namespace and a fresh read-only /proc per sample, capabilities dropped),
or ``none`` (rlimits, process-group kill and Python-level guards only; a warning is printed).  bubblewrap
is not needed.  The worker itself is ``_sandbox_worker.py``.

Programs talk back through ``report(status, message, **extra)`` (see ``Job``); their verdicts come back as
JSON, never pickle, so nothing a candidate writes is ever deserialised into live objects in the harness.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import queue
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_PATH = Path(__file__).with_name("_sandbox_worker.py")
STATUSES = ("passed", "failed", "timeout", "error")
_SIGNAL_NAMES = {9: "SIGKILL", 11: "SIGSEGV", 6: "SIGABRT", 24: "SIGXCPU", 25: "SIGXFSZ", 15: "SIGTERM",
                 7: "SIGBUS", 8: "SIGFPE", 4: "SIGILL", 13: "SIGPIPE"}


@dataclass(frozen=True)
class Limits:
    """Per-sample resource limits.  ``cpu_s`` defaults to the wall timeout rounded up, plus one."""

    memory_bytes: int = 4 * 1024**3
    file_size_bytes: int = 16 * 1024**2
    max_processes: int = 32
    output_bytes: int = 16 * 1024
    cpu_s: float | None = None


@dataclass(frozen=True)
class Job:
    """One program to run.

    ``program`` is Python source executed as ``__main__``.  It sees ``PAYLOAD`` (the unpickled ``payload``:
    trusted data from the harness, e.g. test inputs) and ``report(status, message="", **extra)``.  If it
    returns without calling ``report`` the job passed; an exception escaping it makes the job fail.
    """

    program: str
    payload: Any = None
    timeout_s: float = 10.0
    stdin: str = ""


@dataclass
class Outcome:
    """What happened to one job.  ``status`` is one of ``passed|failed|timeout|error``."""

    status: str
    message: str = ""
    details: dict = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    wall_s: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def detect_isolation() -> str:
    """``userns`` where ``unshare --user --map-root-user --net --mount --pid`` works (as root or as a normal
    user with unprivileged user namespaces), else ``none``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "none"
    args = ["--user", "--map-root-user", "--net", "--mount", "--pid", "--fork"]
    try:
        ok = subprocess.run([unshare, *args, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "userns" if ok else "none"


def _count_user_processes(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _cgroup_v1_dirs(controller: str) -> Path | None:
    """Where this process's cgroup for ``controller`` lives, if that v1 hierarchy is mounted."""
    mount = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 3 and fields[0] == "cgroup" and controller in fields[2].split(","):
                mount = Path(left.split()[4])
    if mount is None:
        return None
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return mount / path.lstrip("/")
    return None


def _remove_stale_cgroups(base: Path) -> None:
    """Empty cgroups left by a harness that was killed (named after its pid, which is gone)."""
    for path in base.glob("semcoder-sandbox-*-*"):
        try:
            owner = int(path.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if owner != os.getpid() and not os.path.exists(f"/proc/{owner}"):
            try:
                path.rmdir()
            except OSError:
                pass


class _WorkerCgroup:
    """Per-worker cgroups (root only) capping the process count and the memory of everything a sample
    starts.  RLIMIT_NPROC does not bind a process whose real uid is 0, so as root this is what stops a
    fork bomb from exhausting the machine's PIDs.  Best effort: if the cgroup filesystem is not writable
    the sandbox still works, relying on the PID namespace and the timeout."""

    def __init__(self, name: str, max_processes: int, memory_bytes: int):
        self.dirs: list[Path] = []
        if os.geteuid() != 0:
            return
        for controller, knob, value in (("pids", "pids.max", max_processes),
                                        ("memory", "memory.limit_in_bytes", memory_bytes)):
            base = _cgroup_v1_dirs(controller)
            if base is None:
                continue
            _remove_stale_cgroups(base)
            path = base / name
            try:
                path.mkdir(exist_ok=True)
                (path / knob).write_text(str(value))
            except OSError:
                continue
            self.dirs.append(path)

    def add(self, pid: int) -> None:
        for path in self.dirs:
            try:
                (path / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass

    def remove(self) -> None:
        for path in self.dirs:
            try:
                path.rmdir()
            except OSError:
                pass
        self.dirs = []


class _Worker:
    """One zygote process and the pipe protocol to it."""

    def __init__(self, index: int, isolation: str, limits: Limits, preload: Sequence[str]):
        self.index, self.isolation, self.limits, self.preload = index, isolation, limits, preload
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        cfg: dict[str, Any] = {"userns": self.isolation == "userns", "preload": list(self.preload)}
        prefix: list[str] = []
        if cfg["userns"]:
            prefix = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--propagation",
                      "private", "--"]
            # counted per user namespace: the worker, the monitor and the sample's own processes
            cfg["nproc"] = self.limits.max_processes + 2
        else:
            cfg["nproc"] = _count_user_processes(os.getuid()) + 64 + self.limits.max_processes
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.cgroup = _WorkerCgroup(f"semcoder-sandbox-{os.getpid()}-{self.index}",
                                    self.limits.max_processes + 2,
                                    self.limits.memory_bytes + 512 * 1024**2)
        self.proc = subprocess.Popen([*prefix, sys.executable, "-I", str(WORKER_PATH), json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
                                     bufsize=0)
        self.cgroup.add(self.proc.pid)
        hello = self._recv(timeout_s=60.0)
        if not hello.get("ready"):
            raise RuntimeError(f"sandbox worker {self.index} failed to start: {hello}")
        self.writable_mounts: list[str] = hello.get("writable_mounts", [])
        self.fresh_proc: bool = hello.get("fresh_proc", False)

    def _recv(self, timeout_s: float | None = None) -> dict:
        """One reply frame; raises ``TimeoutError`` if none arrives in ``timeout_s`` (a stuck worker)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def read(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not select.select([fd], [], [], left)[0]:
                    raise TimeoutError("sandbox worker did not answer")
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    raise EOFError("sandbox worker exited")
                buf += chunk
            return buf

        (n,) = struct.unpack(">I", read(4))
        return json.loads(read(n))

    def run(self, job: Job) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        limits = dataclasses.asdict(self.limits)
        if limits["cpu_s"] is None:
            limits["cpu_s"] = int(job.timeout_s) + 2
        request = pickle.dumps({
            "program": job.program,
            "payload": None if job.payload is None else pickle.dumps(job.payload),
            "timeout_s": float(job.timeout_s), "stdin": job.stdin, "limits": limits})
        self.proc.stdin.write(struct.pack(">I", len(request)) + request)
        self.proc.stdin.flush()
        return self._recv(timeout_s=job.timeout_s + 30.0)

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.stdout.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.cgroup.remove()


def _outcome(raw: dict) -> Outcome:
    """Turn the worker's JSON into an ``Outcome`` with a status that says why."""
    common = {"stdout": raw.get("stdout", ""), "stderr": raw.get("stderr", ""),
              "exit_code": raw.get("exit_code"), "signal": raw.get("signal"), "wall_s": raw.get("wall_s", 0.0)}
    if "monitor_error" in raw:
        return Outcome("error", f"sandbox: {raw['monitor_error']}", **common)
    report: dict = {}
    if raw.get("report"):
        try:
            report = json.loads(raw["report"])
        except json.JSONDecodeError:
            report = {"status": "error", "message": "unreadable report from the sample"}
    if raw.get("timed_out"):
        return Outcome("timeout", f"wall-clock limit exceeded ({raw.get('wall_s', 0):.1f} s)", report, **common)
    sig = raw.get("signal")
    if sig == 24:
        return Outcome("timeout", "CPU-time limit exceeded (SIGXCPU)", report, **common)
    if report:
        status = report.pop("status", "error")
        if status not in STATUSES:
            status = "error"
        message = report.pop("message", "")
        if status == "passed" and (sig is not None or raw.get("exit_code")):
            status, message = "error", "the process crashed after reporting success"
        return Outcome(status, message, report, **common)
    if sig is not None:
        return Outcome("error", f"killed by signal {_SIGNAL_NAMES.get(sig, sig)}", **common)
    return Outcome("error", f"exited with status {raw.get('exit_code')} before reporting a result", **common)


class Sandbox:
    """A pool of sandbox workers.  Use as a context manager; ``map`` runs jobs in parallel.

    ``isolation`` is ``auto`` (the strongest available), ``userns`` or ``none``.  ``preload`` names
    modules imported once in each worker so every forked sample starts with them warm.
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None, isolation: str = "auto",
                 preload: Sequence[str] = ("numpy",)):
        self.isolation = detect_isolation() if isolation == "auto" else isolation
        if self.isolation == "none":
            warnings.warn("sandbox: no network/PID namespaces available (unshare failed); candidates run "
                          "with resource limits and Python-level guards only", stacklevel=2)
        self.limits = limits = limits or Limits()
        self.n_workers = max(1, workers or os.cpu_count() or 1)
        self._workers = [_Worker(i, self.isolation, limits, preload) for i in range(self.n_workers)]
        first = self._workers[0]
        if self.isolation == "userns" and first.writable_mounts:
            warnings.warn("sandbox: these filesystems could not be made read-only for candidates: "
                          + ", ".join(first.writable_mounts), stacklevel=2)
        if self.isolation == "userns" and not first.fresh_proc:
            warnings.warn("sandbox: candidates cannot get their own /proc here, so they can see (not signal) "
                          "the host's processes", stacklevel=2)
        self._lock = threading.Lock()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def _run_on(self, worker: _Worker, job: Job) -> Outcome:
        try:
            return _outcome(worker.run(job))
        except (EOFError, OSError, ValueError, TimeoutError, json.JSONDecodeError) as e:
            worker.close()
            worker.start()
            return Outcome("error", f"sandbox worker failed and was restarted: {e}")

    def run(self, job: Job) -> Outcome:
        """Run one job on the first worker (serialised)."""
        with self._lock:
            return self._run_on(self._workers[0], job)

    def map(self, jobs: Iterable[Job], on_result: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Run ``jobs`` on all workers; results come back in input order.  ``on_result(i, outcome)`` is
        called (from one thread at a time) as each job finishes, e.g. to advance a progress bar."""
        jobs = list(jobs)
        results: list[Outcome | None] = [None] * len(jobs)
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(jobs)):
            todo.put(i)
        callback_lock = threading.Lock()

        def drain(worker: _Worker) -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                results[i] = self._run_on(worker, jobs[i])
                if on_result is not None:
                    with callback_lock:
                        on_result(i, results[i])

        with self._lock:
            threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in self._workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return results  # type: ignore[return-value]
