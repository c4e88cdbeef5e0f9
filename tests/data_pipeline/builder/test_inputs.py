"""Input generation for seeds (``data_pipeline.builder.inputs``): guesses, type-aware mutation, the keep rules
(runs, deterministic, small) and coverage-driven stopping."""

from __future__ import annotations

import random

import pytest

from data_pipeline.builder.coverage import branch_coverage, line_coverage
from data_pipeline.builder.inputs import (
    MAX_ITEMS,
    MAX_STR,
    InputsResult,
    args_source,
    constant_hints,
    doctest_calls,
    generate_inputs,
    generate_inputs_many,
    mutate_args,
    mutate_value,
    output_problem,
    parameter_guesses,
    value_problem,
)
from data_pipeline.builder.trace import parse_args, trace_calls
from data_pipeline.builder.types import Seed
from sandbox import Sandbox


@pytest.fixture(scope="module")
def sb():
    with Sandbox(workers=2) as pool:
        yield pool


def seed_of(code: str, entry: str = "f", params: tuple[str, ...] = ("x",), doc: str = "") -> Seed:
    return Seed(id=entry + str(len(code)), code=code, entry=entry, params=params, origin="test", doc=doc)


HIDDEN = "def f(x):\n    if x * 3 == 33:\n        return 'hit'\n    return 'miss'\n"


# ---- value caps -----------------------------------------------------------------------------------------------

def test_codei_o_caps_on_values_and_outputs():
    assert value_problem("x" * (MAX_STR - 1)) is None and value_problem("x" * MAX_STR) == "too_large"
    assert value_problem(list(range(MAX_ITEMS - 1))) is None and value_problem(list(range(MAX_ITEMS))) == "too_large"
    assert value_problem({"k": [("y" * MAX_STR,)]}) == "too_large"
    assert value_problem([1.5, float("nan")]) == "nonfinite" and value_problem((float("inf"),)) == "nonfinite"
    assert [output_problem(o) for o in ("None", "{'a', 'b'}", "set()", "(1, [2.5, 'x'])")] == [None] * 4
    assert output_problem("[nan, 1.0]") == "nonfinite" and output_problem("inf") == "nonfinite"
    assert output_problem("<Foo object>") == "unliteral_output" and output_problem("range(0, 3)") == "unliteral_output"
    assert output_problem(repr("z" * 1100)) == "too_large" and output_problem(repr(list(range(25)))) == "too_large"


# ---- mutation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [5, -3, True, 2.5, "abc", "", b"ab", [1, 2, 3], [], ["a", "b"], (1, "x"),
                                   {"a": 1}, {}, {1, 2}, [[1], [2, 3]], None])
def test_mutation_keeps_the_type_stays_small_and_is_seeded(value):
    first = [mutate_value(value, random.Random(7)) for _ in range(1)]
    rng_a, rng_b = random.Random(3), random.Random(3)
    a = [mutate_value(value, rng_a) for _ in range(200)]
    b = [mutate_value(value, rng_b) for _ in range(200)]
    assert args_source(a) == args_source(b) and first == [mutate_value(value, random.Random(7))]
    for mutated in a:
        assert type(mutated) is type(value)
        assert value_problem(mutated) is None, mutated


def test_mutation_reaches_the_expected_neighbours():
    rng = random.Random(0)
    ints = {mutate_value(5, rng) for _ in range(300)}
    assert {4, 6, 10, -5, 0} <= ints
    strs = {mutate_value("abc", rng) for _ in range(300)}
    assert {"ab", "", "abcc"} & strs and any(len(s) == 4 for s in strs) and any(len(s) == 3 and s != "abc" for s in strs)
    lists = [mutate_value([1, 2, 3], rng) for _ in range(300)]
    assert [] in lists and [3, 2, 1] in lists and any(len(x) == 4 for x in lists) and any(len(x) == 2 for x in lists)
    dicts = [mutate_value({"a": 1, "b": 2}, rng) for _ in range(300)]
    assert {} in dicts and any(len(d) == 1 for d in dicts) and any(d.keys() == {"a", "b"} and d != {"a": 1, "b": 2}
                                                                 for d in dicts)
    tuples = {mutate_value((1, "x"), rng) for _ in range(100)}
    assert all(len(t) == 2 for t in tuples) and len(tuples) > 5
    assert {mutate_args((1, 2), random.Random(1)) for _ in range(50)} != {(1, 2)}


def test_constants_of_the_body_become_mutation_hints():
    hints = constant_hints(__import__("ast").parse("def f(s, n):\n    return s.startswith('#') and n > 100\n"))
    assert {99, 100, 101} <= set(hints.ints) and "#" in hints.strs
    rng = random.Random(0)
    assert 101 in {mutate_value(5, rng, hints=hints) for _ in range(200)}


# ---- static guesses -------------------------------------------------------------------------------------------

GUESSY = '''\
def f(text, n=2, words: list[str] = None, d=None, k: "int | None" = None, data=None, s2=None):
    """Repeat.

    >>> f('ab', 3)
    'ababab'
    >>> f(text='x')
    'xx'
    >>> print(f('y'))
    """
    for w in words:
        d.get(w)
    if data.startswith('#'):
        return text * n
    return s2
'''


def test_guesses_come_from_defaults_annotations_usage_and_names():
    guesses = parameter_guesses(seed_of(GUESSY))
    firsts = {name: values[0] for name, values in guesses.items()}
    assert firsts == {"text": "abc", "n": 2, "words": ["a", "b"], "d": {"a": 1, "b": 2}, "k": 3, "data": "abc",
                      "s2": "abc"}
    assert None in guesses["d"][:5]  # a None default is tried right after the typed guess


