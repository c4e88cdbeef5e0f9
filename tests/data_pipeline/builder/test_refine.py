"""PyX-R: AST mutants of the entry function, the failing-test helper, and the record layout."""

from __future__ import annotations

import ast
import collections
import dataclasses
import re

import pytest

from data_pipeline.builder import refine
from data_pipeline.builder.refine import Mutant
from data_pipeline.builder.types import Seed, Step, Trace
from data_pipeline.prompts import render_prompt
from data_pipeline.records import record_from_fields

HELPER = "def helper(v):\n    return v + 1 if v < 3 else v - 1\n\n\n"
SCORE = Seed(id="score", code=HELPER + (
    "def score(items, limit):\n"                      # 5
    "    total = 0\n"                                  # 6
    "    best = None\n"                                # 7
    "    for i in range(1, len(items)):\n"             # 8
    "        x = items[i - 1:i + 1]\n"                 # 9
    "        if x[0] < limit and x[1] >= 0:\n"         # 10
    "            total += helper(x[0]) * 2\n"          # 11
    "        elif x[0] == limit or x[1] in (3, 4):\n"  # 12
    "            total -= 1\n"                         # 13
    "        else:\n"                                  # 14
    "            best = x\n"                           # 15
    "    return total, best\n"),                       # 16
    entry="score", params=("items", "limit"), origin="test")


def all_mutants(seed: Seed = SCORE, rng_seed: int = 0) -> list[Mutant]:
    return refine.mutants(seed, rng_seed=rng_seed, limit=10_000)


def test_every_operator_gives_valid_distinct_mutants_of_the_entry_only():
    found = all_mutants()
    assert set(collections.Counter(m.operator for m in found)) == set(refine.OPERATORS)
    assert len({m.code for m in found}) == len(found)
    original = SCORE.code.splitlines()
    for m in found:
        assert m.code != SCORE.code
        tree = ast.parse(m.code)  # compiles
        compile(tree, "<mutant>", "exec")
        assert m.code.startswith(HELPER)  # helpers are never mutated
        assert original[m.line - 1].strip().startswith(m.original_line.splitlines()[0])
        if "\n" not in m.original_line and m.mutated_line:
            assert m.code.splitlines()[m.line - 1].strip() == m.mutated_line


def test_mutants_are_deterministic_and_spread_over_the_operators():
    first = refine.mutants(SCORE, rng_seed=7, limit=8)
    assert first == refine.mutants(SCORE, rng_seed=7, limit=8)
    assert len(first) == 8
    assert [m.operator for m in first[:4]] == list(refine.OPERATORS)
    other = refine.mutants(SCORE, rng_seed=8, limit=8)
    assert [m.code for m in other] != [m.code for m in first]
    # the same candidates in another order
    assert {m.code for m in all_mutants(rng_seed=1)} == {m.code for m in all_mutants(rng_seed=2)}
    assert refine.mutants(SCORE, rng_seed=0, limit=0) == []
    assert refine.mutants(dataclasses.replace(SCORE, entry="missing"), rng_seed=0, limit=5) == []


def changed_lines(operator: str) -> set[tuple[str, str]]:
    return {(m.original_line, m.mutated_line) for m in all_mutants() if m.operator == operator}


def test_operator_swaps():
    swaps = changed_lines("operator_swap")
    assert ("total += helper(x[0]) * 2", "total -= helper(x[0]) * 2") in swaps
    assert ("total += helper(x[0]) * 2", "total += helper(x[0]) // 2") in swaps
    assert ("if x[0] < limit and x[1] >= 0:", "if x[0] <= limit and x[1] >= 0:") in swaps
    assert ("if x[0] < limit and x[1] >= 0:", "if x[0] < limit and x[1] > 0:") in swaps
    assert ("if x[0] < limit and x[1] >= 0:", "if x[0] < limit or x[1] >= 0:") in swaps
    assert ("elif x[0] == limit or x[1] in (3, 4):", "elif x[0] != limit or x[1] in (3, 4):") in swaps
    assert ("elif x[0] == limit or x[1] in (3, 4):", "elif x[0] == limit or x[1] not in (3, 4):") in swaps
    assert ("x = items[i - 1:i + 1]", "x = items[i + 1:i + 1]") in swaps
    assert ("total -= 1", "total += 1") in swaps


