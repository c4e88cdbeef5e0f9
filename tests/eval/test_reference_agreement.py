"""Per-sample agreement with the reference scorers on the same predictions.

EvalPlus 0.3.1 (slow, opt-in): it conflicts with the project's tensorflow (protobuf), so it lives in a
separate throwaway Python: set ``EVALPLUS_PYTHON`` to one with ``evalplus==0.3.1`` installed (see
docs/eval.md).  The solutions are the canonical ones plus up to three mutants per task, as written and as
completions through each side's sanitizer (the release runs ``evalplus.sanitize`` before scoring); every
sample and part must get the same pass/fail, except HumanEval/32, where 0.3.1 fails every solution
(docs/eval.md, deliberate difference 1), and Mbpp/630, whose helper 0.3.1's sanitizer drops.

CRUXEval: Code Llama 7B's published generations with the official scorer's published verdicts
(``data/cruxeval_codellama-7b_temp0.2.json.gz``), the gold answers, and an adversarial set run through
the official program (``reference_scripts.py``).
"""

from __future__ import annotations

import gzip
import json
import os
import runpy
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from eval.benchmarks import Extracted, get_benchmark
from eval.runner import score

REFERENCE = r'''
import gzip, json, sys, types
from concurrent.futures import ThreadPoolExecutor
sys.modules["datasets"] = types.SimpleNamespace(load_dataset=None)  # imported by evalplus.data, unused here
from evalplus.data.mbpp import mbpp_deserialize_inputs
from evalplus.eval import untrusted_check
from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
from evalplus.gen.util import trusted_exec
from evalplus.sanitize import sanitize

req = json.load(open(sys.argv[1]))
dataset = req["dataset"]
problems = {}
with gzip.open(req["data_file"], "rt") as f:
    for line in f:
        p = json.loads(line)
        if dataset == "mbpp":
            p["base_input"] = mbpp_deserialize_inputs(p["task_id"], p["base_input"])
            p["plus_input"] = mbpp_deserialize_inputs(p["task_id"], p["plus_input"])
        problems[p["task_id"]] = p
gt = {}
for tid in sorted({s["task_id"] for s in req["samples"]}):
    p = problems[tid]
    nn = dataset == "mbpp" and p["entry_point"] in MBPP_OUTPUT_NOT_NONE_TASKS
    gt[tid] = {part: trusted_exec(p["prompt"] + p["canonical_solution"], p[part + "_input"], p["entry_point"],
                                  record_time=True, output_not_none=nn) for part in ("base", "plus")}

def one(s):
    p = problems[s["task_id"]]
    if "completion" in s:  # the release's path: prompt + completion, evalplus.sanitize, then evaluate
        s = dict(s, solution=sanitize(p["prompt"] + s["completion"], p["entry_point"]))
    out = {}
    for part in ("base", "plus"):
        expected, times = gt[s["task_id"]][part]
        out[part] = untrusted_check(dataset, s["solution"], p[part + "_input"], p["entry_point"], expected,
                                    p["atol"], times, fast_check=True)[0]
    return out

with ThreadPoolExecutor(2) as pool:
    results = list(pool.map(one, req["samples"]))
json.dump(results, open(sys.argv[2], "w"))
'''

MUTATIONS = [(" + ", " - "), (" < ", " <= "), ("== ", "!= "), ("range(len(", "range(1, len("), (" > ", " >= "),
             ("return True", "return False"), ("[0]", "[-1]"), (" - 1", " + 1")]


def mutants(code: str, n: int = 3) -> list[str]:
    out = []
    for old, new in MUTATIONS:
        if old in code and len(out) < n:
            out.append(code.replace(old, new, 1))
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # invalid escapes in a few canonical solutions
@pytest.mark.parametrize("as_completion", [False, True], ids=["solutions", "sanitized-completions"])
@pytest.mark.parametrize("name,data_file", [("humaneval+", "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"),
                                            ("mbpp+", "mbppplus/MbppPlus-v0.2.0.jsonl.gz")])
