"""``semcoder data build``: real Python code in, PyX and PyX-R records out, every answer checked by execution.

Stages, in order (``build_report.json`` counts every one):

1. ``seeds``: sample functions from the sources, static filters, exact and near-duplicate removal;
2. ``decontam_seeds``: drop seeds that match a benchmark, before any teacher time is spent;
3. ``programs``: without a teacher a seed is the program, and one with a docstring also gives an NL->code
   record; with one, the teacher writes a problem and a solution per seed, and solutions that do not run go
   back to it with the error (``debug_rounds``);
4. ``execute``: inputs found by probing and type-aware mutation (plus the teacher's proposals), kept when
   they run, repeat exactly and stay small, until coverage stops growing; their traces;
5. ``monologues``: forward and backward, rendered from the trace (no teacher: correct by construction) or the
   teacher's, accepted only when the answer checks out by execution and every value stated for a traced
   variable agrees with the trace;
6. ``refine``: mutants of each verified program that fail one of its tests, with a patch that passes all of
   them (differential testing against the verified program);
7. ``decontam_outputs``: records whose program or input-output pair matches a benchmark are removed.

Execution stages run per program in a process pool (each process with its own sandbox), or as a Ray Data
pipeline (``runner="ray"``); teacher stages run in this process, batched.  Every per-item result is cached by
content hash under ``OUT/.cache``, so a killed build reruns only what is missing and ends with the same output.
"""

from __future__ import annotations

import ast
import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_pipeline.builder import cache as cache_lib
from data_pipeline.builder import teacher as teacher_lib
from data_pipeline.builder.types import Seed, Trace

STAGE_VERSION = 1
OUTPUT_FILES = ("data/pyx.jsonl", "data/pyx_r.jsonl", "build_report.json", "removed.jsonl")


