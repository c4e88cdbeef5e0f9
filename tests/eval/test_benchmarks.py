"""Scorers are correct on the real benchmark data and follow the reference scorers' rules."""

from __future__ import annotations

import dataclasses
import json

import pytest

from eval.benchmarks import DataError, Extracted, get_benchmark
from eval.runner import EvalConfig, run, score


def _score(bench, sandbox, problems, texts):
    bench.prepare(problems)
    return score(bench, sandbox, [(p, Extracted(t)) for p, t in zip(problems, texts)])


@pytest.mark.parametrize("name", ["cruxeval-i", "cruxeval-o"])
def test_cruxeval_gold_answers_score_800_of_800(sandbox, shared_data_dir, name):
    bench = get_benchmark(name)
    problems = bench.load(shared_data_dir)
    assert len(problems) == 800
    results = _score(bench, sandbox, problems, [bench.gold(p) for p in problems])
    failed = [(p.task_id, r["message"]) for p, r in zip(problems, results) if r["status"] != "passed"]
    assert failed == []


def test_cruxeval_predictions_with_known_wrong_answers_score_exactly_that(sandbox, shared_data_dir, tmp_path):
    bench = get_benchmark("cruxeval-i")
    problems = bench.load(shared_data_dir)
    predictions = {p.task_id: [bench.gold(p)] for p in problems}
    wrong = {
        "sample_3": "f('certainly not')",        # a different input
        "sample_100": "('abc')",                  # no call of f( at all
        "sample_250": "f(",                       # a syntax error
        "sample_400": "f(*[1] * 10 ** 10)",       # a memory blow-up
        "sample_555": "f(__import__('time').sleep(10))",  # a hang
        "sample_799": "f(None)",                  # raises inside f
        "sample_600": "f(report('passed'))",      # tries to forge the sandbox's verdict
    }
    for task_id, answer in wrong.items():
        predictions[task_id] = [answer]
    path = tmp_path / "generations.json"
    path.write_text(json.dumps(predictions))
    summary = run(EvalConfig(benchmarks=["cruxeval-i"], predictions=str(path)), tmp_path / "out",
                  data_dir=shared_data_dir, progress=False)
    assert (summary["cruxeval-i"]["passed"], summary["cruxeval-i"]["total"]) == (793, 800)
    records = [json.loads(line) for line in (tmp_path / "out" / "cruxeval-i.jsonl").read_text().splitlines()]
    assert {r["task_id"] for r in records if r["status"] != "passed"} == set(wrong)
    assert next(r for r in records if r["task_id"] == "sample_555")["status"] == "timeout"


def test_humaneval_canonical_solutions_pass_all_164_on_the_base_inputs(sandbox, shared_data_dir, gt_cache):
    bench = get_benchmark("humaneval", gt_cache_dir=gt_cache)
    problems = bench.load(shared_data_dir)
    assert len(problems) == 164 and bench.parts == ("base",)
    results = _score(bench, sandbox, problems, [p.record["prompt"] + p.record["canonical_solution"] for p in problems])
    assert [p.task_id for p, r in zip(problems, results) if r["status"] != "passed"] == []


def test_humaneval_failure_quotes_the_failing_input_and_expected_output(sandbox, shared_data_dir, gt_cache):
    bench = get_benchmark("humaneval", gt_cache_dir=gt_cache)
    problem = bench.load(shared_data_dir, limit=1)[0]
    wrong = problem.record["prompt"] + "    return False\n"
    result = _score(bench, sandbox, [problem], [wrong])[0]
    assert result["status"] == "failed"
    assert result["failed_test"].startswith("retv = has_close_elements(") and "assert retv == True" in result["failed_test"]


@pytest.mark.parametrize("name,limit", [("humaneval+", 12), ("mbpp+", 12)])
def test_evalplus_canonical_solutions_pass_base_and_plus_on_a_subset(sandbox, shared_data_dir, gt_cache, name, limit):
    bench = get_benchmark(name, gt_cache_dir=gt_cache)
    problems = bench.load(shared_data_dir, limit=limit)
    results = _score(bench, sandbox, problems, [p.record["prompt"] + p.record["canonical_solution"] for p in problems])
    assert [(p.task_id, r["message"]) for p, r in zip(problems, results) if r["status"] != "passed"] == []
    assert all(set(r["parts"]) == {"base", "plus"} for r in results)


@pytest.mark.slow
@pytest.mark.parametrize("name,count", [("humaneval+", 164), ("mbpp+", 378)])
def test_evalplus_canonical_solutions_pass_everything(sandbox, shared_data_dir, gt_cache, name, count):
    """All canonical solutions pass base and plus.  On a loaded 2-core machine a few heavy plus inputs can
    exceed max(1 s, 4 x ground-truth time) (seen: HumanEval/15, Mbpp/255 at load average ~7); such a
    sample must be a time-out, and must pass when rerun on its own."""
    bench = get_benchmark(name, gt_cache_dir=gt_cache)
    problems = bench.load(shared_data_dir)
    assert len(problems) == count
    solutions = [p.record["prompt"] + p.record["canonical_solution"] for p in problems]
    results = _score(bench, sandbox, problems, solutions)
    failed = [i for i, r in enumerate(results) if r["status"] != "passed"]
    assert all(results[i]["status"] == "timeout" for i in failed), [results[i]["message"] for i in failed]
    assert len(failed) <= 3
    retried = [_score(bench, sandbox, [problems[i]], [solutions[i]])[0] for i in failed]
    assert [(problems[i].task_id, r["message"]) for i, r in zip(failed, retried) if r["status"] != "passed"] == []


