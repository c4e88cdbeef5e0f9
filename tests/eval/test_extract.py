"""Answers and code are extracted from raw generations as the release extracts them, case by case.

Every CRUXEval case lists three answers: ours (the default), the release's (``process_cruxeval.py`` on
prompt + generation, which ``release_compatible=True`` reproduces byte for byte) and CRUXEval's own
``postprocess_generation`` (its cot rule for the tagged modes).  Ours equals the release's except for the
three deliberate differences of ``cruxeval_answer``: quotes kept (D1), a one-assertion block split by the
parser (D2), surrounding whitespace stripped (D3).
"""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.extract import cruxeval_answer, refined_code
from eval.prompts import cruxeval_prompt

reference = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("reference_scripts.py"))))

CODE, INPUT, OUTPUT = "def f(text):\n    return text[::-1]", "'abc'", "'cba'"
MONOLOGUE = '''[L5] The function f is called with text = "abc".
[L6] The slice reverses it.
[L6] The function returns "cba".
[ANSWER]
assert f("abc") == "cba"
'''


def prompt(task: str, mode: str) -> str:
    return cruxeval_prompt(task, mode, CODE, INPUT, OUTPUT)


CASES = [
    # (mode, task, generation, ours, the release's, CRUXEval's)
    # the assertion's side that belongs to the task; ours keeps the model's quotes (D1)
    ("monologue", "o", MONOLOGUE, '"cba"', "'cba'", '"cba"'),
    ("monologue", "i", MONOLOGUE, 'f("abc")', "f('abc')", 'f("abc")'),
    # the last [ANSWER] block counts (CRUXEval takes the first)
    ("monologue", "o", "[ANSWER]\nassert f(1) == 1\nWait, recheck.\n[ANSWER]\nassert f(1) == 2\n", "2", "2",
     "1\nWait, recheck."),
    # a closing tag, where a predictions file keeps it
    ("monologue", "o", "[ANSWER]\nassert f(1) == 2\n[/ANSWER]", "2", "2", "2\n[/ANSWER]"),
    # without `assert`
    ("monologue", "o", "[ANSWER]\nf('a') == 'b'\n", "'b'", "'b'", "'b'"),
    ("monologue", "i", "[ANSWER]\nf('a') == 'b'\n", "f('a')", "f('a')", "f('a')"),
    # direct mode: the prompt ends with [ANSWER], so the model writes only the assertion
    ("direct", "o", "assert f(17) == 17\n", "17", "17", "17"),
    ("direct", "i", "assert f(17) == 17\n", "f(17)", "f(17)", "f(17)"),
    # no tag in a tagged mode: the release reads the prompt's "[ANSWER] and [/ANSWER] tags", which fails
    ("monologue", "o", "The function returns 17.\nassert f(2) == 17\n", "and", " and ", "17"),
    ("cot", "o", "It returns 17.\n[/THOUGHT]\nassert f(2) == 17\n", '"bhihia"', "'bhihia'", "17"),
    # text after the assertion stays in the answer and fails, as in the release
    ("monologue", "o", "[ANSWER]\nassert f(2) == 4\nThis is because 2 * 2 == 4.\n", "4\nThis is because 2 * 2",
     "4\nThis is because 2 * 2", "4\nThis is because 2 * 2"),
    ("monologue", "o", "[ANSWER]\n```python\nassert f(2) == 4\n```\n", "4\n```", "4\n```", "4\n```"),
    ("monologue", "i", "[ANSWER]\n```python\nassert f(2) == 4\n```\n", "f(2)", "f(2)", "f(2)"),
    # a second assertion: -O gets the call after the second `assert` (which then fails), -I the first call
    ("monologue", "o", "[ANSWER]\nassert f(2) == 4\nassert f(3) == 9\n", "f(3)", "f(3)", "4\nassert f(3)"),
    ("monologue", "i", "[ANSWER]\nassert f(2) == 4\nassert f(3) == 9\n", "f(2)", "f(2)", "f(2)"),
    # prose before the assertion on its line
    ("monologue", "i", "[ANSWER]\nThe answer is assert f(2) == 4\n", "f(2)", "f(2)", "f(2)"),
    # a comment after it: the same program
    ("monologue", "o", "[ANSWER]\nassert f(2) == 4  # doubled\n", "4", "4  # doubled", "4  # doubled"),
    ("monologue", "o", "[ANSWER]\n\n   assert f(2) == 4   \n\n", "4", "4", "4"),
    # D1: the release's quote swap breaks a string that holds the other quote
    ("monologue", "o", "[ANSWER]\nassert f(\"it's\") == 'say \"hi\"'\n", "'say \"hi\"'", "'say 'hi''",
     "'say \"hi\"'"),
    ("monologue", "i", "[ANSWER]\nassert f(\"it's\") == 'x'\n", "f(\"it's\")", "f('it's')", "f(\"it's\")"),
    # D2: `==` or `assert` inside a string literal does not cut a one-assertion block
    ("monologue", "o", "[ANSWER]\nassert f('a==b') == 'x == y assert'\n", "'x == y assert'", "b')", "b')"),
    ("monologue", "i", "[ANSWER]\nassert f('a==b') == 'x'\n", "f('a==b')", "f('a", "f('a"),
    # D3: a bare answer on its own line; the release keeps the newlines, and `assert o == \n17` does not parse
    ("monologue", "o", "[ANSWER]\n17\n", "17", "\n17\n", "17"),
]


@pytest.mark.parametrize("mode,task,raw,ours,release,official", CASES)
def test_cruxeval_answer_against_the_release_and_cruxeval_scripts(mode, task, raw, ours, release, official):
    text = prompt(task, mode)
    assert reference.release_process_cruxeval(text + raw, task) == release
    assert reference.official_postprocess(raw, task, cot=mode != "direct") == official
    assert cruxeval_answer(raw, task, prompt=text, release_compatible=True) == release
    assert cruxeval_answer(raw, task, prompt=text) == ours


def test_without_a_prompt_a_generation_without_tags_is_read_whole():
    assert cruxeval_answer("assert f(17) == 17\n", "o") == "17"
    assert cruxeval_answer("f(17) == 17", "o", release_compatible=True) == "= 17"  # rfind(...) + 8 == 7


def test_refined_code_comes_from_the_refined_block():
    raw = ("The bug is an off-by-one.\n[Refined]\n```python\ndef add(a, b):\n    return a + b\n```\n[/Refined]")
    assert refined_code(raw) == "def add(a, b):\n    return a + b"
    assert refined_code("[Refined]\ndef g():\n    return 1\n") == "def g():\n    return 1"
