"""Forward and backward monologues: rendered from a trace (no teacher), prompted from a teacher, and checked.

Without a teacher the monologue is a narration of the real trace, so every value it states is right by
construction.  With a teacher the reply is accepted only when its final answer checks out by execution *and*
every concrete value it states for a traced variable is one that variable really held (the check the release
lacked: its monologues could reach the right answer through wrong steps).

Records follow the released layout (``fwd_mnl``/``bwd_mnl`` = ``[PYTHON]`` block with the ``??`` assertion,
``response`` = ``[MONOLOGUE] ... [/MONOLOGUE]`` + ``[ANSWER] assert entry(args) == output [/ANSWER]``).  Lines
are tagged ``[Ln]`` with their 1-based number in ``Seed.code``, which is also line n of the ``[PYTHON]`` block.

Claim patterns recognised by ``extract_claims`` (``x`` may be in backticks; a value is one Python literal, itself
optionally in backticks): ``x = V``, ``x := V``, ``x is V``, ``x is now/still/set to/updated to/changed to/equal
to/assigned (the value) V``, ``x becomes/became (equal to) V``, ``x changes to V``, ``x equals V``, ``x (now)
holds V``, ``x remains/stays/was V``, ``x takes the value V``.  Arithmetic chains (``x = 3 + 4 = 7``,
``x = len(s) = 3``) are followed to their last literal.  Ignored as code, not claims: ``[PYTHON]`` blocks,
fenced code, backtick spans quoting a line or statement of the program (a quoted ``i = 0``), and backtick spans
that are neither a name, a literal nor ``name = literal`` (``x > y`` or ``x is None`` state nothing).  Plain
(un-backticked) English words such as ``it`` or ``value`` are never taken as variables with word connectors.
Only names the trace has are checked; a claim is right if the variable held that value at some step (order is
not checked), floats may be rounded, types must match otherwise.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Collection
from typing import Any

from data_pipeline.builder.types import Seed, Step, Trace

MAX_NARRATED_STEPS = 60
"""Traces with more steps get no deterministic monologue (a monologue must be complete to train on)."""

# ---- values -----------------------------------------------------------------------------------------------


def _literal(src: str) -> tuple[bool, Any]:
    """(True, value) when ``src`` is one Python literal, else (False, None)."""
    try:
        return True, ast.literal_eval(src.strip())
    except Exception:  # ValueError, SyntaxError, TypeError, MemoryError, RecursionError
        return False, None


def _same(a: Any, b: Any, loose: bool = False) -> bool:
    """Structural equality with types (``1`` is not ``True``, ``[1]`` is not ``(1,)``).

    ``loose`` (for values a monologue states): a float may be given rounded (``0.333`` for 1/3) and an int may
    stand for an integral float.
    """
    if loose and isinstance(a, int | float) and isinstance(b, float) and not isinstance(a, bool):
        if a == b or (a != a and b != b):
            return True
        if isinstance(a, float):
            digits = len(repr(a).partition(".")[2]) if "e" not in repr(a) else None
            return digits is not None and round(b, digits) == a
        return False
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y, loose) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k], loose) for k, v in a.items())
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    return a == b


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def same_value(a_src: str, b_src: str) -> bool:
    """Whether two value sources (reprs or literals) denote the same value.

    Compared as Python values when both are literals (types must match; dict and set order do not matter),
    otherwise as text with whitespace removed.
    """
    ok_a, a = _literal(a_src)
    ok_b, b = _literal(b_src)
    if ok_a and ok_b:
        return _same(a, b)
    return _squash(a_src) == _squash(b_src)


def _clean_repr(value: str) -> str:
    """A repr without what changes from run to run (addresses, module paths)."""
    value = re.sub(r" at 0x[0-9a-fA-F]+", "", value)
    return re.sub(r"<module '([^']+)'[^>]*>", r"<module '\1'>", value)


def _capped(value: str) -> bool:
    return value.endswith("...")


def _describe_type(value: Any) -> str:
    def count(n: int, unit: str) -> str:
        return f"{n} {unit}" + ("" if n == 1 else "s")

    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) and not value:
        return f"an empty {'string' if isinstance(value, str) else type(value).__name__}"

    if isinstance(value, bool):
        return "a bool"
    if value is None:
        return "None"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return f"a string of {count(len(value), 'character')}"
    if isinstance(value, bytes):
        return f"a bytes object of length {len(value)}"
    if isinstance(value, list):
        return f"a list of {count(len(value), 'item')}"
    if isinstance(value, tuple):
        return f"a tuple of {count(len(value), 'item')}"
    if isinstance(value, dict):
        return f"a dict with {count(len(value), 'key')}"
    if isinstance(value, set | frozenset):
        return f"a {type(value).__name__} of {count(len(value), 'item')}"
    return f"a {type(value).__name__}"


def _call_args(args_src: str) -> list[tuple[str | None, str]] | None:
    """The arguments of a call's source (``"[1, 2], k=3"``) as (keyword or None, source); None if unparseable."""
    try:
        call = ast.parse(f"_({args_src})", mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(call, ast.Call):
        return None
    text = f"_({args_src})"
    out: list[tuple[str | None, str]] = []
    for a in call.args:
        if isinstance(a, ast.Starred):
            return None
        out.append((None, ast.get_source_segment(text, a) or ""))
    for k in call.keywords:
        if k.arg is None:
            return None
        out.append((k.arg, ast.get_source_segment(text, k.value) or ""))
    return out


def _param_names(seed: Seed) -> list[str]:
    """The parameters' variable names (``Seed.params`` writes ``*args``, ``**kw`` and a bare ``*``)."""
    return [p.lstrip("*") for p in seed.params if p.lstrip("*")]


def _arg_values(seed: Seed, args_src: str) -> dict[str, str] | None:
    """Parameter name -> repr of its argument, from a call's argument source; None if not literal or not
    matching the parameters (extra positionals go to ``*args`` as a tuple, unknown keywords to ``**kw``)."""
    parts = _call_args(args_src)
    if parts is None:
        return None
    positional = []
    for p in seed.params:
        if p.startswith("*"):
            break
        positional.append(p)
    star = next((p[1:] for p in seed.params if p.startswith("*") and not p.startswith("**") and len(p) > 1), None)
    double = next((p[2:] for p in seed.params if p.startswith("**")), None)
    keyword_ok = set(_param_names(seed)) - {star, double}
    out: dict[str, str] = {}
    extra: list[Any] = []
    spill: dict[str, Any] = {}
    for name, src in parts:
        ok, value = _literal(src)
        if not ok:
            return None
        if name is None:
            if len(out) < len(positional) and not extra:
                out[positional[len(out)]] = repr(value)
            elif star is not None:
                extra.append(value)
            else:
                return None
        elif name in keyword_ok and name not in out:
            out[name] = repr(value)
        elif double is not None:
            spill[name] = value
        else:
            return None
    if star is not None:
        out[star] = repr(tuple(extra))
    if double is not None:
        out[double] = repr(spill)
    return out


def _same_args(seed: Seed, a_src: str, b_src: str) -> bool:
    a, b = _arg_values(seed, a_src), _arg_values(seed, b_src)
    if a is None or b is None:
        return _squash(a_src) == _squash(b_src)
    return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)


