"""REval (DREval, ICSE'25): reasoning about a program's runtime behaviour, four tasks and their consistency.

The release (``r-eval/REval`` at ``2f148b9``) has 154 programs (``DREval_data.jsonl``: 85 functions adapted from
HumanEval, ``DREval/0``-``84``, and 69 classes from ClassEval, ``DREval/85``-``153``) and, per program, up to five
inputs with their queries (``DREval_tasks.jsonl``).  It is not bundled (no licence file): ``load`` reads it from
the data dir (``reval/``, with the official prompt templates in ``reval/prompts``).

Task instances and ids (stable: release order of programs, of their ``tasks`` entries, of each entry's queries):

- ``reval-coverage`` / ``reval-state`` / ``reval-path``: one per program x input x query,
  ``DREval/{idx}/{input_idx}/{q}`` (``q``: the query's position in the entry's ``task`` list); 3,152 each.
- ``reval-output``: one per program x input, ``DREval/{idx}/{input_idx}``; 690.

Prompts are the official templates filled as ``evaluation.py`` fills them (``str.format`` with ``code``,
``invocation``, ``invocation_abbr``, ``line``, ``codeline``, ``var``; the path task numbers the lines of a
function, not of a class; ClassEval invocations carry the test's ``setUp`` as comments, with the release's two
slightly different layouts).  Answers are parsed as the official ``_postprocess`` does (``[ANSWER]`` tags, CoT
needs ``[/THOUGHT]``), with ``ast.literal_eval`` where it calls ``eval``.

Ground truth is recomputed by tracing each program in the sandbox with the official semantics
(``dynamics.py``): ``sys.settrace`` on every frame of the program's code (helpers, methods, recursion,
comprehensions; not the test code), one state per run of consecutive events on one line, the locals of each
state deep-copied at its first ``line`` event.  Coverage: the line is in the trace.  Path: the lines of the
states that follow the line's states (``-1``: the trace ends there, or the line never runs).  State: the value
of the queried name in the state *after* each state of the line (``Nil`` when the line never runs or the name
is not there); a ``value; type`` answer is right when its type is one of the values' types and its value equals
one of them (floats within 1e-6).  Values leave the sandbox as plain data (``sandbox.codec``); a value that is not
plain data (an instance of a program's class, say) cannot be matched, as the official parser cannot build one.

Output prediction: the official scorer ``exec``s the model's completed test code.  Here the answer must be the
task's test code with each ``??`` replaced by an expression (compared as syntax trees: nothing else may change)
and each such expression must be pure (literals, operators, a few builtins: ``cruxeval.check_lambda``); the
completed test then runs in the sandbox as the official scorer runs it (function: ``exec`` of the asserts after
the program; class: the answer becomes a method of the test class, ``assert`` -> ``self.assert``, after
``setUp``).  So the sandboxed process runs only release code and pure expressions, and its pass/fail report can
be trusted.  The official penalties (``assert True``/``assert False``, fewer asserts than the question) apply.

Incremental Consistency (``incremental_consistency``; ``evaluation.py``, class ``Consistency``): per coverage
query, the four answers (coverage, state, path of that query, output of its input) score 1 if all are right,
0.5 if only output is wrong, 0.25 if only coverage and state are right, 0.125 if only coverage is right, else 0;
IC = 100 x mean.
"""

from __future__ import annotations

import ast
import builtins
import functools
import inspect
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.builder.trace import _CANON
from eval.benchmarks import Benchmark, DataError, Extracted, Problem, data_file, iter_jsonl
from eval.benchmarks.cruxeval import LAMBDA_NODES
from sandbox import Job, Sandbox
from sandbox.drivers import LAMBDA_BUILTINS, WRITE_ONLY
from sandbox.function_tests import TestResult, Verdict

TASKS = ("coverage", "state", "path", "output")
MODES = ("direct", "cot")
HUMANEVAL_END = 84          # DREval/0..84: functions; 85..153: classes (``dataset.DREval``)
TRACE_TIMEOUT_S = 10.0      # per input (the release allows 120 s)
OUTPUT_TIMEOUT_S = 5.0
HOLE = "__reval_hole__"
ERROR = "ERROR"

# ---- the sandboxed programs --------------------------------------------------------------------------------

_COMMON = WRITE_ONLY + r'''
import re as _re
import sys as _sys

MARK = "<internals>"


def _load(P):
    ns = {}
    exec(compile(P["code"], MARK, "exec"), ns)
    if P["kind"] == "function":
        return ns, None
    import unittest
    exec(compile(P["test"], "<reval-test>", "exec"), ns)
    classes = []
    for k, v in list(ns.items()):
        if isinstance(v, type) and _re.match(P["entry"] + "Test.*", k) is not None and issubclass(v, unittest.TestCase):
            classes.append(v)
    tests = []
    for cls in classes:
        names = [k for k in cls.__dict__ if k.startswith("test")]
        tests.append((cls, cls.__dict__[names[0]] if names else None))
    return ns, tests


def _args(source, ns):
    import ast
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return eval(source, ns)
'''

