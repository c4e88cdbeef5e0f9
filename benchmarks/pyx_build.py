"""PyX building: functions per second through input search, tracing and rendering, beside the release's tool
(pysnooper, depth 2) on the same functions and inputs; and the build's two runners (process pool, Ray Data)
on the same seeds.

    .venv/bin/python benchmarks/pyx_build.py [--seeds 60] [--workers 2] [--repeats 3] [--record [NAME]]
        # --record: benchmarks/results/NAME.json (default NAME pyx_build), rendered into the README's table

Seeds: ``select_seeds(stdlib_corpus(), limit=--seeds)``, the standard library of the running interpreter,
as ``semcoder data build --seeds stdlib`` takes them.  Every measurement runs on one worker: this process
and its sandbox (one sandbox worker for first runs, string hash seed 0, and one for the determinism re-runs,
hash seed 1, as ``build.py`` sets them up), seeds one after another.  Sides, each timed wall-clock:

* ours, inputs + trace + render: per seed ``inputs.generate_inputs`` (guessing, mutation, every kept input
  re-run in the other sandbox worker and compared), then forward and backward monologues
  (``monologue.forward_record`` / ``backward_record``) of every kept trace (the build narrates at most
  ``monologues_per_program`` of them).  Functions = all seeds.
* ours, trace + render: the kept inputs of the run above, traced again (``trace.trace_calls``, in the sandbox)
  and rendered as above; no input search.  Functions = the seeds with at least one kept input.
* pysnooper depth 2 (the release's tracer): each such seed's code written to a file, executed into a fresh
  namespace in this process (no sandbox, no process boundary), its entry wrapped in
  ``pysnooper.snoop(output=io.StringIO(), depth=2)`` and called on the same kept inputs in the same order;
  its text is all it makes (what the release consumed).  Same functions as the trace + render side; which
  of the two runs first alternates between repeats.

"Per core" is one worker: functions/s on one worker, wall.  The sandbox workers are long-lived processes
that ``getrusage(RUSAGE_CHILDREN)`` does not see, so CPU seconds are printed (and kept in the record) as
this process plus its live descendants (psutil; their reaped children included), an approximation.

Runners: ``build(BuildConfig(seeds=("stdlib",), limit=--seeds, workers=--workers, runner=R))`` for R in
``pool`` (the default: a spawn process pool) and ``ray`` (Ray Data), each into a fresh temporary directory
(no cache), timed wall from the call to its return; the order alternates between repeats.  The Ray side
includes ``ray.init`` (timed alone too; ``import ray.data`` and the closing ``ray.shutdown`` are not timed).
``pyx.jsonl`` and ``pyx_r.jsonl`` of the two runs are compared byte for byte.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import re
import signal
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

MAX_INPUTS = 8  # BuildConfig's defaults
RNG_SEED = 0
SNOOP_CALL_LIMIT_S = 30.0  # a pysnooper call past this is stopped and counted (the sandbox's limit is 2 s)


def tree_cpu_seconds() -> float:
    """CPU seconds of this process (and its reaped children) and of its live descendants, each with its reaped
    children (approximate: a descendant that exited unreaped since the last call is missed)."""
    import psutil

    t = os.times()
    total = time.process_time() + t.children_user + t.children_system
    for proc in psutil.Process().children(recursive=True):
        try:
            c = proc.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total


class _Timer:
    def __enter__(self) -> _Timer:
        self.wall, self.cpu = time.perf_counter(), tree_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = tree_cpu_seconds() - self.cpu


def sandboxes():
    """This worker's two sandboxes, as ``build._sandbox`` makes them: first runs (hash seed 0), re-runs (1)."""
    from sandbox import Sandbox

    return Sandbox(workers=1, hash_seed=0), Sandbox(workers=1, hash_seed=1)


def warm_up(first, verify, seed) -> None:
    """One load of a seed in each sandbox worker, so neither side pays a cold start."""
    from data_pipeline.builder import trace as trace_lib

    for sb in (first, verify):
        trace_lib.load_error(sb, seed)


def render(seed, traces) -> tuple[int, int]:
    """Forward and backward records of every trace: (records made, characters)."""
    from data_pipeline.builder import monologue as mono

    made = chars = 0
    for t in traces:
        for record in (mono.forward_record(seed, t), mono.backward_record(seed, t)):
            if record is not None:
                made += 1
                chars += len(record["response"]) + len(record["fwd_mnl"]) + len(record["bwd_mnl"])
    return made, chars