def test_off_by_one_on_constants_range_and_slice_bounds():
    shifts = changed_lines("off_by_one")
    assert ("total = 0", "total = 1") in shifts and ("total = 0", "total = -1") in shifts
    assert ("for i in range(1, len(items)):", "for i in range(2, len(items)):") in shifts
    assert ("for i in range(1, len(items)):", "for i in range(1, len(items) - 1):") in shifts
    assert ("for i in range(1, len(items)):", "for i in range(1, len(items) + 1):") in shifts
    assert ("x = items[i - 1:i + 1]", "x = items[i - 1:i + 1 + 1]") in shifts
    assert ("x = items[i - 1:i + 1]", "x = items[i - 1 - 1:i + 1]") in shifts
    assert ("x = items[i - 1:i + 1]", "x = items[i - 1:i + 2]") in shifts


def test_wrong_variable_uses_only_locals_bound_on_an_earlier_line():
    swaps = changed_lines("wrong_variable")
    assert ("return total, best", "return best, best") in swaps
    assert ("best = x", "best = items") in swaps
    assert ("x = items[i - 1:i + 1]", "x = items[limit - 1:i + 1]") in swaps
    for original, mutated in swaps:
        if original.startswith("for i in"):  # `i` and `x` are bound on this line or later
            assert "len(i)" not in mutated and "len(x)" not in mutated
        assert "helper" in mutated or "helper" not in original  # a called function is not a variable


def test_dropped_cases():
    drops = {m.original_line: m for m in all_mutants() if m.operator == "dropped_case"}
    elif_branch = drops["elif x[0] == limit or x[1] in (3, 4):\n    total -= 1"]
    assert elif_branch.mutated_line == "" and elif_branch.line == 12
    assert "elif" not in elif_branch.code and "else:" in elif_branch.code
    else_branch = drops["else:\n    best = x"]
    assert else_branch.mutated_line == "" and "else:" not in else_branch.code and "elif" in else_branch.code
    body = drops["total += helper(x[0]) * 2"]
    assert body.mutated_line == "pass" and body.code.splitlines()[10] == "            pass"


@pytest.mark.parametrize("outputs,expected,index", [
    (["1", "2"], ["1", "2"], None),
    (["1", "3"], ["1", "2"], 1),
    ([None, "2"], ["1", "2"], 0),  # raised or did not finish
    (["[1,2]", "{'a': 1, 'b': 2}"], ["[1, 2]", "{'b': 2, 'a': 1}"], None),  # compared as values
    (["True"], ["1"], None),  # `assert f(x) == 1` passes when f returns True: not a failing test
    (["5", "3"], [None, "4"], 1),  # a test without an expected output is skipped
])
def test_failing_test(outputs, expected, index):
    assert refine.failing_test(outputs, expected) == index


COUNT = Seed(id="count", code=(
    "def count_big(nums, k):\n"
    "    count = 0\n"
    "    for n in nums:\n"
    "        if n > k:\n"
    "            count += 1\n"
    "    return count\n"), entry="count_big", params=("nums", "k"), origin="test")
BUGGY = Mutant(code=COUNT.code.replace("n > k", "n >= k"), operator="operator_swap", line=4,
               original_line="if n > k:", mutated_line="if n >= k:")


def trace_of(seed: Seed, args: str, output: str | None, steps: list[Step], raised: str | None = None,
             truncated: bool = False) -> Trace:
    return Trace(entry=seed.entry, args=args, output=output, raised=raised, steps=tuple(steps), truncated=truncated,
                 lines=tuple(sorted({s.line for s in steps})),
                 branches=tuple(sorted({(s.line, s.branch) for s in steps if s.branch is not None})))


def count_steps(bigger_or_equal: bool) -> list[Step]:
    a = {"nums": "[1, 3]", "k": "1"}
    first = 1 if bigger_or_equal else 0
    return [
        Step(2, {**a, "count": "0"}),
        Step(3, {**a, "count": "0", "n": "1"}, branch=True),
        Step(4, {**a, "count": "0", "n": "1"}, branch=bigger_or_equal),
        *([Step(5, {**a, "count": "1", "n": "1"})] if bigger_or_equal else []),
        Step(3, {**a, "count": str(first), "n": "3"}, branch=True),
        Step(4, {**a, "count": str(first), "n": "3"}, branch=True),
        Step(5, {**a, "count": str(first + 1), "n": "3"}),
        Step(3, {**a, "count": str(first + 1), "n": "3"}, branch=False),
        Step(6, {**a, "count": str(first + 1), "n": "3", "<return>": str(first + 1)}, event="return"),
    ]


