"""REval (DREval): problems and prompts, recomputed ground truth, scoring, official logs, Incremental Consistency.

Reads the release from ``shared/data/reval`` (never bundled).  Ground truth comes from tracing the programs
in the sandbox; the release ships no coverage / state / path answers (only the queries), so what is checked
against the release is: every function output (``outputs``) equals the traced return value, every ClassEval
test (the output task's gold answer) passes, and gold answers built from the trace score 100 %.

Expected differences (``EXPECTED_UNTRACEABLE``), all from this environment, not from the tracer:
DREval/117 and DREval/149 import ``gensim`` (not installed); DREval/122 calls ``np.mat``, removed in
NumPy 2.0.  Their 100 coverage/state/path queries and 11 output tasks cannot be scored here (verdict
``error``).  ``EXPECTED_UNANSWERABLE``: 26 state queries whose value no ``value; type`` answer can match in the
official parser either as run here (a ``type`` object, ``datetime.datetime``, ``collections.deque``).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import time
from pathlib import Path

import pytest

from eval.benchmarks import DataError, Problem, get_benchmark
from eval.benchmarks.reval import (
    REval,
    incremental_consistency,
    output_check,
    parse_state,
    path_answer_lines,
    postprocess,
    state_mismatch,
)
from eval.runner import read_predictions
from semcoder_jax.errors import UserError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REVAL = DATA / "reval"
NAMES = ("reval-coverage", "reval-state", "reval-path", "reval-output")
COUNTS = {"reval-coverage": 3152, "reval-state": 3152, "reval-path": 3152, "reval-output": 690}
EXPECTED_UNTRACEABLE = {117: "No module named 'gensim'", 122: "np.mat", 149: "No module named 'gensim'"}
EXPECTED_UNANSWERABLE = 26

pytestmark = pytest.mark.skipif(not (REVAL / "DREval_data.jsonl").is_file(), reason="REval data not present")


def _lines(name: str) -> list[dict]:
    return [json.loads(line) for line in open(REVAL / name)]


@pytest.fixture(scope="module")
def loaded() -> dict[str, list[Problem]]:
    return {name: REval(name).load(DATA) for name in NAMES}


# ---- problems and prompts ----------------------------------------------------------------------------------

def test_one_problem_per_instance_with_stable_ids(loaded):
    tasks = _lines("DREval_tasks.jsonl")
    want_q = [f"DREval/{t['idx']}/{p['input_idx']}/{q}" for t in tasks for p in t["tasks"] for q in range(len(p["task"]))]
    want_o = [f"DREval/{t['idx']}/{p['input_idx']}" for t in tasks for p in t["tasks"]]
    for name in NAMES:
        ids = [p.task_id for p in loaded[name]]
        assert len(ids) == COUNTS[name] == len(set(ids))
        assert ids == (want_o if name == "reval-output" else want_q)
    assert [p.task_id for p in REval("reval-state", "cot").load(DATA, limit=5)] == want_q[:5]


def _official_setup(test_code: str, cls_name: str, input_idx: int, tmp_path: Path) -> str:
    """What the release computes: ``inspect.getsource(cls.setUp)`` of the test class (a class-only module)."""
    path = tmp_path / "reval_test_module.py"
    path.write_text(test_code)
    ns: dict = {}
    exec(compile(test_code, str(path), "exec"), ns)  # the release's test code: class definitions only
    import unittest

    classes = [v for k, v in ns.items() if isinstance(v, type) and re.match(f"{cls_name}Test.*", k)
               and issubclass(v, unittest.TestCase)]
    return inspect.getsource(classes[input_idx].setUp)


@pytest.mark.parametrize("mode", ["direct", "cot"])
def test_prompts_fill_the_official_templates(loaded, mode, tmp_path):
    data = {d["task_id"]: d for d in _lines("DREval_data.jsonl")}
    tpl = {t: (REVAL / "prompts" / f"{mode}_{t}.txt").read_text() for t in ("coverage", "state", "path", "output")}
    problems = loaded if mode == "direct" else {n: REval(n, mode).load(DATA) for n in NAMES}
    by_id = {n: {p.task_id: p for p in problems[n]} for n in NAMES}
    # a function (DREval/0, input 0, query 0: line 17, var distance)
    d = data["DREval/0"]
    code, inv = d["code"], "has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3)"
    kw = dict(code=code, invocation=inv, invocation_abbr=inv, line=17, codeline=code.split("\n")[16])
    assert by_id["reval-coverage"]["DREval/0/0/0"].prompt == tpl["coverage"].format(**kw)
    assert by_id["reval-state"]["DREval/0/0/0"].prompt == tpl["state"].format(**kw, var="distance")
    numbered = "".join(f"{i + 1}\t{line}\n" for i, line in enumerate(code.split("\n")))
    assert by_id["reval-path"]["DREval/0/0/0"].prompt == tpl["path"].format(**{**kw, "code": numbered})
    assert by_id["reval-output"]["DREval/0/0"].prompt == tpl["output"].format(
        code=code, invocation="\nassert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == ??")
    # a class whose test has a setUp: the release's two setup layouts
    pick = next(p for p in problems["reval-state"] if p.record["kind"] == "class" and "def setUp" in p.record["test"]
                and "setup code" in p.prompt)
    r = pick.record
    setup = _official_setup(r["test"], r["entry_point"], r["input_idx"], tmp_path)
    body = setup.split("\n")[1:]
    a = "\n# setup code executed previously\n" + "\n# ".join(body)
    b = "\n# setup code executed previously\n# " + "\n# ".join(body)
    kw = dict(code=r["code"], invocation=a + "\n" + r["input"].rstrip(), invocation_abbr="the above test code",
              line=r["lineno"], codeline=r["code"].split("\n")[r["lineno"] - 1])
    assert pick.prompt == tpl["state"].format(**kw, var=r["var"])
    assert by_id["reval-coverage"][pick.task_id].prompt == tpl["coverage"].format(**kw)
    assert by_id["reval-path"][pick.task_id].prompt == tpl["path"].format(**{**kw, "invocation": b + "\n" + r["input"].rstrip()})
    prelude = "\n# Test code starts here. Only write the completed test code in your answer.\n"
    out_id = pick.task_id.rsplit("/", 1)[0]
    assert by_id["reval-output"][out_id].prompt == tpl["output"].format(code=r["code"], invocation=b + prelude + r["output_pred"])
    # a class without a setUp of its own shows none (the release finds TestCase.setUp and drops it)
    plain = by_id["reval-coverage"]["DREval/85/0/0"]
    assert "setup code" not in plain.prompt and "the above test code" in plain.prompt


# ---- ground truth and gold answers -------------------------------------------------------------------------

def _gold_run(sandbox, programs: set[int] | None) -> dict:
    """Trace (once, shared by the four tasks) and score gold answers through ``extract`` + ``verdicts``."""
    benches = {n: REval(n) for n in NAMES}
    problems = {n: [p for p in benches[n].load(DATA) if programs is None or p.record["idx"] in programs] for n in NAMES}
    shared = benches["reval-coverage"]
    shared.ground_truth(sandbox, problems["reval-coverage"] + problems["reval-output"])
    report = {}
    for n in NAMES:
        bench = benches[n]
        bench._truth = shared._truth
        items, untraceable, unanswerable = [], set(), 0
        for p in problems[n]:
            t = bench.truth(p)
            if t.get("error"):
                untraceable.add(p.record["idx"])
                assert EXPECTED_UNTRACEABLE[p.record["idx"]] in t["error"]
                continue
            gold = bench.gold(p)
            if gold is None:
                unanswerable += 1
                continue
            raw = ("[THOUGHT]\n...\n[/THOUGHT]\n" if bench.mode == "cot" else "") + "[ANSWER]\n" + gold + "\n"
            items.append((p, bench.extract(p, raw)))
        verdicts = bench.verdicts(sandbox, items)
        failed = [(p.task_id, v["main"].message) for (p, _), v in zip(items, verdicts) if v["main"].status != "passed"]
        report[n] = {"scored": len(items), "failed": failed, "untraceable": untraceable, "unanswerable": unanswerable,
                     "total": len(problems[n])}
    report["outputs"] = _outputs_agree(shared, problems["reval-output"])
    return report


def _outputs_agree(bench: REval, problems: list[Problem]) -> tuple[int, int, list]:
    """Release ``outputs`` vs the traced return values: (literal outputs compared, agreeing, non-literal)."""
    compared = agree = 0
    other = []
    for p in problems:
        r = p.record
        if r["kind"] != "function" or bench.truth(p).get("error"):
            continue
        try:
            expected = ast.literal_eval(r["output"])
        except ValueError:
            other.append(p.task_id)  # e.g. "(3 + 5 + 7, 3 * 5 * 7)": checked by the output task's gold run
            continue
        compared += 1
        agree += expected == bench.truth(p)["output"]
    return compared, agree, other


def test_gold_answers_score_100_on_a_sample(sandbox):
    report = _gold_run(sandbox, set(range(0, 12)) | set(range(85, 97)))
    for n in NAMES:
        assert report[n]["failed"] == [], n
        assert report[n]["scored"] > 0
    compared, agree, _ = report["outputs"]
    assert compared == agree > 0


@pytest.mark.slow
def test_gold_answers_score_100_on_all_154_programs():
    from sandbox import Sandbox

    with Sandbox(workers=8, preload=("numpy",)) as sandbox:
        start = time.time()
        report = _gold_run(sandbox, None)
    print(f"\nREval full gold run: {time.time() - start:.1f} s", file=sys.stderr)
    for n in NAMES:
        r = report[n]
        print(f"{n}: {r['scored']} of {r['total']} scored, all passed; untraceable programs "
              f"{sorted(r['untraceable'])}; unanswerable {r['unanswerable']}", file=sys.stderr)
        assert r["failed"] == []
        assert r["untraceable"] <= set(EXPECTED_UNTRACEABLE)
    assert report["reval-coverage"]["scored"] == report["reval-path"]["scored"] == 3152 - 100
    assert report["reval-state"]["unanswerable"] == EXPECTED_UNANSWERABLE
    assert report["reval-output"]["scored"] == 690 - 11
    compared, agree, other = report["outputs"]
    assert (compared, agree, other) == (395, 395, ["DREval/5/3"])


# ---- planted wrong answers, the harness's and the official prediction files ---------------------------------

WRONG = {"reval-coverage": 7, "reval-state": 4, "reval-path": 5, "reval-output": 3}


def _wrong(task: str, gold: str) -> str:
    if task == "coverage":
        return "NO" if gold == "YES" else "YES"
    if task == "path":
        return "-1" if gold != "-1" else "return None"
    if task == "state":
        return "Nil" if gold != "Nil" else "0; int"
    return gold.replace("==", "!=", 1) if "==" in gold else gold + "\nassert False"


@pytest.mark.parametrize("name", NAMES)
def test_planted_wrong_answers_score_as_planted(sandbox, loaded, name, tmp_path):
    bench = REval(name)
    problems = [p for p in loaded[name] if p.record["idx"] in (0, 1, 2, 86, 87)]
    bench.ground_truth(sandbox, problems)
    problems = [p for p in problems if bench.gold(p) is not None]
    n, k = len(problems), WRONG[name]
    wrong_ids = {p.task_id for p in problems[1::max(1, n // k)][:k]}
    assert len(wrong_ids) == k
    path = tmp_path / "samples.jsonl"
    with open(path, "w") as f:
        for p in problems:
            gold = bench.gold(p)
            answer = _wrong(bench.task, gold) if p.task_id in wrong_ids else gold
            f.write(json.dumps({"task_id": p.task_id, "sample": 0, "round": 0, "raw": f"[ANSWER]\n{answer}\n"}) + "\n")
    preds = read_predictions(path, bench, problems)
    items = [(p, bench.extract(p, preds[p.task_id][0]["raw"])) for p in problems]
    verdicts = bench.verdicts(sandbox, items)
    passed = {p.task_id for (p, _), v in zip(items, verdicts) if v["main"].status == "passed"}
    assert len(passed) == n - k and not passed & wrong_ids, f"{name}: {(n - k) / n:.4f} expected"


def test_official_generation_log_is_read(loaded, tmp_path):
    """``model_generations/{task}@{model}/{time}.jsonl``: a line per program, then a metrics line."""
    tasks = _lines("DREval_tasks.jsonl")[:2]
    path = tmp_path / "24-07-01-12-00.jsonl"
    with open(path, "w") as f:
        for t in tasks:
            gens = [{"input_idx": p["input_idx"], "results": [{"generated": f"YES {t['idx']}/{p['input_idx']}/{q}",
                                                              "response": True, "expected": True}
                                                             for q in range(len(p["task"]))]} for p in t["tasks"]]
            f.write(json.dumps({"task_id": t["task_id"], "generation": gens}) + "\n")
        f.write(json.dumps({"acc": 1.0, "prec": 1.0, "rec": 1.0, "f1": 1.0}) + "\n")
    bench = REval("reval-coverage")
    preds = read_predictions(path, bench, loaded["reval-coverage"])
    assert len(preds) == sum(len(p["task"]) for t in tasks for p in t["tasks"])
    assert preds["DREval/1/2/1"] == [{"raw": "YES 1/2/1"}]
    out = REval("reval-output")
    with open(path, "w") as f:
        f.write(json.dumps({"task_id": "DREval/0", "generation": [{"input_idx": 0, "results": [
            {"generated": "[ANSWER]\nassert x == 1\n", "pass": False}]}]}) + "\n")
    assert read_predictions(path, out, loaded["reval-output"]) == {"DREval/0/0": [{"raw": "[ANSWER]\nassert x == 1\n"}]}


# ---- answer parsing (pure Python: nothing evaluates model text) --------------------------------------------

def test_official_answer_parsing():
    assert postprocess("coverage", "direct", " yes\n[/ANSWER]") == "YES"
    assert postprocess("coverage", "direct", "Maybe YES") == "NO"  # only the first three characters count
    assert postprocess("coverage", "cot", "[THOUGHT] yes") == "NO"  # CoT not finished: NO
    assert postprocess("path", "direct", "[ANSWER]\n    return ans\nmore") == "return ans"
    assert postprocess("path", "direct", "") == "-2"
    assert path_answer_lines("return ans", "def f():\n    return ans\n    return ans") == [2, 3]
    assert path_answer_lines("-1", "x") == [-1] and path_answer_lines("nope", "x") == [-2]
    assert parse_state("[1, 2]; List[int]") == ([1, 2], "list")
    assert parse_state("'a'; <class 'str'>") == ("a", "str")
    assert parse_state("abc; string") == ("abc", "str")
    assert parse_state("(1, 2); Tuple[int, int]") == ((1, 2), "tuple")
    assert parse_state("bytearray(b'h'); bytearray") == (bytearray(b"h"), "bytearray")
    assert parse_state("Nil") is None and parse_state("3") == "ERROR"
    assert parse_state("__import__('os').system('x'); int") == "ERROR"  # never evaluated
    vals = [("builtins", "float", 0.30000000000000004, "0.30000000000000004"), ("builtins", "int", 3, "3")]
    assert state_mismatch("0.3; float", vals) is None and state_mismatch("3; int", vals) is None
    assert state_mismatch("3; float", vals) is not None  # a value that is not of the type it names
    assert state_mismatch("4; int", vals) is not None and state_mismatch("Nil", vals) is not None
    assert state_mismatch("Nil", None) is None


def test_output_answers_may_only_fill_the_holes():
    record = {"kind": "function", "entry_point": "f", "code": "import os\ndef f(x):\n    return x\n",
              "output_pred": "assert f(3) == ??"}
    assert output_check(record, "assert f(3) == 3")[0] == "assert f(3) == 3"
    assert output_check(record, "assert f(3)==3  # sure")[0] is not None
    assert output_check(record, "assert f(4) == 4")[0] is None  # changed the call
    assert "not allowed" in output_check(record, "assert f(3) == os.system('id')")[1]
    assert "not allowed" in output_check(record, "assert f(3) == (lambda: 3)()")[1]
    assert "not allowed" in output_check(record, "assert f(3) == f.__globals__")[1]
    assert "penalty" in output_check(record, "assert True")[1]
    cls = {"kind": "class", "entry_point": "A", "code": "class A:\n    def g(self):\n        return 1\n",
           "output_pred": "a = A()\nassertEqual(a.g(), ??)"}
    program, _ = output_check(cls, "assertEqual(a.g(), 1)")  # one line: the question's first line is put before
    assert program == "def dreval_output_pred(self):\n\ta = A()\n\tself.assertEqual(a.g(), 1)"


# ---- Incremental Consistency -------------------------------------------------------------------------------

def test_incremental_consistency_hand_checked():
    """Items (coverage queries) A = DREval/0/0/0, B = DREval/0/0/1 (both on output DREval/0/0), C = DREval/0/1/0
    (output DREval/0/1); outcomes (coverage, state, path, output):

    sample 0: A (T, T, T, T) -> 1; B (T, T, F, T) -> 0 (not an incremental pattern); C (T, F, F, F) -> 0.125.
              IC = 100 * 1.125 / 3 = 37.5
    sample 1: A (T, T, T, F) -> 0.5; B (T, T, F, F) -> 0.25; C (F, F, F, F) -> 0.  IC = 100 * 0.75 / 3 = 25.0
    mean over samples: 31.25."""
    queries = ["DREval/0/0/0", "DREval/0/0/1", "DREval/0/1/0"]
    outputs = ["DREval/0/0", "DREval/0/1"]
    outcome = {  # name -> sample -> task_id -> passed
        "reval-coverage": [dict(zip(queries, (1, 1, 1))), dict(zip(queries, (1, 1, 0)))],
        "reval-state": [dict(zip(queries, (1, 1, 0))), dict(zip(queries, (1, 1, 0)))],
        "reval-path": [dict(zip(queries, (1, 0, 0))), dict(zip(queries, (1, 0, 0)))],
        "reval-output": [dict(zip(outputs, (1, 0))), dict(zip(outputs, (0, 0)))],
    }
    records = {n: [{"task_id": t, "sample": s, "status": "passed" if ok else "failed"}
                   for s, per in enumerate(samples) for t, ok in per.items()] for n, samples in outcome.items()}
    problems = {n: [Problem(t, "", {}) for t in (outputs if n == "reval-output" else queries)] for n in NAMES}
    ic = incremental_consistency(records, problems)
    assert ic["ic_per_sample"] == [37.5, 25.0]
    assert ic["ic"] == 31.25
    assert ic["items"] == 3 and ic["samples"] == 2 and ic["missing"] == 0
    assert ic["counts"] == {"1": 1, "0.5": 1, "0.25": 1, "0.125": 1, "0": 2}
    assert "passed" not in ic  # the runner shows it as a cross-benchmark score
    with pytest.raises(ValueError, match="reval-path"):
        incremental_consistency({k: v for k, v in records.items() if k != "reval-path"}, problems)


# ---- errors ------------------------------------------------------------------------------------------------

def test_modes_and_names():
    assert get_benchmark("reval-state", mode="cot").mode == "cot"
    with pytest.raises(UserError, match="direct, cot"):
        get_benchmark("reval-coverage", mode="monologue")
    with pytest.raises(UserError, match="reval-coverage"):
        REval("reval-bogus")


def test_missing_data_says_not_bundled(tmp_path):
    with pytest.raises(DataError, match=r"DREval_data\.jsonl.*not bundled"):
        REval("reval-path").load(tmp_path)
    (tmp_path / "reval").mkdir()
    (tmp_path / "reval" / "DREval_data.jsonl").write_text((REVAL / "DREval_data.jsonl").read_text())
    with pytest.raises(DataError, match=r"DREval_tasks\.jsonl.*not bundled"):
        REval("reval-path").load(tmp_path)


def test_malformed_lines_name_file_and_line(tmp_path):
    folder = tmp_path / "reval"
    (folder / "prompts").mkdir(parents=True)
    for f in (REVAL / "prompts").iterdir():
        (folder / "prompts" / f.name).write_text(f.read_text())
    data = (REVAL / "DREval_data.jsonl").read_text().splitlines(keepends=True)
    tasks = (REVAL / "DREval_tasks.jsonl").read_text().splitlines(keepends=True)
    (folder / "DREval_tasks.jsonl").write_text("".join(tasks))
    (folder / "DREval_data.jsonl").write_text("".join(data[:3]) + "{not json\n" + "".join(data[3:]))
    with pytest.raises(DataError, match=r"DREval_data\.jsonl:4: not valid JSON"):
        REval("reval-state").load(tmp_path)
    broken = json.loads(data[1])
    del broken["code"]
    (folder / "DREval_data.jsonl").write_text(data[0] + json.dumps(broken) + "\n" + "".join(data[2:]))
    with pytest.raises(DataError, match=r"DREval_data\.jsonl:2: missing key\(s\) code"):
        REval("reval-state").load(tmp_path)
    (folder / "DREval_data.jsonl").write_text("".join(data))
    entry = json.loads(tasks[4])
    entry["tasks"][0] = {"input_idx": 0}
    (folder / "DREval_tasks.jsonl").write_text("".join(tasks[:4]) + json.dumps(entry) + "\n" + "".join(tasks[5:]))
    with pytest.raises(DataError, match=r"DREval_tasks\.jsonl:5: malformed task entry"):
        REval("reval-state").load(tmp_path)


def test_a_state_answer_cannot_make_the_harness_allocate():
    """``bytes(N)`` / ``bytearray(N)`` would allocate N bytes here, in the scorer's process: refused as unreadable."""
    from eval.benchmarks.reval import _literal

    assert _literal("bytearray(b'h')") == bytearray(b"h") and _literal("set()") == set()
    for answer in ("bytes(10**12)", "bytearray(99999999999999)", "bytes(99999999999999)"):
        with pytest.raises(ValueError):
            _literal(answer)
