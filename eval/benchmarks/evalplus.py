"""EvalPlus sets: ``humaneval`` / ``humaneval+`` (HumanEval+ v0.1.10), ``mbpp`` / ``mbpp+`` (MBPP+ v0.2.0).

Each sample runs a ``base`` part (the original tests' inputs) and, for the ``+`` sets, a ``plus`` part
(EvalPlus's extra inputs); ``humaneval`` and ``mbpp`` are the base parts alone, the paper's "HumanEval" and
"MBPP" numbers.  No ``check()`` function ever runs next to candidate code: the candidate's process only
calls its function on the inputs and sends the outputs back as plain data (``sandbox.function_tests``);
they are compared here with EvalPlus 0.3.1's rule (``evalplus/eval/__init__.py``): expected outputs come
from the canonical solution on the same inputs (a trusted process, cached); per-input time limit max(1 s,
4 x ground-truth time); ``==``, except that float-valued expectations (or a task ``atol``) use
``np.allclose(rtol=1e-7, atol)``; special oracles for HumanEval/32 and a few MBPP tasks.  Differences from
EvalPlus are listed in docs/eval.md (a correct ``find_zero`` passes here; 0.3.1 always fails it).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from copy import deepcopy
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from eval.benchmarks import CodeBenchmark, DataError, Extracted, Problem, data_file, read_jsonl, require_keys
from eval.prompts import humaneval_prompt, mbpp_prompt
from sandbox import Job, Sandbox, codec, function_tests
from sandbox.drivers import NOT_NONE
from sandbox.function_tests import Compare, Digest, Program, Verdict

MIN_TIME_LIMIT_S = 1.0
GT_TIME_LIMIT_FACTOR = 4.0
ENCODE_SLACK_S = 0.5  # added to 4 x the ground truth's time to send a value like this one back
TIMEOUT_PER_TASK_S = 60.0
GROUND_TRUTH_FORMAT = 3  # bump when _ground_truth_one records something new

# MBPP tasks whose output is only checked to be (not) None, and those compared as sets (EvalPlus oracles).
MBPP_OUTPUT_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
MBPP_OUTPUT_SET_EQ = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                      "larg_nnum", "intersection_array", "find_dissimilar", "Diff")

# MBPP+ stores inputs as JSON; these tasks need tuples/sets/complex numbers back (EvalPlus
# ``mbpp_deserialize_inputs``): task number -> conversion kind.
_MBPP_INPUT_KINDS: dict[int, str] = {
    **dict.fromkeys((2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630,
                     726, 740, 744, 809), "args_to_tuples"),
    **dict.fromkeys((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780), "nested_tuples"),
    **dict.fromkeys((75, 413, 444, 753), "first_arg_rows_to_tuples"),
    **dict.fromkeys((106, 750), "second_arg_tuple"),
    115: "first_arg_sets", 124: "float_complex",
    **dict.fromkeys((250, 405, 446, 617, 720, 763, 808), "first_arg_tuple"),
    **dict.fromkeys((259, 401, 445), "nested_tuples_then_args"),
    278: "mixed_first_arg", 307: "first_arg_tuple", 722: "dict_values_tuples", 252: "complex",
    **dict.fromkeys((580, 615, 791), "all_tuples"),
}


def _all_tuples(x: Any) -> Any:
    return tuple(_all_tuples(v) for v in x) if isinstance(x, list) else x


def mbpp_deserialize_inputs(task_id: str, inputs: list) -> list:
    """Restore the Python types MBPP+'s JSON lost, for the tasks that need it."""
    kind = _MBPP_INPUT_KINDS.get(int(task_id.split("/")[-1]))
    if kind is None:
        return inputs
    if kind == "args_to_tuples":
        return [[tuple(arg) for arg in inp] for inp in inputs]
    if kind == "nested_tuples":
        return [[[tuple(row) for row in arg] for arg in inp] for inp in inputs]
    if kind == "first_arg_rows_to_tuples":
        return [[[tuple(row) for row in inp[0]]] + [inp[1]] for inp in inputs]
    if kind == "second_arg_tuple":
        return [[inp[0]] + [tuple(inp[1])] for inp in inputs]
    if kind == "first_arg_sets":
        return [[[set(item) if isinstance(item, list) and len(item) else {} for item in inp[0]]]
                for inp in inputs]
    if kind == "float_complex":
        return [(float(inp[0]), complex(inp[1])) for inp in inputs]
    if kind == "first_arg_tuple":
        return [[tuple(inp[0])] + list(inp[1:]) for inp in inputs]
    if kind == "nested_tuples_then_args":
        return [[tuple(tuple(row) for row in arg) for arg in inp] for inp in inputs]
    if kind == "mixed_first_arg":
        return [[tuple(tuple(item) if isinstance(item, list) else item for item in inp[0])] for inp in inputs]
    if kind == "dict_values_tuples":
        return [[{k: tuple(v) for k, v in inp[0].items()}] + inp[1:] for inp in inputs]
    if kind == "complex":
        return [[complex(inp[0])] for inp in inputs]
    return [_all_tuples(inp) for inp in inputs]  # all_tuples