def test_refine_record_layout():
    buggy = trace_of(COUNT, "[1, 3], 1", "2", count_steps(True))
    nl = "Count the numbers of `nums` that are bigger than `k`."
    record = refine.refine_record(nl, COUNT, BUGGY, "[1, 3], 1", "1", buggy)
    assert set(record) == {"fault", "response"}
    assert record["fault"] == (
        "### Problem\nCount the numbers of `nums` that are bigger than `k`.\n\n### Buggy Solution\n```python\n"
        + BUGGY.code + "```\n\n### Failed Test\n```python\nassert count_big([1, 3], 1) == 1\n```\n")
    response = record["response"]
    heads = ["[MONOLOGUE]\n### Execution Simulation\n", "\n### Root Cause Analysis\n", "\n### Bug Fixing\n",
             "\n[/MONOLOGUE]\n[Refined]\n```python\n"]
    assert [response.index(h) for h in heads] == sorted(response.index(h) for h in heads)
    assert response.startswith(heads[0])
    assert response.endswith("[/MONOLOGUE]\n[Refined]\n```python\n" + COUNT.code + "```\n[/Refined]")
    simulation = response.split("### Execution Simulation\n")[1].split("\n\n")[0].splitlines()
    assert simulation[0] == "Let's simulate the failed test `count_big([1, 3], 1)` on the buggy code."
    assert simulation[3] == "- [L4]: `if n >= k:`: the condition `n >= k` evaluates to True (`n` = 1, `k` = 1), " \
                            "so the `if` body runs."
    assert len(simulation) == 2 + len(buggy.steps)
    assert simulation[-1] == "The buggy code returns 2, but 1 is expected."
    root = response.split("### Root Cause Analysis\n")[1].split("\n\n")[0]
    assert root.startswith("[L4] `if n >= k:` uses the wrong operator: the correct line is `if n > k:`.")
    assert "[L4] runs 2 times, first at step 3." in root
    assert "Change [L4] back to `if n > k:`. With this fix, `count_big([1, 3], 1)` returns 1" in response
    parsed = record_from_fields(record, "built", 1)
    assert parsed.task == "refine"
    assert render_prompt("refine", parsed.instruction).startswith("Debug and Refine the Code:")


def test_refine_record_compares_with_the_correct_run_when_given():
    buggy = trace_of(COUNT, "[1, 3], 1", "2", count_steps(True))
    fixed = trace_of(COUNT, "[1, 3], 1", "1", count_steps(False))
    root = refine.refine_record("", COUNT, BUGGY, "[1, 3], 1", "1", buggy, fixed_trace=fixed)["response"]
    assert "agree on the first 2 steps; at step 3 the buggy code gives\n  [L4]: `if n >= k:`: the condition " \
           "`n >= k` evaluates to True (`n` = 1, `k` = 1), so the `if` body runs.\nwhile the correct code gives\n" \
           "  [L4]: `if n > k:`: the condition `n > k` evaluates to False (`n` = 1, `k` = 1), so its body is " \
           "skipped." in root


def test_refine_record_narrates_a_raising_or_endless_buggy_run():
    a = {"nums": "[1, 3]", "k": "1"}
    raising = Mutant(COUNT.code.replace("count += 1", "count += n[0]"), "wrong_variable", 5, "count += 1",
                     "count += n[0]")
    steps = [Step(2, {**a, "count": "0"}), Step(3, {**a, "count": "0", "n": "1"}, branch=True),
             Step(4, {**a, "count": "0", "n": "1"}, branch=False), Step(3, {**a, "count": "0", "n": "3"}, branch=True),
             Step(4, {**a, "count": "0", "n": "3"}, branch=True),
             Step(5, {**a, "count": "0", "n": "3", "<exception>": "TypeError: 'int' object is not subscriptable"},
                  event="exception")]
    trace = trace_of(COUNT, "[1, 3], 1", None, steps, raised="TypeError: 'int' object is not subscriptable")
    response = refine.refine_record("", COUNT, raising, "[1, 3], 1", "1", trace)["response"]
    simulation = response.split("### Execution Simulation\n")[1].split("\n\n")[0].splitlines()
    assert simulation[-2] == ("- [L5]: `count += n[0]`: an exception is raised (TypeError: 'int' object is not "
                              "subscriptable); it is not caught, so `count_big` raises TypeError: 'int' object is "
                              "not subscriptable.")
    assert simulation[-1] == "The buggy code raises TypeError: 'int' object is not subscriptable, but 1 is expected."
    endless = [Step(2, {**a, "count": "0"})] + [Step(3, {**a, "count": "0", "n": "1"}, branch=True)] * 100
    cut = trace_of(COUNT, "[1, 3], 1", None, endless, truncated=True)
    response = refine.refine_record("", COUNT, BUGGY, "[1, 3], 1", "1", cut)["response"]
    simulation = response.split("### Execution Simulation\n")[1].split("\n\n")[0].splitlines()
    assert len(simulation) == 2 + refine.HEAD_STEPS + 1 + refine.TAIL_STEPS
    assert f"- ... ({101 - refine.HEAD_STEPS - refine.TAIL_STEPS} more steps) ..." in simulation
    assert simulation[-1].startswith("The buggy run does not finish: it was stopped after 101 steps")