TRACE_DRIVER = _CANON + _COMMON + r'''
import itertools as _itertools
from copy import deepcopy as _deepcopy
from collections.abc import Iterator as _Iterator, Generator as _Generator

_SKIP = ("module", "function", "builtin_function_or_method")


def _run_traced(call):
    states = []  # [line (1-based), locals]

    def add(line, loc):
        if not states or states[-1][0] != line:
            states.append([line, {}])
        if loc is not None:
            states[-1][1] = loc

    def local(frame, event, arg):
        if event == "line":
            loc = {}
            for k, v in frame.f_locals.items():
                if v.__class__.__name__ in _SKIP or isinstance(v, (_Iterator, _Generator)):
                    continue
                loc[k] = _deepcopy(v)
            add(frame.f_lineno, loc)
        elif event in ("return", "exception"):
            add(frame.f_lineno, None)

    def start(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == MARK:
            return local
        return None

    out, error = None, None
    _sys.settrace(start)
    try:
        out = call()
    except BaseException as e:  # noqa: BLE001
        error = describe(e)
    finally:
        _sys.settrace(None)
    return states, out, error


_NIL = object()


def _after(states, line):
    res = []
    for i, s in enumerate(states):
        if s[0] == line:
            res.append(states[i + 1] if i + 1 < len(states) else s)
    return res


def _node(node, states, line):
    import ast
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, ast.Name):
        vals = [s[1][node.id] for s in _after(states, line) if node.id in s[1]]
        return vals or _NIL
    if isinstance(node, ast.Attribute):
        objs = _node(node.value, states, line)
        if objs is _NIL:
            return _NIL
        res = [getattr(o, node.attr) for o in objs if hasattr(o, node.attr)]
        return res or _NIL
    if isinstance(node, ast.Subscript):
        arr, idx = _node(node.value, states, line), _node(node.slice, states, line)
        if arr is _NIL or idx is _NIL:
            return _NIL
        res = []
        for a, i in _itertools.product(arr, idx):
            try:
                res.append(a[i])
            except (TypeError, KeyError, IndexError):
                pass
        return res or _NIL
    if isinstance(node, ast.Tuple):
        elts = [_node(n, states, line) for n in node.elts]
        if any(e is _NIL for e in elts):
            return _NIL
        return list(_itertools.product(*elts))
    raise ValueError("unsupported name")


def _value(v):
    t = type(v)
    try:
        rec = result_record(v)
        ok, tagged = rec[0] == "value", (rec[1] if rec[0] == "value" else None)
    except BaseException:  # noqa: BLE001
        ok, tagged = False, None
    return [getattr(t, "__module__", "") or "", t.__qualname__, ok, tagged, _canon(v, 300)[0]]


def _query(states, line, var):
    import ast
    if not any(s[0] == line for s in states):
        return None
    try:
        tree = ast.parse(var)
        vals = _node(tree.body[0].value, states, line)
    except BaseException:  # noqa: BLE001
        return None
    if vals is _NIL:
        return None
    return [_value(v) for v in vals]


def _main(P):
    _sys.stdout = _sys.stderr = _sys.stdin = _WriteOnly()
    try:
        ns, tests = _load(P)
    except BaseException as e:  # noqa: BLE001
        emit(["load_error", describe(e)])
        return
    emit(["loaded"])
    for item in P["items"]:
        if P["kind"] == "function":
            fn = ns[P["entry"]]
            try:
                args = _args(item["input"], ns)
            except BaseException as e:  # noqa: BLE001
                emit(["bad_input", describe(e)])
                continue
            states, out, error = _run_traced(lambda: fn(*args))
        else:
            if item["input_idx"] >= len(tests) or tests[item["input_idx"]][1] is None:
                emit(["bad_input", "no test method for input %d" % item["input_idx"]])
                continue
            cls, method = tests[item["input_idx"]]
            try:
                obj = cls()
                obj.setUp()
            except BaseException as e:  # noqa: BLE001
                emit(["bad_input", "setUp raised " + describe(e)])
                continue
            states, out, error = _run_traced(lambda: method(obj))
            out = None
        lines = [s[0] for s in states]
        queried = sorted({q[0] for q in item["queries"]})
        nexts = []
        for line in queried:
            if line not in lines:
                nexts.append([line, [-1]])
                continue
            nexts.append([line, sorted({lines[i + 1] if i + 1 < len(lines) else -1
                                        for i, x in enumerate(lines) if x == line})])
        values = [_query(states, line, var) for line, var in item["queries"]]
        try:
            rec = result_record(out)
            output = rec[1] if rec[0] == "value" else None
        except BaseException:  # noqa: BLE001
            output = None
        emit_tagged(["trace", error, sorted(set(lines)), nexts, values, output, _canon(out, 300)[0]])


_main(PAYLOAD)
'''

OUTPUT_DRIVER = _COMMON + r'''

def _main(P):
    _sys.stdout = _sys.stderr = _sys.stdin = _WriteOnly()
    try:
        ns, tests = _load(P)
    except BaseException as e:  # noqa: BLE001
        emit(["error", "loading the program raised " + describe(e)])
        return
    try:
        if P["kind"] == "function":
            exec(compile(P["answer"], "<answer>", "exec"), ns)
        else:
            cls = tests[P["input_idx"]][0]
            exec(compile(P["answer"], "<answer>", "exec"), ns)
            fn = ns["dreval_output_pred"]
            obj = cls()
            obj.setUp()
            fn(obj)
    except BaseException as e:  # noqa: BLE001
        emit(["failed", describe(e)])
        return
    emit(["passed"])


_main(PAYLOAD)
'''