def test_pass_fail_equals_evalplus_per_sample(sandbox, shared_data_dir, gt_cache, tmp_path, name, data_file,
                                              as_completion):
    python = os.environ.get("EVALPLUS_PYTHON")
    if not python:
        pytest.skip("set EVALPLUS_PYTHON to a Python with evalplus==0.3.1 (not the project venv)")
    bench = get_benchmark(name, gt_cache_dir=gt_cache)
    problems = bench.load(shared_data_dir)
    samples, items = [], []
    for p in problems:
        if as_completion:
            canonical = p.record["canonical_solution"]
            for completion in [canonical, *mutants(canonical)]:
                samples.append({"task_id": p.task_id, "completion": completion})
                items.append((p, Extracted(bench.solution_from_completion(p, completion))))
            continue
        canonical = p.record["prompt"] + p.record["canonical_solution"]
        for solution in [canonical, *mutants(canonical)]:
            samples.append({"task_id": p.task_id, "solution": solution})
            items.append((p, Extracted(solution)))
    request, result = tmp_path / "request.json", tmp_path / "reference.json"
    request.write_text(json.dumps({"dataset": bench.dataset, "data_file": str(shared_data_dir / data_file),
                                   "samples": samples}))
    script = tmp_path / "reference.py"
    script.write_text(REFERENCE)
    # evalplus executes the solutions with its own (non-)sandbox: keep it off the network at least
    isolate = ["unshare", "--net"] if os.geteuid() == 0 else []
    subprocess.run([*isolate, python, str(script), str(request), str(result)], check=True)
    reference = json.loads(result.read_text())
    bench.prepare(problems)
    ours = score(bench, sandbox, items)
    disagreements = [(s["task_id"], part, ref[part], mine["parts"][part]["status"])
                     for s, ref, mine in zip(samples, reference, ours) for part in ("base", "plus")
                     if (ref[part] == "pass") != (mine["parts"][part]["status"] == "passed")]
    passed = sum(all(ref[part] == "pass" for part in ("base", "plus")) for ref in reference)
    print(name, "as completions" if as_completion else "as solutions", len(samples), "samples,", passed,
          "pass evalplus,", sum(r["status"] == "passed" for r in ours), "pass here; disagreements:", disagreements)
    assert [d for d in disagreements if d[0] not in ("HumanEval/32", "Mbpp/630")] == []
    assert all(ref == "fail" for _, _, ref, _ in disagreements)
    if not as_completion:
        assert [d for d in disagreements if d[0] == "Mbpp/630"] == []


# ---- CRUXEval -------------------------------------------------------------------------------------------------

reference = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("reference_scripts.py"))))

@pytest.fixture(scope="module")
def codellama() -> dict:
    with gzip.open(Path(__file__).with_name("data") / "cruxeval_codellama-7b_temp0.2.json.gz", "rt") as f:
        return json.load(f)


def codellama_disagreements(sandbox, shared_data_dir, codellama, task: str, limit: int | None) -> tuple[int, list]:
    bench = get_benchmark(f"cruxeval-{task}")
    problems = bench.load(shared_data_dir, limit)
    data = codellama["output" if task == "o" else "input"]
    items, official = [], []
    for p in problems:
        items += [(p, Extracted(g)) for g in data["generations"][p.task_id]]
        official += data["scored"][p.task_id]
    ours = score(bench, sandbox, items)
    return len(items), [(p.task_id, x.text, ref, mine["message"])
                        for (p, x), ref, mine in zip(items, official, ours) if ref != (mine["status"] == "passed")]


@pytest.mark.parametrize("task", ["o", "i"])
def test_cruxeval_codellama_generations_get_the_official_verdicts_on_the_first_30_tasks(
        sandbox, shared_data_dir, codellama, task):
    n, disagreements = codellama_disagreements(sandbox, shared_data_dir, codellama, task, limit=30)
    assert n == 300 and disagreements == []