def test_problem_text_without_nl():
    assert refine.problem_text(" Do X. ", COUNT, "[1], 0", "1") == "Do X."
    documented = dataclasses.replace(COUNT, doc="Count numbers above k.\n\n    Negative k counts all.")
    assert refine.problem_text("", documented, "[1], 0", "1") == (
        "Write a function `count_big(nums, k)` as its documentation describes:\nCount numbers above k.\n\n"
        "Negative k counts all.")
    assert refine.problem_text("", COUNT, "[1], 0", "1") == (
        "The function `count_big(nums, k)` below should return 1 for `count_big([1], 0)`, keeping its behaviour "
        "on other inputs, but it does not. Find the bug and fix it.")


def test_records_from_real_traces_fail_as_stated_and_their_patch_passes():
    sandbox_mod = pytest.importorskip("sandbox")
    from data_pipeline.builder import trace as trace_lib

    inputs = ["[1, 5, 2, 3], 3", "[3, 3, 4], 3", "[0, -1], 5", "[9], 1"]
    try:
        sandbox = sandbox_mod.Sandbox(workers=1)
    except sandbox_mod.SandboxUnavailable as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no sandbox: {e}")
    with sandbox:
        good = trace_lib.trace_calls(sandbox, SCORE, inputs)
        expected = [t.output for t in good]
        assert all(isinstance(t, Trace) and t.raised is None for t in good)
        records = []
        for m in refine.mutants(SCORE, rng_seed=3, limit=16):
            runs = trace_lib.trace_calls(sandbox, dataclasses.replace(SCORE, code=m.code), inputs)
            outputs = [r.output if isinstance(r, Trace) and r.raised is None and not r.truncated else None
                       for r in runs]
            failing = refine.failing_test(outputs, expected)
            if failing is None or not isinstance(runs[failing], Trace):
                continue
            records.append((m, refine.refine_record("", SCORE, m, inputs[failing], expected[failing],
                                                    runs[failing], fixed_trace=good[failing])))
        assert len({m.operator for m, _ in records}) >= 3
        for m, record in records:
            buggy = re.search(r"### Buggy Solution\n```python\n(.*?)```", record["fault"], re.S).group(1)
            test = re.search(r"### Failed Test\n```python\n(assert .*)\n```", record["fault"]).group(1)
            patch = re.search(r"\[Refined\]\n```python\n(.*?)```\n\[/Refined\]", record["response"], re.S).group(1)
            call = ast.parse(test).body[0].test
            args = ast.get_source_segment(test, call.left)[len("score("):-1]
            want = ast.get_source_segment(test, call.comparators[0])
            assert buggy == m.code
            ran = trace_lib.trace_calls(sandbox, dataclasses.replace(SCORE, code=buggy), [args])[0]
            assert not (isinstance(ran, Trace) and ran.raised is None and not ran.truncated
                        and refine.failing_test([ran.output], [want]) is None)  # the buggy code fails the test
            patched = trace_lib.trace_calls(sandbox, dataclasses.replace(SCORE, code=patch), inputs)
            assert [p.output for p in patched] == expected  # the patch passes every test
            assert record_from_fields(record, "real", 1).task == "refine"


def test_a_mutant_that_only_changes_the_type_of_an_equal_output_does_not_fail_the_stated_test():
    """`assert f(x) == 3.0` passes when f returns 3, so such a mutant is not a bug the record can show."""
    from data_pipeline.builder.refine import failing_test

    assert failing_test(["3", "[1, 2]"], ["3.0", "[1, 2]"]) is None
    assert failing_test(["3", "[1, 3]"], ["3.0", "[1, 2]"]) == 1
    assert failing_test([None], ["0"]) == 0
