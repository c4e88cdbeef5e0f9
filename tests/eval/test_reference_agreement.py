"""Per-sample agreement with EvalPlus 0.3.1's own checker on the same solutions (slow, opt-in).

EvalPlus conflicts with the project's tensorflow (protobuf), so it lives in a separate throwaway Python:
set ``EVALPLUS_PYTHON`` to one with ``evalplus==0.3.1`` installed (see docs/eval.md).  The solutions are the
canonical ones plus up to three mutants per task; every sample and part must get the same pass/fail,
except HumanEval/32, where 0.3.1 fails every solution (docs/eval.md, deliberate difference 1).
"""

from __future__ import annotations

import json
import os
import subprocess

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
@pytest.mark.parametrize("name,data_file", [("humaneval+", "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"),
                                            ("mbpp+", "mbppplus/MbppPlus-v0.2.0.jsonl.gz")])
def test_pass_fail_equals_evalplus_per_sample(sandbox, shared_data_dir, gt_cache, tmp_path, name, data_file):
    python = os.environ.get("EVALPLUS_PYTHON")
    if not python:
        pytest.skip("set EVALPLUS_PYTHON to a Python with evalplus==0.3.1 (not the project venv)")
    bench = get_benchmark(name, gt_cache_dir=gt_cache)
    problems = bench.load(shared_data_dir)
    samples, items = [], []
    for p in problems:
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
    assert [d for d in disagreements if d[0] != "HumanEval/32"] == []
    assert all(ref == "fail" for _, _, ref, _ in disagreements)
