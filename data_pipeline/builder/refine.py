"""PyX-R: buggy variants of a verified program (AST mutation) and debug-and-refine records from their traces.

``mutants`` makes one-edit variants of the entry function, spliced into the original text so the buggy
program reads like the verified one except for the edited line(s):

- ``operator_swap``: ``+``/``-``, ``*``/``//`` (also in ``+=``-style assignments), ``<``/``<=``, ``>``/``>=``,
  ``==``/``!=``, ``in``/``not in``, ``is``/``is not``, ``and``/``or``;
- ``off_by_one``: an integer constant +/- 1, a non-constant ``range`` argument or slice bound +/- 1;
- ``wrong_variable``: a read of a local replaced by another local of the function bound on an earlier line;
- ``dropped_case``: an ``elif`` or ``else`` branch removed, or an ``if``/``elif`` body replaced by ``pass``.

Which mutants fail a test and whether a patch passes is the builder's business (it runs code); this module is
pure.  ``refine_record`` writes the released layout: ``fault`` = problem + buggy solution + failed test,
``response`` = ``[MONOLOGUE]`` with ``### Execution Simulation`` (the release's heading; the bundled sample
says ``Debugging Summary``), ``### Root Cause Analysis``, ``### Bug Fixing``, then ``[Refined]`` with the
verified program.  Without an NL description the problem is the docstring, or, lacking one, the failing
test itself stated as the requirement (see ``problem_text``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import random
import re
import textwrap
from collections.abc import Sequence

from data_pipeline.builder import monologue as mono
from data_pipeline.builder.types import Seed, Trace

OPERATORS: tuple[str, ...] = ("operator_swap", "off_by_one", "wrong_variable", "dropped_case")
SIMULATION_HEADING = "Execution Simulation"
HEAD_STEPS, TAIL_STEPS = 40, 20  # a long buggy run is narrated by its first and last steps

_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult}
_BIN_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//"}
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
             ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_CMP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
             ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_CMP_PATTERN = {ast.Lt: r"<(?!=)", ast.LtE: r"<=", ast.Gt: r">(?!=)", ast.GtE: r">=", ast.Eq: r"==",
                ast.NotEq: r"!=", ast.In: r"(?<!not )\bin\b", ast.NotIn: r"\bnot\s+in\b",
                ast.Is: r"\bis\b(?!\s+not\b)", ast.IsNot: r"\bis\s+not\b"}
_NO_PARENS = (ast.Name, ast.Call, ast.Attribute, ast.Subscript, ast.Constant)
_ADDITIVE_OK = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult)


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A buggy program: ``code`` differs from the seed's at ``line`` (1-based, in the original), where
    ``original_line`` became ``mutated_line`` (stripped; a removed block is dedented and ``mutated_line`` is
    "")."""

    code: str
    operator: str
    line: int
    original_line: str
    mutated_line: str


@dataclasses.dataclass(frozen=True)
class _Edit:
    operator: str
    start: int  # character offsets in the code
    end: int
    new: str
    region: tuple[int, int] | None = None  # (first, last) line of a whole-line edit


class _Text:
    """Character offsets of AST positions (whose columns count UTF-8 bytes)."""

    def __init__(self, code: str):
        self.code = code
        self.lines = code.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def at(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.at(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.at(node.end_lineno, node.end_col_offset))  # type: ignore[attr-defined]

    def line_start(self, lineno: int) -> int:
        return self.starts[lineno - 1]


def _entry(tree: ast.Module, entry: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    found = None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry:
            found = node
    return found


def _own(fn: ast.AST) -> list[ast.AST]:
    """The entry's own nodes in source order, without nested functions, classes, lambdas or comprehensions."""
    out: list[ast.AST] = []
    scoped = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
              ast.DictComp, ast.GeneratorExp, ast.JoinedStr)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.arguments | ast.arg):
                continue
            out.append(child)
            if not isinstance(child, scoped):
                visit(child)

    for stmt in getattr(fn, "body", []):
        out.append(stmt)
        if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            visit(stmt)
    return out


