"""Sandbox worker: a long-lived "zygote" that runs untrusted Python programs one at a time.

Started by ``eval.sandbox.Sandbox`` as ``python -I _sandbox_worker.py MODE ...`` (standard library only,
run by path so nothing from the harness's ``sys.path`` or environment leaks in), normally inside fresh
user, network and mount namespaces (``unshare --user --map-root-user --net --mount``), where it mounts
a private tmpfs on /tmp, /var/tmp and /dev/shm and remounts every other filesystem read-only.  For every
job it forks a *monitor*, which unshares a new PID and mount namespace and forks the *candidate*; the
candidate becomes PID 1 of that namespace, so when it exits or is killed every process it started dies
with it (a fork bomb cannot outlive its sample).  The candidate then

* mounts a read-only /proc that shows only its own namespace's processes;
* gets its own fresh temporary directory as cwd and HOME, stdin from a file, stdout/stderr to
  size-limited files;
* gets CPU-time, address-space, file-size and process-count limits (RLIMIT_NPROC applies even to a
  root caller, because the count is per user namespace);
* drops every capability; ``no_new_privs`` stops set-uid programs from giving any back;
* has destructive Python functions disabled (``os.system``, ``subprocess``, ``shutil.rmtree``...),
  as defence in depth only: the kernel-level limits above are what contain it.

Protocol on stdin/stdout: frames of a 4-byte big-endian length + body.  Requests are pickles (the
harness is trusted); replies are JSON (nothing from the candidate is ever unpickled by the harness).
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time

CLONE_NEWPID = 0x20000000
CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
MS_NOSUID = 0x2
MS_NODEV = 0x4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
REPORT_LIMIT = 256 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _read_exact(stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _send(obj: dict) -> None:
    body = json.dumps(obj).encode()
    sys.stdout.buffer.write(struct.pack(">I", len(body)) + body)
    sys.stdout.buffer.flush()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


PRIVATE_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


def _interpreter_paths() -> list[str]:
    """Directories the interpreter imports from (prefix, stdlib, site-packages), deepest last."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *sys.path) if p and os.path.isdir(p)}
    return sorted(paths, key=len)


def _mount_private_tmp() -> list[str]:
    """Give this mount namespace its own empty /tmp, /var/tmp and /dev/shm.

    The interpreter's own directories may live below one of them (a checkout or virtualenv in /tmp):
    those are bound back, at the same paths, into the fresh tmpfs (read-only after the remount pass),
    so candidates keep the standard library and site-packages.  Returns the paths bound back.
    """
    keep = [p for p in _interpreter_paths() if any(p == s or p.startswith(s + "/") for s in PRIVATE_SCRATCH)]
    # Drop paths inside another kept path: binding the outer one carries them along.
    keep = [p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep)]
    handles = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep}
    for path in PRIVATE_SCRATCH:
        if os.path.isdir(path):
            _check(_libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                               b"size=512m,mode=1777"), f"mount tmpfs on {path}")
    for path, fd in handles.items():
        os.makedirs(path, exist_ok=True)
        _check(_libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None),
               f"bind {path} back into the private scratch space")
        os.close(fd)
    return keep


def _remount_read_only() -> list[str]:
    """Make every inherited mount read-only in this mount namespace; returns the ones that refused.

    Flags the kernel locks in a user namespace (nosuid, nodev, noexec, atime) must be kept on remount.
    """
    keep = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
            os.ST_NOATIME: 1024, os.ST_NODIRATIME: 2048, os.ST_RELATIME: 1 << 21}
    failed = []
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for point in dict.fromkeys(points):
        if point in ("/tmp", "/var/tmp", "/dev/shm", "/proc") or point.startswith("/proc/"):
            continue
        try:
            current = os.statvfs(point).f_flag
        except OSError:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for st, ms in keep.items():
            if current & st:
                flags |= ms
        if _libc.mount(None, point.encode(), None, flags, None) != 0:
            failed.append(point)
    return failed


def _mount_fresh_proc() -> None:
    """A read-only /proc for the sample's own PID namespace: it sees only its own processes."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, None),
           "mount /proc")


def _probe_fresh_proc() -> bool:
    """Whether a sample will get its own /proc (some container runtimes forbid mounting one)."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")
            child = os.fork()
            if child == 0:
                try:
                    _mount_fresh_proc()
                    os._exit(0)
                finally:
                    os._exit(1)
            ok = os.WEXITSTATUS(os.waitpid(child, 0)[1]) == 0
        finally:
            os._exit(0 if ok else 1)
    return os.WEXITSTATUS(os.waitpid(pid, 0)[1]) == 0


