"""Execution rewards: a response earns its reward only when running it proves it right.

- ``forward`` (predict the output): the predicted expression is evaluated in the sandbox after the program,
  in its namespace; its *value* comes back as plain data and is compared with the real output here.  An
  object that claims to equal everything is not plain data; printing "passed" or exiting early returns
  no value.
- ``backward`` (find an input): the predicted call's arguments are evaluated in the sandbox and come back
  as plain data; the trusted program then runs on them in a fresh process that runs no response code, and
  its return value is compared with the output here.

- ``code`` (NL -> code): the extracted solution runs on the task's test inputs in the sandbox; every call's
  return value comes back as plain data and must equal the expected output here (EvalPlus-shaped tasks:
  the EvalPlus scorer, base and plus inputs, its comparison rules).  Asserts are never run: an object that
  equals everything, an early exit or a printed "passed" proves nothing.

These are the CRUXEval-O / -I and EvalPlus scorers of ``eval.benchmarks`` (their attack tests apply), so a
reward and a benchmark score agree on what "right" means.  ``semcoder_jax.rl`` takes tasks and a scoring
function as arguments; ``semcoder train`` passes these (the layers point down: eval stands on semcoder_jax).  Rewards (``RewardConfig``): ``correct`` for a
right answer, ``wrong`` for a wrong one, and the same ``wrong`` for a timeout, an error, a missing
``[ANSWER]`` block or an unparsable answer (``status`` says which); ``format_bonus`` is added when the
answer parses (an expression for forward, a call ``f(...)`` for backward, code defining the entry point),
right or wrong: a shaping term, 0 by default.  A code solution gets ``code_timeout_s`` seconds for all its
tests (PyX tasks; EvalPlus sets its own limits from the reference solution's timings).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.builder.trace import parse_args
from data_pipeline.prompts import render_prompt
from eval.benchmarks import DataError, Extracted, Problem, iter_jsonl
from eval.benchmarks.cruxeval import CruxEval
from eval.benchmarks.evalplus import EvalPlus
from eval.extract import code_extract, cruxeval_answer, sanitize
from eval.prompts import cruxeval_prompt
from sandbox import Sandbox, function_tests
from sandbox.function_tests import Verdict
from semcoder_jax.errors import UserError

TASK_KINDS = ("forward", "backward", "code")
_PYTHON_BLOCK = re.compile(r"\[PYTHON\]\n(?P<code>.*)\n(?P<assert>assert [^\n]*)\n\[/PYTHON\]", re.S)


@dataclasses.dataclass(frozen=True)
class Task:
    """One verifiable question: ``kind`` forward (``input`` given) or backward (``output`` given), scored
    against ``output``, the real output as a Python literal; or ``code`` (NL -> code): a solution defining
    ``entry_point`` must return each test's output (``tests``: (arguments, output) Python sources) or, for
    an EvalPlus-shaped task, pass ``problem`` (an ``eval.benchmarks.Problem``) as the benchmark scores it."""

    kind: str
    id: str
    code: str
    input: str
    output: str
    prompt: str
    entry_point: str = ""
    tests: tuple[tuple[str, str], ...] = ()
    problem: Problem | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    correct: float = 1.0
    wrong: float = 0.0
    format_bonus: float = 0.0
    code_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.correct <= self.wrong:
            raise ValueError(f"rewards.correct ({self.correct}) must exceed rewards.wrong ({self.wrong})")
        if self.code_timeout_s <= 0:
            raise ValueError(f"rewards.code_timeout_s must be positive, got {self.code_timeout_s}")


@dataclasses.dataclass(frozen=True)
class Reward:
    """``value``: the reward; ``correct``: the answer was proven right; ``status``: passed / failed /
    timeout / error / no_answer; ``message``: why not, for logs."""

    value: float
    correct: bool
    status: str
    message: str = ""


def make_task(kind: str, id: str, code: str, input: str, output: str, prompt: str | None = None) -> Task:
    """A task; its prompt defaults to the release's CRUXEval monologue prompt (``eval.prompts.cruxeval_prompt``,
    quotes as written)."""
    if kind not in ("forward", "backward"):
        raise UserError(f"task {id}: kind must be forward or backward, got {kind!r} (code_task makes NL -> code)")
    if prompt is None:
        prompt = cruxeval_prompt("o" if kind == "forward" else "i", "monologue", code, input, output,
                                 swap_quotes=False)
    return Task(kind, id, code, input, output, prompt)


def code_task(id: str, instruction: str, entry_point: str, tests: Sequence[tuple[str, str]],
              prompt: str | None = None) -> Task:
    """An NL -> code task: ``tests`` are (arguments, output) Python sources, e.g. ``("'ab', 2", "'abab'")``;
    the prompt defaults to the one supervised training renders for ``instruction`` (``nl2code``)."""
    where = f"task {id}"
    if not entry_point.isidentifier():
        raise UserError(f"{where}: entry_point {entry_point!r} is not a Python name")
    if not tests:
        raise UserError(f"{where}: an NL -> code task needs at least one test")
    for args, output in tests:
        try:
            parse_args(args)
        except ValueError as e:
            raise UserError(f"{where}: test input: {e}") from None
        _literal(output, where)
    return Task("code", id, "", "", "", prompt if prompt is not None else render_prompt("nl2code", instruction),
                entry_point, tuple((str(a), str(o)) for a, o in tests))


def _literal(text: str, where: str) -> str:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UserError(f"{where}: the output {text[:60]!r} is not a Python literal") from None
    return text


def tasks_from_record(record: dict, where: str) -> list[Task]:
    """Tasks of one JSON record, by shape:

    - CRUXEval (``code``, ``input``, ``output``, ``id``): a forward and a backward task, with the CRUXEval
      monologue prompts;
    - EvalPlus (HumanEval+ / MBPP+ release records: ``task_id``, ``prompt``, ``canonical_solution``,
      ``base_input``, ...): a code task with the release's prompt, scored as the benchmark;
    - PyX: ``fwd_mnl`` (with its verified ``response``) or ``bwd_mnl``, with the prompt supervised training
      renders for it; ``nl`` with ``entry_point`` and ``tests`` (``[{"input": ARGS, "output": VALUE}]``, as
      ``semcoder data build`` writes them): a code task.  Other records (PyX-R, ``nl`` without tests) give
      none; ``load_tasks`` counts them.
    """
    if all(k in record for k in ("task_id", "canonical_solution", "base_input")):
        benchmark = _evalplus("humaneval+" if str(record["task_id"]).startswith("HumanEval") else "mbpp+")
        try:
            problem = benchmark.problem(dict(record), where)
        except (DataError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: not an EvalPlus record ({e})") from None
        return [Task("code", problem.task_id, "", "", "", problem.prompt, record["entry_point"], (), problem)]
    if record.get("nl") and "tests" in record:
        tests = record["tests"]
        if not isinstance(tests, list) or not all(isinstance(t, dict) and {"input", "output"} <= t.keys()
                                                  for t in tests):
            raise UserError(f"{where}: tests must be a list of {{\"input\": ..., \"output\": ...}} objects")
        if not isinstance(record.get("entry_point"), str):
            raise UserError(f"{where}: an nl record with tests needs its entry_point (a function name)")
        if not tests:
            return []
        return [code_task(str(record.get("id", where)), record["nl"], record["entry_point"],
                          [(t["input"], t["output"]) for t in tests])]
    if all(k in record for k in ("code", "input", "output")):
        rid = str(record.get("id", where))
        output = _literal(record["output"], where)
        return [make_task(kind, f"{rid}:{kind}", record["code"], record["input"], output)
                for kind in ("forward", "backward")]
    rid = str(record.get("id", where))
    for field, kind in (("fwd_mnl", "forward"), ("bwd_mnl", "backward")):
        question = record.get(field) or ""
        if not question:
            continue
        m = _PYTHON_BLOCK.search(question)
        if m is None:
            raise UserError(f"{where}: {field} has no [PYTHON] block ending in an assert line")
        try:
            entry, call, expected = assertion_parts(m.group("assert"))
        except ValueError as e:
            raise UserError(f"{where}: {field}: {e}") from None
        code = m.group("code")
        if entry != "f":
            # The scorers call ``f`` (CRUXEval's convention): bind it to the entry point, unless the program
            # already uses the name for something else (such a record gives no task; load_tasks counts it).
            if "f" in _names(code, where):
                return []
            code = f"{code}\n\nf = {entry}"
        prompt = render_prompt("exec_o" if kind == "forward" else "exec_i", question)  # as supervised training
        if kind == "forward":  # the output: the verified response's answer
            answer = cruxeval_answer(record.get("response", ""), "o", prompt=question)
            task = make_task(kind, f"{rid}:forward", code, call, _literal(answer, where), prompt)
        else:
            task = make_task(kind, f"{rid}:backward", code, "", _literal(expected, where), prompt)
        return [dataclasses.replace(task, entry_point=entry)]
    return []


def _names(code: str, where: str) -> set[str]:
    """Every name ``code`` reads, binds or defines."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise UserError(f"{where}: the program does not parse ({e.msg}, line {e.lineno})") from None
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)} | {
        a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}


