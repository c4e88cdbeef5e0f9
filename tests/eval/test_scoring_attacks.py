"""Benchmark scoring as an attacker would try it, and the reference scorers' semantics kept where they matter.

CRUXEval answers and EvalPlus solutions run in the sandbox; their values are compared in the harness, so
objects that claim equality, a rewritten ``f`` and answers that only look like a call all fail.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from eval.benchmarks import Extracted, get_benchmark
from eval.benchmarks.cruxeval import repeats_the_call
from eval.prompts import release_quote_swap
from eval.runner import EvalConfig, run, score

ALWAYS_EQUAL = "type('E', (), {'__eq__': lambda self, other: True, '__hash__': lambda self: 0})()"


@pytest.fixture(scope="module")
def crux(shared_data_dir):
    benches = {name: get_benchmark(name) for name in ("cruxeval-i", "cruxeval-o")}
    return {name: (bench, {p.task_id: p for p in bench.load(shared_data_dir)}) for name, bench in benches.items()}


def crux_score(sandbox, crux, name, task_id, answers):
    bench, problems = crux[name]
    return score(bench, sandbox, [(problems[task_id], Extracted(a)) for a in answers])


@pytest.mark.parametrize("answer", [ALWAYS_EQUAL, f"[{ALWAYS_EQUAL}]", f"{{1: {ALWAYS_EQUAL}}}",
                                    "__import__('builtins').__dict__.update(AssertionError=int) or 0",
                                    "exec('import os; os._exit(0)')", "__import__('sys').exit(0)"])
def test_output_predictions_that_forge_equality_or_escape_fail(sandbox, crux, answer):
    (result,) = crux_score(sandbox, crux, "cruxeval-o", "sample_0", [answer])
    assert result["status"] != "passed", result


@pytest.mark.parametrize("release_quotes", [False, True])
def test_output_predictions_that_repeat_the_prompts_call_fail_in_both_quote_modes(sandbox, shared_data_dir,
                                                                                 release_quotes):
    """The official rule refuses an output prediction containing ``f(<input>)``, as a substring with the
    record's quotes; the prompt shows the input with ``'`` turned into ``"``, and the release's extraction turns
    ``"`` back into ``'``.  Before the rule compared parsed calls, a model repeating the prompt's call passed
    439 of 800 tasks by default (53 of the first 100) and 144 (19) with ``--release-quotes``."""
    bench = get_benchmark("cruxeval-o", release_quotes=release_quotes)
    problems = bench.load(shared_data_dir)
    items = []
    for problem in problems:
        shown = release_quote_swap(problem.record["input"])  # the call as the prompt shows it
        raw = f"[L5] The function is called.\n[ANSWER]\nassert f({shown}) == f({shown})\n"
        items.append((problem, bench.extract(problem, raw)))
    results = score(bench, sandbox, items)
    assert len(results) == 800
    assert [p.task_id for (p, _), r in zip(items, results) if r["status"] == "passed"] == []
    refused = sum(r["message"] == "the output prediction contains the call f(input)" for r in results)
    # with the release's swap back, 5 answers no longer parse (their inputs hold both quotes) and 1 becomes
    # another call (sample_684: an escaped quote inside a string changes), which fails by value
    assert refused == (794 if release_quotes else 800)


@pytest.mark.parametrize("answer,repeats", [
    ("f('bcksrut', 'q')", True),          # the official substring test
    ('f("bcksrut", "q")', True),          # as the prompt shows it
    ("f( 'bcksrut' ,'q', )", True),       # spaced differently
    ("[f('bcksrut', 'q')][0]", True),     # inside the answer
    ("f(*['bcksrut', 'q'])", False),      # another spelling of the arguments: evaluated by value, as there
    ("f('bcksru', 'tq')", False),         # another call of f: evaluated by value, as there
    ("'bcksrutq'", False),
])
def test_the_call_rule_compares_parsed_calls(answer, repeats):
    assert repeats_the_call(answer, "'bcksrut', 'q'") is repeats


@pytest.mark.parametrize("answer,says", [
    # passes the official scorer: the argument rewrites f's code before the call runs it
    ("f(setattr(f, '__code__', (lambda *a: OUTPUT).__code__))", "f(input prediction)"),
    ("f(__builtins__.__setitem__('len', lambda x: 0))", "f(input prediction)"),
    ("f('x') or True", "not one call f(...)"),
    ("f('x') == OUTPUT", "not one call f(...)"),
    ("g(f('x'))", "not one call f(...)"),
    (f"f({ALWAYS_EQUAL})", "not plain data"),
    ("f(lambda x: x.__class__)", "attribute '__class__'"),
    ("f(lambda x: open('/etc/passwd'))", "'open' is not available"),
    ("f(", "not valid Python"),
])
def test_input_predictions_run_the_trusted_f_on_plain_values(sandbox, crux, answer, says):
    output = crux["cruxeval-i"][1]["sample_0"].record["output"]
    (result,) = crux_score(sandbox, crux, "cruxeval-i", "sample_0", [answer.replace("OUTPUT", output)])
    assert result["status"] != "passed" and says in result["message"], result


def test_gold_inputs_with_lambdas_ranges_and_names_from_the_code_pass(sandbox, crux):
    bench, problems = crux["cruxeval-i"]
    gold = {t: bench.gold(problems[t]) for t in ("sample_344", "sample_364", "sample_522", "sample_258")}
    assert "lambda" in gold["sample_344"] and "range(" in gold["sample_522"]
    results = score(bench, sandbox, [(problems[t], Extracted(a)) for t, a in gold.items()])
    assert [r["status"] for r in results] == ["passed"] * 4, results


def test_cruxeval_runs_the_program_as_the_official_scorer_does_with_an_empty_namespace(sandbox, crux):
    bench, problems = crux["cruxeval-o"]
    record = dict(problems["sample_0"].record, code="def f():\n    return 1\n", input="", output="'builtins'",
                  expected="builtins")
    problem = dataclasses.replace(problems["sample_0"], record=record)
    results = score(bench, sandbox, [(problem, Extracted("__name__")), (problem, Extracted("'__main__'"))])
    assert [r["status"] for r in results] == ["passed", "failed"]


@pytest.fixture(scope="module")
def humaneval_plus(shared_data_dir, gt_cache):
    bench = get_benchmark("humaneval+", gt_cache_dir=gt_cache)
    problems = {p.task_id: p for p in bench.load(shared_data_dir, limit=3)}
    bench.prepare(list(problems.values()))
    return bench, problems


def evalplus_score(sandbox, humaneval_plus, solutions):
    bench, problems = humaneval_plus
    p = problems["HumanEval/0"]
    return score(bench, sandbox, [(p, Extracted(p.record["prompt"] + s)) for s in solutions])


def test_evalplus_solutions_keep_the_official_semantics(sandbox, humaneval_plus):
    canonical = humaneval_plus[1]["HumanEval/0"].record["canonical_solution"]
    solutions = [
        canonical + "\nif __name__ == '__main__':\n    print(has_close_elements(input(), 0))\n",  # not run, as there
        canonical + "\nimport sys\nsys.stdout.write('x' * (20 * 1024 * 1024))\n",  # output is swallowed
        canonical + "\nimport os\nassert os.listdir('.') == [], os.listdir('.')\n",  # nothing of the harness
    ]
    assert [r["status"] for r in evalplus_score(sandbox, humaneval_plus, solutions)] == ["passed"] * 3


@pytest.mark.parametrize("solution", [
    f"    return {ALWAYS_EQUAL}\n",
    "    import builtins\n    builtins.bool = lambda *a: True\n    return None\n",
    "    import numpy\n    numpy.allclose = lambda *a, **k: True\n    return 0.5\n",
    "    import sys\n    return sys._getframe(1).f_globals['emit'](['value', True])\n",
    "    import os\n    os._exit(0)\n",
])
def test_evalplus_forgeries_fail(sandbox, humaneval_plus, solution):
    (result,) = evalplus_score(sandbox, humaneval_plus, [solution])
    assert result["status"] != "passed", result


def test_summary_records_the_sandbox_mode(shared_data_dir, tmp_path):
    path = tmp_path / "generations.json"
    path.write_text(json.dumps({"sample_0": ["'bbqbbqbbq'"]}))
    summary = run(EvalConfig(benchmarks=["cruxeval-o"], predictions=str(path), limit=1), tmp_path / "out",
                  data_dir=shared_data_dir, progress=False)
    assert summary["cruxeval-o"]["sandbox_mode"] == "namespaces"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["cruxeval-o"]["sandbox_mode"] == "namespaces"
