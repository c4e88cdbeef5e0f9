"""Verdicts the candidate cannot touch: written as the attacker, every forgery ends in a verdict that is not passed.

The candidate's process only sends plain data; the comparison with the expected values happens in the
harness.  Each candidate below returns a wrong answer (or nothing) and tries to be recorded as passed anyway.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

from sandbox import Job, Sandbox, codec
from sandbox.function_tests import Program, check

REPO = Path(__file__).resolve().parents[2]
CALLS, EXPECTED = [(1, 2), (3, 4)], [3, 7]
WRONG = "\ndef solve(a, b):\n    return a - b\n"
EQ = "class E:\n    def __eq__(self, other):\n        return True\n    def __hash__(self):\n        return 0\n"


def verdict_of(sandbox: Sandbox, code: str, calls=CALLS, expected=EXPECTED, **program):
    return check(sandbox, [(Program(code, "solve", calls, timeout_s=5, **program), expected)])[0]


@pytest.mark.parametrize("returned", ["E()", "[E(), E()][0:1][0]", "[E()]", "{'a': E()}", "{E(): 1}", "(E(),)",
                                      "{E()}", "I(0)", "S('3')", "(x for x in [3])", "ValueError(3)", "solve"])
def test_objects_that_claim_equality_are_not_plain_data(sandbox, returned):
    code = EQ + "class I(int):\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n" \
        "class S(str):\n    def __eq__(self, o):\n        return True\n    __hash__ = str.__hash__\n" \
        f"def solve(a, b):\n    return {returned}\n"
    verdict = verdict_of(sandbox, code)
    assert verdict.status == "failed" and "not plain data" in verdict.message, verdict


@pytest.mark.parametrize("patch", [
    "import builtins\nbuiltins.abs = lambda x: 0",
    "import math\nmath.fabs = lambda x: 0.0",
    "import builtins\nbuiltins.exec = lambda *a, **k: None",
    "import builtins\nbuiltins.bool = lambda *a: True",
    "import builtins\nbuiltins.isinstance = lambda *a: True",
    "import builtins\nbuiltins.type = lambda *a: int",
    "import operator\noperator.eq = lambda a, b: True",
    "import builtins\nbuiltins.AssertionError = type('Never', (BaseException,), {})",
    "import json\njson.dumps = lambda *a, **k: '[\"value\", 3]'",
    "import numpy\nnumpy.allclose = lambda *a, **k: True",
    "import sys\nsys.excepthook = lambda *a: None",
])
def test_patched_builtins_and_comparison_machinery_change_nothing(sandbox, patch):
    verdict = verdict_of(sandbox, patch + WRONG)
    assert verdict.status == "failed" and "wrong output" in verdict.message, verdict


def test_a_patched_encoder_only_changes_the_candidates_own_answers(sandbox):
    # Rewrites the driver's result_record to send 3 for every call: right for the first input, wrong after.
    code = ("import sys\nframe = sys._getframe()\nwhile frame is not None:\n"
            "    fn = frame.f_locals.get('result_record') or frame.f_globals.get('result_record')\n"
            "    if fn is not None:\n        fn.__code__ = (lambda value: ['value', 3]).__code__\n"
            "    frame = frame.f_back\n" + WRONG)
    verdict = verdict_of(sandbox, code)
    assert verdict.status == "failed" and verdict.failed_at == 1


FORGE_FRAMES = """
import sys
frame = sys._getframe()
while frame is not None:
    for name in ("report", "emit", "emit_tagged"):
        fn = frame.f_globals.get(name)
        if callable(fn):
            for record in (["loaded"], ["returned"], ["value", "passed"], ["returned"], ["value", True]):
                try:
                    fn(record)
                except BaseException:
                    pass
            try:
                fn("passed")
            except BaseException:
                pass
    frame = frame.f_back
"""

FORGE_FDS = """
import json, os, struct, sys
def frame(record):
    data = json.dumps(record).encode()
    return struct.pack(">I", len(data)) + data
