"""Line-level traces in the sandbox (``data_pipeline.builder.trace``) and the static coverage sets they are
measured against (``data_pipeline.builder.coverage``)."""

from __future__ import annotations

import time

import pytest

from data_pipeline.builder.coverage import analyze, branch_coverage, line_coverage
from data_pipeline.builder.trace import (
    TraceFailure,
    canonical_repr,
    load_error,
    parse_args,
    trace_calls,
    trace_many,
)
from data_pipeline.builder.types import Seed, Step, Trace
from sandbox import Sandbox


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2) as pool:
        yield pool


def seed_of(code: str, entry: str = "f", params: tuple[str, ...] = ("x",)) -> Seed:
    return Seed(id=entry, code=code, entry=entry, params=params, origin="test")


def only_trace(results: list) -> Trace:
    assert len(results) == 1 and isinstance(results[0], Trace), results
    return results[0]


LOOP = """\
def f(nums):
    total = 0
    for n in nums:
        total += n
    return total
"""


def test_a_loop_gives_one_step_per_line_visit_with_the_state_after_it(sb):
    trace = only_trace(trace_calls(sb, seed_of(LOOP, params=("nums",)), ["[1, 2]"]))
    assert trace.output == "3" and trace.raised is None and not trace.truncated
    assert [(s.line, s.event, s.branch) for s in trace.steps] == [
        (2, "line", None), (3, "line", True), (4, "line", None), (3, "line", True), (4, "line", None),
        (3, "line", False), (5, "return", None)]
    assert trace.steps[0].state == {"nums": "[1, 2]", "total": "0"}
    assert [s.state.get("n") for s in trace.steps[1:5]] == ["1", "1", "2", "2"]
    assert [s.state["total"] for s in trace.steps[1:5]] == ["0", "1", "1", "3"]
    assert trace.steps[-1].state == {"nums": "[1, 2]", "total": "3", "n": "2", "<return>": "3"}
    assert trace.lines == (2, 3, 4, 5) and trace.branches == ((3, False), (3, True))
    assert Trace.from_json(trace.to_json()) == trace


def test_a_loop_that_ends_the_function_exits_then_returns_on_its_head(sb):
    code = "def f(xs):\n    out = []\n    for x in xs:\n        out.append(x)\n"
    trace = only_trace(trace_calls(sb, seed_of(code, params=("xs",)), ["[7]"]))
    assert [(s.line, s.event, s.branch) for s in trace.steps] == [
        (2, "line", None), (3, "line", True), (4, "line", None), (3, "line", False), (3, "return", None)]
    assert trace.output == "None" and trace.steps[-1].state["<return>"] == "None"


def test_if_elif_else_and_while_branch_outcomes(sb):
    code = """\
def f(x):
    k = 0
    while k < 2:
        k += 1
    if x > 0:
        return 'pos'
    elif x < 0:
        return 'neg'
    else:
        return 'zero'
"""
    seed = seed_of(code)
    runs = trace_calls(sb, seed, ["1", "-1", "0"])
    assert [r.output for r in runs] == ["'pos'", "'neg'", "'zero'"]
    assert runs[0].branches == ((3, False), (3, True), (5, True))
    assert runs[1].branches == ((3, False), (3, True), (5, False), (7, True))
    assert runs[2].branches == ((3, False), (3, True), (5, False), (7, False))
    assert [s.line for s in runs[2].steps] == [2, 3, 4, 3, 4, 3, 5, 7, 10]
    assert line_coverage(seed, runs) == 1.0 and branch_coverage(seed, runs) == 1.0
    assert line_coverage(seed, runs[:1]) == 5 / 8 and branch_coverage(seed, runs[:1]) == 3 / 6


def test_helper_calls_are_one_step_and_recursion_is_not_traced(sb):
    code = """\
def helper(a):
    b = a * 2
    return b

def f(n):
    if n <= 0:
        return 0
    y = helper(n)
    return y + f(n - 1)
"""
    trace = only_trace(trace_calls(sb, seed_of(code, params=("n",)), ["2"]))
    assert trace.output == "6"
    assert [s.line for s in trace.steps] == [6, 8, 9]  # only the outer frame of f; nothing from helper
    assert trace.steps[1].state == {"n": "2", "y": "4"}


def test_a_global_defined_in_the_seed_is_visible(sb):
    code = "SCALE = 3\nTABLE = {'a': 1}\n\ndef f(x):\n    return SCALE * x + TABLE['a']\n"
    assert only_trace(trace_calls(sb, seed_of(code), ["2"])).output == "7"


