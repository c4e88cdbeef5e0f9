"""The candidate's seccomp filter: its own process group is all it can signal; no tracing, no new namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import _seccomp

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not _seccomp.supported(), reason="seccomp filters are built for x86-64 and aarch64")


CHILD = r"""
import ctypes, errno, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from sandbox import _seccomp
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)  # no_new_privs, as a candidate sets it
os.setsid()
_seccomp.install(restrict_signals=True, restrict_sockets=sys.argv[2] == "1", self_pid=os.getpid())
seen = {}
for name, target in (("all", -1), ("parent", os.getppid()), ("init", 1), ("group", 0), ("self", os.getpid())):
    seen[name] = "ok" if libc.kill(target, 0) == 0 else errno.errorcode[ctypes.get_errno()]
for name, family in (("inet", socket.AF_INET), ("unix", socket.AF_UNIX)):
    try:
        socket.socket(family).close()
        seen[name] = "ok"
    except OSError as e:
        seen[name] = errno.errorcode[e.errno]
seen["userns"] = "ok" if libc.unshare(0x10000000) == 0 else errno.errorcode[ctypes.get_errno()]
seen["ptrace"] = "ok" if libc.ptrace(16, os.getppid(), 0, 0) == 0 else errno.errorcode[ctypes.get_errno()]
child = os.fork()  # plain fork still works (clone without namespace flags)
if child == 0:
    os._exit(7)
seen["fork"] = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
print(json.dumps(seen))
"""


def in_filtered_child(restrict_sockets: bool) -> dict:
    """Install the filter in a fresh process (as a candidate does) and report what each call returned."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(REPO), "1" if restrict_sockets else "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_signals_reach_only_the_candidates_own_process_group():
    seen = in_filtered_child(restrict_sockets=False)
    assert (seen["all"], seen["parent"], seen["init"]) == ("EPERM", "EPERM", "EPERM")
    assert (seen["group"], seen["self"]) == ("ok", "ok")


def test_no_tracing_no_new_namespaces_but_fork_works():
    seen = in_filtered_child(restrict_sockets=False)
    assert seen["userns"] == "EPERM" and seen["ptrace"] == "EPERM"
    assert seen["fork"] == 7 and seen["inet"] == "ok"


def test_without_a_network_namespace_only_unix_sockets_open():
    seen = in_filtered_child(restrict_sockets=True)
    assert seen["inet"] == "EACCES" and seen["unix"] == "ok"
