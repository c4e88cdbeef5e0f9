"""Each job runs in a process tree of its own, with limits, a private filesystem view and no network."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from sandbox import Job, Limits, Sandbox, detect_mode
from sandbox._worker import _interpreter_dirs

REPO = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> list[int]:
    """Host processes whose parent chain reaches ``pid``."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        children = [c for c, pp in parents.items() if pp == p]
        found += children
        frontier += children
    return found


def leftovers(sb: Sandbox) -> list[int]:
    """Processes still below the workers once every job has ended (the workers themselves excepted: in
    namespaces mode each runs under ``unshare``)."""
    found = []
    for worker in sb._workers:
        below = descendants(worker.proc.pid)
        if sb.mode == "namespaces":
            below = [p for p in below if p not in direct_children(worker.proc.pid)]
        found += below
    return found


def direct_children(pid: int) -> set[int]:
    return set(descendants(pid)) - {d for c in descendants(pid) for d in descendants(c)}


def test_namespaces_are_used_on_this_machine(sandbox):
    assert detect_mode() == "namespaces" and sandbox.mode == "namespaces"
    assert sandbox.describe()["sandbox_mode"] == "namespaces"


@pytest.mark.parametrize("mode", ["sandbox", "fallback"])
@pytest.mark.parametrize("program,ended,says", [
    ("emit(sum(range(10)))", "exited", "exited with status 0"),
    ("while True:\n    pass", "timeout", "wall-clock limit"),
    ("import os\nos._exit(3)", "exited", "exited with status 3"),
    ("import ctypes\nctypes.string_at(0)", "signaled", "SIGSEGV"),
    ("import os, signal\nos.kill = None\nimport posix\nposix.kill(posix.getpid(), signal.SIGSTOP)", "stopped",
     "stopped itself (SIGSTOP)"),
    ("import os\nos.write(3, b'\\x00\\x00\\x00\\x09[\"value\"')", "error", "malformed results: an incomplete frame"),
])
def test_how_a_job_ended_is_reported(request, mode, program, ended, says):
    outcome = request.getfixturevalue(mode).run(Job(program, timeout_s=1.5))
    assert outcome.ended == ended, outcome
    assert says in outcome.describe()


def test_the_candidate_sees_only_the_runtime_an_empty_tmp_and_its_own_processes(sandbox):
    program = ("import os\n"
               "emit(os.getcwd()); emit(sorted(os.listdir('.'))); emit(sorted(os.listdir('/')))\n"
               "emit(sorted(p for p in os.listdir('/proc') if p.isdigit())); emit(dict(os.environ))\n"
               "emit(os.path.exists('/etc/passwd'))\n")
    cwd, listing, root, pids, env, passwd = sandbox.run(Job(program)).values
    assert (cwd, listing) == ("/tmp/work", [])
    # the runtime is bound where it lives, so the top directories of this interpreter's import paths appear too
    runtime_tops = {Path(p).parts[1] for p in _interpreter_dirs()}
    assert set(root) <= {"dev", "etc", "lib", "lib32", "lib64", "proc", "tmp", "usr"} | runtime_tops
    assert pids == ["1", "2"]  # the job's init and the candidate: nothing of the host
    assert set(env) == {"HOME", "TMPDIR", "PATH", "LANG", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                        "MKL_NUM_THREADS"}
    assert not passwd


@pytest.mark.parametrize("path", [REPO / "README.md", REPO / "pyproject.toml", REPO.parent / "shared" / "data",
                                  Path("/etc/hostname"), "secret_in_home"])
def test_files_of_the_host_are_not_there(request, sandbox, path):
    if path == "secret_in_home":
        path = request.getfixturevalue(path)
    program = f"import os\nemit(os.path.exists({str(path)!r}))"
    assert sandbox.run(Job(program)).values == [False]


def test_the_harness_environment_and_processes_are_invisible(sandbox, secret):
    program = ("import glob\nseen = []\n"
               "for path in glob.glob('/proc/*/environ'):\n"
               "    try:\n        seen.append(open(path, 'rb').read().decode())\n"
               "    except OSError:\n        pass\nemit(seen)")
    (environs,) = sandbox.run(Job(program)).values
    assert environs and not any(secret in e for e in environs)
    assert os.environ["SEMCODER_TEST_SECRET"] == secret


def test_everything_but_tmp_is_read_only_and_tmp_is_wiped_between_jobs(sandbox):
    writes = ("import os\nerrors = []\n"
              "for path in ('/usr/lib/x', '/proc/x', os.__file__ + '.x', '/x'):\n"
              "    try:\n        open(path, 'w')\n        errors.append('written')\n"
              "    except OSError as e:\n        errors.append(type(e).__name__)\n"
              "open('mine', 'w').write('x')\nopen('/tmp/also-mine', 'w').write('x')\nemit(errors)\n"
              "emit(os.listdir('.'))")
    errors, listing = sandbox.run(Job(writes)).values
    assert "written" not in errors and listing == ["mine"]
    again = sandbox.run(Job("import os\nemit(os.listdir('.'))\nemit(os.path.exists('/tmp/also-mine'))")).values
    assert again == [[], False]


def test_stdin_is_the_jobs_input_and_output_is_captured_bounded_and_never_a_failure(sandbox):
    big = 20 * 1024 * 1024
    program = (f"import os, sys\nemit(input()[::-1])\nsys.stdout.write('x' * {big})\nsys.stdout.flush()\n"
               "sys.stderr.write('warn')\nemit('done')")
    outcome = sandbox.run(Job(program, stdin="abc\n"))
    assert outcome.values == ["cba", "done"] and outcome.ended == "exited"
    assert outcome.stdout == "x" * Limits().output_bytes and outcome.stdout_bytes == big
    assert outcome.stderr == "warn"