@pytest.mark.slow
@pytest.mark.parametrize("task", ["o", "i"])
def test_cruxeval_codellama_generations_get_the_official_verdicts(sandbox, shared_data_dir, codellama, task):
    """All 8,000 generations of each task (official: 2,737 pass -O, 2,876 pass -I)."""
    n, disagreements = codellama_disagreements(sandbox, shared_data_dir, codellama, task, limit=None)
    assert n == 8000 and disagreements == []


@pytest.mark.slow
@pytest.mark.parametrize("task", ["o", "i"])
def test_cruxeval_gold_answers_pass_the_official_program_and_here(sandbox, shared_data_dir, tmp_path, task):
    bench = get_benchmark(f"cruxeval-{task}")
    problems = bench.load(shared_data_dir)
    gold = [bench.gold(p) for p in problems]
    official = reference.official_verdicts([reference.official_program(p.record["code"], p.record["input"], p.record["output"],
                                                             g, task) for p, g in zip(problems, gold)], tmp_path)
    ours = score(bench, sandbox, [(p, Extracted(g)) for p, g in zip(problems, gold)])
    assert sum(official) == 800 and [r["status"] for r in ours] == ["passed"] * 800


ALWAYS_EQUAL = "type('E', (), {'__eq__': lambda self, other: True, '__hash__': lambda self: 0})()"
# (task, sample, answer, the official scorer passes it, this harness passes it)
ADVERSARIAL = [
    ("o", "sample_3", "'bcksrutq'", True, True),                          # the gold answer
    ("o", "sample_3", "f('bcksrut', 'q')", False, False),                 # the call, as the record spells it
    ("o", "sample_3", 'f("bcksrut", "q")', True, False),                  # the call as the prompt shows it
    ("o", "sample_3", "f('bcksrut','q')", True, False),                   # ... or spaced otherwise
    ("o", "sample_3", ALWAYS_EQUAL, True, False),                         # an object equal to everything
    ("o", "sample_3", "'x' or True", True, False),                        # `o == 'x' or True`
    ("o", "sample_3", "'bcksrutq'\nThis is the output.", False, False),   # text after the answer
    ("o", "sample_3", "__import__('sys').exit(0)", False, False),
    ("o", "sample_3", "exec('import os; os._exit(0)')", False, False),
    ("i", "sample_3", "f('bcksrut', 'q')", True, True),                   # the gold answer
    ("i", "sample_3", "f('x', 'y') or True", True, False),
    ("i", "sample_3", "f(setattr(f, '__code__', (lambda *a: 'bcksrutq').__code__))", True, False),
    ("i", "sample_3", f"f({ALWAYS_EQUAL}, 'q')", False, False),           # the call raises (str + E)
    ("i", "sample_3", "'bcksrutq'", False, False),                        # no call of f
    ("i", "sample_3", "f(", False, False),
]


def test_cruxeval_adversarial_answers_official_against_ours(sandbox, shared_data_dir, tmp_path):
    """Every difference from the official scorer on these answers is one it passes and this harness fails:
    the call rule on parsed calls, values compared as plain data, one call of f (docs/eval.md)."""
    programs, ours = [], []
    for task, sample, answer, _, _ in ADVERSARIAL:
        bench = get_benchmark(f"cruxeval-{task}")
        problem = {p.task_id: p for p in bench.load(shared_data_dir, limit=10)}[sample]
        r = problem.record
        programs.append(reference.official_program(r["code"], r["input"], r["output"], answer, task))
        (result,) = score(bench, sandbox, [(problem, Extracted(answer))])
        ours.append(result["status"] == "passed")
    official = reference.official_verdicts(programs, tmp_path)
    assert official == [case[3] for case in ADVERSARIAL]
    assert ours == [case[4] for case in ADVERSARIAL]