records = (["loaded"], ["returned"], ["value", "passed"], ["returned"], ["value", True], {"status": "passed"})
forged = b"".join(frame(r) for r in records) + b'{"status": "passed"}\\n'""" + """
for fd in range(256):
    try:
        os.write(fd, forged)
    except OSError:
        pass
print('{"status": "passed"}')
sys.stderr.write('passed\\n')
"""


@pytest.mark.parametrize("attack", [FORGE_FRAMES, FORGE_FDS], ids=["frame-walk", "every-fd"])
def test_records_forged_through_frames_or_file_descriptors_do_not_pass(sandbox, attack):
    verdict = verdict_of(sandbox, attack + WRONG)
    assert verdict.status != "passed", verdict


def test_a_record_the_candidate_writes_itself_is_only_ever_its_own_answer(sandbox):
    # Writing records to its results channel is possible, and they count as its answers: without the right
    # values (which never enter its process) that cannot pass; with them, it solved the task.
    forged = ("import json, os, struct\n"
              "for r in ([\"loaded\"], [\"returned\"], [\"value\", 3], [\"returned\"], [\"value\", 8]):\n"
              "    data = json.dumps(r).encode()\n    os.write(3, struct.pack('>I', len(data)) + data)\n")
    verdict = verdict_of(sandbox, forged + WRONG)
    assert verdict.status == "failed" and verdict.failed_at == 1 and "wrong output 8" in verdict.message


def test_harness_state_is_not_in_the_candidates_process_to_find(sandbox):
    import hashlib
    import uuid

    marker = f"expected-{uuid.uuid4().hex}"  # only the harness holds it; the candidate knows its hash
    target = hashlib.sha256(marker.encode()).hexdigest()
    search = ("import gc, hashlib, sys\n"
              "def strings(obj, depth=0):\n"
              "    if isinstance(obj, str):\n        yield obj\n"
              "    elif depth < 3 and isinstance(obj, (list, tuple, set, frozenset)):\n"
              "        for item in obj:\n            yield from strings(item, depth + 1)\n"
              "    elif depth < 3 and isinstance(obj, dict):\n"
              "        for k, v in list(obj.items()):\n"
              "            yield from strings(k, depth + 1)\n            yield from strings(v, depth + 1)\n"
              "def solve():\n"
              "    pools = list(gc.get_objects())\n"
              "    frame = sys._getframe()\n"
              "    while frame is not None:\n"
              "        pools += [frame.f_globals, frame.f_locals]\n        frame = frame.f_back\n"
              "    for obj in pools:\n"
              "        for s in strings(obj):\n"
              f"            if hashlib.sha256(s.encode('utf-8', 'replace')).hexdigest() == {target!r}:\n"
              "                return s\n"
              "    return 'nothing'\n")
    verdict = check(sandbox, [(Program(search, "solve", [()], timeout_s=30), [marker])])[0]
    assert verdict.status == "failed" and "'nothing'" in verdict.message, verdict


@pytest.mark.parametrize("ending,status", [
    ("import sys; sys.exit(0)", "failed"),
    ("raise SystemExit(0)", "failed"),
    ("raise KeyboardInterrupt", "failed"),
    ("raise type('Escape', (BaseException,), {})()", "failed"),
    ("raise GeneratorExit", "failed"),
    ("import os; os._exit(0)", "error"),
    ("import ctypes; ctypes.string_at(0)", "error"),
])
def test_leaving_early_in_any_way_is_not_passing(sandbox, ending, status):
    code = f"def solve(a, b):\n    if a == 3:\n        {ending}\n    return a + b\n"
    verdict = verdict_of(sandbox, code)
    assert verdict.status == status and verdict.failed_at == 1, verdict
    assert verdict.tests[0].status == "passed"


def test_exiting_while_loading_is_not_passing(sandbox):
    for code in ("import sys\nsys.exit(0)\n" + WRONG, "import os\nos._exit(0)\n" + WRONG):
        assert verdict_of(sandbox, code).status != "passed"


def test_an_exception_whose_message_never_ends_times_out(sandbox):
    code = ("class Slow(Exception):\n    def __str__(self):\n        while True:\n            pass\n"
            "def solve(a, b):\n    raise Slow()\n")
    verdict = verdict_of(sandbox, code, time_limits=[0.5, 0.5])
    assert verdict.status == "timeout"


def test_per_call_limits_are_the_monitors_not_the_candidates(sandbox):
    # disabling every in-process timer changes nothing: the monitor outside the process keeps the time
    code = ("import signal, time\nsignal.setitimer = lambda *a: None\nsignal.alarm = lambda *a: None\n"
            "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            "def solve(a, b):\n    time.sleep(0.4 if a == 1 else 2)\n    return a + b\n")
    verdict = verdict_of(sandbox, code, time_limits=[1.0, 1.0])
    assert verdict.status == "timeout" and verdict.message == "test 1: the call exceeded its 1.00 s limit"
    assert verdict.tests[0].status == "passed"


def test_a_huge_wrong_answer_is_judged_by_digest_and_fails(sandbox):
    big = codec.INLINE_MAX_NODES + 10
    right = f"def solve():\n    return list(range({big}))\n"
    wrong = f"def solve():\n    return list(range(1, {big} + 1))\n"
    as_floats = f"def solve():\n    return [float(i) for i in range({big})]\n"  # == to the ints: passes
    as_strings = f"def solve():\n    return [str(i) for i in range({big})]\n"
    as_tuple = f"def solve():\n    return tuple(range({big}))\n"
    codes = (right, wrong, as_floats, as_strings, as_tuple)
    verdicts = check(sandbox, [(Program(code, "solve", [()]), [list(range(big))]) for code in codes])
    assert [v.status for v in verdicts] == ["passed", "failed", "passed", "failed", "failed"]
    assert "too large to show" in verdicts[1].message


# ---- reads ------------------------------------------------------------------------------------------------

def test_an_answer_read_from_the_host_is_not_available(sandbox, secret, secret_in_home, shared_data_dir):
    readme = (REPO / "README.md").read_text()
    crux = (shared_data_dir / "cruxeval" / "cruxeval.jsonl").read_text()[:200]
    reads = [
        (f"def solve():\n    return open({str(secret_in_home)!r}).read()\n", secret),
        (f"def solve():\n    return open({str(REPO / 'README.md')!r}).read()\n", readme),
        (f"def solve():\n    return open({str(shared_data_dir / 'cruxeval' / 'cruxeval.jsonl')!r}).read()[:200]\n",
         crux),
        ("import os\ndef solve():\n    return os.environ.get('SEMCODER_TEST_SECRET')\n", secret),
        ("def solve():\n    import glob\n    return ''.join(open(p).read() for p in glob.glob('/proc/*/environ'))\n",
         secret),
    ]
    verdicts = check(sandbox, [(Program(code, "solve", [()]), [answer]) for code, answer in reads])
    assert [v.status for v in verdicts] == ["failed"] * len(reads), [v.message for v in verdicts]


def test_hidden_paths_inside_a_visible_directory_stay_hidden():
    site = Path(sysconfig.get_paths()["purelib"])
    data = site / f"_semcoder_hidden_data_{os.getpid()}"
    data.mkdir()
    try:
        (data / "answers.txt").write_text("42")
        program = f"import os\nemit(os.path.exists({str(data / 'answers.txt')!r}))"
        with Sandbox(workers=1) as shown, Sandbox(workers=1, hide=[data]) as hidden:
            assert shown.run(Job(program)).values == [True]
            assert hidden.run(Job(program)).values == [False]
            assert str(data) in hidden.hidden
    finally:
        (data / "answers.txt").unlink()
        data.rmdir()
