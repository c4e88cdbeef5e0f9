"""The release's three trace formats (``data_pipeline.builder.formats``) on small, really traced examples."""

from __future__ import annotations

import pytest

from data_pipeline.builder.formats import concise, input_state, next_style, scratchpad, state_dict
from data_pipeline.builder.trace import trace_calls
from data_pipeline.builder.types import Seed, Step, Trace
from sandbox import Sandbox

CODE = """\
LIMIT = 3

def f(s, k):
    out = []
    for ch in s:
        if ch.isdigit():
            raise ValueError(ch)
        out.append(ch * k)
    return ''.join(out)[:LIMIT * 2]
"""
SEED = Seed(id="fmt", code=CODE, entry="f", params=("s", "k"), origin="test")


@pytest.fixture(scope="module")
def traces() -> tuple[Trace, Trace]:
    with Sandbox(workers=1) as sb:
        returned, raised = trace_calls(sb, SEED, ["'abcd', 2", "'a1', 1"])
    assert isinstance(returned, Trace) and isinstance(raised, Trace)
    return returned, raised


def test_scratchpad_annotates_every_visit_that_changed_something(traces):
    assert scratchpad(SEED, traces[0]) == """\
LIMIT = 3

def f(s, k): # [INPUT] {"s": 'abcd', "k": 2} [/INPUT]
    out = [] # [STATE] {"out": []} [/STATE]
    for ch in s: # [STATE] {"ch": 'a'} [/STATE][STATE] {"ch": 'b'} [/STATE][STATE] {"ch": 'c'} [/STATE][STATE] {"ch": 'd'} [/STATE]
        if ch.isdigit():
            raise ValueError(ch)
        out.append(ch * k) # [STATE] {"out": ['aa']} [/STATE][STATE] {"out": ['aa', 'bb']} [/STATE][STATE] {"out": ['aa', 'bb', 'cc']} [/STATE][STATE] {"out": ['aa', 'bb', 'cc', 'dd']} [/STATE]
    return ''.join(out)[:LIMIT * 2] # [OUTPUT] 'aabbcc' [/OUTPUT]"""


def test_next_style_numbers_states_globally_and_elides_loops(traces):
    assert next_style(SEED, traces[0]) == """\
LIMIT = 3

def f(s, k): # [INPUT] {"s": 'abcd', "k": 2} [/INPUT]
    out = [] # [STATE-0] {"out": []} [/STATE-0]
    for ch in s: # [STATE-1] {"ch": 'a'} [/STATE-1][STATE-3] {"ch": 'b'} [/STATE-3] ... [STATE-7] {"ch": 'd'} [/STATE-7]
        if ch.isdigit():
            raise ValueError(ch)
        out.append(ch * k) # [STATE-2] {"out": ['aa']} [/STATE-2][STATE-4] {"out": ['aa', 'bb']} [/STATE-4] ... [STATE-8] {"out": ['aa', 'bb', 'cc', 'dd']} [/STATE-8]
    return ''.join(out)[:LIMIT * 2] # [OUTPUT] 'aabbcc' [/OUTPUT]"""


def test_concise_has_one_line_per_step_with_input_and_output_tags(traces):
    assert concise(SEED, traces[0]) == """\
[L3] [INPUT] {"s": 'abcd', "k": 2} [/INPUT] [/L3]
[L4] {"out": []} [/L4]
[L5] {"ch": 'a'} [/L5]
[L6] {} [/L6]
[L8] {"out": ['aa']} [/L8]
[L5] {"ch": 'b'} [/L5]
[L6] {} [/L6]
[L8] {"out": ['aa', 'bb']} [/L8]
[L5] {"ch": 'c'} [/L5]
[L6] {} [/L6]
[L8] {"out": ['aa', 'bb', 'cc']} [/L8]
[L5] {"ch": 'd'} [/L5]
[L6] {} [/L6]
[L8] {"out": ['aa', 'bb', 'cc', 'dd']} [/L8]
[L5] {} [/L5]
[L9] [OUTPUT] 'aabbcc' [/OUTPUT] [/L9]"""


def test_a_raised_exception_ends_every_format(traces):
    raised = traces[1]
    assert scratchpad(SEED, raised).splitlines()[4:8] == [
        "    for ch in s: # [STATE] {\"ch\": 'a'} [/STATE][STATE] {\"ch\": '1'} [/STATE]",
        "        if ch.isdigit():",
        "            raise ValueError(ch) # [EXCEPTION] ValueError: 1 [/EXCEPTION]",
        "        out.append(ch * k) # [STATE] {\"out\": ['a']} [/STATE]"]
    assert "[OUTPUT]" not in next_style(SEED, raised)
    assert concise(SEED, raised).splitlines()[-1] == "[L7] [EXCEPTION] ValueError: 1 [/EXCEPTION] [/L7]"


def test_a_caught_exception_shows_in_concise_only_and_values_stay_reprs():
    seed = Seed(id="c", code="def g(t):\n    try:\n        v = t[5]\n    except IndexError:\n        v = None\n    return v\n",
                entry="g", params=("t",), origin="test")
    trace = Trace("g", "(1, 'x')", "None", None, (
        Step(2, {"t": "(1, 'x')"}),
        Step(3, {"t": "(1, 'x')", "<exception>": "IndexError: tuple index out of range"}, "exception"),
        Step(4, {"t": "(1, 'x')"}),
        Step(5, {"t": "(1, 'x')", "v": "None"}),
        Step(6, {"t": "(1, 'x')", "v": "None", "<return>": "None"}, "return")), False, (2, 3, 4, 5, 6), ())
    assert concise(seed, trace) == """\
[L1] [INPUT] {"t": (1, 'x')} [/INPUT] [/L1]
[L2] {} [/L2]
[L3] [EXCEPTION] IndexError: tuple index out of range [/EXCEPTION] [/L3]
[L4] {} [/L4]
[L5] {"v": None} [/L5]
[L6] [OUTPUT] None [/OUTPUT] [/L6]"""
    assert scratchpad(seed, trace).splitlines()[4:] == ["        v = None # [STATE] {\"v\": None} [/STATE]",
                                                        "    return v # [OUTPUT] None [/OUTPUT]"]
    assert state_dict({"a b": "{1, 2}", "x": "'q\"'"}) == "{\"a b\": {1, 2}, \"x\": 'q\"'}"
    assert input_state(seed, trace) == {"t": "(1, 'x')"}
    varargs = Seed(id="v", code="def h(a, *rest, key=1):\n    return a\n", entry="h", params=("a", "*rest", "key"),
                   origin="test")
    assert input_state(varargs, Trace("h", "1, {2, 1}, 'z'", "1", None, (), False, (), ())) == {
        "a": "1", "rest": "({1, 2}, 'z')"}