def run_inputs(seeds, first, verify) -> dict[str, Any]:
    """Ours: input search, then rendering, seed after seed; returns the kept inputs for the other sides."""
    from data_pipeline.builder import inputs as inputs_lib

    kept: dict[str, list[str]] = {}
    outputs: dict[str, list[str | None]] = {}
    calls = made = chars = 0
    rendering = 0.0
    with _Timer() as t:
        for seed in seeds:
            found = inputs_lib.generate_inputs(first, seed, rng_seed=RNG_SEED, max_inputs=MAX_INPUTS,
                                               verify_sandbox=verify)
            mark = time.perf_counter()
            if found.inputs:
                kept[seed.id] = list(found.inputs)
                outputs[seed.id] = [tr.output for tr in found.traces]
                calls += len(found.inputs)
            m, c = render(seed, found.traces)
            made += m
            chars += c
            rendering += time.perf_counter() - mark
    return {"wall": t.wall, "cpu": t.cpu, "render_wall": rendering, "functions": len(seeds),
            "with_inputs": len(kept), "calls": calls, "records": made, "chars": chars, "kept": kept,
            "outputs": outputs}


def run_trace_render(seeds, kept: dict[str, list[str]], first) -> dict[str, Any]:
    """Ours: trace the kept inputs again (one sandbox job per seed) and render them; no input search."""
    from data_pipeline.builder import trace as trace_lib
    from data_pipeline.builder.types import Trace

    chosen = [s for s in seeds if s.id in kept]
    calls = made = chars = failed = 0
    rendering = 0.0
    with _Timer() as t:
        for seed in chosen:
            runs = trace_lib.trace_calls(first, seed, kept[seed.id])
            mark = time.perf_counter()
            traces = [r for r in runs if isinstance(r, Trace)]
            failed += len(runs) - len(traces)
            calls += len(runs)
            m, c = render(seed, traces)
            made += m
            chars += c
            rendering += time.perf_counter() - mark
    return {"wall": t.wall, "cpu": t.cpu, "render_wall": rendering, "functions": len(chosen), "calls": calls,
            "failed_calls": failed, "records": made, "chars": chars}


class _CallTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise _CallTimeout


def snoop_functions(seeds, kept: dict[str, list[str]], folder: pathlib.Path) -> list[tuple[Any, str, list]]:
    """(seed, file, argument tuples) per seed with kept inputs; each seed's code in its own file, so pysnooper
    shows its source (pysnooper caches source per (module, file name))."""
    from data_pipeline.builder import trace as trace_lib

    out = []
    for seed in seeds:
        if seed.id in kept:
            path = folder / f"seed_{seed.id}.py"
            path.write_text(seed.code)
            out.append((seed, str(path), [trace_lib.parse_args(a) for a in kept[seed.id]]))
    return out


def run_pysnooper(prepared, outputs: dict[str, list[str | None]]) -> dict[str, Any]:
    """The release's tool: exec each seed into a fresh namespace here, wrap its entry in pysnooper depth 2 and
    call it on the kept inputs; counts the calls whose return value's canonical repr is the traced output."""
    import pysnooper

    from data_pipeline.builder import trace as trace_lib

    calls = chars = same = raised = timed_out = 0
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        with _Timer() as t:
            for seed, path, arg_lists in prepared:
                namespace: dict[str, Any] = {"__name__": f"seed_{seed.id}", "__file__": path}
                exec(compile(seed.code, path, "exec"), namespace)
                out = io.StringIO()
                fn = pysnooper.snoop(output=out, depth=2)(namespace[seed.entry])
                for args, want in zip(arg_lists, outputs[seed.id]):
                    calls += 1
                    signal.setitimer(signal.ITIMER_REAL, SNOOP_CALL_LIMIT_S)
                    try:
                        value = fn(*args)
                    except _CallTimeout:
                        timed_out += 1
                        continue
                    except Exception:
                        raised += 1
                        continue
                    finally:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                    same += trace_lib.canonical_repr(value, trace_lib.DEFAULT_MAX_OUTPUT) == want
                chars += len(out.getvalue())
    finally:
        signal.signal(signal.SIGALRM, previous)
    return {"wall": t.wall, "cpu": t.cpu, "functions": len(prepared), "calls": calls, "chars": chars,
            "same_output": same, "raised": raised, "timed_out": timed_out}


