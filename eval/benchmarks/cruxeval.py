"""CRUXEval input (``cruxeval-i``) and output (``cruxeval-o``) prediction, 800 samples each.

Prompts: the release's direct / cot / monologue builders (``eval.prompts.cruxeval_prompt``) after its
single-to-double quote swap.  Scoring follows ``cruxeval/evaluation``: execute ``{code}\nassert {output} ==
{answer}`` with a 3 s timeout; an input prediction must contain ``f(``, an output prediction must not
contain ``f({input})`` (the original input).
"""

from __future__ import annotations

import os

from eval.benchmarks import Benchmark, DataError, Extracted, Problem, data_file, read_jsonl, require_keys
from eval.extract import cruxeval_answer
from eval.prompts import CRUXEVAL_MODES, cruxeval_prompt
from eval.sandbox import Job

TIMEOUT_S = 3.0
# The program runs in a namespace of its own, so an answer cannot reach the sandbox's ``report``.
DRIVER = 'exec(compile(PAYLOAD, "<candidate>", "exec"), {"__name__": "__main__"})\n'


class CruxEval(Benchmark):
    stop = ("[/ANSWER]",)

    def __init__(self, name: str, mode: str = "monologue", release_quotes: bool = False, swap_quotes: bool = True):
        if mode not in CRUXEVAL_MODES:
            raise DataError(f"--mode {mode!r}: expected one of {', '.join(CRUXEVAL_MODES)}")
        self.name = name
        self.task = name[-1]  # "i" or "o"
        self.mode = mode
        self.release_quotes = release_quotes
        self.swap_quotes = swap_quotes

    def load(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[Problem]:
        path = data_file(self.name, data_dir)
        problems = []
        for i, record in enumerate(read_jsonl(path)):
            require_keys(record, ("code", "input", "output", "id"), f"{path}: record {i + 1}")
            prompt = cruxeval_prompt(self.task, self.mode, record["code"], record["input"], record["output"],
                                     swap_quotes=self.swap_quotes)
            problems.append(Problem(record["id"], prompt, record))
        return problems[:limit] if limit is not None else problems

    def extract(self, problem: Problem, raw: str) -> Extracted:
        return Extracted(cruxeval_answer(raw, self.task, release_compatible=self.release_quotes))

    def jobs(self, problem: Problem, extracted: Extracted) -> dict[str, Job | str]:
        record, answer = problem.record, extracted.text
        if self.task == "i" and "f(" not in answer:
            return {"main": "input prediction does not call f("}
        if self.task == "o" and f"f({record['input']})" in answer:
            return {"main": "output prediction contains the call f(input)"}
        program = f"{record['code']}\nassert {record['output']} == {answer}"
        return {"main": Job(DRIVER, program, timeout_s=TIMEOUT_S)}

    def gold(self, problem: Problem) -> str:
        """The reference answer (the gold input call for -I, the output literal for -O)."""
        record = problem.record
        return f"f({record['input']})" if self.task == "i" else record["output"]

    def description(self, problem: Problem) -> str:
        return problem.record["code"]