@pytest.fixture(scope="module")
def humaneval_plus(shared_data_dir, gt_cache):
    bench = get_benchmark("humaneval+", gt_cache_dir=gt_cache)
    return bench, {p.task_id: p for p in bench.load(shared_data_dir)}


def test_float_outputs_compare_with_evalplus_tolerance(sandbox, humaneval_plus):
    bench, problems = humaneval_plus
    p = problems["HumanEval/2"]  # truncate_number, atol 1e-6
    close = p.record["prompt"] + "    return number - int(number) + 1e-9\n"
    far = p.record["prompt"] + "    return number - int(number) + 1e-3\n"
    as_int = p.record["prompt"] + "    return int(number - int(number))\n"
    results = _score(bench, sandbox, [p, p, p], [close, far, as_int])
    assert [r["status"] for r in results] == ["passed", "failed", "failed"], [r["message"] for r in results]


def test_find_zero_accepts_any_root_within_tolerance(sandbox, humaneval_plus):
    bench, problems = humaneval_plus
    record = dict(problems["HumanEval/32"].record)
    # (x - 1)(x - 2)(x - 3): the canonical Newton iteration from 0 finds 1.0; 3.0 is just as right
    record.update(base_input=[[[-6, 11, -6, 1]]], plus_input=[[[-6, 11, -6, 1]]])
    problem = dataclasses.replace(problems["HumanEval/32"], task_id="HumanEval/32-three-roots", record=record)
    answers = ["3.0", "2.0 + 1e-9", "2.5"]
    results = _score(bench, sandbox, [problem] * 3, [record["prompt"] + f"    return {a}\n" for a in answers])
    assert [r["status"] for r in results] == ["passed", "passed", "failed"]


def test_per_input_time_limit_is_max_of_one_second_and_four_times_ground_truth(sandbox, humaneval_plus):
    bench, problems = humaneval_plus
    p = problems["HumanEval/0"]
    def sleeping_first_call(seconds: float) -> str:
        return (p.record["prompt"] + f"    import time\n    if not CALLS:\n        time.sleep({seconds})\n"
                "    CALLS.append(1)\n" + p.record["canonical_solution"] + "CALLS = []\n")

    slow, quick_enough = sleeping_first_call(1.3), sleeping_first_call(0.5)
    slow_result, ok_result = _score(bench, sandbox, [p, p], [slow, quick_enough])
    assert slow_result["status"] == "timeout" and "test 0: the call exceeded its 1.00 s limit" in slow_result["message"]
    assert ok_result["status"] == "passed"


def test_mbpp_set_oracle_ignores_order_and_failures_name_the_test(sandbox, shared_data_dir, gt_cache):
    bench = get_benchmark("mbpp+", gt_cache_dir=gt_cache)
    p = bench.load(shared_data_dir, limit=1)[0]  # Mbpp/2 similar_elements: compared as sets
    reordered = "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"
    wrong = "def similar_elements(a, b):\n    return tuple(set(a) | set(b))\n"
    ok, bad = _score(bench, sandbox, [p, p], [reordered, wrong])
    assert ok["status"] == "passed"
    assert bad["status"] == "failed" and bad["parts"]["base"]["status"] == "failed"
    assert bad["failed_test"].startswith("retv = similar_elements((3, 4, 5, 6), (5, 7, 4, 10))\nassert retv == ")


def test_mbpp_is_the_base_part_of_mbpp_plus(shared_data_dir, gt_cache):
    mbpp, plus = get_benchmark("mbpp", gt_cache_dir=gt_cache), get_benchmark("mbpp+", gt_cache_dir=gt_cache)
    assert mbpp.parts == ("base",) and plus.parts == ("base", "plus")
    assert len(mbpp.load(shared_data_dir)) == 378


def test_missing_data_names_the_file_and_the_flag(tmp_path):
    with pytest.raises(DataError, match=r"cruxeval/cruxeval.jsonl not found; pass --data-dir"):
        get_benchmark("cruxeval-o").load(tmp_path)


def test_malformed_data_names_file_and_line(tmp_path):
    (tmp_path / "cruxeval").mkdir()
    (tmp_path / "cruxeval" / "cruxeval.jsonl").write_text('{"code": "def f(): pass", "input": "", "output": "None", "id": "sample_0"}\n{oops\n')
    with pytest.raises(DataError, match=r"cruxeval.jsonl:2: not valid JSON"):
        get_benchmark("cruxeval-o").load(tmp_path)


def test_a_broken_canonical_solution_is_reported_with_its_task(tmp_path, gt_cache):
    import gzip

    record = {"task_id": "Mbpp/1", "prompt": '"""\nAdd one.\nassert add_one(1) == 2\n"""\n', "entry_point": "add_one",
              "canonical_solution": "def add_one(x):\n    return x + undefined_name\n", "base_input": [[1]],
              "plus_input": [], "atol": 0}
    (tmp_path / "mbppplus").mkdir()
    with gzip.open(tmp_path / "mbppplus" / "MbppPlus-v0.2.0.jsonl.gz", "wt") as f:
        f.write(json.dumps(record) + "\n")
    bench = get_benchmark("mbpp+", gt_cache_dir=gt_cache)
    problems = bench.load(tmp_path)
    with pytest.raises(DataError, match=r"Mbpp/1: the canonical solution fails on its own inputs \(NameError"):
        bench.prepare(problems)
