"""LiveCodeBench (``eval.benchmarks.livecodebench``): loading the three scenarios in the published schema,
release and date filters, the restricted unpickler, scoring (right, wrong, attacks), official output files,
per-difficulty pass@1 and error messages.  Fixtures: ``tests/eval/fixtures/livecodebench`` (see
``make_fixtures.py``).  Agreement with the official scorer: ``benchmarks/lcb_official_agreement.py`` and the
slow test at the end."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from eval.benchmarks import DataError, Extracted, get_benchmark
from eval.benchmarks.livecodebench import (
    LiveCodeBench,
    codegen_prompt,
    decode_private_tests,
    execution_prompt,
    extract_code,
    extract_execution_answer,
    release_files,
)
from eval.prompts import cruxeval_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]

ADD_K = "class Solution:\n    def addK(self, nums: List[int], k: int) -> List[int]:\n        return [x + k for x in nums]"
SUM = "a, b = map(int, input().split())\nprint(a + b)"


def ids(problems):
    return [p.task_id for p in problems]


# ---- loading ---------------------------------------------------------------------------------------------------

def test_load_codegen_all_releases_sorted_by_question_id():
    problems = LiveCodeBench("lcb-codegen").load(FIXTURES)
    assert ids(problems) == ["1900_c", "2000", "3001", "abc001_a", "abc002_b"]
    by_id = {p.task_id: p for p in problems}
    add_k = by_id["2000"].record
    assert add_k["fn_name"] == "addK" and add_k["n_public"] == 1 and len(add_k["tests"]) == 3  # compressed private
    assert add_k["calls"][1] == [[], 5] and add_k["expected"][2] == [-2, -1]
    assert by_id["abc001_a"].record["fn_name"] is None and len(by_id["abc001_a"].record["tests"]) == 4
    assert by_id["abc002_b"].record["tests"][1]["output"] == "1.3333333333\n"  # compressed private, stdin
    assert by_id["2000"].prompt == codegen_prompt(add_k["question_content"], add_k["starter_code"])
    assert by_id["2000"].prompt.endswith("```python\nclass Solution:\n    def addK(self, nums: List[int], k: int) -> "
                                         "List[int]:\n        \n```\n\n<Code>\n")
    assert "# YOUR CODE HERE" in by_id["abc001_a"].prompt
    assert get_benchmark("lcb-codegen", mode="monologue").load(FIXTURES, limit=2) == problems[:2]


@pytest.mark.parametrize("release,expected", [
    ("release_v1", ["2000", "abc001_a"]),
    ("release_v2", ["2000", "3001", "abc001_a", "abc002_b"]),
    ("release_latest", ["1900_c", "2000", "3001", "abc001_a", "abc002_b"]),
    ("v2", ["3001", "abc002_b"]),
    ("v2_v3", ["1900_c", "3001", "abc002_b"]),
])
def test_release_version_selects_files(release, expected):
    assert ids(LiveCodeBench("lcb-codegen", release_version=release).load(FIXTURES)) == expected


def test_release_files_like_the_loading_script():
    assert release_files("release_v3", 6) == ["test", "test2", "test3"]
    assert release_files("v1", 6) == ["test"]
    assert release_files("v4_v6", 6) == ["test4", "test5", "test6"]
    assert release_files("release_latest", 7) == ["test"] + [f"test{i}" for i in range(2, 8)]
    with pytest.raises(DataError, match="release_v1 .. release_vN"):
        LiveCodeBench("lcb-codegen", release_version="latest")
    with pytest.raises(DataError, match=r"test4\.jsonl"):
        LiveCodeBench("lcb-codegen", release_version="release_v4").load(FIXTURES)


def test_contest_date_window_as_lcb_runner():
    # start <= contest_date <= end, the dates at midnight: 3001 (2023-10-01T12:00) is after an end of 2023-10-01
    bench = LiveCodeBench("lcb-codegen", start_date="2023-06-10", end_date="2023-10-01")
    assert ids(bench.load(FIXTURES)) == ["2000", "abc002_b"]
    assert ids(LiveCodeBench("lcb-codegen", end_date="2023-10-02").load(FIXTURES)) == [
        "2000", "3001", "abc001_a", "abc002_b"]
    assert ids(LiveCodeBench("lcb-execution", start_date="2023-07-01").load(FIXTURES)) == ["sample_1", "sample_2"]
    assert ids(LiveCodeBench("lcb-testoutput", end_date="2023-12-31").load(FIXTURES)) == ["2000_0", "2000_1"]
    with pytest.raises(DataError, match="YYYY-MM-DD"):
        LiveCodeBench("lcb-codegen", start_date="2023/01/01")


def test_load_execution_and_prompts():
    problems = LiveCodeBench("lcb-execution", mode="monologue").load(FIXTURES)
    assert ids(problems) == ["sample_0", "sample_1", "sample_2"]
    record = problems[2].record
    assert record["expected"] == "a-b" and record["difficulty"] == "hard"
    # SemCoder's fork: the CRUXEval-O monologue prompt, no quote swap, f(...) around the input call
    assert problems[2].prompt == cruxeval_prompt("o", "monologue", record["code"], record["input"], "",
                                                 swap_quotes=False)
    assert "[PYTHON]\ndef joinWords(words: List[str]) -> str: # [L5]\n    return '-'.join(sorted(words)) # [L6]\n" \
           "assert f(joinWords(words = ['b', 'a'])) == ??\n[/PYTHON]\n[MONOLOGUE]\n" in problems[2].prompt
    direct = execution_prompt("direct", record["code"], record["input"])
    assert direct.endswith("assert joinWords(words = ['b', 'a']) == ??\n[/PYTHON]\n[ANSWER]\n")
    assert execution_prompt("cot", record["code"], record["input"]).endswith("== ??\n[/PYTHON]\n[THOUGHT]\n")
    assert LiveCodeBench("lcb-execution").stop == ("[/ANSWER]",)


def test_load_testoutput():
    problems = LiveCodeBench("lcb-testoutput").load(FIXTURES)
    assert ids(problems) == ["2000_0", "2000_1", "3100_0"]
    assert problems[0].record["expected"] == [4, 5]
    assert problems[0].prompt.endswith("Please complete the following test case:\n\n```\nassert addK([1, 2], 3) == "
                                       "# TODO\n```\n")
    with pytest.raises(DataError, match="one test-output prompt"):
        LiveCodeBench("lcb-testoutput", mode="monologue")


def _as_parquet(src: Path, dst: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    for path in src.rglob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        target = dst / path.relative_to(src).with_suffix(".parquet")
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), target)


def test_parquet_exports_load_the_same(tmp_path):
    _as_parquet(FIXTURES / "livecodebench", tmp_path / "livecodebench")
    for name in ("lcb-codegen", "lcb-execution", "lcb-testoutput"):
        assert [(p.task_id, p.prompt) for p in LiveCodeBench(name).load(tmp_path)] == \
               [(p.task_id, p.prompt) for p in LiveCodeBench(name).load(FIXTURES)]


# ---- the pickled private tests ---------------------------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_private_tests_refuse_code_in_the_pickle(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    payload = base64.b64encode(zlib.compress(pickle.dumps(_Evil()))).decode()
    with pytest.raises(DataError, match=r"q9.*refused.*os|q9.*refused.*posix"):
        decode_private_tests(payload, "file.jsonl:3 (q9)")
    assert not marker.exists()
    # a refused pickle inside a release file: the error names file, line and problem
    line = json.loads((FIXTURES / "livecodebench" / "code_generation_lite" / "test.jsonl").read_text().splitlines()[0])
    line["private_test_cases"] = payload
    folder = tmp_path / "livecodebench" / "code_generation_lite"
    folder.mkdir(parents=True)
    (folder / "test.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:1 \(abc001_a\): private_test_cases refused"):
        LiveCodeBench("lcb-codegen", release_version="release_v1").load(tmp_path)
    assert not marker.exists()
    # a pickle of something other than a string is refused too
    not_text = base64.b64encode(zlib.compress(pickle.dumps([{"input": "1", "output": "1"}]))).decode()
    with pytest.raises(DataError, match="holds a list"):
        decode_private_tests(not_text, "x")
    ok = base64.b64encode(zlib.compress(pickle.dumps(json.dumps([{"input": "1", "output": "2"}])))).decode()
    assert decode_private_tests(ok, "x") == [{"input": "1", "output": "2"}]


# ---- errors ------------------------------------------------------------------------------------------------------

def test_missing_data_dir_names_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"livecodebench/code_generation_lite/test\.jsonl, test2\.jsonl"):
        LiveCodeBench("lcb-codegen").load(tmp_path)
    (tmp_path / "livecodebench" / "execution-v2").mkdir(parents=True)
    with pytest.raises(DataError, match="no .jsonl or .parquet file"):
        LiveCodeBench("lcb-execution").load(tmp_path)


def test_malformed_line_names_file_and_line(tmp_path):
    folder = tmp_path / "livecodebench" / "test_generation"
    folder.mkdir(parents=True)
    good = (FIXTURES / "livecodebench" / "test_generation" / "test.jsonl").read_text().splitlines()[0]
    (folder / "test.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: not valid JSON"):
        LiveCodeBench("lcb-testoutput").load(tmp_path)
    (folder / "test.jsonl").write_text(json.dumps({"question_id": "1"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:1: missing key\(s\) question_title"):
        LiveCodeBench("lcb-testoutput").load(tmp_path)


# ---- extraction ----------------------------------------------------------------------------------------------------

def test_extraction_as_lcb_runner():
    assert extract_code("text\n```python\nx = 1\n```\nmore\n```python\ny = 2\n```\n") == "y = 2"
    assert extract_code("no fences") == ""
    assert extract_execution_answer("[MONOLOGUE]\n...\n[ANSWER]\nassert f(g(x = 1)) == [1, 2]\n[/ANSWER]", True) \
        == "[1, 2]"
    assert extract_execution_answer("assert f(1) == 3\nrest", False) == "3"


# ---- scoring -----------------------------------------------------------------------------------------------------

def _score(sandbox, name, answers, mode="direct", raw=False):
    bench = LiveCodeBench(name, mode=mode)
    problems = {p.task_id: p for p in bench.load(FIXTURES)}
    items = [(problems[t], bench.extract(problems[t], a) if raw else Extracted(a)) for t, a in answers]
    return [v["main"] for v in bench.verdicts(sandbox, items)]


def test_codegen_right_and_wrong(sandbox):
    answers = [
        ("abc001_a", SUM),
        ("abc001_a", "import sys\nfor line in sys.stdin:\n    a, b = map(int, line.split())\n    print(a + b, ' ')\n"),
        ("abc001_a", "a, b = map(int, input().split())\nprint(a + b if a > 0 else 0 if a + b else 1)"),  # private fails
        ("abc002_b", "n = int(input())\nprint(f'{sum(map(int, input().split())) / n:.10f}')\nexit()"),
        ("abc002_b", "n = int(input())\nprint(sum(map(int, input().split())) / n)"),  # 1.3333333333333333
        ("1900_c", "n = int(open(0).read())\nfor i in range(1, n + 1):\n    print(i, i * i)"),
        ("2000", ADD_K),
        ("2000", ADD_K.replace("return [x + k for x in nums]", "return [x + k for x in nums] or [0]")),  # private
        ("3001", "class Solution:\n    def maxPair(self, nums):\n        return max(nums), min(nums)"),  # tuple ok
        ("3001", ""),
    ]
    verdicts = _score(sandbox, "lcb-codegen", answers)
    assert [v.status for v in verdicts] == ["passed", "passed", "failed", "passed", "failed", "passed", "passed",
                                            "failed", "passed", "failed"]
    assert verdicts[2].failed_at == 2  # the first private test (after 2 public ones)
    assert verdicts[7].failed_at == 1


def test_codegen_attacks_fail(sandbox):
    attacks = [
        ("3001", "class E(list):\n    def __eq__(self, o):\n        return True\n"
                 "class Solution:\n    def maxPair(self, nums):\n        return E()"),
        ("3001", "class E:\n    def __eq__(self, o):\n        return True\n"
                 "class Solution:\n    def maxPair(self, nums):\n        return E()"),
        ("3001", "import sys\nsys.exit(0)\nclass Solution:\n    def maxPair(self, nums):\n        return [1]"),
        ("3001", "import os\nos._exit(0)"),
        ("3001", "class Solution:\n    def maxPair(self, nums):\n        import os\n        os._exit(0)"),
        ("3001", "import builtins\nbuiltins.list.__eq__ = lambda a, b: True\n"
                 "class Solution:\n    def maxPair(self, nums):\n        return [0]"),
        ("abc001_a", "import sys\nsys.exit(0)"),
        ("abc001_a", "import os\nos._exit(0)"),
        ("abc001_a", "print('PASS')\nprint('3')"),
        ("abc001_a", "import sys\nsys.stdout.write = lambda s: 0\nprint(3)"),
        ("abc001_a", "import os\nos.write(1, b'3\\n')"),  # not sys.stdout: not captured, as officially
        ("2000", "class Solution:\n    def addK(self, nums, k):\n        import builtins\n"
                 "        builtins.print = None\n        return float('nan')"),
    ]
    verdicts = _score(sandbox, "lcb-codegen", attacks)
    assert [v.status for v in verdicts if v.status == "passed"] == [], [v.message for v in verdicts]


def test_codegen_timeout(sandbox):
    verdicts = _score(sandbox, "lcb-codegen", [("2000", "class Solution:\n    def addK(self, nums, k):\n"
                                                        "        while True:\n            pass")])
    assert verdicts[0].status == "timeout" and verdicts[0].failed_at == 0


def test_execution_scoring(sandbox):
    answers = [
        ("sample_0", "[ANSWER]\nassert addK(nums = [1, 2], k = 3) == [4, 5]\n[/ANSWER]"),
        ("sample_0", "[ANSWER]\nassert addK(nums = [1, 2], k = 3) == (4, 5)\n[/ANSWER]"),
        ("sample_0", "[ANSWER]\nassert addK(nums = [1, 2], k = 3) == addK(nums = [1, 2], k = 3)\n[/ANSWER]"),
        ("sample_1", "[ANSWER]\nassert countVowels(s = 'banana') == 3\n[/ANSWER]"),
        ("sample_1", "[ANSWER]\nassert countVowels(s = 'banana') == type('E', (), {'__eq__': lambda s, o: True})()"
                     "\n[/ANSWER]"),
        ("sample_1", "[ANSWER]\nassert countVowels(s = 'banana') == __import__('os')._exit(0)\n[/ANSWER]"),
        ("sample_2", "[MONOLOGUE]\n[L5] ...\n[ANSWER]\nassert f(joinWords(words = ['b', 'a'])) == \"a-b\"\n[/ANSWER]"),
        ("sample_2", "[ANSWER]\nassert joinWords(words = ['b', 'a']) == 'b-a'\n[/ANSWER]"),
    ]
    verdicts = _score(sandbox, "lcb-execution", answers, mode="monologue", raw=True)
    assert [v.status for v in verdicts] == ["passed", "failed", "failed", "passed", "failed", "error", "passed",
                                            "failed"]


def test_testoutput_scoring(sandbox):
    answers = [
        ("2000_0", "```python\nassert addK([1, 2], 3) == [4, 5]\n```"),
        ("2000_0", "assert addK([1, 2], 3) == [4, 6]"),
        ("2000_1", "assert addK([], 3) == []"),
        ("2000_1", "assert addK([], 3) == type('E', (list,), {'__eq__': lambda s, o: True})()"),
        ("3100_0", "assert joinWords(['b', 'a']) == 'a-b'"),
        ("3100_0", "nothing"),
    ]
    verdicts = _score(sandbox, "lcb-testoutput", answers, raw=True)
    assert [v.status for v in verdicts] == ["passed", "failed", "passed", "failed", "passed", "failed"]


# ---- official output files, per-difficulty pass@1 ------------------------------------------------------------------

def test_read_predictions_official_formats(tmp_path):
    bench = LiveCodeBench("lcb-codegen")
    problems = bench.load(FIXTURES)
    path = tmp_path / "codegeneration_10_0.2.json"
    path.write_text(json.dumps([{"question_id": "2000", "code_list": [ADD_K, ""], "output_list": ["r1", "r2"]},
                                {"question_id": "abc001_a", "output_list": [f"```python\n{SUM}\n```"]}]))
    assert bench.read_predictions(path, problems) == {
        "2000": [{"extracted": ADD_K}, {"extracted": ""}], "abc001_a": [{"raw": f"```python\n{SUM}\n```"}]}
    listed = tmp_path / "custom.json"
    listed.write_text(json.dumps([[f"c{i}"] for i in range(5)]))
    assert bench.read_predictions(listed, problems)["3001"] == [{"extracted": "c2"}]
    ex = LiveCodeBench("lcb-execution")
    path = tmp_path / "codeexecution.json"
    path.write_text(json.dumps([{"id": "sample_1", "pred_list": ["3"], "output_list": ["raw"]}]))
    assert ex.read_predictions(path, ex.load(FIXTURES)) == {"sample_1": [{"extracted": "3"}]}
    to = LiveCodeBench("lcb-testoutput")
    path = tmp_path / "testoutputprediction.json"
    path.write_text(json.dumps([{"question_id": "2000", "test_id": 1, "pred_list": ["assert addK([], 3) == []"]}]))
    assert to.read_predictions(path, to.load(FIXTURES)) == {"2000_1": [{"extracted": "assert addK([], 3) == []"}]}
    other = tmp_path / "cruxeval.json"
    other.write_text(json.dumps({"sample_0": ["x"]}))
    assert ex.read_predictions(other, []) is None
    assert ex.read_predictions(tmp_path / "x.jsonl", []) is None


def test_summary_extras_pass_at_1_per_difficulty():
    bench = LiveCodeBench("lcb-codegen")
    problems = bench.load(FIXTURES)  # easy: abc001_a, 3001; medium: 2000, 1900_c; hard: abc002_b
    first = [{"task_id": "abc001_a", "sample": 0, "status": "passed"},
             {"task_id": "abc001_a", "sample": 1, "status": "failed"},
             {"task_id": "3001", "sample": 0, "status": "passed"},
             {"task_id": "3001", "sample": 1, "status": "passed"},
             {"task_id": "2000", "sample": 0, "status": "failed"},
             {"task_id": "abc002_b", "sample": 0, "status": "passed"}]
    assert bench.summary_extras(problems, first) == {"difficulty": {
        "easy": {"pass@1": 0.75, "tasks": 2}, "medium": {"pass@1": 0.0, "tasks": 1},
        "hard": {"pass@1": 1.0, "tasks": 1}}}


def test_failed_test_hides_private_tests(sandbox):
    bench = LiveCodeBench("lcb-codegen")
    problem = next(p for p in bench.load(FIXTURES) if p.task_id == "2000")
    wrong = ADD_K.replace("return [x + k for x in nums]", "return nums")
    verdict = bench.verdicts(sandbox, [(problem, Extracted(wrong))])[0]["main"]
    assert bench.failed_test(problem, "main", verdict) == "assert Solution().addK([1, 2, 3], 1) == [2, 3, 4]"
    hidden = ADD_K.replace("return [x + k for x in nums]", "return [x + k for x in nums] if nums else [1]")
    verdict = bench.verdicts(sandbox, [(problem, Extracted(hidden))])[0]["main"]
    assert bench.failed_test(problem, "main", verdict).startswith("# hidden test 2 of 3 failed")


# ---- agreement with the official scorer (a separate virtualenv) ----------------------------------------------------

OFFICIAL_PYTHON = Path(os.environ.get("LCB_OFFICIAL_PYTHON", "/tmp/lcb-official/bin/python"))


@pytest.mark.slow
def test_agreement_with_official_scorer():
    """Needs ``python3 -m venv /tmp/lcb-official && /tmp/lcb-official/bin/pip install nvidia-livecodebench``
    (or ``$LCB_OFFICIAL_PYTHON``)."""
    if not OFFICIAL_PYTHON.is_file() or shutil.which(str(OFFICIAL_PYTHON)) is None:
        pytest.skip(f"no official LiveCodeBench scorer at {OFFICIAL_PYTHON}")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lcb_official_agreement.py"), "--python",
                           str(OFFICIAL_PYTHON)], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