# ---- loading -----------------------------------------------------------------------------------------------

def _read_lines(path: Path, keys: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, record) of a JSON Lines file; a bad line or a missing key is an error naming file:line."""
    out = []
    for lineno, rec in iter_jsonl(path):
        missing = [k for k in keys if k not in rec]
        if missing:
            raise DataError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
        out.append((lineno, rec))
    return out


@functools.lru_cache(maxsize=256)
def _setup_source(test_code: str, cls_name: str, input_idx: int) -> str | None:
    """``inspect.getsource`` of the ``setUp`` of the ``input_idx``-th test class (None: it has none of its own,
    so the release finds ``unittest.TestCase.setUp`` and shows no setup)."""
    tree = ast.parse(test_code)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    tests = [n for n in classes.values() if re.match(f"{cls_name}Test.*", n.name)]
    if input_idx >= len(tests):
        return None
    lines = test_code.splitlines(keepends=True)
    node: ast.ClassDef | None = tests[input_idx]
    seen = set()
    while node is not None and node.name not in seen:
        seen.add(node.name)
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name == "setUp":
                start = min([item.lineno] + [d.lineno for d in item.decorator_list])
                return "".join(inspect.getblock(lines[start - 1:]))
        bases = [b.id for b in node.bases if isinstance(b, ast.Name) and b.id in classes]
        node = classes[bases[0]] if bases else None
    return None


def _setup_comment(setup: str | None, first_prefixed: bool) -> str:
    """The release's setup block: ``'\\n# setup code executed previously\\n' + '\\n# '.join(lines[1:])``
    (coverage, state) or with ``'# '`` before the first line too (path, output)."""
    if setup is None:
        return ""
    text = ("\n# setup code executed previously\n" + ("# " if first_prefixed else "")
            + "\n# ".join(setup.split("\n")[1:]))
    return "" if "Hook method for setting up the test fixture" in text else text


def _numbered(code: str) -> str:
    return "".join(f"{i + 1}\t{line}\n" for i, line in enumerate(code.split("\n")))


class REval(Benchmark):
    stop = ("[/ANSWER]",)

    def __init__(self, name: str, mode: str = "direct"):
        task = name.removeprefix("reval-")
        if task not in TASKS:
            raise DataError(f"unknown REval task {name!r}; expected one of "
                            f"{', '.join('reval-' + t for t in TASKS)}")
        if mode not in MODES:
            raise DataError(f"--mode {mode!r} for {name}: REval has the prompt modes {', '.join(MODES)}")
        self.name, self.task, self.mode = name, task, mode
        self._truth: dict[int, dict[int, dict]] = {}   # idx -> input_idx -> trace summary

    # -- problems --

    def load(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[Problem]:
        try:
            path = data_file(self.name, data_dir)
        except DataError as e:
            raise DataError(f"{e} (REval is not bundled with the package: it has no licence file)") from None
        folder = path.parent
        tasks_path = folder / "DREval_tasks.jsonl"
        prompt_path = folder / "prompts" / f"{self.mode}_{self.task}.txt"
        for p in (tasks_path, prompt_path):
            if not p.is_file():
                raise DataError(f"{self.name}: data file {p} not found (REval is not bundled with the package: "
                                f"pass --data-dir DIR with reval/ laid out as in shared/data)")
        template = prompt_path.read_text(encoding="utf-8")
        programs = _read_lines(path, ("task_id", "entry_point", "code", "inputs", "outputs", "test"))
        entries = _read_lines(tasks_path, ("task_id", "idx", "tasks"))
        by_id = {rec["task_id"]: (lineno, rec) for lineno, rec in programs}
        problems: list[Problem] = []
        for lineno, entry in entries:
            where = f"{tasks_path}:{lineno}"
            if entry["task_id"] not in by_id:
                raise DataError(f"{where}: {entry['task_id']!r} is not in {path.name}")
            plineno, program = by_id[entry["task_id"]]
            idx = entry["idx"]
            if not isinstance(idx, int) or f"DREval/{idx}" != entry["task_id"]:
                raise DataError(f"{where}: idx {idx!r} does not match task_id {entry['task_id']!r}")
            kind = "function" if idx <= HUMANEVAL_END else "class"
            if kind == "class" and not isinstance(program["test"], str):
                raise DataError(f"{path}:{plineno}: a ClassEval program needs its 'test' code")
            for pair in entry["tasks"]:
                try:
                    input_idx, queries, output_pred = pair["input_idx"], pair["task"], pair["output_pred"]
                    query_list = [(int(q["lineno"]), str(q["var"])) for q in queries]
                    source = program["inputs"][input_idx]
                except (KeyError, TypeError, ValueError, IndexError):
                    raise DataError(f"{where}: malformed task entry {str(pair)[:120]}") from None
                base = {"idx": idx, "program_id": entry["task_id"], "kind": kind, "input_idx": input_idx,
                        "entry_point": program["entry_point"], "code": program["code"], "test": program["test"],
                        "input": source, "output_pred": output_pred, "queries": query_list,
                        "output": (program["outputs"][input_idx] if kind == "function"
                                   and input_idx < len(program["outputs"]) else None)}
                if self.task == "output":
                    prompt = self._output_prompt(template, base)
                    problems.append(Problem(f"DREval/{idx}/{input_idx}", prompt, base))
                    continue
                for q, (line, var) in enumerate(query_list):
                    record = {**base, "query_idx": q, "lineno": line, "var": var}
                    problems.append(Problem(f"DREval/{idx}/{input_idx}/{q}",
                                            self._query_prompt(template, record), record))
        return problems[:limit] if limit is not None else problems

    def _query_prompt(self, template: str, r: dict) -> str:
        code = r["code"]
        codelines = code.split("\n")
        if not 1 <= r["lineno"] <= len(codelines):
            raise DataError(f"{r['program_id']}: query line {r['lineno']} is outside the program")
        codeline = codelines[r["lineno"] - 1]
        if r["kind"] == "function":
            invocation = f"{r['entry_point']}{r['input'][:-2]})"
            abbr = invocation
            if self.task == "path":
                code = _numbered(code)
        else:
            setup = _setup_source(r["test"], r["entry_point"], r["input_idx"])
            invocation = _setup_comment(setup, self.task == "path") + "\n" + r["input"].rstrip()
            abbr = "the above test code"
        kwargs = {"code": code, "invocation": invocation, "invocation_abbr": abbr, "line": r["lineno"],
                  "codeline": codeline}
        if self.task == "state":
            kwargs["var"] = r["var"]
        return template.format(**kwargs)

    def _output_prompt(self, template: str, r: dict) -> str:
        if r["kind"] == "function":
            return template.format(code=r["code"], invocation="\n" + r["output_pred"])
        setup = _setup_source(r["test"], r["entry_point"], r["input_idx"])
        prelude = "\n# Test code starts here. Only write the completed test code in your answer.\n"
        return template.format(code=r["code"], invocation=_setup_comment(setup, True) + prelude + r["output_pred"])

    # -- answers --

    def extract(self, problem: Problem, raw: str) -> Extracted:
        return Extracted(postprocess(self.task, self.mode, raw))

    def description(self, problem: Problem) -> str:
        return problem.record["code"]

    # -- ground truth --

    def ground_truth(self, sandbox: Sandbox, problems: Sequence[Problem]) -> None:
        """Trace every program the problems need (once per benchmark object); results in ``self._truth``."""
        wanted: dict[int, dict[int, dict]] = {}
        for p in problems:
            r = p.record
            if r["idx"] in self._truth:
                continue
            wanted.setdefault(r["idx"], {})[r["input_idx"]] = r
        if not wanted:
            return
        jobs, order = [], []
        for idx, inputs in wanted.items():
            first = next(iter(inputs.values()))
            items = [{"input_idx": i, "input": r["input"], "queries": [list(q) for q in r["queries"]]}
                     for i, r in sorted(inputs.items())]
            payload = {"kind": first["kind"], "code": first["code"], "test": first["test"],
                       "entry": first["entry_point"], "items": items}
            n = len(items)
            jobs.append(Job(TRACE_DRIVER, payload=payload, timeout_s=TRACE_TIMEOUT_S * (n + 1) + 5,
                            deadlines=[TRACE_TIMEOUT_S * 2] + [TRACE_TIMEOUT_S] * n))
            order.append((idx, items))
        for (idx, items), outcome in zip(order, sandbox.map(jobs)):
            self._truth[idx] = _read_trace(idx, items, outcome)

    def truth(self, problem: Problem) -> dict:
        """The trace summary of the problem's program on its input (``ground_truth`` must have run)."""
        return self._truth[problem.record["idx"]][problem.record["input_idx"]]

    def gold(self, problem: Problem) -> str | None:
        """A right answer as a model would write it (None: no answer can be right, e.g. a state that is
        an object of the program's own class)."""
        r = problem.record
        if self.task == "output":
            if r["kind"] == "function":
                return r["output_pred"].replace("??", r["output"])
            return r["input"].rstrip("\n")
        t = self.truth(problem)
        if self.task == "coverage":
            return "YES" if r["lineno"] in t["lines"] else "NO"
        if self.task == "path":
            nexts = t["next"].get(r["lineno"], [-1])
            if -1 in nexts:
                return "-1"
            return r["code"].split("\n")[nexts[0] - 1].strip()
        values = t["values"][r["query_idx"]]
        if values is None:
            return "Nil"
        for module, qual, value, text in values:
            if _type_key(module, qual) is not None and value is not _UNPLAIN:
                if (module, qual) == ("numpy", "ndarray"):
                    text = repr(value.tolist())  # the official parser builds np.array(value)
                return f"{text}; {qual if module == 'builtins' else module + '.' + qual}"
        return None

    def verdicts(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]],
                 progress: Callable[[float], None] | None = None) -> list[dict[str, Verdict]]:
        self.ground_truth(sandbox, [p for p, _ in items])
        if self.task == "output":
            out = self._outputs(sandbox, items)
        else:
            out = [self._judge(problem, extracted.text) for problem, extracted in items]
        if progress is not None:
            for _ in items:
                progress(1.0)
        return [{"main": v} for v in out]

    def _judge(self, problem: Problem, answer: str) -> Verdict:
        r, t = problem.record, self.truth(problem)
        if t.get("error"):
            return Verdict("error", f"the program did not run on this input: {t['error']}", 0,
                           [TestResult("error", t["error"])])
        if self.task == "coverage":
            expected = r["lineno"] in t["lines"]
            given = answer == "YES"
            if given == expected:
                return _passed()
            return _failed(f"answered {'YES' if given else 'NO'}, line {r['lineno']} is "
                           f"{'' if expected else 'not '}executed")
        if self.task == "path":
            actual = t["next"].get(r["lineno"], [-1])
            lines = path_answer_lines(answer, r["code"])
            if any(a in actual for a in lines):
                return _passed()
            return _failed(f"answered line(s) {lines}, the next line is one of {actual}")
        values = t["values"][r["query_idx"]]
        why = state_mismatch(answer, values)
        return _passed() if why is None else _failed(why)

    def _outputs(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]]) -> list[Verdict]:
        verdicts: list[Verdict | None] = [None] * len(items)
        jobs, where = [], []
        for i, (problem, extracted) in enumerate(items):
            r = problem.record
            t = self.truth(problem)
            if t.get("error"):
                verdicts[i] = Verdict("error", f"the program did not run on this input: {t['error']}", 0,
                                      [TestResult("error", t["error"])])
                continue
            program, why = output_check(r, extracted.text)
            if program is None:
                verdicts[i] = _failed(why)
                continue
            payload = {"kind": r["kind"], "code": r["code"], "test": r["test"], "entry": r["entry_point"],
                       "input_idx": r["input_idx"], "answer": program}
            jobs.append(Job(OUTPUT_DRIVER, payload=payload, timeout_s=OUTPUT_TIMEOUT_S))
            where.append(i)
        for i, outcome in zip(where, sandbox.map(jobs)):
            values = outcome.values
            if values and values[0] == ["passed"]:
                verdicts[i] = _passed()
            elif values and isinstance(values[0], list) and values[0][:1] == ["failed"]:
                verdicts[i] = _failed(f"the completed test fails: {values[0][1]}")
            elif outcome.timed_out:
                verdicts[i] = Verdict("timeout", "the completed test timed out", 0, [TestResult("timeout")])
            else:
                message = str(values[0][1]) if values and isinstance(values[0], list) and len(values[0]) > 1 \
                    else outcome.describe()
                verdicts[i] = Verdict("error", message, 0, [TestResult("error", message)])
        return verdicts  # type: ignore[return-value]

    # -- reports --

    def summary_extras(self, problems: Sequence[Problem], first: Sequence[dict]) -> dict[str, Any]:
        """Coverage: the official precision, recall and F1 of YES answers (accuracy is pass@1)."""
        if self.task != "coverage":
            return {}
        by_id = {p.task_id: p for p in problems}
        tp = fp = fn = tn = 0
        for rec in first:
            p = by_id.get(rec["task_id"])
            if p is None or p.record["idx"] not in self._truth or rec.get("extracted") is None:
                continue
            actual = p.record["lineno"] in self.truth(p)["lines"]
            given = rec["extracted"] == "YES"
            tp += given and actual
            fp += given and not actual
            fn += (not given) and actual
            tn += (not given) and not actual
        if tp + fp + fn + tn == 0:
            return {}
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec_ = tp / (tp + fn) if tp + fn else 0.0
        return {"coverage": {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": prec, "recall": rec_,
                             "f1": 2 * prec * rec_ / (prec + rec_) if prec + rec_ else 0.0}}

    def read_predictions(self, path: Path, problems: Sequence[Problem]) -> dict[str, list[dict]] | None:
        """The official log (``model_generations/{task}@{model}/{time}.jsonl``): one line per program,
        ``{"task_id": "DREval/i", "generation": [{"input_idx": j, "results": [{"generated": raw, ...}, ...]}]}``
        (results in query order; one for output), then a metrics line.  None for any other file."""
        try:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            head = json.loads(first)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not (isinstance(head, dict) and "generation" in head and "task_id" in head):
            return None
        out: dict[str, list[dict]] = {}
        for lineno, rec in iter_jsonl(path):
            if "generation" not in rec:
                continue  # the closing metrics line
            try:
                for gen in rec["generation"]:
                    results = gen["results"]
                    if self.task == "output":
                        out.setdefault(f"{rec['task_id']}/{gen['input_idx']}", []).append(
                            {"raw": results[0]["generated"]})
                        continue
                    for q, res in enumerate(results):
                        out.setdefault(f"{rec['task_id']}/{gen['input_idx']}/{q}", []).append(
                            {"raw": res["generated"]})
            except (KeyError, TypeError, IndexError):
                raise DataError(f"{path}:{lineno}: not an official REval generation record") from None
        wanted = {p.task_id for p in problems}
        return {k: v for k, v in out.items() if k in wanted}


