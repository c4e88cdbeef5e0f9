"""The evaluation loop: generate (or read predictions), extract, execute in the sandbox, record, summarise.

Outputs in ``--out DIR``: ``<benchmark>.jsonl`` (one JSON line per sample and refine round, appended as
samples finish), ``summary.json`` (written to a temp file, then renamed) and ``config.json``.  A rerun
with the same directory skips finished samples.  ``config.json`` ties the samples to what produced them:
the model's content fingerprint, backend and resolved dtype (or the predictions file's fingerprint), the
seed and every benchmark's generation settings; a rerun that changes any of them is refused with what
changed, rather than mixing samples of two models or settings.  Each sample is drawn with its own seed,
a function of (seed, task, sample, round), so samples do not depend on batch size, order or resumes.

``--out`` may be an object-store URL (``gs://BUCKET/...``), which has no append: the directory is mirrored
in a local temporary one (its files are records and summaries, small), and every file is uploaded after
each benchmark and at the end -- after a failure or an interrupt too, so a rerun resumes from there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline import remote
from eval import protocol
from eval.backends import Backend, Generation, sample_seed
from eval.benchmarks import Benchmark, Extracted, Problem, get_benchmark
from eval.extract import refined_code, sanitize
from eval.prompts import refine_prompt
from sandbox import Job, Limits, Sandbox
from sandbox.function_tests import Verdict
from semcoder_jax import locations
from semcoder_jax.errors import UserError

PASS_AT_K = (1, 5, 10, 100)
PROJECT_PACKAGES = ("eval", "sandbox", "semcoder_jax", "data_pipeline", "launch")
CONFIG_VERSION = 2


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class EvalConfig:
    """Everything that decides the numbers; recorded in ``config.json`` and checked on resume.

    Generation settings left ``None`` take the protocol's value (``protocol="semcoder"``: the release's,
    per benchmark) or the defaults (``eval.protocol.DEFAULTS``); ``settings(name)`` resolves them.
    ``max_length`` limits prompt + output tokens (the release's CRUXEval limit); with ``max_new_tokens``
    too, the tighter one applies per prompt.  ``model_fingerprint`` and ``dtype`` are filled in by ``run``
    when left ``None`` (from ``model`` and the backend).
    """

    benchmarks: list[str]
    mode: str | None = None
    n_samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None
    seed: int = 0
    limit: int | None = None
    release_quotes: bool = False
    self_refine: int = 0
    refine_temperature: float | None = None
    refine_top_p: float | None = None
    refine_max_new_tokens: int | None = None
    refine_trace: bool = False
    protocol: str | None = None
    missing_as_failed: bool = False
    model: str | None = None
    backend: str | None = None
    dtype: str | None = None
    model_fingerprint: str | None = None
    predictions: str | None = None
    release_version: str | None = None  # LiveCodeBench's release_version (None: release_latest)
    start_date: str | None = None       # LiveCodeBench contest-date window, YYYY-MM-DD, inclusive
    end_date: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self, name: str) -> dict[str, Any]:
        """The generation settings benchmark ``name`` runs with (see ``eval.protocol.resolve``)."""
        explicit = {key: getattr(self, key) for key in protocol.GENERATION_KEYS + protocol.REFINE_KEYS}
        return protocol.resolve(name, explicit, self.protocol, self.self_refine)


# ---- reading predictions -----------------------------------------------------------------------------------

def read_predictions(path: str | os.PathLike, bench: Benchmark, problems: list[Problem]) -> dict[str, list[dict]]:
    """task_id -> list of {"raw" | "extracted"} from an EvalPlus samples JSONL, a CRUXEval generations JSON
    or this harness's own per-sample JSONL."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--predictions {path}: no such file")
    official = bench.read_predictions(path, problems)
    if official is not None:
        return official
    by_id = {p.task_id: p for p in problems}
    out: dict[str, list[dict]] = defaultdict(list)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise UserError(f"{path}: expected the CRUXEval format {{\"sample_N\": [\"answer\", ...]}}")
        for task_id, answers in data.items():
            for answer in answers:
                if not isinstance(answer, str):
                    raise UserError(f"{path}: key {task_id!r}: answers must be strings")
                out[task_id].append({"extracted": answer})
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            task_id = rec.get("task_id")
            if not isinstance(task_id, str):
                raise UserError(f"{path}:{lineno}: missing string key 'task_id'")
            if rec.get("benchmark", bench.name) != bench.name:
                continue  # the harness's own records name their benchmark: one file may hold several
            if rec.get("round", 0) != 0:
                continue  # self-refine rounds of the harness's own file: score round 0 again
            if "raw" in rec:  # the harness's own per-sample file
                out[task_id].append({"raw": rec["raw"]})
            elif "solution" in rec:
                out[task_id].append({"extracted": rec["solution"]})
            elif "completion" in rec:
                if task_id not in by_id:
                    out[task_id].append({"extracted": rec["completion"]})
                else:
                    solution = getattr(bench, "solution_from_completion", None)
                    code = solution(by_id[task_id], rec["completion"]) if solution else rec["completion"]
                    out[task_id].append({"extracted": code})
            else:
                raise UserError(f"{path}:{lineno}: expected 'solution', 'completion' or 'raw'")
    unknown = sorted(set(out) - set(by_id))
    if unknown:
        print(f"warning: {len(unknown)} task id(s) in {path} are not in {bench.name}"
              f"{' (or beyond --limit)' if problems else ''} and were skipped, e.g. {unknown[0]}", file=sys.stderr)
        for task_id in unknown:
            del out[task_id]
    return out


# ---- scoring -----------------------------------------------------------------------------------------------

def _combine(bench: Benchmark, problem: Problem, parts: dict[str, Verdict]) -> dict:
    """One record's status from its parts' verdicts: passed only if every part passed."""
    record: dict[str, Any] = {"parts": {}}
    status, message, failed_test = "passed", "", ""
    failed_at: dict[str, Any] = {}
    for name in bench.parts:
        verdict = parts[name]
        record["parts"][name] = {"status": verdict.status, "message": verdict.message}
        if verdict.status != "passed" and status == "passed":  # the first failing part
            failed_test = bench.failed_test(problem, name, verdict)
            if verdict.failed_at is not None:
                failed_at = {"part": name, "failed_test": verdict.failed_at}
            status = verdict.status
            message = f"{name}: {verdict.message}" if len(bench.parts) > 1 else verdict.message
    record.update(status=status, message=message, failed_test=failed_test)
    if failed_at:
        record["failed_at"] = failed_at  # which part and input failed first (for traces)
    return record


def score(bench: Benchmark, sandbox: Sandbox, items: Sequence[tuple[Problem, Extracted]],
          progress: Any = None) -> list[dict]:
    """Run and judge every (problem, extracted) item in the sandbox; returns one status record each."""
    advance = None if progress is None else (lambda samples: progress.update(samples))
    verdicts = bench.verdicts(sandbox, items, advance)
    return [_combine(bench, problem, verdicts[i]) for i, (problem, _) in enumerate(items)]


# ---- summary -----------------------------------------------------------------------------------------------

def summarise(bench: Benchmark, records: list[dict], n_problems: int, refine_rounds: int = 0, *,
              n_samples: int | None = None, expected: Sequence[str] = (), missing_as_failed: bool = False,
              problems: Sequence[Problem] = ()) -> dict:
    """pass@k over tasks from round 0 (per part for multi-part sets): the headline is never a refined
    figure.  Self-refine rounds 1..``refine_rounds`` each get their own key, ``pass@1 refine-<k>`` (a
    sample counts as passed after round k when it passed in round k or before), and ``self_refine`` lists
    them with round 0.  Only rounds up to ``refine_rounds`` and samples below ``n_samples`` count, so a
    rerun with fewer reports fewer.  With ``missing_as_failed`` every task of ``expected`` without a record
    counts as failed (as many samples as the fewest any task has)."""
    records = [r for r in records if r["round"] <= refine_rounds and (n_samples is None or r["sample"] < n_samples)]
    first = {(r["task_id"], r["sample"]): r for r in records if r["round"] == 0}
    covered = {task_id for task_id, _ in first}
    missing = [task_id for task_id in expected if task_id not in covered]

    def stats(passed_of: Any) -> dict:
        per_task: dict[str, list[bool]] = defaultdict(list)
        for (task_id, _), rec in first.items():
            per_task[task_id].append(passed_of(rec))
        if missing_as_failed and missing:
            fill = min((len(v) for v in per_task.values()), default=1)
            for task_id in missing:
                per_task[task_id] = [False] * fill
        if not per_task:
            return {"pass@1": 0.0, "passed": 0, "total": 0}
        n_min = min(len(v) for v in per_task.values())
        out: dict[str, Any] = {}
        for k in PASS_AT_K:
            if n_min >= k:
                out[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in per_task.values()]))
        out["passed"] = int(sum(sum(v) for v in per_task.values()))
        out["total"] = int(sum(len(v) for v in per_task.values()))
        return out

    summary: dict[str, Any] = {"tasks": len(covered), "problems": n_problems,
                               "truncated": sum(r.get("finish_reason") == "length" for r in first.values())}
    if missing:
        summary.update(missing=len(missing), missing_as_failed=missing_as_failed)
    if len(bench.parts) > 1:
        # EvalPlus: "plus" passes only when the base tests pass too.
        summary["base"] = stats(lambda r: r["parts"]["base"]["status"] == "passed")
        summary["plus"] = stats(lambda r: r["status"] == "passed")
    summary.update(stats(lambda r: r["status"] == "passed"))
    summary.update(bench.summary_extras(problems, list(first.values())))
    if refine_rounds:
        curve = []
        for k in range(refine_rounds + 1):
            best: dict[tuple[str, int], dict] = {}
            for rec in sorted(records, key=lambda r: r["round"]):
                if rec["round"] <= k:
                    best[(rec["task_id"], rec["sample"])] = rec
            passed = [r["status"] == "passed" for r in best.values()]
            curve.append({"round": k, "pass@1": float(np.mean(passed)) if passed else 0.0,
                          "passed": int(sum(passed)), "total": len(passed)})
            if k:
                summary[f"pass@1 refine-{k}"] = curve[-1]["pass@1"]
        summary["self_refine"] = curve
    return summary