def _gap_edit(text: _Text, left: ast.AST, right: ast.AST, pattern: str, new: str, operator: str) -> _Edit | None:
    """Replace the operator token found between two operands."""
    start, end = text.span(left)[1], text.span(right)[0]
    gap = text.code[start:end]
    m = re.search(pattern, gap)
    if m is None:
        return None
    return _Edit(operator, start + m.start(), start + m.end(), new)


def _swaps(text: _Text, nodes: list[ast.AST]) -> list[_Edit]:
    edits: list[_Edit] = []
    for node in nodes:
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            op = type(node.op)
            edit = _gap_edit(text, node.left, node.right, re.escape(_BIN_TEXT[op]) + r"(?![=/*])",
                             _BIN_TEXT[_BIN_SWAP[op]], "operator_swap")
            if edit:
                edits.append(edit)
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAP:
            op = type(node.op)
            edit = _gap_edit(text, node.target, node.value, re.escape(_BIN_TEXT[op] + "="),
                             _BIN_TEXT[_BIN_SWAP[op]] + "=", "operator_swap")
            if edit:
                edits.append(edit)
        elif isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if type(op) in _CMP_SWAP:
                    edit = _gap_edit(text, left, right, _CMP_PATTERN[type(op)], _CMP_TEXT[_CMP_SWAP[type(op)]],
                                     "operator_swap")
                    if edit:
                        edits.append(edit)
                left = right
        elif isinstance(node, ast.BoolOp):
            word, other = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for left, right in zip(node.values, node.values[1:]):
                edit = _gap_edit(text, left, right, rf"\b{word}\b", other, "operator_swap")
                if edit:
                    edits.append(edit)
    return edits


def _shifted(text: _Text, node: ast.AST, delta: int) -> str:
    source = text.code[slice(*text.span(node))]
    plain = isinstance(node, _NO_PARENS) or (isinstance(node, ast.BinOp) and isinstance(node.op, _ADDITIVE_OK)) \
        or (isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not))
    body = source if plain and "\n" not in source else f"({source})"
    return f"{body} {'+' if delta > 0 else '-'} 1"


def _off_by_one(text: _Text, nodes: list[ast.AST]) -> list[_Edit]:
    edits: list[_Edit] = []
    parents: dict[int, ast.AST] = {}
    for node in nodes:
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in nodes:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            parent = parents.get(id(node))
            for delta in (1, -1):
                value = node.value + delta
                if value < 0 and isinstance(parent, ast.UnaryOp):
                    continue
                new = f"({value})" if value < 0 and isinstance(parent, ast.Attribute) else str(value)
                edits.append(_Edit("off_by_one", *text.span(node), new))
        bounds: list[ast.AST] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            bounds = list(node.args[:2])
        elif isinstance(node, ast.Slice):
            bounds = [b for b in (node.lower, node.upper) if b is not None]
        for bound in bounds:
            if isinstance(bound, ast.Constant) or getattr(bound, "lineno", None) is None:
                continue  # constants are shifted above
            for delta in (1, -1):
                edits.append(_Edit("off_by_one", *text.span(bound), _shifted(text, bound, delta)))
    return edits


def _locals(fn: ast.FunctionDef | ast.AsyncFunctionDef, nodes: list[ast.AST]) -> dict[str, int]:
    """Local name -> the line it is first bound on (parameters: the ``def`` line)."""
    args = fn.args
    bound = {a.arg: fn.lineno for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    for extra in (args.vararg, args.kwarg):
        if extra is not None:
            bound[extra.arg] = fn.lineno
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound[node.id] = min(bound.get(node.id, node.lineno), node.lineno)
    return bound


def _wrong_variables(text: _Text, fn: ast.FunctionDef | ast.AsyncFunctionDef, nodes: list[ast.AST]) -> list[_Edit]:
    local = _locals(fn, nodes)
    order = sorted(local, key=lambda n: (local[n], n))
    calls = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
    edits: list[_Edit] = []
    for node in nodes:
        if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in local) \
                or id(node) in calls:
            continue
        for other in order:
            if other != node.id and local[other] < node.lineno:
                edits.append(_Edit("wrong_variable", *text.span(node), other))
    return edits