def assertion_parts(line: str) -> tuple[str, str, str]:
    """``assert NAME(ARGS) == OUTPUT`` -> (NAME, ARGS, OUTPUT); ``??`` stands for the unknown side."""
    body = line.removeprefix("assert ").strip()
    left, sep, right = body.partition(" == ")
    name, paren, _ = left.partition("(")
    if not sep or not paren or not name.isidentifier() or not left.endswith(")"):
        raise ValueError(f"expected 'assert f(...) == ...', got {line[:80]!r}")
    return name, left[len(name) + 1:-1], right.strip()


def load_tasks(path: str | os.PathLike, limit: int | None = None,
               counts: dict[str, int] | None = None) -> list[Task]:
    """Tasks from a JSON Lines file (plain or .gz), shaped as ``tasks_from_record`` reads; a bad line names
    file:line.  ``counts`` (if given) gets the number of tasks per kind and ``records_without_task``.
    EvalPlus tasks get their reference outputs here (run once, cached as the benchmark caches them)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: task file not found")
    tasks: list[Task] = []
    for n, record in iter_jsonl(path):
        found = tasks_from_record(record, f"{path}:{n}")
        tasks += found
        if counts is not None and not found:
            counts["records_without_task"] = counts.get("records_without_task", 0) + 1
        if limit is not None and len(tasks) >= limit:
            tasks = tasks[:limit]
            break
    if not tasks:
        raise UserError(f"{path}: no task in the file (see eval.rewards.tasks_from_record for the shapes read)")
    for name, benchmark in _EVALPLUS.items():
        problems = [t.problem for t in tasks if t.problem is not None and _benchmark_of(t) == name]
        if problems:
            benchmark.prepare(problems, source=path)
    if counts is not None:
        for task in tasks:
            counts[task.kind] = counts.get(task.kind, 0) + 1
    return tasks


def _parses(kind: str, answer: str, entry_point: str = "") -> bool:
    if kind == "code":
        try:
            tree = ast.parse(answer)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return False
        return any(isinstance(node, ast.FunctionDef) and node.name == entry_point for node in tree.body)
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    if kind == "forward":
        return True
    return isinstance(tree.body, ast.Call) and isinstance(tree.body.func, ast.Name) and tree.body.func.id == "f"


_SCORERS = {"forward": CruxEval("cruxeval-o", swap_quotes=False), "backward": CruxEval("cruxeval-i", swap_quotes=False)}
_EVALPLUS: dict[str, EvalPlus] = {}


def _evalplus(name: str) -> EvalPlus:
    if name not in _EVALPLUS:
        _EVALPLUS[name] = EvalPlus(name)
    return _EVALPLUS[name]


def _benchmark_of(task: Task) -> str:
    return "humaneval+" if task.id.startswith("HumanEval") else "mbpp+"


def _code_verdicts(sandbox: Sandbox, items: list[tuple[Task, str]], config: RewardConfig) -> list[Verdict]:
    """One verdict per (code task, solution): every part of an EvalPlus task must pass; a PyX task's calls
    must return its outputs (plain data, compared here)."""
    out: list[Verdict | None] = [None] * len(items)
    for name in {_benchmark_of(t) for t, _ in items if t.problem is not None}:
        mine = [(i, t, code) for i, (t, code) in enumerate(items) if t.problem is not None and _benchmark_of(t) == name]
        benchmark = _evalplus(name)
        verdicts = benchmark.verdicts(sandbox, [(t.problem, Extracted(code)) for _, t, code in mine])
        for (i, _, _), parts in zip(mine, verdicts):
            failing = [v for v in parts.values() if v.status != "passed"]
            out[i] = failing[0] if failing else parts[benchmark.parts[0]]
    plain = [(i, t, code) for i, (t, code) in enumerate(items) if t.problem is None]
    programs = [function_tests.Program(code, t.entry_point, calls=[parse_args(a) for a, _ in t.tests],
                                       timeout_s=config.code_timeout_s) for _, t, code in plain]
    results = function_tests.run(sandbox, programs) if programs else []
    for (i, t, _), result in zip(plain, results):
        out[i] = function_tests.judge(result, [ast.literal_eval(o) for _, o in t.tests])
    return out  # type: ignore[return-value]


def _solution(task: Task, response: str) -> str:
    if task.problem is not None:
        return _evalplus(_benchmark_of(task)).extract(task.problem, response).text
    return sanitize(code_extract(response.split("```python", 1)[-1].split("```", 1)[0]), task.entry_point)


def score(sandbox: Sandbox, tasks: Sequence[Task], responses: Sequence[str],
          config: RewardConfig = RewardConfig()) -> list[Reward]:
    """One reward per (task, response), scored in ``sandbox`` (in parallel over its workers)."""
    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
    out: list[Reward | None] = [None] * len(tasks)
    todo_answer: dict[int, str] = {}
    code = []
    for i, (task, response) in enumerate(zip(tasks, responses)):
        if task.kind == "code":
            solution = _solution(task, response)
            if _parses("code", solution, task.entry_point):
                code.append((i, task, solution))
            else:
                out[i] = Reward(config.wrong, False, "no_answer", f"no definition of {task.entry_point}")
    for (i, _, _), verdict in zip(code, _code_verdicts(sandbox, [(t, c) for _, t, c in code], config)):
        correct = verdict.status == "passed"
        out[i] = Reward((config.correct if correct else config.wrong) + config.format_bonus, correct, verdict.status,
                        verdict.message or "")
    for kind, scorer in _SCORERS.items():
        todo = []
        for i, (task, response) in enumerate(zip(tasks, responses)):
            if task.kind != kind:
                continue
            # The SemCoder templates name "[ANSWER]" in their instructions: only a prompt that opens the block
            # itself (CRUXEval's direct mode) lets a response without one be an answer.
            if task.entry_point not in ("", "f"):  # the question calls the program's own name; scorers call f
                response = re.sub(rf"\b{re.escape(task.entry_point)}\(", "f(", response)
            if "[ANSWER]" not in response and not task.prompt.rstrip().endswith("[ANSWER]"):
                out[i] = Reward(config.wrong, False, "no_answer", "no [ANSWER] block")
                continue
            problem = Problem(task.id, task.prompt, {"code": task.code, "input": task.input, "output": task.output,
                                                     "expected": ast.literal_eval(task.output)})
            extracted = scorer.extract(problem, response)
            todo_answer[i] = extracted.text
            todo.append((i, problem, extracted))
        verdicts = scorer.verdicts(sandbox, [(p, e) for _, p, e in todo]) if todo else []
        for (i, _, _), verdict in zip(todo, verdicts):
            main = verdict["main"]
            correct = main.status == "passed"
            bonus = config.format_bonus if _parses(kind, todo_answer[i]) else 0.0
            out[i] = Reward((config.correct if correct else config.wrong) + bonus, correct, main.status,
                            main.message or "")
    return out  # type: ignore[return-value]


__all__ = ["Reward", "RewardConfig", "Task", "TASK_KINDS", "code_task", "load_tasks", "make_task", "score",
           "tasks_from_record"]
