"""Monologues: the released layout from hand-built traces, and acceptance of scripted teacher replies."""

from __future__ import annotations

import dataclasses

import pytest

from data_pipeline.builder import monologue as mono
from data_pipeline.builder.types import Seed, Step, Trace
from data_pipeline.prompts import render_prompt
from data_pipeline.records import record_from_fields

CLAMP = Seed(id="clamp", code=(
    "def clamp_all(nums):\n"
    "    res = []\n"
    "    for n in nums:\n"
    "        res.append(min(max(n, 1), 8))\n"
    "    return res\n"), entry="clamp_all", params=("nums",), origin="test")


def make_trace(seed: Seed, args: str, output: str | None, steps: list[Step], *, raised: str | None = None,
               truncated: bool = False) -> Trace:
    """A Trace as the tracer writes it: full state after each step, lines and branch outcomes collected."""
    return Trace(entry=seed.entry, args=args, output=output, raised=raised, steps=tuple(steps),
                 truncated=truncated, lines=tuple(sorted({s.line for s in steps})),
                 branches=tuple(sorted({(s.line, s.branch) for s in steps if s.branch is not None})))


def clamp_trace() -> Trace:
    a = {"nums": "[5, -1]"}
    return make_trace(CLAMP, "[5, -1]", "[5, 1]", [
        Step(2, {**a, "res": "[]"}),
        Step(3, {**a, "res": "[]", "n": "5"}, branch=True),
        Step(4, {**a, "res": "[5]", "n": "5"}),
        Step(3, {**a, "res": "[5]", "n": "-1"}, branch=True),
        Step(4, {**a, "res": "[5, 1]", "n": "-1"}),
        Step(3, {**a, "res": "[5, 1]", "n": "-1"}, branch=False),
        Step(5, {**a, "res": "[5, 1]", "n": "-1", "<return>": "[5, 1]"}, event="return"),
    ])


# A loop, a branch with elif/else, a helper called as one step, an exception raised and caught.
MIXED = Seed(id="mixed", code=(
    "def double(v):\n"
    "    return v * 2\n"
    "\n"
    "\n"
    "def scan(nums, target):\n"
    "    res = []\n"
    "    for i, n in enumerate(nums):\n"
    "        if n == target:\n"
    "            return i\n"
    "        elif n > 5:\n"
    "            res.append(double(n))\n"
    "        else:\n"
    "            continue\n"
    "    try:\n"
    "        x = int('z')\n"
    "    except ValueError:\n"
    "        x = -1\n"
    "    return res\n"), entry="scan", params=("nums", "target"), origin="test",
    doc="Collect the doubles of big numbers, or find the target.\n\n>>> scan([7], 1)\n[14]")


def mixed_trace() -> Trace:
    a = {"nums": "[1, 7]", "target": "9"}
    return make_trace(MIXED, "[1, 7], 9", "[14]", [
        Step(6, {**a, "res": "[]"}),
        Step(7, {**a, "res": "[]", "i": "0", "n": "1"}, branch=True),
        Step(8, {**a, "res": "[]", "i": "0", "n": "1"}, branch=False),
        Step(10, {**a, "res": "[]", "i": "0", "n": "1"}, branch=False),
        Step(13, {**a, "res": "[]", "i": "0", "n": "1"}),
        Step(7, {**a, "res": "[]", "i": "1", "n": "7"}, branch=True),
        Step(8, {**a, "res": "[]", "i": "1", "n": "7"}, branch=False),
        Step(10, {**a, "res": "[]", "i": "1", "n": "7"}, branch=True),
        Step(11, {**a, "res": "[14]", "i": "1", "n": "7"}),
        Step(7, {**a, "res": "[14]", "i": "1", "n": "7"}, branch=False),
        Step(14, {**a, "res": "[14]", "i": "1", "n": "7"}),
        Step(15, {**a, "res": "[14]", "i": "1", "n": "7",
                  "<exception>": "ValueError: invalid literal for int() with base 10: 'z'"}, event="exception"),
        Step(16, {**a, "res": "[14]", "i": "1", "n": "7"}),
        Step(17, {**a, "res": "[14]", "i": "1", "n": "7", "x": "-1"}),
        Step(18, {**a, "res": "[14]", "i": "1", "n": "7", "x": "-1", "<return>": "[14]"}, event="return"),
    ])


