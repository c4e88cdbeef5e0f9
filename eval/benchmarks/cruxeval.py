"""CRUXEval input (``cruxeval-i``) and output (``cruxeval-o``) prediction, 800 samples each.

Prompts: the release's direct / cot / monologue builders (``eval.prompts.cruxeval_prompt``) after its
single-to-double quote swap.  The official scorer (``cruxeval/evaluation``) executes ``{code}\\nassert
{output} == {answer}`` with ``exec(program, {})`` and a 3 s timeout; an input prediction must contain ``f(``,
an output prediction must not contain ``f({input})``.  Here the candidate's process never compares:

- ``cruxeval-o``: the answer expression is evaluated after the code, in its namespace (as the official
  program does), in the sandbox; its *value* comes back as plain data and is compared here with ``==``
  against ``ast.literal_eval(output)``.  An object that claims to equal everything is not plain data.
- ``cruxeval-i``: the answer must be one call ``f(...)``.  Its arguments are evaluated in one sandboxed
  process (after the code, as above) and come back as plain values; the trusted ``f`` then runs on them in
  a fresh process that runs no candidate code, and its return value is compared here with the output.
  A lambda argument (two gold inputs pass one) is accepted when it is a pure expression: only its own
  parameters, a few pure builtins, literals, operators and public attributes (``LAMBDA_NODES``).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Sequence
from typing import Any

from eval.benchmarks import Benchmark, DataError, Extracted, Problem, data_file, read_jsonl, require_keys
from eval.extract import cruxeval_answer
from eval.prompts import CRUXEVAL_MODES, cruxeval_prompt, release_quote_swap
from sandbox import Sandbox, function_tests
from sandbox.drivers import LAMBDA_BUILTINS
from sandbox.function_tests import Program, TestResult, Verdict

TIMEOUT_S = 3.0
LAMBDA_NODES = (ast.Lambda, ast.arguments, ast.arg, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.IfExp,
                ast.Subscript, ast.Slice, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Constant, ast.Name,
                ast.Attribute, ast.Call, ast.keyword, ast.Starred, ast.JoinedStr, ast.FormattedValue,
                ast.expr_context, ast.operator, ast.boolop, ast.cmpop, ast.unaryop)


def _failed(message: str) -> Verdict:
    return Verdict("failed", message, 0, [TestResult("failed", message)])


def check_lambda(node: ast.Lambda, source: str) -> str | None:
    """Why a lambda argument is not a pure expression (None when it is)."""
    allowed_names = set(LAMBDA_BUILTINS)

    def walk(n: ast.AST, params: set[str]) -> str | None:
        if not isinstance(n, LAMBDA_NODES):
            return f"{type(n).__name__} is not allowed in a lambda argument"
        if isinstance(n, ast.Lambda):
            params = params | {a.arg for a in n.args.args + n.args.kwonlyargs + n.args.posonlyargs}
            params |= {a.arg for a in (n.args.vararg, n.args.kwarg) if a is not None}
        if isinstance(n, ast.Name) and n.id not in params and n.id not in allowed_names:
            return f"the name {n.id!r} is not available to a lambda argument"
        if isinstance(n, ast.Attribute) and n.attr.startswith("_"):
            return f"the attribute {n.attr!r} is not available to a lambda argument"
        for child in ast.iter_child_nodes(n):
            why = walk(child, params)
            if why:
                return why
        return None

    return walk(node, set())


def _call_key(call: ast.Call) -> str:
    return ast.dump(ast.Call(func=ast.Name(id="f", ctx=ast.Load()), args=call.args, keywords=call.keywords))


def repeats_the_call(answer: str, input: str) -> bool:
    """Whether an output prediction contains the call ``f(<input>)``, which the official scorer refuses.

    Its rule is a substring test, ``f"f({input})" in answer``, with the record's own quotes.  The release
    shows the model the input with every ``'`` turned into ``"`` and turns every ``"`` of the answer into ``'``,
    so that test misses the call as the model saw it or as the release rewrote it.  Here the call is found as
    the official test finds it, as text with the prompt's quotes, or anywhere in the parsed answer as a call
    of ``f`` whose arguments parse to the same values as the input (quotes and spaces then do not matter)."""
    forms = dict.fromkeys((input, release_quote_swap(input)))
    if any(f"f({form})" in answer for form in forms):
        return True
    keys = set()
    for form in forms:
        try:
            call = ast.parse(f"f({form})", mode="eval").body
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        if isinstance(call, ast.Call):
            keys.add(_call_key(call))
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "f"
               and _call_key(node) in keys for node in ast.walk(tree))


def split_call(answer: str) -> tuple[str, list[tuple[int | str, str]]] | str:
    """An input prediction ``f(...)`` as (an expression giving ``((args...), {kwargs})`` with ``None`` where a
    lambda goes, the lambdas by position or keyword), or why it is not one call of ``f``."""
    try:
        tree = ast.parse(answer.strip(), mode="eval")
    except SyntaxError as e:
        return f"the input prediction is not valid Python ({e.msg})"
    text = answer.strip()
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "f"):
        return "the input prediction is not one call f(...)"
    args, kwargs, lambdas = [], [], []
    starred = False
    for position, node in enumerate(call.args):
        source = ast.get_source_segment(text, node)
        if isinstance(node, ast.Starred):
            starred = True
            args.append(source)
        elif isinstance(node, ast.Lambda):
            why = check_lambda(node, source)
            if why or starred:
                return why or "a lambda argument after *args"
            lambdas.append((position, source))
            args.append("None")
        else:
            args.append(f"({source})")
    for keyword in call.keywords:
        source = ast.get_source_segment(text, keyword.value)
        if keyword.arg is None:
            kwargs.append(f"**({source})")
        elif isinstance(keyword.value, ast.Lambda):
            why = check_lambda(keyword.value, source)
            if why:
                return why
            lambdas.append((keyword.arg, source))
            kwargs.append(f"{keyword.arg!r}: None")
        else:
            kwargs.append(f"{keyword.arg!r}: ({source})")
    expression = "((" + "".join(a + ", " for a in args) + "), {" + ", ".join(kwargs) + "})"
    return expression, lambdas


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
            try:
                expected = ast.literal_eval(record["output"])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise DataError(f"{path}: record {i + 1} ({record['id']}): 'output' is not a Python literal") from None
            prompt = cruxeval_prompt(self.task, self.mode, record["code"], record["input"], record["output"],
                                     swap_quotes=self.swap_quotes)
            problems.append(Problem(record["id"], prompt, {**record, "expected": expected}))
        return problems[:limit] if limit is not None else problems

    def extract(self, problem: Problem, raw: str) -> Extracted:
        return Extracted(cruxeval_answer(raw, self.task, prompt=problem.prompt,
                                         release_compatible=self.release_quotes))

    def _official_program_fails_to_parse(self, record: dict, answer: str) -> bool:
        """With ``release_quotes`` the answer is scored as the release's text: the official program
        ``assert {output} == {answer}`` must parse (a block without ``==`` keeps its newlines there)."""
        if not self.release_quotes:
            return False
        try:
            ast.parse(f"assert {record['output']} == {answer}")
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return True
        return False

    def verdicts(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]],
                 progress: Callable[[float], None] | None = None) -> list[dict[str, Verdict]]:
        tick = None if progress is None else (lambda *_: progress(1.0))
        if self.task == "o":
            return [{"main": v} for v in self._outputs(sandbox, items, tick)]
        return [{"main": v} for v in self._inputs(sandbox, items, tick)]

    def _outputs(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]], tick: Any) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        todo = []
        for i, (problem, extracted) in enumerate(items):
            record, answer = problem.record, extracted.text.strip()
            if repeats_the_call(answer, record["input"]):
                verdicts[i] = _failed("the output prediction contains the call f(input)")
                continue
            if self._official_program_fails_to_parse(record, extracted.text):
                verdicts[i] = _failed("assert {output} == {answer} is not valid Python")
                continue
            try:
                ast.parse(answer, mode="eval")
            except SyntaxError as e:
                verdicts[i] = _failed(f"the output prediction is not valid Python ({e.msg})")
                continue
            todo.append((i, Program(record["code"], expression=answer, timeout_s=TIMEOUT_S, guard="reference")))
        if tick is not None:
            for _ in range(len(items) - len(todo)):
                tick()
        results = function_tests.run(sandbox, [p for _, p in todo], tick)
        for (i, _), result in zip(todo, results):
            verdicts[i] = function_tests.judge(result, [items[i][0].record["expected"]], label=lambda _: "the answer")
        return verdicts  # type: ignore[return-value]

    def _inputs(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]], tick: Any) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        stage_a: list[tuple[int, Program, list]] = []
        for i, (problem, extracted) in enumerate(items):
            answer = extracted.text
            if "f(" not in answer:
                verdicts[i] = _failed("the input prediction does not call f(")
                continue
            if self._official_program_fails_to_parse(problem.record, answer):
                verdicts[i] = _failed("assert {output} == {answer} is not valid Python")
                continue
            split = split_call(answer)
            if isinstance(split, str):
                verdicts[i] = _failed(split)
                continue
            expression, lambdas = split
            stage_a.append((i, Program(problem.record["code"], expression=expression, timeout_s=TIMEOUT_S,
                                       guard="reference"), lambdas))
        if tick is not None:
            for _ in range(len(items) - len(stage_a)):
                tick()
        # stage A: the candidate's arguments, evaluated where the candidate's code runs, come back as data
        stage_b: list[tuple[int, Program]] = []
        for (i, _, lambdas), result in zip(stage_a, function_tests.run(sandbox, [p for _, p, _ in stage_a])):
            call = result.calls[0]
            if not result.loaded or call.status != "returned" or call.digest is not None:
                verdicts[i] = _stage_a_failure(result)
                if tick is not None:
                    tick()
                continue
            value = call.value
            if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple)
                    and isinstance(value[1], dict) and all(isinstance(k, str) for k in value[1])):
                verdicts[i] = _failed("the arguments: malformed record from the sandbox")
                if tick is not None:
                    tick()
                continue
            args, kwargs = value
            # stage B: the trusted f on those plain values, in a fresh process that runs no candidate code
            stage_b.append((i, Program(items[i][0].record["code"], "f", [list(args)], call_kwargs=[kwargs],
                                       lambdas=lambdas, timeout_s=TIMEOUT_S, guard="reference")))
        results = function_tests.run(sandbox, [p for _, p in stage_b], tick)
        for (i, _), result in zip(stage_b, results):
            verdicts[i] = function_tests.judge(result, [items[i][0].record["expected"]],
                                               label=lambda _: "f(input prediction)")
        return verdicts  # type: ignore[return-value]

    def gold(self, problem: Problem) -> str:
        """The reference answer (the gold input call for -I, the output literal for -O)."""
        record = problem.record
        return f"f({record['input']})" if self.task == "i" else record["output"]

    def description(self, problem: Problem) -> str:
        return problem.record["code"]


def _stage_a_failure(result: function_tests.RunResult) -> Verdict:
    """The verdict when the input prediction's arguments did not come back as plain values."""
    verdict = function_tests.judge(result, [None], compare=lambda *_: None, label=lambda _: "the arguments")
    if verdict.status == "passed":  # returned, but too large to send whole
        return _failed("the arguments: too large to pass to f")
    return verdict
