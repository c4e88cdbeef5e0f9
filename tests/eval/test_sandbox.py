"""The sandbox contains hostile candidates: each fails with a status saying why, nothing else is touched."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from eval.sandbox import Job, Limits, Sandbox, detect_isolation

HERE = Path(__file__).resolve().parent
REPO_EVAL = HERE.parents[1] / "eval"
SECRET = "semcoder-sandbox-test-secret-4242"


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


@pytest.fixture(scope="module")
def sandbox():
    os.environ["SEMCODER_TEST_SECRET"] = SECRET  # the harness's environment holds a secret
    with Sandbox(workers=2, limits=Limits(output_bytes=4096)) as sb:
        yield sb
    os.environ.pop("SEMCODER_TEST_SECRET", None)


def worker_pids(sb: Sandbox) -> list[int]:
    return [w.proc.pid for w in sb._workers]


def test_isolation_uses_namespaces_on_this_machine(sandbox):
    assert detect_isolation() == "userns"
    assert sandbox.isolation == "userns"


@pytest.mark.parametrize("program,status,reason", [
    ("x = sum(range(10))", "passed", ""),
    ("assert 1 + 1 == 3, 'arithmetic'", "failed", "AssertionError: arithmetic"),
    ("while True:\n    pass", "timeout", "wall-clock limit"),
    ("import sys\nsys.exit(0)", "failed", "SystemExit"),
    ("import os\nos._exit(0)", "error", "exited with status 0 before reporting"),
    ("import ctypes\nctypes.string_at(0)", "error", "SIGSEGV"),
    ("import os\nos.system('echo pwned')", "failed", "os.system is disabled"),
    ("import subprocess\nsubprocess.run(['true'])", "failed", "subprocess.Popen is disabled"),
    ("x = bytearray(10 * 1024 ** 3)", "failed", "MemoryError"),
    ("import _socket\ns = _socket.socket()\ns.connect(('1.1.1.1', 80))", "failed", "Network is unreachable"),
])
def test_each_candidate_gets_the_status_that_says_why(sandbox, program, status, reason):
    outcome = sandbox.run(Job(program, timeout_s=1.5))
    assert outcome.status == status, outcome
    assert reason in outcome.message


def test_shell_escapes_cannot_write_outside_the_sample_directory(sandbox):
    victim = HERE / f".sandbox-victim-{os.getpid()}"
    victim.write_text("intact")
    try:
        programs = [
            f"open({str(victim)!r}, 'w').write('owned')",
            f"import posix\nfd = posix.open({str(victim)!r}, posix.O_WRONLY | posix.O_TRUNC)\nposix.write(fd, b'owned')",
            f"import posix\nposix.unlink({str(victim)!r})",
            f"import posix\nassert posix.system('rm -f {victim}; echo owned > {victim}') == 0",
            f"import shutil\nshutil.rmtree({str(HERE)!r})",
        ]
        for outcome in sandbox.map([Job(p, timeout_s=5) for p in programs]):
            assert outcome.status == "failed", outcome
        assert victim.read_text() == "intact"
    finally:
        victim.unlink()


def test_files_in_the_hosts_tmp_are_invisible_and_untouched(sandbox, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("intact")
    outcome = sandbox.run(Job(f"import posix\nposix.unlink({str(victim)!r})"))
    assert outcome.status == "failed" and "FileNotFoundError" in outcome.message
    assert victim.read_text() == "intact"


def test_writing_inside_the_sample_directory_works_and_is_wiped_afterwards(sandbox):
    first = sandbox.run(Job("import os\nopen('scratch.txt', 'w').write('x')\nprint(os.listdir('.'))"))
    assert first.status == "passed" and "scratch.txt" in first.stdout
    second = sandbox.run(Job("import os\nprint(sorted(os.listdir('.')))"))
    assert "scratch.txt" not in second.stdout


def test_the_harness_environment_is_not_readable(sandbox):
    program = (
        "import os, glob\n"
        "print(dict(os.environ))\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        print(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        "print(os.listdir('/proc'))\n")
    outcome = sandbox.run(Job(program))
    assert outcome.status == "passed"
    assert SECRET not in outcome.stdout
    assert os.environ["SEMCODER_TEST_SECRET"] == SECRET


def test_no_connection_reaches_a_server_on_the_host(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    outcome = sandbox.run(Job(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))"))
    thread.join()
    server.close()
    assert outcome.status == "failed" and "OSError" in outcome.message
    assert accepted == [None]


def _accept(server: socket.socket):
    try:
        return server.accept()
    except OSError:
        return None


def test_a_fork_bomb_is_capped_and_dies_with_its_sample(sandbox):
    # Bounded twice over: the bomb stops itself after 5 s; the sandbox must end it at its 2 s timeout.
    bomb = ("import posix, time\n"
            "end = time.time() + 5\n"
            "while time.time() < end:\n"
            "    try:\n"
            "        posix.fork()\n"
            "    except OSError:\n"
            "        pass\n")
    start = time.monotonic()
    outcome = sandbox.run(Job(bomb, timeout_s=2))
    assert outcome.status == "timeout"
    assert time.monotonic() - start < 4.5
    assert all(not descendants(pid) for pid in worker_pids(sandbox))
    assert sandbox.run(Job("x = 1")).status == "passed"


def test_the_process_count_limit_stops_forking(sandbox):
    program = ("import posix, time\n"
               "for i in range(200):\n"
               "    try:\n"
               "        pid = posix.fork()\n"
               "    except OSError as e:\n"
               "        print('fork failed after', i)\n"
               "        break\n"
               "    if pid == 0:\n"
               "        time.sleep(20)\n"
               "        posix._exit(0)\n")
    outcome = sandbox.run(Job(program, timeout_s=5))
    assert outcome.status == "passed"
    assert "fork failed after" in outcome.stdout
    assert int(outcome.stdout.split()[-1]) <= Limits().max_processes
    assert all(not descendants(pid) for pid in worker_pids(sandbox))


def test_output_is_captured_and_bounded(sandbox):
    outcome = sandbox.run(Job("import sys\nprint('x' * 100000)\nsys.stderr.write('warn')\n"))
    assert outcome.status == "passed"
    assert outcome.stdout == "x" * 4096
    assert outcome.stderr == "warn"


def test_stdin_is_the_jobs_input(sandbox):
    outcome = sandbox.run(Job("print(input()[::-1])", stdin="abc\n"))
    assert outcome.stdout == "cba\n"


def test_payload_reaches_the_program_and_report_carries_details(sandbox):
    program = "report('failed', 'custom', failed_test=PAYLOAD['i'])"
    outcome = sandbox.run(Job(program, payload={"i": 7}))
    assert (outcome.status, outcome.message, outcome.details) == ("failed", "custom", {"failed_test": 7})


def test_hostile_samples_do_not_change_benign_results(sandbox):
    benign = [Job(f"assert {i} % 3 != 0") for i in range(30)]
    hostile = [Job("while True: pass", timeout_s=1), Job("import os\nos._exit(1)"),
               Job("x = bytearray(10 * 1024 ** 3)")]
    alone = [o.status for o in sandbox.map(benign)]
    mixed = sandbox.map(benign[:10] + hostile + benign[10:])
    together = [o.status for o in mixed[:10] + mixed[13:]]
    assert together == alone
    assert alone.count("passed") == 20
    assert [o.status for o in mixed[10:13]] == ["timeout", "error", "failed"]


def test_without_namespaces_limits_and_guards_still_apply():
    with pytest.warns(UserWarning, match="no network/PID namespaces"):
        sb = Sandbox(workers=1, isolation="none")
    with sb:
        results = sb.map([Job("x = 1"), Job("while True: pass", timeout_s=1),
                          Job("x = bytearray(10 * 1024 ** 3)"), Job("import os\nos.remove('/etc/hostname')")])
    assert [o.status for o in results] == ["passed", "timeout", "failed", "failed"]


@pytest.mark.slow
def test_800_samples_with_5_percent_hostile_leave_benign_results_unchanged(shared_data_dir):
    import json

    rows = [json.loads(line) for line in open(shared_data_dir / "cruxeval" / "cruxeval.jsonl")]
    # gold answers, with every fourth one made wrong so benign results are a mix of passed and failed
    benign = [Job(f"{r['code']}\nassert {r['output']} == f({r['input']})" + (" and False" if i % 4 == 0 else ""),
                  timeout_s=3) for i, r in enumerate(rows)]
    hostile_programs = [
        "while True: pass",
        "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
        "x = bytearray(10 * 1024 ** 3)",
        f"import posix\nassert posix.system('rm -rf {REPO_EVAL}') == 0",
        "import _socket\n_socket.socket().connect(('127.0.0.1', 22))",
        "import os\nos._exit(0)",
        "import ctypes\nctypes.string_at(0)",
        "import posix\nfd = posix.open('/tmp/fill', posix.O_WRONLY | posix.O_CREAT)\nwhile True:\n    posix.write(fd, b'x' * 65536)",
    ]
    hostile_at = set(range(0, 800, 20))  # 40 of 800 = 5 %
    mixed, order = [], []
    for i, job in enumerate(benign):
        if i in hostile_at:
            mixed.append(Job(hostile_programs[(i // 20) % len(hostile_programs)], timeout_s=2))
            order.append(None)
        mixed.append(job)
        order.append(i)
    with Sandbox(workers=2) as sb:
        alone = [o.status for o in sb.map(benign)]
        together = sb.map(mixed)
        pids = worker_pids(sb)
        assert all(not descendants(pid) for pid in pids)
    benign_together = [o.status for o, i in zip(together, order) if i is not None]
    assert benign_together == alone
    assert alone.count("passed") == 600
    assert all(o.status != "passed" for o, i in zip(together, order) if i is None)
    assert (REPO_EVAL / "sandbox.py").is_file()


NORMAL_USER_CHECK = r'''
import json, os, sys
sys.path.insert(0, sys.argv[1])
from eval.sandbox import Job, Sandbox
count = ("import posix, time\nfor i in range(200):\n    try:\n        pid = posix.fork()\n    except OSError:\n"
         "        print(i)\n        break\n    if pid == 0:\n        time.sleep(20)\n        posix._exit(0)\n")
programs = ["x = 1", "while True: pass", "x = bytearray(10 * 1024 ** 3)",
            "import _socket\n_socket.socket().connect(('127.0.0.1', 22))",
            "import posix\nposix.unlink(%r)" % sys.argv[2], count]
with Sandbox(workers=1, preload=()) as sb:
    results = sb.map([Job(p, timeout_s=2) for p in programs])
print(json.dumps({"uid": os.getuid(), "isolation": sb.isolation,
                  "results": [[o.status, o.message, o.stdout] for o in results]}))
'''


def test_works_as_a_normal_user():
    import json
    import shutil
    import subprocess

    system_python = "/usr/bin/python3"  # the venv's interpreter may live under root's home, unreadable to others
    if os.geteuid() != 0 or not shutil.which("runuser") or not os.access(system_python, os.X_OK):
        pytest.skip("needs root (to switch to 'nobody'), runuser and a system python3")
    victim = HERE.parents[1] / "pyproject.toml"
    proc = subprocess.run(["runuser", "-u", "nobody", "--", system_python, "-c", NORMAL_USER_CHECK, str(HERE.parents[1]),
                           str(victim)], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["uid"] != 0 and report["isolation"] == "userns"
    statuses = [r[0] for r in report["results"]]
    assert statuses == ["passed", "timeout", "failed", "failed", "failed", "passed"]
    assert "Network is unreachable" in report["results"][3][1]
    assert int(report["results"][5][2]) <= Limits().max_processes
    assert victim.is_file()


def test_a_dead_worker_fails_only_its_job_and_is_replaced():
    import signal

    with Sandbox(workers=1) as sb:
        pid = sb._workers[0].proc.pid
        timer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        timer.start()
        outcome = sb.run(Job("while True: pass", timeout_s=5))
        timer.join()
        assert outcome.status == "error" and "restarted" in outcome.message
        assert sb._workers[0].proc.pid != pid
        assert sb.run(Job("x = 1")).status == "passed"
