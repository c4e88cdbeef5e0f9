"""Batch scoring: run code on inputs in the sandbox, then judge what came back here, in the harness.

The split is the point.  ``run`` executes ``Program``s (candidate code, the calls to make, the limits) and
returns ``RunResult``s: per call, the plain value it returned (or a digest of a huge one), what it raised,
or why it never returned.  ``judge`` compares those values with expected values the candidate's process
never held, with ``==`` or a benchmark's own rule, and gives a ``Verdict``.  ``check`` does both for a
batch.  Nothing a candidate does inside its process can reach the comparison: it can only send data.

Per call there are two deadlines, both enforced by the monitor outside the candidate: ``time_limits[i]``
for the call itself and ``encode_limits[i]`` for turning its value into plain data (so a big correct
answer is not charged its serialisation against the call's limit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox import codec
from sandbox.drivers import LAMBDA_BUILTINS, RUN
from sandbox.pool import Job, Outcome, Sandbox

DEFAULT_ENCODE_LIMIT_S = 1.0
STATUSES = ("passed", "failed", "timeout", "error")


@dataclass(frozen=True)
class Program:
    """Code to load, then either ``entry_point`` called with each of ``calls`` (positional arguments; keyword
    arguments from ``call_kwargs``, one mapping per call) or ``expression`` evaluated once in the code's
    namespace."""

    code: str
    entry_point: str | None = None
    calls: Sequence[Sequence[Any]] = ()
    expression: str | None = None
    call_kwargs: Sequence[Mapping[str, Any]] | None = None
    time_limits: Sequence[float] | None = None     # seconds per call
    encode_limits: Sequence[float] | None = None   # seconds to send each call's value
    timeout_s: float = 10.0
    run_as_main: bool = False
    swallow_io: bool = True
    guard: str | None = None
    lambdas: Sequence[tuple[int | str, str]] = ()
    not_none: bool = False                          # see drivers.RUN
    stdin: str = ""
    calls_json: str | None = None                   # ``encode_calls(calls, call_kwargs)``, if already known

    def __post_init__(self) -> None:
        if (self.entry_point is None) == (self.expression is None):
            raise ValueError("a Program needs exactly one of entry_point and expression")

    @property
    def n_calls(self) -> int:
        return 1 if self.expression is not None else len(self.calls)

    def job(self) -> Job:
        payload = {"code": self.code, "entry_point": self.entry_point, "calls": None,
                   "expression": self.expression, "run_as_main": self.run_as_main, "swallow_io": self.swallow_io,
                   "guard": self.guard, "lambdas": [[slot, src] for slot, src in self.lambdas],
                   "not_none": self.not_none, "lambda_builtins": list(LAMBDA_BUILTINS)}
        calls = self.calls_json if self.calls_json is not None else encode_calls(self.calls, self.call_kwargs)
        # splice the (large, usually cached) calls text in: a JSON string cannot contain this unescaped
        text = codec.encode(payload).decode("ascii").replace('["calls",null]', f'["calls",{calls}]', 1)
        deadlines = [self.timeout_s]
        for i in range(self.n_calls):
            deadlines.append(self.time_limits[i] if self.time_limits else self.timeout_s)
            deadlines.append(self.encode_limits[i] if self.encode_limits else DEFAULT_ENCODE_LIMIT_S)
        return Job(RUN, timeout_s=self.timeout_s, stdin=self.stdin, deadlines=deadlines, payload_json=text)


_calls_cache: dict[tuple[int, int], tuple[Any, Any, str]] = {}
_calls_lock = threading.Lock()


def encode_calls(calls: Sequence[Sequence[Any]], call_kwargs: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The tagged JSON text of ``[[args, kwargs], ...]`` (a ``Program``'s ``calls_json``), cached: every
    candidate of a task runs on the same inputs, which need encoding once.  Callers that score the same
    inputs across processes (EvalPlus's ground-truth cache) can store this text and pass it back."""
    key = (id(calls), id(call_kwargs))
    with _calls_lock:
        hit = _calls_cache.get(key)
        if hit is not None and hit[0] is calls and hit[1] is call_kwargs:
            return hit[2]
    kwargs = call_kwargs or [{}] * len(calls)
    text = codec.encode([[args if type(args) is list else list(args), kw if type(kw) is dict else dict(kw)]
                         for args, kw in zip(calls, kwargs)]).decode("ascii")
    with _calls_lock:
        if len(_calls_cache) > 4096:
            _calls_cache.clear()
        _calls_cache[key] = (calls, call_kwargs, text)  # holding the objects keeps their ids theirs
    return text