# ---- parsing and judging answers (pure Python: nothing here evaluates model text) ---------------------------

def _passed() -> Verdict:
    return Verdict("passed", "", None, [TestResult("passed")])


def _failed(message: str) -> Verdict:
    return Verdict("failed", message, 0, [TestResult("failed", message)])


def _strip_tags(resp: str) -> str:
    idx = resp.find("[ANSWER]")
    if idx != -1:
        resp = resp[idx + 8:].strip()
    for tag in ("[/ANSWER]", "[/ANSWER"):
        idx = resp.find(tag)
        if idx != -1:
            resp = resp[:idx].strip()
    return resp


def postprocess(task: str, mode: str, resp: str) -> str:
    """The answer text the official ``_postprocess`` keeps: coverage ``YES``/``NO``; path one line (``-2``:
    none); state the ``value; type`` text (``ERROR``: none); output the test code (``assert False``: none)."""
    if task == "coverage":
        ans = resp.upper().strip()
        if mode == "cot" and "[/THOUGHT]" not in ans:
            return "NO"
        ans = _strip_tags(ans)[:3]
        yes, no = "YES" in ans, "NO" in ans
        return "YES" if yes and not no else "NO"
    if task == "path":
        if mode == "cot" and "[/THOUGHT]" not in resp:
            return "-2"
        ans = _strip_tags(resp).split("\n")[0].strip()
        return ans or "-2"
    if task == "state":
        if mode == "cot" and "[/THOUGHT]" not in resp:
            return ERROR
        resp = resp.replace("\u2018", "'").replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
        return _strip_tags(resp.strip())
    if mode == "cot" and "[/THOUGHT]" not in resp:
        return "assert False"
    return _strip_tags(resp)


