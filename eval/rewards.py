"""Execution rewards: a response earns its reward only when running it proves it right.

- ``forward`` (predict the output): the predicted expression is evaluated in the sandbox after the program,
  in its namespace; its *value* comes back as plain data and is compared with the real output here.  An
  object that claims to equal everything is not plain data; printing "passed" or exiting early returns
  no value.
- ``backward`` (find an input): the predicted call's arguments are evaluated in the sandbox and come back
  as plain data; the trusted program then runs on them in a fresh process that runs no response code, and
  its return value is compared with the output here.

These are the CRUXEval-O / -I scorers of ``eval.benchmarks.cruxeval`` (their attack tests apply), so a
reward and a benchmark score agree on what "right" means.  ``semcoder_jax.rl`` takes tasks and a scoring
function as arguments; ``semcoder train`` passes these (the layers point down: eval stands on semcoder_jax).  Rewards (``RewardConfig``): ``correct`` for a
right answer, ``wrong`` for a wrong one, and the same ``wrong`` for a timeout, an error, a missing
``[ANSWER]`` block or an unparsable answer (``status`` says which); ``format_bonus`` is added when the
answer parses (an expression for forward, a call ``f(...)`` for backward), right or wrong: a shaping
term, 0 by default.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.prompts import render_prompt
from eval.benchmarks import Problem
from eval.benchmarks.cruxeval import CruxEval
from eval.extract import cruxeval_answer
from eval.prompts import cruxeval_prompt
from sandbox import Sandbox
from semcoder_jax.errors import UserError

TASK_KINDS = ("forward", "backward")
_PYTHON_BLOCK = re.compile(r"\[PYTHON\]\n(?P<code>.*)\n(?P<assert>assert [^\n]*)\n\[/PYTHON\]", re.S)


@dataclasses.dataclass(frozen=True)
class Task:
    """One verifiable question: ``kind`` forward (``input`` given) or backward (``output`` given); ``output``
    is the real output as a Python literal (both kinds are scored against it)."""

    kind: str
    id: str
    code: str
    input: str
    output: str
    prompt: str


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    correct: float = 1.0
    wrong: float = 0.0
    format_bonus: float = 0.0

    def __post_init__(self) -> None:
        if self.correct <= self.wrong:
            raise ValueError(f"rewards.correct ({self.correct}) must exceed rewards.wrong ({self.wrong})")


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
    if kind not in TASK_KINDS:
        raise UserError(f"task {id}: kind must be one of {', '.join(TASK_KINDS)}, got {kind!r}")
    if prompt is None:
        prompt = cruxeval_prompt("o" if kind == "forward" else "i", "monologue", code, input, output,
                                 swap_quotes=False)
    return Task(kind, id, code, input, output, prompt)


def _literal(text: str, where: str) -> str:
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UserError(f"{where}: the output {text[:60]!r} is not a Python literal") from None
    return text


def tasks_from_record(record: dict, where: str) -> list[Task]:
    """Tasks of one JSON record: CRUXEval-shaped (``code``, ``input``, ``output``, ``id``: a forward and a
    backward task, with the CRUXEval monologue prompts) or PyX-shaped (``fwd_mnl`` with its verified
    ``response``, or ``bwd_mnl``, with the prompt supervised training renders for it; other PyX records,
    NL→code and PyX-R, give none)."""
    if all(k in record for k in ("code", "input", "output")):
        rid = str(record.get("id", where))
        output = _literal(record["output"], where)
        return [make_task(kind, f"{rid}:{kind}", record["code"], record["input"], output) for kind in TASK_KINDS]
    rid = str(record.get("id", where))
    for field, kind in (("fwd_mnl", "forward"), ("bwd_mnl", "backward")):
        question = record.get(field) or ""
        if not question:
            continue
        m = _PYTHON_BLOCK.search(question)
        if m is None:
            raise UserError(f"{where}: {field} has no [PYTHON] block ending in an assert line")
        try:
            call, expected = assertion_parts(m.group("assert"))
        except ValueError as e:
            raise UserError(f"{where}: {field}: {e}") from None
        prompt = render_prompt("exec_o" if kind == "forward" else "exec_i", question)  # as supervised training
        if kind == "forward":  # the output: the verified response's answer
            answer = cruxeval_answer(record.get("response", ""), "o", prompt=question)
            return [make_task(kind, f"{rid}:forward", m.group("code"), call, _literal(answer, where), prompt)]
        return [make_task(kind, f"{rid}:backward", m.group("code"), "", _literal(expected, where), prompt)]
    return []


def assertion_parts(line: str) -> tuple[str, str]:
    """``assert f(ARGS) == OUTPUT`` -> (ARGS, OUTPUT); ``??`` stands for the unknown side."""
    body = line.removeprefix("assert ").strip()
    left, sep, right = body.partition(" == ")
    if not sep or not left.startswith("f(") or not left.endswith(")"):
        raise ValueError(f"expected 'assert f(...) == ...', got {line[:80]!r}")
    return left[2:-1], right.strip()


def load_tasks(path: str | os.PathLike, limit: int | None = None) -> list[Task]:
    """Tasks from a JSON Lines file (plain or .gz), CRUXEval- or PyX-shaped; a bad line names file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: task file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    tasks: list[Task] = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{n}: expected a JSON object")
            tasks += tasks_from_record(record, f"{path}:{n}")
            if limit is not None and len(tasks) >= limit:
                return tasks[:limit]
    if not tasks:
        raise UserError(f"{path}: no forward or backward task in the file")
    return tasks


def _parses(kind: str, answer: str) -> bool:
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    if kind == "forward":
        return True
    return isinstance(tree.body, ast.Call) and isinstance(tree.body.func, ast.Name) and tree.body.func.id == "f"


_SCORERS = {"forward": CruxEval("cruxeval-o", swap_quotes=False), "backward": CruxEval("cruxeval-i", swap_quotes=False)}


def score(sandbox: Sandbox, tasks: Sequence[Task], responses: Sequence[str],
          config: RewardConfig = RewardConfig()) -> list[Reward]:
    """One reward per (task, response), scored in ``sandbox`` (in parallel over its workers)."""
    if len(tasks) != len(responses):
        raise ValueError(f"{len(tasks)} tasks but {len(responses)} responses")
    out: list[Reward | None] = [None] * len(tasks)
    todo_answer: dict[int, str] = {}
    for kind, scorer in _SCORERS.items():
        todo = []
        for i, (task, response) in enumerate(zip(tasks, responses)):
            if task.kind != kind:
                continue
            # The SemCoder templates name "[ANSWER]" in their instructions: only a prompt that opens the block
            # itself (CRUXEval's direct mode) lets a response without one be an answer.
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


__all__ = ["Reward", "RewardConfig", "Task", "TASK_KINDS", "load_tasks", "make_task", "score",
           "tasks_from_record"]