def run_build(runner: str, seeds: int, workers: int) -> dict[str, Any]:
    """One ``semcoder data build`` into a fresh directory; wall from the call to its return (ray.init included)."""
    from data_pipeline.builder.build import OUTPUT_FILES, BuildConfig, build

    with tempfile.TemporaryDirectory(prefix=f"pyx_build_{runner}_") as tmp:
        config = BuildConfig(seeds=("stdlib",), out=tmp, limit=seeds, workers=workers, runner=runner)
        result: dict[str, Any] = {"runner": runner}
        started = time.perf_counter()
        if runner == "ray":
            import ray

            init = time.perf_counter()
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)  # as build.py does
            result["ray_init"] = time.perf_counter() - init
            ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            report = build(config, progress=False)
            result["wall"] = time.perf_counter() - started
        finally:
            if runner == "ray":
                import ray

                ray.shutdown()
        result["build_seconds"] = report["seconds"]
        result["records"] = report["records"]
        result["stages"] = report["stages"]  # the counts per stage the README's builder figure renders
        result["files"] = {pathlib.Path(name).name: (pathlib.Path(tmp) / name).read_bytes() for name in OUTPUT_FILES
                           if pathlib.Path(name).name in ("pyx.jsonl", "pyx_r.jsonl")}
    return result


def measure(args: argparse.Namespace, seeds, repeat: int) -> dict[str, Any]:
    """One repeat of every side; prints the table and returns the raw results (with the README rows)."""
    first, verify = sandboxes()
    try:
        warm_up(first, verify, seeds[0])
        ours_full = run_inputs(seeds, first, verify)
        kept, outputs = ours_full.pop("kept"), ours_full.pop("outputs")
        with tempfile.TemporaryDirectory(prefix="pyx_build_snoop_") as tmp:
            prepared = snoop_functions(seeds, kept, pathlib.Path(tmp))
            sides = [("ours", lambda: run_trace_render(seeds, kept, first)),
                     ("pysnooper", lambda: run_pysnooper(prepared, outputs))]
            timed = dict((name, fn()) for name, fn in (sides if repeat % 2 == 0 else sides[::-1]))
    finally:
        first.close()
        verify.close()
    ours, snoop = timed["ours"], timed["pysnooper"]

    runs = {}
    if args.workers:
        order = ("pool", "ray") if repeat % 2 == 0 else ("ray", "pool")
        runs = {r: run_build(r, args.seeds, args.workers) for r in order}
    identical = None
    if runs:
        identical = {name: runs["pool"]["files"][name] == runs["ray"]["files"][name]
                     for name in ("pyx.jsonl", "pyx_r.jsonl")}
        for r in runs.values():
            r["bytes"] = {name: len(data) for name, data in r.pop("files").items()}

    n = len(seeds)
    print(f"repeat {repeat + 1}: {n} stdlib seeds, {ours_full['with_inputs']} with kept inputs "
          f"({ours_full['calls']} calls); one worker; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = (f"{'side':58s} {'funcs':>5s} {'calls':>5s} {'wall s':>7s} {'funcs/s':>8s} {'CPU s*':>7s} "
              f"{'records':>7s} {'chars':>9s}")
    print(header)
    print("-" * len(header))
    for name, r in (("ours: inputs + trace + render (sandboxed)", ours_full),
                    ("ours: trace + render of the kept inputs (sandboxed)", ours),
                    ("pysnooper depth 2 on the kept inputs (in-process)", snoop)):
        print(f"{name:58s} {r['functions']:5d} {r['calls']:5d} {r['wall']:7.2f} {r['functions'] / r['wall']:8.2f} "
              f"{r['cpu']:7.2f} {r.get('records', '-')!s:>7s} {r['chars']:9d}")
    print(f"  * CPU s: this process + its live descendants (sandbox workers), approximate; "
          f"pysnooper returned the traced output on {snoop['same_output']}/{snoop['calls']} calls"
          f" ({snoop['raised']} raised, {snoop['timed_out']} stopped at {SNOOP_CALL_LIMIT_S:.0f} s); "
          f"ours re-traced {ours['calls'] - ours['failed_calls']}/{ours['calls']} calls")
    print(f"  of ours' wall, rendering took {ours_full['render_wall']:.2f} s (inputs side) and "
          f"{ours['render_wall']:.2f} s (trace + render side); the rest is the sandbox runs and their decoding")
    ratio = (ours["functions"] / ours["wall"]) / (snoop["functions"] / snoop["wall"])
    print(f"  trace + render: ours {ratio:.2f}x pysnooper depth 2 in functions/s (wall, one worker)")
    if runs:
        pool, ray_r = runs["pool"], runs["ray"]
        same = "byte-identical" if all(identical.values()) else \
            "DIFFER: " + ", ".join(k for k, v in identical.items() if not v)
        print(f"runners, `semcoder data build --seeds stdlib --limit {args.seeds} --workers {args.workers}` "
              f"(fresh output dir, no cache):")
        print(f"  process pool {pool['wall']:.2f} s; Ray Data {ray_r['wall']:.2f} s "
              f"(of which ray.init {ray_r['ray_init']:.2f} s); Ray / pool {ray_r['wall'] / pool['wall']:.2f}x; "
              f"records {pool['records']}; pyx.jsonl + pyx_r.jsonl {same}")
    print(flush=True)
    result = {"seeds": n, "inputs_trace_render": ours_full, "trace_render": ours, "pysnooper": snoop,
              "runners": runs, "identical": identical}
    result["rows"] = rows(args, result)
    return result


