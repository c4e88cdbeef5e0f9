"""The evaluation loop: generate (or read predictions), extract, execute in the sandbox, record, summarise.

Outputs in ``--out DIR``: ``<benchmark>.jsonl`` (one JSON line per sample and refine round, appended as
samples finish), ``summary.json`` (written to a temp file, then renamed) and ``config.json``.  A rerun
with the same directory skips finished samples; a different configuration in the same directory is
an error rather than a silent mix.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval.backends import Backend
from eval.benchmarks import Benchmark, Extracted, Problem, get_benchmark
from eval.extract import refined_code, sanitize
from eval.prompts import refine_prompt
from sandbox import Job, Limits, Sandbox
from sandbox.function_tests import Verdict
from semcoder_jax.errors import UserError

PASS_AT_K = (1, 5, 10, 100)
PROJECT_PACKAGES = ("eval", "sandbox", "semcoder_jax", "data_pipeline", "launch")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class EvalConfig:
    """Everything that decides the numbers; saved as ``config.json`` and checked on resume."""

    benchmarks: list[str]
    mode: str = "monologue"
    n_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    limit: int | None = None
    release_quotes: bool = False
    self_refine: int = 0
    refine_temperature: float | None = None
    refine_max_new_tokens: int = 512
    refine_trace: bool = False
    model: str | None = None
    backend: str | None = None
    predictions: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---- reading predictions -----------------------------------------------------------------------------------

def read_predictions(path: str | os.PathLike, bench: Benchmark, problems: list[Problem]) -> dict[str, list[dict]]:
    """task_id -> list of {"raw" | "extracted"} from an EvalPlus samples JSONL, a CRUXEval generations JSON
    or this harness's own per-sample JSONL."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--predictions {path}: no such file")
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

def summarise(bench: Benchmark, records: list[dict], n_problems: int, refine_rounds: int = 0) -> dict:
    """pass@k over tasks, per part for multi-part sets; self-refine pass@1 after each round."""
    latest: dict[tuple[str, int], dict] = {}
    for rec in sorted(records, key=lambda r: r["round"]):
        latest[(rec["task_id"], rec["sample"])] = rec

    def stats(passed_of: Any) -> dict:
        per_task: dict[str, list[bool]] = defaultdict(list)
        for (task_id, _), rec in latest.items():
            per_task[task_id].append(passed_of(rec))
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

    summary: dict[str, Any] = {"tasks": len({t for t, _ in latest}), "problems": n_problems,
                               "truncated": sum(r.get("finish_reason") == "length" for r in latest.values())}
    if len(bench.parts) > 1:
        # EvalPlus: "plus" passes only when the base tests pass too.
        summary["base"] = stats(lambda r: r["parts"]["base"]["status"] == "passed")
        summary["plus"] = stats(lambda r: r["status"] == "passed")
    headline = stats(lambda r: r["status"] == "passed")
    summary.update(headline)
    if refine_rounds or any(r["round"] > 0 for r in records):
        rounds = max([refine_rounds] + [r["round"] for r in records])
        curve = []
        for k in range(rounds + 1):
            best: dict[tuple[str, int], dict] = {}
            for rec in sorted(records, key=lambda r: r["round"]):
                if rec["round"] <= k:
                    best[(rec["task_id"], rec["sample"])] = rec
            passed = [r["status"] == "passed" for r in best.values()]
            curve.append({"round": k, "pass@1": float(np.mean(passed)) if passed else 0.0,
                          "passed": int(sum(passed)), "total": len(passed)})
        summary["self_refine"] = curve
    return summary


