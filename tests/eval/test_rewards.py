"""Execution rewards as a policy would try to game them: every forged answer earns the wrong-answer reward;
right answers earn the reward; PyX- and CRUXEval-shaped records become tasks; bad files are clear errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from data_pipeline.prompts import render_prompt
from eval.rewards import RewardConfig, code_task, load_tasks, make_task, score, tasks_from_record
from semcoder_jax.errors import UserError

CODE = "def f(xs):\n    out = []\n    for x in xs:\n        if x % 2:\n            out.append(x * 3)\n    return out"
FORWARD = make_task("forward", "t:forward", CODE, "[1, 2, 5]", "[3, 15]")
BACKWARD = make_task("backward", "t:backward", CODE, "", "[3, 15]")
ALWAYS_EQUAL = "type('E', (), {'__eq__': lambda self, other: True, '__hash__': lambda self: 0})()"


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Sandbox

    with Sandbox(workers=2) as sb:
        yield sb


def answer(text: str) -> str:
    return f"[MONOLOGUE]\n- [L5]: the loop ends.\n[/MONOLOGUE]\n[ANSWER]\n{text}\n"


def test_right_answers_earn_the_reward_in_both_directions(sandbox):
    rewards = score(sandbox, [FORWARD, BACKWARD, BACKWARD],
                    [answer("assert f([1, 2, 5]) == [3, 15]"), answer("assert f([5, 1]) == [3, 15]"),
                     answer("assert f([1, 5]) == [3, 15]")])
    # f([5, 1]) is [15, 3]: a wrong input
    assert [(r.value, r.correct, r.status) for r in rewards] == [(1.0, True, "passed"), (0.0, False, "failed"),
                                                                 (1.0, True, "passed")]


FORWARD_ATTACKS = {
    "an object equal to everything": answer(f"assert f([1, 2, 5]) == {ALWAYS_EQUAL}"),
    "a list of it": answer(f"assert f([1, 2, 5]) == [{ALWAYS_EQUAL}, {ALWAYS_EQUAL}]"),
    "exiting early": answer("assert f([1, 2, 5]) == __import__('sys').exit(0)"),
    "killing the process": answer("assert f([1, 2, 5]) == __import__('os')._exit(0)"),
    "printing a fake result": answer("assert f([1, 2, 5]) == print('passed', flush=True)"),
    "patching builtins": answer("assert f([1, 2, 5]) == (__import__('builtins').__dict__.update("
                                "isinstance=lambda *a: True, AssertionError=int) or [3, 16])"),
    "an exit handler that reports success": answer(
        "assert f([1, 2, 5]) == (__import__('atexit').register(lambda: __import__('os')._exit(0)) and [3])"),
    "repeating the call": answer("assert f([1, 2, 5]) == f([1, 2, 5])"),
    "no answer block": "[MONOLOGUE]\nthe answer is [3, 15]\n",
}


@pytest.mark.parametrize("attack", ["an object equal to everything", "exiting early", "killing the process",
                                    "an exit handler that reports success"])
def test_the_attacks_pass_a_reward_that_runs_the_assertion_in_the_responses_process(attack, tmp_path):
    """What the real reward path closes: ``{code}; assert {answer}`` judged by its exit status (the
    return-code rewards of other RL stacks) gives these forged answers full reward."""
    line = FORWARD_ATTACKS[attack].split("[ANSWER]\n")[1].strip()
    naive = subprocess.run([sys.executable, "-c", f"{CODE}\n{line}"], cwd=tmp_path, capture_output=True, timeout=30)
    assert naive.returncode == 0, naive.stderr


@pytest.mark.parametrize("attack", FORWARD_ATTACKS)
def test_forged_output_predictions_earn_nothing(sandbox, attack):
    (reward,) = score(sandbox, [FORWARD], [FORWARD_ATTACKS[attack]], RewardConfig(format_bonus=0.1))
    assert not reward.correct and reward.value < 1.0, reward


BACKWARD_ATTACKS = {
    "an argument equal to everything": answer(f"assert f({ALWAYS_EQUAL}) == [3, 15]"),
    "redefining f in an argument": answer("assert f(exec('def f(xs): return [3, 15]') or [1]) == [3, 15]"),
    "exiting while the arguments evaluate": answer("assert f(__import__('sys').exit(0)) == [3, 15]"),
    "patching builtins in an argument": answer("assert f(__import__('builtins').__dict__.update("
                                               "len=lambda *a: 0) or [2]) == [3, 15]"),
    "not a call": answer("assert [3, 15] == [3, 15]"),
}


@pytest.mark.parametrize("attack", BACKWARD_ATTACKS)
def test_forged_input_predictions_earn_nothing(sandbox, attack):
    (reward,) = score(sandbox, [BACKWARD], [BACKWARD_ATTACKS[attack]])
    assert not reward.correct and reward.value == 0.0, reward


def test_a_response_without_an_answer_block_is_reported_as_such(sandbox):
    """Both prompt kinds mention "[ANSWER]" in their instructions; that does not count as the response's block."""
    for task in (FORWARD, BACKWARD, tasks_from_record({"fwd_mnl": f"[PYTHON]\n{CODE}\nassert f([1]) == ??\n[/PYTHON]",
                                                       "response": answer("assert f([1]) == [3]"), "id": "p"}, "x")[0]):
        assert "[ANSWER]" in task.prompt
        (reward,) = score(sandbox, [task], ["assert f([1, 2, 5]) == [3, 15]"])
        assert (reward.value, reward.status) == (0.0, "no_answer")