# ---- the program's statements ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Stmt:
    """A statement (or clause header) of the entry function, as a step of the narration."""

    node: ast.AST
    kind: str  # if elif while for return except try with break continue pass raise def assert other
    text: str  # one-line rendering, quoted in the narration
    line: int  # first line
    body: tuple[int, int] | None  # line span of the body (compound statements), for branch outcomes


_STOPWORDS = frozenset("""it its this that there which what who he she they we one each all both and or not so
then here now value values output answer input function loop condition list string number item
""".split())


class _Source:
    """The parsed program: its entry function, which statement each line belongs to, and quotable code."""

    def __init__(self, code: str, entry: str):
        self.code = code
        self.lines = code.splitlines()
        self.tree = ast.parse(code)
        fn = None
        for node in self.tree.body:  # the last top-level ``def entry``: the one ``exec`` leaves bound
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry:
                fn = node
        if fn is None:
            fn = next((n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                       and n.name == entry), None)
        if fn is None:
            raise ValueError(f"no function {entry!r} in the program")
        self.fn: ast.FunctionDef = fn  # type: ignore[assignment]
        self.by_line: dict[int, _Stmt] = {}
        for stmt in fn.body:
            self._index(stmt)
        self.quotes = self._quotable()
        self.return_lines = {n.lineno for n in _own_nodes(fn) if isinstance(n, ast.Return)}

    def seg(self, node: ast.AST) -> str:
        """Source of a node on one line (a node spanning lines is unparsed)."""
        if getattr(node, "lineno", None) == getattr(node, "end_lineno", -1):
            text = ast.get_source_segment(self.code, node)
            if text is not None:
                return text
        return ast.unparse(node)

    def _header(self, node: ast.AST) -> tuple[str, str]:
        if isinstance(node, ast.If):
            line = self.lines[node.lineno - 1].lstrip()
            kind = "elif" if line.startswith("elif") else "if"
            return kind, f"{kind} {self.seg(node.test)}:"
        if isinstance(node, ast.For | ast.AsyncFor):
            return "for", f"for {self.seg(node.target)} in {self.seg(node.iter)}:"
        if isinstance(node, ast.While):
            return "while", f"while {self.seg(node.test)}:"
        if isinstance(node, ast.With | ast.AsyncWith):
            return "with", "with " + ", ".join(self.seg(i) for i in node.items) + ":"
        if isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
            return "try", "try:"
        if isinstance(node, ast.ExceptHandler):
            text = "except" + (f" {self.seg(node.type)}" if node.type else "") + (f" as {node.name}" if node.name
                                                                                 else "")
            return "except", text + ":"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return "def", f"def {node.name}({ast.unparse(node.args)}):"
        if isinstance(node, ast.ClassDef):
            return "def", f"class {node.name}:"
        if isinstance(node, ast.Match):
            return "match", f"match {self.seg(node.subject)}:"
        kinds = {ast.Return: "return", ast.Break: "break", ast.Continue: "continue", ast.Pass: "pass",
                 ast.Raise: "raise", ast.Assert: "assert"}
        return kinds.get(type(node), "other"), self.seg(node)

    def _index(self, node: ast.AST) -> None:
        kind, text = self._header(node)
        body = getattr(node, "body", None)
        if isinstance(node, ast.Match):
            body = [case.pattern for case in node.cases]
        compound = isinstance(body, list) and body and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                                                      | ast.ClassDef)
        if compound:
            head_end = max(node.lineno, body[0].lineno - 1) if body[0].lineno > node.lineno else node.lineno
            span = (body[0].lineno, body[-1].end_lineno or body[-1].lineno)
        else:
            head_end, span = node.end_lineno or node.lineno, None
        stmt = _Stmt(node=node, kind=kind, text=text, line=node.lineno, body=span)
        for line in range(node.lineno, head_end + 1):
            self.by_line[line] = stmt
        if not compound:
            return
        for child in getattr(node, "body", []):
            self._index(child)
        for handler in getattr(node, "handlers", []):
            self._index(handler)
        for field in ("orelse", "finalbody"):
            for child in getattr(node, field, []):
                self._index(child)
        for case in getattr(node, "cases", []):
            guard = f" if {self.seg(case.guard)}" if case.guard is not None else ""
            first, last = case.body[0].lineno, case.body[-1].end_lineno or case.body[-1].lineno
            self.by_line[case.pattern.lineno] = _Stmt(node=case.pattern, kind="case", line=case.pattern.lineno,
                                                      text=f"case {self.seg(case.pattern)}{guard}:",
                                                      body=(first, last))
            for child in case.body:
                self._index(child)
        if body[0].lineno == node.lineno:  # a one-line compound statement: the tracer gives it one step
            self.by_line[node.lineno] = _Stmt(node=ast.Pass(), kind="other", line=node.lineno, body=None,
                                              text=self.lines[node.lineno - 1].strip())

    def _quotable(self) -> set[str]:
        """Whitespace-free forms of every line and statement of the program: quoting them is not a claim."""
        out = {_squash(line) for line in self.lines if line.strip()}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.stmt | ast.ExceptHandler):
                try:
                    out.add(_squash(self._header(node)[1]))
                except Exception:
                    pass
                segment = ast.get_source_segment(self.code, node)
                if segment:
                    out.add(_squash(segment))
        out.discard("")
        return out

    def stmt_at(self, line: int) -> _Stmt:
        stmt = self.by_line.get(line)
        if stmt is not None:
            return stmt
        text = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        first = min([self.fn.lineno] + [d.lineno for d in self.fn.decorator_list])
        kind = "entry" if first <= line <= self.fn.lineno else "other"  # the prologue (cells, generators)
        return _Stmt(node=ast.Pass(), kind=kind, text=text, line=line, body=None)

    def loops(self) -> list[ast.AST]:
        return [n for n in _own_nodes(self.fn) if isinstance(n, ast.For | ast.AsyncFor | ast.While)]


