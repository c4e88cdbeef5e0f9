"""Decontamination: benchmark functions planted verbatim, renamed and reformatted among ordinary code are all
removed with the benchmark id they came from; ordinary code is kept; CRUXEval input-output pairs are caught; the
report says what was loaded."""

from __future__ import annotations

import ast
import gzip
import io
import json
import shutil
import sysconfig
import tokenize
from pathlib import Path

import pytest
from rapidfuzz import fuzz, utils

from data_pipeline.builder import decontam
from data_pipeline.builder.decontam import Decontaminator, Match, resolve_sources, similarity_text

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "cruxeval" / "cruxeval.jsonl").is_file(),
                                  reason="../shared/data is not present")

ORDINARY = [
    '''def moving_average(values, window):
    """Mean of each run of `window` consecutive values."""
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out
''',
    '''def parse_key_values(text, sep="=", comment="#"):
    result = {}
    for raw in text.splitlines():
        line = raw.split(comment, 1)[0].strip()
        if not line or sep not in line:
            continue
        key, value = line.split(sep, 1)
        result[key.strip().lower()] = value.strip()
    return result
''',
    '''def run_length_decode(pairs):
    chunks = []
    for count, ch in pairs:
        if count < 0:
            raise ValueError("negative count")
        chunks.append(ch * count)
    return "".join(chunks)
''',
    '''def transpose_ragged(rows, fill=None):
    width = max((len(r) for r in rows), default=0)
    return [[r[j] if j < len(r) else fill for r in rows] for j in range(width)]
''',
    '''def histogram_buckets(samples, lo, hi, nbuckets):
    counts = [0] * nbuckets
    span = (hi - lo) / nbuckets
    for x in samples:
        if lo <= x < hi:
            counts[int((x - lo) // span)] += 1
    return counts
''',
]


def stdlib_functions(module: str) -> list[tuple[str, str]]:
    path = Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"
    src = path.read_text()
    return [(f"{module}:{n.lineno}", ast.get_source_segment(src, n)) for n in ast.walk(ast.parse(src))
            if isinstance(n, ast.FunctionDef)]


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def benchmark_code() -> dict[str, str]:
    """The planted programs, read straight from the release files."""
    he = {r["task_id"]: r["prompt"] + r["canonical_solution"]
          for r in read_jsonl(SHARED / "humaneval" / "HumanEval.jsonl.gz")}
    mbpp = {f"Mbpp/{r['task_id']}": r["code"] for r in read_jsonl(SHARED / "mbpp" / "mbpp.jsonl")}
    mbppplus = {r["task_id"]: r["prompt"] + r["canonical_solution"]
                for r in read_jsonl(SHARED / "mbppplus" / "MbppPlus-v0.2.0.jsonl.gz")}
    crux = {f"cruxeval/{r['id']}": r["code"] for r in read_jsonl(SHARED / "cruxeval" / "cruxeval.jsonl")}
    reval = {f"reval/{r['task_id']}": r["code"] for r in read_jsonl(SHARED / "reval" / "DREval_data.jsonl")}
    picks = {"HumanEval/12": he, "HumanEval/80": he, "HumanEval/129": he, "Mbpp/3": mbpp, "Mbpp/20": mbpp,
             "Mbpp/130": mbppplus, "cruxeval/sample_7": crux, "cruxeval/sample_100": crux,
             "cruxeval/sample_450": crux, "reval/DREval/100": reval}
    return {bid: source[bid] for bid, source in picks.items()}


def renamed(code: str) -> str:
    """Every name the program binds (functions, classes, parameters, locals) renamed; imports and builtins kept."""
    tree = ast.parse(code.replace("\r\n", "\n"))
    imported = {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names}
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    bound |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    table = {name: f"renamed_{i}_{name[::-1]}" for i, name in enumerate(sorted(bound - imported - {"self"}))}
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            n.id = table.get(n.id, n.id)
        elif isinstance(n, ast.arg):
            n.arg = table.get(n.arg, n.arg)
        elif isinstance(n, ast.FunctionDef | ast.ClassDef):
            n.name = table.get(n.name, n.name)
    out = ast.unparse(tree)
    assert out != ast.unparse(ast.parse(code.replace("\r\n", "\n")))
    return out


def reformatted(code: str) -> str:
    """Same tokens, other layout: double quotes for single-quoted strings, a comment on every logical line,
    spaces inside brackets and before commas, blank lines between statements."""
    code = code.replace("\r\n", "\n")
    lines = code.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    edits: list[tuple[int, int, str]] = []
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        start = offsets[tok.start[0] - 1] + tok.start[1]
        end = offsets[tok.end[0] - 1] + tok.end[1]
        if tok.type == tokenize.STRING and tok.string.startswith("'") and not tok.string.startswith("'''") \
                and '"' not in tok.string and "\\" not in tok.string:
            edits.append((start, end, '"' + tok.string[1:-1] + '"'))
        elif tok.type == tokenize.OP and tok.string in "([":
            edits.append((start, end, tok.string + " "))
        elif tok.type == tokenize.OP and tok.string in ")]":
            edits.append((start, end, " " + tok.string))
        elif tok.type == tokenize.OP and tok.string == ",":
            edits.append((start, end, " , "))
        elif tok.type == tokenize.NEWLINE:
            edits.append((start, start, "  # reformatted\n"))
    for start, end, text in sorted(edits, reverse=True):
        code = code[:start] + text + code[end:]
    ast.parse(code)
    return code


