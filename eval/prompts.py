"""Evaluation prompts exactly as the SemCoder release builds them (ARiSE-Lab/SemCoder @ edc4ad39).

The model was trained on these strings, so scores are only comparable when the bytes match, typos
included ("a a problem", and the backward-monologue prompt's ``PYTHON]`` without its opening bracket).
``tests/eval/test_prompts.py`` compares every builder with ``shared/semcoder/prompts.json``.
"""

from __future__ import annotations

# The training templates live in one place; evaluation must use the very same bytes.
from data_pipeline.prompts import NL2CODE_PROMPT, REFINE_PROMPT

CRUXEVAL_MODES = ("direct", "cot", "monologue")


def fill(template: str, instruction: str, response: str = "") -> str:
    """``template.format(instruction=..., response=...)`` without rescanning the inserted text for braces."""
    head, rest = template.split("{instruction}")
    middle, tail = rest.split("{response}")
    return head + instruction + middle + response + tail


def humaneval_prompt(problem_prompt: str) -> tuple[str, str]:
    """(full prompt, response prefix) for a HumanEval(+) problem, as the release's ``run_evalplus.py``."""
    stripped = problem_prompt.strip()
    instruction = f"Write a solution to the following problem:\n```python\n{stripped}\n```"
    prefix = f"```python\n{stripped}"
    return fill(NL2CODE_PROMPT, instruction, prefix), prefix


def mbpp_prompt(problem_prompt: str) -> tuple[str, str]:
    """(full prompt, response prefix) for an MBPP+ problem: docstring text + its one example assertion."""
    body = problem_prompt[problem_prompt.index('"""') + 3: problem_prompt.rindex('"""')]
    at = body.index("assert")
    instruction = body[:at].strip()
    if not instruction.endswith("."):
        instruction += "."
    assertion = body[at:].strip()
    instruction = f"{instruction} Your code should satisfy the following assertion:\n```python\n{assertion}\n```"
    prefix = "```python"
    return fill(NL2CODE_PROMPT, instruction, prefix), prefix


def release_quote_swap(text: str) -> str:
    """The release replaces every single quote in code/input/output by a double quote before prompting."""
    return text.replace("'", '"')


def _label_lines(code: str) -> str:
    lines = code.split("\n")
    return "\n".join(f"{line} # [L{i + 4}]" if line.strip() else line for i, line in enumerate(lines, 1))


_OUTPUT_DIRECT_HEAD = (
    "You are given a Python function and an assertion containing an input to the function. Complete the "
    "assertion with a literal (no unsimplified expressions, no function calls) containing the output when "
    "executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT "
    "output any extra information. Provide the full assertion with the correct output in [ANSWER] and "
    "[/ANSWER] tags, following the examples.\n\n[PYTHON]\ndef f(n):\n    return n\nassert f(17) == ??\n"
    "[/PYTHON]\n[ANSWER]\nassert f(17) == 17\n[/ANSWER]\n\n[PYTHON]\ndef f(s):\n    return s + \"a\"\n"
    "assert f(\"x9j\") == ??\n[/PYTHON]\n[ANSWER]\nassert f(\"x9j\") == \"x9ja\"\n[/ANSWER]\n\n"
)
_OUTPUT_COT_HEAD = (
    "You are given a Python function and an assertion containing an input to the function. Complete the "
    "assertion with a literal (no unsimplified expressions, no function calls) containing the output when "
    "executing the provided code on the given input, even if the function is incorrect or incomplete. Do NOT "
    "output any extra information. Execute the program step by step before arriving at an answer, and provide "
    "the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.\n\n"
    "[PYTHON]\ndef f(s):\n    s = s + s\n    return \"b\" + s + \"a\"\nassert f(\"hi\") == ??\n[/PYTHON]\n"
    "[THOUGHT]\nLet's execute the code step by step:\n\n1. The function f is defined, which takes a single "
    "argument s.\n2. The function is called with the argument \"hi\", so within the function, s is initially "
    "\"hi\".\n3. Inside the function, s is concatenated with itself, so s becomes \"hihi\".\n4. The function "
    "then returns a new string that starts with \"b\", followed by the value of s (which is now \"hihi\"), and "
    "ends with \"a\".\n5. The return value of the function is therefore \"bhihia\".\n[/THOUGHT]\n[ANSWER]\n"
    "assert f(\"hi\") == \"bhihia\"\n[/ANSWER]\n\n"
)
_OUTPUT_MONOLOGUE_HEAD = (
    "Simulate the Execution: You are given a Python function and an assertion containing a function input. "
    "Complete the assertion containing the execution output corresponding to the given input in [ANSWER] and "
    "[/ANSWER] tags.\n"
)
_INPUT_DIRECT_HEAD = (
    "You will be given a function f and an output in the form f(??) == output. Find any input such that "
    "executing f on the input leads to the given output. There may be multiple answers, but you should only "
    "output one. In [ANSWER] and [/ANSWER] tags, complete the assertion with one such input that will produce "
    "the output when executing the function.\n\n[PYTHON]\ndef f(my_list):\n    count = 0\n    for i in "
    "my_list:\n        if len(i) % 2 == 0:\n            count += 1\n    return count\nassert f(??) == 3\n"
    "[/PYTHON]\n[ANSWER]\nassert f([\"mq\", \"px\", \"zy\"]) == 3\n[/ANSWER]\n\n[PYTHON]\ndef f(s1, s2):\n"
    "    return s1 + s2\nassert f(??) == \"banana\"\n[/PYTHON]\n[ANSWER]\nassert f(\"ba\", \"nana\") == "
    "\"banana\"\n[/ANSWER]\n\n"
)
_INPUT_COT_HEAD = (
    "You will be given a function f and an output in the form f(??) == output. Your task is to find any input "
    "such that executing f on the input leads to the given output. There may be multiple answers, but only "
    "output one. First, think step by step. You MUST surround the answer with [ANSWER] and [/ANSWER] tags. "
    "Express your answer as a passing assertion containing the input and the given output.\n\n[PYTHON]\n"
    "def f(x):\n    return x + 1\nassert f(??) == 17\n[/PYTHON]\n[THOUGHT]\nTo find an input such that "
    "executing f on the input leads to the given output, we can work backwards from the given assertion. We "
    "know that f(??) == 17. \n\nSince the function f(x) returns x + 1, for f(??) to be equal to 17, the value "
    "of ?? should be 16. \n[/THOUGHT]\n[ANSWER]\nassert f(16) == 17\n[/ANSWER]\n\n"
)
_INPUT_MONOLOGUE_HEAD = (
    "Deduce the Semantic Constraints: You are given a Python program and its expected output. Find one input "
    "such that executing the program with the input leads to the given output. Complete the assertion with one "
    "such input in between [ANSWER] and [/ANSWER].\n"
)