def _is_elif(text: _Text, node: ast.AST) -> bool:
    return isinstance(node, ast.If) and text.lines[node.lineno - 1].lstrip().startswith("elif")


def _else_line(text: _Text, node: ast.If) -> int | None:
    """The line of an ``if``'s ``else:`` keyword."""
    for line in range(node.body[-1].end_lineno + 1, node.orelse[0].lineno + 1):  # type: ignore[operator]
        if re.match(r"\s*else\s*:", text.lines[line - 1]):
            return line
    return None


def _next_clause(text: _Text, node: ast.If) -> int:
    """The first line after an ``if``/``elif`` clause's own body (its ``elif``/``else`` line, or past its end)."""
    if not node.orelse:
        return (node.end_lineno or node.lineno) + 1
    if _is_elif(text, node.orelse[0]):
        return node.orelse[0].lineno
    return _else_line(text, node) or (node.end_lineno or node.lineno) + 1


def _remove_lines(text: _Text, first: int, last: int) -> _Edit:
    end = text.starts[last] if last < len(text.lines) else len(text.code)
    return _Edit("dropped_case", text.line_start(first), end, "", (first, last))


def _dropped_cases(text: _Text, nodes: list[ast.AST]) -> list[_Edit]:
    edits: list[_Edit] = []
    for node in nodes:
        if not isinstance(node, ast.If):
            continue
        if node.orelse:
            first = node.orelse[0]
            if _is_elif(text, first):
                assert isinstance(first, ast.If)
                edits.append(_remove_lines(text, first.lineno, _next_clause(text, first) - 1))
            else:
                line = _else_line(text, node)
                if line is not None:
                    edits.append(_remove_lines(text, line, node.orelse[-1].end_lineno or line))
        body = node.body
        if body[0].lineno > node.lineno and not (len(body) == 1 and isinstance(body[0], ast.Pass)):
            first_line, last_line = body[0].lineno, body[-1].end_lineno or body[0].lineno
            indent = re.match(r"\s*", text.lines[first_line - 1]).group(0)  # type: ignore[union-attr]
            end = text.starts[last_line] if last_line < len(text.lines) else len(text.code)
            newline = "\n" if text.code[:end].endswith("\n") else ""
            edits.append(_Edit("dropped_case", text.line_start(first_line), end, indent + "pass" + newline,
                               (first_line, last_line)))
    return edits


def _apply(text: _Text, edit: _Edit) -> Mutant:
    code = text.code[:edit.start] + edit.new + text.code[edit.end:]
    if edit.region is not None:
        first, last = edit.region
        original = textwrap.dedent("".join(text.lines[first - 1:last])).strip()
        return Mutant(code, edit.operator, first, original, edit.new.strip())
    first = text.code.count("\n", 0, edit.start) + 1
    last = text.code.count("\n", 0, edit.end) + 1
    a = text.line_start(first)
    b = text.starts[last] if last < len(text.lines) else len(text.code)
    original = text.code[a:b]
    mutated = text.code[a:edit.start] + edit.new + text.code[edit.end:b]
    return Mutant(code, edit.operator, first, textwrap.dedent(original).strip(), textwrap.dedent(mutated).strip())


def mutants(seed: Seed, *, rng_seed: int, limit: int) -> list[Mutant]:
    """Up to ``limit`` distinct, compilable one-edit mutants of ``seed.entry``, spread over the operators
    (round robin over ``OPERATORS``, each operator's candidates in an order drawn from ``rng_seed``)."""
    try:
        tree = ast.parse(seed.code)
    except SyntaxError:
        return []
    fn = _entry(tree, seed.entry)
    if fn is None or limit <= 0:
        return []
    text = _Text(seed.code)
    nodes = _own(fn)
    groups = {"operator_swap": _swaps(text, nodes), "off_by_one": _off_by_one(text, nodes),
              "wrong_variable": _wrong_variables(text, fn, nodes), "dropped_case": _dropped_cases(text, nodes)}
    rng = random.Random(rng_seed)
    queues = []
    for name in OPERATORS:
        edits = sorted(groups[name], key=lambda e: (e.start, e.end, e.new))
        rng.shuffle(edits)
        queues.append(edits)
    original = ast.dump(tree)
    out: list[Mutant] = []
    seen = {seed.code}
    while len(out) < limit and any(queues):
        for queue in queues:
            while queue:
                mutant = _apply(text, queue.pop(0))
                if mutant.code in seen:
                    continue
                seen.add(mutant.code)
                try:
                    compile(mutant.code, "<mutant>", "exec")
                    if ast.dump(ast.parse(mutant.code)) == original:
                        continue
                except (SyntaxError, ValueError):
                    continue
                out.append(mutant)
                break
            if len(out) >= limit:
                break
    return out


