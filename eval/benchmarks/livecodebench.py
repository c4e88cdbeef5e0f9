"""LiveCodeBench: code generation (``lcb-codegen``), code execution (``lcb-execution``) and test output
prediction (``lcb-testoutput``), read from local exports of the official HF datasets.

Data (``--data-dir`` layout, see ``LAYOUT``): ``livecodebench/code_generation_lite/test.jsonl``,
``test2.jsonl`` .. ``test6.jsonl`` (one file per release, as the HF repo ships them; ``.parquet`` with the same
stem also read), ``livecodebench/execution-v2/**/*.{jsonl,parquet}`` and
``livecodebench/test_generation/**/*.{jsonl,parquet}``.  ``release_version`` picks the code-generation files
as the dataset's loading script does (``release_v1`` .. ``release_v6`` cumulative, ``release_latest`` all,
``vN`` one release's new problems, ``vN_vM`` a range); ``start_date`` / ``end_date`` keep problems with
``start <= contest_date <= end`` (dates at midnight, as ``lcb_runner`` compares them).  The official loaders
apply the date window to code generation only; here it applies to all three scenarios.

Private tests ship compressed and pickled (base64 -> zlib -> pickle -> JSON text).  They are unpickled with
``_StringUnpickler``, which admits no global at all (so no ``__reduce__`` can call anything) and only a
string or bytes result.

Scoring follows ``lcb_runner/evaluation`` (LiveCodeBench/LiveCodeBench @ 28fef95), attacker-first:

- code generation, functional (LeetCode): the code, after LiveCodeBench's import header, is loaded in the
  sandbox, ``Solution().<func_name>`` (or the module-level function when there is no ``class Solution``)
  is called on each test's JSON-decoded arguments, and the returned *values* come back as plain data and
  are compared here: ``prediction == json.loads(output)``, a returned tuple read as a list; 6 s per test;
- code generation, stdin: the code goes through LiveCodeBench's ``clean_if_name`` / ``make_function``
  (imports hoisted, everything else inside ``wrapped_function``), then each test runs it with the test
  input as the process's real stdin (fd 0, so ``input()``, ``sys.stdin``, ``sys.stdin.buffer`` and
  ``open(0)`` all work) and its ``sys.stdout`` captured; ``SystemExit`` ends a test normally, as there.
  The captured text is normalised in the sandbox as ``get_stripped_lines`` does (strip, split on ``\\n``,
  strip each line) and compared here line by line: equal, or every whitespace-separated token equal as a
  ``Decimal`` (no float tolerance: ``1.0`` matches ``1``, ``0.333333`` does not match ``0.3333333``); the
  line counts must match.  An output over 1 MiB comes back as a digest and must match exactly after the
  normalisation;
- execution: the answer is the expression after ``==`` (``extract_execution_code``); one containing the
  test's input text fails, as there; it is evaluated in the sandbox after ``BASE_IMPORTS`` and the code, and
  its value is compared here with ``ast.literal_eval(output)``.  The official program is ``assert
  {output} == {answer}``, so an answer such as ``1, "x"`` passes there as an assert message; here the
  answer must be one expression equal to the output;
- test output: the right side of the assertion (``check_testcase_output``) is evaluated in the sandbox in
  an empty namespace (the official code ``eval``\\ s it in the scorer's own process) and its value compared
  here with ``json.loads(output)``.

A candidate never sees the expected values and never compares: an always-equal object is not plain data,
``sys.exit`` before printing leaves nothing to match, ``os._exit`` loses the run.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import os
import pickle
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from eval.benchmarks import DATA_FILES, Benchmark, DataError, Extracted, Problem, iter_jsonl, resolve_data_dir
from eval.prompts import cruxeval_prompt
from sandbox import Sandbox, function_tests
from sandbox.function_tests import Digest, Program, TestResult, Verdict

NAMES = ("lcb-codegen", "lcb-execution", "lcb-testoutput")
MODES = {"lcb-codegen": ("direct", "cot", "monologue"),  # the mode does not change code generation
         "lcb-execution": ("direct", "cot", "monologue"),
         "lcb-testoutput": ("direct",)}
DIFFICULTIES = ("easy", "medium", "hard")
CODEGEN_TIMEOUT_S = 6       # lcb_runner's per-test timeout
EXECUTION_TIMEOUT_S = 3.0   # compute_code_execution_metrics: check_correctness(program, 3)
PREDICTION_TIMEOUT_S = 3.0
LAYOUT = ("livecodebench/code_generation_lite/test.jsonl, test2.jsonl .. test6.jsonl (or .parquet, the files of "
          "the HF dataset livecodebench/code_generation_lite); livecodebench/execution-v2/*.jsonl|*.parquet "
          "(livecodebench/execution-v2); livecodebench/test_generation/*.jsonl|*.parquet "
          "(livecodebench/test_generation)")

CODEGEN_KEYS = ("question_title", "question_content", "platform", "question_id", "contest_id", "contest_date",
                "starter_code", "difficulty", "public_test_cases", "private_test_cases", "metadata")
EXECUTION_KEYS = ("question_id", "contest_id", "contest_date", "difficulty", "function_name", "code", "input",
                  "output", "id", "problem_id", "numsteps")
TESTOUTPUT_KEYS = ("question_title", "question_content", "question_id", "contest_id", "contest_date",
                   "difficulty", "test", "starter_code", "function_name", "test_id")


# ---- release files ------------------------------------------------------------------------------------------

def _release_file(index: int) -> str:
    return "test" if index == 1 else f"test{index}"


def release_files(release_version: str, available: int) -> list[str]:
    """File stems of ``code_generation_lite`` for ``release_version`` (``available``: the highest N with a
    ``testN`` file present, for ``release_latest``)."""
    match = re.fullmatch(r"release_v(\d+)", release_version)
    if match:
        return [_release_file(i) for i in range(1, int(match.group(1)) + 1)]
    if release_version == "release_latest":
        return [_release_file(i) for i in range(1, max(available, 1) + 1)]
    match = re.fullmatch(r"v(\d+)", release_version)
    if match:
        return [_release_file(int(match.group(1)))]
    match = re.fullmatch(r"v(\d+)_v(\d+)", release_version)
    if match and int(match.group(1)) < int(match.group(2)):
        return [_release_file(i) for i in range(int(match.group(1)), int(match.group(2)) + 1)]
    raise DataError(f"--release-version {release_version!r}: expected release_v1 .. release_vN, release_latest, "
                    "vN (one release's new problems) or vN_vM")


# ---- reading records ----------------------------------------------------------------------------------------

def _records_of(path: Path) -> list[tuple[str, dict]]:
    """(where, record) for each record of a JSON Lines (optionally gzipped) or Parquet file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or export the split "
                            "as JSON Lines") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any pyarrow failure is a bad file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        return [(f"{path}: row {i + 1}", row) for i, row in enumerate(rows)]
    return [(f"{path}:{lineno}", record) for lineno, record in iter_jsonl(path)]