def test_no_connection_reaches_a_server_on_the_host(sandbox, fallback):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(1.0)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    program = (f"import socket\ntry:\n    s = socket.socket()\n    s.connect(('127.0.0.1', {port}))\n"
               "    emit('connected')\nexcept OSError as e:\n    emit(e.strerror)")
    in_namespace, without = sandbox.run(Job(program)).values, fallback.run(Job(program)).values
    thread.join()
    server.close()
    assert in_namespace == ["Network is unreachable"] and without == ["Permission denied"]
    assert accepted == [None]


def _accept(server: socket.socket):
    try:
        return server.accept()
    except OSError:
        return None


@pytest.mark.parametrize("mode", ["sandbox", "fallback"])
def test_a_fork_bomb_dies_with_its_job_and_leaves_nothing(request, mode):
    sb = request.getfixturevalue(mode)
    bomb = ("import posix, time\nend = time.time() + 5\nwhile time.time() < end:\n"
            "    try:\n        posix.fork()\n    except OSError:\n        pass\n")
    start = time.monotonic()
    outcome = sb.run(Job(bomb, timeout_s=2))
    assert outcome.ended in ("timeout", "signaled"), outcome
    assert time.monotonic() - start < 4.5
    assert leftovers(sb) == []
    assert sb.run(Job("emit(1)")).values == [1]


@pytest.mark.parametrize("mode", ["sandbox", "fallback"])
def test_the_process_count_limit_stops_forking_and_orphans_are_killed(request, mode):
    sb = request.getfixturevalue(mode)
    program = ("import posix, time\nfor i in range(200):\n    try:\n        pid = posix.fork()\n"
               "    except OSError:\n        emit(i)\n        break\n    if pid == 0:\n"
               "        posix.setsid()\n        time.sleep(30)\n        posix._exit(0)\n")
    outcome = sb.run(Job(program, timeout_s=5))
    assert outcome.values and outcome.values[0] <= Limits().max_processes
    assert leftovers(sb) == []


def test_memory_and_file_size_limits(sandbox):
    program = ("try:\n    x = bytearray(10 * 1024 ** 3)\nexcept MemoryError:\n    emit('MemoryError')\n"
               "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "try:\n    open('/tmp/big', 'wb').write(b'x' * (20 * 1024 * 1024))\nexcept OSError as e:\n"
               "    emit(e.strerror)")
    assert sandbox.run(Job(program)).values == ["MemoryError", "File too large"]


def test_hostile_jobs_do_not_change_benign_results(sandbox):
    benign = [Job(f"emit({i} % 3 != 0)") for i in range(30)]
    hostile = [Job("while True: pass", timeout_s=1), Job("import os\nos._exit(1)"),
               Job("x = bytearray(10 * 1024 ** 3)")]
    alone = [o.values for o in sandbox.map(benign)]
    mixed = sandbox.map(benign[:10] + hostile + benign[10:])
    assert [o.values for o in mixed[:10] + mixed[13:]] == alone
    assert [o.ended for o in mixed[10:13]] == ["timeout", "exited", "exited"]


def test_a_dead_worker_fails_only_its_job_and_is_replaced():
    with Sandbox(workers=1) as sb:
        pid = sb._workers[0].proc.pid  # unshare: --kill-child takes the worker with it
        timer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        timer.start()
        outcome = sb.run(Job("while True: pass", timeout_s=5))
        timer.join()
        assert outcome.ended == "error" and "restarted" in outcome.error
        assert sb._workers[0].proc.pid != pid
        assert sb.run(Job("emit(1)")).values == [1]


def test_isolation_can_be_required():
    from sandbox import SandboxUnavailable

    with pytest.raises(SandboxUnavailable, match="isolation is required"):
        Sandbox(workers=1, mode="none", require_isolation=True)


@pytest.mark.slow
def test_800_samples_with_5_percent_hostile_leave_benign_results_unchanged(shared_data_dir):
    import json

    from sandbox.function_tests import Program, check

    rows = [json.loads(line) for line in open(shared_data_dir / "cruxeval" / "cruxeval.jsonl")]
    # gold answers, every fourth one made wrong, so benign verdicts are a mix of passed and failed
    benign = [(Program(r["code"], expression=(f"('wrong', f({r['input']}))" if i % 4 == 0 else f"f({r['input']})"),
                       timeout_s=3), [eval(r["output"])]) for i, r in enumerate(rows)]
    hostile_programs = [
        "while True: pass",
        "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
        "x = bytearray(10 * 1024 ** 3)",
        "import ctypes, signal\nctypes.CDLL(None).kill(0, signal.SIGSTOP)",
        "import ctypes\nctypes.CDLL(None).kill(-1, 9)",
        "import os\nos._exit(0)",
        "import ctypes\nctypes.string_at(0)",
        "fd = open('/tmp/fill', 'wb')\nwhile True:\n    fd.write(b'x' * 65536)",
    ]
    mixed, order = [], []
    for i, item in enumerate(benign):
        if i % 20 == 0:  # 40 of 800 = 5 %
            mixed.append((Program(hostile_programs[(i // 20) % len(hostile_programs)], expression="1",
                                  timeout_s=2), [2]))
            order.append(None)
        mixed.append(item)
        order.append(i)
    with Sandbox(workers=2) as sb:
        alone = [v.status for v in check(sb, benign)]
        together = check(sb, mixed)
        assert leftovers(sb) == []
    assert [v.status for v, i in zip(together, order) if i is not None] == alone
    assert alone.count("passed") == 600
    assert all(v.status != "passed" for v, i in zip(together, order) if i is None)
