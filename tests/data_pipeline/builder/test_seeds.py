"""Seeds (step 1) and teacher-free NL records (step 2): what the builder promises about the seeds it emits."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path

import pytest

from data_pipeline.builder.nl import nl_record, nl_records, nl_skip_reason
from data_pipeline.builder.seeds import (
    STDLIB_MODULES,
    SeedReport,
    canonical_source,
    normalised_ast_hash,
    select_seeds,
    stdlib_corpus,
)
from data_pipeline.builder.types import Seed
from data_pipeline.errors import UserError


def _module(tmp_path: Path, code: str, name: str = "mod.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def _select(tmp_path: Path, code: str, **kw) -> SeedReport:
    kw.setdefault("min_lines", 1)
    return select_seeds([_module(tmp_path, code)], **kw)


def _by_entry(report: SeedReport) -> dict[str, Seed]:
    return {s.entry: s for s in report.seeds}


def _reasons(report: SeedReport) -> dict[str, str]:
    return {r["entry"]: r["reason"] for r in report.removed}


def _defines(code: str, entry: str) -> bool:
    namespace: dict = {}
    exec(compile(code, "<seed>", "exec"), namespace)  # defines functions, classes and constants; calls nothing
    return callable(namespace.get(entry))


def test_function_with_helper_and_constant_becomes_a_self_contained_program(tmp_path):
    report = _select(tmp_path, '''
        import math
        import os

        SCALE = 10
        UNUSED = 5


        def _helper(x):
            """Scale one value."""
            return x * SCALE  # a comment that does not survive


        def combine(a, b):
            """Scale the first number and add the floor of the second one."""
            total = _helper(a) + math.floor(b)
            return total


        def cwd_plus(p):
            return os.getcwd() + p
    ''')
    seed = _by_entry(report)["combine"]
    assert seed.code == textwrap.dedent('''\
        import math
        SCALE = 10

        def _helper(x):
            return x * SCALE

        def combine(a, b):
            total = _helper(a) + math.floor(b)
            return total''')
    assert seed.doc == "Scale the first number and add the floor of the second one."
    assert seed.params == ("a", "b") and seed.origin == "mod.py:14"
    namespace: dict = {}
    exec(seed.code, namespace)
    assert namespace["combine"](2, 3.7) == 23
    assert _reasons(report)["cwd_plus"] == "disallowed import"


def test_methods_with_self_are_skipped_and_static_ones_lifted(tmp_path):
    report = _select(tmp_path, '''
        class Box:
            LIMIT = 3

            def grow(self, n):
                return self.size + n

            @staticmethod
            def clamp(x, hi):
                return min(x, hi)

            @classmethod
            def double(cls, x):
                return 2 * x

            def shout(self, word):
                return word.upper()

            @property
            def size(self):
                return self.LIMIT
    ''')
    seeds = _by_entry(report)
    assert seeds["clamp"].code == "def clamp(x, hi):\n    return min(x, hi)"
    assert seeds["double"].code == "def double(x):\n    return 2 * x" and seeds["double"].params == ("x",)
    assert seeds["shout"].params == ("word",)  # self unused: lifted without it
    reasons = _reasons(report)
    assert reasons["Box.grow"] == reasons["Box.size"] == "uses self/cls"
    assert all(_defines(s.code, s.entry) for s in report.seeds)


def test_a_lifted_method_whose_name_clashes_is_renamed(tmp_path):
    report = _select(tmp_path, '''
        def pick(x):
            return x


        class Tool:
            @staticmethod
            def pick(xs):
                return pick(xs[0])
    ''')
    seed = _by_entry(report)["Tool_pick"]
    assert seed.code.endswith("def Tool_pick(xs):\n    return pick(xs[0])") and _defines(seed.code, "Tool_pick")


FILTER_CASES = {
    "async": "async def f(x):\n    return x\n",
    "uses self/cls": "class C:\n    def f(self, x):\n        return self.y + x\n",
    "decorated": "import functools\n\n@functools.wraps(len)\ndef f(x):\n    return x\n",
    "generator": "def f(x):\n    yield x\n",
    "no parameters": "def f():\n    return 1\n",
    "only *args/**kwargs": "def f(*args, **kwargs):\n    return args\n",
    "no return value": "def f(xs):\n    xs.sort()\n",
    "global/nonlocal": "COUNT = 0\n\ndef f(x):\n    global COUNT\n    COUNT += x\n    return COUNT\n",
    "unresolved name": "def f(x):\n    return helper(x) + 1\n",
    "disallowed import": "import random\n\ndef f(x):\n    return random.choice(x)\n",
    "unsafe name": "def f(path):\n    return open(path).read()\n",
    "dynamic attribute": "def f(obj, name):\n    return getattr(obj, name)\n",
    "print": "def f(x):\n    print(x)\n    return x\n",
    "too short": "def f(x):\n    return x\n",
    "too long": "def f(x):\n" + "    x += 1\n" * 70 + "    return x\n",
    "compile error": "def f(a, a):\n    return a\n",
}


@pytest.mark.parametrize("reason", sorted(FILTER_CASES))
def test_each_static_filter_fires_on_a_minimal_example(tmp_path, reason):
    report = select_seeds([_module(tmp_path, FILTER_CASES[reason])], min_lines=3 if reason == "too short" else 1)
    assert report.seeds == []
    assert report.counts[f"dropped:{reason}"] == 1
    assert [r["reason"] for r in report.removed] == [reason]


def test_filters_respect_local_rebinding_and_allow_pure_imports(tmp_path):
    report = _select(tmp_path, '''
        from collections import Counter


        def tally(words, id=0):
            counts = Counter(words)
            input = counts.most_common(1)
            return input[0][1] + id
    ''')
    assert [s.entry for s in report.seeds] == ["tally"]


def test_names_mutated_or_rebound_at_module_level_are_not_sliced(tmp_path):
    report = _select(tmp_path, '''
        import sys

        TABLE = {}
        for _k in range(3):
            TABLE[_k] = _k * _k
        if sys.platform == "win32":
            SEP = "\\\\"
        else:
            SEP = "/"


        def square(k):
            return TABLE[k]


        def join(a, b):
            return a + SEP + b
    ''')
    assert report.seeds == []
    assert {r["entry"]: r["detail"] for r in report.removed} == {"square": "TABLE", "join": "SEP"}


def test_what_runs_at_definition_time_must_be_bound_before_it(tmp_path):
    report = _select(tmp_path, '''
        from _accel import *

        _orig = fast  # the accelerated `fast` of the star import, not the def below


        def fast(x):
            return _orig(x) + 1


        def scale(x):
            return x * LATE  # read at call time: defined later is fine

        LATE = 2
    ''')
    assert [s.entry for s in report.seeds] == ["scale"] and _defines(report.seeds[0].code, "scale")
    assert {r["entry"]: (r["reason"], r["detail"]) for r in report.removed} == {"fast": ("unresolved name", "fast")}


def test_pure_python_fallbacks_of_accelerator_imports_are_sliced(tmp_path):
    report = _select(tmp_path, '''
        def _fast_sum(xs):
            total = 0
            for x in xs:
                total += x
            return total

        try:
            from _accel import _fast_sum
        except ImportError:
            pass

        try:
            from collections import namedtuple as _nt
            Pair = _nt("Pair", "a b")
        except ImportError:
            Pair = tuple


        def mean_pair(xs):
            return Pair(_fast_sum(xs), len(xs))
    ''')
    seed = _by_entry(report)["mean_pair"]
    assert "_accel" not in seed.code and "from collections import namedtuple as _nt" in seed.code
    namespace: dict = {}
    exec(seed.code, namespace)
    assert namespace["mean_pair"]([1, 2, 3]) == (6, 3)


def test_entry_annotations_are_kept_when_they_resolve(tmp_path):
    report = _select(tmp_path, '''
        from typing import List, TYPE_CHECKING

        if TYPE_CHECKING:
            from mylib import Thing


        def _norm(x: float) -> float:
            return abs(x)


        def total(xs: List[float], scale: "Thing", extra: Thing = None) -> float:
            return sum(_norm(x) for x in xs)
    ''')
    seed = _by_entry(report)["total"]
    assert "from typing import List" in seed.code
    assert "def total(xs: List[float], scale: 'Thing', extra=None) -> float:" in seed.code
    assert "def _norm(x):" in seed.code and _defines(seed.code, "total")


def test_renamed_and_reformatted_copy_is_an_exact_duplicate(tmp_path):
    original = '''
        LIMIT = 100


        def clip_all(values, low):
            """Clip every value into [low, LIMIT]."""
            out = []
            for v in values:
                out.append(max(low, min(v, LIMIT)))
            return out
    '''
    copy = '''
        CAP=100
        def bound_each( xs , floor_value ) :
            # same thing, other names and layout
            result=[ ]
            for item in xs :
                result.append( max( floor_value ,min(item,CAP) ) )
            return result
    '''
    assert normalised_ast_hash(textwrap.dedent(original)) == normalised_ast_hash(textwrap.dedent(copy))
    assert canonical_source(textwrap.dedent(copy)).startswith("_v0 = 100\n\ndef _v1(_v2, _v3):")
    report = select_seeds([_module(tmp_path, original, "a.py"), _module(tmp_path, copy, "b.py")])
    assert [s.entry for s in report.seeds] == ["clip_all"]
    assert report.counts["exact_duplicates"] == 1
    (dup,) = [r for r in report.removed if r["reason"] == "exact duplicate"]
    assert dup["entry"] == "bound_each" and dup["duplicate_of"] == report.seeds[0].id


def test_a_semantic_change_is_not_an_exact_duplicate():
    assert normalised_ast_hash("def f(a, b):\n    return a - b\n") != normalised_ast_hash(
        "def f(a, b):\n    return b - a\n")
    assert normalised_ast_hash("def f(x):\n    return x + 1\n") != normalised_ast_hash(
        "def f(x):\n    return x + 2\n")


NEAR = '''
    def scores(rows, weight):
        total = 0
        best = None
        for name, value in rows:
            if value < 0:
                continue
            score = value * weight + len(name)
            total += score
            if best is None or score > best[1]:
                best = (name, score)
        return total, best
'''


def test_copy_with_one_changed_line_is_a_near_duplicate(tmp_path):
    changed = NEAR.replace("score = value * weight + len(name)", "score = value * weight * 2 + len(name)")
    assert changed != NEAR
    report = select_seeds([_module(tmp_path, NEAR, "a.py"), _module(tmp_path, changed, "b.py")])
    assert len(report.seeds) == 1 and report.counts["near_duplicates"] == 1
    (dup,) = [r for r in report.removed if r["reason"] == "near duplicate"]
    assert dup["origin"] == "b.py:2" and dup["duplicate_of"] == report.seeds[0].id
    # near-duplicate removal can be turned off
    assert len(select_seeds([tmp_path / "a.py", tmp_path / "b.py"], near_dup_threshold=1.1).seeds) == 2


def test_jsonl_snippets_and_a_bad_line_names_file_and_line(tmp_path):
    good = {"code": NEAR, "id": "snip-1"}
    path = tmp_path / "snips.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"code": "def broken(:"}) + "\n")
    report = select_seeds([path])
    assert report.counts["snippets"] == 2 and report.counts["parse_errors"] == 1
    assert report.seeds[0].origin == "snip-1:2"
    gz = tmp_path / "snips.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert select_seeds([gz]).seeds == report.seeds
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n")
    with pytest.raises(UserError, match=r"snips\.jsonl:3: not valid JSON"):
        select_seeds([path])
    path.write_text(json.dumps({"id": 1}) + "\n")
    with pytest.raises(UserError, match=r"snips\.jsonl:1: .*\"code\""):
        select_seeds([path])
    with pytest.raises(UserError, match="no such file"):
        select_seeds([tmp_path / "missing.jsonl"])


def test_directories_are_walked_in_order_and_limit_takes_a_prefix(tmp_path):
    for i, name in enumerate(["b/two.py", "a/one.py", "a/sub/three.py"]):
        path = tmp_path / "corpus" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def f{i}(x):\n    y = x * {i + 2}\n    return y - {i}\n")
    full = select_seeds([tmp_path / "corpus"])
    assert [s.origin for s in full.seeds] == ["a/one.py:1", "a/sub/three.py:1", "b/two.py:1"]
    assert select_seeds([tmp_path / "corpus"], limit=2).seeds == full.seeds[:2]
    assert full.counts["files"] == 3 and full.counts["kept"] == 3


@pytest.fixture(scope="module")
def stdlib_report() -> SeedReport:
    return select_seeds(stdlib_corpus())


def test_stdlib_corpus_yields_many_self_contained_seeds(stdlib_report):
    report = stdlib_report
    assert len(stdlib_corpus()) == len(STDLIB_MODULES)
    # 129 on CPython 3.11.7 with the default bounds; the floor leaves room for other interpreter versions.
    assert len(report.seeds) >= 100
    # entries sharing a large helper are not near duplicates; the max-heap twins of the same code are
    assert {"heappop", "heapreplace"} <= {s.entry for s in report.seeds}
    assert {r["entry"] for r in report.removed if r["reason"] == "near duplicate"} >= {"_heappop_max"}
    assert report.counts["kept"] == len(report.seeds)
    accounted = sum(v for k, v in report.counts.items() if k.startswith("dropped:"))
    accounted += report.counts["exact_duplicates"] + report.counts["near_duplicates"] + report.counts["kept"]
    assert accounted == report.counts["candidates"] and report.counts["parse_errors"] == 0
    assert len({s.id for s in report.seeds}) == len(report.seeds)
    for seed in report.seeds:
        assert _defines(seed.code, seed.entry), seed.origin
        assert 3 <= sum(1 for line in seed.code.splitlines() if line.strip()) <= 60 and len(seed.code) <= 3000


def test_seed_selection_is_deterministic(stdlib_report):
    again = select_seeds(stdlib_corpus(["colorsys", "heapq", "calendar"]))
    by_id = {s.id: s for s in stdlib_report.seeds}
    assert again.seeds and all(by_id[s.id] == s for s in again.seeds)
    assert [s.to_json() for s in again.seeds] == [s.to_json() for s in select_seeds(
        stdlib_corpus(["colorsys", "heapq", "calendar"])).seeds]
    with pytest.raises(UserError, match="math"):
        stdlib_corpus(["math"])


def test_nl_record_from_a_docstring(tmp_path):
    report = _select(tmp_path, '''
        def _clean(word):
            return word.strip().lower()


        def count_words(text, word):
            """Return how many times ``word`` occurs in *text*, ignoring case.

            Words are separated by whitespace; see :func:`str.split`.

            .. versionadded:: 3.2

            >>> count_words("a A b", "a")
            2
            >>> count_words("", "a")
            0
            """
            target = _clean(word)
            return sum(1 for w in text.split() if _clean(w) == target)


        def shout(text):
            """Make it loud."""
            return text.upper() + "!"
    ''')
    seeds = _by_entry(report)
    record = nl_record(seeds["count_words"])
    assert record == {
        "nl": "Write a Python function `count_words(text, word)` that returns how many times `word` occurs in "
              "text, ignoring case.\nWords are separated by whitespace; see `str.split`.\n"
              "For example, `count_words(\"a A b\", \"a\")` should return `2`, and `count_words(\"\", \"a\")` "
              "should return `0`.",
        "fwd_mnl": "", "bwd_mnl": "",
        "response": "```python\n" + seeds["count_words"].code + "\n```",
    }
    assert record["response"].startswith("```python\ndef _clean(word):")  # the helper comes along
    assert nl_record(seeds["shout"]) is None and nl_skip_reason(seeds["shout"]) == "short docstring"
    records, counts = nl_records(report.seeds)
    assert records == [record] and counts == {"records": 1, "skipped:no docstring": 1,
                                              "skipped:short docstring": 1}


def test_nl_records_on_the_stdlib_seeds(stdlib_report):
    records, counts = nl_records(stdlib_report.seeds)
    assert len(records) >= 50 and counts["records"] == len(records)
    for record in records:
        assert record["nl"].startswith("Write a Python function `") and ">>>" not in record["nl"]
        assert record["response"].startswith("```python\n") and record["response"].endswith("\n```")


def test_nl_markup_sections_and_noun_phrase_summaries():
    def nl(entry: str, doc: str) -> str:
        seed = Seed(id="x", code=f"def {entry}(xs, w):\n    return xs", entry=entry, params=("xs", "w"),
                    origin="o", doc=textwrap.dedent(doc))
        return nl_record(seed)["nl"]

    assert nl("clamp_sum", """\
        Sum of the values after clamping each into a range.

        :param xs: the numbers, any
            iterable.
        :type xs: list
        :returns: an int or float.
        """) == ("Write a Python function `clamp_sum(xs, w)` described as follows: Sum of the values after clamping "
                 "each into a range.\n- `xs`: the numbers, any iterable.\n- Returns: an int or float.")
    assert nl("wmean", """\
        Compute the **weighted** mean of ``xs`` and return it.

        Args:
            xs (list[float]): the values; must not
                be empty.
            w: weights, same length.

        Raises:
            ValueError: if ``xs`` is empty.

        Example::

            >>> wmean([1, 3], w=[1, 1])
            2.0
            >>> wmean(data, w)
            1.5
        """) == ("Write a Python function `wmean(xs, w)` that computes the weighted mean of `xs` and returns it.\n"
                 "Arguments:\n- `xs`: the values; must not be empty.\n- `w`: weights, same length.\n"
                 "Raises:\n- `ValueError`: if `xs` is empty.\n"
                 "For example, `wmean([1, 3], w=[1, 1])` should return `2.0`.")


FORGE = '''
import operator


def f(x):
    try:
        raise ValueError("x")
    except ValueError as e:
        tb = e.__traceback__
    frame = operator.attrgetter("tb_frame")(tb)
    for _ in range(12):
        if frame is None:
            break
        names = operator.attrgetter("f_locals")(frame)
        if "emit" in names and "P" in names:
            names["emit"](["trace", {"output": "42", "raised": None, "truncated": False, "steps": []}])
            while True:
                pass
        frame = operator.attrgetter("f_back")(frame)
    return x + 1
'''


def test_a_program_that_forges_its_own_trace_works_in_the_sandbox_but_is_never_a_seed(tmp_path):
    """The attack: the program shares its process with the trusted tracer, walks from a traceback to the
    driver's frame and sends a made-up trace (output 42 for f(1), which returns 2).  The sandbox cannot stop
    that (it is the process's own data), so the static filter must: it drops the program, and each way in
    (attrgetter, a dunder attribute, a frame attribute's name as a string) is dropped on its own too."""
    from data_pipeline.builder.trace import trace_calls
    from sandbox import Sandbox

    forged = Seed(id="forge", code=FORGE, entry="f", params=("x",), origin="attack")
    with Sandbox(workers=1) as sb:
        assert trace_calls(sb, forged, ["1"], timeout_s=2.0)[0].output == "42"  # the forgery works in-process
    (tmp_path / "forge.py").write_text(FORGE)
    report = select_seeds([tmp_path / "forge.py"], min_lines=1)
    assert report.counts["kept"] == 0 and report.removed[0]["reason"] == "unsafe name"
    variants = {
        "attrgetter": "from operator import attrgetter\n\ndef f(x):\n    get = attrgetter('real')\n    return get(x)\n",
        "methodcaller": "import operator\n\ndef f(x):\n    return operator.methodcaller('bit_length')(x)\n",
        "dunder": "def f(x):\n    try:\n        return 1 // x\n    except ZeroDivisionError as e:\n"
                  "        return e.__traceback__\n",
        "frame name": "def f(x):\n    key = 'f_back'\n    return key + str(x)\n",
    }
    for name, code in variants.items():
        (tmp_path / f"{name}.py").write_text(code)
        report = select_seeds([tmp_path / f"{name}.py"], min_lines=1)
        assert report.counts["kept"] == 0, name
        assert report.removed[0]["reason"] == "unsafe name", (name, report.removed)
    (tmp_path / "fine.py").write_text("def f(x):\n    return type(x).__name__ + str(len(str(x)))\n")
    assert select_seeds([tmp_path / "fine.py"], min_lines=1).counts["kept"] == 1
