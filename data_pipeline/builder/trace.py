"""Line-level traces of a seed's entry function, executed in the sandbox.

One sandbox job per seed runs all its calls: the driver (``DRIVER``, trusted source that the job executes)
``exec``s ``Seed.code`` (compiled as ``"<seed>"``) in a fresh namespace, then for each argument string calls
``entry(*ast.literal_eval("(" + args + ",)"))`` under ``sys.settrace`` and sends one record per call.

What a trace holds (``types.Step``): the state *after* each executed statement of the entry function's own,
outermost frame.  Helpers, library code and recursive calls of the entry are not traced: a line that calls
them is one step.  Every physical line of a multi-line statement maps to the statement's first line
(``coverage.Static.stmt_of``).  A ``return`` step carries ``"<return>"``; an ``exception`` step (the frame saw
an exception, raised there or in a callee) carries ``"<exception>"`` (``"ValueError: msg"``); when the
exception escapes, the trace ends with it and ``Trace.raised`` says so.  A loop head that is left when the
function ends (``for`` as the last statement) gives a ``line`` step with ``branch=False``, then the
``return`` step on the same line.

Values are *canonical* reprs (``canonical_repr``): ``repr`` for builtin containers, but set and frozenset
elements sorted (numbers by value, strings and bytes as such, anything else by repr), so a set of strings
reads the same under any hash seed; memory addresses (`` at 0x7f...``) removed from other objects' reprs;
capped at ``max_repr`` characters (``...`` appended).  ``Trace.output`` (and ``"<return>"``) is the
canonical repr of the return value, capped at ``max_output``, so equal outputs compare equal as strings.
``Trace.truncated`` is True when a repr was capped, the call passed ``max_steps`` steps (it is then aborted:
the driver raises a ``BaseException`` into it), or the code replaced the tracer.  Limits: a statement written
on the head's line (``if x: y = 1``, ``for x in xs: s += x``) gives fewer steps and no branch outcome; the
tracer sees the entry's own frame only (``sys.settrace`` is per thread, threads are not followed).

``fresh=True`` re-executes the seed code before every call (each call sees a newly loaded program); the
default runs all calls in one namespace, in order.  The inputs stage compares the two to reject
order-dependent (nondeterministic) functions.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from data_pipeline.builder.coverage import Static, analyze
from data_pipeline.builder.types import Seed, Step, Trace
from sandbox import Job, Outcome, Sandbox
from sandbox.drivers import WRITE_ONLY

DEFAULT_MAX_STEPS = 1000
DEFAULT_MAX_REPR = 200
DEFAULT_MAX_OUTPUT = 4096
DEFAULT_TIMEOUT_S = 2.0

# The canonical repr, shared by the driver (in the sandbox) and the harness (``canonical_repr``).
_CANON = r'''
import re as _re

_ADDRESS = _re.compile(r" at 0x[0-9a-fA-F]+")
_SCALARS = (int, float, complex, bool, type(None))


class _Full(Exception):
    pass


_FAST = frozenset((int, str, float, bool, type(None), bytes))


def _canon(value, limit):
    """(text, cut): the canonical repr of ``value``, cut after ``limit`` characters (then ending "...")."""
    t = type(value)
    if t in _FAST or t is list or t is tuple or t is dict:  # flat and small: the builtin repr is canonical
        if t in _FAST:
            fast = t is not str and t is not bytes or len(value) <= limit
        elif len(value) > limit:
            fast = False
        elif t is dict:
            fast = set(map(type, value)) <= _FAST and set(map(type, value.values())) <= _FAST
        else:
            fast = set(map(type, value)) <= _FAST
        if fast:
            try:
                text = repr(value)
            except ValueError:  # an int past the interpreter's digit limit: the slow path says so
                text = None
            if text is not None:
                return (text, False) if len(text) <= limit else (text[:limit] + "...", True)
    parts = []
    size = [0]

    def put(text):
        parts.append(text)
        size[0] += len(text)
        if size[0] > limit:
            raise _Full

    def walk(v, depth, stack):
        t = type(v)
        if t in _SCALARS:
            try:
                put(repr(v))
            except ValueError:  # an int past the interpreter's digit limit
                put("<int with %d bits>" % v.bit_length())
            return
        if t is str or t is bytes:
            if len(v) > limit:
                put(repr(v[:limit]))
                raise _Full
            put(repr(v))
            return
        if depth > 40:
            put("...")
            raise _Full
        if t in (list, tuple, dict, set, frozenset):
            if id(v) in stack:
                put("[...]" if t is list else "(...)" if t is tuple else "{...}")
                return
            stack = stack | {id(v)}
        if t is list or t is tuple:
            put("[" if t is list else "(")
            for i, x in enumerate(v):
                if i:
                    put(", ")
                walk(x, depth + 1, stack)
            put("]" if t is list else ("," if len(v) == 1 else "") + ")")
        elif t is dict:
            put("{")
            for i, (k, x) in enumerate(v.items()):
                if i:
                    put(", ")
                walk(k, depth + 1, stack)
                put(": ")
                walk(x, depth + 1, stack)
            put("}")
        elif t is set or t is frozenset:
            if not v:
                put("set()" if t is set else "frozenset()")
                return
            if len(v) > limit:
                put("{")
                raise _Full
            kinds = set(map(type, v))
            natural = kinds <= {int, bool, float} or kinds == {str} or kinds == {bytes}
            items = []
            for x in (sorted(v) if natural else v):
                text, cut = _canon(x, limit)
                if cut:
                    put(text)
                items.append(text)
            if not natural:
                items.sort()
            put(("{" if t is set else "frozenset({") + ", ".join(items) + ("}" if t is set else "})"))
        else:
            try:
                text = repr(v)
            except BaseException as e:  # noqa: BLE001 - a user-defined __repr__ may do anything
                text = "<%s object (repr raised %s)>" % (type(v).__name__, type(e).__name__)
            if not isinstance(text, str):
                text = "<%s object>" % type(v).__name__
            put(_ADDRESS.sub("", text))

    try:
        walk(value, 0, frozenset())
    except _Full:
        return "".join(parts)[:limit] + "...", True
    except RecursionError:
        return "<too deep>...", True
    return "".join(parts), False
'''

DRIVER = _CANON + r'''
import ast as _ast
import sys as _sys


''' + WRITE_ONLY + r'''


class _Abort(BaseException):
    """Raised into the traced call when it passes max_steps."""


def _unwrap(fn):
    for _ in range(100):
        inner = getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    return getattr(fn, "__code__", None)


def _load(P, describe):
    namespace = {}
    try:
        exec(P["compiled"], namespace)
        fn = namespace[P["entry"]]
    except KeyError:
        return None, None, "NameError: the code does not define " + repr(P["entry"])
    except BaseException as e:  # noqa: BLE001
        return None, None, describe(e)
    return fn, _unwrap(fn), None


def _trace_call(fn, code, args, P, describe):
    stmt_of, heads = P["stmt_of"], P["heads"]
    max_steps, max_repr = P["max_steps"], P["max_repr"]
    immutable = (int, str, float, bool, type(None), bytes, complex)
    steps = []
    shown = {}      # name -> repr text in the current state
    seen = {}       # name -> (object, text) for immutable values (no repr when unchanged)
    st = {"pending": None, "lasti": -1, "cut": False, "aborted": False, "started": False, "frame": None}

    def snapshot(frame, extra):
        changed = {}
        local_vars = frame.f_locals
        for name, v in local_vars.items():
            hit = seen.get(name)
            if hit is not None and hit[0] is v:
                continue
            text, cut = _canon(v, max_repr)
            if cut:
                st["cut"] = True
            if type(v) in immutable:
                seen[name] = (v, text)
            else:
                seen.pop(name, None)
            if shown.get(name) != text:
                shown[name] = changed[name] = text
        removed = [name for name in shown if name not in local_vars]
        for name in removed:
            del shown[name]
            seen.pop(name, None)
        if extra:
            changed.update(extra)
        return changed, removed

    def add(frame, line, event, branch, extra=None):
        changed, removed = snapshot(frame, extra)
        steps.append([line, event, branch, changed, removed])

    def local(frame, event, arg):
        if frame is not st["frame"]:
            return None
        if event == "line":
            line = stmt_of.get(frame.f_lineno, frame.f_lineno)
            lasti = frame.f_lasti
            pending = st["pending"]
            if line == pending and lasti > st["lasti"]:  # the same statement, further on (a multi-line one)
                st["lasti"] = lasti
                return local
            if pending is not None:
                if len(steps) >= max_steps:
                    st["cut"] = st["aborted"] = True
                    raise _Abort
                target = heads.get(pending)
                add(frame, pending, "line", None if target is None else line == target)
            st["pending"], st["lasti"] = line, lasti
        elif event == "return":
            pending = st["pending"]
            line = pending if pending is not None else stmt_of.get(frame.f_lineno, frame.f_lineno)
            if pending is not None and pending in heads:
                add(frame, pending, "line", False)
            text, cut = _canon(arg, P["max_output"])
            if cut:
                st["cut"] = True
            add(frame, line, "return", None, {"<return>": text})
            st["pending"] = None
        elif event == "exception":
            pending = st["pending"]
            line = pending if pending is not None else stmt_of.get(frame.f_lineno, frame.f_lineno)
            add(frame, line, "exception", None, {"<exception>": describe(arg[1])})
            st["pending"] = None
        return local

    def start(frame, event, arg):
        if event == "call" and frame.f_code is code and not st["started"]:
            st["started"] = True
            st["frame"] = frame
            return local
        return None

    out = raised = None
    _sys.settrace(start)
    try:
        out = fn(*args)
    except _Abort:
        st["cut"] = st["aborted"] = True
    except BaseException as e:  # noqa: BLE001
        raised = describe(e)
    finally:
        tracer = _sys.gettrace()
        _sys.settrace(None)
    if tracer is not start and not st["cut"] and code is not None:
        st["cut"] = True  # the code replaced or removed the tracer: the steps may be incomplete
    if raised is not None and steps and steps[-1][1] == "return":
        steps.pop()  # the frame's exit by the exception, not a return
    output = None
    if raised is None and not (st["aborted"] and out is None):
        output, cut = _canon(out, P["max_output"])
        if cut:
            st["cut"] = True
    return {"output": output, "raised": raised, "truncated": st["cut"], "steps": steps}


def _main(P, emit, describe):
    _sys.stdout = _sys.stderr = _sys.stdin = _WriteOnly()
    try:
        P["compiled"] = compile(P["code"], "<seed>", "exec")
    except BaseException as e:  # noqa: BLE001
        emit(["load_error", describe(e)])
        return
    P["stmt_of"] = {int(a): int(b) for a, b in P["stmt_of"]}
    P["heads"] = {int(a): int(b) for a, b in P["heads"]}
    fn = code = None
    if not P["fresh"]:
        fn, code, error = _load(P, describe)
        if error is not None:
            emit(["load_error", error])
            return
    emit(["loaded"])
    for source in P["calls"]:
        try:
            args = () if not source.strip() else _ast.literal_eval("(" + source + ",)")
            if type(args) is not tuple:
                raise ValueError("not an argument list")
        except BaseException as e:  # noqa: BLE001
            emit(["bad_args", describe(e)])
            continue
        if P["fresh"]:
            fn, code, error = _load(P, describe)
            if error is not None:
                emit(["load_error", error])
                continue
        emit(["trace", _trace_call(fn, code, args, P, describe)])


_main(PAYLOAD, emit, describe)
'''

_harness: dict[str, Any] = {}
exec(compile(_CANON, "<canonical_repr>", "exec"), _harness)


def canonical_repr(value: Any, limit: int = 1 << 30) -> str:
    """The canonical repr the tracer writes (sets sorted, addresses removed), cut at ``limit`` characters."""
    return _harness["_canon"](value, limit)[0]


@dataclass(frozen=True)
class TraceFailure:
    """A call that produced no trace.  ``reason``: ``timeout``, ``load_error``, ``bad_args`` or ``crashed``
    (the process died).  ``detail`` says more: a load error as ``"Type: message"`` (``"ModuleNotFoundError: No
    module named 'x'"``), how the process ended (``killed by signal SIGKILL``)."""

    args: str
    reason: str
    detail: str = ""


TraceResult = Trace | TraceFailure


def _static(seed: Seed) -> Static:
    try:
        return analyze(seed.code, seed.entry)
    except ValueError:
        return Static(def_line=0)


def _job(seed: Seed, calls: Sequence[str], *, fresh: bool, max_steps: int, max_repr: int, max_output: int,
         timeout_s: float) -> Job:
    static = _static(seed)
    payload = {"code": seed.code, "entry": seed.entry, "calls": list(calls), "fresh": fresh,
               "max_steps": max_steps, "max_repr": max_repr, "max_output": max_output,
               "stmt_of": sorted(static.stmt_of.items()), "heads": sorted(static.heads.items())}
    n = len(calls)
    return Job(DRIVER, payload=payload, timeout_s=timeout_s * (n + 1) + 1.0,
               deadlines=[timeout_s] * (n + 1))


def _build(seed: Seed, args: str, record: Any) -> Trace:
    """A ``Trace`` from a driver record (checked: it comes from the candidate's process)."""
    if not isinstance(record, dict):
        raise ValueError("malformed trace record")
    steps: list[Step] = []
    state: dict[str, str] = {}
    lines: set[int] = set()
    branches: set[tuple[int, bool]] = set()
    for raw in record["steps"]:
        line, event, branch, changed, removed = raw
        if type(line) is not int or event not in ("line", "return", "exception") \
                or branch not in (None, True, False) or not isinstance(changed, dict):
            raise ValueError("malformed step")
        for name in removed:
            state.pop(name, None)
        extra = {}
        for name, text in changed.items():
            if not isinstance(name, str) or not isinstance(text, str):
                raise ValueError("malformed state")
            if name.startswith("<"):
                extra[name] = text
            else:
                state[name] = text
        steps.append(Step(line=line, state={**state, **extra}, event=event, branch=branch))
        lines.add(line)
        if branch is not None:
            branches.add((line, branch))
    output, raised, truncated = record["output"], record["raised"], record["truncated"]
    if not (output is None or isinstance(output, str)) or not (raised is None or isinstance(raised, str)) \
            or type(truncated) is not bool:
        raise ValueError("malformed trace record")
    return Trace(entry=seed.entry, args=args, output=output, raised=raised, steps=tuple(steps),
                 truncated=truncated, lines=tuple(sorted(lines)), branches=tuple(sorted(branches)))


def _read(seed: Seed, calls: Sequence[str], outcome: Outcome) -> tuple[list[TraceResult], int]:
    """The results of the calls the job finished, and how many calls it consumed (the rest are re-run)."""
    values = outcome.values

    def died() -> TraceFailure:
        if outcome.timed_out:
            return TraceFailure("", "timeout", outcome.describe())
        return TraceFailure("", "crashed", outcome.describe())

    if not values:
        failure = died()
        kind = "TimeoutError" if outcome.timed_out else "SystemError"
        detail = f"{kind}: loading the code: {failure.detail}"
        reason = "timeout" if outcome.timed_out else "load_error"
        return [TraceFailure(a, reason, detail) for a in calls], len(calls)
    first = values[0]
    if isinstance(first, list) and len(first) == 2 and first[0] == "load_error":
        return [TraceFailure(a, "load_error", str(first[1])) for a in calls], len(calls)
    if first != ["loaded"]:
        return [TraceFailure(a, "crashed", "malformed record from the sandbox") for a in calls], len(calls)
    results: list[TraceResult] = []
    for args, record in zip(calls, values[1:]):
        try:
            tag, body = record
            if tag == "trace":
                results.append(_build(seed, args, body))
            elif tag in ("bad_args", "load_error"):
                results.append(TraceFailure(args, tag, str(body)))
            else:
                raise ValueError(tag)
        except (ValueError, TypeError, KeyError):
            results.append(TraceFailure(args, "crashed", "malformed record from the sandbox"))
    if len(results) < len(calls):  # the process ended during the next call: it fails, the rest run again
        failure = died()
        results.append(TraceFailure(calls[len(results)], failure.reason, failure.detail))
    return results, len(results)


def trace_many(sandbox: Sandbox, items: Sequence[tuple[Seed, Sequence[str]]], *, fresh: bool = False,
               max_steps: int = DEFAULT_MAX_STEPS, max_repr: int = DEFAULT_MAX_REPR,
               max_output: int = DEFAULT_MAX_OUTPUT, timeout_s: float = DEFAULT_TIMEOUT_S,
               on_result: Callable[[int, list[TraceResult]], None] | None = None) -> list[list[TraceResult]]:
    """Trace each ``(seed, args_list)``: one job per seed (all its calls), the seeds in parallel
    (``Sandbox.map``).  A call that times out or kills its process fails; the calls after it run again in a
    new job.  ``timeout_s`` bounds each call (and loading the code).  Results per seed, in call order;
    ``on_result(i, results)`` is called as each seed with calls completes."""
    results: list[list[TraceResult]] = [[] for _ in items]
    todo = [(i, list(calls)) for i, (_, calls) in enumerate(items) if calls]
    while todo:
        jobs = [_job(items[i][0], calls, fresh=fresh, max_steps=max_steps, max_repr=max_repr,
                     max_output=max_output, timeout_s=timeout_s) for i, calls in todo]
        outcomes = sandbox.map(jobs)
        again = []
        for (i, calls), outcome in zip(todo, outcomes):
            done, used = _read(items[i][0], calls, outcome)
            results[i].extend(done)
            if used < len(calls):
                again.append((i, calls[used:]))
            elif on_result is not None:
                on_result(i, results[i])
        todo = again
    return results


def trace_calls(sandbox: Sandbox, seed: Seed, args_list: Sequence[str], *, fresh: bool = False,
                max_steps: int = DEFAULT_MAX_STEPS, max_repr: int = DEFAULT_MAX_REPR,
                max_output: int = DEFAULT_MAX_OUTPUT, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[TraceResult]:
    """Trace ``seed.entry`` on each argument string (``"'abc', 3"``); one result per call, in order."""
    return trace_many(sandbox, [(seed, args_list)], fresh=fresh, max_steps=max_steps, max_repr=max_repr,
                      max_output=max_output, timeout_s=timeout_s)[0]


def load_error(sandbox: Sandbox, seed: Seed, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """None when the seed's code loads and defines ``entry``, else why not (``"Type: message"``)."""
    outcome = sandbox.map([_job(seed, [], fresh=False, max_steps=1, max_repr=1, max_output=1,
                                timeout_s=timeout_s)])[0]
    if outcome.values and outcome.values[0] == ["loaded"]:
        return None
    failure = _read(seed, [""], outcome)[0][0]
    assert isinstance(failure, TraceFailure)
    return failure.detail


def parse_args(args: str) -> tuple:
    """The argument values of an argument string (``ValueError`` if it is not a literal argument list)."""
    try:
        value = ast.literal_eval("(" + args + ",)") if args.strip() else ()
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        raise ValueError(f"not a literal argument list: {args[:80]!r} ({e})") from None
    if type(value) is not tuple:
        raise ValueError(f"not an argument list: {args[:80]!r}")
    return value