def _own_nodes(fn: ast.AST):
    """The nodes of a function's body, not descending into nested functions, classes or lambdas."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop(0)
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _names(node: ast.AST) -> list[str]:
    """Names loaded in an expression, in order, once each."""
    seen: list[str] = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and n.id not in seen:
            seen.append(n.id)
    return seen


def _stored(node: ast.AST) -> list[str]:
    """Names a statement binds."""
    targets: list[ast.AST] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.AsyncFor):
        targets = [node.target]
    elif isinstance(node, ast.With | ast.AsyncWith):
        targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
    out: list[str] = []
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id not in out:
                out.append(n.id)
    if isinstance(node, ast.Import | ast.ImportFrom):
        out += [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        out.append(node.name)
    return out


# ---- narration --------------------------------------------------------------------------------------------


def _fmt(name: str, value: str) -> str:
    return f"`{name}` = {_clean_repr(value)}"


def _value_list(names: list[str], state: dict[str, str]) -> str:
    return ", ".join(_fmt(n, state[n]) for n in names if n in state)


def _values_of(names: list[str], state: dict[str, str]) -> str:
    shown = _value_list(names, state)
    return f" ({shown})" if shown else ""


def _user_vars(state: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in state.items() if not k.startswith("<")}


def _initial_state(seed: Seed, src: _Source, trace: Trace) -> dict[str, str] | None:
    """The parameters' values at the call, from the trace's argument source (defaults from the first state)."""
    given = _arg_values(seed, trace.args)
    if given is None:
        return None
    state = dict(given)
    if trace.steps:
        first = trace.steps[0]
        stored = set(_stored(src.stmt_at(first.line).node))
        for p in _param_names(seed):
            if p not in state and p in first.state and p not in stored:
                state[p] = first.state[p]
    return state


@dataclasses.dataclass
class _Unit:
    """One narrated step: a statement, the state before and after it, and what happened."""

    stmt: _Stmt
    line: int
    before: dict[str, str]
    after: dict[str, str]
    event: str  # line | return | raise | end
    branch: bool | None
    returned: str | None = None
    error: str | None = None
    next_line: int | None = None


def _units(src: _Source, trace: Trace, start: dict[str, str]) -> list[_Unit]:
    """The trace's steps grouped into narrated units.

    The project's tracer gives one step per executed statement (a ``return`` statement is its ``return``
    step, a raising statement its ``exception`` step); a tracer that also gives a ``line`` step before those
    gets them merged into one unit.  A ``return`` step at a line that is not a ``return`` statement is the
    implicit return at the end of the function (the step also holds that last statement's effects).
    """
    steps: list[Step] = list(trace.steps)
    units: list[_Unit] = []
    state = dict(start)
    i = 0
    while i < len(steps):
        step = steps[i]
        stmt = src.stmt_at(step.line)
        j = i
        after = steps[j].state
        event, returned, error = "line", None, None
        if step.event == "line" and j + 1 < len(steps) and steps[j + 1].event in ("return", "exception") \
                and src.stmt_at(steps[j + 1].line) is stmt and (steps[j + 1].event == "exception"
                                                                  or stmt.kind == "return"):
            j += 1
            after = {**after, **steps[j].state}
            step_j = steps[j]
            if step_j.event == "return":
                event, returned = "return", step_j.state.get("<return>", trace.output)
            else:
                event, error = "raise", _error_text(step_j.state)
        elif step.event == "return":
            explicit = stmt.kind == "return" or step.line in src.return_lines
            event, returned = ("return" if explicit else "end"), step.state.get("<return>", trace.output)
        elif step.event == "exception":
            event, error = "raise", _error_text(step.state)
        next_line = steps[j + 1].line if j + 1 < len(steps) else None
        branch = steps[j].branch if steps[j].branch is not None else step.branch
        if branch is None and stmt.body is not None and stmt.kind in ("if", "elif", "while", "for", "except",
                                                                      "with", "case"):
            branch = next_line is not None and stmt.body[0] <= next_line <= stmt.body[1]
        units.append(_Unit(stmt=stmt, line=stmt.line, before=state, after=_user_vars(after) or dict(state), event=event,
                           branch=branch, returned=returned, error=error, next_line=next_line))
        if units[-1].event == "end" and not _user_vars(after):
            units[-1].after = dict(state)
        state = units[-1].after
        i = j + 1
    return units


def _error_text(state: dict[str, str]) -> str | None:
    for key in ("<exception>", "<raise>", "<error>"):
        if key in state:
            return state[key]
    return None


def _changes(unit: _Unit) -> list[str]:
    before, after = unit.before, unit.after
    shown = [_fmt(k, v) for k, v in after.items() if before.get(k) != v]
    stored = _stored(unit.stmt.node) if unit.event == "line" and unit.stmt.kind == "other" else []
    shown += [f"`{k}` stays {_clean_repr(after[k])}" for k in stored if k in after and before.get(k) == after[k]]
    shown += [f"`{k}` is deleted" for k in before if k not in after]
    return shown


def _branch_sentence(src: _Source, unit: _Unit) -> str:
    node, stmt = unit.stmt.node, unit.stmt
    test = getattr(node, "test", None)
    values = _values_of(_names(test), unit.after) if test is not None else ""
    shown = f" `{src.seg(test)}`" if test is not None and len(src.seg(test)) <= 60 else ""
    cond = f"the condition{shown} evaluates to {bool(unit.branch)}{values}" if test is not None else ""
    if stmt.kind == "while":
        return cond + (", so the loop body runs" if unit.branch else ", so the loop ends")
    if unit.branch:
        return cond + f", so the `{stmt.kind}` body runs"
    orelse = getattr(node, "orelse", [])
    if orelse and isinstance(orelse[0], ast.If) and src.lines[orelse[0].lineno - 1].lstrip().startswith("elif"):
        return cond + f", so control moves to the `elif` at [L{orelse[0].lineno}]"
    if orelse:
        return cond + ", so the `else` branch runs"
    return cond + ", so its body is skipped"


def _what(src: _Source, unit: _Unit, trace: Trace, last: bool) -> str:
    """What one unit did, in words, with every concrete value taken from the trace."""
    kind = unit.stmt.kind
    changes = _changes(unit)
    parts: list[str] = []
    if unit.event == "raise":
        if changes:
            parts.append(", ".join(changes))
        err = unit.error or (trace.raised if last else None)
        parts.append("an exception is raised" + (f" ({err})" if err else ""))
        if last and trace.raised:
            parts.append(f"it is not caught, so `{trace.entry}` raises {trace.raised}")
        return "; ".join(parts)
    if unit.event in ("return", "end"):
        if unit.event == "return" and changes:
            parts.append(", ".join(changes))
        elif unit.event == "end":
            parts += [", ".join(changes)] if changes else []
            parts.append("the end of the function is reached")
        parts.append(f"the function returns {_clean_repr(unit.returned or 'None')}")
        return "; ".join(parts)
    if kind == "for":
        node = unit.stmt.node
        targets = _stored(node)
        others = [c for c in changes if not any(c.startswith(f"`{t}`") for t in targets)]
        if unit.branch:
            text = "the loop takes " + ", ".join(_fmt(t, unit.after[t]) for t in targets if t in unit.after)
        else:
            text = "the loop is exhausted"
        return ", ".join([text, *others]) if unit.branch else text
    if kind in ("if", "elif", "while"):
        text = _branch_sentence(src, unit)
        return "; ".join([text, *([", ".join(changes)] if changes else [])])
    if kind == "except":
        text = "the handler matches, so its body runs" if unit.branch else "the handler does not match"
        return "; ".join([text, *([", ".join(changes)] if changes else [])])
    if kind == "case":
        text = "the pattern matches, so its body runs" if unit.branch else "the pattern does not match"
        return "; ".join([text, *([", ".join(changes)] if changes else [])])
    if kind == "try":
        return "execution enters the `try` block"
    if kind == "entry":
        return "; ".join(["the call begins", *([", ".join(changes)] if changes else [])])
    if kind == "match" and not changes:
        return "its cases are tried in order"
    if kind == "break":
        return "`break` leaves the loop"
    if kind == "continue":
        return "`continue` goes back to the loop head"
    if kind == "pass" and not changes:
        return "nothing happens"
    if kind == "assert" and not changes:
        return "the assertion holds"
    if kind == "with":
        text = "execution enters the `with` block" if unit.branch else "the `with` block is left"
        return "; ".join([text, *([", ".join(changes)] if changes else [])])
    return ", ".join(changes) if changes else "no local variable changes"


def _narrate(src: _Source, trace: Trace, start: dict[str, str], limit: int | None = None) -> list[str]:
    units = _units(src, trace, start)
    shown = units if limit is None else units[:limit]
    return [f"- [L{u.line}]: `{u.stmt.text}`: {_what(src, u, trace, k == len(units) - 1)}."
            for k, u in enumerate(shown)]


def narrate_trace(seed: Seed, trace: Trace, limit: int | None = None) -> list[str]:
    """One ``- [Ln]: `stmt`: what happened.`` line per executed statement of ``trace`` (the first ``limit``).

    Shared by the forward monologue and PyX-R's simulation of the buggy run.  Raises ValueError when the
    trace's arguments are not literals or the entry function is missing.
    """
    src = _Source(seed.code, seed.entry)
    start = _initial_state(seed, src, trace)
    if start is None:
        raise ValueError(f"arguments are not literals: {trace.args!r}")
    return _narrate(src, trace, start, limit)


# ---- understanding and constraints ------------------------------------------------------------------------


def _doc_paragraph(doc: str) -> str:
    lines: list[str] = []
    for line in doc.strip().splitlines():
        if not line.strip() or line.strip().startswith(">>>"):
            break
        lines.append(line.strip())
    return " ".join(lines)


def _signature(src: _Source, seed: Seed) -> str:
    return f"{seed.entry}({ast.unparse(src.fn.args)})"


def _structure(src: _Source, seed: Seed) -> str:
    """What the entry function is made of, read off its syntax tree (no semantics invented)."""
    fn = src.fn
    own = list(_own_nodes(fn))
    parts: list[str] = []
    for node in own:
        if isinstance(node, ast.For | ast.AsyncFor):
            parts.append(f"a `for` loop over `{src.seg(node.iter)}` ([L{node.lineno}])")
        elif isinstance(node, ast.While):
            parts.append(f"a `while` loop on `{src.seg(node.test)}` ([L{node.lineno}])")
        elif isinstance(node, ast.Try):
            caught = [src.seg(h.type) if h.type else "any exception" for h in node.handlers]
            parts.append(f"a `try` block ([L{node.lineno}])" + (" that catches " + ", ".join(
                f"`{c}`" if c != "any exception" else c for c in caught) if caught else ""))
    ifs = sum(isinstance(n, ast.If) for n in own)
    if ifs:
        parts.append(f"{ifs} `if`/`elif` test" + ("s" if ifs > 1 else ""))
    helpers = _helpers(src)
    returns = sorted((n for n in own if isinstance(n, ast.Return)), key=lambda n: n.lineno)
    text = "It contains " + _join(parts) + "." if parts else "Its body runs straight through, with no loops or " \
                                                                 "branches."
    if helpers:
        text += " It calls " + _join([f"`{h}`" for h in helpers]) + ", defined beside it."
    if returns:
        shown = [f"`{src.seg(r.value) if r.value else 'None'}` ([L{r.lineno}])" for r in returns[:4]]
        text += " It returns " + _join(shown, "or") + ("" if len(returns) <= 4 else ", among others") + "."
    else:
        text += " It has no `return` statement, so it returns None."
    return text


def _join(items: list[str], word: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {word} " + items[-1]


def _helpers(src: _Source) -> list[str]:
    defined = {n.name for n in src.tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
               and n is not src.fn}
    called: list[str] = []
    for node in _own_nodes(src.fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in defined \
                and node.func.id not in called:
            called.append(node.func.id)
    return called


def _understanding(src: _Source, seed: Seed) -> str:
    doc = _doc_paragraph(seed.doc)
    params = _param_names(seed)
    head = f"The function `{_signature(src, seed)}` takes " + (
        f"{len(params)} parameter" + ("s" if len(params) != 1 else "") + ": " + _join([f"`{p}`" for p in params])
        if params else "no parameters") + "."
    if doc:
        head += f" Its docstring says: \"{doc}\""
    return head + " " + _structure(src, seed)


def _loop_properties(src: _Source) -> list[str]:
    out: list[str] = []
    for node in src.loops():
        exits = [n for n in _own_nodes(node) if isinstance(n, ast.Return | ast.Break | ast.Raise)]
        early = " (it can stop early: " + _join(sorted({f"`{type(n).__name__.lower()}`" for n in exits})) + \
                " inside it)" if exits else ""
        if isinstance(node, ast.While):
            out.append(f"- The `while` loop at [L{node.lineno}] repeats as long as `{src.seg(node.test)}` holds"
                       f"{early}.")
        else:
            out.append(f"- The `for` loop at [L{node.lineno}] takes the items of `{src.seg(node.iter)}` one by "
                       f"one{early}.")
    return out


def _returns(src: _Source) -> list[ast.Return]:
    return sorted((n for n in _own_nodes(src.fn) if isinstance(n, ast.Return)), key=lambda n: n.lineno)


def _common_properties(src: _Source, returns: bool = True) -> list[str]:
    out = _loop_properties(src)
    for node in _own_nodes(src.fn):
        if isinstance(node, ast.Try):
            for h in node.handlers:
                what = f"`{src.seg(h.type)}`" if h.type else "any exception"
                out.append(f"- An exception of type {what} raised in the `try` block at [L{node.lineno}] is "
                           f"handled at [L{h.lineno}].")
    helpers = _helpers(src)
    if helpers:
        out.append("- Calls to " + _join([f"`{h}`" for h in helpers]) + " are simulated as single steps: only "
                   "their results are shown.")
    points = _returns(src)
    if returns and len(points) > 1:
        out.append("- It can return at " + _join([f"[L{r.lineno}] (`{src.seg(r)}`)" for r in points], "or")
                   + ".")
    return out


def _forward_properties(src: _Source, seed: Seed, start: dict[str, str]) -> list[str]:
    kinds = []
    for p in _param_names(seed):
        if p in start:
            ok, value = _literal(start[p])
            if ok:
                kinds.append(f"`{p}` is {_describe_type(value)}")
    out = ["- In this call " + _join(kinds) + "."] if kinds else []
    out += _common_properties(src)
    if not out:
        out.append("- The function runs top to bottom with no loops or branches.")
    return out


def _backward_properties(src: _Source, seed: Seed, output: str) -> list[str]:
    ok, value = _literal(output)
    out = [f"- The output {output} is {_describe_type(value)}."] if ok else []
    points = _returns(src)
    if points:
        out.append("- It can only come from " + _join([f"[L{r.lineno}] (`{src.seg(r)}`)" for r in points], "or")
                   + (", or from the implicit `return None` at the end" if _falls_off(src) else "") + ".")
    names = _param_names(seed)
    out.append(f"- The input is the argument list of `{_signature(src, seed)}`: " + (
        "a value for " + _join([f"`{p}`" for p in names]) + " (those with a default may be left out)"
        if names else "no arguments") + ".")
    out += _common_properties(src, returns=False)
    return out


def _falls_off(src: _Source) -> bool:
    """Whether control can reach the end of the entry's body (its last statement is not a return/raise)."""
    last = src.fn.body[-1] if src.fn.body else None
    return not isinstance(last, ast.Return | ast.Raise)


# ---- records ----------------------------------------------------------------------------------------------


def python_block(seed: Seed, call: str) -> str:
    """The ``[PYTHON]`` block of a monologue record: the program, then the question's assertion."""
    return f"[PYTHON]\n{seed.code.rstrip()}\n{call}\n[/PYTHON]"


def _renderable(seed: Seed, trace: Trace) -> tuple[_Source, dict[str, str]] | None:
    if trace.truncated or trace.raised is not None or trace.output is None or not _literal(trace.output)[0]:
        return None
    if len(trace.steps) > MAX_NARRATED_STEPS:
        return None
    if any(_capped(v) for s in trace.steps for v in s.state.values()):
        return None
    try:
        src = _Source(seed.code, seed.entry)
    except (SyntaxError, ValueError):
        return None
    start = _initial_state(seed, src, trace)
    if start is None:
        return None
    return src, start


def forward_record(seed: Seed, trace: Trace, *, understanding: str | None = None) -> dict[str, str] | None:
    """The exec_o record (``fwd_mnl`` + ``response``) narrating ``trace``, every value taken from it.

    None when the trace cannot give a complete, checkable monologue: truncated, raised, over
    ``MAX_NARRATED_STEPS`` steps, a capped value, an output or argument that is not a literal.
    ``understanding`` (e.g. a teacher's or the NL description) replaces the derived first section.
    """
    ready = _renderable(seed, trace)
    if ready is None:
        return None
    src, start = ready
    call = f"{seed.entry}({trace.args})"
    start_text = ", ".join(_fmt(p, v) for p, v in start.items()) if start else "no arguments"
    response = "\n".join([
        "[MONOLOGUE]", "### Understanding the Function", understanding or _understanding(src, seed), "",
        "### Key Properties and Constraints", *_forward_properties(src, seed, start), "",
        "### Execution Simulation", f"Let's simulate `{call}` line by line, starting with {start_text}.",
        *_narrate(src, trace, start), "", f"So `{call}` returns {trace.output}.", "[/MONOLOGUE]", "[ANSWER]",
        f"assert {call} == {trace.output}", "[/ANSWER]"])
    return {"nl": "", "fwd_mnl": python_block(seed, f"assert {call} == ??"), "bwd_mnl": "", "response": response}


def _reverse_lines(src: _Source, trace: Trace, start: dict[str, str]) -> list[str]:
    """The trace walked from the return back to the arguments; each line states values the trace shows."""
    units = _units(src, trace, start)
    out: list[str] = []
    for u in reversed(units):
        tag, stmt = f"[L{u.line}]", f"`{u.stmt.text}`"
        node = u.stmt.node
        if u.event in ("return", "end"):
            value = _clean_repr(u.returned or "None")
            if u.event == "end":
                out.append(f"- The output {value} is the implicit return value at the end of the function, "
                           f"reached after {tag} {stmt}.")
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.Name) and node.value.id in u.after:
                out.append(f"- The output {value} is returned by {stmt} at {tag}, so `{node.value.id}` = "
                           f"{_clean_repr(u.after[node.value.id])} just before it.")
            else:
                names = _names(node.value) if isinstance(node, ast.Return) and node.value else []
                used = _value_list(names, u.after)
                out.append(f"- The output {value} is returned by {stmt} at {tag}"
                           + (f", computed from {used}" if used else "") + ".")
            continue
        if u.event == "raise":
            out.append(f"- {tag} {stmt} raised an exception" + (f" ({u.error})" if u.error else "")
                       + ", which was handled.")
            continue
        kind = u.stmt.kind
        if kind == "for":
            if u.branch:
                targets = _stored(node)
                out.append(f"- {tag} {stmt} had taken " + ", ".join(_fmt(t, u.after[t]) for t in targets
                                                                    if t in u.after) + ".")
            else:
                out.append(f"- The loop {stmt} at {tag} had run out of items.")
            continue
        if kind in ("if", "elif", "while"):
            test = getattr(node, "test", None)
            values = _values_of(_names(test), u.after) if test is not None else ""
            reached = f"[L{u.next_line}]" if u.next_line else "the next step"
            out.append(f"- To reach {reached}, the condition `{src.seg(test)}` at {tag} had to evaluate to "
                       f"{bool(u.branch)}{values}." if test is not None else f"- {tag} {stmt} ran.")
            continue
        if kind in ("except", "case"):
            what = "handler" if kind == "except" else "pattern"
            out.append(f"- The {what} {stmt} at {tag} " + ("matched." if u.branch else "did not match."))
            continue
        changed = [k for k, v in u.after.items() if u.before.get(k) != v]
        plain = {"try": "entered the `try` block", "continue": "jumped back to the loop head",
                 "break": "left the loop", "pass": "did nothing", "match": "tried its cases in order",
                 "entry": "began the call"}
        if not changed:
            out.append(f"- {tag} {stmt} " + plain.get(kind, "changed no variable") + ".")
            continue
        now = ", ".join(_fmt(k, u.after[k]) for k in changed)
        earlier = [_fmt(k, u.before[k]) for k in changed if k in u.before]
        fresh = [f"`{k}`" for k in changed if k not in u.before]
        text = f"- {tag} {stmt} left {now}"
        if earlier:
            text += "; before it, " + ", ".join(earlier)
        if fresh:
            text += "; " + _join(fresh) + (" did" if len(fresh) > 1 else " did") + " not exist yet, so " + (
                "their" if len(fresh) > 1 else "its") + " earlier value does not matter"
        out.append(text + ".")
    return out


