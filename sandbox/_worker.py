"""Sandbox worker: a long-lived zygote that runs candidate programs one at a time, each in a fresh process tree.

Started by ``sandbox.pool.Sandbox`` as ``python -I _worker.py CONFIG_JSON`` (standard library, plus whatever
the caller preloads; run by path with a scrubbed environment).  In ``namespaces`` mode it lives in new user,
network, mount and PID namespaces (``unshare --user --map-root-user --net --mount --pid --fork``) and
builds, once, the filesystem view candidates get: a read-only tree holding only the interpreter's library
directories, the system's shared libraries, a few device nodes and empty mount points for ``/proc`` and
``/tmp``.

Per job (a frame on stdin: a 4-byte big-endian length, then a 4-byte length + JSON header, then the payload
in ``codec``'s tagged JSON) the worker reads the request into a buffer it wipes afterwards, and forks a
*monitor*, which owns the job:

* namespaces mode: the monitor is PID 1 of a new PID namespace (the worker unshares one for its next child
  and switches back with ``setns`` after the fork).  It takes a mount namespace of its own, mounts a fresh
  ``/proc`` and empty size-limited tmpfs on ``/tmp`` and ``/dev/shm``, pivots into the candidate tree and
  forks the *candidate* (PID 2).  At the end ``kill(-1)`` from PID 1 ends everything left in the namespace.
* none mode (no user namespaces): the monitor is a child subreaper and forks the candidate directly, in a
  fresh directory; as root the candidate runs under a uid of its own (one per worker) when that uid can read
  the interpreter, else as root without capabilities.  Afterwards every process of the tree is found
  (orphans come back to the subreaper) and killed.

The candidate starts a session of its own, gets stdin from a memfd, stdout/stderr and the results channel
(fd 3) as pipes to the monitor, rlimits, no capabilities, ``no_new_privs`` and the seccomp filter
(``_seccomp.py``), a scrubbed environment, then runs the job's driver program with ``PAYLOAD`` (decoded
from the request) and ``emit(value)``, which writes one frame of plain data (``codec.py``) to fd 3.

The monitor timestamps the frames (in batches of ``BATCH_S``), enforces the wall-clock limit and the job's
per-frame deadlines, captures a bounded head of stdout/stderr (everything is drained, nothing blocks), and
writes one reply into a memfd that the worker sends to the harness with ``sendfile``: the worker never
holds a job's results, and the zygote every candidate is forked from holds no other job's data.

Reply: 4-byte length + header JSON (how the candidate ended, timings, output heads), then an 8-byte length
and the frames, each as 4-byte length + bytes (one read for the harness, however many frames).
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib.util
import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_sandbox_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 38, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
ROOT = "/tmp/candidate-root"
WORKDIR = "/tmp/work"  # the candidate's working directory, HOME and TMPDIR (namespaces mode)
SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
DEVICES = ("null", "zero", "full", "random", "urandom")
RESULTS_FD = 3
READ_CHUNK = 1 << 20
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = 1031
BATCH_S = 0.002

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _encoded(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    rc = _libc.mount(_encoded(source), target.encode(), _encoded(fstype), ctypes.c_ulong(flags), _encoded(data))
    _check(rc, what)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_exact(fd: int, n: int, into: bytearray | None = None) -> bytes | bytearray:
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise EOFError
        got += k
    return buf if into is not None else bytes(buf)


# ---- the candidates' filesystem view (namespaces mode) -----------------------------------------------------

def _interpreter_dirs() -> list[str]:
    """Where this interpreter imports from: the standard library, lib-dynload, site-packages."""
    paths = sysconfig.get_paths()
    found = []
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = paths.get(key)
        if path and os.path.isdir(path):
            found.append(os.path.abspath(path))
    dynload = os.path.join(paths.get("platstdlib", ""), "lib-dynload")
    if os.path.isdir(dynload):
        found.append(dynload)
    for entry in sys.path:  # e.g. python311.zip or a distribution's dist-packages
        if entry and os.path.exists(entry) and "-packages" in os.path.basename(entry.rstrip("/")):
            found.append(os.path.abspath(entry))
    return found


def _locked_flags(path: str) -> int:
    """Mount flags a user namespace may not clear on remount (they must be passed again)."""
    keep = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: 1024, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}
    current = os.statvfs(path).f_flag
    flags = 0
    for st, ms in keep.items():
        if current & st:
            flags |= ms
    return flags


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def build_root(hide: list[str]) -> dict:
    """Build ``ROOT`` (read-only): bound library directories, devices, empty ``/proc``, ``/tmp``, ``/dev/shm``;
    then an empty read-only mount over each of ``hide`` that lies inside a bound directory.

    Sources are opened before a private tmpfs covers ``/tmp``, so a virtualenv under ``/tmp`` still works
    (its directories are staged and bound back over each job's fresh ``/tmp``).
    """
    wanted: list[str] = []
    for path in sorted(dict.fromkeys(_interpreter_dirs() + [d for d in SYSTEM_LIB_DIRS if os.path.isdir(d)]),
                       key=len):
        outer = next((q for q in wanted if _inside(path, q)), None)
        if outer is None or os.path.realpath(path) != os.path.realpath(outer) + path[len(outer):]:
            wanted.append(path)  # not already visible through an outer directory bound above
    files = [p for p in ("/etc/ld.so.cache",) if os.path.isfile(p)]
    handles = {p: os.open(p, os.O_PATH) for p in wanted + files}
    real = {p: os.path.realpath(p) for p in wanted}
    hide_info = [(h, os.path.isdir(h)) for h in (os.path.realpath(p) for p in hide) if os.path.exists(h)]
    devices = {d: os.open(f"/dev/{d}", os.O_PATH) for d in DEVICES if os.path.exists(f"/dev/{d}")}
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755", "mount a private /tmp")
    os.makedirs(ROOT)
    _mount("tmpfs", ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755", "mount the candidate root")
    for sub in ("proc", "tmp", "dev/shm"):
        os.makedirs(ROOT + "/" + sub)
    staged, targets = [], {}
    for path, fd in handles.items():
        target = ROOT + path
        if _inside(path, "/tmp"):
            # the job's fresh /tmp will cover this; keep it at a staging point and bind it back per job
            target = f"/tmp/staged-{len(staged)}"
            staged.append((target, path))
        targets[path] = target
        if path in files:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        else:
            os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND, None, f"bind {path}")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | _locked_flags(target)
        _mount(None, target, None, flags, None, f"make {path} read-only")
        os.close(fd)
    for name, fd in devices.items():
        target = f"{ROOT}/dev/{name}"
        open(target, "w").close()
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND, None, f"bind /dev/{name}")
        os.close(fd)
    hidden = []
    for path, is_dir in hide_info:
        for shown, source in real.items():
            if not _inside(path, source):
                continue
            target = targets[shown] + path[len(source.rstrip("/")):]
            if is_dir:
                _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=555",
                       f"hide {path}")
            else:
                _mount("/dev/null", target, None, MS_BIND, None, f"hide {path}")
            hidden.append(path)
    _mount(None, ROOT, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4m,mode=755",
           "make the candidate root read-only")
    STAGED[:] = staged
    return {"visible": sorted(set(wanted + files)), "hidden": sorted(set(hidden))}


STAGED: list[tuple[str, str]] = []  # (staging point, path): interpreter directories that live under /tmp


def _enter_root(tmp_bytes: int) -> None:
    """In a fresh PID + mount namespace: new /proc, empty /tmp and /dev/shm, then pivot into ``ROOT``."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make mounts private")
    _mount("proc", ROOT + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, None, "mount /proc")
    size = max(1, tmp_bytes // 1024)
    _mount("tmpfs", ROOT + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}k,mode=1777", "mount /tmp")
    os.mkdir(ROOT + WORKDIR)  # empty even when an interpreter directory lives under /tmp (bound back below)
    _mount("tmpfs", ROOT + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777", "mount /dev/shm")
    for staging, path in STAGED:
        target = ROOT + path
        os.makedirs(target, exist_ok=True)
        _mount(staging, target, None, MS_BIND | MS_REC, None, f"bind {path} back")
    os.chdir(ROOT)
    machine = os.uname().machine
    _check(_libc.syscall(SYS_PIVOT_ROOT[machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir(WORKDIR)


# ---- the candidate process -------------------------------------------------------------------------------

class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _set_limits(limits: dict, nproc: int | None) -> None:
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for kind, key in ((resource.RLIMIT_AS, "memory_bytes"), (resource.RLIMIT_FSIZE, "file_size_bytes")):
        if limits.get(key) is not None:
            resource.setrlimit(kind, (limits[key], limits[key]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _guard_python(workdir: str, restrict_writes: bool) -> None:
    """Clear errors for what a candidate has no business calling (defence in depth: the kernel's limits and
    the filesystem view are what contain it)."""
    import builtins
    import io
    import shutil as _shutil
    import subprocess

    def disabled(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return refuse

    class DisabledPopen:  # a class, so modules that subclass Popen (asyncio) still import
        def __init__(self, *args, **kwargs):
            raise PermissionError("subprocess.Popen is disabled in the sandbox")

    for name in ("system", "kill", "killpg", "fork", "forkpty", "chroot", "setuid",
                 "setgid", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "popen"):
        if hasattr(os, name):
            setattr(os, name, disabled(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(_shutil, name, disabled(f"shutil.{name}"))
    subprocess.Popen = DisabledPopen  # sockets are the kernel's business: no network namespace / seccomp
    builtins.exit = builtins.quit = disabled("exit")
    builtins.help = disabled("help")
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None
    if not restrict_writes:
        return
    real_open = io.open
    root = os.path.realpath(workdir)

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.realpath(os.fsdecode(file))
            if path != root and not path.startswith(root + os.sep):
                raise PermissionError(f"writing outside the sandbox directory is disabled: {path}")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = guarded_open


def _describe(e: BaseException) -> str:
    name = type(e).__name__
    try:
        text = str(e)
    except BaseException:  # noqa: BLE001 - str() of the exception itself failed (e.g. a huge int)
        return name
    return f"{name}: {text}"[:1000] if text else name


def _become_candidate(job: dict, cfg: dict, fds: dict, workdir: str) -> None:
    """Runs in the candidate process: confine it, then run the driver.  Never returns."""
    code = 70
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(fds["stdin"], 0)
        os.dup2(fds["stdout"], 1)
        os.dup2(fds["stderr"], 2)
        os.dup2(fds["results"], RESULTS_FD)
        os.closerange(RESULTS_FD + 1, 1 << 16)
        os.chdir(workdir)
        limits = job["limits"]
        if cfg["mode"] == "namespaces":
            _set_limits(limits, limits["max_processes"] + 3)
            _drop_capabilities()
        else:
            _set_limits(limits, cfg.get("nproc"))
            if cfg.get("uid") is not None:
                os.setgroups([])
                os.setgid(cfg["uid"])
                os.setuid(cfg["uid"])
            elif os.geteuid() == 0:
                _drop_capabilities()
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        if cfg["seccomp"]:
            SECCOMP.install(restrict_signals=True, restrict_sockets=cfg["mode"] != "namespaces", self_pid=os.getpid())
        os.environ.clear()
        os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        payload = CODEC.decode(job["payload"])
        program = COMPILED.get(job["program"]) or compile(job["program"], "<driver>", "exec")
        encode, dumps_tagged = CODEC.encode, CODEC.dumps_tagged
        pack, write, view_of, length = struct.Struct(">I").pack, os.write, memoryview, len

        def send(data: bytes) -> None:
            view = view_of(pack(length(data)) + data)
            while view:
                view = view[write(RESULTS_FD, view):]

        def emit(value) -> None:
            """Send ``value`` to the harness as plain data (raises ``PlainDataError`` if it is not)."""
            send(encode(value))

        def emit_tagged(tagged) -> None:
            """Send an already tagged value (``codec.result_record``'s output)."""
            send(dumps_tagged(tagged))

        _guard_python(workdir, restrict_writes=cfg["mode"] != "namespaces")
        namespace = {"__name__": "__driver__", "PAYLOAD": payload, "emit": emit, "emit_tagged": emit_tagged,
                     "result_record": CODEC.result_record, "PlainDataError": CODEC.PlainDataError,
                     "describe": _describe}
        exec(program, namespace)
        code = 0
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    except BaseException as e:  # noqa: BLE001 - a driver or setup failure: say so on stderr, exit 70
        try:
            os.write(2, f"sandbox: {_describe(e)}\n".encode(errors="replace"))
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


# ---- the monitor -----------------------------------------------------------------------------------------

class _Capture:
    """A bounded head of one output stream; everything is read, the rest counted and dropped."""

    def __init__(self, limit: int):
        self.limit, self.data, self.total = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        if len(self.data) < self.limit:
            self.data += chunk[: self.limit - len(self.data)]
        self.total += len(chunk)


class _Frames:
    """Length-prefixed frames from the results pipe, each stamped with the time the monitor read it."""

    def __init__(self, limit: int):
        self.limit, self.buffer, self.frames, self.times, self.bytes, self.error = limit, bytearray(), [], [], 0, None

    def add(self, chunk: bytes, now: float) -> None:
        self.buffer += chunk
        view, at, size = memoryview(self.buffer), 0, len(self.buffer)
        unpack = _FRAME_LENGTH.unpack_from
        while self.error is None and size - at >= 4:
            (n,) = unpack(view, at)
            if self.bytes + n > self.limit:
                self.error = f"results larger than the {self.limit:,}-byte limit"
                break
            if size - at < 4 + n:
                break
            self.frames.append(bytes(view[at + 4:at + 4 + n]))
            self.times.append(now)
            self.bytes += n
            at += 4 + n
        view.release()
        if self.error is not None:
            self.buffer.clear()
        elif at:
            del self.buffer[:at]


_FRAME_LENGTH = struct.Struct(">I")


def _kill_everything(candidate: int, namespaces: bool) -> None:
    """Kill and reap every process of the job's tree.

    namespaces: the monitor is PID 1 of the job's PID namespace, so ``kill(-1)`` reaches every other process
    in it.  none: the monitor is a child subreaper, so every orphan of the tree comes back to it; only when
    children remain after the candidate's group is gone does it walk /proc for their descendants.
    """
    for attempt in range(200):
        targets = [-1] if namespaces else [-candidate, candidate]
        if attempt and not namespaces:
            targets += _descendants(os.getpid())
        for target in targets:
            try:
                os.kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no child left: as PID 1 or as a subreaper that means no descendant either
            if pid == 0:
                break
        time.sleep(0.0005)


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        for child in parents.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return found


def _ended(status: int) -> dict:
    if os.WIFSIGNALED(status):
        return {"exit_code": None, "signal": os.WTERMSIG(status)}
    return {"exit_code": os.WEXITSTATUS(status), "signal": None}


def _drain(fd: int, sink) -> None:
    """Read what is left in a non-blocking pipe whose writers are gone (or stop at EAGAIN)."""
    while True:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except (BlockingIOError, OSError):
            return
        if not chunk:
            return
        sink(chunk)


def _monitor(job: dict, cfg: dict, reply_fd: int) -> None:
    """Runs one job and writes its reply to ``reply_fd``.  Never returns.

    namespaces: this process is PID 1 of the job's new PID namespace; it takes a mount namespace of its own,
    enters the candidate root and forks the candidate (PID 2).  none: it is a child subreaper and forks the
    candidate into a fresh directory.  Either way the candidate's tree does not outlive the job.
    """
    header: dict = {"exit_code": None, "signal": None, "stopped": None, "timed_out": None, "sandbox_error": None}
    frames = _Frames(job["limits"]["result_bytes"])
    out = _Capture(job["limits"]["output_bytes"])
    err = _Capture(job["limits"]["output_bytes"])
    start = time.monotonic()
    workdir = None
    namespaces = cfg["mode"] == "namespaces"
    try:
        if namespaces:
            _check(_libc.unshare(CLONE_NEWNS), "unshare(mount)")
            _enter_root(job["limits"]["tmp_bytes"])
            workdir = WORKDIR
        else:
            _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(CHILD_SUBREAPER)")
            workdir = tempfile.mkdtemp(prefix="job-", dir=cfg["scratch"])
            if cfg.get("uid") is not None:
                os.chown(workdir, cfg["uid"], cfg["uid"])
            os.chmod(workdir, 0o700)
        stdin = os.memfd_create("stdin")
        _write_all(stdin, job["stdin"].encode())
        os.lseek(stdin, 0, os.SEEK_SET)
        pipes = {name: os.pipe() for name in ("stdout", "stderr", "results")}
        for r, _ in pipes.values():
            try:
                fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_BYTES)  # room for a burst of frames while the monitor sleeps
            except OSError:
                pass
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        child_fds = {"stdin": stdin, **{name: w for name, (_, w) in pipes.items()}}
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _become_candidate(job, cfg, child_fds, workdir)
        for fd in child_fds.values():
            os.close(fd)
        readers = {pipes["results"][0]: "results", pipes["stdout"][0]: "stdout", pipes["stderr"][0]: "stderr"}
        for fd in readers:
            os.set_blocking(fd, False)
        sinks = {"results": None, "stdout": out.add, "stderr": err.add}
        deadlines = job.get("deadlines") or []
        overall = start + job["timeout_s"]
        status = None
        while True:
            k = len(frames.frames)
            last = start + (frames.times[-1] if frames.times else 0.0)
            frame_deadline = last + deadlines[k] if k < len(deadlines) else overall
            limit = min(overall, frame_deadline)
            now = time.monotonic()
            if now >= limit:
                header["timed_out"] = {"after_s": round(now - start, 4),
                                       "waiting_for": k if frame_deadline < overall else None}
                break
            ready, _, _ = select.select(list(readers) + [wake_r], [], [], limit - now)
            now = round(time.monotonic() - start, 4)
            for fd in ready:
                if fd == wake_r:
                    _drain(wake_r, lambda _: None)
                    continue
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    del readers[fd]
                    os.close(fd)
                elif readers[fd] == "results":
                    frames.add(chunk, now)
                else:
                    sinks[readers[fd]](chunk)
            if frames.error:
                break
            done, wait_status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
            if done:
                if os.WIFSTOPPED(wait_status):
                    header["stopped"] = signal.Signals(os.WSTOPSIG(wait_status)).name
                    break
                status = wait_status
                break
            if wake_r not in ready:
                # Read in batches: a candidate sending thousands of small frames would otherwise cost a
                # wake-up each.  Arrival times are therefore exact to within BATCH_S.
                time.sleep(min(BATCH_S, max(0.0, limit - time.monotonic())))
        # the end of the run: nothing of the candidate's tree may outlive it
        _kill_everything(pid, namespaces)
        header["wall_s"] = round(time.monotonic() - start, 4)
        if status is not None and not header["stopped"]:
            header.update(_ended(status))
        for fd, name in readers.items():  # what is still buffered in the pipes (every writer is gone)
            _drain(fd, (lambda chunk: frames.add(chunk, header["wall_s"])) if name == "results" else sinks[name])
            os.close(fd)
    except BaseException as e:  # noqa: BLE001
        header["sandbox_error"] = f"monitor: {_describe(e)}"
    finally:
        if workdir is not None and not namespaces:
            shutil.rmtree(workdir, ignore_errors=True)
    header.update(wall_s=header.get("wall_s", round(time.monotonic() - start, 4)), frame_times=frames.times,
                  stream_error=frames.error or ("an incomplete frame" if frames.buffer else None),
                  stdout=out.data.decode("utf-8", "replace"), stdout_bytes=out.total,
                  stderr=err.data.decode("utf-8", "replace"), stderr_bytes=err.total)
    try:
        body = json.dumps(header).encode()
        parts = [b""] * (2 * len(frames.frames))
        parts[0::2] = [_FRAME_LENGTH.pack(len(frame)) for frame in frames.frames]
        parts[1::2] = frames.frames
        blob = b"".join(parts)
        _write_all(reply_fd, struct.pack(">I", len(body)) + body + struct.pack(">Q", len(blob)) + blob)
        os._exit(0)
    finally:
        os._exit(1)


# ---- the worker loop -------------------------------------------------------------------------------------

def _send(fd: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    _write_all(fd, struct.pack(">I", len(body)) + body)


def _error_reply(message: str) -> bytes:
    body = json.dumps({"sandbox_error": message, "frame_times": []}).encode()
    return struct.pack(">I", len(body)) + body + struct.pack(">Q", 0)


OWN_PID_NAMESPACE: list[int] = []  # namespaces mode: an fd of the worker's own PID namespace


def _fork_monitor(namespaces: bool) -> int:
    """Fork the job's monitor: in namespaces mode as PID 1 of a new PID namespace.  A process may unshare a
    PID namespace for its children only while that setting is its own, so the worker switches it back after
    each fork (it runs in a PID namespace that its user namespace owns, which allows the ``setns``)."""
    if not namespaces:
        return os.fork()
    _check(_libc.unshare(CLONE_NEWPID), "unshare(PID)")
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0:
            _check(_libc.setns(OWN_PID_NAMESPACE[0], CLONE_NEWPID), "setns(the worker's PID namespace)")
    return pid


def run_one(request: bytes | bytearray, cfg: dict, out_fd: int) -> None:
    """Fork a monitor for one job, wait for it and send its reply to ``out_fd``."""
    reply = os.memfd_create("reply")
    pid = _fork_monitor(cfg["mode"] == "namespaces")
    if pid == 0:
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            (n,) = struct.unpack_from(">I", request, 0)
            job = json.loads(bytes(request[4:4 + n]))
            job["payload"] = bytes(request[4 + n:])  # tagged JSON, decoded by the candidate itself
            _monitor(job, cfg, reply)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    size = os.lseek(reply, 0, os.SEEK_END)
    if os.waitstatus_to_exitcode(status) != 0 or size == 0:
        _write_all(out_fd, _error_reply(f"monitor ended with status {os.waitstatus_to_exitcode(status)}"))
    else:
        offset = 0
        while offset < size:
            offset += os.sendfile(out_fd, reply, offset, size - offset)
    os.close(reply)


PROBE = """
import os
emit([p for p in PAYLOAD if not os.access(p, os.R_OK | os.X_OK)])
"""


def _probe(cfg: dict) -> str | None:
    """Run a job end to end; the reason it fails, or None.  As root without namespaces, if the sandbox uid
    cannot read the interpreter's directories (e.g. a Python under /root), candidates run as root without
    capabilities instead (``cfg["uid_unusable"]`` says why)."""
    job = {"program": PROBE, "timeout_s": 10.0, "stdin": "", "deadlines": None,
           "limits": {"cpu_s": 10, "memory_bytes": None, "file_size_bytes": 1 << 20, "max_processes": 8,
                      "output_bytes": 1024, "result_bytes": 1024, "tmp_bytes": 1 << 20}}
    header = json.dumps(job).encode()
    r, w = os.pipe()
    run_one(struct.pack(">I", len(header)) + header + CODEC.encode(_interpreter_dirs()), cfg, w)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    (n,) = struct.unpack(">I", data[:4])
    header = json.loads(data[4:4 + n])
    if header.get("sandbox_error"):
        return header["sandbox_error"]
    body = data[12 + n:]
    if header.get("exit_code") != 0 or len(body) < 4:
        return f"probe job exited with {header.get('exit_code')} / signal {header.get('signal')}: " \
               f"{header.get('stderr', '')[-300:]}"
    unreadable = json.loads(body[4:])
    if unreadable and cfg.get("uid") is not None:
        cfg["uid_unusable"] = f"uid {cfg['uid']} cannot read {unreadable[0]}"
        cfg["uid"] = None
        return _probe(cfg)
    return None


CODEC = _load("codec")
SECCOMP = _load("_seccomp")
DRIVERS = _load("drivers")
COMPILED = {DRIVERS.RUN: compile(DRIVERS.RUN, "<driver>", "exec")}  # the standard driver, compiled once


def main() -> None:
    cfg = json.loads(sys.argv[1])
    for module in ("subprocess", "socket", "io", "glob", "traceback", "copy", "math", "re", "collections",
                   "itertools", "functools", "heapq", "bisect", "string", *cfg.get("preload", [])):
        try:
            __import__(module)
        except ImportError:
            pass
    hello: dict = {"ready": True, "pid": os.getpid()}
    cfg["seccomp"] = SECCOMP.supported()
    try:
        if cfg["mode"] == "namespaces":
            OWN_PID_NAMESPACE.append(os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC))
            hello.update(build_root(cfg.get("hide", [])))
        else:
            cfg["scratch"] = tempfile.mkdtemp(prefix="semcoder-sandbox-")
            os.chmod(cfg["scratch"], 0o711)
        problem = _probe(cfg)
    except OSError as e:
        problem = f"{e}"
    if problem:
        hello = {"ready": False, "error": problem}
    if cfg["seccomp"] and cfg["mode"] == "namespaces":
        SECCOMP.compile_ahead(True, False, 2)  # the candidate is always PID 2 of its namespace
    gc.freeze()  # what the zygote holds stays out of every child's collections (and its pages shared)
    hello["seccomp"] = cfg["seccomp"]
    hello["uid"] = cfg.get("uid")
    hello["uid_unusable"] = cfg.get("uid_unusable")
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no other process of this uid may read or write our memory
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _send(1, hello)
    if problem:
        return
    buffer = bytearray(1 << 20)
    try:
        while True:
            try:
                (n,) = struct.unpack(">I", _read_exact(0, 4))
                if n > len(buffer):
                    buffer = bytearray(n)
                _read_exact(0, n, buffer)
            except EOFError:
                break
            try:
                run_one(memoryview(buffer)[:n], cfg, 1)
            except OSError as e:
                _write_all(1, _error_reply(f"worker: {e}"))
            finally:
                buffer[:n] = bytes(n)  # the next candidate is forked from this process: keep it clean
    finally:
        if cfg.get("scratch"):
            shutil.rmtree(cfg["scratch"], ignore_errors=True)


if __name__ == "__main__":
    main()