# A while loop over a parameter that the function reassigns.
DIGITS = Seed(id="digits", code=(
    "def digit_sum(n):\n"
    "    total = 0\n"
    "    while n > 0:\n"
    "        total += n % 10\n"
    "        n //= 10\n"
    "    return total\n"), entry="digit_sum", params=("n",), origin="test")


def digits_trace() -> Trace:
    return make_trace(DIGITS, "42", "6", [
        Step(2, {"n": "42", "total": "0"}),
        Step(3, {"n": "42", "total": "0"}, branch=True),
        Step(4, {"n": "42", "total": "2"}),
        Step(5, {"n": "4", "total": "2"}),
        Step(3, {"n": "4", "total": "2"}, branch=True),
        Step(4, {"n": "4", "total": "6"}),
        Step(5, {"n": "0", "total": "6"}),
        Step(3, {"n": "0", "total": "6"}, branch=False),
        Step(6, {"n": "0", "total": "6", "<return>": "6"}, event="return"),
    ])


# The function falls off its end: the last statement is the loop head (the tracer's two steps on it).
FILL = Seed(id="fill", code=(
    "def fill(d, keys):\n"
    "    for k in keys:\n"
    "        d[k] = len(k)\n"), entry="fill", params=("d", "keys"), origin="test")


def fill_trace() -> Trace:
    return make_trace(FILL, "{}, ['ab']", "None", [
        Step(2, {"d": "{}", "keys": "['ab']", "k": "'ab'"}, branch=True),
        Step(3, {"d": "{'ab': 2}", "keys": "['ab']", "k": "'ab'"}),
        Step(2, {"d": "{'ab': 2}", "keys": "['ab']", "k": "'ab'"}, branch=False),
        Step(2, {"d": "{'ab': 2}", "keys": "['ab']", "k": "'ab'", "<return>": "None"}, event="return"),
    ])


CASES = [(CLAMP, clamp_trace), (MIXED, mixed_trace), (DIGITS, digits_trace), (FILL, fill_trace)]


# ---- layout ---------------------------------------------------------------------------------------------


def test_forward_record_has_the_released_layout():
    record = mono.forward_record(CLAMP, clamp_trace())
    assert set(record) == {"nl", "fwd_mnl", "bwd_mnl", "response"}
    assert record["nl"] == record["bwd_mnl"] == ""
    assert record["fwd_mnl"] == "[PYTHON]\n" + CLAMP.code + "assert clamp_all([5, -1]) == ??\n[/PYTHON]"
    response = record["response"]
    heads = ["[MONOLOGUE]\n### Understanding the Function\n", "\n### Key Properties and Constraints\n",
             "\n### Execution Simulation\n", "\n[/MONOLOGUE]\n[ANSWER]\n"]
    assert [response.index(h) for h in heads] == sorted(response.index(h) for h in heads)
    assert response.startswith(heads[0])
    assert response.endswith("[/MONOLOGUE]\n[ANSWER]\nassert clamp_all([5, -1]) == [5, 1]\n[/ANSWER]")
    simulation = response.split("### Execution Simulation\n")[1].split("\n\n")[0].splitlines()
    assert simulation == [
        "Let's simulate `clamp_all([5, -1])` line by line, starting with `nums` = [5, -1].",
        "- [L2]: `res = []`: `res` = [].",
        "- [L3]: `for n in nums:`: the loop takes `n` = 5.",
        "- [L4]: `res.append(min(max(n, 1), 8))`: `res` = [5].",
        "- [L3]: `for n in nums:`: the loop takes `n` = -1.",
        "- [L4]: `res.append(min(max(n, 1), 8))`: `res` = [5, 1].",
        "- [L3]: `for n in nums:`: the loop is exhausted.",
        "- [L5]: `return res`: the function returns [5, 1].",
    ]
    parsed = record_from_fields(record, "built", 1)
    assert parsed.task == "exec_o" and parsed.instruction == record["fwd_mnl"]
    assert render_prompt("exec_o", parsed.instruction).startswith("Simulate the Execution:")