def test_a_response_that_never_returns_times_out_with_the_wrong_answer_reward(sandbox):
    (reward,) = score(sandbox, [FORWARD], [answer("assert f([1, 2, 5]) == [x for x in iter(int, 1)]")])
    assert (reward.value, reward.correct, reward.status) == (0.0, False, "timeout")


def test_the_format_bonus_rewards_a_parsable_answer_right_or_wrong(sandbox):
    config = RewardConfig(correct=1.0, wrong=0.0, format_bonus=0.25)
    rewards = score(sandbox, [FORWARD] * 3, [answer("assert f([1, 2, 5]) == [3, 15]"),
                                             answer("assert f([1, 2, 5]) == [3]"), answer("[3, 15")], config)
    assert [r.value for r in rewards] == [1.25, 0.25, 0.0]
    with pytest.raises(ValueError, match=r"rewards.correct \(0.0\) must exceed rewards.wrong \(0.0\)"):
        RewardConfig(correct=0.0)


def test_pyx_and_cruxeval_records_become_tasks(tmp_path):
    pyx = [{"nl": "", "fwd_mnl": f"[PYTHON]\n{CODE}\nassert f([1, 2, 5]) == ??\n[/PYTHON]", "bwd_mnl": "",
            "response": answer("assert f([1, 2, 5]) == [3, 15]") + "[/ANSWER]", "id": "fwd-1"},
           {"nl": "", "fwd_mnl": "", "bwd_mnl": f"[PYTHON]\n{CODE}\nassert f(??) == [3, 15]\n[/PYTHON]",
            "response": answer("assert f([1, 5]) == [3, 15]"), "id": "bwd-1"},
           {"nl": "Write f.", "fwd_mnl": "", "bwd_mnl": "", "response": "```python\n...```", "id": "nl-1"},
           {"nl": "Write f.", "fwd_mnl": "", "bwd_mnl": "", "response": "```python\n...```", "id": "nl-2",
            "entry_point": "f", "tests": [{"input": "[1, 2, 5]", "output": "[3, 15]"}]}]
    crux = {"code": CODE, "input": "[1, 2, 5]", "output": "[3, 15]", "id": "sample_0"}
    path = tmp_path / "tasks.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for r in [*pyx, crux]:
            f.write(json.dumps(r) + "\n")
    counts = {}
    tasks = load_tasks(path, counts=counts)
    assert counts == {"forward": 2, "backward": 2, "code": 1, "records_without_task": 1}  # nl-1 has no tests
    assert [(t.kind, t.id, t.input, t.output) for t in tasks] == [
        ("forward", "fwd-1:forward", "[1, 2, 5]", "[3, 15]"), ("backward", "bwd-1:backward", "", "[3, 15]"),
        ("code", "nl-2", "", ""),
        ("forward", "sample_0:forward", "[1, 2, 5]", "[3, 15]"),
        ("backward", "sample_0:backward", "[1, 2, 5]", "[3, 15]")]
    # PyX records get the prompt supervised training renders for them; CRUXEval records the benchmark's
    assert tasks[0].prompt == render_prompt("exec_o", pyx[0]["fwd_mnl"])
    assert tasks[1].prompt == render_prompt("exec_i", pyx[1]["bwd_mnl"])
    assert tasks[2].prompt == render_prompt("nl2code", "Write f.") and tasks[2].tests == (("[1, 2, 5]", "[3, 15]"),)
    assert tasks[3].prompt == FORWARD.prompt and tasks[4].prompt == BACKWARD.prompt
    assert tasks[3].prompt.endswith("[MONOLOGUE]\n") and "assert f([1, 2, 5]) == ??" in tasks[3].prompt