def test_an_infinite_loop_times_out_and_the_other_calls_still_run(sb):
    code = "def f(n):\n    while n != 0:\n        n -= 1\n    return 'done'\n"
    seed = seed_of(code, params=("n",))
    start = time.monotonic()
    runs = trace_calls(sb, seed, ["2", "-1", "3"], timeout_s=0.5, max_steps=10**9)
    assert time.monotonic() - start < 5
    assert isinstance(runs[1], TraceFailure) and runs[1].reason == "timeout" and runs[1].args == "-1"
    assert [r.output for r in (runs[0], runs[2])] == ["'done'", "'done'"]


def test_a_call_past_max_steps_is_aborted_and_marked_truncated(sb):
    code = "def f(n):\n    while n != 0:\n        n -= 1\n    return 'done'\n"
    trace = only_trace(trace_calls(sb, seed_of(code, params=("n",)), ["-1"], max_steps=50))
    assert trace.truncated and trace.output is None and trace.raised is None and len(trace.steps) == 50


def test_long_values_are_capped_and_mark_the_trace_truncated(sb):
    code = "def f(n):\n    s = 'ab' * n\n    return len(s)\n"
    short, long = trace_calls(sb, seed_of(code, params=("n",)), ["3", "200"], max_repr=20)
    assert not short.truncated and short.steps[0].state["s"] == "'ababab'"
    assert long.truncated and long.output == "400"
    assert long.steps[0].state["s"] == "'abababababababababa..." and len(long.steps[0].state["s"]) == 23


def test_exceptions_caught_in_the_frame_and_escaping_it(sb):
    code = """\
def f(x):
    try:
        y = 10 // x
    except ZeroDivisionError:
        y = -1
    if y > 5:
        raise ValueError('big')
    return y
"""
    caught, escaped = trace_calls(sb, seed_of(code), ["0", "1"])
    assert caught.output == "-1" and caught.raised is None
    assert [(s.line, s.event) for s in caught.steps] == [
        (2, "line"), (3, "exception"), (4, "line"), (5, "line"), (6, "line"), (8, "return")]
    assert caught.steps[1].state["<exception>"] == "ZeroDivisionError: integer division or modulo by zero"
    assert escaped.output is None and escaped.raised == "ValueError: big"
    assert escaped.steps[-1] == Step(7, {"x": "1", "y": "10", "<exception>": "ValueError: big"}, "exception")


def test_a_multi_line_statement_is_one_step_on_its_first_line(sb):
    code = "def f(x):\n    y = (x +\n         1 +\n         x)\n    return [y,\n            y]\n"
    trace = only_trace(trace_calls(sb, seed_of(code), ["1"]))
    assert [(s.line, s.event) for s in trace.steps] == [(2, "line"), (5, "return")]
    assert trace.output == "[3, 3]"


def test_outputs_and_states_are_canonical_so_sets_compare_as_values(sb):
    code = "def f(words):\n    seen = set(words)\n    return seen, frozenset(words), {w: 1 for w in words}\n"
    seed = seed_of(code, params=("words",))
    a, b = trace_calls(sb, seed, ["['pear', 'apple', 'fig']", "['fig', 'pear', 'apple']"])
    assert a.steps[0].state["seen"] == b.steps[0].state["seen"] == "{'apple', 'fig', 'pear'}"
    assert a.output == ("({'apple', 'fig', 'pear'}, frozenset({'apple', 'fig', 'pear'}), "
                        "{'pear': 1, 'apple': 1, 'fig': 1})")
    assert a.output.rsplit("), {", 1)[0] == b.output.rsplit("), {", 1)[0]  # sets agree; dicts keep insertion order


def test_canonical_repr():
    assert canonical_repr({3, 1, 2}) == "{1, 2, 3}"
    assert canonical_repr({"b", "a"}) == "{'a', 'b'}" and canonical_repr(set()) == "set()"
    assert canonical_repr([(1,), {"k": frozenset()}, None, 1.5, b"x"]) == "[(1,), {'k': frozenset()}, None, 1.5, b'x']"
    loop: list = [1]
    loop.append(loop)
    assert canonical_repr(loop) == "[1, [...]]"
    assert " at 0x" not in canonical_repr(object()) and canonical_repr(object()) == "<object object>"
    assert canonical_repr("x" * 50, limit=10) == repr("x" * 10)[:10] + "..."
    assert canonical_repr(list(range(100)), limit=12) == "[0, 1, 2, 3,..."
    assert canonical_repr({10, 3, -1.5}) == "{-1.5, 3, 10}" and canonical_repr({(2,), "a"}) == "{'a', (2,)}"