def test_backward_record_has_the_released_layout():
    record = mono.backward_record(CLAMP, clamp_trace())
    assert record["nl"] == record["fwd_mnl"] == ""
    assert record["bwd_mnl"] == "[PYTHON]\n" + CLAMP.code + "assert clamp_all(??) == [5, 1]\n[/PYTHON]"
    response = record["response"]
    heads = ["[MONOLOGUE]\n### Understanding the Function\n", "\n### Key Properties and Constraints\n",
             "\n### Reverse Deduction\n", "\n[/MONOLOGUE]\n[ANSWER]\n"]
    assert [response.index(h) for h in heads] == sorted(response.index(h) for h in heads)
    assert response.endswith("[ANSWER]\nassert clamp_all([5, -1]) == [5, 1]\n[/ANSWER]")
    deduction = response.split("### Reverse Deduction\n")[1].split("\n\n")[0].splitlines()
    assert deduction[0] == "- The output [5, 1] is returned by `return res` at [L5], so `res` = [5, 1] just " \
                           "before it."
    assert deduction[1] == "- The loop `for n in nums:` at [L3] had run out of items."
    assert deduction[2] == "- [L4] `res.append(min(max(n, 1), 8))` left `res` = [5, 1]; before it, `res` = [5]."
    assert deduction[-1] == "- Tracing back to the start, the arguments must be `nums` = [5, -1]."
    assert len(deduction) == len(clamp_trace().steps) + 1
    assert record_from_fields(record, "built", 1).task == "exec_i"


def test_general_functions_narrate_every_step():
    record = mono.forward_record(MIXED, mixed_trace())
    text = record["response"]
    assert record["fwd_mnl"].endswith("assert scan([1, 7], 9) == ??\n[/PYTHON]")
    assert "the condition `n == target` evaluates to False (`n` = 1, `target` = 9), so control moves to the " \
           "`elif` at [L10]" in text
    assert "the condition `n > 5` evaluates to False (`n` = 1), so the `else` branch runs" in text
    assert "- [L13]: `continue`: `continue` goes back to the loop head." in text
    assert "- [L11]: `res.append(double(n))`: `res` = [14]." in text  # the helper call is one step
    assert "- [L15]: `x = int('z')`: an exception is raised (ValueError: invalid literal" in text
    assert "- [L16]: `except ValueError:`: the handler matches, so its body runs." in text
    assert "Calls to `double` are simulated as single steps" in text
    simulation = text.split("### Execution Simulation\n")[1].split("\n\n")[0].splitlines()
    assert len(simulation) == 1 + len(mixed_trace().steps)
    while_text = mono.forward_record(DIGITS, digits_trace())["response"]
    assert "the condition `n > 0` evaluates to True (`n` = 42), so the loop body runs" in while_text
    assert "- [L5]: `n //= 10`: `n` = 4." in while_text
    assert "the condition `n > 0` evaluates to False (`n` = 0), so the loop ends" in while_text
    fill_text = mono.forward_record(FILL, fill_trace())["response"]
    assert "- [L2]: `for k in keys:`: the loop is exhausted.\n- [L2]: `for k in keys:`: the end of the function " \
           "is reached; the function returns None." in fill_text
    assert fill_text.endswith("assert fill({}, ['ab']) == None\n[/ANSWER]")


def test_a_step_on_the_def_line_is_the_start_of_the_call():
    # CPython reports the prologue of some functions (cells, generators) on the ``def`` line
    trace = clamp_trace()
    steps = (Step(1, {"nums": "[5, -1]"}), *trace.steps)
    record = mono.forward_record(CLAMP, dataclasses.replace(trace, steps=steps))
    assert "- [L1]: `def clamp_all(nums):`: the call begins.\n- [L2]: `res = []`" in record["response"]