def failing_test(mutant_outputs: Sequence[str | None], expected_outputs: Sequence[str | None]) -> int | None:
    """The index of the first test the mutant fails as the record states it, ``assert f(args) == expected``
    (output unequal under ``==``, so ``3`` passes where ``3.0`` is expected, or None: it raised or did not
    finish), skipping tests without an expected output; None when it passes all."""
    for i, (got, want) in enumerate(zip(mutant_outputs, expected_outputs)):
        if want is None:
            continue
        if got is None or not _equal_as_asserted(got, want):
            return i
    return None


def _equal_as_asserted(got: str, want: str) -> bool:
    """``==`` of the two values (literal reprs), as the stated assertion compares them; reprs that are not
    literals compare as text."""
    try:
        return bool(ast.literal_eval(got) == ast.literal_eval(want))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return got == want


# ---- records ----------------------------------------------------------------------------------------------


def problem_text(nl: str, seed: Seed, failing_args: str, expected_output: str) -> str:
    """The ``### Problem`` text: the NL description; else the docstring; else the failing test as the
    requirement (the verified program defines the behaviour, the test is the part of it we can state)."""
    if nl.strip():
        return nl.strip()
    signature = f"{seed.entry}({', '.join(seed.params)})"
    if seed.doc.strip():
        return f"Write a function `{signature}` as its documentation describes:\n" \
               f"{inspect.cleandoc(seed.doc)}"
    return (f"The function `{signature}` below should return {expected_output} for "
            f"`{seed.entry}({failing_args})`, keeping its behaviour on other inputs, but it does not. "
            "Find the bug and fix it.")


def _line_map(buggy: str, fixed: str) -> dict[int, int]:
    """Buggy line number -> the same (unchanged) line's number in the fixed code."""
    a, b = buggy.splitlines(), fixed.splitlines()
    out: dict[int, int] = {}
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            out[block.a + k + 1] = block.b + k + 1
    return out


def _narration(seed: Seed, trace: Trace) -> list[str]:
    try:
        lines = mono.narrate_trace(seed, trace)
    except (ValueError, SyntaxError):
        return []
    if len(lines) > HEAD_STEPS + TAIL_STEPS:
        cut = len(lines) - HEAD_STEPS - TAIL_STEPS
        lines = lines[:HEAD_STEPS] + [f"- ... ({cut} more steps) ..."] + lines[-TAIL_STEPS:]
    return lines


def _divergence(buggy_seed: Seed, buggy: Trace, fixed_seed: Seed, fixed: Trace) -> tuple[int, str, str] | None:
    """(step number, buggy narration line, correct narration line) where the two runs first differ."""
    try:
        b_lines, f_lines = mono.narrate_trace(buggy_seed, buggy), mono.narrate_trace(fixed_seed, fixed)
    except (ValueError, SyntaxError):
        return None
    mapping = _line_map(buggy_seed.code, fixed_seed.code)
    for k in range(max(len(buggy.steps), len(fixed.steps))):
        b = buggy.steps[k] if k < len(buggy.steps) else None
        f = fixed.steps[k] if k < len(fixed.steps) else None
        if b is not None and f is not None and mapping.get(b.line) == f.line and b.state == f.state \
                and b.event == f.event:
            continue
        if k >= len(b_lines) or k >= len(f_lines) or len(b_lines) != len(buggy.steps) \
                or len(f_lines) != len(fixed.steps):
            return None
        return k + 1, b_lines[k][2:], f_lines[k][2:]
    return None