def test_doctest_examples_are_read_from_the_docstring():
    assert doctest_calls(seed_of(GUESSY)) == [("ab", 3), ("x",)]
    assert doctest_calls(seed_of("def f(a, b):\n    return a\n", doc=">>> f(1, b=[2])\n1\n>>> g(3)\n")) == [(1, [2])]


# ---- the search -----------------------------------------------------------------------------------------------

def test_mutation_finds_the_branch_the_example_misses(sb):
    seed = seed_of(HIDDEN)
    example_only = trace_calls(sb, seed, ["1"])
    assert line_coverage(seed, example_only) == 2 / 3 and branch_coverage(seed, example_only) == 0.5
    found = generate_inputs(sb, seed, examples=["1"], guess=False)
    assert found.inputs == ["1", "11"]
    assert found.line_coverage == 1.0 and found.branch_coverage == 1.0
    assert [t.output for t in found.traces] == ["'miss'", "'hit'"]
    assert line_coverage(seed, found.traces) == 1.0


def test_a_function_that_depends_on_earlier_calls_is_rejected_as_nondeterministic(sb):
    counter = seed_of("CALLS = [0]\n\ndef f(x):\n    CALLS[0] += 1\n    return x + CALLS[0]\n")
    found = generate_inputs(sb, counter, examples=["1", "2", "3"])
    assert found.nondeterministic and found.inputs == [] and found.traces == []
    assert found.rejected["nondeterministic"] >= 1


def test_big_outputs_exceptions_and_timeouts_are_rejected_with_reasons(sb):
    code = """\
import itertools

def f(n):
    if n < 0:
        sum(itertools.count())  # endless, inside one line: only the timeout stops it
    elif n > 500:
        while True:
            pass  # endless, line by line: the step bound stops it
    if n == 0:
        raise ValueError('zero')
    return 'ab' * n
"""
    found = generate_inputs(sb, seed_of(code, params=("n",)), examples=["3", "60", "0", "-1", "oops(", "3", "1, 2", "501"],
                            guess=False, max_tries=24, timeout_s=0.3)
    assert "60" not in found.inputs and "0" not in found.inputs and "-1" not in found.inputs
    assert found.inputs[0] == "3" and all(len(t.output) < MAX_STR for t in found.traces)
    assert found.rejected["too_large"] >= 1 and found.rejected["raised:ValueError"] >= 1
    assert found.rejected["timeout"] >= 1 and found.rejected["truncated"] >= 1
    assert found.rejected["bad_args"] == 2 and found.rejected["duplicate"] == 1


def test_the_type_grid_finds_inputs_for_an_unannotated_function(sb):
    code = "def f(q):\n    out = []\n    for key, value in q.items():\n        if value > 1:\n            out.append(key)\n    return out\n"
    found = generate_inputs(sb, seed_of(code, params=("q",)))
    assert found.inputs and all(parse_args(a)[0].__class__ is dict for a in found.inputs)
    assert found.line_coverage == 1.0 and found.branch_coverage == 1.0
    assert found.rejected.get("raised:AttributeError", 0) >= 1  # the grid's ints, strs and lists failed


def test_a_function_without_parameters_gets_the_empty_argument_list(sb):
    found = generate_inputs(sb, seed_of("def f():\n    return 42\n", params=()))
    assert found.inputs == [""] and found.traces[0].output == "42" and found.line_coverage == 1.0


def test_the_teacher_hook_alternates_with_mutation(sb):
    calls = []

    def propose(seed: Seed, kept: list[str]) -> list[str]:
        calls.append(list(kept))
        return ["11", "not a literal(", "1"]

    found = generate_inputs(sb, seed_of(HIDDEN), examples=["1"], guess=False, propose=propose)
    assert calls[0] == ["1"] and found.inputs == ["1", "11"]
    assert found.rejected["bad_args"] >= 1 and found.rejected["duplicate"] >= 1


def test_stops_at_max_inputs_and_is_deterministic(sb):
    seed = seed_of("def f(a, b):\n    return a + b\n", params=("a", "b"))
    one = generate_inputs(sb, seed, max_inputs=3, rng_seed=5)
    two = generate_inputs(sb, seed, max_inputs=3, rng_seed=5)
    assert len(one.inputs) == 3 and one.to_json() == two.to_json()
    assert InputsResult.from_json(one.to_json()) == one
    other = seed_of(HIDDEN)
    together = generate_inputs_many(sb, [seed, other], examples=[[], ["1"]], max_inputs=3, rng_seed=5)
    assert together[0].to_json() == one.to_json()
    assert together[1].to_json() == generate_inputs(sb, other, examples=["1"], max_inputs=3, rng_seed=5).to_json()


def test_output_that_hangs_on_string_hashing_is_rejected_when_the_second_run_hashes_differently():
    """``list({...})`` of strings orders by hash: with the second runs in a pool of another hash seed, such a
    program is caught every time (the build's setting), and kept outputs are those of hash seed 0."""
    from data_pipeline.builder.inputs import generate_inputs
    from data_pipeline.builder.types import Seed
    from sandbox import Sandbox

    seed = Seed(id="h", code="def f(words):\n    return list(set(words))", entry="f", params=("words",),
                origin="test")
    with Sandbox(workers=1, hash_seed=0) as first, Sandbox(workers=1, hash_seed=1) as second:
        found = generate_inputs(first, seed, examples=["['alpha', 'beta', 'gamma', 'delta', 'omega']"],
                                guess=False, verify_sandbox=second)
    assert found.inputs == [] and found.nondeterministic
