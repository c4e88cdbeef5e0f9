"""A seccomp filter for candidate processes: the system calls no candidate needs, refused by the kernel.

Installed last, just before candidate code runs (it needs ``no_new_privs``, which the candidate sets).
Always refused (``EPERM``): ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp`` (reading or steering
another process), ``pidfd_open``/``pidfd_send_signal``/``pidfd_getfd`` (signals and file descriptors by
pidfd), ``io_uring_*`` (it performs I/O outside seccomp's view), ``bpf``, ``perf_event_open``,
``userfaultfd``, the key-ring calls, ``unshare``/``setns``/``mount``/``umount2``/``pivot_root``/``chroot``
and the new-mount API, ``clone`` with any namespace flag (no nested user namespace, hence no capabilities
anywhere); ``clone3`` answers ``ENOSYS``, so the C library falls back to ``clone``, whose flags can be read.

``restrict_signals`` confines signals to the candidate's own process group: ``kill`` and
``rt_sigqueueinfo`` only to ``0``, its own pid or minus it, ``tgkill`` and ``rt_tgsigqueueinfo`` only to its
own threads, ``tkill`` never (so ``kill(-1, ...)``, the parent and the harness are out of reach, and an
attempt fails with ``EPERM`` in every mode).  ``restrict_sockets`` (used without a network namespace)
allows ``socket`` only for ``AF_UNIX``.

Standard library only; x86-64 and aarch64 (``supported()`` says whether this machine is one of them).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data; arg0's low 32 bits (little endian)
CLONE_NAMESPACE_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
AF_UNIX = 1
X32_SYSCALL_BIT = 0x40000000

_ARCHES = {
    "x86_64": (0xC000003E, {
        "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
        "keyctl": 250, "add_key": 248, "request_key": 249,
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "socket": 41, "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {
        "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "pidfd_open": 434, "pidfd_send_signal": 424, "pidfd_getfd": 438,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
        "bpf": 280, "perf_event_open": 241, "userfaultfd": 282,
        "keyctl": 219, "add_key": 217, "request_key": 218,
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
        "mount_setattr": 442, "socket": 198, "clone": 220, "clone3": 435}),
}
ALWAYS_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_send_signal",
                 "pidfd_getfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf",
                 "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "unshare", "setns",
                 "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig",
                 "fsmount", "fspick", "mount_setattr")


def _machine() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)


def supported() -> bool:
    """Whether a filter can be built for this machine's architecture."""
    return _machine() in _ARCHES


def _stmt(code: int, k: int) -> tuple[int, int, int, int]:
    return (code, 0, 0, k & 0xFFFFFFFF)


def _jump(code: int, k: int, jt: int, jf: int) -> tuple[int, int, int, int]:
    return (code, jt, jf, k & 0xFFFFFFFF)


def _allow_only_args(values: list[int], deny: int) -> list[tuple]:
    """Body of a rule: allow the call when its first argument's low 32 bits are one of ``values``."""
    body: list[tuple] = [_stmt(LD_W_ABS, OFFSET_ARG0)]
    for i, value in enumerate(values):
        # jump to the ALLOW at the end: over the remaining compares and the deny
        body.append(_jump(JEQ_K, value, len(values) - i, 0))
    body += [_stmt(RET_K, deny), _stmt(RET_K, RET_ALLOW)]
    return body


def build_filter(restrict_signals: bool, restrict_sockets: bool, self_pid: int) -> list[tuple[int, int, int, int]]:
    """The filter program as (code, jt, jf, k) instructions."""
    arch, nr = _ARCHES[_machine()]
    eperm = RET_ERRNO | errno.EPERM
    rules: list[tuple[int, list[tuple]]] = [(nr[name], [_stmt(RET_K, eperm)]) for name in ALWAYS_DENIED]
    rules.append((nr["clone3"], [_stmt(RET_K, RET_ERRNO | errno.ENOSYS)]))
    rules.append((nr["clone"], [_stmt(LD_W_ABS, OFFSET_ARG0), _jump(JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1),
                                _stmt(RET_K, eperm), _stmt(RET_K, RET_ALLOW)]))
    if restrict_signals:
        own_group = [0, self_pid, -self_pid]
        for name in ("kill", "rt_sigqueueinfo"):
            rules.append((nr[name], _allow_only_args(own_group, eperm)))
        for name in ("tgkill", "rt_tgsigqueueinfo"):
            rules.append((nr[name], _allow_only_args([self_pid], eperm)))
        rules.append((nr["tkill"], [_stmt(RET_K, eperm)]))
    if restrict_sockets:
        rules.append((nr["socket"], _allow_only_args([AF_UNIX], RET_ERRNO | errno.EACCES)))
    program: list[tuple] = [
        _stmt(LD_W_ABS, OFFSET_ARCH),
        _jump(JEQ_K, arch, 1, 0),
        _stmt(RET_K, RET_KILL_PROCESS),  # another ABI: nothing the candidate should be doing
        _stmt(LD_W_ABS, OFFSET_NR),
    ]
    if _machine() == "x86_64":  # the x32 ABI numbers its calls from 0x40000000
        program += [_jump(JGE_K, X32_SYSCALL_BIT, 0, 1), _stmt(RET_K, eperm)]
    for number, body in rules:
        program.append(_jump(JEQ_K, number, 0, len(body)))
        program += body
    program.append(_stmt(RET_K, RET_ALLOW))
    if any(jt > 255 or jf > 255 for _, jt, jf, _ in program):  # pragma: no cover - the rules are short
        raise ValueError("seccomp filter jump out of range")
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_compiled: dict[tuple[bool, bool, int], tuple[ctypes.Array, int]] = {}


def install(restrict_signals: bool, restrict_sockets: bool, self_pid: int) -> None:
    """Install the filter on the calling thread (and everything it later starts); raises OSError.  Programs
    are cached by their arguments, so a zygote that compiles one ahead (``install`` in a throwaway child, or
    ``compile_ahead``) hands every job a ready one."""
    key = (restrict_signals, restrict_sockets, self_pid)
    if key not in _compiled:
        compile_ahead(*key)
    buf, n = _compiled[key]
    prog = _SockFprog(n, ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {errno.errorcode.get(err, err)}")


def compile_ahead(restrict_signals: bool, restrict_sockets: bool, self_pid: int) -> None:
    """Build and cache the filter program for these arguments (no system call)."""
    program = build_filter(restrict_signals, restrict_sockets, self_pid)
    blob = b"".join(struct.pack("HBBI", *ins) for ins in program)
    _compiled[(restrict_signals, restrict_sockets, self_pid)] = (ctypes.create_string_buffer(blob, len(blob)),
                                                                 len(program))
