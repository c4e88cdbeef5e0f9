"""Generate the embedded PyX / PyX-R sample from really executed code, and train its tokenizer.

Each record starts from a small Python function family (code template + parameters + an input
generator + an NL description written from the code).  The function is executed under
``sys.settrace``; the forward monologue narrates the recorded line-by-line states, the backward
monologue walks the same trace from the output back to the input, and the answers are the real
return values.  PyX-R records mutate the code (an operator, a constant, a bound), keep only
mutants that really fail the test, and narrate the buggy run before giving the fixed code.

Regenerate with ``semcoder data make-sample`` (deterministic for a given seed).
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import io
import json
import os
import pathlib
import random
import sys
import tempfile
from collections.abc import Callable
from typing import Any

MAX_TRACE_STEPS = 40


@dataclasses.dataclass(frozen=True)
class Family:
    """A function template, how to pick its parameters and inputs, and how to describe it."""

    name: str
    code: str  # a ``def f(...)`` with ``{param}`` placeholders
    params: Callable[[random.Random], dict[str, Any]]
    inputs: Callable[[random.Random, dict[str, Any]], tuple]
    nl: str  # description with the same placeholders
    mutations: tuple[tuple[str, str], ...]  # (old, new) substrings for PyX-R bugs


def _ints(rng: random.Random, lo: int = 0, hi: int = 20, n: tuple[int, int] = (2, 6)) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(rng.randint(*n))]


def _word(rng: random.Random, n: tuple[int, int] = (3, 7)) -> str:
    return "".join(rng.choice("abcdeilmnorstu") for _ in range(rng.randint(*n)))


FAMILIES: tuple[Family, ...] = (
    Family("sum_divisible",
           "def f(nums):\n    total = 0\n    for n in nums:\n        if n % {k} == 0:\n            total += n\n    return total\n",
           lambda r: {"k": r.choice([2, 3, 4, 5])}, lambda r, p: (_ints(r),),
           "Write a function `f(nums)` that returns the sum of the numbers in the list `nums` that are divisible by {k}.",
           (("total += n", "total += 1"), ("== 0", "!= 0"), ("total = 0", "total = 1"))),
    Family("count_char",
           "def f(s):\n    count = 0\n    for ch in s:\n        if ch == {c!r}:\n            count += 1\n    return count\n",
           lambda r: {"c": r.choice("aeiost")}, lambda r, p: (_word(r, (4, 9)) + p["c"],),
           "Write a function `f(s)` that counts how many times the character {c!r} occurs in the string `s`.",
           (("count += 1", "count = 1"), ("ch == ", "ch != "))),
    Family("reverse_words",
           "def f(s):\n    words = s.split({sep!r})\n    words.reverse()\n    return {sep!r}.join(words)\n",
           lambda r: {"sep": r.choice([" ", ",", "-"])},
           lambda r, p: (p["sep"].join(_word(r, (2, 5)) for _ in range(r.randint(2, 4))),),
           "Write a function `f(s)` that splits the string `s` on {sep!r}, reverses the order of the pieces and joins them back with {sep!r}.",
           (("words.reverse()", "words.sort()"),)),
    Family("max_gap",
           "def f(nums):\n    best = {start}\n    for i in range(1, len(nums)):\n        gap = nums[i] - nums[i - 1]\n        if gap > best:\n            best = gap\n    return best\n",
           lambda r: {"start": r.choice([0, -1])}, lambda r, p: (_ints(r, 0, 30, (3, 6)),),
           "Write a function `f(nums)` that returns the largest increase between two consecutive elements of `nums`, or {start} if there is none larger than {start}.",
           (("gap > best", "gap < best"), ("nums[i - 1]", "nums[0]"))),
    Family("running_product",
           "def f(nums):\n    result = 1\n    for n in nums:\n        result = (result * n) % {m}\n    return result\n",
           lambda r: {"m": r.choice([7, 10, 11, 13, 100])}, lambda r, p: (_ints(r, 1, 12, (2, 5)),),
           "Write a function `f(nums)` that multiplies all numbers in `nums` together, keeping only the remainder modulo {m} after each step, and returns the result.",
           (("result = 1", "result = 0"), ("result * n", "result + n"))),
    Family("dedupe",
           "def f(items):\n    seen = []\n    for x in items:\n        if x not in seen:\n            seen.append(x)\n    return seen\n",
           lambda r: {}, lambda r, p: (_ints(r, 0, 5, (3, 7)),),
           "Write a function `f(items)` that returns the elements of `items` without duplicates, keeping the order of first occurrence.",
           (("x not in seen", "x in seen"),)),
    Family("caesar",
           "def f(s):\n    out = ''\n    for ch in s:\n        if ch.isalpha():\n            out += chr((ord(ch) - 97 + {k}) % 26 + 97)\n        else:\n            out += ch\n    return out\n",
           lambda r: {"k": r.randint(1, 25)}, lambda r, p: (_word(r, (3, 6)) + r.choice(["", "!", " 1"]),),
           "Write a function `f(s)` that shifts every lowercase letter of `s` forward by {k} places in the alphabet (wrapping around after 'z') and leaves other characters unchanged.",
           (("% 26", "% 25"), ("out += ch\n", "out += ''\n"))),
    Family("digit_sum",
           "def f(n):\n    total = 0\n    while n > 0:\n        total += n % {base}\n        n //= {base}\n    return total\n",
           lambda r: {"base": r.choice([10, 10, 2, 8])}, lambda r, p: (r.randint(1, 999),),
           "Write a function `f(n)` that returns the sum of the digits of the non-negative integer `n` written in base {base}.",
           (("n > 0", "n > 1"), ("total += n % {base}", "total += n // {base}"))),
    Family("collatz",
           "def f(n):\n    steps = 0\n    while n != 1 and steps < {limit}:\n        if n % 2 == 0:\n            n = n // 2\n        else:\n            n = 3 * n + 1\n        steps += 1\n    return steps\n",
           lambda r: {"limit": r.choice([5, 8, 10])}, lambda r, p: (r.randint(2, 12),),
           "Write a function `f(n)` that counts the Collatz steps needed to reach 1 from `n` (halve even numbers, map odd n to 3n + 1), stopping after at most {limit} steps.",
           (("3 * n + 1", "3 * n - 1"), ("steps < {limit}", "steps <= {limit}"))),
    Family("merge_counts",
           "def f(keys, values):\n    d = {{}}\n    for k, v in zip(keys, values):\n        d[k] = d.get(k, {default}) + v\n    return d\n",
           lambda r: {"default": r.choice([0, 0, 1])},
           lambda r, p: ([r.choice("abc") for _ in range(r.randint(2, 5))], _ints(r, 1, 9, (5, 5))),
           "Write a function `f(keys, values)` that pairs up `keys` and `values` and returns a dict mapping each key to {default} plus the sum of its values.",
           (("+ v", "- v"), ("d[k] = d.get(k, {default}) + v", "d[k] = v"))),
    Family("alternate_case",
           "def f(s):\n    out = ''\n    for i, ch in enumerate(s):\n        if i % 2 == {parity}:\n            out += ch.upper()\n        else:\n            out += ch.lower()\n    return out\n",
           lambda r: {"parity": r.choice([0, 1])}, lambda r, p: (_word(r, (3, 7)),),
           "Write a function `f(s)` that upper-cases the characters of `s` at {parity_word} positions (counting from 0) and lower-cases the others.",
           (("ch.upper()", "ch.lower()"),)),
    Family("prefix_sums",
           "def f(nums):\n    acc = {start}\n    res = []\n    for n in nums:\n        acc += n\n        res.append(acc)\n    return res\n",
           lambda r: {"start": r.choice([0, 0, 10])}, lambda r, p: (_ints(r, -5, 9, (2, 5)),),
           "Write a function `f(nums)` that returns the running sums of `nums`, starting from {start}.",
           (("res.append(acc)", "res.append(n)"), ("acc += n", "acc = n"))),
    Family("find_index",
           "def f(nums, target):\n    for i, n in enumerate(nums):\n        if n {op} target:\n            return i\n    return -1\n",
           lambda r: {"op": r.choice(["==", ">="])},
           lambda r, p: (_ints(r, 0, 9, (3, 6)), r.randint(0, 9)),
           "Write a function `f(nums, target)` that returns the index of the first element of `nums` that is {op_word} `target`, or -1 if there is none.",
           (("return -1", "return 0"), ("return i", "return n"))),
    Family("clamp",
           "def f(nums):\n    res = []\n    for n in nums:\n        res.append(min(max(n, {lo}), {hi}))\n    return res\n",
           lambda r: {"lo": r.randint(0, 3), "hi": r.randint(5, 8)}, lambda r, p: (_ints(r, -2, 12, (2, 5)),),
           "Write a function `f(nums)` that clamps every number of `nums` into the range [{lo}, {hi}] and returns the new list.",
           (("min(max(n, {lo}), {hi})", "max(min(n, {lo}), {hi})"),)),
    Family("is_palindrome",
           "def f(s):\n    i = 0\n    j = len(s) - 1\n    while i < j:\n        if s[i] != s[j]:\n            return False\n        i += 1\n        j -= 1\n    return True\n",
           lambda r: {},
           lambda r, p: ((lambda w: r.choice([w + w[::-1], w + w[-2::-1], w]))(_word(r, (2, 4))),),
           "Write a function `f(s)` that returns True if the string `s` reads the same forwards and backwards, else False.",
           (("return False", "return True"), ("j -= 1", "j -= 2"))),
)


def _render(family: Family, params: dict[str, Any]) -> tuple[str, str]:
    words = {"parity_word": "even" if params.get("parity") == 0 else "odd",
             "op_word": {"==": "equal to", ">=": "greater than or equal to"}.get(params.get("op"), "")}
    return family.code.format(**params), family.nl.format(**params, **words)


@dataclasses.dataclass
class Trace:
    """What one call did: (line number, locals after the line) per executed line, and the result."""

    steps: list[tuple[int, dict[str, Any]]]
    result: Any
    args: dict[str, Any]


def run_traced(code: str, args: tuple) -> Trace | None:
    """Execute ``f(*args)`` from ``code`` under ``sys.settrace``; None if it runs too long or raises."""
    namespace: dict[str, Any] = {}
    exec(compile(code, "<sample>", "exec"), namespace)
    func = namespace["f"]
    events: list[tuple[int, dict[str, Any]]] = []
    arg_names = func.__code__.co_varnames[:func.__code__.co_argcount]

    class TooLong(Exception):
        pass

    def tracer(frame, event, arg):
        if frame.f_code is not func.__code__:
            return None
        if event in ("line", "return"):
            events.append((frame.f_lineno, copy.deepcopy(dict(frame.f_locals))))
            if len(events) > MAX_TRACE_STEPS:
                raise TooLong
        return tracer

    call_args = copy.deepcopy(args)
    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = func(*call_args)
    except (TooLong, ArithmeticError, LookupError, TypeError, ValueError):
        return None
    finally:
        sys.settrace(old)
    # events[k] is the state before line events[k][0] ran; the state after it is events[k+1]'s.
    steps = [(events[k][0], events[k + 1][1]) for k in range(len(events) - 1)]
    return Trace(steps=steps, result=result, args=dict(zip(arg_names, copy.deepcopy(args))))


def _call(args: tuple) -> str:
    return "f(" + ", ".join(repr(a) for a in args) + ")"


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [f"`{k}` = {after[k]!r}" for k in after if k not in before or before[k] != after[k]]


def _loop_values(stmt: str, state: dict[str, Any]) -> str:
    names = [n.strip() for n in stmt[4:stmt.index(" in ")].split(",")]
    return ", ".join(f"`{n}` = {state[n]!r}" for n in names if n in state)


def narrate_forward(code: str, trace: Trace) -> list[str]:
    """One line per executed statement: the statement and what it changed (or where control went)."""
    lines = code.splitlines()
    out, state = [], dict(trace.args)
    for k, (lineno, after) in enumerate(trace.steps):
        stmt = lines[lineno - 1].strip()
        changes = _changes(state, after)
        if stmt.startswith(("if ", "while ", "elif ")):
            nxt = trace.steps[k + 1][0] if k + 1 < len(trace.steps) else None
            taken = nxt == lineno + 1
            what = f"the condition is {taken}"
        elif stmt.startswith("for "):
            nxt = trace.steps[k + 1][0] if k + 1 < len(trace.steps) else None
            what = ("the loop takes " + _loop_values(stmt, after)) if nxt == lineno + 1 else "the loop is exhausted"
        elif stmt.startswith("return"):
            what = f"the function returns {trace.result!r}"
        else:
            what = ", ".join(changes) if changes else "nothing changes"
        out.append(f"- [L{lineno}]: `{stmt}`: {what}.")
        state = after
    return out


def forward_record(code: str, nl: str, args: tuple, trace: Trace, family: str, rid: str) -> dict:
    call = _call(args)
    instruction = f"[PYTHON]\n{code}assert {call} == ??\n[/PYTHON]"
    response = "\n".join([
        "[MONOLOGUE]", "### Understanding the Function", nl.replace("Write a function", "The function")
        .replace(" that ", " ", 1), "", "### Execution Simulation",
        f"Let's simulate `{call}` line by line, starting with " + ", ".join(
            f"`{k}` = {v!r}" for k, v in trace.args.items()) + ".",
        *narrate_forward(code, trace), "",
        f"So `{call}` returns {trace.result!r}.", "[/MONOLOGUE]", "[ANSWER]",
        f"assert {call} == {trace.result!r}", "[/ANSWER]"])
    return {"nl": "", "fwd_mnl": instruction, "bwd_mnl": "", "response": response, "id": rid, "family": family}


def backward_record(code: str, nl: str, args: tuple, trace: Trace, family: str, rid: str) -> dict:
    call = _call(args)
    instruction = f"[PYTHON]\n{code}assert f(??) == {trace.result!r}\n[/PYTHON]"
    lines = code.splitlines()
    reverse = []
    for k in range(len(trace.steps) - 1, -1, -1):
        lineno, after = trace.steps[k]
        stmt = lines[lineno - 1].strip()
        entered = k + 1 < len(trace.steps) and trace.steps[k + 1][0] == lineno + 1
        if stmt.startswith("return"):
            reverse.append(f"- The output {trace.result!r} comes from `{stmt}` at [L{lineno}].")
        elif stmt.startswith("for "):
            if entered:  # the final check that ends the loop adds nothing
                reverse.append(f"- [L{lineno}] `{stmt}` had reached {_loop_values(stmt, after)}.")
        elif not stmt.startswith(("if ", "while ", "else")):
            shown = ", ".join(f"`{k}` = {v!r}" for k, v in after.items() if k not in trace.args or
                              after[k] != trace.args[k]) or "no new values"
            reverse.append(f"- Before that, [L{lineno}] `{stmt}` left {shown}.")
    response = "\n".join([
        "[MONOLOGUE]", "### Understanding the Function", nl.replace("Write a function", "The function")
        .replace(" that ", " ", 1), "", "### Reverse Deduction", *reverse[:12],
        "- Tracing back to the start, the arguments must be " + ", ".join(
            f"`{k}` = {v!r}" for k, v in trace.args.items()) + ".", "",
        "### Conclusion", f"Calling `{call}` gives {trace.result!r}.", "[/MONOLOGUE]", "[ANSWER]",
        f"assert {call} == {trace.result!r}", "[/ANSWER]"])
    return {"nl": "", "fwd_mnl": "", "bwd_mnl": instruction, "response": response, "id": rid, "family": family}


def nl2code_record(code: str, nl: str, args: tuple, trace: Trace, family: str, rid: str) -> dict:
    instruction = f"{nl}\nFor example, `{_call(args)}` should return `{trace.result!r}`."
    return {"nl": instruction, "fwd_mnl": "", "bwd_mnl": "", "response": f"```python\n{code}```", "id": rid,
            "family": family}


def refine_record(code: str, buggy: str, nl: str, args: tuple, good: Trace, bad: Trace, rid: str) -> dict:
    call = _call(args)
    fault = "\n".join(["### Problem", nl, "", "### Buggy Solution", "```python", buggy.rstrip("\n"), "```", "",
                       "### Failed Test", "```python", f"assert {call} == {good.result!r}", "```"])
    buggy_lines, fixed_lines = buggy.splitlines(), code.splitlines()
    changed = [i for i, (a, b) in enumerate(zip(buggy_lines, fixed_lines)) if a != b]
    line = changed[0] + 1
    response = "\n".join([
        "[MONOLOGUE]", "### Debugging Summary", f"Let's simulate the failed test `{call}` on the buggy code.",
        *narrate_forward(buggy, bad)[:15], f"The buggy code returns {bad.result!r}, but {good.result!r} is expected.",
        "", "### Root Cause Analysis",
        f"[L{line}] `{buggy_lines[line - 1].strip()}` is wrong: it should be `{fixed_lines[line - 1].strip()}`.", "",
        "### Bug Fixing", f"Replace [L{line}] and the test passes.", "[/MONOLOGUE]", "[Refined]", "```python",
        code.rstrip("\n"), "```", "[/Refined]"])
    return {"fault": fault, "response": response, "id": rid}


def generate(seed: int = 0, per_task: int = 300, refine: int = 150) -> tuple[list[dict], list[dict]]:
    """PyX records (``per_task`` of each of nl2code, exec_o, exec_i) and ``refine`` PyX-R records."""
    rng = random.Random(seed)
    makers = (nl2code_record, forward_record, backward_record)
    pyx: list[dict] = []
    seen: set[tuple[str, str]] = set()
    counts = [0, 0, 0]
    while min(counts) < per_task:
        family = rng.choice(FAMILIES)
        params = family.params(rng)
        code, nl = _render(family, params)
        args = family.inputs(rng, params)
        trace = run_traced(code, args)
        if trace is None or (code, repr(args)) in seen:
            continue
        seen.add((code, repr(args)))
        task = min(range(3), key=lambda t: (counts[t], t))
        pyx.append(makers[task](code, nl, args, trace, family.name, f"pyx-{task}-{counts[task]}"))
        counts[task] += 1
    pyx_r: list[dict] = []
    while len(pyx_r) < refine:
        family = rng.choice(FAMILIES)
        params = family.params(rng)
        code, nl = _render(family, params)
        old, new = rng.choice(family.mutations)
        old, new = old.format(**params), new.format(**params)
        if old not in code:
            continue
        buggy = code.replace(old, new, 1)
        args = family.inputs(rng, params)
        good, bad = run_traced(code, args), run_traced(buggy, args)
        if good is None or bad is None or good.result == bad.result or (buggy, repr(args)) in seen:
            continue  # only mutants that really fail the test, each once
        seen.add((buggy, repr(args)))
        pyx_r.append(refine_record(code, buggy, nl, args, good, bad, f"pyx-r-{len(pyx_r)}"))
    rng.shuffle(pyx)
    return pyx, pyx_r


def _write_jsonl_gz(path: pathlib.Path, records: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def train_byte_level_bpe(texts: list[str], vocab_size: int = 1024):
    """A byte-level BPE (a ``tokenizers.Tokenizer``) with <pad> 0, <s> 1, </s> 2, trained on ``texts``."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return backend