def backward_record(seed: Seed, trace: Trace) -> dict[str, str] | None:
    """The exec_i record (``bwd_mnl`` + ``response``): the trace walked backwards from output to arguments.

    None under the same conditions as ``forward_record``.
    """
    ready = _renderable(seed, trace)
    if ready is None:
        return None
    src, start = ready
    call = f"{seed.entry}({trace.args})"
    args_text = ", ".join(_fmt(p, v) for p, v in start.items()) if start else "no arguments"
    response = "\n".join([
        "[MONOLOGUE]", "### Understanding the Function", _understanding(src, seed), "",
        "### Key Properties and Constraints", *_backward_properties(src, seed, trace.output or ""), "",
        "### Reverse Deduction", *_reverse_lines(src, trace, start),
        f"- Tracing back to the start, the arguments must be {args_text}.", "",
        "### Conclusion", f"Calling `{call}` gives {trace.output}.", "[/MONOLOGUE]", "[ANSWER]",
        f"assert {call} == {trace.output}", "[/ANSWER]"])
    return {"nl": "", "fwd_mnl": "", "bwd_mnl": python_block(seed, f"assert {seed.entry}(??) == {trace.output}"),
            "response": response}


# ---- teacher prompts --------------------------------------------------------------------------------------


def forward_prompt(seed: Seed, args: str) -> str:
    """Ask a teacher for a forward monologue: the program and the call, never the NL description."""
    call = f"{seed.entry}({args})"
    return "\n".join([
        f"Work out what the call `{call}` returns by running the program below in your head, one executed line "
        "at a time.",
        "Reply in this form:",
        "[MONOLOGUE]",
        "### Understanding the Function",
        "(what the function does, from its code)",
        "### Key Properties and Constraints",
        "(facts about the code and this input that matter for the result)",
        "### Execution Simulation",
        "(one step per executed line, tagged with its line number such as [L3], the program's first line being "
        "[L1]; every loop iteration separately; for each condition say whether it is True or False; whenever a "
        "variable gets a value, write it as `name` = value with a Python literal)",
        "[/MONOLOGUE]",
        "[ANSWER]",
        f"assert {call} == <the returned value as a Python literal>",
        "[/ANSWER]",
        "",
        python_block(seed, f"assert {call} == ??"),
        "[MONOLOGUE]",
        ""])