def cruxeval_prompt(task: str, mode: str, code: str, input: str, output: str, *, swap_quotes: bool = True) -> str:
    """The release's CRUXEval prompt for ``task`` ``"i"`` (input prediction) or ``"o"`` (output prediction).

    ``swap_quotes`` applies the release's single-to-double quote replacement to code, input and output
    first (what the released numbers used); ``prompts.json`` pins the builders' output without it.
    """
    if mode not in CRUXEVAL_MODES:
        raise ValueError(f"unknown CRUXEval mode {mode!r}; expected one of {CRUXEVAL_MODES}")
    if swap_quotes:
        code, input, output = release_quote_swap(code), release_quote_swap(input), release_quote_swap(output)
    if task == "o":
        if mode == "direct":
            return f"{_OUTPUT_DIRECT_HEAD}[PYTHON]\n{code}\nassert f({input}) == ??\n[/PYTHON]\n[ANSWER]\n"
        if mode == "cot":
            return f"{_OUTPUT_COT_HEAD}[PYTHON]\n{code}\nassert f({input}) == ??\n[/PYTHON]\n[THOUGHT]\n"
        return (f"{_OUTPUT_MONOLOGUE_HEAD}[PYTHON]\n{_label_lines(code)}\nassert f({input}) == ??\n[/PYTHON]\n"
                "[MONOLOGUE]\n")
    if task == "i":
        if mode == "direct":
            return f"{_INPUT_DIRECT_HEAD}[PYTHON]\n{code}\nassert f(??) == {output}\n[/PYTHON]\n[ANSWER]\n"
        if mode == "cot":
            return f"{_INPUT_COT_HEAD}[PYTHON]\n{code}\nassert f(??) == {output}\n[/PYTHON]\n[THOUGHT]\n"
        return f"{_INPUT_MONOLOGUE_HEAD}PYTHON]\n{code}\nassert f(??) == {output}\n[/PYTHON]\n\n[MONOLOGUE]\n"
    raise ValueError(f"unknown CRUXEval task {task!r}; expected 'i' or 'o'")


REFINE_INSTRUCTION = "### Problem\n{problem}\n\n### Buggy Solution\n```python\n{code}\n```\n\n### Failed Test\n```python\n{test}\n```\n"
REFINE_INSTRUCTION_WITH_TRACE = (
    "### Problem\n{problem}\n\n### Buggy Solution\n```python\n{code}\n```\n\n### Failed Test\n```python\n{test}\n\n"
    "[MONOLOGUE]\n### Execution Simulation\n```python\n{trace}\n```\n### Root Cause Analysis\n"
)


def refine_prompt(problem: str, code: str, failed_test: str, trace: str | None = None) -> str:
    """The self-refine prompt: REFINE template around the release's Problem / Buggy Solution / Failed Test
    sections (with the execution-simulation section when a trace is given)."""
    if trace is None:
        instruction = REFINE_INSTRUCTION.format(problem=problem, code=code, test=failed_test)
    else:
        instruction = REFINE_INSTRUCTION_WITH_TRACE.format(problem=problem, code=code, test=failed_test,
                                                           trace=trace)
    return fill(REFINE_PROMPT, instruction, "")
