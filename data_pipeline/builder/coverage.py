"""Static line and branch sets of a seed's entry function, and the coverage a set of traces reaches.

Lines are *statement* lines: the first line of each statement of the entry's body (a compound statement counts
by its head line; ``except`` clauses and ``case`` patterns count too), without the ``def`` line and the
docstring.  A statement counts only if the compiler kept code for it (``global``, a bare string, code after a
``return`` have none), so 100 % is always reachable in principle.  Branch outcomes are ``(head_line, taken)``
for ``if``/``elif``/``while``/``for`` heads whose body starts on a later line (a one-line ``if x: y = 1``
cannot be told apart by line events, so it has no branch outcome); a constant test (``while True:``) has only
the outcome it can take.  ``match`` cases count as lines, not as branches.

Line numbers are those of ``Seed.code`` (1-based), as in ``Step.line``; the tracer maps every physical line
of a multi-line statement to the statement's first line with ``Static.stmt_of``.
"""

from __future__ import annotations

import ast
import functools
import types
from collections.abc import Iterable
from dataclasses import dataclass, field

from data_pipeline.builder.types import Seed, Trace

_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class Static:
    """What the AST (and the compiled code) says about the entry function.

    ``stmt_of`` maps each physical line of the body's statement heads to the statement line; ``heads`` maps a
    branch head's line to the first executable line of its body (how a tracer tells True from False).
    """

    def_line: int
    stmt_of: dict[int, int] = field(default_factory=dict)
    lines: frozenset[int] = frozenset()
    heads: dict[int, int] = field(default_factory=dict)
    branches: frozenset[tuple[int, bool]] = frozenset()


def entry_node(tree: ast.Module, entry: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The last top-level ``def entry`` of a module (the one ``exec`` leaves bound)."""
    found = None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry:
            found = node
    return found


def _header_end(node: ast.AST) -> int:
    """The last line of a statement's header (the whole statement for a simple one)."""
    if isinstance(node, ast.If | ast.While):
        return node.test.end_lineno or node.lineno
    if isinstance(node, ast.For | ast.AsyncFor):
        return node.iter.end_lineno or node.lineno
    if isinstance(node, ast.With | ast.AsyncWith):
        return max(max(i.context_expr.end_lineno or 0, getattr(i.optional_vars, "end_lineno", 0) or 0)
                   for i in node.items)
    if isinstance(node, ast.Match):
        return node.subject.end_lineno or node.lineno
    if isinstance(node, ast.Try | ast.TryStar):
        return node.lineno
    if isinstance(node, ast.ExceptHandler):
        return node.type.end_lineno if node.type is not None and node.type.end_lineno else node.lineno
    return getattr(node, "end_lineno", None) or node.lineno  # type: ignore[attr-defined]


def _code_of(code: str, node: ast.AST, entry: str) -> types.CodeType | None:
    """The compiled code object of the entry function (its line table tells which statements have code)."""
    try:
        module = compile(code, "<seed>", "exec")
    except (SyntaxError, ValueError):
        return None
    first = {node.lineno} | {d.lineno for d in getattr(node, "decorator_list", [])}
    found = None
    for const in module.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == entry and const.co_firstlineno in first:
            found = const
    return found


@functools.lru_cache(maxsize=4096)
def analyze(code: str, entry: str) -> Static:
    """The static line/branch sets of ``entry`` in ``code``; ValueError when it has no top-level ``def entry``."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise ValueError(f"the seed does not parse: {e}") from None
    fn = entry_node(tree, entry)
    if fn is None:
        raise ValueError(f"the seed has no top-level def {entry!r}")
    stmt_of: dict[int, int] = {}
    order: list[int] = []                          # statement lines in source order
    firsts: dict[int, list[int]] = {}              # head line -> its body's statement lines, in order
    tests: dict[int, ast.AST] = {}                 # head line -> the node (for constant tests and loops)

    def mark(first: int, last: int, line: int) -> None:
        for physical in range(first, last + 1):
            stmt_of[physical] = line
        order.append(line)

    def body(stmts: list[ast.stmt]) -> list[int]:
        out = []
        for stmt in stmts:
            out.append(stmt.lineno)
            visit(stmt)
        return out

    def visit(node: ast.stmt) -> None:
        if isinstance(node, _DEFS):  # a nested def/class is one statement: its body runs in another frame
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            mark(start, node.end_lineno or node.lineno, node.lineno)
            return
        mark(node.lineno, _header_end(node), node.lineno)
        if isinstance(node, ast.If | ast.For | ast.AsyncFor | ast.While):
            firsts[node.lineno] = body(node.body)
            tests[node.lineno] = node
            body(node.orelse)
        elif isinstance(node, ast.With | ast.AsyncWith):
            body(node.body)
        elif isinstance(node, ast.Try | ast.TryStar):
            body(node.body)
            for handler in node.handlers:
                mark(handler.lineno, _header_end(handler), handler.lineno)
                body(handler.body)
            body(node.orelse)
            body(node.finalbody)
        elif isinstance(node, ast.Match):
            for case in node.cases:
                last = (case.guard or case.pattern).end_lineno or case.pattern.lineno
                mark(case.pattern.lineno, last, case.pattern.lineno)
                body(case.body)

    stmts = list(fn.body)
    if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant) \
            and isinstance(stmts[0].value.value, str):
        stmts = stmts[1:]  # the docstring
    body(stmts)
    compiled = _code_of(code, fn, entry)
    if compiled is not None:
        with_code = {stmt_of[line] for _, _, line in compiled.co_lines() if line in stmt_of}
        lines = frozenset(line for line in order if line in with_code)
    else:
        lines = frozenset(order)
    heads: dict[int, int] = {}
    branches: set[tuple[int, bool]] = set()
    for head, inner in firsts.items():
        target = next((line for line in inner if line in lines), None)
        if head not in lines or target is None or target == head:
            continue
        heads[head] = target
        node = tests[head]
        test = getattr(node, "test", None)
        if isinstance(test, ast.Constant):
            branches.add((head, bool(test.value)))
        else:
            branches |= {(head, True), (head, False)}
    return Static(def_line=fn.lineno, stmt_of=stmt_of, lines=lines, heads=heads, branches=frozenset(branches))


def covered(traces: Iterable[Trace]) -> tuple[set[int], set[tuple[int, bool]]]:
    """The union of the traces' executed lines and branch outcomes."""
    lines: set[int] = set()
    branches: set[tuple[int, bool]] = set()
    for trace in traces:
        lines.update(trace.lines)
        branches.update((int(a), bool(b)) for a, b in trace.branches)
    return lines, branches


def _ratio(hit: int, total: int, empty: float) -> float:
    return empty if total == 0 else hit / total


def line_coverage(seed: Seed, traces: Iterable[Trace]) -> float:
    """Executed share of the entry's statement lines, in [0, 1]."""
    static = analyze(seed.code, seed.entry)
    lines, _ = covered(traces)
    return _ratio(len(lines & static.lines), len(static.lines), 0.0)


def branch_coverage(seed: Seed, traces: Iterable[Trace]) -> float:
    """Taken share of the entry's branch outcomes, in [0, 1] (1.0 for a function without branches)."""
    static = analyze(seed.code, seed.entry)
    _, branches = covered(traces)
    return _ratio(len(branches & static.branches), len(static.branches), 1.0)