def rows(args: argparse.Namespace, r: dict[str, Any]) -> list[dict[str, Any]]:
    import record

    ours, snoop, full = r["trace_render"], r["pysnooper"], r["inputs_trace_render"]
    n = r["seeds"]
    out = [
        record.row(f"PyX trace + render of the kept inputs of {n} stdlib seeds, one worker: forward and backward "
                   f"monologues, traced in the sandbox (ours) vs pysnooper depth 2 text, in-process, no sandbox",
                   {"functions/s": ours["functions"] / ours["wall"]},
                   baseline={"functions/s": snoop["functions"] / snoop["wall"]},
                   baseline_label=f"pysnooper {_version('pysnooper')} depth 2 (release's tracer)",
                   compare="functions/s"),
        record.row(f"PyX inputs + trace + render, {n} stdlib seeds, one worker + its sandbox: input search with "
                   f"determinism re-runs, then forward and backward monologues",
                   {"functions/s": full["functions"] / full["wall"]}),
    ]
    if r["runners"]:
        pool, ray_r = r["runners"]["pool"], r["runners"]["ray"]
        same = "outputs byte-identical" if all(r["identical"].values()) else "outputs DIFFER"
        out.append(record.row(
            f"`semcoder data build`, {n} stdlib seeds, {args.workers} workers, wall s: process pool (the default "
            f"runner, ours) vs Ray Data (`--runner ray`, ray.init included), fresh output dirs; {same}",
            {"s": pool["wall"]}, baseline={"s": ray_r["wall"], "ray.init s": ray_r["ray_init"]},
            baseline_label=f"Ray Data {_version('ray')}", compare="s", higher_is_better=False))
    return out


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def record_name(value: str) -> str:
    """``--record NAME`` as given (checked filename-safe), or ``pyx_build`` for a bare ``--record``."""
    if not value:
        return "pyx_build"
    if re.fullmatch(r"[A-Za-z0-9_.-]+", value) is None:
        raise SystemExit(f"--record {value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=60, help="stdlib seeds (select_seeds limit)")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers of the runner comparison (0: skip it); the other sides run on one worker")
    parser.add_argument("--repeats", type=int, default=1, help="run every side this many times (the spread)")
    parser.add_argument("--record", nargs="?", const="", metavar="NAME",
                        help="write benchmarks/results/NAME.json (default NAME: pyx_build)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.repeats < 1 or args.workers < 0:
        parser.error("--seeds and --repeats must be at least 1, --workers not negative")
    import record

    from data_pipeline.builder import seeds as seeds_lib

    name = record_name(args.record) if args.record is not None else None
    started = record.machine()
    seeds = seeds_lib.select_seeds(seeds_lib.stdlib_corpus(), limit=args.seeds).seeds
    if not seeds:
        raise SystemExit("no seeds selected")
    import pysnooper  # noqa: F401  (import cost kept out of the timings)
    if args.workers:
        import ray.data  # noqa: F401
    repeats = []
    for k in range(args.repeats):
        repeats.append(measure(args, seeds, k))
        if name is not None:  # after every repeat: a run stopped early keeps what it finished
            path = record.write(name, repeats, started=started)
    if name is not None:
        print(f"recorded: {path}")
    print(json.dumps({k: v for k, v in repeats[-1].items() if k != "rows"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
