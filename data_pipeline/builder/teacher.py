"""The teacher model's side of the builder: what it is asked, and how its replies are read.

A teacher is anything with ``generate(prompts, *, max_new_tokens, temperature, seed) -> list[str]``: the
``semcoder data build --teacher PATH --backend hf|jax`` command wraps the eval harness's backends in one, and
tests script one.  Replies are never trusted: every program, input, monologue and patch that comes back is
checked by execution (``build``) before anything is kept.

The prompts are written for this project from the paper's rules: problems that need no external resources
(keyboard, files, network, databases) and no uncommon libraries; a plan stated before a runnable solution;
``[Problem Description]`` and ``[Solution]`` sections.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Sequence
from typing import Protocol


class Teacher(Protocol):
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]: ...


class BackendTeacher:
    """A teacher over an eval backend (``eval.backends.load_backend``): one completion per prompt."""

    def __init__(self, backend, batch_size: int = 8):
        self.backend = backend
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0) -> list[str]:
        # A prompt's sampling seed is a function of the prompt and ``seed`` only, not of its place in the batch,
        # so a resumed build (which asks only for the replies it has not cached) samples the same replies.
        seeds = [int(hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()[:8], 16) % (2**31 - 1) for p in prompts]
        out = self.backend.generate(list(prompts), max_new_tokens=max_new_tokens, temperature=temperature,
                                    seeds=seeds, batch_size=self.batch_size)
        return [g.text for g in out]


PROBLEM_PROMPT = """You write self-contained Python programming exercises from real code.

Below is a code snippet taken from an open-source project. Use it as inspiration for a new, realistic problem.
Rules:
- The problem must be solvable with the Python standard library alone, without reading the keyboard, files,
  databases or the network, without randomness or the current time.
- The solution is one function that takes its input as arguments and returns its result.
- In [Solution], first state your plan in a few sentences, then give the complete runnable code in a
  ```python fence.

Code snippet:
```python
{seed}
```

Answer in exactly this form:
[Problem Description]
<the problem, with the function's name and arguments>

[Solution]
<plan>
```python
<code>
```
"""

DEBUG_PROMPT = """The solution below does not run. Fix it so it runs; keep the same function name and arguments.

[Problem Description]
{problem}

[Solution]
```python
{code}
```

It failed with:
{error}

Answer with the corrected code in a ```python fence.
"""

INPUTS_PROMPT = """Propose {n} different inputs for the function `{entry}` below, small but varied enough to reach
every branch. Write each as one line `{entry}(...)` with literal arguments only.

```python
{code}
```
"""

REFINE_PROMPT_HEAD = ("Debug and Refine the Code: You are given a a problem to be implemented in Python, and a buggy "
                      "code that tries to solve the problem but fails the test case.\nYou should firstly simulate "
                      "the execution with the buggy code and the failed test to identify the root cause of the "
                      "failure. \nThen, you should fix the bug and wrap the refined code in between [Refined] and "
                      "[/Refined].\n")

FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def problem_prompt(seed_code: str) -> str:
    return PROBLEM_PROMPT.format(seed=seed_code.strip())


def debug_prompt(problem: str, code: str, error: str) -> str:
    return DEBUG_PROMPT.format(problem=problem.strip(), code=code.strip(), error=error.strip()[:2000])


def inputs_prompt(code: str, entry: str, n: int) -> str:
    return INPUTS_PROMPT.format(code=code.strip(), entry=entry, n=n)


def refine_prompt(fault: str) -> str:
    """The release's refine template with the fault; the reply is the record's response."""
    return REFINE_PROMPT_HEAD + fault


def first_code_block(text: str) -> str | None:
    m = FENCE.search(text)
    return m.group(1).strip() + "\n" if m else None


def parse_problem_reply(reply: str) -> tuple[str, str] | None:
    """(problem description, solution code) from a ``[Problem Description]`` / ``[Solution]`` reply, or None."""
    m = re.search(r"\[Problem Description\]\s*(.*?)\s*\[Solution\](.*)", reply, re.S)
    if not m:
        return None
    problem, rest = m.group(1).strip(), m.group(2)
    code = first_code_block(rest)
    if not problem or not code:
        return None
    return problem, code


def parse_refined(reply: str) -> str | None:
    """The code between ``[Refined]`` and ``[/Refined]`` (fenced or not), or None."""
    m = re.search(r"\[Refined\](.*?)\[/Refined\]", reply, re.S)
    if not m:
        return None
    return first_code_block(m.group(1)) or (m.group(1).strip() + "\n" if m.group(1).strip() else None)


def parse_calls(text: str, entry: str) -> list[str]:
    """Argument lists of every ``entry(<literals>)`` call in the text (one call per line), deduplicated."""
    found: list[str] = []
    for line in text.splitlines():
        for m in re.finditer(rf"\b{re.escape(entry)}\((.*)\)", line):
            args = _literal_args(m.group(1))
            if args is not None and args not in found:
                found.append(args)
    return found


def _literal_args(src: str) -> str | None:
    """``src`` if ``(src,)`` is a tuple of literals (trimmed at the closing parenthesis that matches), else None."""
    for end in range(len(src), 0, -1):
        candidate = src[:end].strip()
        if not candidate:
            return None
        try:
            tree = ast.parse(f"f({candidate})", mode="eval")
        except SyntaxError:
            continue
        call = tree.body
        if not isinstance(call, ast.Call) or call.keywords:
            return None
        try:
            for arg in call.args:
                ast.literal_eval(arg)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        return candidate
    return None