class BuildError(ValueError):
    """A setting or source the build cannot use; the message names it."""


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """What to build from and how much.  ``seeds``: directories, ``.py`` files, JSON Lines files of snippets,
    or ``stdlib`` / ``stdlib:mod1,mod2`` for the running interpreter's standard library."""

    seeds: tuple[str, ...]
    out: str
    data_dir: str | None = None
    rng_seed: int = 0
    limit: int | None = None
    max_inputs: int = 8
    monologues_per_program: int = 2
    refine_per_program: int = 2
    max_mutants: int = 16
    similarity_threshold: float | None = None
    debug_rounds: int = 2
    samples: int = 2
    max_new_tokens: int = 768
    temperature: float = 0.8
    flag_wrong_steps: bool = False
    workers: int = 0
    runner: str = "pool"
    programs: str = "teacher"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise BuildError("--seeds: give at least one source (a directory, .py, .jsonl or 'stdlib')")
        for name in ("max_inputs", "monologues_per_program", "samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise BuildError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("refine_per_program", "max_mutants", "debug_rounds", "workers"):
            if getattr(self, name) < 0:
                raise BuildError(f"{name}={getattr(self, name)}: must not be negative")
        if self.limit is not None and self.limit < 1:
            raise BuildError(f"limit={self.limit}: must be at least 1")
        if self.programs not in ("teacher", "seeds"):
            raise BuildError(f"programs={self.programs!r}: expected teacher (the teacher writes a problem and "
                             "solution per seed) or seeds (the seeds are the programs)")
        if self.runner not in ("pool", "ray"):
            raise BuildError(f"runner={self.runner!r}: expected pool or ray")
        if self.similarity_threshold is not None and not 0 < self.similarity_threshold <= 1:
            raise BuildError(f"similarity_threshold={self.similarity_threshold}: expected a value in (0, 1]")

    def execution_settings(self) -> dict[str, Any]:
        """The settings an execution result depends on (its cache key)."""
        return {"rng_seed": self.rng_seed, "max_inputs": self.max_inputs, "max_mutants": self.max_mutants,
                "refine_per_program": self.refine_per_program}


@dataclasses.dataclass
class Program:
    """A program the monologues and PyX-R are built on: a seed, or a teacher's verified solution."""

    seed: Seed
    nl: str = ""
    examples: tuple[str, ...] = ()
    source: str = "seed"  # "seed" or "teacher"


# ---- execution, per program (runs in a pool process) ------------------------------------------------

_SANDBOXES: list = []


def _sandbox(verify: bool = False):
    """This process's sandboxes: one for first runs (string hash seed 0) and one for second runs (seed 1), so a
    program whose output hangs on string hashing never passes the determinism check, and every kept output is
    the one hash seed 0 gives, in every build."""
    if not _SANDBOXES:
        import atexit

        from sandbox import Sandbox

        _SANDBOXES.extend([Sandbox(workers=1, hash_seed=0), Sandbox(workers=1, hash_seed=1)])
        for sb in _SANDBOXES:
            atexit.register(sb.close)
    return _SANDBOXES[1 if verify else 0]


def execute_program(seed_json: dict, examples: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Inputs, traces and coverage of one program, then its PyX-R candidates: plain data for the cache."""
    from data_pipeline.builder import inputs as inputs_lib

    seed = Seed.from_json(seed_json)
    sandbox = _sandbox()
    found = inputs_lib.generate_inputs(sandbox, seed, examples=examples, rng_seed=settings["rng_seed"],
                                       max_inputs=settings["max_inputs"], verify_sandbox=_sandbox(verify=True))
    result: dict[str, Any] = {"inputs": list(found.inputs), "traces": [t.to_json() for t in found.traces],
                              "line_coverage": found.line_coverage, "branch_coverage": found.branch_coverage,
                              "rejected": dict(found.rejected), "mutants": []}
    if found.inputs and settings["refine_per_program"]:
        result["mutants"] = _failing_mutants(sandbox, seed, found.inputs, [t.output for t in found.traces],
                                             settings)
    return result


def _failing_mutants(sandbox, seed: Seed, inputs: Sequence[str], expected: Sequence[str | None],
                     settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Mutants that fail one of the program's tests, with the buggy run's trace on that test."""
    from data_pipeline.builder import refine as refine_lib
    from data_pipeline.builder import trace as trace_lib

    kept: list[dict[str, Any]] = []
    # refine.mutants takes the operators in turn, so the first kept mutants are different kinds of bug.
    for mutant in refine_lib.mutants(seed, rng_seed=settings["rng_seed"], limit=settings["max_mutants"]):
        if len(kept) >= settings["refine_per_program"]:
            break
        buggy = dataclasses.replace(seed, code=mutant.code)
        runs = trace_lib.trace_calls(sandbox, buggy, list(inputs))
        outputs = [r.output if isinstance(r, Trace) and r.raised is None and not r.truncated else None
                   for r in runs]
        failing = refine_lib.failing_test(outputs, list(expected))
        if failing is None or not isinstance(runs[failing], Trace):
            continue
        kept.append({"mutant": dataclasses.asdict(mutant), "failing": failing,
                     "buggy_trace": runs[failing].to_json()})
    return kept


def _pool_map(fn: Callable[..., Any], jobs: list[tuple], workers: int, runner: str,
              progress: Callable[[], None]) -> list[Any]:
    """``fn(*job)`` for every job, in order: in this process, a process pool, or Ray Data."""
    if not jobs:
        return []
    if runner == "ray":
        return _ray_map(fn, jobs, workers, progress)
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(fn(*job))
            progress()
        return out
    results: list[Any] = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")  # the parent may hold a teacher model's threads
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
            progress()
    return results


def _ray_map(fn: Callable[..., Any], jobs: list[tuple], workers: int, progress: Callable[[], None]) -> list[Any]:
    try:
        import ray
    except ImportError as e:
        raise BuildError("runner=ray needs Ray Data: pip install 'semcoder-jax[ray]'") from e
    if not ray.is_initialized():
        ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    items = [{"i": i, "job": json.dumps(job)} for i, job in enumerate(jobs)]

    def apply(row: dict) -> dict:
        return {"i": row["i"], "result": json.dumps(fn(*json.loads(row["job"])))}

    # One block per job, so the pool's tasks spread over the workers (the default puts few items in one block).
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    rows = dataset.map(apply, compute=ray.data.TaskPoolStrategy(size=max(workers, 1))).take_all()
    results: list[Any] = [None] * len(jobs)
    for row in rows:
        results[row["i"]] = json.loads(row["result"])
        progress()
    return results


# ---- the build --------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, total: int, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, disable=not self.enabled, leave=True)


def resolve_sources(specs: Sequence[str]) -> list[str]:
    """Paths for ``--seeds``; ``stdlib`` / ``stdlib:a,b`` expand to standard-library files."""
    from data_pipeline.builder import seeds as seeds_lib

    paths: list[str] = []
    for spec in specs:
        if spec == "stdlib" or spec.startswith("stdlib:"):
            modules = spec.split(":", 1)[1].split(",") if ":" in spec else None
            found = seeds_lib.stdlib_corpus(modules) if modules else seeds_lib.stdlib_corpus()
            paths += [str(p) for p in found]
        elif not os.path.exists(spec):
            raise BuildError(f"--seeds {spec}: no such file or directory")
        else:
            paths.append(spec)
    return paths


def build(config: BuildConfig, teacher: teacher_lib.Teacher | None = None, *, progress: bool = True,
          stop_after: int | None = None) -> dict[str, Any]:
    """Runs every stage and writes the records to ``OUT/data/pyx.jsonl`` and ``OUT/data/pyx_r.jsonl`` (a
    directory to give training as ``data.path``), the removed items to ``OUT/removed.jsonl`` and the counts to
    ``OUT/build_report.json``; returns the report.  ``stop_after`` (tests) raises ``KeyboardInterrupt`` after that
    many programs were executed, as a kill would, leaving the cache as it was."""
    from data_pipeline.builder import decontam as decontam_lib
    from data_pipeline.builder import nl as nl_lib
    from data_pipeline.builder import seeds as seeds_lib

    started = time.monotonic()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_lib.StageCache(out / ".cache")
    bars = _Progress(progress)
    workers = config.workers or min(os.cpu_count() or 1, 8)
    report: dict[str, Any] = {"config": dataclasses.asdict(config), "teacher": teacher is not None, "stages": {}}
    removed: list[dict[str, Any]] = []

    # 1. seeds
    sources = resolve_sources(config.seeds)
    selected = seeds_lib.select_seeds(sources, limit=config.limit)
    report["stages"]["seeds"] = dict(selected.counts)
    removed += [{"stage": "seeds", **r} for r in selected.removed]

    # 2. decontamination of seeds (before any teacher time is spent)
    decon = decontam_lib.Decontaminator(config.data_dir, **_threshold(config))
    scan = decon.scan([(s.id, s.code) for s in selected.seeds])
    clean_ids = set(scan.kept)
    seeds = [s for s in selected.seeds if s.id in clean_ids]
    report["stages"]["decontam_seeds"] = {"checked": len(selected.seeds), "removed": len(scan.removed),
                                          "kept": len(seeds), "benchmarks": decon.describe(),
                                          "similarity_histogram": scan.histogram}
    removed += [{"stage": "decontam_seeds", **r} for r in scan.removed]
    # A duplicate of a contaminated seed was dropped as a duplicate first; list it with the benchmark too.
    matched = {r["id"]: r for r in scan.removed}
    copies = [{"stage": "decontam_seeds", "id": r["id"], "benchmark_id": matched[r["duplicate_of"]]["benchmark_id"],
               "kind": f"duplicate of {r['duplicate_of']} ({matched[r['duplicate_of']]['kind']})",
               "score": matched[r["duplicate_of"]]["score"]}
              for r in selected.removed if r.get("duplicate_of") in matched]
    removed += copies
    report["stages"]["decontam_seeds"]["removed_duplicates_of_matches"] = len(copies)

    # 3. programs (and NL -> code records)
    nl_records: list[dict[str, Any]] = []
    if teacher is None or config.programs == "seeds":
        programs, nl_records, counts = _programs_from_seeds(seeds, nl_lib)
    else:
        programs, nl_records, counts = _programs_from_teacher(seeds, teacher, config, cache, bars, workers,
                                                              decon, removed)
    report["stages"]["programs"] = counts

    # 4. execution: inputs, traces, coverage, PyX-R candidates
    if teacher is not None:
        _propose_inputs(programs, teacher, config, cache)
    executed = _execute(programs, config, cache, bars, workers, stop_after)
    report["stages"]["execute"] = _execution_counts(executed)

    # 5. monologues
    if teacher is None:
        fwd, bwd, mono_counts = _monologues_from_traces(programs, executed, config)
    else:
        fwd, bwd, mono_counts = _monologues_from_teacher(programs, executed, teacher, config, cache, bars, workers)
    report["stages"]["monologues"] = mono_counts

    # 6. PyX-R
    refine_records, refine_counts = _refine(programs, executed, teacher, config, cache, bars, workers)
    report["stages"]["refine"] = refine_counts

    # 7. decontamination of outputs (NL -> code records get their program's executed calls as tests)
    report["stages"]["nl_tests"] = _attach_tests(nl_records, programs, executed)
    pyx, out_counts = _decontaminate_outputs(nl_records, fwd, bwd, programs, executed, decon, removed)
    report["stages"]["decontam_outputs"] = out_counts

    report["records"] = {"nl": sum(bool(r["nl"]) for r in pyx), "fwd_mnl": sum(bool(r["fwd_mnl"]) for r in pyx),
                         "bwd_mnl": sum(bool(r["bwd_mnl"]) for r in pyx), "pyx_r": len(refine_records)}
    report["cache"] = {"hits": cache.hits, "misses": cache.misses}
    report["seconds"] = round(time.monotonic() - started, 2)
    (out / "data").mkdir(exist_ok=True)
    _write_jsonl(out / "data" / "pyx.jsonl", pyx)
    _write_jsonl(out / "data" / "pyx_r.jsonl", refine_records)
    _write_jsonl(out / "removed.jsonl", removed)
    _write_json(out / "build_report.json", report)
    return report


def _threshold(config: BuildConfig) -> dict[str, float]:
    return {} if config.similarity_threshold is None else {"threshold": config.similarity_threshold}


def _programs_from_seeds(seeds: list[Seed], nl_lib) -> tuple[list[Program], list[dict], dict[str, int]]:
    programs, records = [], []
    skipped = 0
    for seed in seeds:
        record = nl_lib.nl_record(seed)
        nl = ""
        if record is not None:
            records.append({**record, "id": f"nl-{seed.id}"})
            nl = record["nl"]
        elif seed.doc:
            skipped += 1
        programs.append(Program(seed=seed, nl=nl))
    return programs, records, {"programs": len(programs), "nl_records": len(records),
                               "docstring_unusable": skipped, "without_docstring": sum(not s.doc for s in seeds)}


def _execute(programs: list[Program], config: BuildConfig, cache: cache_lib.StageCache, bars: _Progress,
             workers: int, stop_after: int | None) -> list[dict[str, Any]]:
    settings = config.execution_settings()
    keys = [cache_lib.content_key("execute", STAGE_VERSION, p.seed.to_json(), list(p.examples), settings)
            for p in programs]
    results: list[Any] = [cache.get("execute", k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    bar = bars.bar(len(programs), "execute")
    bar.update(len(programs) - len(todo))
    # In chunks, so each finished chunk is cached before the next starts (a kill loses at most one chunk).
    chunk = max(workers * 4, 1)
    done = 0
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        if stop_after is not None and done >= stop_after:
            bar.close()
            raise KeyboardInterrupt(f"stopped after {done} programs (test)")
        jobs = [(programs[i].seed.to_json(), list(programs[i].examples), settings) for i in part]
        for i, result in zip(part, _pool_map(execute_program, jobs, workers, config.runner, lambda: bar.update(1))):
            cache.put("execute", keys[i], result)
            results[i] = result
        done += len(part)
    bar.close()
    return results


def _execution_counts(executed: list[dict[str, Any]]) -> dict[str, Any]:
    rejected: collections.Counter[str] = collections.Counter()
    ran = [e for e in executed if e["inputs"]]
    for e in executed:
        rejected.update(e["rejected"])
    return {"programs": len(executed), "executable": len(ran),
            "executable_yield": round(len(ran) / len(executed), 4) if executed else 0.0,
            "inputs_kept": sum(len(e["inputs"]) for e in ran),
            "line_coverage_mean": _mean([e["line_coverage"] for e in ran]),
            "branch_coverage_mean": _mean([e["branch_coverage"] for e in ran if e["branch_coverage"] is not None]),
            "inputs_rejected": dict(sorted(rejected.items()))}


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _chosen_traces(seed: Seed, executed: dict[str, Any], k: int) -> list[Trace]:
    """Up to ``k`` of a program's traces that a monologue can narrate (bounded, literal values), most distinct
    paths first (by the lines they ran), deterministic."""
    from data_pipeline.builder import monologue as mono

    traces = [Trace.from_json(t) for t in executed["traces"]]
    traces = [t for t in traces if mono.forward_record(seed, t) is not None]
    chosen: list[Trace] = []
    seen_paths: set[tuple] = set()
    for t in traces:
        path = tuple(s.line for s in t.steps)
        if path not in seen_paths:
            chosen.append(t)
            seen_paths.add(path)
    for t in traces:
        if len(chosen) >= k:
            break
        if t not in chosen:
            chosen.append(t)
    return chosen[:k]


def _monologues_from_traces(programs: list[Program], executed: list[dict[str, Any]], config: BuildConfig):
    from data_pipeline.builder import monologue as mono

    fwd, bwd = [], []
    counts: collections.Counter[str] = collections.Counter()
    for program, result in zip(programs, executed):
        chosen = _chosen_traces(program.seed, result, config.monologues_per_program)
        if result["traces"] and not chosen:
            counts["programs_without_narratable_trace"] += 1
        for k, trace in enumerate(chosen):
            f = mono.forward_record(program.seed, trace)
            b = mono.backward_record(program.seed, trace)
            if f is not None:
                fwd.append({**f, "id": f"fwd-{program.seed.id}-{k}"})
            else:
                counts["forward_not_narratable"] += 1
            if b is not None:
                bwd.append({**b, "id": f"bwd-{program.seed.id}-{k}"})
            else:
                counts["backward_not_narratable"] += 1
    return fwd, bwd, {"source": "trace", "forward": len(fwd), "backward": len(bwd), **counts}


def _refine(programs: list[Program], executed: list[dict[str, Any]], teacher, config: BuildConfig,
            cache: cache_lib.StageCache, bars: _Progress, workers: int) -> tuple[list[dict], dict[str, Any]]:
    """PyX-R records from the failing mutants found during execution; the patch is the verified program
    (no teacher) or the teacher's, kept only if it passes every test of the program."""
    from data_pipeline.builder import refine as refine_lib
    from data_pipeline.builder.refine import Mutant

    records: list[dict] = []
    counts: collections.Counter[str] = collections.Counter()
    pending: list[tuple[Program, dict, dict, dict]] = []  # (program, executed, candidate, record)
    for program, result in zip(programs, executed):
        counts["failing_mutants"] += len(result["mutants"])
        for j, cand in enumerate(result["mutants"]):
            mutant = Mutant(**cand["mutant"])
            failing = cand["failing"]
            expected = result["traces"][failing]["output"]
            record = refine_lib.refine_record(program.nl, program.seed, mutant, result["inputs"][failing], expected,
                                              Trace.from_json(cand["buggy_trace"]),
                                              fixed_trace=Trace.from_json(result["traces"][failing]))
            record["id"] = f"refine-{program.seed.id}-{j}"
            pending.append((program, result, cand, record))
    if teacher is None:
        patches = [p.seed.code for p, _, _, _ in pending]
        responses = [r["response"] for _, _, _, r in pending]
    else:
        prompts = [teacher_lib.refine_prompt(r["fault"]) for _, _, _, r in pending]
        responses = [_as_response(reply, "[/Refined]") for reply in _ask(teacher, prompts, config, cache, "refine")]
        patches = [teacher_lib.parse_refined(reply) for reply in responses]
        counts["teacher_no_patch"] = sum(p is None for p in patches)
    jobs, where = [], []
    for n, ((program, result, _, _), patch) in enumerate(zip(pending, patches)):
        if patch is not None:
            jobs.append((dataclasses.replace(program.seed, code=patch).to_json(), list(result["inputs"]),
                         [t["output"] for t in result["traces"]]))
            where.append(n)
    bar = bars.bar(len(jobs), "refine (differential test)")
    verdicts = _pool_map(differential_test, jobs, workers, config.runner, lambda: bar.update(1))
    bar.close()
    for n, verdict in zip(where, verdicts):
        if verdict == "passed":
            records.append({"fault": pending[n][3]["fault"], "response": responses[n], "id": pending[n][3]["id"]})
        else:
            counts[f"patch_{verdict}"] += 1
    counts["records"] = len(records)
    return records, dict(counts)


def differential_test(seed_json: dict, inputs: list[str], expected: list[str]) -> str:
    """``passed`` when the patched program returns the verified program's output on every input, else why not."""
    from data_pipeline.builder import trace as trace_lib

    runs = trace_lib.trace_calls(_sandbox(), Seed.from_json(seed_json), inputs)
    for run, want in zip(runs, expected):
        if not isinstance(run, Trace):
            return "did_not_run"
        if run.raised is not None:
            return "raised"
        if run.output != want:
            return "wrong_output"
    return "passed"


def _decontaminate_outputs(nl_records, fwd, bwd, programs, executed, decon, removed):
    """Drop monologue records whose input-output pair is a CRUXEval pair; programs were checked as seeds (or as
    teacher solutions when they were made)."""
    kept_fwd, kept_bwd = [], []
    dropped = 0
    for records, kept in ((fwd, kept_fwd), (bwd, kept_bwd)):
        for r in records:
            args, output = _answer_of(r["response"])
            match = decon.check_io(args, output) if args is not None else None
            if match is None:
                kept.append(r)
            else:
                dropped += 1
                removed.append({"stage": "decontam_outputs", "id": r["id"], **dataclasses.asdict(match)})
    tests_dropped = 0
    for r in nl_records:
        clean = [t for t in r["tests"] if decon.check_io(t["input"], t["output"]) is None]
        tests_dropped += len(r["tests"]) - len(clean)
        r["tests"] = clean
    rows = [{"nl": r["nl"], "fwd_mnl": r["fwd_mnl"], "bwd_mnl": r["bwd_mnl"], "response": r["response"],
             "id": r["id"], **({"entry_point": r["entry_point"], "tests": r["tests"]} if r["nl"] else {})}
            for r in (*nl_records, *kept_fwd, *kept_bwd)]
    return rows, {"checked": len(fwd) + len(bwd), "removed_io_pairs": dropped, "removed_nl_tests": tests_dropped}


def _attach_tests(nl_records: list[dict[str, Any]], programs: list[Program], executed: list[dict[str, Any]],
                  limit: int = 10) -> dict[str, int]:
    """Each NL -> code record gets ``entry_point`` and ``tests``: up to ``limit`` of its program's executed
    calls that returned a literal value, as ``{"input": ARGS, "output": VALUE}`` sources (what the RL rewards
    of ``eval.rewards`` run a solution on).  Calls that raised or whose trace was cut are not tests."""
    by_id = {f"nl-{p.seed.id}": (p, e) for p, e in zip(programs, executed)}
    counts = collections.Counter()
    for r in nl_records:
        program, result = by_id.get(r["id"], (None, None))
        tests = []
        for t in (result or {}).get("traces", []):
            if t["output"] is None or t["truncated"]:
                counts["calls_not_tests"] += 1
                continue
            try:
                ast.literal_eval(t["output"])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                counts["calls_not_tests"] += 1
                continue
            tests.append({"input": t["args"], "output": t["output"]})
        r["entry_point"] = program.seed.entry if program is not None else ""
        r["tests"] = tests[:limit]
        counts["records_with_tests" if r["tests"] else "records_without_tests"] += 1
        counts["tests"] += len(r["tests"])
    return {k: counts[k] for k in ("records_with_tests", "records_without_tests", "tests", "calls_not_tests")}


def _answer_of(response: str) -> tuple[str | None, str | None]:
    """(args, output) source of a response's ``[ANSWER] assert f(args) == output [/ANSWER]``."""
    start = response.rfind("[ANSWER]")
    end = response.rfind("[/ANSWER]")
    if start < 0 or end < start:
        return None, None
    text = response[start + len("[ANSWER]"):end].strip()
    try:
        node = ast.parse(text).body[0]
    except (SyntaxError, IndexError):
        return None, None
    if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Call)):
        return None, None
    call = node.test.left
    args = ", ".join(ast.get_source_segment(text, a) or "" for a in call.args)
    return args, ast.get_source_segment(text, node.test.comparators[0])


def _as_response(reply: str, end_tag: str) -> str:
    """A teacher's reply as a record's response: opened with ``[MONOLOGUE]`` (the prompts end with it, so a
    completion starts after it) and cut after ``end_tag`` (what a model writes after that is not the answer)."""
    text = reply.strip("\n")
    if not text.lstrip().startswith("[MONOLOGUE]"):
        text = "[MONOLOGUE]\n" + text
    end = text.find(end_tag)
    return text[:end + len(end_tag)] if end >= 0 else text


# ---- teacher stages ------------------------------------------------------------------------------------


def _ask(teacher, prompts: list[str], config: BuildConfig, cache: cache_lib.StageCache, stage: str,
         sample: int = 0) -> list[str]:
    """The teacher's replies, cached per (prompt, sample, sampling settings)."""
    settings = [config.max_new_tokens, config.temperature, config.rng_seed, sample]
    keys = [cache_lib.content_key("teacher", stage, p, settings) for p in prompts]
    replies: list[str | None] = [cache.get("teacher", k) for k in keys]
    todo = [i for i, r in enumerate(replies) if r is None]
    if todo:
        temperature = 0.0 if sample == 0 and config.samples == 1 else config.temperature
        fresh = teacher.generate([prompts[i] for i in todo], max_new_tokens=config.max_new_tokens,
                                 temperature=temperature, seed=config.rng_seed * 100 + sample)
        for i, reply in zip(todo, fresh):
            cache.put("teacher", keys[i], reply)
            replies[i] = reply
    return replies  # type: ignore[return-value]


def solution_program(code: str, origin: str) -> Seed | str:
    """A teacher's solution as a program (the seeds' slicing and static filters, so it touches no files, network,
    time or randomness), or why it cannot be one."""
    from data_pipeline.builder import seeds as seeds_lib

    return seeds_lib.program_from_code(code, origin)


def _programs_from_teacher(seeds, teacher, config, cache, bars, workers, decon, removed):
    """The teacher writes a problem and solution per seed; a solution that does not load or run on any input
    goes back with its error, up to ``debug_rounds`` times.  Counts by error type (the paper's Table 7)."""
    counts: collections.Counter[str] = collections.Counter()
    replies = _ask(teacher, [teacher_lib.problem_prompt(s.code) for s in seeds], config, cache, "problem")
    candidates: list[tuple[Seed, str, str]] = []  # (seed, problem, code)
    for seed, reply in zip(seeds, replies):
        parsed = teacher_lib.parse_problem_reply(reply)
        if parsed is None:
            counts["reply_unparseable"] += 1
        else:
            candidates.append((seed, *parsed))
    programs: list[Program] = []
    records: list[dict] = []
    errors: collections.Counter[str] = collections.Counter()
    for round_ in range(config.debug_rounds + 1):
        if not candidates:
            break
        checked = []
        for seed, problem, code in candidates:
            program = solution_program(code, f"teacher:{seed.id}")
            checked.append((seed, problem, code, program))
        jobs = [(p.to_json(), teacher_lib.parse_calls(code, p.entry)) for _, _, code, p in checked
                if isinstance(p, Seed)]
        bar = bars.bar(len(jobs), f"executability (round {round_})")
        ran = iter(_pool_map(runs_once, jobs, workers, config.runner, lambda b=bar: b.update(1)))
        bar.close()
        retry = []
        for seed, problem, code, program in checked:
            error = program if isinstance(program, str) else next(ran)
            if error is None:
                match = decon.check(program.code)
                if match is not None:
                    removed.append({"stage": "decontam_solutions", "id": program.id, **dataclasses.asdict(match)})
                    counts["solution_contaminated"] += 1
                    continue
                examples = tuple(teacher_lib.parse_calls(code, program.entry))
                programs.append(Program(seed=program, nl=problem, examples=examples, source="teacher"))
                records.append({"nl": problem, "fwd_mnl": "", "bwd_mnl": "", "id": f"nl-{program.id}",
                                "response": f"```python\n{code.strip()}\n```"})
                counts[f"executable_round_{round_}"] += 1
            else:
                errors[error.split(":", 1)[0]] += 1
                retry.append((seed, problem, code, error))
        if round_ == config.debug_rounds or not retry:
            counts["not_executable"] += len(retry)
            break
        fixes = _ask(teacher, [teacher_lib.debug_prompt(p, c, e) for _, p, c, e in retry], config, cache,
                     f"debug{round_}")
        candidates = []
        for (seed, problem, _, _), fix in zip(retry, fixes):
            code = teacher_lib.first_code_block(fix)
            if code is None:
                counts["debug_reply_without_code"] += 1
            else:
                candidates.append((seed, problem, code))
    return programs, records, {"seeds": len(seeds), "programs": len(programs), **counts,
                               "errors": dict(errors.most_common())}


def runs_once(seed_json: dict, examples: list[str]) -> str | None:
    """None when the program loads and runs on one of its examples (or, without examples, loads); else the
    error as ``Type: message``."""
    from data_pipeline.builder import trace as trace_lib

    seed = Seed.from_json(seed_json)
    if not examples:
        return trace_lib.load_error(_sandbox(), seed)
    runs = trace_lib.trace_calls(_sandbox(), seed, examples)
    for run in runs:
        if isinstance(run, Trace) and run.raised is None:
            return None
    first = runs[0]
    if isinstance(first, Trace):
        return first.raised or "no output"
    return first.detail or first.reason


def _propose_inputs(programs: list[Program], teacher, config: BuildConfig, cache: cache_lib.StageCache) -> None:
    """One round of teacher-proposed inputs per program, merged with its examples before mutation."""
    prompts = [teacher_lib.inputs_prompt(p.seed.code, p.seed.entry, config.max_inputs) for p in programs]
    for program, reply in zip(programs, _ask(teacher, prompts, config, cache, "inputs")):
        proposed = teacher_lib.parse_calls(reply, program.seed.entry)
        program.examples = tuple(dict.fromkeys([*program.examples, *proposed]))


def _monologues_from_teacher(programs, executed, teacher, config, cache, bars, workers):
    """Rejection sampling: ``samples`` replies per prompt; forward kept when the answer is the real output and
    every stated value agrees with the trace; backward kept when the deduced input really gives the output."""
    from data_pipeline.builder import monologue as mono

    counts: collections.Counter[str] = collections.Counter()
    fwd, bwd = [], []
    tasks = []  # (program, trace, k)
    for program, result in zip(programs, executed):
        for k, trace in enumerate(_chosen_traces(program.seed, result, config.monologues_per_program)):
            tasks.append((program, trace, k))
    forward_done: set[int] = set()
    backward_done: set[int] = set()
    for sample in range(config.samples):
        f_idx = [n for n in range(len(tasks)) if n not in forward_done]
        replies = _ask(teacher, [mono.forward_prompt(tasks[n][0].seed, tasks[n][1].args) for n in f_idx], config,
                       cache, "forward", sample)
        for n, reply in zip(f_idx, replies):
            program, trace, k = tasks[n]
            verdict = mono.check_forward(reply, program.seed, trace, flag_only=config.flag_wrong_steps)
            counts[f"forward_{verdict.reason}"] += 1
            if verdict.accepted:
                forward_done.add(n)
                question = mono.python_block(program.seed, f"assert {program.seed.entry}({trace.args}) == ??")
                fwd.append({"nl": "", "fwd_mnl": question, "bwd_mnl": "",
                            "response": _as_response(reply, "[/ANSWER]"),
                            "id": f"fwd-{program.seed.id}-{k}"})
        b_idx = [n for n in range(len(tasks)) if n not in backward_done]
        replies = _ask(teacher, [mono.backward_prompt(tasks[n][0].seed, tasks[n][1].output) for n in b_idx], config,
                       cache, "backward", sample)
        deduced = [mono.parse_answer(reply, tasks[n][0].seed.entry)[0] for n, reply in zip(b_idx, replies)]
        jobs = [(tasks[n][0].seed.to_json(), [args]) for n, args in zip(b_idx, deduced) if args is not None]
        runs = iter(_pool_map(traces_of, jobs, workers, config.runner, lambda: None))
        for n, reply, args in zip(b_idx, replies, deduced):
            program, trace, k = tasks[n]
            ran = next(runs)[0] if args is not None else None
            ran_trace = Trace.from_json(ran) if ran is not None else None
            verdict = mono.check_backward(
                reply, program.seed, trace.output,
                lambda _a, t=ran_trace: t.output if t is not None and t.raised is None else None,
                flag_only=config.flag_wrong_steps, trace_of=lambda _a, t=ran_trace: t)
            counts[f"backward_{verdict.reason}"] += 1
            if verdict.accepted:
                backward_done.add(n)
                question = mono.python_block(program.seed, f"assert {program.seed.entry}(??) == {trace.output}")
                bwd.append({"nl": "", "fwd_mnl": "", "bwd_mnl": question,
                            "response": _as_response(reply, "[/ANSWER]"),
                            "id": f"bwd-{program.seed.id}-{k}"})
    right = counts["forward_accepted"] + counts["forward_wrong_steps"]
    rate = round(counts["forward_wrong_steps"] / right, 4) if right else None
    return fwd, bwd, {"source": "teacher", "prompts": len(tasks), "forward": len(fwd), "backward": len(bwd),
                      "right_answer_wrong_steps_rate": rate, **counts}


def traces_of(seed_json: dict, inputs: list[str]) -> list[dict | None]:
    """The program's trace on each input (None when it did not run)."""
    from data_pipeline.builder import trace as trace_lib

    runs = trace_lib.trace_calls(_sandbox(), Seed.from_json(seed_json), inputs)
    return [r.to_json() if isinstance(r, Trace) else None for r in runs]


# ---- output --------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