def _short_repr(value: Any, limit: int = 2000) -> str:
    """``repr`` cut to ``limit`` characters; values Python refuses to print (huge ints) get a placeholder."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[:limit] + "..."


# ---- ground truth ------------------------------------------------------------------------------------------

def _ground_truth_one(code: str, entry_point: str, inputs_by_part: dict[str, list], not_none: bool) -> dict:
    """Run a canonical solution (trusted) on every input, recording outputs, seconds per call and seconds to
    turn each output into what a sandboxed candidate sends back (``codec.result_record``), the two steps the
    sandbox times separately."""
    env: dict[str, Any] = {}
    exec(code, env)
    fn = env[entry_point]
    result: dict[str, Any] = {}
    for part, inputs in inputs_by_part.items():
        outputs, times, encode_times = [], [], []
        for inp in inputs:
            inp = deepcopy(inp)
            start = time.perf_counter()
            out = fn(*inp)
            middle = time.perf_counter()
            codec.result_record((None if out is None else NOT_NONE) if not_none and type(out) is not bool else out)
            times.append(middle - start)
            encode_times.append(time.perf_counter() - middle)
            outputs.append(out)
        if not_none:
            outputs = [o is not None for o in outputs]
        result[part] = outputs
        result[part + "_time"] = times
        result[part + "_encode_time"] = encode_times
        result[part + "_calls_json"] = function_tests.encode_calls(inputs)  # what every candidate's job sends
    return result


def _ground_truth_worker(args: tuple) -> tuple[str, bytes | str]:
    task_id, code, entry_point, inputs, not_none = args
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    try:
        return task_id, pickle.dumps(_ground_truth_one(code, entry_point, inputs, not_none))
    except Exception as e:  # noqa: BLE001 - reported with the task id by the caller
        return task_id, f"{type(e).__name__}: {e}"


# ---- comparing outputs (in the harness, never next to the candidate) -------------------------------------------

def _poly(xs: list, x: float) -> float:
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


def _surface_area(base_edge: float, height: float) -> float:
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 4 * (base_edge * slant) / 2)


def _digit_distance(a: int, b: int) -> int:
    sa, sb = str(a), str(b)
    n = max(len(sa), len(sb))
    return sum(abs(int(x) - int(y)) for x, y in zip(sa.zfill(n), sb.zfill(n)))


def is_floats(x: Any) -> bool:
    """EvalPlus's test for a float-valued expectation (a float, or a non-empty list/tuple of floats)."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def sticky_atols(task_atol: float, expected: list) -> list[float]:
    """The tolerance EvalPlus applies at each input: the task's ``atol``, or 1e-6 from the first float-valued
    expectation on (EvalPlus sets it inside its loop and keeps it for the later inputs)."""
    atols, atol = [], task_atol
    for exp in expected:
        if atol == 0 and is_floats(exp):
            atol = 1e-6
        atols.append(atol)
    return atols


def evalplus_compare(dataset: str, entry_point: str, inputs: list, expected: list, task_atol: float):
    """EvalPlus 0.3.1's per-input rule (``evalplus/eval/__init__.py``), as a ``function_tests`` comparator:
    ``==``, the special oracles, and ``np.allclose(rtol=1e-7, atol)`` for float-valued expectations."""
    atols = sticky_atols(task_atol, expected)

    def compare(out: Any, exp: Any, i: int) -> str | None:
        inp, atol = inputs[i], atols[i]
        large = isinstance(out, Digest)
        exact = out.matches(exp) if large else out == exp
        if dataset == "mbpp":
            if entry_point == "are_equivalent":
                exact = True
            elif entry_point == "sum_div":
                exact = exact or (not large and out == 0)
            elif entry_point == "surface_Area":
                exact = exact or (not large and abs(out - _surface_area(*inp)) <= atol)
            elif entry_point == "digit_distance_nums":
                exact = exact or (not large and out == _digit_distance(*inp))
            elif entry_point in MBPP_OUTPUT_SET_EQ:
                if large:
                    return "output too large to compare as a set"
                exact = set(out) == set(exp)
            elif entry_point in MBPP_OUTPUT_NOT_NONE:
                exact = (out == exp) if isinstance(out, bool) else exp == (out is not None)
        if dataset == "humaneval" and entry_point == "find_zero":
            return None if not large and abs(_poly(*inp, out)) <= task_atol else "wrong output"
        if not exact and atol != 0:
            if large:
                return "output too large to compare within a tolerance"
            if type(out) is not type(exp):
                return "wrong output"
            if isinstance(exp, (list, tuple)) and len(out) != len(exp):
                return "wrong output"
            return None if bool(np.allclose(out, exp, rtol=1e-07, atol=atol)) else "wrong output"
        return None if exact else "wrong output"

    return compare