def test_bad_task_files_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"code": CODE, "input": "1", "output": "[3, 15]"}) + "\n{oops\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2: not valid JSON"):
        load_tasks(bad)
    bad.write_text(json.dumps({"code": CODE, "input": "1", "output": "<object>"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: the output '<object>' is not a Python literal"):
        load_tasks(bad)
    bad.write_text(json.dumps({"fwd_mnl": "assert f(1) == ??", "id": "x"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: fwd_mnl has no \[PYTHON\] block"):
        load_tasks(bad)
    with pytest.raises(UserError, match="task file not found"):
        load_tasks(tmp_path / "missing.jsonl")
    with pytest.raises(UserError, match="kind must be forward or backward"):
        tasks_from_record({"code": CODE, "input": "1", "output": "2"}, "x") and make_task("sideways", "x", "", "", "1")


# ---- NL -> code ----------------------------------------------------------------------------------------

CODE_TASK = code_task("triple-odd", "Return three times each odd number of xs, in order.", "f",
                      [("[1, 2, 5]", "[3, 15]"), ("[]", "[]"), ("[7, 8]", "[21]")])


def solution(body: str) -> str:
    return f"```python\n{body}\n```"


def test_a_solution_earns_the_reward_when_every_test_returns_its_output(sandbox):
    rewards = score(sandbox, [CODE_TASK] * 3, [solution(CODE), solution("def f(xs):\n    return [3, 15]"),
                                               "I cannot write that."], RewardConfig(format_bonus=0.1))
    assert [(r.value, r.correct, r.status) for r in rewards] == [(1.1, True, "passed"), (0.1, False, "failed"),
                                                                 (0.0, False, "no_answer")]


CODE_ATTACKS = {
    "returning an object equal to everything": f"def f(xs):\n    return {ALWAYS_EQUAL}",
    "exiting before returning": "def f(xs):\n    raise SystemExit(0)",
    "killing the process": "def f(xs):\n    __import__('os')._exit(0)",
    "an exit handler that reports success": "import atexit, os\natexit.register(lambda: os._exit(0))\n"
                                            "def f(xs):\n    atexit.register(lambda: os._exit(0))\n    return None",
    "printing a fake result": "def f(xs):\n    print('passed', flush=True)\n    return None",
    "patching builtins": "import builtins\ndef f(xs):\n    builtins.isinstance = lambda *a: True\n"
                         "    builtins.AssertionError = int\n    return xs",
    "never returning": "def f(xs):\n    while True:\n        pass",
}


@pytest.mark.parametrize("attack", ["returning an object equal to everything", "killing the process",
                                    "an exit handler that reports success"])
def test_code_attacks_pass_a_reward_that_runs_assert_tests_in_the_solutions_process(attack, tmp_path):
    """The assert-and-exit-status reward of other stacks gives these solutions full reward."""
    asserts = "\n".join(f"assert f({a}) == {o}" for a, o in CODE_TASK.tests)
    naive = subprocess.run([sys.executable, "-c", f"{CODE_ATTACKS[attack]}\n{asserts}"], cwd=tmp_path,
                           capture_output=True, timeout=30)
    assert naive.returncode == 0, naive.stderr


@pytest.mark.parametrize("attack", CODE_ATTACKS)
def test_forged_solutions_earn_nothing(sandbox, attack):
    config = RewardConfig(code_timeout_s=3.0)
    (reward,) = score(sandbox, [CODE_TASK], [solution(CODE_ATTACKS[attack])], config)
    assert not reward.correct and reward.value == 0.0, reward


def test_evalplus_records_become_code_tasks_scored_as_the_benchmark(sandbox, tmp_path):
    from eval.benchmarks import BUNDLED_DATA_DIR, DATA_FILES, read_jsonl

    record = read_jsonl(BUNDLED_DATA_DIR / DATA_FILES["humaneval+"])[2]  # HumanEval/2: truncate_number
    path = tmp_path / "humaneval.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (task,) = load_tasks(path)
    assert (task.kind, task.id, task.entry_point) == ("code", "HumanEval/2", "truncate_number")
    assert task.prompt.rstrip().endswith(record["prompt"].strip())  # the release's prompt, opened code block
    right = record["canonical_solution"] + "\n```"
    forged = f"    return {ALWAYS_EQUAL}\n```"
    rewards = score(sandbox, [task, task], [right, forged])
    assert [(r.correct, r.status) for r in rewards] == [(True, "passed"), (False, "failed")]


def test_bad_code_tasks_are_named(tmp_path):
    with pytest.raises(UserError, match="task t: entry_point 'f x' is not a Python name"):
        code_task("t", "Do it.", "f x", [("1", "2")])
    with pytest.raises(UserError, match="task t: test input: not a literal argument list"):
        code_task("t", "Do it.", "f", [("open('x')", "2")])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"nl": "Do it.", "response": "x", "entry_point": "f", "tests": [{"input": "1"}]}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: tests must be a list of"):
        load_tasks(bad)
