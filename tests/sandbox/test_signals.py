"""No candidate can kill, stop or freeze the run: signals to 0, -1, the parent or the group reach nothing outside it.

Each hostile candidate runs first in a batch of 51 (the other 50 benign) inside a separate harness process
(``hostile_batch.py``), in both sandbox modes, as root and as an unprivileged user.  As a safety net the
harness lives in a PID namespace of its own where the machine allows one, so a regression fails this test
(the harness dies) instead of killing the test runner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("hostile_batch.py")

KILL = "import signal, {via}\n{call}(0, signal.{sig})\n"
CTYPES = "import ctypes, signal\nctypes.CDLL(None).kill({target}, signal.{sig})\n"
# (program, what the verdict must say)
ATTACKS = [
    ("import os\nos.kill(0, 9)\n", "os.kill is disabled"),
    ("import os\nos.kill(os.getppid(), 9)\n", "os.kill is disabled"),
    ("import posix\nposix.kill(posix.getppid(), 9)\n", None),  # 0 in a PID namespace, the monitor without one
    ("import ctypes\nlibc = ctypes.CDLL(None)\nlibc.killpg(libc.getpgrp(), 9)\n", "SIGKILL"),
    ("import os\nos.kill(-1, 9)\n", "os.kill is disabled"),
    ("import posix\nposix.kill(-1, 9)\n", "PermissionError"),
    ("import ctypes\nassert ctypes.CDLL(None).kill(-1, 9) == 0, 'kill(-1) refused'\n", "kill(-1) refused"),
    ("import posix, signal\nposix.killpg(posix.getpgrp(), signal.SIGKILL)\n", "SIGKILL"),
]
for sig, says in (("SIGTERM", "SIGTERM"), ("SIGINT", "KeyboardInterrupt"), ("SIGHUP", "SIGHUP"),
                  ("SIGSTOP", "stopped itself (SIGSTOP)")):
    ATTACKS.append((KILL.format(via="posix", call="posix.kill", sig=sig), says))
    ATTACKS.append((CTYPES.format(target=0, sig=sig), says))
ATTACKS.append((KILL.format(via="os", call="os.kill", sig="SIGTERM"), "os.kill is disabled"))
ATTACKS.append(("import os\nos.killpg(os.getpgrp(), 9)\n", "os.killpg is disabled"))


def run_harness(mode: str, user: str | None = None, python: str = sys.executable) -> list[dict]:
    command = [python, str(HARNESS), mode, str(REPO)]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    if os.geteuid() == 0 and shutil.which("unshare"):
        # the harness must not be PID 1 of that namespace (kill(-1) spares PID 1), hence the shell
        command = ["unshare", "--pid", "--fork", "--kill-child", "--", "sh", "-c", '"$@"; exit $?', "sh", *command]
    proc = subprocess.run(command, input=json.dumps([a for a, _ in ATTACKS]), capture_output=True, text=True,
                          timeout=600, cwd="/")
    assert proc.returncode == 0, f"the harness did not survive (exit {proc.returncode}): {proc.stderr[-2000:]}"
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(ATTACKS) + 1 and lines[-1]["mode"] == mode
    return lines[:-1]


def check_every_attack(results: list[dict]) -> None:
    for (program, says), result in zip(ATTACKS, results):
        assert result["benign_passed"] == 50, (program, result)
        assert result["status"] != "passed", (program, result)
        if says:
            assert says in result["message"], (program, result)


@pytest.mark.parametrize("mode", ["namespaces", "none"])
def test_signal_attacks_fail_alone_and_the_run_finishes(mode):
    if mode == "namespaces" and os.geteuid() != 0 and not shutil.which("unshare"):
        pytest.skip("no unshare")
    check_every_attack(run_harness(mode))


def test_signal_attacks_fail_alone_as_an_unprivileged_user_without_namespaces():
    system_python = "/usr/bin/python3"  # the venv's interpreter may live under root's home, unreadable to others
    if os.geteuid() != 0 or not shutil.which("runuser") or not os.access(system_python, os.X_OK):
        pytest.skip("needs root (to switch to 'nobody'), runuser and a system python3")
    check_every_attack(run_harness("none", user="nobody", python=system_python))