def test_understanding_comes_from_the_docstring_or_the_structure():
    with_doc = mono.forward_record(MIXED, mixed_trace())["response"]
    assert 'Its docstring says: "Collect the doubles of big numbers, or find the target."' in with_doc
    assert ">>>" not in with_doc
    plain = mono.forward_record(CLAMP, clamp_trace())["response"]
    understanding = plain.split("### Understanding the Function\n")[1].split("\n\n")[0]
    assert understanding == ("The function `clamp_all(nums)` takes 1 parameter: `nums`. It contains a `for` loop "
                             "over `nums` ([L3]). It returns `res` ([L5]).")
    given = mono.forward_record(CLAMP, clamp_trace(), understanding="It clamps every number into [1, 8].")
    assert "### Understanding the Function\nIt clamps every number into [1, 8].\n" in given["response"]


def test_no_deterministic_monologue_when_the_trace_cannot_give_a_complete_one():
    trace = clamp_trace()
    long_steps = [Step(2, {"nums": "[]", "res": "[]"})] * (mono.MAX_NARRATED_STEPS + 1)
    assert mono.forward_record(CLAMP, dataclasses.replace(trace, steps=tuple(long_steps))) is None
    assert mono.backward_record(CLAMP, dataclasses.replace(trace, truncated=True)) is None
    assert mono.forward_record(CLAMP, dataclasses.replace(trace, output=None, raised="ValueError: x")) is None
    capped = (Step(2, {"nums": "[5, -1]", "res": "'aaaa..."}), *trace.steps[1:])
    assert mono.forward_record(CLAMP, dataclasses.replace(trace, steps=capped)) is None
    assert mono.forward_record(CLAMP, dataclasses.replace(trace, output="<object>")) is None


@pytest.mark.parametrize("seed,make", CASES, ids=[s.id for s, _ in CASES])
def test_deterministic_monologues_pass_their_own_checks(seed, make):
    trace = make()
    forward = mono.forward_record(seed, trace)
    verdict = mono.check_forward(forward["response"], seed, trace)
    assert verdict == mono.Verdict(True, "accepted", [], verdict.checked) and verdict.checked >= 3
    backward = mono.backward_record(seed, trace)
    calls: list[str] = []

    def run(args: str) -> str:
        calls.append(args)
        return trace.output

    verdict = mono.check_backward(backward["response"], seed, trace.output, run)
    assert verdict.accepted and verdict.reason == "accepted" and verdict.checked == len(seed.params)
    assert calls == [trace.args]
    full = mono.check_backward(backward["response"], seed, trace.output, run, trace_of=lambda _args: trace)
    assert full.accepted and full.checked > verdict.checked


# ---- teacher prompts --------------------------------------------------------------------------------------


def test_teacher_prompts_give_code_and_input_or_output_never_the_description():
    forward = mono.forward_prompt(MIXED, "[1, 7], 9")
    assert "[PYTHON]\n" + MIXED.code + "assert scan([1, 7], 9) == ??\n[/PYTHON]" in forward
    assert "### Execution Simulation" in forward and forward.endswith("[MONOLOGUE]\n")
    backward = mono.backward_prompt(MIXED, "[14]")
    assert "[PYTHON]\n" + MIXED.code + "assert scan(??) == [14]\n[/PYTHON]" in backward
    assert "### Reverse Deduction" in backward
    for prompt in (forward, backward):
        assert "Collect the doubles" not in prompt


# ---- parsing and acceptance -------------------------------------------------------------------------------


