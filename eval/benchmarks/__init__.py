"""Benchmarks read from local files: where the data lives, what a problem is, and the registry.

Each benchmark module turns its release file into ``Problem``s (with the release's prompt), extracts the
code or answer from a raw generation, and scores it: it runs the candidate in the sandbox and judges the
plain values that come back, here, against expected values the candidate never sees.  Nothing is
downloaded at run time: ``--data-dir`` or ``$SEMCODER_DATA_DIR`` (default ``~/.cache/semcoder/eval-data``,
filled by ``semcoder eval download``) points at a folder laid out like ``shared/data``.  CRUXEval (MIT)
and HumanEval+ (Apache-2.0), both small, also ship inside the package (``eval/benchmarks/data``, byte
copies with their PROVENANCE.md) and are used when neither flag nor variable is given and the cache lacks
them.
"""

from __future__ import annotations

import gzip
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.extract import completion_before_fence, sanitize
from sandbox import Sandbox
from sandbox.function_tests import Verdict
from semcoder_jax.errors import UserError

DATA_ENV = "SEMCODER_DATA_DIR"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "semcoder" / "eval-data"
BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "data"
# benchmark name -> path of its release file inside the data dir
DATA_FILES: dict[str, str] = {
    "humaneval": "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
    "humaneval+": "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz",
    "mbpp": "mbppplus/MbppPlus-v0.2.0.jsonl.gz",
    "mbpp+": "mbppplus/MbppPlus-v0.2.0.jsonl.gz",
    "cruxeval-i": "cruxeval/cruxeval.jsonl",
    "cruxeval-o": "cruxeval/cruxeval.jsonl",
    # LiveCodeBench: local exports of the official HF datasets (eval.benchmarks.livecodebench)
    "lcb-codegen": "livecodebench/code_generation_lite",
    "lcb-execution": "livecodebench/execution-v2",
    "lcb-testoutput": "livecodebench/test_generation",
    # REval (DREval): never bundled (no licence file); from the data dir only (eval.benchmarks.reval)
    "reval-coverage": "reval/DREval_data.jsonl",
    "reval-state": "reval/DREval_data.jsonl",
    "reval-path": "reval/DREval_data.jsonl",
    "reval-output": "reval/DREval_data.jsonl",
}
BENCHMARK_NAMES = tuple(DATA_FILES)


class DataError(UserError):
    """A benchmark file is missing or malformed."""


@dataclass
class Problem:
    """One benchmark task: its id, the exact prompt the model sees, and the release record."""

    task_id: str
    prompt: str
    record: dict[str, Any]
    response_prefix: str = ""


@dataclass
class Extracted:
    """What a raw generation turns into: code (EvalPlus/HumanEval) or an answer expression (CRUXEval)."""

    text: str
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``--data-dir``, else ``$SEMCODER_DATA_DIR``, else the download cache."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return DEFAULT_DATA_DIR


def data_file(name: str, data_dir: str | os.PathLike | None) -> Path:
    path = resolve_data_dir(data_dir) / DATA_FILES[name]
    bundled = BUNDLED_DATA_DIR / DATA_FILES[name]
    if not path.is_file() and not data_dir and not os.environ.get(DATA_ENV) and bundled.is_file():
        return bundled
    if not path.is_file():
        raise DataError(f"{name}: data file {path} not found; pass --data-dir DIR or set ${DATA_ENV} to a "
                        f"folder laid out like shared/data, or run `semcoder eval download` while online")
    return path


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each JSON object of a (possibly gzipped) JSON Lines file; blank lines are
    skipped, and a line that is not a JSON object is a ``DataError`` naming file:line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            yield lineno, record


def read_jsonl(path: Path) -> list[dict]:
    """All records of a (possibly gzipped) JSON Lines file; a bad line is an error naming file:line."""
    return [record for _, record in iter_jsonl(path)]


