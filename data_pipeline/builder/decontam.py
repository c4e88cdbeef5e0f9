"""Decontamination against the evaluation benchmarks (builder step 7).

Seeds are checked before any teacher time is spent, emitted records again at the end.  The benchmarks are read
from their release files (``--data-dir D`` or ``$SEMCODER_DATA_DIR``, laid out like ``shared/data``; otherwise the
download cache ``~/.cache/semcoder/eval-data`` and, for what it lacks, the copies bundled in
``eval/benchmarks/data``, the same resolution as ``eval``): HumanEval and HumanEval+ (prompt + canonical solution,
the whole function), MBPP (full and sanitized) and MBPP+ (the reference code), CRUXEval (``code`` and its
input-output pair) and REval (its programs; only when its files are present).  A missing file is no error: the
report says which benchmarks were loaded, from where, with how many programs and functions.

Three matchers, in the order ``Decontaminator.check`` applies them:

1. ``"ast"``: any function of the candidate (nested ones and methods included) has the same normalised AST as a
   benchmark function: ``seeds.normalised_ast_hash`` of the function without docstrings, comments, annotations
   and formatting, every name it binds renamed canonically (free names such as builtins, imports and helpers it
   calls are kept).  Functions under ``min_nodes`` AST nodes are not matched: ``operator.add`` is HumanEval/53
   verbatim, and trivial methods (``def __len__(self): return len(self._data)``) of REval's ClassEval programs
   recur all over real code.
2. ``"similarity"``: ``fuzz.partial_token_sort_ratio`` (rapidfuzz, the thefuzz scorer Magicoder and the paper
   used, with thefuzz's default lower-case/alphanumeric processing) between each outermost function of the
   candidate and each benchmark function, both without docstrings and comments, on a 0-1 scale; functions under
   ``min_chars`` characters of processed text are not scored (a short needle fits some window of almost any
   benchmark function).  Texts are token-sorted once, so the scorer reduces to ``partial_ratio``; a trigram
   prefilter keeps it at a few ms per candidate (``_SimilarityIndex``).  The best score per item feeds the
   Fig. 5-style histogram.  Scores are per function against ~2,200 benchmark functions, best of all, so clean code
   sits at 0.5-0.7 here, not below 0.4 as in the paper's per-sample figure.
3. ``"io"``: a CRUXEval input-output pair (``check_io``), compared as canonical literal values, for monologue
   records.  Pairs under ``io_min_chars`` characters (``f([]) == []``, ``f('') == ''``: 52 of CRUXEval's 800) say
   nothing about a benchmark answer and would remove many unrelated records, so they are ignored by default.

The exact lower-cased substring test of the bigcode scripts is not implemented: after docstring and comment
removal, a substring copy of a benchmark function is caught by the similarity matcher.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import gzip
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process, utils
from scipy import sparse

from data_pipeline.builder.seeds import normalised_ast_hash

DATA_ENV = "SEMCODER_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "semcoder" / "eval-data"
# eval/benchmarks/data, read as files (data_pipeline must not import eval)
BUNDLED_DATA_DIR = Path(__file__).resolve().parents[2] / "eval" / "benchmarks" / "data"
# source name -> release file inside a data dir laid out like shared/data
BENCHMARK_FILES: dict[str, str] = {
    "humaneval": "humaneval/HumanEval.jsonl.gz",
    "humaneval+": "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
    "mbpp": "mbpp/mbpp.jsonl",
    "mbpp-sanitized": "mbpp/sanitized-mbpp.json",
    "mbpp+": "mbppplus/MbppPlus-v0.2.0.jsonl.gz",
    "cruxeval": "cruxeval/cruxeval.jsonl",
    "reval": "reval/DREval_data.jsonl",
}
# Default edit-similarity threshold (0-1).  The paper's Fig. 5 puts most PyX samples below 0.4 against HumanEval
# and MBPP.  Measured with this module against all seven sources: of the 15,828 functions of the standard library
# (real code nobody wrote for a benchmark) 34 (0.21 %) reach 0.8, 1 reaches 0.9; of the 2,457 benchmark functions of
# >= 25 nodes with two statements inserted, 95.4 % reach 0.8 (92.0 % 0.85, 80.3 % 0.9), and with every int constant
# and `<` changed 95.4 % (the rest are below min_chars).  0.8 keeps false removals near 0.2 % and catches edited
# copies; pure renames score low here (token sorting) and are the AST matcher's job.
DEFAULT_THRESHOLD = 0.8
DEFAULT_MIN_NODES = 25   # smaller functions are not matched by AST (see the module docstring)
DEFAULT_MIN_CHARS = 60   # functions shorter than this (processed text) are left out of the similarity index
DEFAULT_IO_MIN_CHARS = 8
DEFAULT_SHORTLIST = 32  # benchmark functions scored exactly per candidate function after the prefilter
_KIND_ORDER = {"ast": 0, "io": 1, "similarity": 2}


# ----------------------------------------------------------------------------------------------- benchmarks
@dataclasses.dataclass(frozen=True)
class BenchmarkProgram:
    """One benchmark task's code: ``benchmark_id`` ("HumanEval/12", "Mbpp/3", "cruxeval/sample_7",
    "reval/DREval/0"), the source it was read from ("humaneval+"), and CRUXEval's (input, output) pairs."""

    benchmark_id: str
    source: str
    code: str
    io: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class BenchmarkSet:
    """The programs loaded, where each source came from, and the sources that were not found."""

    programs: list[BenchmarkProgram]
    paths: dict[str, str]
    missing: list[str]


