"""The harness side of the sandbox: a pool of warm workers, jobs in, plain-data outcomes out.

``Sandbox(workers=N).map(jobs)`` runs each ``Job`` (a trusted driver program plus its payload) in a fresh,
isolated process tree forked from one of N long-lived workers (``_worker.py``) and returns one
``Outcome`` per job, in order: the plain values the program emitted (decoded here, with ``codec``), when
each arrived, how the process ended, and a bounded head of its stdout/stderr.  An outcome is never a
verdict: deciding pass or fail belongs to the caller, in this process, away from the candidate
(``sandbox.function_tests`` does it for function tests).

Modes (``detect_mode``): ``namespaces`` where user namespaces work (root, or a normal user on most Linux
distributions): every worker in new user, network and mount namespaces, every job in its own PID
namespace with its own filesystem view; ``none`` otherwise: sessions, a subreaper, seccomp, rlimits and
(as root) a uid per worker, but the candidate sees the host's files and runs as the harness's user when not
root.  ``none`` is announced once with a warning; ``require_isolation=True`` refuses it instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
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

from sandbox import codec

WORKER_PATH = Path(__file__).with_name("_worker.py")
MODES = ("namespaces", "none")
UID_BASE_ENV = "SEMCODER_SANDBOX_UID_BASE"
DEFAULT_UID_BASE = 61000
_SIGNAL_NAMES = {1: "SIGHUP", 2: "SIGINT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL",
                 11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ"}


class SandboxUnavailable(RuntimeError):
    """Isolation was required but this machine cannot provide it, or the workers could not start."""


@dataclass(frozen=True)
class Limits:
    """Per-job resource limits.  ``cpu_s`` defaults to the wall-clock timeout rounded up, plus two."""

    memory_bytes: int = 4 * 1024**3
    file_size_bytes: int = 16 * 1024**2
    max_processes: int = 32
    output_bytes: int = 16 * 1024    # head of stdout and of stderr kept; the rest is read and dropped
    result_bytes: int = 64 * 1024**2  # all emitted values together
    tmp_bytes: int = 64 * 1024**2     # the candidate's private /tmp (namespaces mode)
    cpu_s: float | None = None


@dataclass(frozen=True)
class Job:
    """One program to run.

    ``program`` is trusted driver source; it sees ``PAYLOAD`` (``payload`` after a round trip through
    ``codec``: plain data only) and ``emit(value)``, which sends a plain value back (and raises
    ``PlainDataError`` for anything else).  ``deadlines[k]`` is the most seconds allowed between value
    ``k - 1`` (or the start) and value ``k``; past it, or past ``timeout_s`` in all, the process tree is killed.
    """

    program: str
    payload: Any = None
    timeout_s: float = 10.0
    stdin: str = ""
    deadlines: Sequence[float] | None = None
    payload_json: str | None = None  # the payload already encoded (``codec.encode``); ``payload`` is then ignored


@dataclass
class Outcome:
    """What one job did.  ``values`` are the plain values it emitted, ``times`` when each arrived (seconds
    from the start); the other fields say how it ended."""

    values: list = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    exit_code: int | None = None
    signal: int | None = None
    stopped: str | None = None          # the stop signal, when the process stopped itself (then killed)
    timed_out: bool = False
    waiting_for: int | None = None      # the value whose deadline passed (None: the overall timeout)
    error: str | None = None            # results not readable as plain data, over the limit, or a sandbox failure
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    wall_s: float = 0.0

    @property
    def ended(self) -> str:
        """``exited``, ``signaled``, ``timeout``, ``stopped`` or ``error``."""
        if self.error is not None:
            return "error"
        if self.timed_out:
            return "timeout"
        if self.stopped:
            return "stopped"
        if self.signal is not None:
            return "signaled"
        return "exited"

    def describe(self) -> str:
        """How the process ended, in words (for messages)."""
        if self.error is not None:
            return self.error
        if self.timed_out:
            return f"wall-clock limit exceeded ({self.wall_s:.1f} s)"
        if self.stopped:
            return f"the process stopped itself ({self.stopped}) and was killed"
        if self.signal == 24:
            return "CPU-time limit exceeded (SIGXCPU)"
        if self.signal is not None:
            return f"killed by signal {_SIGNAL_NAMES.get(self.signal, self.signal)}"
        return f"exited with status {self.exit_code}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def detect_mode() -> str:
    """``namespaces`` where ``unshare --user --map-root-user --net --mount --pid`` works, else ``none``."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "none"
    args = ["--user", "--map-root-user", "--net", "--mount", "--pid", "--fork"]
    try:
        ok = subprocess.run([unshare, *args, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "namespaces" if ok else "none"


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


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (its threads' ``children`` lists)."""
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


def _free_uids(n: int) -> list[int]:
    """``n`` uids with no account and no process, for the workers of a root harness without namespaces."""
    taken: set[int] = set()
    try:
        with open("/etc/passwd") as f:
            taken = {int(line.split(":")[2]) for line in f if line.count(":") >= 3 and line.split(":")[2].isdigit()}
    except OSError:
        pass
    uid, found = int(os.environ.get(UID_BASE_ENV, DEFAULT_UID_BASE)), []
    while len(found) < n:
        if uid not in taken and _count_user_processes(uid) == 0:
            found.append(uid)
        uid += 1
    return found


def _cgroup_v1_dir(controller: str) -> Path | None:
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
    """Per-worker cgroups (root, cgroup v1) capping the process count and memory of everything a job starts.

    RLIMIT_NPROC does not bind a process whose real uid is 0 (in namespaces mode the candidate is uid 0 of
    its user namespace), so as root this is what stops a fork bomb from exhausting the machine's PIDs.
    Best effort: without a writable cgroup filesystem the PID namespace and the timeout still end the bomb.
    """

    def __init__(self, name: str, max_processes: int, memory_bytes: int):
        self.dirs: list[Path] = []
        if os.geteuid() != 0:
            return
        for controller, knob, value in (("pids", "pids.max", max_processes),
                                        ("memory", "memory.limit_in_bytes", memory_bytes)):
            base = _cgroup_v1_dir(controller)
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


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([fd], [], [], left)[0]:
            raise TimeoutError("sandbox worker did not answer")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("sandbox worker exited")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _split_frames(blob: bytes) -> list[bytes]:
    """The length-prefixed frames of a reply's body."""
    frames, at, view, unpack = [], 0, memoryview(blob), struct.Struct(">I").unpack_from
    while at + 4 <= len(blob):
        (n,) = unpack(view, at)
        frames.append(blob[at + 4:at + 4 + n])
        at += 4 + n
    return frames


def parse_reply(header: dict, frames: list[bytes]) -> Outcome:
    """An ``Outcome`` from a worker's reply; frames that are not plain data end the values with an error."""
    timed_out = header.get("timed_out") or None
    outcome = Outcome(
        times=list(header.get("frame_times", []))[: len(frames)],
        exit_code=header.get("exit_code"), signal=header.get("signal"), stopped=header.get("stopped"),
        timed_out=timed_out is not None, waiting_for=(timed_out or {}).get("waiting_for"),
        stdout=header.get("stdout", ""), stderr=header.get("stderr", ""),
        stdout_bytes=header.get("stdout_bytes", 0), stderr_bytes=header.get("stderr_bytes", 0),
        wall_s=header.get("wall_s", 0.0))
    try:  # one parse for all frames (json's C parser); a frame that breaks it is then found one by one
        outcome.values = codec.decode(b"[" + b",".join(frames) + b"]") if frames else []
        if len(outcome.values) != len(frames):
            raise codec.PlainDataError("a frame held more than one value")
    except codec.PlainDataError:
        outcome.values = []
        for i, frame in enumerate(frames):
            try:
                outcome.values.append(codec.decode(frame))
            except codec.PlainDataError as e:
                outcome.error = f"result {i} is not plain data ({e})"
                outcome.times = outcome.times[:i]
                break
    if header.get("sandbox_error"):
        outcome.error = f"sandbox: {header['sandbox_error']}"
    elif header.get("stream_error") and outcome.error is None:
        outcome.error = f"malformed results: {header['stream_error']}"
    return outcome


class _Worker:
    """One zygote process and the pipe protocol to it."""

    def __init__(self, index: int, mode: str, limits: Limits, preload: Sequence[str], hide: Sequence[str],
                 uid: int | None, hash_seed: int | None = None):
        self.index, self.mode, self.limits, self.preload, self.hide, self.uid = (
            index, mode, limits, preload, hide, uid)
        self.hash_seed = hash_seed
        self.proc: subprocess.Popen | None = None
        self.hello: dict = {}
        self.start()

    def start(self) -> None:
        cfg: dict[str, Any] = {"mode": self.mode, "preload": list(self.preload), "hide": list(self.hide)}
        prefix: list[str] = []
        if self.mode == "namespaces":
            # the worker is PID 1 of a PID namespace of its own, so it may start a fresh one for every job
            prefix = ["unshare", "--user", "--map-root-user", "--net", "--mount", "--pid", "--fork", "--kill-child",
                      "--propagation", "private", "--"]
        elif os.geteuid() == 0:
            cfg["uid"] = self.uid
        else:
            cfg["nproc"] = _count_user_processes(os.getuid()) + 64 + self.limits.max_processes
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        # -I (isolated) also ignores PYTHON* variables; with a hash seed the same isolation is spelt -s -P, and the
        # only PYTHON* variable the worker sees is the one set here (env is built from nothing).
        flags = ["-I"]
        if self.hash_seed is not None:
            env["PYTHONHASHSEED"] = str(self.hash_seed)
            flags = ["-s", "-P"]
        self.cgroup = _WorkerCgroup(f"semcoder-sandbox-{os.getpid()}-{self.index}", self.limits.max_processes + 3,
                                    self.limits.memory_bytes + 512 * 1024**2)
        self.proc = subprocess.Popen([*prefix, sys.executable, *flags, str(WORKER_PATH), json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/", bufsize=0,
                                     start_new_session=True)
        self.cgroup.add(self.proc.pid)
        try:
            self.hello = json.loads(self._frame(time.monotonic() + 120.0))
            for child in _children(self.proc.pid):  # unshare --fork: the worker itself, which forks every job
                self.cgroup.add(child)
        except (EOFError, TimeoutError, ValueError) as e:
            self.close()
            raise SandboxUnavailable(f"sandbox worker {self.index} ({self.mode}) failed to start: {e}") from None
        if not self.hello.get("ready"):
            self.close()
            raise SandboxUnavailable(f"sandbox worker {self.index} ({self.mode}) failed to start: "
                                     f"{self.hello.get('error')}")

    def _frame(self, deadline: float | None) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
        return _read_exact(fd, n, deadline)

    def run(self, job: Job, limits: Limits) -> Outcome:
        assert self.proc is not None and self.proc.stdin is not None
        lim = dataclasses.asdict(limits)
        if lim["cpu_s"] is None:
            lim["cpu_s"] = int(job.timeout_s) + 2
        payload = job.payload_json if job.payload_json is not None else codec.encode(job.payload).decode("ascii")
        header = json.dumps({
            "program": job.program, "timeout_s": float(job.timeout_s),
            "deadlines": None if job.deadlines is None else [float(d) for d in job.deadlines],
            "stdin": job.stdin, "limits": lim}, allow_nan=True).encode()
        body = payload.encode("ascii")
        self.proc.stdin.write(struct.pack(">II", 4 + len(header) + len(body), len(header)) + header + body)
        deadline = time.monotonic() + job.timeout_s + 30.0
        reply = json.loads(self._frame(deadline))
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        (size,) = struct.unpack(">Q", _read_exact(fd, 8, deadline))
        return parse_reply(reply, _split_frames(_read_exact(fd, size, deadline)))

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        try:
            self.proc.stdout.close()  # type: ignore[union-attr]
        except OSError:
            pass
        self.proc = None
        self.cgroup.remove()


class Sandbox:
    """A pool of sandbox workers.  Use as a context manager; ``map`` runs jobs in parallel.

    ``mode``: ``auto`` (the strongest available), ``namespaces`` or ``none``.  ``require_isolation`` makes
    ``none`` an error (``SandboxUnavailable``) instead of a warning.  ``preload`` names modules imported
    once in each worker, so every job starts with them warm; each also makes every job's forks slower
    (numpy: about 0.6 ms per fork, three forks a job), so the default is none.  ``hide`` lists paths that must not be
    visible to candidates even when they lie inside a directory the filesystem view shows (e.g. a
    package's bundled benchmark data inside site-packages).  ``hash_seed`` fixes the workers' string hashing
    (``PYTHONHASHSEED``; default: random per worker), so a program whose output hangs on set or dict order of
    strings gives one answer per seed, and two pools with different seeds tell such a program apart.
    """

    def __init__(self, workers: int | None = None, limits: Limits | None = None, mode: str = "auto",
                 require_isolation: bool = False, preload: Sequence[str] = (),
                 hide: Sequence[str | os.PathLike] = (), hash_seed: int | None = None):
        if mode not in ("auto", *MODES):
            raise ValueError(f"sandbox mode {mode!r}: expected auto, namespaces or none")
        self.mode = detect_mode() if mode == "auto" else mode
        self.limits = limits = limits or Limits()
        self.n_workers = max(1, workers or os.cpu_count() or 1)
        hidden = [os.path.realpath(p) for p in hide]
        uids = _free_uids(self.n_workers) if self.mode == "none" and os.geteuid() == 0 else [None] * self.n_workers
        self._workers: list[_Worker] = []
        try:
            self._workers = [_Worker(i, self.mode, limits, preload, hidden, uids[i], hash_seed) for i in range(self.n_workers)]
        except SandboxUnavailable as e:
            self.close()
            if mode != "auto" or self.mode != "namespaces":
                raise
            problem = str(e)
            self.mode = "none"
            if not require_isolation:
                warnings.warn(f"sandbox: namespaces are available but unusable here ({problem})", stacklevel=2)
        if self.mode == "none":
            if require_isolation:
                raise SandboxUnavailable(
                    "sandbox: isolation is required but user namespaces are unavailable here (unshare --user "
                    "failed); candidates would see the host's files. Enable unprivileged user namespaces "
                    "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0) or run "
                    "without --require-isolation")
            if not self._workers:
                uids = _free_uids(self.n_workers) if os.geteuid() == 0 else [None] * self.n_workers
                self._workers = [_Worker(i, "none", limits, preload, hidden, uids[i], hash_seed) for i in range(self.n_workers)]
            hello = self._workers[0].hello
            if hello.get("uid") is not None:
                who = f" under uid {hello['uid']}+ (one per worker)"
            elif os.geteuid() == 0:
                who = f" as root without capabilities ({hello.get('uid_unusable')})"
            else:
                who = " under the harness's uid"
            warnings.warn("sandbox: mode 'none' (no user namespaces): candidates run in a session of their own "
                          f"with rlimits and seccomp{who}, and can read the host's files", stacklevel=2)
        first = self._workers[0].hello
        self.visible: list[str] = first.get("visible", [])
        self.hidden: list[str] = first.get("hidden", [])
        self.seccomp: bool = bool(first.get("seccomp"))
        self._lock = threading.Lock()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    def describe(self) -> dict:
        """What ``summary.json`` records about the sandbox."""
        return {"sandbox_mode": self.mode, "seccomp": self.seccomp, "workers": self.n_workers,
                "candidate_uid": self._workers[0].hello.get("uid") if self._workers else None}

    def _run_on(self, worker: _Worker, job: Job) -> Outcome:
        try:
            return worker.run(job, self.limits)
        except (EOFError, OSError, ValueError, TimeoutError, struct.error) as e:
            worker.close()
            worker.start()
            return Outcome(error=f"sandbox worker failed and was restarted: {e}")

    def run(self, job: Job) -> Outcome:
        """Run one job on the first worker."""
        with self._lock:
            return self._run_on(self._workers[0], job)

    def map(self, jobs: Iterable[Job], on_result: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Run ``jobs`` on all workers; outcomes come back in input order.  ``on_result(i, outcome)`` is
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
                        on_result(i, results[i])  # type: ignore[arg-type]

        with self._lock:
            if len(jobs) <= 1 or len(self._workers) == 1:
                drain(self._workers[0])
            else:
                threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in self._workers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        return results  # type: ignore[return-value]