# ---- the refine prompt's execution trace ----------------------------------------------------------------------

# Runs the candidate on its failing input under sys.settrace and sends, per line of the candidate's code, the
# local variables after its last execution and any exception raised there (informational: no verdict).
TRACE_DRIVER = r"""
import sys
P = PAYLOAD
states, errors, budget = {}, {}, [5000]

def _short(value):
    try:
        text = repr(value)
    except BaseException:
        text = "<unprintable>"
    return text if len(text) <= 80 else text[:77] + "..."

def _snapshot(frame):
    return ", ".join(f"{k} = {_short(v)}" for k, v in frame.f_locals.items() if not k.startswith("__"))

def _tracer(frame, event, arg):
    if frame.f_code.co_filename != "<candidate>":
        return None
    last = [None]

    def local(frame, event, arg):
        budget[0] -= 1
        if budget[0] < 0:
            return None
        if last[0] is not None and event in ("line", "return"):
            states[last[0]] = _snapshot(frame)
        if event == "return" and last[0] is not None:
            states[last[0]] += f"; return {_short(arg)}"
        if event == "exception":
            errors[frame.f_lineno] = f"{arg[0].__name__}: {_short(arg[1])[:200]}"
        last[0] = frame.f_lineno if event == "line" else last[0]
        return local
    return local

env = {}
exec(compile(P["solution"], "<candidate>", "exec"), env)
fn = env[P["entry_point"]]
sys.settrace(_tracer)
try:
    fn(*P["input"])
except BaseException:
    pass
finally:
    sys.settrace(None)
emit({"states": {str(k): str(v) for k, v in states.items()}, "errors": {str(k): str(v) for k, v in errors.items()}})
"""


def annotate_trace(code: str, details: dict) -> str:
    """The buggy code with each executed line's final state (``# [STATE] ... [/STATE]``) and exceptions
    (``# [EXCEPTION] ... [/EXCEPTION]``, the release's marker) appended."""
    lines = code.split("\n")
    for key, state in details.get("states", {}).items():
        i = int(key) - 1
        if 0 <= i < len(lines) and state:
            lines[i] += f" # [STATE] {state} [/STATE]"
    for key, error in details.get("errors", {}).items():
        i = int(key) - 1
        if 0 <= i < len(lines):
            lines[i] += f" # [EXCEPTION] {error} [/EXCEPTION]"
    return "\n".join(lines)