def train_tokenizer(texts: list[str], directory: pathlib.Path, vocab_size: int = 1024) -> None:
    """``train_byte_level_bpe``, saved for ``AutoTokenizer``."""
    from data_pipeline.tokenizer import HFTokenizer

    backend = train_byte_level_bpe(texts, vocab_size)
    found = {"pad": backend.token_to_id("<pad>"), "bos": backend.token_to_id("<s>"), "eos": backend.token_to_id("</s>")}
    HFTokenizer(backend, "sample tokenizer", found, {}).save(directory)


def make_sample(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, seed: int = 0,
                per_task: int = 300, refine: int = 150, vocab_size: int = 1024) -> dict[str, int]:
    """Write ``pyx_sample.jsonl.gz`` and ``pyx_r_sample.jsonl.gz`` (and a tokenizer trained on them)."""
    from data_pipeline.prompts import TASKS, render_prompt
    from data_pipeline.records import record_from_fields

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pyx, pyx_r = generate(seed, per_task, refine)
    _write_jsonl_gz(out / "pyx_sample.jsonl.gz", pyx)
    _write_jsonl_gz(out / "pyx_r_sample.jsonl.gz", pyx_r)
    if tokenizer_dir is not None:
        records = [record_from_fields(r, "sample", i) for i, r in enumerate(pyx + pyx_r)]
        texts = [render_prompt(r.task, r.instruction) for r in records] + [r.response for r in records]
        texts += [t for _, t in TASKS.values() if t]
        with tempfile.TemporaryDirectory() as tmp:
            train_tokenizer(texts, pathlib.Path(tmp), vocab_size)
            pathlib.Path(tokenizer_dir).mkdir(parents=True, exist_ok=True)
            for f in pathlib.Path(tmp).iterdir():
                os.replace(f, pathlib.Path(tokenizer_dir) / f.name)
    return {"pyx": len(pyx), "pyx_r": len(pyx_r)}
