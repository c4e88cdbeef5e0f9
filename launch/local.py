"""Local multi-process training: P ``semcoder train`` processes on 127.0.0.1, each with D CPU devices.

This is the multi-host program a TPU pod or a GPU cluster runs, in miniature: one coordinator
(process 0's address), ``jax.distributed`` in every process, CPU collectives between them.  The
launcher streams every process's output line by line with a ``[pI]`` prefix and, when one process
fails, stops all the others (SIGTERM, then SIGKILL after a grace period) so that nothing is left
waiting in a collective.  SIGTERM, SIGINT or SIGHUP to the launcher (a scheduler's ``timeout``, a
Ctrl-C, a closed terminal) is passed on the same way: every process gets SIGTERM, saves and exits, and
the launcher reaps them before it exits, so nothing is orphaned.  Launching again on the same run
directory resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from semcoder_jax.errors import UserError


class LaunchError(UserError):
    """Launcher arguments that cannot work (process or device counts, train arguments)."""


@dataclasses.dataclass(frozen=True)
class LocalProcess:
    """One process to start: its index, command line and the environment it adds."""

    index: int
    argv: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        """The equivalent shell command line (what ``--dry-run`` prints)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return f"{env} {shlex.join(self.argv)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_RESERVED = ("--coordinator", "--num-processes", "--process-id")


def build_processes(processes: int, devices_per_process: int, train_args: Sequence[str], *, port: int,
                    python: str = sys.executable) -> list[LocalProcess]:
    """The ``semcoder train`` command of each process, with its coordinator and forced CPU devices."""
    if processes <= 0:
        raise LaunchError(f"--processes {processes}: must be positive")
    if devices_per_process <= 0:
        raise LaunchError(f"--devices-per-process {devices_per_process}: must be positive")
    clash = [a for a in train_args if a.split("=", 1)[0] in _RESERVED]
    if clash:
        raise LaunchError(f"{', '.join(clash)}: set by the launcher; drop it from the train arguments")
    args = list(train_args)
    if args and args[0] == "train":
        args = args[1:]
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_force_host_platform_device_count"))
    xla_flags = f"{xla_flags} --xla_force_host_platform_device_count={devices_per_process}".strip()
    out = []
    for i in range(processes):
        argv = [python, "-m", "semcoder_jax.cli", "train"]
        if processes > 1:
            argv += ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
        argv += args
        out.append(LocalProcess(i, argv, {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}))
    return out


def _pump(index: int, stream: TextIO, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"[p{index}] {line}" if line.endswith("\n") else f"[p{index}] {line}\n")
            out.flush()


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to every live process (training saves and exits), SIGKILL to those still alive after ``grace``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        remaining = deadline - time.monotonic()
        try:
            p.wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _Stopped(Exception):
    """The launcher itself was asked to stop (by ``signum``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signum)


def run_local(specs: list[LocalProcess], *, out: TextIO = sys.stdout, log: TextIO = sys.stderr,
              grace: float = 20.0, poll: float = 0.1) -> int:
    """Starts every process, streams their output, stops all when one fails or when the launcher is signalled;
    returns the first failure's status (128 + the signal for a signalled launcher)."""
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            previous[sig] = signal.signal(sig, _raise_stopped)
    try:
        for spec in specs:
            p = subprocess.Popen(spec.argv, env={**os.environ, **spec.env}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1)
            procs.append(p)
            with lock:
                print(f"semcoder launch local: process {spec.index} pid {p.pid}", file=log, flush=True)
            t = threading.Thread(target=_pump, args=(spec.index, p.stdout, out, lock), daemon=True)
            t.start()
            pumps.append(t)
        status = 0
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, status = failed[0]
                with lock:
                    print(f"semcoder launch local: process {index} exited with status {status}; "
                          "stopping the others", file=log, flush=True)
                _stop(procs, grace)
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(poll)
    except (KeyboardInterrupt, _Stopped) as e:
        signum = e.signum if isinstance(e, _Stopped) else signal.SIGINT
        for sig in previous:  # a second signal while the processes save must not cut the wait short
            signal.signal(sig, signal.SIG_IGN)
        with lock:
            print(f"semcoder launch local: {signal.Signals(signum).name} received; stopping every process "
                  f"(SIGTERM, then SIGKILL after {grace:g} s)", file=log, flush=True)
        _stop(procs, grace)
        status = 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for t in pumps:
            t.join(timeout=5)
    if status < 0:  # killed by a signal: report it the way a shell does
        status = 128 - status
    return status
