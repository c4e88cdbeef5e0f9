"""Plain data passed between the builder's stages (JSON-serialisable, so each stage's result can be cached)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Seed:
    """A self-contained Python program whose ``entry`` function is the unit of work.

    ``code`` holds the function and whatever module-level definitions it needs (helpers, constants, imports of
    allowed modules), so ``exec(code, {})`` defines ``entry``.  ``origin`` says where it came from
    (``"textwrap.py:123"``); ``doc`` is the function's docstring (removed from ``code``), or "".
    """

    id: str
    code: str
    entry: str
    params: tuple[str, ...]
    origin: str
    doc: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Seed:
        return cls(**{**obj, "params": tuple(obj["params"])})


@dataclasses.dataclass(frozen=True)
class Step:
    """The state after one executed line of the entry function's own frame.

    ``line`` is the 1-based line number in ``Seed.code``; ``state`` maps each local variable of that frame to
    the ``repr`` of its value after the line ran (capped in length; a capped repr ends with ``...``).
    ``event`` is ``"line"``, ``"return"`` (``state`` also has the key ``"<return>"``) or ``"exception"``
    (``state["<exception>"]`` is ``"Type: message"``).
    ``branch`` is True/False when the line is an ``if``/``while``/``for``/``elif`` head and the next line
    executed shows which way it went (for: True = the loop took another item), else None.
    """

    line: int
    state: dict[str, str]
    event: str = "line"
    branch: bool | None = None


@dataclasses.dataclass(frozen=True)
class Trace:
    """One call ``entry(<args>)``: its output (repr) or exception, and its steps.

    ``args`` is the call's argument list as Python source (``"'abc', 3"``), parseable by ``ast.literal_eval``
    after wrapping in a tuple; ``output`` is ``repr`` of the return value (None if it raised: then ``raised`` is
    ``"ValueError: ..."``).  ``truncated`` is True when the step or value-size bound cut the trace.
    ``lines`` / ``branches`` are the executed line numbers and (line, taken) branch outcomes, for coverage.
    """

    entry: str
    args: str
    output: str | None
    raised: str | None
    steps: tuple[Step, ...]
    truncated: bool
    lines: tuple[int, ...]
    branches: tuple[tuple[int, bool], ...]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Trace:
        return cls(entry=obj["entry"], args=obj["args"], output=obj["output"], raised=obj["raised"],
                   steps=tuple(Step(**s) for s in obj["steps"]), truncated=obj["truncated"],
                   lines=tuple(obj["lines"]), branches=tuple((int(a), bool(b)) for a, b in obj["branches"]))