def backward_prompt(seed: Seed, output: str) -> str:
    """Ask a teacher for a backward monologue: the program and the output, never the NL description."""
    return "\n".join([
        f"Find arguments for which `{seed.entry}` returns {output}, reasoning backwards from the return "
        "statement to the parameters.",
        "Reply in this form:",
        "[MONOLOGUE]",
        "### Understanding the Function",
        "(what the function does, from its code)",
        "### Key Properties and Constraints",
        "(what any input must satisfy to give this output)",
        "### Reverse Deduction",
        "(from the output back to the input: which line produced each value, tagged like [L3] with the "
        "program's first line being [L1]; write every value you settle on as `name` = value with a Python "
        "literal; end with the argument values)",
        "### Conclusion",
        "(the call you chose and its result)",
        "[/MONOLOGUE]",
        "[ANSWER]",
        f"assert {seed.entry}(<arguments as Python literals>) == {output}",
        "[/ANSWER]",
        "",
        python_block(seed, f"assert {seed.entry}(??) == {output}"),
        "[MONOLOGUE]",
        ""])


# ---- acceptance -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether a teacher's monologue is kept, and why.

    ``reason``: ``accepted``; ``no_answer`` (no parseable ``[ANSWER] assert entry(...) == ...``);
    ``wrong_answer`` (the answer does not check out by execution); ``wrong_steps`` (right answer, but a stated
    value disagrees with the trace: rejected, or accepted and flagged under ``flag_only``).
    ``wrong_claims`` lists the (variable, stated value) pairs found wrong; ``checked`` counts claims checked.
    """

    accepted: bool
    reason: str
    wrong_claims: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    checked: int = 0

    @property
    def flagged(self) -> bool:
        return self.accepted and self.reason == "wrong_steps"


_ANSWER_RE = re.compile(r"\[ANSWER\](.*?)(?:\[/ANSWER\]|\Z)", re.S)


def parse_answer(reply: str, entry: str) -> tuple[str | None, str | None]:
    """(arguments source, output source) of the reply's ``[ANSWER] assert entry(args) == output [/ANSWER]``.

    The last answer block with a parseable assertion wins; code fences inside it are ignored.  A part is None
    when missing or not a literal (arguments: every positional and keyword value must be a literal, and the
    call must name ``entry``).
    """
    for block in reversed(_ANSWER_RE.findall(reply)):
        text = re.sub(r"```[a-zA-Z]*", "", block).strip()
        start = text.find("assert")
        if start < 0:
            continue
        text = text[start:]
        node = None
        for end in range(len(text), 0, -1):  # trailing prose after the assertion
            if end < len(text) and text[end] not in "\n":
                continue
            try:
                tree = ast.parse(text[:end])
            except SyntaxError:
                continue
            if tree.body and isinstance(tree.body[0], ast.Assert):
                node = tree.body[0]
                text = text[:end]
            break
        if node is None or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1 \
                or not isinstance(node.test.ops[0], ast.Eq):
            continue
        out_src = ast.get_source_segment(text, node.test.comparators[0])
        output = out_src if out_src is not None and _literal(out_src)[0] else None
        call = node.test.left
        args: str | None = None
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == entry:
            pieces = []
            for a in call.args:
                seg = ast.get_source_segment(text, a)
                pieces.append(seg if seg is not None and not isinstance(a, ast.Starred) and _literal(seg)[0]
                              else None)
            for k in call.keywords:
                seg = ast.get_source_segment(text, k.value)
                pieces.append(f"{k.arg}={seg}" if k.arg and seg is not None and _literal(seg)[0] else None)
            if all(p is not None for p in pieces):
                args = ", ".join(p for p in pieces if p is not None)
        return args, output
    return None, None


_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_WORD_CONNECTORS = (r"is\s+updated\s+to", r"is\s+set\s+to", r"is\s+changed\s+to",
                    r"is\s+assigned(?:\s+the\s+value)?", r"is\s+now", r"is\s+still", r"is\s+equal\s+to", r"is",
                    r"becomes\s+equal\s+to", r"becomes", r"became", r"changes\s+to", r"equals",
                    r"now\s+holds", r"holds", r"remains", r"stays", r"was", r"takes\s+the\s+value")
_CLAIM_RE = re.compile(
    rf"(?:`(?P<q>{_ID})`|(?<![\w.\[('\"])(?P<p>{_ID})(?![\w`'\"]))\s*"
    rf"(?:(?P<sym>:=|(?<![=!<>+\-*/%&|^@:])=(?!=))|(?P<word>(?:{'|'.join(_WORD_CONNECTORS)})\b))[ \t]*")
_NUMBER_RE = re.compile(r"-?(?:\d[\d_]*(?:\.\d+)?(?:[eE][-+]?\d+)?j?|\.\d+)|True\b|False\b|None\b|set\(\)")
_CONTINUES_RE = re.compile(r"[ \t]*[+\-*/%&|^@](?![+\-*/%&|^@])|[(\[]|\.[A-Za-z_]|[ \t]+if\b")
_EQ_RE = re.compile(r"(?<![=!<>+\-*/%&|^@:])=(?!=)[ \t]*")


def _scan_literal(text: str, i: int) -> tuple[str, int] | None:
    """The literal starting at ``text[i]`` (a string, a bracketed value, a number, True/False/None) and its end."""
    if i >= len(text):
        return None
    c = text[i]
    if c == "`":
        end = text.find("`", i + 1)
        if end < 0:
            return None
        return (text[i + 1:end], end + 1) if _literal(text[i + 1:end])[0] else None
    j = i
    if c in "bBrRuU" and i + 1 < len(text) and text[i + 1] in "'\"":
        j += 1
    if text[j:j + 1] in ("'", '"'):
        quote = text[j] * 3 if text[j:j + 3] in ("'''", '"""') else text[j]
        k = j + len(quote)
        while k < len(text):
            if text[k] == "\\":
                k += 2
                continue
            if text.startswith(quote, k):
                return text[i:k + len(quote)], k + len(quote)
            if text[k] == "\n" and len(quote) == 1:
                return None
            k += 1
        return None
    if c in "([{":
        depth, k, in_str = 0, i, ""
        while k < len(text):
            ch = text[k]
            if in_str:
                if ch == "\\":
                    k += 2
                    continue
                if ch == in_str:
                    in_str = ""
            elif ch in "'\"":
                in_str = ch
            elif ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if depth == 0:
                    return text[i:k + 1], k + 1
            elif ch == "\n":
                return None
            k += 1
        return None
    m = _NUMBER_RE.match(text, i)
    if m:
        return m.group(0), m.end()
    return None