def path_answer_lines(answer: str, code: str) -> list[int]:
    """The official mapping of a path answer to line numbers: ``-1``, else every line whose stripped text is
    the answer, else ``[-2]``."""
    if answer == "-1":
        return [-1]
    lines = [i + 1 for i, line in enumerate(code.split("\n")) if answer == line.strip()]
    return lines or [-2]


_UNPLAIN = object()
# types a "value; type" answer can name (lower-cased, as the official parser lower-cases them): the builtins
# pydoc.locate finds, and a few importable dotted names whose values the harness can build from a literal
_BUILTIN_TYPES = {name: obj for name, obj in vars(builtins).items() if isinstance(obj, type)
                  and name.islower() and not issubclass(obj, BaseException)}


def _type_key(module: str, qual: str) -> str | None:
    """The lower-case name an answer must give for a value of this type (None: no answer can name it)."""
    if module == "builtins":
        return qual if qual in _BUILTIN_TYPES or qual == "NoneType" else None
    name = f"{module}.{qual}"
    return name if name == name.lower() and name in ("numpy.ndarray",) else None


def parse_state(answer: str) -> Any:
    """``None`` for Nil, ``ERROR``, or ``(value, type key)`` from a ``value; type`` answer, as the official
    ``State._postprocess`` reads it (``ast.literal_eval`` where it calls ``eval``)."""
    if answer == ERROR:
        return ERROR
    if answer.capitalize() == "Nil" or answer == "[Nil]":
        return None
    semicolon = answer.rfind(";")
    if semicolon == -1:
        return ERROR
    value, type_ = answer[:semicolon].strip(), answer[semicolon + 1:].strip().lower()
    if value.capitalize() == "Nil":
        return None
    m = re.match(r"<class '(.*)'>", type_)
    if m:
        type_ = m.group(1)
    m = re.match(r"(.*)\[.*\]", type_)
    if m:
        type_ = m.group(1)
    type_ = {"string": "str", "integer": "int"}.get(type_, type_)
    if "," in type_ or "tuple" in type_:
        type_ = "tuple"
    if type_ == "str":
        try:
            return _literal(value), "str"
        except ValueError:
            return value, "str"
    if type_ in ("numpy.ndarray", "np.ndarray"):
        try:
            return _literal(value), "numpy.ndarray"
        except ValueError:
            return ERROR
    if value == "None" or type_ == "nonetype":
        return None, "NoneType"
    if type_ not in _BUILTIN_TYPES:
        return ERROR  # pydoc.locate finds no type, or one the harness does not build from text
    try:
        parsed = _literal(value)
    except ValueError:
        return ERROR
    return parsed, type_