def format_table(summary: dict[str, dict]) -> str:
    """A plain-text table of the summary, one row per benchmark: round 0's pass@1, one column per
    self-refine round, and notes (base pass@1, pass@k, missing predictions, the protocol)."""
    rounds = max((len(s.get("self_refine", [])) - 1 for s in summary.values()), default=0)
    refine_columns = [f"pass@1 refine-{k}" for k in range(1, rounds + 1)]
    rows = [("benchmark", "pass@1", "passed", "total", *refine_columns, "notes")]
    scores = {name: s for name, s in summary.items() if "passed" not in s}  # cross-benchmark scores (REval's IC)
    for name, s in summary.items():
        if name in scores:
            continue
        notes = []
        if "base" in s:
            notes.append(f"base {100 * s['base'].get('pass@1', 0):.1f}")
        for k in PASS_AT_K[1:]:
            if f"pass@{k}" in s:
                notes.append(f"pass@{k} {100 * s[f'pass@{k}']:.1f}")
        if s.get("missing"):
            notes.append(f"{s['missing']} of {s['problems']} tasks without a prediction"
                         + (", scored as failed" if s.get("missing_as_failed") else ", not scored"))
        proto = s.get("protocol") or {}
        if proto.get("release"):
            notes.append(f"release protocol ({protocol.RELEASE})")
        elif proto.get("release") is False:
            more = len(proto["differences"]) - 1
            notes.append("not the release's protocol: " + proto["differences"][0]
                         + (f" (+{more} more in summary.json)" if more else ""))
        refined = [f"{100 * s[c]:.1f}" if c in s else "" for c in refine_columns]
        rows.append((name, f"{100 * s.get('pass@1', 0):.1f}", str(s["passed"]), str(s["total"]), *refined,
                     ", ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, s in scores.items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in s.items() if isinstance(v, int | float | str)))
    return "\n".join(lines)


# ---- the main loop -----------------------------------------------------------------------------------------

class _Records:
    """The per-sample JSONL of one benchmark: what is already done, and appending new lines."""

    def __init__(self, path: Path):
        self.path = path
        self.records: list[dict] = []
        self.dropped = 0
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            for lineno, line in enumerate(lines, 1):
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    if lineno != len(lines):
                        raise UserError(f"{path}:{lineno}: corrupt record; delete the file to start over") from None
                    self.dropped += 1  # a line cut short by an interrupted run: redo that sample
            if self.dropped:
                self._rewrite()  # without the partial line
        self.done = {(r["task_id"], r["sample"], r["round"]): r for r in self.records}

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in self.records:
                f.write(json.dumps(rec) + "\n")
        os.replace(tmp, self.path)

    def add(self, new: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in new:
                f.write(json.dumps(rec) + "\n")
        self.records.extend(new)
        for rec in new:
            self.done[(rec["task_id"], rec["sample"], rec["round"])] = rec


# ---- what produced the samples: config.json ----------------------------------------------------------------

def _source(config: EvalConfig) -> dict[str, Any]:
    """What the samples come from: the model (content fingerprint, backend, resolved dtype) or the
    predictions file (its fingerprint)."""
    if config.predictions:
        from eval.backends import file_fingerprint

        path = Path(config.predictions)
        digest = file_fingerprint([("predictions", str(path))]) if path.is_file() else None
        return {"kind": "predictions", "path": str(path), "fingerprint": digest}
    return {"kind": "model", "path": config.model, "backend": config.backend, "dtype": config.dtype,
            "fingerprint": config.model_fingerprint}


def _benchmark_entry(config: EvalConfig, name: str) -> dict[str, Any]:
    """The settings of benchmark ``name`` that decide its records (refine settings under ``refine``)."""
    entry: dict[str, Any] = {"release_quotes": config.release_quotes}
    if name.startswith("lcb-"):  # the problem set itself
        entry.update(release_version=config.release_version, start_date=config.start_date, end_date=config.end_date)
    if config.predictions:
        if protocol.family(name) == "cruxeval":
            entry["mode"] = config.mode or protocol.default_mode(name)
        return entry
    settings = config.settings(name)
    entry.update({k: v for k, v in settings.items() if k not in protocol.REFINE_KEYS})
    refine = {k: settings[k] for k in protocol.REFINE_KEYS if k in settings}
    if refine:
        entry["refine"] = refine
    return entry


def describe(config: EvalConfig) -> dict[str, Any]:
    """The ``config.json`` of a run of ``config``."""
    return {"version": CONFIG_VERSION, "source": _source(config), "seed": config.seed,
            "benchmarks": {name: _benchmark_entry(config, name) for name in config.benchmarks},
            "last_run": {"protocol": config.protocol, "limit": config.limit, "self_refine": config.self_refine,
                         "missing_as_failed": config.missing_as_failed}}


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith("xxh3-128:"):
        return value[:9 + 12] + "…"
    return "none" if value is None else str(value)


def _changes(previous: dict, current: dict) -> list[str]:
    """What differs between two ``config.json`` that would mix samples: one phrase each."""
    out = []
    old, new = previous["source"], current["source"]
    if old["kind"] != new["kind"]:
        out.append(f"samples from {old['kind']} {old.get('path')}, not {new['kind']}")
    else:
        what = "model weights" if new["kind"] == "model" else "predictions file"
        for key, label in (("fingerprint", f"{what} (fingerprint)"), ("backend", "backend"), ("dtype", "dtype")):
            if key in old and old.get(key) != new.get(key):
                out.append(f"{label} {_show(old.get(key))} → {_show(new.get(key))}")
    if previous["seed"] != current["seed"] and new["kind"] == "model":
        out.append(f"seed {previous['seed']} → {current['seed']}")
    for name, entry in current["benchmarks"].items():
        before = previous["benchmarks"].get(name)
        if before is None:
            continue
        pairs = [(k, before.get(k), entry.get(k)) for k in sorted(set(before) | set(entry))
                 if k not in ("n_samples", "refine")]
        if "refine" in before and "refine" in entry:
            pairs += [(k, before["refine"].get(k), entry["refine"].get(k)) for k in protocol.REFINE_KEYS]
        out += [f"{name} {k} {_show(a)} → {_show(b)}" for k, a, b in pairs if a != b]
    return out


def _check_config(out_dir: Path, current: dict[str, Any], write: bool = True, shown: str | None = None) -> None:
    """Refuses an output directory whose samples came from another model, dtype, backend, predictions file,
    seed or generation settings, naming every change in one line; otherwise records ``current`` (merged
    with the benchmarks and refine settings already there).  ``shown``: the directory's name in messages
    (the URL of a mirrored object-store one)."""
    path = out_dir / "config.json"
    label = locations.join(shown, "config.json") if shown is not None else str(path)
    merged = current
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("version") != CONFIG_VERSION:
            raise UserError(f"{label}: written by an earlier semcoder eval that did not record the model's "
                            "fingerprint and dtype, so its samples cannot be tied to a model; use a new --out "
                            "directory")
        changed = _changes(previous, current)
        if changed:
            raise UserError(f"{label}: this output directory holds samples made with different settings: "
                            f"{'; '.join(changed)}; use a new --out directory (or rerun with its settings)")
        merged = {**current, "benchmarks": {**previous["benchmarks"]}}
        for name, entry in current["benchmarks"].items():
            kept = previous["benchmarks"].get(name, {})
            merged["benchmarks"][name] = {**entry, **({"refine": kept["refine"]} if "refine" in kept else {})}
    if write:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(merged, indent=2))
        os.replace(tmp, path)


def check_resume(config: EvalConfig, out_dir: str | os.PathLike) -> None:
    """Raises ``UserError`` now when ``run(config, out_dir)`` would refuse the directory (so the CLI can
    say so before loading a model)."""
    _validate(config)
    target = os.fspath(out_dir)
    if locations.is_remote(target):
        config_json = locations.path(locations.join(target, "config.json"), "--out")
        if config_json.is_file():
            with tempfile.TemporaryDirectory(prefix="semcoder-eval-out-") as tmp:
                (Path(tmp) / "config.json").write_bytes(config_json.read_bytes())
                _check_config(Path(tmp), describe(config), write=False, shown=target)
    elif Path(out_dir).is_dir():
        _check_config(Path(out_dir), describe(config), write=False)


def _progress(total: float, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, leave=False,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} [{elapsed}<{remaining}]")


def run(config: EvalConfig, out_dir: str | os.PathLike, *, backend: Backend | None = None,
        data_dir: str | os.PathLike | None = None, batch_size: int = 8, workers: int | None = None,
        limits: Limits | None = None, progress: bool = True, chunk: int | None = None,
        gt_cache_dir: str | os.PathLike | None = None, sandbox_mode: str = "auto",
        require_isolation: bool = False) -> dict[str, dict]:
    """Evaluate every benchmark of ``config`` with ``backend`` (or ``config.predictions``); returns and
    writes ``summary.json``.  ``sandbox_mode`` / ``require_isolation``: see ``sandbox.Sandbox``.
    ``out_dir`` may be a ``gs://`` URL (mirrored locally, see the module docstring)."""
    if backend is None and config.predictions is None:
        raise UserError("nothing to evaluate: pass --model or --predictions")
    _validate(config)
    options = dict(backend=backend, data_dir=data_dir, batch_size=batch_size, workers=workers, limits=limits,
                   progress=progress, chunk=chunk, gt_cache_dir=gt_cache_dir, sandbox_mode=sandbox_mode,
                   require_isolation=require_isolation)
    target = os.fspath(out_dir)
    if not locations.is_remote(target):
        return _run(config, Path(target), **options)
    with _mirrored(target) as (local, sync):
        return _run(config, local, shown=target, sync=sync, **options)


@contextlib.contextmanager
def _mirrored(url: str) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A local temporary copy of the output directory at ``url`` and a function that uploads it back; it is
    uploaded at the end, after a failure too (the samples done so far are what a rerun resumes from)."""
    locations.probe_writable("--out", url)  # its refusals name the flag
    with remote.mirrored(url, "semcoder eval") as (local, sync):
        yield Path(local), sync


def _run(config: EvalConfig, out: Path, *, backend: Backend | None, data_dir: str | os.PathLike | None,
         batch_size: int, workers: int | None, limits: Limits | None, progress: bool, chunk: int | None,
         gt_cache_dir: str | os.PathLike | None, sandbox_mode: str, require_isolation: bool,
         shown: str | None = None, sync: Callable[[], None] | None = None) -> dict[str, dict]:
    """``run`` on a local directory; ``sync`` (if any) is called after each benchmark's summary is written."""
    config = _identify(config, backend)
    out.mkdir(parents=True, exist_ok=True)
    source = describe(config)
    _check_config(out, source, shown=shown)
    summary_path = out / "summary.json"
    summary: dict[str, dict] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    chunk = chunk or max(batch_size * 4, 32)
    # numpy preloaded, as in the reference scorers' processes: a candidate's "import numpy" is then free (and
    # possible under their reliability guard, which removes os.putenv, which numpy's import calls)
    with Sandbox(workers=workers, limits=limits or Limits(), mode=sandbox_mode, require_isolation=require_isolation,
                 hide=hidden_paths(data_dir, gt_cache_dir), preload=("numpy",)) as sandbox:
        reval_runs: dict[str, tuple[list[dict], list[Problem]]] = {}
        for name in config.benchmarks:
            settings = {} if config.predictions else config.settings(name)
            mode = settings.get("mode") or config.mode or protocol.default_mode(name)
            bench = get_benchmark(name, mode=mode, release_quotes=config.release_quotes, gt_cache_dir=gt_cache_dir,
                                  **{k: v for k, v in (("release_version", config.release_version),
                                                       ("start_date", config.start_date),
                                                       ("end_date", config.end_date)) if v is not None})
            problems = bench.load(data_dir, config.limit)
            bench.prepare(problems)
            records = _Records(out / f"{name.replace('+', 'plus')}.jsonl")
            if records.dropped:
                print(f"{records.path}: dropped {records.dropped} incomplete line(s) from an interrupted run",
                      file=sys.stderr)
            if config.predictions:
                _score_predictions(config, bench, problems, sandbox, records, progress)
            else:
                _generate_and_score(config, settings, bench, problems, backend, sandbox, records, batch_size,
                                    chunk, progress)
                for round_ in range(1, config.self_refine + 1):
                    _refine_round(config, settings, bench, problems, backend, sandbox, records, batch_size, chunk,
                                  round_, progress)
            wanted = {p.task_id for p in problems}
            summary[name] = summarise(bench, [r for r in records.records if r["task_id"] in wanted],
                                      len(problems), 0 if config.predictions else config.self_refine,
                                      n_samples=settings.get("n_samples"), expected=[p.task_id for p in problems],
                                      missing_as_failed=config.missing_as_failed, problems=problems)
            summary[name].update(_provenance(config, name, settings, source))
            summary[name].update(sandbox.describe())
            if name in REVAL_TASKS:
                reval_runs[name] = ([r for r in records.records if r["task_id"] in wanted and r["round"] == 0],
                                    problems)
            if len(reval_runs) == len(REVAL_TASKS):  # all four REval tasks: their Incremental Consistency
                from eval.benchmarks.reval import incremental_consistency

                summary["reval-consistency"] = incremental_consistency(
                    {k: v[0] for k, v in reval_runs.items()}, {k: v[1] for k, v in reval_runs.items()})
            tmp = summary_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, summary_path)
            if sync is not None:
                sync()
    return summary


REVAL_TASKS = ("reval-coverage", "reval-state", "reval-path", "reval-output")


def _names_benchmarks(path: str) -> bool:
    """Whether a predictions file is JSON Lines whose first record names its ``benchmark``."""
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(next((line for line in f if line.strip()), ""))
        return isinstance(first, dict) and "benchmark" in first
    except (OSError, ValueError):
        return False


def _validate(config: EvalConfig) -> None:
    """Errors in ``config`` that need no data or model: conflicts with the protocol, misplaced options."""
    if config.predictions and len(config.benchmarks) != 1 and not _names_benchmarks(config.predictions):
        raise UserError("--predictions scores exactly one --benchmark, unless it is this harness's per-sample JSONL "
                        "whose records name their benchmark (several sets share task ids: REval's four tasks)")
    if config.predictions and config.protocol:
        raise UserError("--protocol sets how generations are made; it does not apply to --predictions")
    for name in config.benchmarks:
        if config.self_refine and protocol.family(name) == "cruxeval":
            raise UserError(f"--self-refine applies to code generation benchmarks (humaneval, mbpp), not {name}")
        if not config.predictions:
            config.settings(name)


def _identify(config: EvalConfig, backend: Backend | None) -> EvalConfig:
    """``config`` with the backend's resolved dtype and the model's content fingerprint filled in."""
    from eval.backends import backend_dtype, model_fingerprint

    updates: dict[str, Any] = {}
    found = backend_dtype(backend) if backend is not None else None
    if config.dtype is None:
        updates["dtype"] = found
    elif found is not None and found != config.dtype:
        raise UserError(f"the backend computes in {found}, not the configured dtype {config.dtype}")
    if config.model and config.model_fingerprint is None:
        updates["model_fingerprint"] = model_fingerprint(config.model)
    return replace(config, **updates) if updates else config


def _provenance(config: EvalConfig, name: str, settings: dict[str, Any], source: dict[str, Any]) -> dict:
    """Summary keys that say what produced the numbers and how that compares with the release's protocol."""
    if config.predictions:
        return {"source": source["source"],
                "settings": {"limit": config.limit, "release_quotes": config.release_quotes,
                             "missing_as_failed": config.missing_as_failed},
                "protocol": {"requested": None, "release": None, "source": protocol.RELEASE,
                             "differences": ["generations read from --predictions: how they were made is unknown"]}}
    if name not in protocol.RELEASE_TASKS:  # a set the release did not score with its own scripts
        return {"source": source["source"],
                "settings": {**settings, "seed": config.seed, "limit": config.limit, "self_refine": config.self_refine},
                "protocol": {"requested": None, "release": None, "source": protocol.RELEASE,
                             "differences": [f"the release's scripts have no settings for {name}"]}}
    differences = protocol.differences(name, settings, self_refine=config.self_refine, limit=config.limit)
    return {"source": source["source"],
            "settings": {**settings, "seed": config.seed, "limit": config.limit, "self_refine": config.self_refine,
                         "release_quotes": config.release_quotes},
            "protocol": {"requested": config.protocol, "release": not differences, "source": protocol.RELEASE,
                         "differences": differences}}


def hidden_paths(data_dir: str | os.PathLike | None, gt_cache_dir: str | os.PathLike | None) -> list[str]:
    """What candidates must not see even where the sandbox shows a directory holding it (an installed
    package's bundled data inside site-packages): the project's packages, the data and ground-truth caches."""
    from eval.benchmarks import BUNDLED_DATA_DIR, resolve_data_dir

    installed = Path(__file__).resolve().parents[1]  # the checkout, or site-packages for a regular install
    paths = [installed / name for name in PROJECT_PACKAGES]
    paths += [BUNDLED_DATA_DIR, resolve_data_dir(data_dir), Path.home() / ".cache" / "semcoder"]
    if gt_cache_dir:
        paths.append(Path(gt_cache_dir))
    return [str(p) for p in paths]


def _score_predictions(config: EvalConfig, bench: Benchmark, problems: list[Problem], sandbox: Sandbox,
                       records: _Records, progress: bool) -> None:
    predictions = read_predictions(config.predictions, bench, problems)  # type: ignore[arg-type]
    missing = [p.task_id for p in problems if p.task_id not in predictions]
    if missing and not config.missing_as_failed:
        shown = ", ".join(missing[:5]) + (f", … ({len(missing) - 5} more)" if len(missing) > 5 else "")
        raise UserError(f"{config.predictions}: {len(missing)} of {len(problems)} {bench.name} tasks have no "
                        f"prediction ({shown}); pass --limit N to score only the first N problems, or "
                        "--missing-as-failed to count the missing tasks as failed")
    items, meta = [], []
    for problem in problems:
        for i, pred in enumerate(predictions.get(problem.task_id, [])):
            if (problem.task_id, i, 0) in records.done:
                continue
            raw = pred.get("raw")
            extracted = bench.extract(problem, raw) if raw is not None else Extracted(pred["extracted"])
            items.append((problem, extracted))
            meta.append((problem, i, raw))
    bar = _progress(len(items), bench.name, progress)
    results = score(bench, sandbox, items, bar)
    if bar is not None:
        bar.close()
    records.add([_record(bench, problem, i, 0, problem.prompt, raw, extracted, result, None)
                 for (problem, i, raw), (_, extracted), result in zip(meta, items, results)])


def _record(bench: Benchmark, problem: Problem, sample: int, round_: int, prompt: str, raw: str | None,
            extracted: Extracted, result: dict, finish_reason: str | None, seed: int | None = None) -> dict:
    rec = {"benchmark": bench.name, "task_id": problem.task_id, "sample": sample, "round": round_,
           "prompt": prompt, "raw": raw, "extracted": extracted.text, "finish_reason": finish_reason, **result}
    if seed is not None:
        rec["seed"] = seed
    return rec


def token_limits(backend: Backend, prompts: Sequence[str], max_new_tokens: int | None,
                 max_length: int | None) -> list[int]:
    """New-token limit per prompt: ``max_new_tokens``, and with ``max_length`` (prompt + output, as the
    release counts for CRUXEval) at most ``max_length`` minus the prompt's tokens (bos included)."""
    if max_length is None:
        return [int(max_new_tokens)] * len(prompts)  # type: ignore[arg-type]
    limits = [max_length - len(backend.encode(p)) for p in prompts]
    return limits if max_new_tokens is None else [min(n, max_new_tokens) for n in limits]


def _generate(backend: Backend, prompts: Sequence[str], seeds: Sequence[int], settings: dict[str, Any], *,
              temperature: float, top_p: float, max_new_tokens: int | None, stop: Sequence[str],
              batch_size: int) -> list[Generation]:
    """One generation per prompt with its own seed and token limit; a prompt with no room left gets an
    empty generation (finish reason ``length``), as in the release."""
    limits = token_limits(backend, prompts, max_new_tokens, settings.get("max_length"))
    out = [Generation("", [], "length")] * len(prompts)
    live = [i for i, n in enumerate(limits) if n > 0]
    if live:
        generations = backend.generate([prompts[i] for i in live], max_new_tokens=[limits[i] for i in live],
                                       temperature=temperature, top_p=top_p, seeds=[seeds[i] for i in live],
                                       stop=stop, batch_size=batch_size)
        for i, g in zip(live, generations):
            out[i] = g
    return out


def _generate_and_score(config: EvalConfig, settings: dict[str, Any], bench: Benchmark, problems: list[Problem],
                        backend: Backend | None, sandbox: Sandbox, records: _Records, batch_size: int, chunk: int,
                        progress: bool) -> None:
    assert backend is not None
    todo = [(p, s) for p in problems for s in range(settings["n_samples"]) if (p.task_id, s, 0) not in records.done]
    bar = _progress(len(todo), bench.name, progress)

    def score_and_record(part, seeds, generations):
        items = [(p, bench.extract(p, g.text)) for (p, _), g in zip(part, generations)]
        results = score(bench, sandbox, items, bar)
        records.add([_record(bench, p, s, 0, p.prompt, g.text, extracted, result, g.finish_reason, seed)
                     for (p, s), g, (_, extracted), result, seed in zip(part, generations, items, results, seeds)])

    # A chunk is scored in the sandbox while the next one decodes (one scoring thread: records stay in order).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="score") as scorer:
        scoring: list[concurrent.futures.Future] = []
        for start in range(0, len(todo), chunk):
            part = todo[start: start + chunk]
            seeds = [sample_seed(config.seed, p.task_id, s, 0) for p, s in part]
            generations = _generate(backend, [p.prompt for p, _ in part], seeds, settings,
                                    temperature=settings["temperature"], top_p=settings["top_p"],
                                    max_new_tokens=settings["max_new_tokens"], stop=bench.stop, batch_size=batch_size)
            for f in [f for f in scoring if f.done()]:
                f.result()  # a scoring error surfaces now, not after every chunk has decoded
                scoring.remove(f)
            scoring.append(scorer.submit(score_and_record, part, seeds, generations))
        for f in scoring:
            f.result()
    if bar is not None:
        bar.close()


def _traces(bench: Benchmark, sandbox: Sandbox, part: list[tuple[Problem, int, dict]]) -> list[str | None]:
    """Execution traces of the failing samples on their failing input, where the benchmark can make one."""
    from eval.benchmarks.evalplus import annotate_trace

    make = getattr(bench, "trace_job", None)
    jobs: list[tuple[int, Job]] = []
    for i, (problem, _, rec) in enumerate(part):
        where = rec.get("failed_at")
        job = make(problem, rec["extracted"], where["part"], where.get("failed_test")) if make and where else None
        if job is not None:
            jobs.append((i, job))
    traces: list[str | None] = [None] * len(part)
    for (i, _), outcome in zip(jobs, sandbox.map([job for _, job in jobs])):
        trace = outcome.values[0] if outcome.values else None
        if isinstance(trace, dict) and all(isinstance(trace.get(k), dict) for k in ("states", "errors")):
            traces[i] = annotate_trace(part[i][2]["extracted"], trace)
    return traces


def _refine_round(config: EvalConfig, settings: dict[str, Any], bench: Benchmark, problems: list[Problem],
                  backend: Backend | None, sandbox: Sandbox, records: _Records, batch_size: int, chunk: int,
                  round_: int, progress: bool) -> None:
    """One self-refine round over every sample whose latest attempt failed."""
    assert backend is not None
    by_id = {p.task_id: p for p in problems}
    latest: dict[tuple[str, int], dict] = {}
    for rec in sorted(records.records, key=lambda r: r["round"]):
        if rec["round"] < round_ and rec["task_id"] in by_id and rec["sample"] < settings["n_samples"]:
            latest[(rec["task_id"], rec["sample"])] = rec
    todo = [(by_id[t], s, rec) for (t, s), rec in latest.items()
            if rec["status"] != "passed" and (t, s, round_) not in records.done]
    bar = _progress(len(todo), f"{bench.name} refine {round_}", progress)
    for start in range(0, len(todo), chunk):
        part = todo[start: start + chunk]
        traces = _traces(bench, sandbox, part) if settings["refine_trace"] else [None] * len(part)
        prompts = [refine_prompt(bench.description(p), rec["extracted"],
                                 rec.get("failed_test") or f"# {rec['message']}", trace)
                   for (p, _, rec), trace in zip(part, traces)]
        seeds = [sample_seed(config.seed, p.task_id, s, round_) for p, s, _ in part]
        generations = _generate(backend, prompts, seeds, {}, temperature=settings["refine_temperature"],
                                top_p=settings["refine_top_p"], max_new_tokens=settings["refine_max_new_tokens"],
                                stop=("[/Refined]",), batch_size=batch_size)
        items = [(p, Extracted(sanitize(refined_code(g.text), p.record.get("entry_point"))))
                 for (p, _, _), g in zip(part, generations)]
        results = score(bench, sandbox, items, bar)
        records.add([_record(bench, p, s, round_, prompt, g.text, extracted, result, g.finish_reason, seed)
                     for (p, s, _), prompt, g, (_, extracted), result, seed
                     in zip(part, prompts, generations, items, results, seeds)])
    if bar is not None:
        bar.close()