def _is_expression(text: str) -> bool:
    """Whether ``text`` is one Python expression (the middle of a ``x = expr = value`` chain)."""
    if "`" in text or not text.strip():
        return False
    try:
        ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return False
    return True


def _claim_value(text: str, i: int) -> tuple[str, int] | None:
    """The value a claim states and where it ends, following ``= expression = literal`` chains to the final
    literal."""
    line_end = text.find("\n", i)
    line_end = len(text) if line_end < 0 else line_end
    pos = i
    for _ in range(8):
        got = _scan_literal(text, pos)
        if got is not None:
            value, end = got
            if not _CONTINUES_RE.match(text, end) and _literal(value)[0]:
                return value, end
        stop = [p for p in (text.find(". ", pos), text.find(";", pos)) if 0 <= p < line_end]
        limit = min(stop) if stop else line_end
        m = _EQ_RE.search(text, pos, limit)
        if m is None or not _is_expression(text[pos:m.start()]):
            return None
        pos = m.end()
    return None


def _mask(text: str, quotes: Collection[str]) -> str:
    """Remove program blocks, fenced code and inline quotes of the program's lines from a monologue."""
    text = re.sub(r"\[PYTHON\].*?\[/PYTHON\]", " ", text, flags=re.S)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    known = {q.rstrip(":") for q in quotes}

    def inline(m: re.Match) -> str:
        body = m.group(1).strip()
        if _squash(body).rstrip(":") in known:
            return "`…`"
        if re.fullmatch(_ID, body) or _literal(body)[0]:
            return m.group(0)
        assign = re.fullmatch(rf"({_ID})\s*=\s*(.+)", body)
        if assign and _literal(assign.group(2))[0]:
            return m.group(0)
        return "`…`"  # an expression or statement: code, not a claim

    return re.sub(r"`([^`\n]+)`", inline, text)