def _describe(mutant: Mutant) -> str:
    if mutant.operator == "dropped_case" and not mutant.mutated_line:
        return (f"The buggy code lacks a case that the correct code has at [L{mutant.line}]:\n```python\n"
                f"{mutant.original_line}\n```")
    if mutant.operator == "dropped_case":
        return (f"At [L{mutant.line}] the buggy code replaced the body of the condition above it by `pass`; "
                f"the correct body is:\n```python\n{mutant.original_line}\n```")
    what = {"operator_swap": "the wrong operator", "off_by_one": "a value that is off by one",
            "wrong_variable": "the wrong variable"}.get(mutant.operator, "a wrong expression")
    return (f"[L{mutant.line}] `{mutant.mutated_line}` uses {what}: the correct line is "
            f"`{mutant.original_line}`.")


def refine_record(nl: str, seed: Seed, mutant: Mutant, failing_args: str, expected_output: str,
                  buggy_trace: Trace, fixed_trace: Trace | None = None) -> dict[str, str]:
    """A PyX-R record (``fault`` + ``response``) for a mutant of ``seed`` that fails ``failing_args``.

    The simulation narrates ``buggy_trace`` (the mutant's run on the failed test; up to the exception when it
    raised; a long run by its first ``HEAD_STEPS`` and last ``TAIL_STEPS`` steps).  The root cause names the
    mutated line and, when the verified program's own trace on the same input (``fixed_trace``) is given,
    the first step where the two runs differ.  The refined code is ``seed.code`` (the verified program).
    """
    buggy_seed = dataclasses.replace(seed, code=mutant.code)
    call = f"{seed.entry}({failing_args})"
    fault = (f"### Problem\n{problem_text(nl, seed, failing_args, expected_output)}\n\n### Buggy Solution\n"
             f"```python\n{mutant.code.rstrip()}\n```\n\n### Failed Test\n```python\nassert {call} == "
             f"{expected_output}\n```\n")
    if buggy_trace.raised is not None:
        outcome = f"The buggy code raises {buggy_trace.raised}, but {expected_output} is expected."
    elif buggy_trace.output is None:
        outcome = (f"The buggy run does not finish: it was stopped after {len(buggy_trace.steps)} steps, so it "
                   f"never returns the expected {expected_output}.")
    else:
        outcome = f"The buggy code returns {buggy_trace.output}, but {expected_output} is expected."
    root = [_describe(mutant)]
    visits = [k for k, s in enumerate(buggy_trace.steps) if s.line == mutant.line]
    if visits and mutant.mutated_line:
        times = "once" if len(visits) == 1 else f"{len(visits)} times"
        root.append(f"In the failed test, [L{mutant.line}] runs {times}, first at step {visits[0] + 1}.")
    if fixed_trace is not None:
        found = _divergence(buggy_seed, buggy_trace, seed, fixed_trace)
        if found is not None:
            k, b_text, f_text = found
            first = "the first step" if k == 2 else f"the first {k - 1} steps"
            agree = f"The buggy and the correct run agree on {first}; at step {k}" if k > 1 else \
                "The buggy and the correct run differ from the first step:"
            root.append(f"{agree} the buggy code gives\n  {b_text}\nwhile the correct code gives\n  {f_text}")
    if mutant.operator == "dropped_case" and not mutant.mutated_line:
        fix = f"Put the missing case back at [L{mutant.line}]."
    elif mutant.operator == "dropped_case":
        fix = f"Restore the body at [L{mutant.line}]."
    else:
        fix = f"Change [L{mutant.line}] back to `{mutant.original_line}`."
    fix += f" With this fix, `{call}` returns {expected_output}, as the test expects."
    response = "\n".join([
        "[MONOLOGUE]", f"### {SIMULATION_HEADING}", f"Let's simulate the failed test `{call}` on the buggy code.",
        *_narration(buggy_seed, buggy_trace), outcome, "", "### Root Cause Analysis", *root, "",
        "### Bug Fixing", fix, "[/MONOLOGUE]", "[Refined]", "```python", seed.code.rstrip(), "```", "[/Refined]"])
    return {"fault": fault, "response": response}
