"""Answers and code are extracted from realistic raw generations the way the release scores them."""

from __future__ import annotations

import pytest

from eval.extract import cruxeval_answer, refined_code, sanitize

MONOLOGUE = '''[L5] The function f is called with text = "abc".
[L6] result is initialized to "".
[L7] The loop runs over each character; at the end result is "cba".
[L9] The function returns "cba".
[ANSWER]
assert f("abc") == "cba"
'''


@pytest.mark.parametrize("raw,task,expected", [
    (MONOLOGUE, "o", '"cba"'),
    (MONOLOGUE, "i", 'f("abc")'),
    # a second [ANSWER] block: the last one counts
    ('[ANSWER]\nassert f(1) == 1\n[/ANSWER]\nWait, recheck.\n[ANSWER]\nassert f(1) == 2\n[/ANSWER]', "o", "2"),
    # missing closing tag (generation stopped at [/ANSWER] or ran out of tokens)
    ("Some thought.\n[ANSWER]\nassert f([1, 2]) == [2, 1]", "o", "[2, 1]"),
    # without `assert`
    ("[ANSWER]\nf('a') == 'b'\n[/ANSWER]", "o", "'b'"),
    ("[ANSWER]\nf('a') == 'b'\n[/ANSWER]", "i", "f('a')"),
    # direct mode: the prompt ended with [ANSWER], the model writes only the assertion
    ("assert f(17) == 17\n", "o", "17"),
    # quotes of both kinds are kept as written
    ("[ANSWER]\nassert f(\"it's\") == 'say \"hi\"'\n[/ANSWER]", "o", "'say \"hi\"'"),
    ("[ANSWER]\nassert f(\"it's\") == 'x'\n[/ANSWER]", "i", "f(\"it's\")"),
    # `==` and `assert` inside string literals do not split the answer
    ("[ANSWER]\nassert f('a==b') == 'x == y assert'\n[/ANSWER]", "o", "'x == y assert'"),
    ("[ANSWER]\nassert f('a==b') == 'x'\n[/ANSWER]", "i", "f('a==b')"),
    # chatter after the assertion inside the block
    ("[ANSWER]\nassert f(2) == 4\nThis is because 2 * 2 == 4.\n[/ANSWER]", "o", "4"),
])
def test_cruxeval_answers(raw, task, expected):
    assert cruxeval_answer(raw, task) == expected


def test_release_compatible_extraction_reproduces_its_quote_round_trip():
    raw = "[ANSWER]\nassert f(\"x\") == 'say \"hi\"'\n[/ANSWER]"
    assert cruxeval_answer(raw, "o", release_compatible=True) == "'say 'hi''"  # broken, as in the release
    assert cruxeval_answer(raw, "o") == "'say \"hi\"'"
    assert cruxeval_answer('[ANSWER]\nassert f("abc") == "cba"', "i", release_compatible=True) == "f('abc')"
    # the release splits on the first ==, so an == inside the output literal truncates it
    assert cruxeval_answer("[ANSWER]\nassert f(1) == 'a==b'", "o", release_compatible=True) == "'a"


def test_refined_code_comes_from_the_refined_block():
    raw = ("The bug is an off-by-one.\n[Refined]\n```python\ndef add(a, b):\n    return a + b\n```\n[/Refined]")
    assert refined_code(raw) == "def add(a, b):\n    return a + b"
    assert refined_code("[Refined]\ndef g():\n    return 1\n") == "def g():\n    return 1"


def test_sanitize_keeps_the_entry_point_and_what_it_uses():
    code = ('import math\nfrom typing import List\n\nHELPER_CONST = 3\n\ndef helper(x):\n    return x * HELPER_CONST\n\n'
            'def unused():\n    return 0\n\ndef solve(xs: List[int]) -> int:\n    return sum(helper(x) for x in xs)\n\n'
            'print(solve([1, 2]))\nassert solve([1]) == 3\n')
    out = sanitize(code, "solve")
    assert out == ('import math\nfrom typing import List\nHELPER_CONST = 3\ndef helper(x):\n    return x * HELPER_CONST\n'
                   'def solve(xs: List[int]) -> int:\n    return sum(helper(x) for x in xs)')


def test_sanitize_extracts_the_longest_parsable_block_from_prose():
    raw = "Here is the solution:\n\ndef f(x):\n    return x + 1\n\nThis works because it adds one."
    assert sanitize(raw, "f") == "def f(x):\n    return x + 1"