def _is_data_file(path: Path) -> bool:
    return path.is_file() and (path.name.endswith((".jsonl", ".jsonl.gz", ".parquet")))


def _require(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")


def _contest_date(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    try:
        return datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        raise DataError(f"{where}: contest_date {value!r} is not an ISO date") from None


def _window_date(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise DataError(f"{flag} {value!r}: expected YYYY-MM-DD") from None


# ---- private tests: base64 -> zlib -> pickle -> JSON, unpickled with no globals ------------------------------

class _StringUnpickler(pickle.Unpickler):
    """Unpickles plain containers and strings only: any global (class, function) is refused, so nothing is
    constructed or called."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


MAX_DECOMPRESSED = 1 << 30


def decode_private_tests(text: str, where: str) -> list:
    """``private_test_cases`` as the release ships it: JSON text, or base64 of zlib of a pickled JSON string."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        pass
    try:
        compressed = base64.b64decode(text.encode("utf-8"), validate=False)
        decompressor = zlib.decompressobj()
        data = decompressor.decompress(compressed, MAX_DECOMPRESSED)
        if decompressor.unconsumed_tail:
            raise DataError(f"{where}: private_test_cases decompress to over {MAX_DECOMPRESSED} bytes")
    except (binascii.Error, zlib.error, AttributeError, UnicodeEncodeError) as e:
        raise DataError(f"{where}: private_test_cases is neither JSON nor base64/zlib data ({e})") from None
    try:
        value = _StringUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001 - every unpickling failure is a refusal
        raise DataError(f"{where}: private_test_cases refused: the pickle must hold only a string ({e})") from None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise DataError(f"{where}: private_test_cases refused: the pickle holds a {type(value).__name__}, "
                        "expected a JSON string")
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: private_test_cases: the unpickled text is not JSON ({e.msg})") from None


def _tests(value: Any, where: str, field: str) -> list[dict]:
    if not isinstance(value, list):
        raise DataError(f"{where}: {field} is not a list of tests")
    out = []
    for t in value:
        if not (isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
                and t.get("testtype") in ("stdin", "functional")):
            raise DataError(f"{where}: {field}: each test needs input, output (strings) and testtype "
                            "(stdin|functional)")
        out.append({"input": t["input"], "output": t["output"], "testtype": t["testtype"]})
    return out


# ---- the official prompts (LiveCodeBench and SemCoder's fork of it, Robin-Y-Ding/LiveCodeBench @ 95141a6) ----

SEMCODER_CODEGEN_SYSTEM = ("You are an exceptionally intelligent coding assistant that consistently delivers "
                           "accurate and reliable <Code> according to <NL_Description>\n\n<NL_Description>\n")
FORMATTING_WITH_STARTER_CODE = ("You will use the following starter code to write the solution to the problem "
                                "and enclose your code within delimiters.")
FORMATTING_WITHOUT_STARTER_CODE = ("Read the inputs from stdin solve the problem and write the answer to stdout "
                                   "(do not directly test on the sample inputs). Enclose your code within "
                                   "delimiters as follows.")


def codegen_prompt(question_content: str, starter_code: str) -> str:
    """SemCoder's LiveCodeBench code-generation prompt (``LMStyle.SemCoder``), byte for byte."""
    prompt = (f"{SEMCODER_CODEGEN_SYSTEM}\nYou will be given a question (problem specification) and will generate "
              "a correct Python program that matches the specification and passes all tests. You will NOT return "
              f"anything except for the program.\n\nQuestion: {question_content}\n\n")
    if starter_code:
        prompt += f"{FORMATTING_WITH_STARTER_CODE}\n```python\n{starter_code}\n```\n\n"
    else:
        prompt += f"{FORMATTING_WITHOUT_STARTER_CODE}\n\n```python\n# YOUR CODE HERE\n```\n\n"
    return prompt + "<Code>\n"


_EXEC_HEAD = ("You are given a Python function and an assertion containing an input to the function. Complete the "
              "assertion with a literal (no unsimplified expressions, no function calls) containing the output when "
              "executing the provided code on the given input, even if the function is incorrect or incomplete. Do "
              "NOT output any extra information. ")


def execution_prompt(mode: str, code: str, input: str) -> str:
    """``make_direct_output_prompt`` / ``make_cot_output_prompt``, or SemCoder's monologue prompt
    (``make_semcoder_output_prompt``: the CRUXEval-O monologue prompt, lines labelled ``# [L{i+4}]``, no quote
    swap; it writes ``f({input})`` around an input that is already a call, as the fork does)."""
    if mode == "monologue":
        return cruxeval_prompt("o", "monologue", code, input, "", swap_quotes=False)
    if mode == "cot":
        return (_EXEC_HEAD + "Execute the program step by step before arriving at an answer, and provide the full "
                "assertion with the correct output in [ANSWER] and [/ANSWER] tags, following the examples.\n\n"
                "[PYTHON]\ndef performOperation(s):\n    s = s + s\n    return \"b\" + s + \"a\"\n"
                "assert performOperation(s = \"hi\") == ??\n[/PYTHON]\n[THOUGHT]\nLet's execute the code step by "
                "step:\n\n1. The function performOperation is defined, which takes a single argument s.\n2. The "
                "function is called with the argument \"hi\", so within the function, s is initially \"hi\".\n3. "
                "Inside the function, s is concatenated with itself, so s becomes \"hihi\".\n4. The function then "
                "returns a new string that starts with \"b\", followed by the value of s (which is now \"hihi\"), "
                "and ends with \"a\".\n5. The return value of the function is therefore \"bhihia\".\n[/THOUGHT]\n"
                "[ANSWER]\nassert performOperation(s = \"hi\") == \"bhihia\"\n[/ANSWER]\n\n"
                f"[PYTHON]\n{code}\nassert {input} == ??\n[/PYTHON]\n[THOUGHT]\n")
    return (_EXEC_HEAD + "Provide the full assertion with the correct output in [ANSWER] and [/ANSWER] tags, "
            "following the examples.\n\n[PYTHON]\ndef repeatNumber(number : int) -> int:\n    return number\n"
            "assert repeatNumber(number = 17) == ??\n[/PYTHON]\n[ANSWER]\nassert repeatNumber(number = 17) == 17\n"
            "[/ANSWER]\n\n[PYTHON]\ndef addCharacterA(string : str) -> str:\n    return string + \"a\"\n"
            "assert addCharacterA(string = \"x9j\") == ??\n[/PYTHON]\n[ANSWER]\n"
            "assert addCharacterA(string = \"x9j\") == \"x9ja\"\n[/ANSWER]\n\n"
            f"[PYTHON]\n{code}\nassert {input} == ??\n[/PYTHON]\n[ANSWER]\n")


TESTOUTPUT_SYSTEM = ("You are a helpful programming assistant and an expert Python programmer. You are helping a user "
                     "to write a test case to help to check the correctness of the function. The user has written a "
                     "input for the testcase. You will calculate the output of the testcase and write the whole "
                     "assertion statement in the markdown code block with the correct output.")


def _function_name(starter_code: str) -> str | None:
    try:
        tree = ast.parse(starter_code)
    except SyntaxError:
        return None
    names = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    return names[0] if len(names) == 1 else None


def testoutput_prompt(question_content: str, starter_code: str, function_name: str, test_input: str) -> str:
    """``SYSTEM_MESSAGE_CHAT_GENERIC`` + ``get_generic_question_template_test_completion`` (the official
    completion-style prompt, e.g. ``LMStyle.StarCoderInstruct``), byte for byte."""
    name = _function_name(starter_code) or function_name
    input_str = ", ".join(test_input.split("\n"))
    return (f"{TESTOUTPUT_SYSTEM}\nProblem:\n{question_content}Function:\n```\n{starter_code}\n```\n"
            "Please complete the following test case:\n\n"
            f"```\nassert {name}({input_str}) == # TODO\n```\n")


# ---- extraction, as lcb_runner/utils/extraction_utils.py and compute_test_output_prediction_metrics.py --------

def extract_code(raw: str) -> str:
    """The code between the last two lines containing a fence; empty when there are fewer than two."""
    lines = raw.split("\n")
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[-2] + 1: fences[-1]])


def extract_execution_answer(raw: str, cot: bool) -> str:
    if cot and "[ANSWER]" in raw:
        raw = raw.split("[ANSWER]")[1].strip()
    if "==" in raw:
        raw = raw.split("==")[1].strip()
    if "[/ANSWER]" in raw:
        raw = raw.split("[/ANSWER]")[0].strip()
    else:
        raw = raw.split("\n")[0].strip()
    return raw.strip()


def extract_test_output(raw: str) -> str:
    """``extract_test_output_code``: the last line starting with ``assert``, else the first fenced block."""
    lines = raw.split("\n")
    asserts = [i for i, line in enumerate(lines) if line.startswith("assert")]
    if asserts:
        return lines[asserts[-1]]
    starts = [i for i, line in enumerate(lines) if "```python" in line or "```Python" in line]
    fences = [i for i, line in enumerate(lines) if "```" in line]
    if starts:
        fences = [starts[0]] + [i for i in fences if i > starts[0]]
    if len(fences) < 2:
        return ""
    return "\n".join(lines[fences[0] + 1: fences[1]])


def testoutput_expression(text: str) -> str | None:
    """The expression ``check_testcase_output`` evaluates (the right side of ``==`` in the assertion, or the
    whole text), or None where it would fail before evaluating."""
    if len(text.splitlines()) > 1:
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            if "assert" in line:
                text = line
                break
    text = text.strip()
    if "assert" not in text:
        return text
    try:
        tree = ast.parse(text, mode="exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    if not tree.body or not isinstance(tree.body[0], ast.Assert):
        return None
    test = tree.body[0].test
    if not isinstance(test, ast.Compare) or not isinstance(test.ops[0], ast.Eq):
        return None
    return ast.get_source_segment(text, test.comparators[0])


# ---- the programs run in the sandbox ------------------------------------------------------------------------

# testing_util.import_string: the names every code-generation solution gets for free
IMPORT_STRING = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\nfrom heapq import *\n"
    "from bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\nfrom statistics import *\n"
    "from itertools import *\nfrom functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\n"
    "from json import *\nfrom builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
    "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\nimport statistics\n"
    "import itertools\nimport functools\nimport operator\nimport io\nimport sys\nimport json\n"
    "sys.setrecursionlimit(50000)\n")

# utils_execute.BASE_IMPORTS (numpy and pandas only where installed)
BASE_IMPORTS = (
    "from itertools import accumulate, chain, combinations, count, permutations, product, groupby, islice, repeat\n"
    "from copy import deepcopy\nfrom string import ascii_lowercase\n"
    "from math import floor, log2, log10, sqrt, comb, gcd, ceil, inf, isqrt\n"
    "from collections import defaultdict, deque, Counter\nfrom bisect import bisect, bisect_left, bisect_right, insort\n"
    "from heapq import heappush, heappop, heapify, merge\nfrom functools import reduce, cache, lru_cache\n"
    "from random import randrange, shuffle\nfrom operator import itemgetter, sub\nfrom re import search as re_search\n"
    "from os.path import commonprefix\n"
    "from typing import List, Tuple, Dict, Set, Optional, Union, Any, Callable, Iterable, Iterator, Generator\n"
    "import copy\nimport string\nimport math\nimport collections\nimport bisect\nimport heapq\nimport functools\n"
    "import random\nimport itertools\nimport operator\nimport re\n"
    "try:\n    import numpy as np\nexcept ImportError:\n    pass\n"
    "try:\n    import pandas as pd\nexcept ImportError:\n    pass\n"
    "from math import log, prod\nfrom collections import deque, defaultdict, Counter, OrderedDict\n"
    "from itertools import accumulate, permutations, combinations, product, groupby, islice, chain, repeat, "
    "zip_longest, cycle\nfrom functools import lru_cache, reduce, partial\nfrom operator import iand\nimport sys\n")

# testing_util.reliability_guard, as run_test applies it; ``exit`` raises SystemExit there (the sandbox's
# refusing stand-in is replaced), so a solution may end with exit() after printing, as on a judge
GUARD = '''
def _lcb_guard():
    import builtins, os, shutil, subprocess, sys

    def exit(code=None):
        raise SystemExit(code)

    sys.set_int_max_str_digits(50000)
    builtins.exit = exit
    builtins.quit = None
    builtins.help = None
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
_lcb_guard()
del _lcb_guard
'''

# Runs ``wrapped_function`` once per test with the test's input as fd 0 and sys.stdout captured; returns the
# output normalised as get_stripped_lines does, joined with newlines.
STDIN_RUNNER = '''

def _lcb_run(_lcb_text, _lcb_fn=wrapped_function):
    import io as _io, os as _os, sys as _sys

    class _Kept(_io.BytesIO):
        def close(self):
            pass

    _data = _lcb_text.encode("utf-8")
    _fd = _os.memfd_create("stdin")
    _view = memoryview(_data)
    while _view:
        _view = _view[_os.write(_fd, _view):]
    _os.lseek(_fd, 0, 0)
    if _fd != 0:  # fd 0 may have been closed by the last test (open(0) closes it), then the memfd is fd 0
        _os.dup2(_fd, 0)
        _os.close(_fd)
    _sys.stdin = _io.open(0, "r", encoding="utf-8", closefd=False)
    _buf = _Kept()
    _sys.stdout = _io.TextIOWrapper(_buf, encoding="utf-8", write_through=True)
    _out = _sys.stdout
    try:
        _lcb_fn()
    except SystemExit:
        pass
    finally:
        try:
            _out.flush()
        except BaseException:
            pass
        _sys.stdout = _sys.__stdout__
    _text = _buf.getvalue().decode("utf-8", "replace")
    return "\\n".join(_line.strip() for _line in _text.strip().split("\\n"))
'''


def clean_if_name(tree: ast.Module) -> ast.Module:
    """``clean_if_name``: a last top-level ``if __name__ == '__main__':`` replaced by its body."""
    if tree.body and isinstance(tree.body[-1], ast.If) and \
            ast.unparse(tree.body[-1].test).strip() == "__name__ == '__main__'":
        tree.body = tree.body[:-1] + tree.body[-1].body
    return tree


def stdin_program(code: str) -> str | None:
    """LiveCodeBench's ``make_function`` of ``code`` (imports hoisted, the rest in ``wrapped_function``) with
    the harness's runner; None when the code does not parse."""
    try:
        tree = clean_if_name(ast.parse(code))
        imports = [s for s in tree.body if isinstance(s, (ast.Import, ast.ImportFrom))]
        others = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
        function = ast.FunctionDef(name="wrapped_function", args=ast.arguments(posonlyargs=[], args=[],
                                   kwonlyargs=[], kw_defaults=[], defaults=[]), body=others or [ast.Pass()],
                                   decorator_list=[], returns=None, lineno=1)
        if "type_params" in ast.FunctionDef._fields:
            function.type_params = []
        body = ast.unparse(ast.Module(body=imports, type_ignores=[])) + "\n" + ast.unparse(function)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    return GUARD + IMPORT_STRING + "\n" + body + "\n" + STDIN_RUNNER


def functional_program(code: str, func_name: str) -> str:
    target = f"Solution().{func_name}" if "class Solution" in code else func_name
    return GUARD + IMPORT_STRING + "\n\n" + code + f"\n\n_lcb_entry = {target}\n"


# ---- comparison -----------------------------------------------------------------------------------------------

def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def compare_stdout(output: Any, expected: str) -> str | None:
    """Why a normalised stdout does not match ``expected`` (None when it does), as ``grade_stdio`` decides."""
    if isinstance(output, Digest):
        return None if output.matches("\n".join(stripped_lines(expected))) else "wrong output (large)"
    if not isinstance(output, str):
        return "malformed record from the sandbox"
    got, want = output.split("\n"), stripped_lines(expected)
    if len(got) != len(want):
        return f"wrong output: {len(got)} line(s), expected {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        if a == b:
            continue
        da, db = _decimals(a), _decimals(b)
        if da is None or db is None or da != db:
            return f"wrong output at line {i + 1}: {a[:100]!r}"
    return None


def compare_functional(output: Any, expected: Any, index: int) -> str | None:
    if isinstance(output, Digest):
        return None if output.matches(expected) else "wrong output"
    if isinstance(output, tuple):
        output = list(output)
    try:
        return None if output == expected else "wrong output"
    except Exception as e:  # noqa: BLE001
        return f"the comparison raised {type(e).__name__}"


def _failed(message: str, n_tests: int = 1) -> Verdict:
    return Verdict("failed", message, 0, [TestResult("failed", message)] + [TestResult("not_run")] * (n_tests - 1))


# ---- the benchmark ----------------------------------------------------------------------------------------------

class LiveCodeBench(Benchmark):
    def __init__(self, name: str, mode: str = "direct", release_version: str = "release_latest",
                 start_date: str | None = None, end_date: str | None = None):
        if name not in NAMES:
            raise DataError(f"unknown LiveCodeBench scenario {name!r}; expected one of {', '.join(NAMES)}")
        if mode not in MODES[name]:
            raise DataError(f"{name}: --mode {mode!r}: expected one of {', '.join(MODES[name])}"
                            + (" (LiveCodeBench has one test-output prompt)" if name == "lcb-testoutput" else ""))
        self.name = name
        self.mode = mode
        self.release_version = release_version or "release_latest"
        self.start = _window_date(start_date, "--start-date")
        self.end = _window_date(end_date, "--end-date")
        self.stop = ("[/ANSWER]",) if name == "lcb-execution" else ()
        release_files(self.release_version, 6)  # validate early

    # -- loading --

    def folder(self, data_dir: str | os.PathLike | None) -> Path:
        path = resolve_data_dir(data_dir) / DATA_FILES[self.name]
        if not path.is_dir():
            raise DataError(f"{self.name}: data folder {path} not found; expected under the data dir: {LAYOUT}. "
                            "Pass --data-dir DIR or set $SEMCODER_DATA_DIR")
        return path

    def _files(self, folder: Path) -> list[Path]:
        if self.name != "lcb-codegen":
            files = sorted(p for p in folder.rglob("*") if _is_data_file(p))
            if not files:
                raise DataError(f"{self.name}: no .jsonl or .parquet file in {folder}; expected {LAYOUT}")
            return files
        present: dict[str, Path] = {}
        for p in folder.iterdir():
            if _is_data_file(p):
                present.setdefault(p.name.split(".")[0], p)
        indices = [1 if stem == "test" else int(stem[4:]) for stem in present
                   if stem == "test" or re.fullmatch(r"test\d+", stem)]
        stems = release_files(self.release_version, max(indices, default=1))
        missing = [s for s in stems if s not in present]
        if missing:
            raise DataError(f"lcb-codegen: {self.release_version} needs {', '.join(s + '.jsonl' for s in missing)} "
                            f"in {folder}; expected {LAYOUT}")
        return [present[s] for s in stems]

    def _in_window(self, date: datetime) -> bool:
        return (self.start is None or self.start <= date) and (self.end is None or date <= self.end)

    def load(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[Problem]:
        folder = self.folder(data_dir)
        build = {"lcb-codegen": self._codegen, "lcb-execution": self._execution,
                 "lcb-testoutput": self._testoutput}[self.name]
        problems = []
        for path in self._files(folder):
            for where, record in _records_of(path):
                problem = build(record, where)
                if problem is not None:
                    problems.append(problem)
        problems.sort(key=lambda p: p.record["_order"])
        seen: set[str] = set()
        for p in problems:
            if p.task_id in seen:
                raise DataError(f"{self.name}: task {p.task_id} appears twice in {folder}")
            seen.add(p.task_id)
        return problems[:limit] if limit is not None else problems

    def _codegen(self, record: dict, where: str) -> Problem | None:
        _require(record, CODEGEN_KEYS, where)
        qid = str(record["question_id"])
        where = f"{where} ({qid})"
        date = _contest_date(record["contest_date"], where)
        if not self._in_window(date):
            return None
        if record["difficulty"] not in DIFFICULTIES:
            raise DataError(f"{where}: difficulty {record['difficulty']!r}: expected easy, medium or hard")
        try:
            public = json.loads(record["public_test_cases"])
            metadata = json.loads(record["metadata"]) if isinstance(record["metadata"], str) else record["metadata"]
        except (json.JSONDecodeError, TypeError):
            raise DataError(f"{where}: public_test_cases and metadata must be JSON text") from None
        tests = _tests(public, where, "public_test_cases")
        n_public = len(tests)
        tests += _tests(decode_private_tests(record["private_test_cases"], where), where, "private_test_cases")
        if not tests:
            raise DataError(f"{where}: no tests")
        fn_name = (metadata or {}).get("func_name")
        calls, expected = None, None
        if fn_name is not None:
            try:
                calls = [[json.loads(line) for line in t["input"].split("\n")] for t in tests]
                expected = [json.loads(t["output"]) for t in tests]
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: a functional test is not JSON ({e.msg})") from None
        info = {k: record[k] for k in ("question_title", "question_content", "platform", "contest_id",
                                       "starter_code", "difficulty")}
        info.update(question_id=qid, contest_date=date.isoformat(), tests=tests, n_public=n_public,
                    fn_name=fn_name, calls=calls, expected=expected, _order=qid)
        return Problem(qid, codegen_prompt(record["question_content"], record["starter_code"]), info)

    def _execution(self, record: dict, where: str) -> Problem | None:
        _require(record, EXECUTION_KEYS, where)
        sid = str(record["id"])
        where = f"{where} ({sid})"
        date = _contest_date(record["contest_date"], where)
        if not self._in_window(date):
            return None
        match = re.fullmatch(r"[^_]*_(\d+)", sid)
        if not match:
            raise DataError(f"{where}: id {sid!r}: expected sample_<n>")
        info = {k: record[k] for k in EXECUTION_KEYS if k != "contest_date"}
        try:
            info["expected"] = ast.literal_eval(record["output"])
            info["literal"] = True
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            info["literal"] = False  # evaluated from the trusted code in the sandbox before scoring
        info.update(contest_date=date.isoformat(), _order=int(match.group(1)))
        return Problem(sid, execution_prompt(self.mode, record["code"], record["input"]), info)

    def _testoutput(self, record: dict, where: str) -> Problem | None:
        _require(record, TESTOUTPUT_KEYS, where)
        qid, test_id = str(record["question_id"]), record["test_id"]
        where = f"{where} ({qid}/{test_id})"
        date = _contest_date(record["contest_date"], where)
        if not self._in_window(date):
            return None
        try:
            tests = _tests(json.loads(record["test"]), where, "test")
        except (json.JSONDecodeError, TypeError):
            raise DataError(f"{where}: test must be JSON text") from None
        if not tests:
            raise DataError(f"{where}: no test")
        info = {k: record[k] for k in TESTOUTPUT_KEYS if k not in ("contest_date", "test")}
        info.update(question_id=qid, contest_date=date.isoformat(), test=tests, _order=(qid, str(test_id)))
        try:
            info["expected"] = json.loads(tests[0]["output"])
        except json.JSONDecodeError:
            info["expected_error"] = "the expected output is not JSON"
        prompt = testoutput_prompt(record["question_content"], record["starter_code"], record["function_name"],
                                   tests[0]["input"])
        return Problem(f"{qid}_{test_id}", prompt, info)

    # -- extraction --

    def extract(self, problem: Problem, raw: str) -> Extracted:
        if self.name == "lcb-codegen":
            return Extracted(extract_code(raw))
        if self.name == "lcb-execution":
            return Extracted(extract_execution_answer(raw, cot=self.mode in ("cot", "monologue")))
        return Extracted(extract_test_output(raw))

    # -- scoring --

    def verdicts(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]],
                 progress: Callable[[float], None] | None = None) -> list[dict[str, Verdict]]:
        tick = None if progress is None else (lambda *_: progress(1.0))
        scorer = {"lcb-codegen": self._score_codegen, "lcb-execution": self._score_execution,
                  "lcb-testoutput": self._score_testoutput}[self.name]
        return [{"main": v} for v in scorer(sandbox, items, tick)]

    def _run_pending(self, sandbox: Sandbox, verdicts: list, todo: list[tuple[int, Program, Callable]],
                     tick: Any) -> list[Verdict]:
        if tick is not None:
            for _ in range(len(verdicts) - len(todo)):
                tick()
        results = function_tests.run(sandbox, [p for _, p, _ in todo], tick)
        for (i, _, judge), result in zip(todo, results):
            verdicts[i] = judge(result)
        return verdicts

    def _score_codegen(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]], tick: Any) -> list:
        verdicts: list[Verdict | None] = [None] * len(items)
        todo = []
        for i, (problem, extracted) in enumerate(items):
            record, code = problem.record, extracted.text
            n = len(record["tests"])
            if not code.strip():
                verdicts[i] = _failed("no code extracted", n)
                continue
            limits = [float(CODEGEN_TIMEOUT_S)] * n
            total = (CODEGEN_TIMEOUT_S + 1) * n + 5  # check_correctness's global timeout
            if record["fn_name"] is not None:
                program = Program(functional_program(code, record["fn_name"]), "_lcb_entry", record["calls"],
                                  time_limits=limits, timeout_s=total)
                expected = record["expected"]
                todo.append((i, program, lambda r, e=expected: function_tests.judge(r, e, compare_functional)))
                continue
            source = stdin_program(code)
            if source is None:
                verdicts[i] = _failed("the code does not parse", n)
                continue
            program = Program(source, "_lcb_run", [[t["input"]] for t in record["tests"]], time_limits=limits,
                              timeout_s=total, swallow_io=False, encode_limits=[5.0] * n)
            outputs = [t["output"] for t in record["tests"]]
            todo.append((i, program, lambda r, e=outputs: function_tests.judge(
                r, e, lambda out, exp, _: compare_stdout(out, exp))))
        return self._run_pending(sandbox, verdicts, todo, tick)

    def _score_execution(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]], tick: Any) -> list:
        # outputs that are not literals: the trusted code's own value of ``output``, computed first
        pending = {p.task_id: p for p, _ in items if not p.record["literal"] and "expected" not in p.record}
        if pending:
            programs = [Program(BASE_IMPORTS + "\n" + p.record["code"], expression=p.record["output"],
                                timeout_s=EXECUTION_TIMEOUT_S) for p in pending.values()]
            for p, result in zip(pending.values(), function_tests.run(sandbox, programs)):
                call = result.calls[0]
                if result.loaded and call.status == "returned" and call.digest is None:
                    p.record["expected"] = call.value
                else:
                    p.record["expected_error"] = "the release's output could not be evaluated"
        verdicts: list[Verdict | None] = [None] * len(items)
        todo = []
        for i, (problem, extracted) in enumerate(items):
            record, answer = problem.record, extracted.text
            if "expected" not in record:
                verdicts[i] = Verdict("error", record.get("expected_error", "no expected output"), 0,
                                      [TestResult("error")])
                continue
            if record["input"] in answer:
                verdicts[i] = _failed("the answer contains the input (the official scorer refuses it)")
                continue
            try:
                ast.parse(answer.strip(), mode="eval")
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                verdicts[i] = _failed("the answer is not one Python expression")
                continue
            program = Program(BASE_IMPORTS + "\n" + record["code"], expression=answer.strip(),
                              timeout_s=EXECUTION_TIMEOUT_S, guard="reference")
            todo.append((i, program, lambda r, e=record["expected"]: function_tests.judge(
                r, [e], label=lambda _: "the answer")))
        return self._run_pending(sandbox, verdicts, todo, tick)

    def _score_testoutput(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]], tick: Any) -> list:
        verdicts: list[Verdict | None] = [None] * len(items)
        todo = []
        for i, (problem, extracted) in enumerate(items):
            record = problem.record
            if "expected" not in record:
                verdicts[i] = _failed(record["expected_error"])
                continue
            expression = testoutput_expression(extracted.text)
            if not expression:
                verdicts[i] = _failed("no assertion with == to score")
                continue
            try:
                ast.parse(expression, mode="eval")
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                verdicts[i] = _failed("the predicted output is not a Python expression")
                continue
            program = Program("", expression=expression, timeout_s=PREDICTION_TIMEOUT_S, guard="reference")
            todo.append((i, program, lambda r, e=record["expected"]: function_tests.judge(
                r, [e], label=lambda _: "the predicted output")))
        return self._run_pending(sandbox, verdicts, todo, tick)

    # -- reports --

    def failed_test(self, problem: Problem, part: str, verdict: Verdict) -> str:
        record = problem.record
        if self.name != "lcb-codegen":
            return ""
        i = verdict.failed_at
        if i is None or i >= len(record["tests"]):
            return ""
        if i >= record["n_public"]:
            return f"# hidden test {i + 1} of {len(record['tests'])} failed: {verdict.message}"
        test = record["tests"][i]
        if record["fn_name"] is not None:
            args = ", ".join(test["input"].split("\n"))
            return f"assert Solution().{record['fn_name']}({args}) == {test['output']}"
        return f"# input:\n{test['input']}\n# expected output:\n{test['output']}"

    def description(self, problem: Problem) -> str:
        record = problem.record
        return record["code"] if self.name == "lcb-execution" else record["question_content"]

    def summary_extras(self, problems: Sequence[Problem], first: Sequence[dict]) -> dict[str, Any]:
        """pass@1 per difficulty (the mean over tasks of each task's share of passing samples)."""
        difficulty = {p.task_id: p.record.get("difficulty") for p in problems}
        per_task: dict[str, list[bool]] = defaultdict(list)
        for rec in first:
            per_task[rec["task_id"]].append(rec["status"] == "passed")
        groups: dict[str, list[float]] = defaultdict(list)
        for task_id, passed in per_task.items():
            level = difficulty.get(task_id)
            if level is not None:
                groups[str(level)].append(sum(passed) / len(passed))
        return {"difficulty": {level: {"pass@1": sum(v) / len(v), "tasks": len(v)}
                               for level in (*DIFFICULTIES, *sorted(set(groups) - set(DIFFICULTIES)))
                               if (v := groups.get(level))}}

    def read_predictions(self, path: Path, problems: Sequence[Problem]) -> dict[str, list[dict]] | None:
        """LiveCodeBench's own output JSON: a list of dicts per problem with ``code_list`` (code generation,
        keyed by ``question_id``) or ``pred_list`` (execution: ``id``; test output: ``question_id`` and
        ``test_id``), the extracted answers the official evaluator scores (``output_list``, the raw
        generations, when there is no extracted list); or ``custom_evaluator``'s list of lists in the
        benchmark's sorted order."""
        if path.suffix != ".json":
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(data, list) or not data:
            return None
        key = "code_list" if self.name == "lcb-codegen" else "pred_list"
        if all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in data):
            ordered = sorted(problems, key=lambda p: p.record["_order"])
            if len(data) != len(ordered):
                raise DataError(f"{path}: {len(data)} lists of answers for {len(ordered)} problems (a list of lists "
                                "must cover every problem, in LiveCodeBench's sorted order)")
            return {p.task_id: [{"extracted": s} for s in answers] for p, answers in zip(ordered, data)}
        if not all(isinstance(x, dict) for x in data):
            return None
        out: dict[str, list[dict]] = {}
        for n, rec in enumerate(data):
            if self.name == "lcb-codegen":
                task_id = rec.get("question_id")
            elif self.name == "lcb-execution":
                task_id = rec.get("id")
            else:
                task_id = (f"{rec['question_id']}_{rec['test_id']}" if "question_id" in rec and "test_id" in rec
                           else None)
            if task_id is None:
                if n == 0:
                    return None
                raise DataError(f"{path}: entry {n + 1} has no task key for {self.name}")
            if isinstance(rec.get(key), list):
                out[str(task_id)] = [{"extracted": str(s)} for s in rec[key]]
            elif isinstance(rec.get("output_list"), list):
                out[str(task_id)] = [{"raw": str(s)} for s in rec["output_list"]]
            elif n == 0:
                return None
            else:
                raise DataError(f"{path}: entry {n + 1} ({task_id}) has neither {key} nor output_list")
        return out