def extract_claims(text: str, names: Collection[str], quotes: Collection[str] = ()) -> list[tuple[str, str]]:
    """(variable, literal source) pairs stated in ``text`` for variables in ``names`` (patterns: module doc).

    ``quotes``: whitespace-free forms of the program's lines and statements; backtick spans quoting them are
    code, not claims.
    """
    text = _mask(text, quotes)
    claims: list[tuple[str, str]] = []
    pos = 0
    while True:
        m = _CLAIM_RE.search(text, pos)
        if m is None:
            return claims
        pos = m.end()
        var = m.group("q") or m.group("p")
        if var not in names or (m.group("p") and m.group("word") and var in _STOPWORDS):
            continue
        found = _claim_value(text, m.end())
        if found is not None:
            claims.append((var, found[0]))
            pos = found[1]


def _section(reply: str, heading: str) -> str:
    """The text of ``### heading`` up to the next heading, ``[/MONOLOGUE]`` or ``[ANSWER]``; else the reply
    before its answer."""
    body = reply.split("[ANSWER]")[0]
    m = re.search(rf"^#+\s*{re.escape(heading)}\b.*$", body, flags=re.M | re.I)
    if m is None:
        return body
    rest = body[m.end():]
    end = re.search(r"^#+\s|\[/MONOLOGUE\]", rest, flags=re.M)
    return rest[:end.start()] if end else rest