@dataclass(frozen=True)
class Digest:
    """A returned value too large to send whole: its content digest (``codec.digest``) and type name."""

    blake2b: str
    type: str

    def matches(self, expected: Any) -> bool:
        """Whether ``expected`` has this digest (same exact types and values)."""
        try:
            return _expected_digest(expected) == self.blake2b
        except codec.PlainDataError:
            return False


_digest_cache: dict[int, tuple[Any, str]] = {}
_digest_lock = threading.Lock()


def _expected_digest(value: Any) -> str:
    """``codec.digest`` of an expected value, cached (expected values are long-lived and large ones are few)."""
    with _digest_lock:
        hit = _digest_cache.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
    result = codec.digest(value)
    with _digest_lock:
        if len(_digest_cache) > 256:
            _digest_cache.clear()
        _digest_cache[id(value)] = (value, result)
    return result


@dataclass
class Call:
    """What one call did: ``returned`` (with ``value``, or ``digest`` when too large), ``raised``,
    ``unplain`` (returned something that is not plain data), ``timeout``, ``lost`` (the process ended or
    the sandbox failed first: see ``message``) or ``not_run``."""

    status: str
    value: Any = None
    digest: Digest | None = None
    message: str = ""
    seconds: float | None = None

    @property
    def output(self) -> Any:
        """The value, or its ``Digest`` when only that came back."""
        return self.digest if self.digest is not None else self.value


@dataclass
class RunResult:
    """A ``Program``'s run: whether the code loaded, each call, and the raw ``Outcome``."""

    loaded: bool
    load_error: str | None
    calls: list[Call]
    outcome: Outcome


def _frame(values: list, i: int) -> Any:
    return values[i] if i < len(values) else None


def _tag(record: Any) -> str | None:
    return record[0] if isinstance(record, list) and record and isinstance(record[0], str) else None


def _missing(outcome: Outcome, frame: int, what: str, limits: Sequence[float] | None, i: int) -> Call:
    """Why frame ``frame`` never came (``what``: the step it belongs to, e.g. "sending its value")."""
    if outcome.timed_out and outcome.waiting_for == frame and limits:
        return Call("timeout", message=f"{what} exceeded its {limits[i]:.2f} s limit")
    if outcome.timed_out:
        return Call("timeout", message=f"{what}: {outcome.describe()}")
    if outcome.error is None and outcome.signal is None and not outcome.stopped:
        return Call("lost", message=f"the process {outcome.describe()} during {what}")
    return Call("lost", message=f"{what}: {outcome.describe()}")


def interpret(program: Program, outcome: Outcome) -> RunResult:
    """Read a ``RUN`` driver's records out of an ``Outcome`` (candidate-written, so checked, never trusted)."""
    values, times = outcome.values, outcome.times
    n = program.n_calls
    first = _frame(values, 0)
    if first is None:
        if outcome.timed_out:
            reason = f"loading the code: {outcome.describe()}"
        else:
            reason = f"the process ended before the code loaded: {outcome.describe()}"
        return RunResult(False, reason, [Call("not_run")] * n, outcome)
    if _tag(first) == "load_error" and len(first) == 2 and isinstance(first[1], str):
        return RunResult(False, first[1], [Call("not_run")] * n, outcome)
    if first != ["loaded"]:
        return RunResult(False, "malformed record from the sandbox", [Call("not_run")] * n, outcome)
    calls: list[Call] = []
    for i in range(n):
        marker, value = 1 + 2 * i, 2 + 2 * i
        start = times[marker - 1] if marker - 1 < len(times) else None
        record = _frame(values, marker)
        if record is None:
            calls.append(_missing(outcome, marker, "the call", program.time_limits, i))
            break
        seconds = round(times[marker] - start, 4) if start is not None and marker < len(times) else None
        if _tag(record) == "raised" and len(record) == 2 and isinstance(record[1], str):
            calls.append(Call("raised", message=record[1], seconds=seconds))
            break
        if record != ["returned"]:
            calls.append(Call("lost", message="malformed record from the sandbox"))
            break
        record = _frame(values, value)
        if record is None:
            calls.append(_missing(outcome, value, "sending its value", program.encode_limits, i))
            break
        tag = _tag(record)
        if tag == "value" and len(record) == 2:
            calls.append(Call("returned", value=record[1], seconds=seconds))
        elif tag == "digest" and len(record) == 2 and isinstance(record[1], dict) and \
                isinstance(record[1].get("blake2b"), str) and isinstance(record[1].get("type"), str):
            calls.append(Call("returned", digest=Digest(record[1]["blake2b"], record[1]["type"]), seconds=seconds))
        elif tag == "unplain" and len(record) == 2 and isinstance(record[1], str):
            calls.append(Call("unplain", message=record[1], seconds=seconds))
            break
        else:
            calls.append(Call("lost", message="malformed record from the sandbox"))
            break
    calls += [Call("not_run")] * (n - len(calls))
    return RunResult(True, None, calls, outcome)


