"""A trace rendered in the three formats of the release's ablation (paper App. I; ``construction.md``).

- ``scratchpad``: the seed code, each line of the entry followed by `` # `` and its annotations: the ``def``
  line gets ``[INPUT] {"x": 1} [/INPUT]``, every visit of a line that changed variables gets
  ``[STATE] {"var": value} [/STATE]`` (repeated, in order, for each such visit: loops repeat), and the line
  that returned gets ``[OUTPUT] value [/OUTPUT]`` after its states.
- ``next_style``: the same, but states are numbered in global execution order, ``[STATE-k] ... [/STATE-k]``
  from 0, and a line with more than three states keeps the first two and the last, with `` ... `` between.
- ``concise``: one line per executed step, ``[L7] {"idx": 0} [/L7]``; the first line is the ``def`` line with
  ``[INPUT] ... [/INPUT]``, the return step carries ``[OUTPUT] ... [/OUTPUT]``.

As the release (pysnooper's ``New var``/``Modified var`` log, which its ``construct_trace.py`` reads) a state
shows only the variables the step created or changed, and tags on one line follow each other with no
separator (``[/STATE][STATE]``).  Unlike the release, values stay Python reprs (the release turned them into
JSON, so tuples became strings and ``None`` became ``null``): every value reads back with
``ast.literal_eval`` when the object allows it.  Keys are JSON strings.  A call that raised ends with
``[EXCEPTION] ValueError: msg [/EXCEPTION]`` on the line it escaped from (the release kept no such traces).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from data_pipeline.builder.coverage import analyze
from data_pipeline.builder.trace import canonical_repr, parse_args
from data_pipeline.builder.types import Seed, Step, Trace


def state_dict(state: dict[str, str]) -> str:
    """``{"name": repr, ...}``: JSON keys, Python repr values."""
    return "{" + ", ".join(f"{json.dumps(name)}: {text}" for name, text in state.items()) + "}"


def input_state(seed: Seed, trace: Trace) -> dict[str, str]:
    """The call's arguments by parameter name (canonical reprs)."""
    try:
        values = parse_args(trace.args)
    except ValueError:
        return {"<args>": trace.args}
    names: list[str] = []
    rest = None
    for param in seed.params:  # ``a``, ``b``, ``*args``, ``key``, ``**kw`` (``seeds._params``)
        if param.startswith("*"):
            if param != "*" and not param.startswith("**"):
                rest = param[1:]
            break
        names.append(param)
    state = {name: canonical_repr(value) for name, value in zip(names, values)}
    if len(values) > len(names):  # the extra arguments land in *args (a tuple, as the frame shows it)
        state[rest or "<args>"] = canonical_repr(tuple(values[len(names):]))
    return state


def _changes(trace: Trace, start: dict[str, str]) -> Iterator[tuple[Step, dict[str, str]]]:
    """Each step with the variables it created or changed (``<return>``/``<exception>`` left out)."""
    before = dict(start)
    for step in trace.steps:
        now = {k: v for k, v in step.state.items() if not k.startswith("<")}
        yield step, {k: v for k, v in now.items() if before.get(k) != v}
        before = now


def _def_line(seed: Seed) -> int:
    try:
        return analyze(seed.code, seed.entry).def_line
    except ValueError:
        for number, text in enumerate(seed.code.splitlines(), 1):
            if text.lstrip().startswith(("def " + seed.entry, "async def " + seed.entry)):
                return number
        return 1


def _ending(trace: Trace, step: Step, last: bool) -> str:
    if step.event == "return":
        return f"[OUTPUT] {trace.output if trace.output is not None else step.state.get('<return>', '')} [/OUTPUT]"
    if last and step.event == "exception" and trace.raised is not None:
        return f"[EXCEPTION] {trace.raised} [/EXCEPTION]"
    return ""


def _annotated(seed: Seed, trace: Trace, numbered: bool) -> str:
    tags: dict[int, list[str]] = {}
    endings: dict[int, list[str]] = {}
    order = 0
    steps = list(_changes(trace, input_state(seed, trace)))
    for k, (step, changed) in enumerate(steps):
        if changed:
            if numbered:
                tags.setdefault(step.line, []).append(f"[STATE-{order}] {state_dict(changed)} [/STATE-{order}]")
                order += 1
            else:
                tags.setdefault(step.line, []).append(f"[STATE] {state_dict(changed)} [/STATE]")
        ending = _ending(trace, step, k == len(steps) - 1)
        if ending:
            endings.setdefault(step.line, []).append(ending)
    def_line = _def_line(seed)
    out = []
    for number, text in enumerate(seed.code.splitlines(), 1):
        if number == def_line:
            text += f" # [INPUT] {state_dict(input_state(seed, trace))} [/INPUT]"
        states = tags.get(number, [])
        if numbered and len(states) > 3:
            states = [states[0] + states[1] + " ... " + states[-1]]
        notes = "".join(states) + "".join(endings.get(number, []))
        if notes:
            text += " # " + notes
        out.append(text)
    return "\n".join(out)


def scratchpad(seed: Seed, trace: Trace) -> str:
    """The code with inline ``[INPUT]``, ``[STATE]`` (one per visit that changed something) and ``[OUTPUT]``."""
    return _annotated(seed, trace, numbered=False)


def next_style(seed: Seed, trace: Trace) -> str:
    """NExT style: ``[STATE-k]`` in global order, a line's states elided to the first two and the last."""
    return _annotated(seed, trace, numbered=True)


def concise(seed: Seed, trace: Trace) -> str:
    """One line per executed step: ``[Ln] {changed vars} [/Ln]``, input on the def line, output on the return."""
    def_line = _def_line(seed)
    out = [f"[L{def_line}] [INPUT] {state_dict(input_state(seed, trace))} [/INPUT] [/L{def_line}]"]
    steps = list(_changes(trace, input_state(seed, trace)))
    for k, (step, changed) in enumerate(steps):
        ending = _ending(trace, step, k == len(steps) - 1)
        if step.event == "exception" and not ending:
            ending = f"[EXCEPTION] {step.state.get('<exception>', '')} [/EXCEPTION]"  # raised and caught here
        body = " ".join(part for part in (state_dict(changed) if changed or not ending else "", ending) if part)
        out.append(f"[L{step.line}] {body} [/L{step.line}]")
    return "\n".join(out)