def require_keys(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")


class Benchmark(ABC):
    """Interface every benchmark implements."""

    name: str
    parts: tuple[str, ...] = ("main",)  # what each sample is scored on, e.g. ("base", "plus")
    stop: tuple[str, ...] = ()           # stop strings for generation

    @abstractmethod
    def load(self, data_dir: str | os.PathLike | None, limit: int | None = None) -> list[Problem]:
        """The problems, in release order, first ``limit`` of them."""

    @abstractmethod
    def extract(self, problem: Problem, raw: str) -> Extracted:
        """The code or answer to execute from a raw generation."""

    @abstractmethod
    def verdicts(self, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]],
                 progress: Callable[[float], None] | None = None) -> list[dict[str, Verdict]]:
        """Run every item in the sandbox and judge it: one ``Verdict`` per part.  ``progress(samples)`` is
        called as parts finish (fractions of a sample)."""

    def prepare(self, problems: list[Problem]) -> None:  # noqa: B027 - optional hook
        """Work done once before scoring (EvalPlus: ground-truth outputs and timings)."""

    def failed_test(self, problem: Problem, part: str, verdict: Verdict) -> str:
        """The failing test as source text (for the per-sample record and the refine prompt)."""
        return ""

    def description(self, problem: Problem) -> str:
        """The problem statement used in the self-refine prompt."""
        return problem.record.get("prompt", "")

    def summary_extras(self, problems: Sequence[Problem], first: Sequence[dict]) -> dict[str, Any]:
        """Extra ``summary.json`` keys for this benchmark from its round-0 records (``task_id``, ``sample``,
        ``status``, ...) and its problems, e.g. pass@1 per difficulty.  Default: none."""
        return {}

    def read_predictions(self, path: Path, problems: Sequence[Problem]) -> dict[str, list[dict]] | None:
        """``task_id -> [{"raw": str} | {"extracted": str}, ...]`` from this benchmark's official output
        format, or None when ``path`` is not in it (the runner then reads the generic formats)."""
        return None

    def primary_part(self) -> str:
        """Which part's pass rate is this benchmark's headline number."""
        return self.parts[-1]


class CodeBenchmark(Benchmark):
    """A benchmark whose answer is a function: solution = problem prompt + completion, then sanitized.

    Generated completions (cut at the first fence, as the release does) and completions supplied with
    ``--predictions`` take the same path, ``solution_from_completion``; a supplied ``solution`` is scored as
    written, as ``evalplus.evaluate`` does."""

    def extract(self, problem: Problem, raw: str) -> Extracted:
        return Extracted(self.solution_from_completion(problem, completion_before_fence(raw)))

    def solution_from_completion(self, problem: Problem, completion: str) -> str:
        """``sanitize(prompt + completion)``, what the release runs (``evalplus.sanitize`` on its samples)."""
        return sanitize(problem.record["prompt"] + completion, problem.record["entry_point"])


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """The benchmark called ``name`` (see ``BENCHMARK_NAMES``); ``options`` it does not take are ignored."""
    from eval.benchmarks.cruxeval import CruxEval
    from eval.benchmarks.evalplus import EvalPlus

    if name.startswith("lcb-"):
        from eval.benchmarks.livecodebench import LiveCodeBench

        return LiveCodeBench(name, **{k: v for k, v in options.items()
                                      if k in ("mode", "release_version", "start_date", "end_date")})
    if name.startswith("reval-"):
        from eval.benchmarks.reval import REval

        return REval(name, **{k: v for k, v in options.items() if k in ("mode",)})

    if name in ("humaneval", "humaneval+", "mbpp", "mbpp+"):
        return EvalPlus(name, **{k: v for k, v in options.items() if k in ("gt_cache_dir",)})
    if name in ("cruxeval-i", "cruxeval-o"):
        return CruxEval(name, **{k: v for k, v in options.items() if k in ("mode", "release_quotes",
                                                                             "swap_quotes")})
    raise UserError(f"unknown benchmark {name!r}; expected one of {', '.join(BENCHMARK_NAMES)}")