@pytest.mark.parametrize("reply,expected", [
    ("[ANSWER]\nassert clamp_all([5, -1]) == [5, 1]\n[/ANSWER]", ("[5, -1]", "[5, 1]")),
    ("[ANSWER]   assert   clamp_all( [5,-1] )==[5,1]   [/ANSWER]", ("[5,-1]", "[5,1]")),
    ("[ANSWER]\n```python\nassert clamp_all([5, -1]) == [\n  5, 1]\n```\n[/ANSWER]", ("[5, -1]", "[\n  5, 1]")),
    ("[ANSWER]\nassert clamp_all(nums=[1]) == [1]\nThat is all.\n[/ANSWER]", ("nums=[1]", "[1]")),
    ("[ANSWER] assert clamp_all([1]) == [0] [/ANSWER] ... [ANSWER] assert clamp_all([1]) == [1] [/ANSWER]",
     ("[1]", "[1]")),
    ("[ANSWER]\nassert clamp_all([1]) == [1]", ("[1]", "[1]")),  # closing tag cut off by the length limit
    ("assert clamp_all([1]) == [1]", (None, None)),  # no answer block
    ("[ANSWER]\nassert clamp_all([1]) == ??\n[/ANSWER]", (None, None)),
    ("[ANSWER]\nassert f([1]) == [1]\n[/ANSWER]", (None, "[1]")),  # another function's name
    ("[ANSWER]\nassert clamp_all(list(range(3))) == [1, 2]\n[/ANSWER]", (None, "[1, 2]")),
    ("[ANSWER]\nassert clamp_all([1]) == sorted([1])\n[/ANSWER]", ("[1]", None)),
])
def test_parse_answer(reply, expected):
    assert mono.parse_answer(reply, "clamp_all") == expected


def teacher_reply(middle: str, answer: str = "[5, 1]", args: str = "[5, -1]") -> str:
    return ("[MONOLOGUE]\n### Understanding the Function\nIt clamps numbers; for example if `n` = 100 it gives 8.\n\n"
            "### Execution Simulation\n" + middle + "\n[/MONOLOGUE]\n[ANSWER]\nassert clamp_all(" + args + ") == "
            + answer + "\n[/ANSWER]")


RIGHT_STEPS = """1. [L2]: `res = []` starts an empty list, so `res` is [].
2. [L3]: The loop starts with `n` = 5.
3. [L4]: `min(max(5, 1), 8)` = 5, so `res` becomes [5].
4. [L3]: Next iteration, n is -1.
5. [L4]: max(-1, 1) = 1 and min(1, 8) = 1, so res is updated to [5, 1].
6. [L5]: The function returns [5, 1]."""


def test_check_forward_accepts_a_right_answer_with_right_steps():
    verdict = mono.check_forward(teacher_reply(RIGHT_STEPS), CLAMP, clamp_trace())
    assert verdict.accepted and verdict.reason == "accepted" and not verdict.flagged
    # `res` is [], `n` = 5, `res` becomes [5], n is -1, res is updated to [5, 1]; the quoted line `res = []` and
    # `min(max(5, 1), 8)` = 5 are not claims about a variable
    assert verdict.checked == 5


def test_check_forward_rejects_a_right_answer_reached_through_wrong_steps():
    wrong = RIGHT_STEPS.replace("`res` becomes [5]", "`res` becomes [5, 5]")
    reply = teacher_reply(wrong)
    verdict = mono.check_forward(reply, CLAMP, clamp_trace())
    assert not verdict.accepted and verdict.reason == "wrong_steps"
    assert verdict.wrong_claims == [("res", "[5, 5]")]
    flagged = mono.check_forward(reply, CLAMP, clamp_trace(), flag_only=True)
    assert flagged.accepted and flagged.reason == "wrong_steps" and flagged.flagged