class EvalPlus(CodeBenchmark):
    """``humaneval`` and ``mbpp`` (base inputs only: the paper's HumanEval and MBPP), ``humaneval+``, ``mbpp+``."""

    stop = ()

    def __init__(self, name: str, gt_cache_dir: str | os.PathLike | None = None):
        self.name = name
        self.dataset = "humaneval" if name.startswith("humaneval") else "mbpp"
        self.parts = ("base",) if name in ("mbpp", "humaneval") else ("base", "plus")
        self.gt_cache_dir = Path(gt_cache_dir) if gt_cache_dir else Path.home() / ".cache" / "semcoder" / "eval"
        self.ground_truth: dict[str, dict] = {}
        self._path: Path | None = None

    def load(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[Problem]:
        return self.load_file(data_file(self.name, data_dir), limit)

    def load_file(self, path: str | os.PathLike, limit: int | None = None) -> list[Problem]:
        """The problems of an EvalPlus-shaped JSON Lines file (this benchmark's dataset)."""
        self._path = path = Path(path)
        problems = [self.problem(record, f"{path}: record {i + 1}") for i, record in enumerate(read_jsonl(path))]
        return problems[:limit] if limit is not None else problems

    def problem(self, record: dict, where: str) -> Problem:
        """One release record -> a ``Problem`` with the release's prompt (``where`` names it in errors)."""
        require_keys(record, ("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
                              "plus_input", "atol"), where)
        if self.dataset == "mbpp":
            record["base_input"] = mbpp_deserialize_inputs(record["task_id"], record["base_input"])
            record["plus_input"] = mbpp_deserialize_inputs(record["task_id"], record["plus_input"])
            prompt, prefix = mbpp_prompt(record["prompt"])
        else:
            prompt, prefix = humaneval_prompt(record["prompt"])
        return Problem(record["task_id"], prompt, record, prefix)

    # -- ground truth, cached per data file ---------------------------------------------------------------
    def _cache_path(self) -> Path:
        assert self._path is not None
        digest = hashlib.md5(self._path.read_bytes()).hexdigest()
        version = f"py{sys.version_info[0]}{sys.version_info[1]}"
        parts = "+".join(self.parts)
        return self.gt_cache_dir / f"groundtruth-v{GROUND_TRUTH_FORMAT}-{self.dataset}-{parts}-{digest}-{version}.pkl"

    def prepare(self, problems: list[Problem], workers: int | None = None,
                source: str | os.PathLike | None = None) -> None:
        """Expected outputs and timings of the canonical solutions for ``problems`` (cached on disk, under the
        digest of the file they came from: ``source``, else the file ``load`` read)."""
        if source is not None:
            self._path = Path(source)
        cache = self._cache_path()
        if cache.is_file():
            with open(cache, "rb") as f:
                self.ground_truth.update(pickle.load(f))
        todo = [p for p in problems if p.task_id not in self.ground_truth]
        if not todo:
            return
        args = [(p.task_id, p.record["prompt"] + p.record["canonical_solution"], p.record["entry_point"],
                 {part: p.record[part + "_input"] for part in self.parts},
                 self.dataset == "mbpp" and p.record["entry_point"] in MBPP_OUTPUT_NOT_NONE) for p in todo]
        # Ground truth is trusted code but can be slow; a spawned pool keeps the harness responsive.
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count(), mp_context=get_context("spawn")) as pool:
            for task_id, blob in pool.map(_ground_truth_worker, args):
                if isinstance(blob, str):
                    raise DataError(f"{self._path}: {task_id}: the canonical solution fails on its own inputs "
                                    f"({blob[:300]})")
                self.ground_truth[task_id] = pickle.loads(blob)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(self.ground_truth, f)
        os.replace(tmp, cache)

    def programs(self, problem: Problem, code: str) -> dict[str, tuple[Program, list, Compare]]:
        """Per part: the sandbox program (``code`` called on the part's inputs, with per-input limits from the
        ground truth), the expected outputs and EvalPlus's comparison rule."""
        if problem.task_id not in self.ground_truth:
            self.prepare([problem])
        gt = self.ground_truth[problem.task_id]
        record = problem.record
        out = {}
        for part in self.parts:
            inputs = record[part + "_input"]
            limits = [max(MIN_TIME_LIMIT_S, GT_TIME_LIMIT_FACTOR * t) for t in gt[part + "_time"]]
            encode = [ENCODE_SLACK_S + GT_TIME_LIMIT_FACTOR * t for t in gt[part + "_encode_time"]]
            not_none = self.dataset == "mbpp" and record["entry_point"] in MBPP_OUTPUT_NOT_NONE
            program = Program(code, record["entry_point"], inputs, calls_json=gt[part + "_calls_json"],
                              time_limits=limits,
                              encode_limits=encode, guard="evalplus", not_none=not_none,
                              timeout_s=min(TIMEOUT_PER_TASK_S, math.fsum(limits) + math.fsum(encode)) + 2.0)
            compare = evalplus_compare(self.dataset, record["entry_point"], inputs, gt[part], float(record["atol"]))
            out[part] = (program, gt[part], compare)
        return out

    def verdicts(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]],
                 progress: Callable[[float], None] | None = None) -> list[dict[str, Verdict]]:
        flat = [(i, part, spec) for i, (problem, extracted) in enumerate(items)
                for part, spec in self.programs(problem, extracted.text).items()]
        step = 1 / len(self.parts)
        results = function_tests.run(sandbox, [spec[0] for _, _, spec in flat],
                                     None if progress is None else (lambda *_: progress(step)))
        verdicts: list[dict[str, Verdict]] = [{} for _ in items]
        for (i, part, (_, expected, compare)), result in zip(flat, results):
            verdicts[i][part] = function_tests.judge(result, expected, compare)
        return verdicts

    def failed_test(self, problem: Problem, part: str, verdict: Verdict) -> str:
        index = verdict.failed_at
        if index is None or part not in self.parts:
            return ""
        inputs = problem.record[part + "_input"]
        gt = self.ground_truth.get(problem.task_id)
        if not 0 <= index < len(inputs) or gt is None:
            return ""
        args = ", ".join(_short_repr(a) for a in inputs[index])
        call = f"{problem.record['entry_point']}({args})"
        return f"retv = {call}\nassert retv == {_short_repr(gt[part][index])}"

    def description(self, problem: Problem) -> str:
        return problem.record["prompt"].strip()

    def trace_job(self, problem: Problem, code: str, part: str, failed_at: int | None) -> Job | None:
        """A job tracing ``code`` on the input it failed (None when the failing input is unknown)."""
        inputs = problem.record.get(part + "_input", [])
        if not isinstance(failed_at, int) or not 0 <= failed_at < len(inputs):
            return None
        payload = {"solution": code, "entry_point": problem.record["entry_point"], "input": list(inputs[failed_at])}
        return Job(TRACE_DRIVER, payload, timeout_s=10.0)