_CONSTRUCTORS = {name: _BUILTIN_TYPES[name] for name in ("bytearray", "bytes", "set", "frozenset", "tuple", "list",
                                                          "dict", "complex", "float", "int", "str", "bool")}


def _literal(text: str) -> Any:
    """``ast.literal_eval``, plus a builtin container written as a call on a literal (``bytearray(b'h')``,
    ``set()``): what the official ``eval`` reads in ``value; type`` answers that a literal cannot spell."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CONSTRUCTORS \
                and not node.keywords and len(node.args) <= 1:
            args = [ast.literal_eval(a) for a in node.args]
            if node.func.id in ("bytes", "bytearray") and any(isinstance(a, int) for a in args):
                raise ValueError(text)  # the size form: an answer must not make the harness allocate at will
            return _CONSTRUCTORS[node.func.id](*args)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
        pass
    raise ValueError(text)


def state_mismatch(answer: str, values: list | None) -> str | None:
    """Why a state answer is wrong (None: right).  ``values``: the traced ``[module, qualname, value, repr]``s,
    None for Nil."""
    parsed = parse_state(answer)
    if parsed == ERROR:
        return f"the answer {answer[:80]!r} is not a 'value; type' pair the official parser reads"
    if parsed is None or values is None:
        if parsed is None and values is None:
            return None
        return "answered Nil, the line runs and sets the name" if parsed is None else \
            "the line does not run (or the name is not set), the answer is Nil"
    value, key = parsed
    keys = [_type_key(m, q) for m, q, _, _ in values]
    if key not in keys:
        return f"type {key} is not the type of any value ({', '.join(sorted({q for _, q, _, _ in values}))})"
    if key == "numpy.ndarray":
        return _array_mismatch(value, values)
    if type(value).__name__ != key:  # the official check: the value is of the type it names
        return f"the value {value!r:.80} is not a {key}"
    plain = [v for _, _, v, _ in values if v is not _UNPLAIN]
    if key == "float":
        for a in plain:
            try:
                if abs(value - a) < 1e-6:
                    return None
            except (TypeError, ValueError, OverflowError):
                continue
        return f"{value!r} is not within 1e-6 of any value ({', '.join(t for _, _, _, t in values)[:200]})"
    try:
        if value in plain:
            return None
    except Exception:  # noqa: BLE001 - e.g. comparing with arrays
        pass
    return f"wrong value: {value!r:.80}, expected one of {', '.join(t for _, _, _, t in values)[:200]}"


def _array_mismatch(value: Any, values: list) -> str | None:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return "numpy is not installed"
    try:
        arr = np.array(value)
    except Exception:  # noqa: BLE001
        return "the value is not an array literal"
    for module, qual, v, _ in values:
        if (module, qual) == ("numpy", "ndarray") and v is not _UNPLAIN:
            try:
                if np.shape(v) == arr.shape and np.allclose(arr, v):
                    return None
            except Exception:  # noqa: BLE001
                continue
    return "wrong array value"


def penalty(code: str, question: str) -> bool:
    """The official ``penalty_pattern``: an assert on a constant, or fewer asserts than the question."""
    if any(p in code for p in ("assertTrue(True)", "assertFalse(False)", "assert True", "assert False")):
        return True
    return code.count("assert") < question.count("assert")


def pad_answer(answer: str, question: str) -> str:
    """The official ``_postprocess_phase2``: a shorter answer gets the question's first lines put before it."""
    in_lines, res_lines = question.strip().split("\n"), answer.strip().split("\n")
    if len(res_lines) >= len(in_lines):
        return answer
    return "\n".join(in_lines[:len(in_lines) - len(res_lines)] + res_lines)