def test_check_forward_rejects_wrong_or_missing_answers():
    trace = clamp_trace()
    assert mono.check_forward(teacher_reply(RIGHT_STEPS, "[5, 8]"), CLAMP, trace).reason == "wrong_answer"
    assert mono.check_forward(teacher_reply(RIGHT_STEPS, "(5, 1)"), CLAMP, trace).reason == "wrong_answer"
    assert mono.check_forward(teacher_reply(RIGHT_STEPS, args="[5, -2]"), CLAMP, trace).reason == "wrong_answer"
    no_block = teacher_reply(RIGHT_STEPS).split("[ANSWER]")[0] + "So the answer is [5, 1]."
    assert mono.check_forward(no_block, CLAMP, trace) == mono.Verdict(False, "no_answer")
    # an answer is compared as a value: spacing and quotes do not matter, types do
    assert mono.check_forward(teacher_reply(RIGHT_STEPS, "[5,1]"), CLAMP, trace).accepted
    bools = dataclasses.replace(trace, output="[True, 1]")
    assert mono.check_forward(teacher_reply("", "[1, 1]"), CLAMP, bools).reason == "wrong_answer"


def test_only_the_simulation_section_is_checked():
    # the Understanding section's example (`n` = 100) is not a claim about this run
    assert mono.check_forward(teacher_reply(RIGHT_STEPS), CLAMP, clamp_trace()).wrong_claims == []
    no_heading = teacher_reply(RIGHT_STEPS).replace("### Execution Simulation\n", "")
    assert mono.check_forward(no_heading, CLAMP, clamp_trace()).wrong_claims == [("n", "100")]


@pytest.mark.parametrize("text,claims", [
    ("`x` = 5", [("x", "5")]),
    ("x is 5", [("x", "5")]),
    ("then x becomes [1, 2].", [("x", "[1, 2]")]),
    ("x is updated to 'ab'", [("x", "'ab'")]),
    ("x is now 3, and y is still -2.5", [("x", "3"), ("y", "-2.5")]),
    ("- [L4]: `res.append(n)`: `res` = [5].", [("res", "[5]")]),
    ("the loop takes `i` = 2, `n` = 8.", [("i", "2"), ("n", "8")]),
    ("`total` = 0 + 5 = 5", [("total", "5")]),
    ("`x` = len(nums) = 3, so", [("x", "3")]),
    ("`x` = 5 (the first item)", [("x", "5")]),
    ("x equals {'a': (1, 2)}; y was None", [("x", "{'a': (1, 2)}"), ("y", "None")]),
    ("`s` = 'x = 5' now", [("s", "'x = 5'")]),  # text inside a string is not a claim
    ("the condition `x > y` is True", []),  # `y` is part of an expression, not a variable
    ("the test `x is None` holds, so `y` = 2", [("y", "2")]),  # an expression in backticks states nothing
    ("`x` is a list, so y = 3", [("y", "3")]),  # "a list" is no literal, and no chain runs across words
    ("it is 5 and `it` is 6", [("it", "6")]),  # plain English words are not variables
    ("we set `x = 0` here", []),  # quoting the program's line `x = 0` is not a claim
    ("we set `x = 1` here", [("x", "1")]),
    ("`z` = 4", []),  # not a traced variable
    ("x = `[1, 2]`", [("x", "[1, 2]")]),
    ("x == 5 and x <= 4", []),
])
def test_extract_claims(text, claims):
    quotes = mono._Source("def g(x, y, s, it, i, n, res, total):\n    x = 0\n    return x\n", "g").quotes
    names = {"x", "y", "s", "it", "i", "n", "res", "total"}
    assert mono.extract_claims(text, names, quotes) == claims


def test_claims_allow_rounded_floats_but_not_other_types():
    seed = Seed(id="avg", code="def avg(a, b):\n    m = (a + b) / 3\n    return m\n", entry="avg",
                params=("a", "b"), origin="test")
    trace = make_trace(seed, "1, 0", "0.3333333333333333", [
        Step(2, {"a": "1", "b": "0", "m": "0.3333333333333333"}),
        Step(3, {"a": "1", "b": "0", "m": "0.3333333333333333", "<return>": "0.3333333333333333"},
             event="return")])

    def reply(claim: str) -> str:
        return ("### Execution Simulation\n" + claim + "\n[ANSWER]\nassert avg(1, 0) == 0.3333333333333333\n"
                "[/ANSWER]")

    assert mono.check_forward(reply("`m` = 0.333"), seed, trace).accepted
    assert mono.check_forward(reply("`m` = 0.334"), seed, trace).reason == "wrong_steps"
    assert mono.check_forward(reply("`m` = '0.333'"), seed, trace).reason == "wrong_steps"
    assert mono.check_forward(reply("`a` = True"), seed, trace).reason == "wrong_steps"