@pytest.fixture(scope="module")
def decon() -> Decontaminator:
    return Decontaminator(SHARED)


@needs_shared
def test_loads_every_benchmark_from_a_full_data_dir(decon):
    assert decon.missing == []
    programs = {k: v["programs"] for k, v in decon.loaded.items()}
    assert programs == {"humaneval": 164, "humaneval+": 164, "mbpp": 974, "mbpp-sanitized": 427, "mbpp+": 378,
                        "cruxeval": 800, "reval": 154}
    assert all(v["unparsed"] == 0 and v["functions"] >= v["programs"] for v in decon.loaded.values())
    assert json.loads(json.dumps(decon.describe()))["loaded"]["cruxeval"]["programs"] == 800


@needs_shared
def test_planted_functions_are_removed_with_their_benchmark_id(decon):
    ordinary = [(f"ordinary/{i}", code) for i, code in enumerate(ORDINARY)]
    ordinary += stdlib_functions("colorsys") + stdlib_functions("textwrap")
    planted: dict[str, str] = {}
    items = list(ordinary)
    for bid, code in benchmark_code().items():
        for variant, text in (("verbatim", code), ("renamed", renamed(code)), ("reformatted", reformatted(code)),
                              ("renamed+reformatted", reformatted(renamed(code))),
                              ("among others", ORDINARY[0] + "\n\n" + renamed(code) + "\n\n" + ORDINARY[1])):
            item_id = f"{bid}:{variant}"
            planted[item_id] = bid
            items.insert(len(items) // 2, (item_id, text))
    report = decon.scan(items)

    got = {r["id"]: r for r in report.removed}
    assert {i: r["benchmark_id"] for i, r in got.items()} == planted
    assert all(r["kind"] == "ast" and r["score"] == 1.0 for r in got.values())
    assert report.kept == [i for i, _ in items if i not in planted]
    assert set(report.kept) == {i for i, _ in ordinary}
    assert sum(report.histogram) == len(items)
    assert report.removed_per_benchmark == {"cruxeval": 15, "humaneval": 15, "mbpp": 15, "reval": 5}
    assert report.removed_per_kind == {"ast": len(planted)}
    assert "removed 50" in report.summary()


@needs_shared
def test_an_edited_copy_is_caught_by_edit_similarity(decon):
    code = benchmark_code()["HumanEval/129"]
    tree = ast.parse(code)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef))
    fn.body.insert(len(fn.body) // 2, ast.parse("steps_taken = 0").body[0])
    fn.body.insert(len(fn.body) - 1, ast.parse("steps_taken += 1").body[0])
    edited = ast.unparse(ast.fix_missing_locations(tree))
    assert decon.match_ast(edited) is None
    match = decon.check(edited)
    assert match is not None and match.kind == "similarity" and match.benchmark_id == "HumanEval/129"
    assert decon.threshold <= match.score < 1.0
    # the token prefilter finds what scoring every pair finds
    exhaustive = Decontaminator(benchmarks=decon.benchmarks, shortlist=None)
    assert exhaustive.best_similarity([edited]) == decon.best_similarity([edited])
    # the threshold is configurable
    strict = Decontaminator(benchmarks=decon.benchmarks, threshold=min(1.0, match.score + 0.01))
    assert strict.check(edited) is None
    assert strict.scan([("x", edited)]).kept == ["x"]


@needs_shared
def test_cruxeval_input_output_pairs(decon):
    # sample_0: f([1, 1, 3, 1, 3, 1]) == [(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]
    out = "[(4, 1), (4, 1), (4, 1), (4, 1), (2, 3), (2, 3)]"
    assert decon.check_io("[1, 1, 3, 1, 3, 1]", out) == Match("cruxeval/sample_0", "io", 1.0)
    assert decon.match_io("[1,1,3,1,3,1]", out.replace(" ", "")) == Match("cruxeval/sample_0", "io", 1.0)
    assert decon.check_io("f([1, 1, 3, 1, 3, 1])", out) is not None          # a whole call works too
    # sample_100: dict order, quotes and spacing do not matter
    assert decon.check_io('{1: "b", "1": "b"}, [1]', '{"1": "b"}') == Match("cruxeval/sample_100", "io", 1.0)
    assert decon.check_io("[1, 1, 3, 1, 3, 1]", "[(4, 1)]") is None
    assert decon.check_io("[]", "[]") is None                                   # too trivial to mean anything
    report = decon.scan([("mono/1", ORDINARY[2], [("'x', 3", "'xxx'"), ("[1, 1, 3, 1, 3, 1]", out)]),
                         ("mono/2", ORDINARY[2], [("'x', 3", "'xxx'")])])
    assert report.removed == [{"id": "mono/1", "benchmark_id": "cruxeval/sample_0", "kind": "io", "score": 1.0}]
    assert report.kept == ["mono/2"]


@needs_shared
def test_tiny_functions_are_left_alone(decon):
    """Under ``min_nodes`` AST nodes and ``min_chars`` characters nothing matches: ``operator.add`` is
    HumanEval/53 verbatim, and such functions carry no benchmark-specific content."""
    assert decon.check("def add(x: int, y: int):\n    return x + y\n") is None
    assert decon.best_similarity(["def add(x, y):\n    return x + y\n"]) == [(0.0, None)]


@needs_shared
def test_a_data_dir_missing_benchmarks_says_what_loaded(tmp_path):
    (tmp_path / "cruxeval").mkdir()
    shutil.copy(SHARED / "cruxeval" / "cruxeval.jsonl", tmp_path / "cruxeval" / "cruxeval.jsonl")
    decon = Decontaminator(tmp_path)
    assert list(decon.loaded) == ["cruxeval"]
    assert decon.loaded["cruxeval"]["programs"] == 800
    assert decon.missing == ["humaneval", "humaneval+", "mbpp", "mbpp-sanitized", "mbpp+", "reval"]
    code = benchmark_code()
    report = decon.scan([("he", code["HumanEval/12"]), ("crux", renamed(code["cruxeval/sample_450"]))])
    assert report.kept == ["he"]                                   # HumanEval was not loaded
    assert report.removed[0]["benchmark_id"] == "cruxeval/sample_450"
    assert report.missing == decon.missing and list(report.loaded) == ["cruxeval"]
    assert "not found: humaneval" in report.summary()


def test_without_a_data_dir_the_bundled_copies_are_used(tmp_path, monkeypatch):
    monkeypatch.delenv(decontam.DATA_ENV, raising=False)
    monkeypatch.setattr(decontam, "DEFAULT_DATA_DIR", tmp_path / "no-cache")
    found = resolve_sources()
    assert found["cruxeval"] == decontam.BUNDLED_DATA_DIR / "cruxeval" / "cruxeval.jsonl"
    assert found["humaneval+"] == decontam.BUNDLED_DATA_DIR / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    assert found["cruxeval"].is_file() and found["humaneval+"].is_file()
    assert found["reval"] is None and found["mbpp"] is None
    # $SEMCODER_DATA_DIR, when set, is the only place looked at
    monkeypatch.setenv(decontam.DATA_ENV, str(tmp_path))
    assert set(resolve_sources().values()) == {None}
    assert resolve_sources(tmp_path / "other") == dict.fromkeys(decontam.BENCHMARK_FILES)


def test_bundled_copies_catch_planted_functions():
    decon = Decontaminator(decontam.BUNDLED_DATA_DIR)
    assert set(decon.loaded) == {"cruxeval", "humaneval+"}
    crux = read_jsonl(decontam.BUNDLED_DATA_DIR / "cruxeval" / "cruxeval.jsonl")[450]["code"]
    he = next(r for r in read_jsonl(decontam.BUNDLED_DATA_DIR / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz")
              if r["task_id"] == "HumanEval/80")
    report = decon.scan([("a", reformatted(renamed(crux))), ("b", ORDINARY[3]),
                         ("c", renamed(he["prompt"] + he["canonical_solution"]))])
    assert [(r["id"], r["benchmark_id"]) for r in report.removed] == [("a", "cruxeval/sample_450"),
                                                                      ("c", "HumanEval/80")]
    assert report.kept == ["b"]


def test_similarity_text_is_partial_token_sort_ratio():
    pairs = [("def f(X):\n    return 'A' + x  # c", "def g(y): return  \"a\"+y"),
             (ORDINARY[0], ORDINARY[1]), (ORDINARY[2], ORDINARY[2].replace("chunks", "parts"))]
    for a, b in pairs:
        expected = fuzz.partial_token_sort_ratio(a, b, processor=utils.default_process)
        assert fuzz.partial_ratio(similarity_text(a), similarity_text(b)) == pytest.approx(expected)


def test_canonical_values():
    assert decontam.canonical_value("{'b': 1, 'a': {3, 2}}") == decontam.canonical_value('{"a": {2, 3}, "b": 1}')
    assert decontam.canonical_value("1") != decontam.canonical_value("1.0")
    assert decontam.canonical_value("True") != decontam.canonical_value("1")
    assert decontam.canonical_args("'a', 2") == decontam.canonical_args("f('a',2)") == "('a', 2,)"
    assert decontam.canonical_value("x + 1") == "x + 1"      # not a literal: compared as unparsed code
    assert decontam.canonical_args("set([1, 2])") == "(set([1, 2]),)"   # a builtin call is an argument, not f(...)