def _same_shape(template: ast.AST, answer: ast.AST, holes: list[ast.expr]) -> bool:
    if isinstance(template, ast.Name) and template.id == HOLE:
        if not isinstance(answer, ast.expr):
            return False
        holes.append(answer)
        return True
    if type(template) is not type(answer):
        return False
    for name, t_value in ast.iter_fields(template):
        a_value = getattr(answer, name, None)
        if isinstance(t_value, list):
            if not isinstance(a_value, list) or len(t_value) != len(a_value):
                return False
            if not all(_same_shape(t, a, holes) if isinstance(t, ast.AST) else t == a
                       for t, a in zip(t_value, a_value)):
                return False
        elif isinstance(t_value, ast.AST):
            if not isinstance(a_value, ast.AST) or not _same_shape(t_value, a_value, holes):
                return False
        elif t_value != a_value:
            return False
    return True


def output_check(record: dict, answer: str) -> tuple[str | None, str]:
    """(program, "") for an answer the sandbox may run, or (None, why it fails)."""
    question = record["output_pred"]
    answer = pad_answer(answer, question)
    if penalty(answer, question):
        return None, "the answer asserts a constant or has fewer asserts than the question (official penalty)"
    try:
        template = ast.parse(question.replace("??", HOLE))
    except SyntaxError:
        return None, "the question does not parse"
    try:
        tree = ast.parse(answer)
    except SyntaxError as e:
        return None, f"the answer is not valid Python ({e.msg})"
    holes: list[ast.expr] = []
    if not _same_shape(template, tree, holes):
        return None, "the answer changes the test code beyond replacing the ?? marks"
    allowed = _hole_names(record, template)
    for hole in holes:
        why = _impure(hole, allowed)
        if why:
            return None, f"an answer in place of ?? is not allowed: {why}"
    if record["kind"] == "function":
        return answer, ""
    return _as_method(answer), ""


SAFE_MODULES = ("math", "datetime", "collections", "itertools", "string", "decimal", "fractions", "re", "numpy",
                "np", "statistics", "time", "calendar", "json", "copy", "heapq", "bisect", "functools", "operator")