BACKWARD_REPLY = """[MONOLOGUE]
### Understanding the Function
It sums the decimal digits of `n`.
### Reverse Deduction
- The output 6 is `total` at [L6], so the digits must add up to 6.
- One way: the last step added 4 with `n` = 4, the step before added 2 with `n` = {mid}.
- So `n` = {arg} at the start.
### Conclusion
[/MONOLOGUE]
[ANSWER]
assert digit_sum({arg}) == {out}
[/ANSWER]"""


def test_check_backward_runs_the_deduced_input():
    def reply(arg="42", mid="42", out="6"):
        return BACKWARD_REPLY.format(arg=arg, mid=mid, out=out)

    outputs = {"42": "6", "15": "6", "7": "7"}
    ran: list[str] = []

    def run(args: str) -> str | None:
        ran.append(args)
        return outputs.get(args)

    assert mono.check_backward(reply(), DIGITS, "6", run) == mono.Verdict(True, "accepted", [], 1)
    assert ran == ["42"]
    # a different input that also gives 6 is just as right
    assert mono.check_backward(reply("15", "15"), DIGITS, "6", run).accepted
    # the deduced input gives another output, or does not run
    assert mono.check_backward(reply("7", "7"), DIGITS, "6", run).reason == "wrong_answer"
    assert mono.check_backward(reply("99", "99"), DIGITS, "6", run).reason == "wrong_answer"
    # the answer changed the output it was given
    assert mono.check_backward(reply(out="7"), DIGITS, "6", run).reason == "wrong_answer"
    assert mono.check_backward("no answer at all", DIGITS, "6", run) == mono.Verdict(False, "no_answer")
    # the last value stated for a parameter must be the deduced argument
    wrong = reply().replace("So `n` = 42 at the start", "So `n` = 24 at the start")
    verdict = mono.check_backward(wrong, DIGITS, "6", run)
    assert verdict.reason == "wrong_steps" and not verdict.accepted and verdict.wrong_claims == [("n", "24")]
    assert mono.check_backward(wrong, DIGITS, "6", run, flag_only=True).flagged
    # with the deduced run's trace every stated value is checked: `n` = 41 never happens when n starts at 42
    bad_middle = reply(mid="41")
    assert mono.check_backward(bad_middle, DIGITS, "6", run).accepted
    checked = mono.check_backward(bad_middle, DIGITS, "6", run, trace_of=lambda args: digits_trace())
    assert checked.reason == "wrong_steps" and checked.wrong_claims == [("n", "41")]


# ---- real traces ------------------------------------------------------------------------------------------

REAL = [
    (MIXED, ["[1, 7], 9", "[2, 3], 3", "[], 0"]),
    (DIGITS, ["907", "0"]),
    (FILL, ["{}, ['ab', 'c']"]),
    (Seed(id="words", code=(
        "def tally(text, stop=('a', 'the')):\n"
        "    counts = {}\n"
        "    seen = set()\n"
        "    for w in text.lower().split():\n"
        "        if w in stop:\n"
        "            continue\n"
        "        counts[w] = counts.get(w, 0) + 1\n"
        "        seen.add(w[0])\n"
        "        if len(seen) > 2:\n"
        "            break\n"
        "    pairs = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))\n"
        "    return [k for k, _ in pairs][:3], len(seen)\n"), entry="tally", params=("text", "stop"),
        origin="test"), ["'The cat saw a cat'", "'x y z w v', ()", "''"]),
]