def _drop_capabilities() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _set_limits(limits: dict, nproc: int | None) -> None:
    def lim(kind, value):
        if value is not None:
            resource.setrlimit(kind, (value, value))

    cpu = limits.get("cpu_s")
    if cpu is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu) + 1))
    lim(resource.RLIMIT_AS, limits.get("memory_bytes"))
    lim(resource.RLIMIT_FSIZE, limits.get("file_size_bytes"))
    lim(resource.RLIMIT_CORE, 0)
    if nproc is not None:
        lim(resource.RLIMIT_NPROC, nproc)


def _guard_python(workdir: str) -> None:
    """Disable destructive functions (defence in depth; the OS limits are the real sandbox)."""
    import builtins
    import io
    import shutil as _shutil
    import socket
    import subprocess

    def disabled(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return refuse

    for name in ("system", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv", "remove",
                 "removedirs", "rmdir", "unlink", "rename", "renames", "replace", "truncate",
                 "chmod", "fchmod", "chown", "fchown", "lchown", "chroot", "setuid", "setgid",
                 "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "popen"):
        if hasattr(os, name):
            setattr(os, name, disabled(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(_shutil, name, disabled(f"shutil.{name}"))
    subprocess.Popen = disabled("subprocess.Popen")
    socket.socket = disabled("socket.socket")
    socket.create_connection = disabled("socket.create_connection")
    builtins.exit = builtins.quit = disabled("exit")
    builtins.help = disabled("help")

    real_open = io.open
    root = os.path.realpath(workdir)

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.realpath(os.fsdecode(file))
            if path != root and not path.startswith(root + os.sep):
                raise PermissionError(f"writing outside the sandbox directory is disabled: {path}")
        return real_open(file, mode, *args, **kwargs)

    builtins.open = guarded_open
    for mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[mod] = None


def _candidate(job: dict, cfg: dict, workdir: str, report_w: int) -> None:
    """Runs in the candidate process; never returns."""
    code = 70
    try:
        os.chdir(workdir)
        stdin_fd = os.open(os.path.join(workdir, ".stdin"), os.O_RDONLY)
        out_fd = os.open(os.path.join(workdir, ".stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err_fd = os.open(os.path.join(workdir, ".stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(stdin_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (stdin_fd, out_fd, err_fd):
            os.close(fd)
        if cfg["userns"]:
            try:
                _mount_fresh_proc()
            except OSError:
                pass  # keeps the inherited /proc (read-only where the remount worked)
            _drop_capabilities()
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        _set_limits(job["limits"], cfg["nproc"])
        os.environ.clear()
        os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin",
                           "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"})
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False, buffering=1)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        payload = pickle.loads(job["payload"]) if job["payload"] is not None else None
        reported = []

        def report(status: str, message: str = "", **extra) -> None:
            if reported:
                return
            reported.append(True)
            body = json.dumps({"status": status, "message": message[:2000], **extra}, default=repr)
            os.write(report_w, body.encode()[:REPORT_LIMIT - 1] + b"\n")

        program = compile(job["program"], "<sandbox>", "exec")
        _guard_python(workdir)
        env = {"__name__": "__main__", "PAYLOAD": payload, "report": report}
        try:
            exec(program, env)
        except BaseException as e:  # noqa: BLE001 - any escape is the sample's failure
            report("failed", _describe(e))
        else:
            report("passed")
        code = 0
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(report_w, json.dumps({"status": "error", "message": f"sandbox setup: {e}"[:2000]})
                     .encode() + b"\n")
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def _describe(e: BaseException) -> str:
    try:
        return f"{type(e).__name__}: {e}"
    except BaseException:  # noqa: BLE001 - str() of the exception itself failed (e.g. a huge int)
        return type(e).__name__


def _monitor(job: dict, cfg: dict, workdir: str, report_w: int, status_w: int) -> None:
    """Runs in the monitor process: owns the candidate's PID namespace and its wall clock."""
    result = {"exit_code": None, "signal": None, "timed_out": False}
    try:
        if cfg["userns"]:
            _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare(CLONE_NEWPID | CLONE_NEWNS)")
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(status_w)
                if not cfg["userns"]:
                    os.setsid()
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                _candidate(job, cfg, workdir, report_w)
            finally:
                os._exit(70)
        os.close(report_w)
        deadline = start + job["timeout_s"]
        status = _wait_until(pid, deadline)
        if status is None:
            result["timed_out"] = True
            _kill_tree(pid, cfg)
            _, status = os.waitpid(pid, 0)
        if not cfg["userns"]:
            _kill_tree(pid, cfg)
        result["wall_s"] = time.monotonic() - start
        if os.WIFSIGNALED(status):
            result["signal"] = os.WTERMSIG(status)
        else:
            result["exit_code"] = os.WEXITSTATUS(status)
    except BaseException as e:  # noqa: BLE001
        result["monitor_error"] = str(e)
    try:
        os.write(status_w, json.dumps(result).encode())
    finally:
        os._exit(0)


def _wait_until(pid: int, deadline: float) -> int | None:
    """The child's wait status, or None if it is still running at ``deadline`` (monotonic seconds)."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(0.005, left))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_tree(pid: int, cfg: dict) -> None:
    # In a PID namespace, killing its init (the candidate) makes the kernel kill everything in it.
    for target in ((pid,) if cfg["userns"] else (-pid, pid)):
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _read_all(fd: int, limit: int) -> bytes:
    chunks, total = [], 0
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        if total < limit:
            chunks.append(chunk[: limit - total])
        total += len(chunk)
    return b"".join(chunks)


def _read_head(path: str, limit: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return "", False
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def run_job(job: dict, cfg: dict) -> dict:
    workdir = tempfile.mkdtemp(prefix="sample-", dir=cfg["tmp_root"])
    with open(os.path.join(workdir, ".stdin"), "w") as f:
        f.write(job.get("stdin", ""))
    os.chmod(workdir, 0o700)
    report_r, report_w = os.pipe()
    status_r, status_w = os.pipe()
    os.set_blocking(report_r, False)
    pid = os.fork()
    if pid == 0:  # the monitor: must never return into the worker's loop
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the worker
            os.close(report_r)
            os.close(status_r)
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)  # let go of the worker's protocol pipes
            os.dup2(devnull, 1)
            os.close(devnull)
            _monitor(job, cfg, workdir, report_w, status_w)
        finally:
            os._exit(71)
    os.close(report_w)
    os.close(status_w)
    report_chunks = []
    # Drain the report pipe while the monitor runs, so a large report cannot block the candidate; the
    # status pipe reaches EOF when the monitor exits.
    status_chunks = []
    open_fds = [report_r, status_r]
    while status_r in open_fds:
        readable, _, _ = select.select(open_fds, [], [])
        for fd in readable:
            chunk = _read_all(fd, REPORT_LIMIT) if fd == report_r else os.read(fd, 65536)
            if fd == status_r:
                if chunk:
                    status_chunks.append(chunk)
                else:
                    open_fds.remove(status_r)
            elif chunk:
                if sum(map(len, report_chunks)) < REPORT_LIMIT:  # the rest is read and dropped
                    report_chunks.append(chunk)
            else:
                open_fds.remove(report_r)
    os.waitpid(pid, 0)
    report_chunks.append(_read_all(report_r, REPORT_LIMIT))
    os.close(report_r)
    os.close(status_r)
    status = b"".join(status_chunks)
    result = json.loads(status) if status else {"monitor_error": "monitor died"}
    raw = b"".join(report_chunks)[:REPORT_LIMIT].decode("utf-8", "replace").strip()
    result["report"] = raw.splitlines()[0] if raw else ""
    limit = job["limits"].get("output_bytes", 65536)
    result["stdout"], result["stdout_truncated"] = _read_head(os.path.join(workdir, ".stdout"), limit)
    result["stderr"], result["stderr_truncated"] = _read_head(os.path.join(workdir, ".stderr"), limit)
    shutil.rmtree(workdir, ignore_errors=True)
    if cfg["userns"]:  # anything a sample left elsewhere in the private /tmp goes too
        kept = cfg.get("kept_paths", [])
        for scratch in PRIVATE_SCRATCH:
            for name in os.listdir(scratch):
                path = os.path.join(scratch, name)
                if path != cfg["tmp_root"] and not any(k == path or k.startswith(path + "/") for k in kept):
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.unlink(path)
    return result


def main() -> None:
    cfg = json.loads(sys.argv[1])
    read_only_failed: list[str] = []
    fresh_proc = False
    if cfg["userns"]:
        cfg["kept_paths"] = _mount_private_tmp()
        read_only_failed = _remount_read_only()
        fresh_proc = _probe_fresh_proc()
    cfg["tmp_root"] = tempfile.mkdtemp(prefix="semcoder-sandbox-")
    os.chmod(cfg["tmp_root"], 0o711)
    for module in ("subprocess", "socket", "io", "glob", "traceback", *cfg.get("preload", [])):  # warm imports the tests use, shared by every fork
        try:
            __import__(module)
        except ImportError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _send({"ready": True, "pid": os.getpid(), "writable_mounts": read_only_failed, "fresh_proc": fresh_proc})
    stdin = sys.stdin.buffer
    while True:
        try:
            (n,) = struct.unpack(">I", _read_exact(stdin, 4))
            job = pickle.loads(_read_exact(stdin, n))
        except EOFError:
            break
        try:
            result = run_job(job, cfg)
        except BaseException as e:  # noqa: BLE001
            result = {"monitor_error": f"worker: {type(e).__name__}: {e}"}
        _send(result)
    shutil.rmtree(cfg["tmp_root"], ignore_errors=True)


if __name__ == "__main__":
    main()