def test_fresh_reloads_the_program_for_every_call(sb):
    code = "COUNT = [0]\n\ndef f(x):\n    COUNT[0] += 1\n    return x + COUNT[0]\n"
    seed = seed_of(code)
    assert [r.output for r in trace_calls(sb, seed, ["10", "10", "10"])] == ["11", "12", "13"]
    assert [r.output for r in trace_calls(sb, seed, ["10", "10", "10"], fresh=True)] == ["11", "11", "11"]


def test_load_errors_bad_arguments_and_crashes_are_failures(sb):
    broken = seed_of("import no_such_module_here\n\ndef f(x):\n    return x\n")
    runs = trace_calls(sb, broken, ["1", "2"])
    assert [(r.reason, r.detail) for r in runs] == [
        ("load_error", "ModuleNotFoundError: No module named 'no_such_module_here'")] * 2
    assert load_error(sb, broken) == "ModuleNotFoundError: No module named 'no_such_module_here'"
    assert load_error(sb, seed_of("def g(x):\n    return x\n")) == "NameError: the code does not define 'f'"
    assert load_error(sb, seed_of("def f(x):\n    return x\n")) is None
    bad = trace_calls(sb, seed_of("def f(x):\n    return x\n"), ["[1] * 3", "", "1"])
    assert [getattr(r, "reason", None) for r in bad] == ["bad_args", None, None]
    assert bad[1].raised == "TypeError: f() missing 1 required positional argument: 'x'"
    crash = "import os\n\ndef f(x):\n    if x:\n        os._exit(3)\n    return x\n"
    runs = trace_calls(sb, seed_of(crash), ["0", "1", "0"])
    assert runs[1].reason == "crashed" and "status 3" in runs[1].detail
    assert [runs[0].output, runs[2].output] == ["0", "0"]


def test_trace_many_runs_seeds_in_parallel_in_order(sb):
    square = seed_of("def f(x):\n    return x * x\n")
    neg = seed_of("def g(x):\n    return -x\n", entry="g")
    got = trace_many(sb, [(square, ["2", "3"]), (neg, []), (neg, ["5"])])
    assert [[r.output for r in rs] for rs in got] == [["4", "9"], [], ["-5"]]
    assert got[2][0].entry == "g"


def test_parse_args():
    assert parse_args("'a', [1, 2]") == ("a", [1, 2]) and parse_args("") == () and parse_args("(1,)") == ((1,),)
    with pytest.raises(ValueError):
        parse_args("x + 1")


# ---- static coverage sets ---------------------------------------------------------------------------------

def test_executable_lines_skip_the_def_docstring_else_and_code_without_bytecode():
    code = '''\
import os

def f(xs, n):
    """Doc."""
    global G
    total = 0
    for x in xs:
        if x > n: total += 1
        elif x < 0:
            pass
        else:
            total -= 1
    try:
        y = (total +
             1)
    except ZeroDivisionError:
        y = 0
    finally:
        z = 3
    while True:
        break
    return y
    unreachable = 1
'''
    static = analyze(code, "f")
    assert static.def_line == 3
    assert sorted(static.lines) == [6, 7, 8, 9, 10, 12, 13, 14, 16, 17, 19, 20, 21, 22]
    assert static.stmt_of[15] == 14
    assert static.heads == {7: 8, 9: 10, 20: 21}  # the one-line `if x > n: ...` has no observable outcome
    assert sorted(static.branches) == [(7, False), (7, True), (9, False), (9, True), (20, True)]


def test_coverage_of_hand_written_traces():
    seed = seed_of("def f(x):\n    if x:\n        return 1\n    return 2\n")
    def run(lines, branches):
        return Trace("f", "0", "2", None, (), False, lines, branches)
    assert line_coverage(seed, []) == 0.0 and branch_coverage(seed, []) == 0.0
    assert line_coverage(seed, [run((2, 4), ((2, False),))]) == 2 / 3
    assert branch_coverage(seed, [run((2, 4), ((2, False),)), run((2, 3), ((2, True),))]) == 1.0
    flat = seed_of("def f(x):\n    return x\n")
    assert branch_coverage(flat, []) == 1.0 and line_coverage(flat, [run((2,), ())]) == 1.0
    with pytest.raises(ValueError):
        analyze("def g():\n    pass\n", "f")