def test_records_from_real_traces_pass_their_own_checks():
    sandbox_mod = pytest.importorskip("sandbox")
    from data_pipeline.builder import trace as trace_lib

    try:
        sandbox = sandbox_mod.Sandbox(workers=1)
    except sandbox_mod.SandboxUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no sandbox: {e}")
    with sandbox:
        results = [(seed, trace_lib.trace_calls(sandbox, seed, calls)) for seed, calls in REAL]
    n = 0
    for seed, traces in results:
        for trace in traces:
            assert isinstance(trace, Trace) and trace.raised is None and not trace.truncated, trace
            forward, backward = mono.forward_record(seed, trace), mono.backward_record(seed, trace)
            assert forward is not None and backward is not None
            assert record_from_fields(forward, "real", 1).task == "exec_o"
            assert record_from_fields(backward, "real", 2).task == "exec_i"
            simulation = forward["response"].split("### Execution Simulation\n")[1].split("\n\n")[0]
            assert simulation.count("\n- [L") == len(trace.steps)
            assert mono.check_forward(forward["response"], seed, trace).reason == "accepted"
            verdict = mono.check_backward(backward["response"], seed, trace.output, lambda _a, t=trace: t.output,
                                          trace_of=lambda _a, t=trace: t)
            assert verdict.reason == "accepted"
            args, output = mono.parse_answer(forward["response"], seed.entry)
            assert mono.same_value(output, trace.output) and args == trace.args
            n += 1
    assert n == 9


EDGE = Seed(id="edge", code=(
    "def route(cmd, xs=(), *rest):\n"
    "    if not xs: return 'empty'\n"
    "    match cmd:\n"
    "        case 'add' if xs:\n"
    "            total = sum(xs)\n"
    "        case 'neg':\n"
    "            total = -xs[0]\n"
    "        case _:\n"
    "            total = 0\n"
    "    with memoryview(b'ab') as view:\n"
    "        size = len(view)\n"
    "    del view\n"
    "    assert total is not None\n"
    "    y = (total +\n"
    "         size)\n"
    "    return y, rest\n"), entry="route", params=("cmd", "xs", "*rest"), origin="test")


def test_edge_statements_from_real_traces():
    sandbox_mod = pytest.importorskip("sandbox")
    from data_pipeline.builder import trace as trace_lib

    try:
        sandbox = sandbox_mod.Sandbox(workers=1)
    except sandbox_mod.SandboxUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no sandbox: {e}")
    with sandbox:
        add, empty, neg = trace_lib.trace_calls(sandbox, EDGE, ["'add', [1, 2], 3", "'x', []", "'neg', [5]"])
    texts = {}
    for trace in (add, empty, neg):
        forward = mono.forward_record(EDGE, trace)
        assert mono.check_forward(forward["response"], EDGE, trace).reason == "accepted"
        backward = mono.backward_record(EDGE, trace)
        assert mono.check_backward(backward["response"], EDGE, trace.output, lambda _a, t=trace: t.output,
                                   trace_of=lambda _a, t=trace: t).reason == "accepted"
        texts[trace.args] = forward["response"]
    assert "starting with `cmd` = 'add', `xs` = [1, 2], `rest` = (3,)." in texts["'add', [1, 2], 3"]
    # a one-line `if` is one step; its `return` is an explicit return, not the end of the function
    assert "- [L2]: `if not xs: return 'empty'`: the function returns 'empty'." in texts["'x', []"]
    assert "- [L2]: `if not xs: return 'empty'`: no local variable changes." in texts["'neg', [5]"]
    neg = texts["'neg', [5]"]
    assert "- [L3]: `match cmd:`: its cases are tried in order." in neg
    assert "- [L4]: `case 'add' if xs:`: the pattern does not match." in neg
    assert "- [L6]: `case 'neg':`: the pattern matches, so its body runs." in neg
    assert "- [L10]: `with memoryview(b'ab') as view:`: execution enters the `with` block; `view` = <memory>." in neg
    assert "the `with` block is left" in neg and "- [L12]: `del view`: `view` is deleted." in neg
    assert "- [L13]: `assert total is not None`: the assertion holds." in neg
    assert "- [L14]: `y = total + size`: `y` = -3." in neg  # a multi-line statement is one step