def run(sandbox: Sandbox, programs: Sequence[Program],
        on_result: Callable[[int, RunResult], None] | None = None) -> list[RunResult]:
    """Run ``programs`` on the sandbox's workers (in parallel); results in input order."""
    hook = None if on_result is None else (lambda i, outcome: on_result(i, interpret(programs[i], outcome)))
    outcomes = sandbox.map([p.job() for p in programs], on_result=hook)
    return [interpret(p, o) for p, o in zip(programs, outcomes)]


# ---- judging ---------------------------------------------------------------------------------------------

Compare = Callable[[Any, Any, int], "str | None"]


def exact(output: Any, expected: Any, index: int) -> str | None:
    """The default rule: ``expected == output`` on plain values (a digest must match exactly)."""
    if isinstance(output, Digest):
        return None if output.matches(expected) else "wrong output"
    try:
        return None if expected == output else "wrong output"
    except Exception as e:  # noqa: BLE001 - e.g. comparing numpy arrays
        return f"the comparison raised {type(e).__name__}"


@dataclass
class TestResult:
    """One call's verdict."""

    status: str          # passed | failed | timeout | error | not_run
    message: str = ""
    seconds: float | None = None


@dataclass
class Verdict:
    """The judgement of one run: ``status`` is ``passed``, ``failed``, ``timeout`` or ``error``;
    ``failed_at`` the first call that did not pass."""

    status: str
    message: str = ""
    failed_at: int | None = None
    tests: list[TestResult] = field(default_factory=list)
    wall_s: float = 0.0
    stdout: str = ""
    stderr: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _short(value: Any, limit: int = 200) -> str:
    if isinstance(value, Digest):
        return f"<{value.type}, too large to show>"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[:limit] + "..."


def judge(result: RunResult, expected: Sequence[Any], compare: Compare | None = None,
          keep_going: bool = False, label: Callable[[int], str] | None = None) -> Verdict:
    """Compare ``result``'s values with ``expected`` (one per call) using ``compare`` (default: ``exact``).

    The first call that does not pass decides the status; with ``keep_going`` later returned values are
    still compared (for per-test reports).  ``label(i)`` names call ``i`` in messages (default ``test i``).
    """
    compare = compare or exact
    name = label or (lambda i: f"test {i}")
    outcome = result.outcome
    base = {"wall_s": outcome.wall_s, "stdout": outcome.stdout, "stderr": outcome.stderr}
    if not result.loaded:
        status = "timeout" if outcome.timed_out else ("error" if outcome.error or not result.outcome.values
                                                    else "failed")
        message = result.load_error or "the code did not load"
        return Verdict(status, message, 0 if expected else None,
                       [TestResult("not_run") for _ in expected], **base)
    tests: list[TestResult] = []
    first: tuple[str, str, int] | None = None
    for i, (call, exp) in enumerate(zip(result.calls, expected)):
        if call.status == "returned":
            try:
                why = compare(call.output, exp, i)
            except Exception as e:  # noqa: BLE001 - a rule that cannot decide does not pass
                why = f"the comparison raised {type(e).__name__}"
            if why is None:
                tests.append(TestResult("passed", seconds=call.seconds))
                continue
            message = f"{name(i)}: {why} {_short(call.output)}" if why == "wrong output" else f"{name(i)}: {why}"
            tests.append(TestResult("failed", message, call.seconds))
            first = first or ("failed", message, i)
            if not keep_going:
                break
            continue
        status = {"raised": "failed", "unplain": "failed", "timeout": "timeout", "lost": "error",
                  "not_run": "not_run"}[call.status]
        if status == "not_run":
            tests.append(TestResult("not_run"))
            continue
        message = f"{name(i)}: {call.message}"
        tests.append(TestResult(status, message, call.seconds))
        first = first or (status, message, i)
        break
    tests += [TestResult("not_run") for _ in range(len(expected) - len(tests))]
    if first is None:
        return Verdict("passed", "", None, tests, **base)
    return Verdict(first[0], first[1], first[2], tests, **base)


def check(sandbox: Sandbox, items: Sequence[tuple[Program, Sequence[Any]]], compare: Compare | None = None,
          on_result: Callable[[int, Verdict], None] | None = None) -> list[Verdict]:
    """Run each ``(program, expected)`` and judge it with ``compare``: the batch scoring API."""
    programs = [p for p, _ in items]
    hook = None if on_result is None else (lambda i, r: on_result(i, judge(r, items[i][1], compare)))
    return [judge(r, exp, compare) for r, (_, exp) in zip(run(sandbox, programs, hook), items)]