def _held(trace: Trace, seed: Seed) -> dict[str, list[str]]:
    """Every value each variable of the trace held (reprs), arguments included."""
    held: dict[str, list[str]] = {}
    for name, value in (_arg_values(seed, trace.args) or {}).items():
        held.setdefault(name, []).append(value)
    for step in trace.steps:
        for name, value in step.state.items():
            if not name.startswith("<"):
                values = held.setdefault(name, [])
                if value not in values:
                    values.append(value)
    return held


def _claim_right(stated: str, values: list[str]) -> bool | None:
    """True/False when the stated literal matches one of the held values or not; None when not checkable."""
    ok, claim = _literal(stated)
    if not ok:
        return None
    checkable = False
    for value in values:
        if _capped(value):
            checkable = True
            if repr(claim).startswith(value[:-3]):
                return True
            continue
        ok_v, held = _literal(value)
        if ok_v:
            checkable = True
            if _same(claim, held, loose=True):
                return True
    return False if checkable else None


def _check_claims(claims: list[tuple[str, str]], held: dict[str, list[str]]) -> tuple[list[tuple[str, str]], int]:
    wrong: list[tuple[str, str]] = []
    checked = 0
    for var, stated in claims:
        right = _claim_right(stated, held.get(var, []))
        if right is None:
            continue
        checked += 1
        if not right and (var, stated) not in wrong:
            wrong.append((var, stated))
    return wrong, checked


def _quotes(seed: Seed) -> set[str]:
    try:
        return _Source(seed.code, seed.entry).quotes
    except (SyntaxError, ValueError):
        return set()


def check_forward(reply: str, seed: Seed, trace: Trace, *, flag_only: bool = False) -> Verdict:
    """Accept a teacher's forward monologue iff its answer is the real output for the traced input and every
    value it states for a traced variable (in ``### Execution Simulation``, or the whole monologue when that
    heading is missing) was held by that variable at some step or as an argument."""
    if trace.output is None:
        raise ValueError("check_forward needs a trace that returned")
    args, output = parse_answer(reply, seed.entry)
    if args is None or output is None:
        return Verdict(False, "no_answer")
    held = _held(trace, seed)
    claims = extract_claims(_section(reply, "Execution Simulation"), set(held), _quotes(seed))
    wrong, checked = _check_claims(claims, held)
    if not _same_args(seed, args, trace.args) or not same_value(output, trace.output):
        return Verdict(False, "wrong_answer", wrong, checked)
    if wrong:
        return Verdict(flag_only, "wrong_steps", wrong, checked)
    return Verdict(True, "accepted", [], checked)


def check_backward(reply: str, seed: Seed, output_repr: str, run: Callable[[str], str | None], *,
                   flag_only: bool = False, trace_of: Callable[[str], Trace | None] | None = None) -> Verdict:
    """Accept a teacher's backward monologue iff running the program on its deduced arguments gives
    ``output_repr`` (``run(args_src)`` executes it, sandboxed by the caller, and returns the output repr or None)
    and the answer keeps the given output.

    Stated values checked in ``### Reverse Deduction``: for each parameter, the *last* value stated for it (the
    walk ends at the arguments) must equal the deduced argument.  When ``trace_of(args_src)`` is given (the
    trace of the deduced call), every stated value of a traced variable is checked against that trace instead,
    as in ``check_forward``.
    """
    args, output = parse_answer(reply, seed.entry)
    if args is None or output is None:
        return Verdict(False, "no_answer")
    deduced = _arg_values(seed, args)
    section = _section(reply, "Reverse Deduction")
    quotes = _quotes(seed)
    wrong: list[tuple[str, str]] = []
    checked = 0
    trace = trace_of(args) if trace_of is not None else None
    if trace is not None:
        held = _held(trace, seed)
        wrong, checked = _check_claims(extract_claims(section, set(held), quotes), held)
    elif deduced is not None:
        last: dict[str, str] = {}
        for var, stated in extract_claims(section, set(_param_names(seed)), quotes):
            last[var] = stated
        for var, stated in last.items():
            if var in deduced and _literal(stated)[0]:
                checked += 1
                if not _same(_literal(stated)[1], _literal(deduced[var])[1], loose=True):
                    wrong.append((var, stated))
    if not same_value(output, output_repr):
        return Verdict(False, "wrong_answer", wrong, checked)
    real = run(args)
    if real is None or not same_value(real, output_repr):
        return Verdict(False, "wrong_answer", wrong, checked)
    if wrong:
        return Verdict(flag_only, "wrong_steps", wrong, checked)
    return Verdict(True, "accepted", [], checked)