def family(benchmark_id: str) -> str:
    """The benchmark a benchmark id belongs to: "humaneval", "mbpp", "cruxeval" or "reval"."""
    return benchmark_id.split("/", 1)[0].lower()


def resolve_sources(data_dir: str | os.PathLike | None = None) -> dict[str, Path | None]:
    """Each source's file: under ``data_dir`` or ``$SEMCODER_DATA_DIR`` if one is given (nothing else then),
    else in the download cache, else among the bundled copies; None where none exists."""
    explicit = data_dir or os.environ.get(DATA_ENV)
    roots = [Path(explicit)] if explicit else [DEFAULT_DATA_DIR, BUNDLED_DATA_DIR]
    found: dict[str, Path | None] = {}
    for name, rel in BENCHMARK_FILES.items():
        found[name] = next((root / rel for root in roots if (root / rel).is_file()), None)
    return found


def _read_records(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.suffix == ".json":
            return json.load(f)
        return [json.loads(line) for line in f if line.strip()]


def _programs(source: str, records: list[dict[str, Any]]) -> list[BenchmarkProgram]:
    out = []
    for r in records:
        if source in ("humaneval", "humaneval+"):
            out.append(BenchmarkProgram(r["task_id"], source, r["prompt"] + r["canonical_solution"]))
        elif source in ("mbpp", "mbpp-sanitized"):
            out.append(BenchmarkProgram(f"Mbpp/{r['task_id']}", source, r["code"]))
        elif source == "mbpp+":
            out.append(BenchmarkProgram(r["task_id"], source, r["prompt"] + r["canonical_solution"]))
        elif source == "cruxeval":
            out.append(BenchmarkProgram(f"cruxeval/{r['id']}", source, r["code"], ((r["input"], r["output"]),)))
        elif source == "reval":
            out.append(BenchmarkProgram(f"reval/{r['task_id']}", source, r["code"]))
    return out


def load_benchmarks(data_dir: str | os.PathLike | None = None) -> BenchmarkSet:
    """Every benchmark program whose release file is found (see ``resolve_sources``)."""
    programs: list[BenchmarkProgram] = []
    paths: dict[str, str] = {}
    missing: list[str] = []
    for source, path in resolve_sources(data_dir).items():
        if path is None:
            missing.append(source)
            continue
        programs.extend(_programs(source, _read_records(path)))
        paths[source] = str(path)
    return BenchmarkSet(programs, paths, missing)


# ------------------------------------------------------------------------------------------ normalisation
def _is_doc(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


class _Strip(ast.NodeTransformer):
    """Drop bare string statements (docstrings), annotations and type comments."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                kept = [s for s in body if not _is_doc(s)]
                setattr(node, name, kept or ([ast.Pass()] if name == "body" else []))
        if isinstance(node, ast.arg):
            node.annotation = None
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
        if hasattr(node, "type_comment"):
            node.type_comment = None
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        new = ast.Pass() if node.value is None else ast.Assign(targets=[node.target], value=self.visit(node.value))
        return ast.copy_location(new, node)


def _parse(code: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():  # benchmark code has "\d"-style escapes: not ours to warn about
            warnings.simplefilter("ignore")
            return ast.parse(code.replace("\r\n", "\n"))
    except (SyntaxError, ValueError, RecursionError):
        return None


def _functions(tree: ast.Module, outermost: bool) -> list[ast.AST]:
    """Every function (``outermost``: those not nested in another function; methods count), or the module itself
    when it defines none."""
    found: list[ast.AST] = []

    def visit(n: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(n):
            is_fn = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_fn and not (outermost and in_function):
                found.append(child)
            visit(child, in_function or is_fn)

    visit(tree, False)
    return found or [tree]


def similarity_text(code: str) -> str:
    """What the scorer compares: lower-cased alphanumeric tokens (thefuzz's processing), sorted.

    ``fuzz.partial_ratio(similarity_text(a), similarity_text(b))`` equals
    ``fuzz.partial_token_sort_ratio(a, b, processor=utils.default_process)``."""
    return " ".join(sorted(utils.default_process(code).split()))


@dataclasses.dataclass(frozen=True)
class _Analysis:
    hashes: list[str]    # per function of at least min_nodes AST nodes: seeds.normalised_ast_hash
    functions: int       # how many functions the code defines (the module counts as one when it defines none)
    texts: list[str]     # per outermost function: similarity_text of the stripped code


def _analyse(code: str, min_nodes: int) -> _Analysis:
    """Hashes of every function of ``code`` and the similarity texts of its outermost ones (the module itself
    stands in when it defines no function; unparseable code is compared as text only)."""
    try:
        tree = _parse(code)
        if tree is None:
            raise ValueError(code)
        tree = _Strip().visit(tree)
        every = _functions(tree, outermost=False)
        sources = {id(fn): ast.unparse(fn) for fn in every}
        return _Analysis(hashes=[normalised_ast_hash(sources[id(fn)]) for fn in every
                                 if sum(1 for _ in ast.walk(fn)) >= min_nodes],
                         functions=len(every),
                         texts=[similarity_text(sources[id(fn)]) for fn in _functions(tree, outermost=True)])
    except (ValueError, SyntaxError, RecursionError):  # unparseable (or too deep to walk): compared as text only
        return _Analysis([], 0, [similarity_text(code)])


def _canonical_literal(value: Any) -> str:
    if isinstance(value, set | frozenset):
        inner = sorted(_canonical_literal(v) for v in value)
        return f"{type(value).__name__}({{{', '.join(inner)}}})"
    if isinstance(value, dict):
        items = sorted(f"{_canonical_literal(k)}: {_canonical_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_canonical_literal(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner},)"
    return repr(value)


def canonical_value(src: str) -> str:
    """A literal's source in one spelling (quotes, spacing, set/dict order); unparsed code if not a literal."""
    src = src.strip()
    try:
        return _canonical_literal(ast.literal_eval(src))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            return ast.unparse(ast.parse(src, mode="eval"))
        except (SyntaxError, ValueError, RecursionError):
            return " ".join(src.split())


def canonical_args(src: str) -> str:
    """An argument list (``"'abc', 3"``, or a whole call ``f('abc', 3)`` of a non-builtin function) in one
    spelling, as a tuple."""
    src = src.strip()
    try:
        expr = ast.parse(src, mode="eval").body
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and not hasattr(builtins, expr.func.id) \
                and not expr.keywords:
            src = ", ".join(ast.unparse(a) for a in expr.args)
    except (SyntaxError, ValueError, RecursionError):
        pass
    return canonical_value(f"({src},)") if src else "()"


# -------------------------------------------------------------------------------------------------- matching
@dataclasses.dataclass(frozen=True)
class Match:
    """A candidate matched ``benchmark_id`` by ``kind`` ("ast" | "similarity" | "io") with ``score`` in 0-1."""

    benchmark_id: str
    kind: str
    score: float


@dataclasses.dataclass
class DecontamReport:
    """What ``scan`` kept and removed (``{id, benchmark_id, kind, score}`` each), the best-similarity histogram
    (10 bins of width 0.1, every item counted once, like the paper's Fig. 5; an item with no function of
    ``min_chars`` counts as 0.0), removals per benchmark family and per matcher, and what was loaded."""

    kept: list[str]
    removed: list[dict[str, Any]]
    histogram: list[int]
    removed_per_benchmark: dict[str, int]
    removed_per_kind: dict[str, int]
    loaded: dict[str, dict[str, Any]]
    missing: list[str]
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: loaded benchmarks and what was removed."""
        loaded = ", ".join(f"{k} {v['programs']}" for k, v in self.loaded.items())
        gone = ", ".join(f"{k} {v}" for k, v in sorted(self.removed_per_benchmark.items())) or "none"
        miss = f"; not found: {', '.join(self.missing)}" if self.missing else ""
        return (f"decontamination: kept {len(self.kept)}, removed {len(self.removed)} ({gone}); "
                f"benchmarks: {loaded}{miss}")


def _trigrams(text: str) -> set[str]:
    return {text[i:i + 3] for i in range(max(len(text) - 2, 1))}


class _SimilarityIndex:
    """Best ``partial_ratio`` of sorted-token texts against the benchmark texts, fast.

    Scoring every pair costs ~20-40 us (rapidfuzz; texts of a few hundred characters): 50 s on one core for 1,000
    standard-library functions against the 2,227 benchmark texts of all seven sources.  So each query first ranks
    all benchmark texts by character-trigram containment (distinct trigrams shared, over the smaller text's count:
    one sparse matrix product for a whole batch), and only the ``shortlist`` best are scored exactly, with
    ``rapidfuzz.process.extractOne``: 1.4 s for the same 1,000.  A near-copy shares most trigrams with its source,
    so it is on the shortlist; for unrelated code the best score found can be a little under the exhaustive one
    (a lower bound; on those 1,000: same removals, same histogram bin for 87 %, 0.013 lower on average).
    ``shortlist=None`` scores every pair (``process.cdist``, exact)."""

    def __init__(self, texts: list[str], shortlist: int | None, workers: int) -> None:
        self.texts, self.shortlist, self.workers = texts, shortlist, workers
        self.vocab: dict[str, int] = {}
        for text in texts:
            for gram in _trigrams(text):
                self.vocab.setdefault(gram, len(self.vocab))
        matrix, self.total = self._encode(texts)
        self.present_t = matrix.T.tocsr()

    def _encode(self, texts: Sequence[str]) -> tuple[sparse.csr_matrix, np.ndarray]:
        rows, cols, total = [], [], np.zeros(len(texts), dtype=np.float32)
        for i, text in enumerate(texts):
            grams = _trigrams(text)
            total[i] = len(grams)
            for gram in grams:
                j = self.vocab.get(gram)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        ones = np.ones(len(rows), dtype=np.float32)
        return sparse.csr_matrix((ones, (rows, cols)), shape=(len(texts), len(self.vocab))), total

    def best(self, queries: Sequence[str]) -> list[tuple[int, int]]:
        """For each query, (best score 0-100, index of the benchmark text reaching it; -1 if none)."""
        if not queries or not self.texts:
            return [(0, -1)] * len(queries)
        if self.shortlist is None or self.shortlist >= len(self.texts):
            scores = process.cdist(queries, self.texts, scorer=fuzz.partial_ratio, dtype=np.uint8,
                                   workers=self.workers)
            idx = scores.argmax(axis=1)
            return [(int(scores[i, j]), int(j) if scores[i, j] else -1) for i, j in enumerate(idx)]
        enc, total = self._encode(queries)
        shared = (enc @ self.present_t).toarray()
        shared /= np.maximum(np.minimum(total[:, None], self.total[None, :]), 1.0)
        top = np.argpartition(-shared, self.shortlist - 1, axis=1)[:, :self.shortlist]
        out = []
        for query, cand in zip(queries, top):
            hit = process.extractOne(query, [self.texts[j] for j in cand], scorer=fuzz.partial_ratio)
            out.append((int(round(hit[1])), int(cand[hit[2]])) if hit and hit[1] > 0 else (0, -1))
        return out


class Decontaminator:
    """Checks programs against every benchmark found (see ``resolve_sources``).

    ``threshold`` is the edit similarity (0-1) at or above which a program counts as contaminated.  ``min_nodes``
    (AST matcher), ``min_chars`` (functions shorter than this, as similarity text, are not scored: their
    partial-ratio window fits inside almost any benchmark function) and ``io_min_chars`` are the size guards
    described in the module docstring.  ``shortlist`` is how many benchmark functions per candidate function are
    scored exactly after the trigram prefilter (None: all pairs, exact and ~20x slower); ``workers`` is rapidfuzz's
    thread count for that exhaustive mode.  ``benchmarks`` replaces loading from ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike | None = None, threshold: float = DEFAULT_THRESHOLD, *,
                 min_nodes: int = DEFAULT_MIN_NODES, min_chars: int = DEFAULT_MIN_CHARS,
                 io_min_chars: int = DEFAULT_IO_MIN_CHARS, shortlist: int | None = DEFAULT_SHORTLIST,
                 workers: int = 1, benchmarks: BenchmarkSet | None = None) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.min_nodes, self.min_chars, self.io_min_chars = min_nodes, min_chars, io_min_chars
        self.benchmarks = benchmarks if benchmarks is not None else load_benchmarks(data_dir)
        self._hashes: dict[str, str] = {}
        self._io: dict[tuple[str, str], str] = {}
        texts: dict[str, str] = {}
        programs: Counter[str] = Counter()
        functions: Counter[str] = Counter()
        unparsed: Counter[str] = Counter()
        for prog in self.benchmarks.programs:
            programs[prog.source] += 1
            found = _analyse(prog.code, min_nodes)
            if not found.functions:
                unparsed[prog.source] += 1
            functions[prog.source] += found.functions
            for digest in found.hashes:
                self._hashes.setdefault(digest, prog.benchmark_id)
            for text in found.texts:
                if len(text) >= min_chars:
                    texts.setdefault(text, prog.benchmark_id)
            for inp, out in prog.io:
                key = (canonical_args(inp), canonical_value(out))
                if len(key[0]) + len(key[1]) >= io_min_chars + 3:  # "(...,)" adds 3 characters
                    self._io.setdefault(key, prog.benchmark_id)
        self._text_ids = list(texts.values())
        self._similar = _SimilarityIndex(list(texts), shortlist, workers)
        self.loaded = {source: {"programs": programs[source], "functions": functions[source],
                                "unparsed": unparsed[source], "path": self.benchmarks.paths[source]}
                       for source in self.benchmarks.paths}

    @property
    def missing(self) -> list[str]:
        """Benchmark sources whose files were not found."""
        return list(self.benchmarks.missing)

    def describe(self) -> dict[str, Any]:
        """JSON for the build report: per source loaded, its path and program/function counts; what is missing;
        the settings."""
        return {"loaded": self.loaded, "missing": self.missing, "threshold": self.threshold,
                "min_nodes": self.min_nodes, "min_chars": self.min_chars, "io_min_chars": self.io_min_chars,
                "shortlist": self._similar.shortlist}

    # -- single matchers
    def match_ast(self, code: str) -> Match | None:
        """Any function of ``code`` equal to a benchmark function up to formatting, docstrings and renaming."""
        for digest in _analyse(code, self.min_nodes).hashes:
            if digest in self._hashes:
                return Match(self._hashes[digest], "ast", 1.0)
        return None

    def best_similarity(self, codes: Sequence[str]) -> list[tuple[float, str | None]]:
        """For each program, its best edit similarity (0-1) over its functions (those of at least ``min_chars``)
        and all benchmark functions, with the benchmark id reaching it (None when nothing scored)."""
        units = [[t for t in _analyse(code, self.min_nodes).texts if len(t) >= self.min_chars] for code in codes]
        scored = iter(self._similar.best([t for ts in units for t in ts]))
        out: list[tuple[float, str | None]] = []
        for ts in units:
            score, j = max((next(scored) for _ in ts), default=(0, -1))
            out.append((score / 100.0, self._text_ids[j] if j >= 0 else None))
        return out

    def match_similarity(self, code: str) -> Match | None:
        """The best-scoring benchmark function if its edit similarity reaches the threshold."""
        score, bid = self.best_similarity([code])[0]
        return Match(bid, "similarity", score) if bid and score >= self.threshold else None

    def check_io(self, input_src: str, output_src: str) -> Match | None:
        """A CRUXEval sample with the same (arguments, output) pair, compared as canonical literals."""
        key = (canonical_args(input_src), canonical_value(output_src))
        bid = self._io.get(key)
        return Match(bid, "io", 1.0) if bid else None

    match_io = check_io

    def check(self, code: str, io: Iterable[tuple[str, str]] = ()) -> Match | None:
        """The first match of ``code`` (AST, then the ``io`` pairs, then similarity), or None if it is clean."""
        return self._check(code, io, None)

    def _check(self, code: str, io: Iterable[tuple[str, str]], best: tuple[float, str | None] | None
               ) -> Match | None:
        found = self.match_ast(code)
        for inp, out in io:
            found = found or self.check_io(inp, out)
        if found:
            return found
        score, bid = best if best is not None else self.best_similarity([code])[0]
        return Match(bid, "similarity", score) if bid and score >= self.threshold else None

    # -- batch
    def scan(self, items: Iterable[tuple[str, str] | tuple[str, str, Iterable[tuple[str, str]]]],
             batch: int = 1024) -> DecontamReport:
        """Check ``(id, code)`` items, or ``(id, code, io_pairs)`` for monologue records; report what is kept and
        what is removed (with the benchmark id matched), the best-similarity histogram and per-benchmark counts."""
        kept: list[str] = []
        removed: list[dict[str, Any]] = []
        histogram = [0] * 10
        pending: list[tuple[Any, ...]] = []

        def flush() -> None:
            bests = self.best_similarity([p[1] for p in pending])
            for item, best in zip(pending, bests):
                histogram[min(int(best[0] * 10), 9)] += 1
                found = self._check(item[1], item[2] if len(item) > 2 else (), best)
                if found is None:
                    kept.append(item[0])
                else:
                    removed.append({"id": item[0], "benchmark_id": found.benchmark_id, "kind": found.kind,
                                    "score": round(found.score, 4)})
            pending.clear()

        for item in items:
            pending.append(tuple(item))
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
        return DecontamReport(
            kept=kept, removed=removed, histogram=histogram,
            removed_per_benchmark=dict(sorted(Counter(family(r["benchmark_id"]) for r in removed).items())),
            removed_per_kind=dict(sorted(Counter(r["kind"] for r in removed).items(),
                                         key=lambda kv: _KIND_ORDER[kv[0]])),
            loaded=self.loaded, missing=self.missing, threshold=self.threshold)