def format_table(summary: dict[str, dict]) -> str:
    """A plain-text table of the summary, one row per benchmark."""
    rows = [("benchmark", "pass@1", "passed", "total", "notes")]
    for name, s in summary.items():
        notes = []
        if "base" in s:
            notes.append(f"base {100 * s['base'].get('pass@1', 0):.1f}")
        for k in PASS_AT_K[1:]:
            if f"pass@{k}" in s:
                notes.append(f"pass@{k} {100 * s[f'pass@{k}']:.1f}")
        if "self_refine" in s:
            notes.append("refine " + " > ".join(f"{100 * r['pass@1']:.1f}" for r in s["self_refine"]))
        rows.append((name, f"{100 * s.get('pass@1', 0):.1f}", str(s["passed"]), str(s["total"]), ", ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
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


def _check_config(out_dir: Path, config: EvalConfig) -> None:
    path = out_dir / "config.json"
    current = asdict(config)
    if path.is_file():
        previous = json.loads(path.read_text())
        keys = ("mode", "n_samples", "temperature", "top_p", "max_new_tokens", "seed", "release_quotes",
                "model", "backend", "predictions", "refine_temperature", "refine_max_new_tokens", "refine_trace")
        changed = [k for k in keys if previous.get(k) != current.get(k)]
        if changed:
            raise UserError(f"{path}: this output directory was made with different settings ({', '.join(changed)}); "
                            "use a new --out directory")
        current["benchmarks"] = sorted(set(previous.get("benchmarks", [])) | set(config.benchmarks))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2))
    os.replace(tmp, path)


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
    writes ``summary.json``.  ``sandbox_mode`` / ``require_isolation``: see ``sandbox.Sandbox``."""
    if backend is None and config.predictions is None:
        raise UserError("nothing to evaluate: pass --model or --predictions")
    if config.predictions and len(config.benchmarks) != 1:
        raise UserError("--predictions scores exactly one --benchmark")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    summary_path = out / "summary.json"
    summary: dict[str, dict] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    chunk = chunk or max(batch_size * 4, 32)
    # numpy preloaded, as in the reference scorers' processes: a candidate's "import numpy" is then free (and
    # possible under their reliability guard, which removes os.putenv, which numpy's import calls)
    with Sandbox(workers=workers, limits=limits or Limits(), mode=sandbox_mode, require_isolation=require_isolation,
                 hide=hidden_paths(data_dir, gt_cache_dir), preload=("numpy",)) as sandbox:
        for name in config.benchmarks:
            bench = get_benchmark(name, mode=config.mode, release_quotes=config.release_quotes,
                                  gt_cache_dir=gt_cache_dir)
            if config.self_refine and name.startswith("cruxeval"):
                raise UserError("--self-refine applies to code generation benchmarks (humaneval, mbpp), not "
                                f"{name}")
            problems = bench.load(data_dir, config.limit)
            bench.prepare(problems)
            records = _Records(out / f"{name.replace('+', 'plus')}.jsonl")
            if records.dropped:
                print(f"{records.path}: dropped {records.dropped} incomplete line(s) from an interrupted run",
                      file=sys.stderr)
            if config.predictions:
                _score_predictions(config, bench, problems, sandbox, records, progress)
            else:
                _generate_and_score(config, bench, problems, backend, sandbox, records, batch_size, chunk, progress)
                for round_ in range(1, config.self_refine + 1):
                    _refine_round(config, bench, problems, backend, sandbox, records, batch_size, chunk,
                                  round_, progress)
            wanted = {p.task_id for p in problems}
            summary[name] = summarise(bench, [r for r in records.records if r["task_id"] in wanted],
                                      len(problems), 0 if config.predictions else config.self_refine)
            summary[name].update(sandbox.describe())
            tmp = summary_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, summary_path)
    return summary


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
    if missing:
        print(f"warning: {len(missing)} of {len(problems)} {bench.name} tasks have no prediction and are not "
              f"scored, e.g. {missing[0]}", file=sys.stderr)
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
            extracted: Extracted, result: dict, finish_reason: str | None) -> dict:
    return {"benchmark": bench.name, "task_id": problem.task_id, "sample": sample, "round": round_,
            "prompt": prompt, "raw": raw, "extracted": extracted.text, "finish_reason": finish_reason, **result}


def _generate_and_score(config: EvalConfig, bench: Benchmark, problems: list[Problem], backend: Backend | None,
                        sandbox: Sandbox, records: _Records, batch_size: int, chunk: int, progress: bool) -> None:
    assert backend is not None
    todo = [(p, s) for p in problems for s in range(config.n_samples) if (p.task_id, s, 0) not in records.done]
    bar = _progress(len(todo), bench.name, progress)
    for start in range(0, len(todo), chunk):
        part = todo[start: start + chunk]
        generations = backend.generate([p.prompt for p, _ in part], max_new_tokens=config.max_new_tokens,
                                       temperature=config.temperature, top_p=config.top_p,
                                       seed=config.seed + start, stop=bench.stop, batch_size=batch_size)
        items = [(p, bench.extract(p, g.text)) for (p, _), g in zip(part, generations)]
        results = score(bench, sandbox, items, bar)
        records.add([_record(bench, p, s, 0, p.prompt, g.text, extracted, result, g.finish_reason)
                     for (p, s), g, (_, extracted), result in zip(part, generations, items, results)])
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


def _refine_round(config: EvalConfig, bench: Benchmark, problems: list[Problem], backend: Backend | None,
                  sandbox: Sandbox, records: _Records, batch_size: int, chunk: int, round_: int,
                  progress: bool) -> None:
    """One self-refine round over every sample whose latest attempt failed."""
    assert backend is not None
    by_id = {p.task_id: p for p in problems}
    latest: dict[tuple[str, int], dict] = {}
    for rec in sorted(records.records, key=lambda r: r["round"]):
        if rec["round"] < round_ and rec["task_id"] in by_id:
            latest[(rec["task_id"], rec["sample"])] = rec
    todo = [(by_id[t], s, rec) for (t, s), rec in latest.items()
            if rec["status"] != "passed" and (t, s, round_) not in records.done]
    temperature = config.refine_temperature if config.refine_temperature is not None else config.temperature
    bar = _progress(len(todo), f"{bench.name} refine {round_}", progress)
    for start in range(0, len(todo), chunk):
        part = todo[start: start + chunk]
        traces = _traces(bench, sandbox, part) if config.refine_trace else [None] * len(part)
        prompts = [refine_prompt(bench.description(p), rec["extracted"],
                                 rec.get("failed_test") or f"# {rec['message']}", trace)
                   for (p, _, rec), trace in zip(part, traces)]
        generations = backend.generate(prompts, max_new_tokens=config.refine_max_new_tokens,
                                       temperature=temperature, top_p=config.top_p,
                                       seed=config.seed + 1000003 * round_ + start, stop=("[/Refined]",),
                                       batch_size=batch_size)
        items = [(p, Extracted(sanitize(refined_code(g.text), p.record.get("entry_point"))))
                 for (p, _, _), g in zip(part, generations)]
        results = score(bench, sandbox, items, bar)
        records.add([_record(bench, p, s, round_, prompt, g.text, extracted, result, g.finish_reason)
                     for (p, s, _), prompt, g, (_, extracted), result in zip(part, prompts, generations, items, results)])
    if bar is not None:
        bar.close()