def _hole_names(record: dict, template: ast.AST) -> set[str]:
    """The names an answer in place of ``??`` may use: the test's own variables, ``self`` (class tasks), the
    program's top-level classes and functions, a few pure builtins and harmless modules the program imports."""
    names = set(LAMBDA_BUILTINS) | {record["entry_point"]}
    names |= {n.id for n in ast.walk(template) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    if record["kind"] == "class":
        names.add("self")
    try:
        program = ast.parse(record["code"])
    except SyntaxError:
        return names
    for node in program.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                module = alias.name if isinstance(node, ast.Import) else (node.module or "")
                if module.split(".")[0] in SAFE_MODULES and bound in SAFE_MODULES + tuple(
                        a.asname or a.name for a in node.names if isinstance(node, ast.ImportFrom)):
                    names.add(bound)
    return names - {HOLE}


_FRAME_ATTRS = frozenset(("gi_frame", "cr_frame", "ag_frame", "gi_code", "cr_code", "ag_code", "gi_yieldfrom",
                          "cr_await", "ag_await"))


def _impure(node: ast.AST, allowed: set[str]) -> str | None:
    """Why an expression may not stand in place of ``??`` (None: it may): only ``cruxeval.LAMBDA_NODES``
    (no lambdas, comprehensions or walrus), the ``allowed`` names, no dunder attribute and none that leads to
    frames or code (``gi_frame``, ``f_globals``, ...)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Lambda) or not isinstance(n, LAMBDA_NODES):
            return f"{type(n).__name__} is not allowed"
        if isinstance(n, ast.Name) and (n.id not in allowed or n.id.startswith("_")):
            return f"the name {n.id!r} is not available"
        if isinstance(n, ast.Attribute) and (n.attr.startswith("__") or n.attr in _FRAME_ATTRS
                                             or n.attr.startswith(("f_", "co_", "tb_"))):
            return f"the attribute {n.attr!r} is not available"
    return None


def _as_method(generated: str) -> str:
    """The official ``create_from_answer``: a tab-indented method body (not inside triple-quoted strings),
    every ``assert`` turned into ``self.assert``."""
    code = "def dreval_output_pred(self):"
    in_string = False
    for line in generated.split("\n"):
        code += f"\n{line}" if in_string else f"\n\t{line}"
        if "'''" in line or '"""' in line:
            in_string = not in_string
    return code.replace("assert", "self.assert")


# ---- reading the sandbox's trace records -------------------------------------------------------------------

def _read_trace(idx: int, items: list[dict], outcome: Any) -> dict[int, dict]:
    values = outcome.values
    result: dict[int, dict] = {}
    if not values or values[0] != ["loaded"]:
        why = (values[0][1] if values and isinstance(values[0], list) and len(values[0]) > 1
               else outcome.describe())
        for item in items:
            result[item["input_idx"]] = {"error": f"loading DREval/{idx} failed: {why}"}
        return result
    for item, rec in zip(items, values[1:]):
        if not isinstance(rec, list) or not rec or rec[0] != "trace":
            result[item["input_idx"]] = {"error": str(rec[1]) if isinstance(rec, list) and len(rec) > 1
                                         else "malformed record"}
            continue
        _, error, lines, nexts, vals, output, output_repr = rec
        states = []
        for v in vals:
            if v is None:
                states.append(None)
                continue
            states.append([(m, q, value if ok else _UNPLAIN, text) for m, q, ok, value, text in v])
        result[item["input_idx"]] = {"error": error, "lines": set(lines), "next": {a: b for a, b in nexts},
                                     "values": states, "output": output, "output_repr": output_repr}
    for item in items[len(values) - 1:]:
        result[item["input_idx"]] = {"error": f"the tracer stopped: {outcome.describe()}"}
    return result


# ---- Incremental Consistency -------------------------------------------------------------------------------

IC_WEIGHTS = {(True, True, True, True): 1.0, (True, True, True, False): 0.5, (True, True, False, False): 0.25,
              (True, False, False, False): 0.125}


def incremental_consistency(records: dict[str, list[dict]], problems: dict[str, list[Problem]]) -> dict:
    """REval's Incremental Consistency (``evaluation.py``, ``Consistency.run``) from the four tasks' round-0
    records.

    Each coverage query ``DREval/i/j/q`` is one item; its four outcomes are coverage, state and path of
    ``DREval/i/j/q`` and output of ``DREval/i/j`` (one output answer counts for every query of its input).
    An item scores 1 (all right), 0.5 (coverage, state, path right; output wrong), 0.25 (coverage and state
    right; path and output wrong), 0.125 (only coverage right), else 0 (any other pattern, e.g. state right
    after a wrong coverage).  IC = 100 x mean over items, per sample index; ``ic`` is the mean over the sample
    indices that every task has.  Items lacking a record in some task are left out and counted in
    ``missing``."""
    names = ("reval-coverage", "reval-state", "reval-path", "reval-output")
    absent = [n for n in names if n not in records or n not in problems]
    if absent:
        raise ValueError(f"incremental_consistency needs all four REval tasks; missing {', '.join(absent)}")
    passed: dict[str, dict[tuple[str, int], bool]] = {
        n: {(r["task_id"], r["sample"]): r["status"] == "passed" for r in records[n]} for n in names}
    samples = sorted(set.intersection(*({s for _, s in passed[n]} for n in names))) if all(passed.values()) \
        else []
    items = [p.task_id for p in problems["reval-coverage"]]
    for n in ("reval-state", "reval-path"):
        have = {p.task_id for p in problems[n]}
        items = [t for t in items if t in have]
    outputs = {p.task_id for p in problems["reval-output"]}
    items = [t for t in items if t.rsplit("/", 1)[0] in outputs]
    per_sample, counts, missing = [], {"1": 0, "0.5": 0, "0.25": 0, "0.125": 0, "0": 0}, 0
    n_items = 0
    for s in samples:
        score, n = 0.0, 0
        for t in items:
            keys = [(t, s)] * 3 + [(t.rsplit("/", 1)[0], s)]
            if not all(k in passed[name] for k, name in zip(keys, names)):
                missing += 1
                continue
            pattern = tuple(passed[name][k] for k, name in zip(keys, names))
            weight = IC_WEIGHTS.get(pattern, 0.0)  # type: ignore[arg-type]
            counts[f"{weight:g}"] += 1
            score += weight
            n += 1
        per_sample.append(100 * score / n if n else 0.0)
        n_items = max(n_items, n)
    return {"ic": sum(per_sample) / len(per_sample) if per_sample else 0.0, "ic_per_sample": per_sample,
            "items": n_items, "samples": len(samples), "missing": missing, "counts": counts}
