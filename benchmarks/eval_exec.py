"""How fast the sandbox scores: candidates per second beside EvalPlus 0.3.1, and what isolation costs per job.

    .venv/bin/python benchmarks/eval_exec.py [--data-dir ../shared/data] [--evalplus-python /tmp/ep/bin/python]
        [--sets humaneval+,mbpp+] [--workers 2] [--repeats 2] [--models] [--record [NAME]]

Every repeat runs 1-3 below once (the EvalPlus throughput rounds alternating ours / theirs); ``--record``
writes each repeat's raw results and README table rows to ``benchmarks/results/NAME.json`` (default
``eval_exec``), which ``benchmarks/figures.py`` renders.

1. Per-job overhead: 300 trivial jobs (``emit(1)``) on one worker, in ``namespaces`` mode (a PID and mount
   namespace, a fresh /proc, /tmp and root per job) and in ``none`` mode, beside starting and joining a bare
   ``multiprocessing.Process`` (fork), which is what EvalPlus pays per check; measured in a fresh
   interpreter each time (a fork's cost grows with the parent's memory).
2. Throughput: the canonical solutions of each EvalPlus set, base and plus inputs (HumanEval+: 164 tasks,
   MBPP+: 378), scored end to end by ``eval.runner.run`` (``--predictions``) and by ``evalplus.evaluate``
   (0.3.1, run with ``--evalplus-python``, a separate virtual environment: evalplus conflicts with the
   project's protobuf) on the same data files, both with ``--workers`` processes and warm ground-truth
   caches (one untimed run each first).  Rounds alternate between the two, ``--repeats`` times.
   Install the reference with: ``python3 -m venv /tmp/ep && /tmp/ep/bin/pip install evalplus==0.3.1
   --no-deps numpy psutil termcolor tqdm fire wget appdirs tempdir tree_sitter tree_sitter_python
   multipledispatch rich``.
3. CRUXEval-O gold answers through the sandbox (executions per second).
4. ``--models``: wall time of ``semcoder eval`` on a tiny random LLaMA, ``--backend hf`` and ``jax``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETS = {"humaneval+": ("humaneval", "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz", "HUMANEVAL_OVERRIDE_PATH"),
        "mbpp+": ("mbpp", "mbppplus/MbppPlus-v0.2.0.jsonl.gz", "MBPP_OVERRIDE_PATH")}

EVALPLUS_RUN = r'''
import json, os, sys, time, types
sys.modules["datasets"] = types.SimpleNamespace(load_dataset=None)  # imported by evalplus.data, unused here
from evalplus.evaluate import evaluate
dataset, samples, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
results_path = samples.replace(".jsonl", "_eval_results.json")
if os.path.exists(results_path):
    os.remove(results_path)  # else evaluate() asks on stdin whether to overwrite it
start = time.perf_counter()
evaluate(dataset, samples=samples, parallel=workers, i_just_wanna_run=True)
seconds = time.perf_counter() - start
results = json.load(open(results_path))["eval"]
plus = sum(r["base_status"] == "pass" and r["plus_status"] == "pass" for rs in results.values() for r in rs)
print(json.dumps({"seconds": seconds, "passed": plus, "total": sum(len(rs) for rs in results.values())}))
'''


def _trivial_rate(mode: str, n: int) -> float:
    from sandbox import Job, Sandbox

    with Sandbox(workers=1, mode=mode, preload=()) as sb:
        sb.map([Job("emit(1)")] * 20)  # warm
        start = time.perf_counter()
        outcomes = sb.map([Job("emit(1)")] * n)
        seconds = time.perf_counter() - start
    assert all(o.values == [1] for o in outcomes)
    return seconds / n


def _noop() -> None:
    pass


def _process_rate(n: int) -> float:
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    for _ in range(n):
        p = ctx.Process(target=_noop)
        p.start()
        p.join()
    return (time.perf_counter() - start) / n


def overhead(n: int = 300) -> dict:
    """Seconds per trivial job in each sandbox mode and per bare ``multiprocessing.Process``."""
    import warnings

    warnings.simplefilter("ignore")
    ns, none, fork = _trivial_rate("namespaces", n), _trivial_rate("none", n), _process_rate(n)
    print(f"per-job overhead (1 worker, {n} trivial jobs): namespaces {1000 * ns:.2f} ms, none {1000 * none:.2f} ms "
          f"(namespaces cost {1000 * (ns - none):+.2f} ms); multiprocessing.Process fork+join {1000 * fork:.2f} ms")
    return {"jobs": n, "namespaces_s_per_job": ns, "none_s_per_job": none, "process_fork_join_s_per_job": fork}


def overhead_fresh(n: int = 300) -> dict:
    """``overhead`` in a fresh interpreter: forking costs with the parent's size, and this process grows to
    over a GB scoring EvalPlus, so each repeat measures from the same small process (as EvalPlus's own is)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import eval_exec; "
            f"print(json.dumps(eval_exec.overhead({n})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"overhead measurement failed: {proc.stderr[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def _samples(data_dir: Path, rel: str, directory: Path) -> tuple[Path, Path]:
    """The canonical solutions as an EvalPlus samples file, and the data file decompressed for EvalPlus."""
    records = [json.loads(line) for line in gzip.open(data_dir / rel, "rt")]
    samples = directory / "samples.jsonl"
    with open(samples, "w") as f:
        for r in records:
            f.write(json.dumps({"task_id": r["task_id"], "solution": r["prompt"] + r["canonical_solution"]}) + "\n")
    plain = directory / Path(rel).name.removesuffix(".gz")
    with gzip.open(data_dir / rel, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return samples, plain


def _ours(name: str, samples: Path, data_dir: Path, out: Path, workers: int, gt_cache: Path) -> dict:
    from eval.runner import EvalConfig, run

    start = time.perf_counter()
    summary = run(EvalConfig(benchmarks=[name], predictions=str(samples)), out, data_dir=data_dir, workers=workers,
                  progress=False, gt_cache_dir=gt_cache)[name]
    return {"seconds": time.perf_counter() - start, "passed": summary["passed"], "total": summary["total"]}


def _evalplus(python: str, dataset: str, samples: Path, plain: Path, env_key: str, workers: int,
              script: Path) -> dict:
    env = {**os.environ, env_key: str(plain)}
    proc = subprocess.run([python, str(script), dataset, str(samples), str(workers)], env=env, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"evalplus failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Throughput:
    """EvalPlus scoring of the canonical solutions: data files and warm ground-truth caches set up once
    (``warm``), then one timed round per repeat (``round``), ours then evalplus 0.3.1."""

    def __init__(self, sets: list[str], data_dir: Path, python: str | None, workers: int, tmp: Path):
        self.sets, self.data_dir, self.python, self.workers, self.tmp = sets, data_dir, python, workers, tmp
        self.script = tmp / "evalplus_run.py"
        self.script.write_text(EVALPLUS_RUN)
        self.files: dict[str, tuple[Path, Path]] = {}
        self.rounds: dict[str, dict[str, list[dict]]] = {name: {"ours": [], "evalplus": []} for name in sets}

    def warm(self) -> None:
        import warnings

        warnings.simplefilter("ignore")
        for name in self.sets:
            dataset, rel, env_key = SETS[name]
            work = self.tmp / dataset
            work.mkdir()
            samples, plain = self.files[name] = _samples(self.data_dir, rel, work)
            _ours(name, samples, self.data_dir, work / "warm", self.workers, self.tmp / "gt")  # ground truth cached
            if self.python:
                _evalplus(self.python, dataset, samples, plain, env_key, self.workers, self.script)

    def round(self, r: int) -> dict[str, dict]:
        """One timed run of each side on every set; returns {set: {"ours": ..., "evalplus": ... or None}}."""
        import warnings

        warnings.simplefilter("ignore")
        out = {}
        for name in self.sets:
            dataset, _, env_key = SETS[name]
            samples, plain = self.files[name]
            ours = _ours(name, samples, self.data_dir, self.tmp / dataset / f"ours-{r}", self.workers,
                         self.tmp / "gt")
            theirs = (_evalplus(self.python, dataset, samples, plain, env_key, self.workers, self.script)
                      if self.python else None)
            self.rounds[name]["ours"].append(ours)
            if theirs:
                self.rounds[name]["evalplus"].append(theirs)
            line = f"{name} round {r + 1}: ours {ours['total'] / ours['seconds']:.2f} candidates/s"
            if theirs:
                line += f", evalplus 0.3.1 {theirs['total'] / theirs['seconds']:.2f}"
            print(line, flush=True)
            out[name] = {"ours": ours, "evalplus": theirs}
        return out

    def summary(self) -> None:
        """The per-set lines over all rounds, as printed before repeats were recorded one by one."""
        for name in self.sets:
            ours, theirs = self.rounds[name]["ours"], self.rounds[name]["evalplus"]
            n = ours[0]["total"]
            rate = [n / o["seconds"] for o in ours]
            line = (f"{name}: {n} canonical solutions, base + plus inputs, {self.workers} workers: ours "
                    + " / ".join(f"{x:.2f}" for x in rate) + f" candidates/s ({ours[0]['passed']}/{n} pass)")
            if theirs:
                ref = [t["total"] / t["seconds"] for t in theirs]
                line += (", evalplus 0.3.1 " + " / ".join(f"{x:.2f}" for x in ref)
                         + f" candidates/s ({theirs[0]['passed']}/{theirs[0]['total']} pass); ratio "
                         f"{statistics.mean(rate) / statistics.mean(ref):.2f}x")
            print(line, flush=True)


def cruxeval_rate(data_dir: Path, workers: int) -> dict:
    from eval.benchmarks import Extracted, get_benchmark
    from eval.runner import score
    from sandbox import Sandbox

    bench = get_benchmark("cruxeval-o")
    problems = bench.load(data_dir)
    with Sandbox(workers=workers) as sb:
        start = time.perf_counter()
        results = score(bench, sb, [(p, Extracted(bench.gold(p))) for p in problems])
        seconds = time.perf_counter() - start
    passed = sum(r["status"] == "passed" for r in results)
    print(f"cruxeval-o gold answers: {len(problems) / seconds:.1f} executions/s with {workers} workers "
          f"({passed}/{len(problems)} pass)")
    return {"problems": len(problems), "seconds": seconds, "passed": passed, "workers": workers}


def model_wall_times(data_dir: Path) -> dict[str, float]:
    sys.path.insert(0, str(REPO / "tests" / "eval"))
    import torch
    from conftest import _train_tokenizer
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from semcoder_jax.convert import convert_hf_to_native

    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        _train_tokenizer(hf, data_dir)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(hf)), hidden_size=64,
                             intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                             initializer_range=0.3, tie_word_embeddings=False)
        LlamaForCausalLM(config).save_pretrained(hf)
        native = Path(tmp) / "native"
        convert_hf_to_native(str(hf), str(native))
        walls = {}
        for backend, model in (("hf", hf), ("jax", native)):
            cmd = [str(Path(sys.executable).with_name("semcoder")), "eval", "--model", str(model), "--backend",
                   backend, "--benchmark", "cruxeval-o", "--mode", "monologue", "--limit", "50",
                   "--max-new-tokens", "64", "--batch-size", "10", "--data-dir", str(data_dir), "--out",
                   str(Path(tmp) / f"out-{backend}")]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.DEVNULL)
            walls[backend] = time.perf_counter() - start
            print(f"semcoder eval cruxeval-o --limit 50 --max-new-tokens 64 --backend {backend}: "
                  f"{walls[backend]:.1f} s wall")
    return walls


LABELS = {"humaneval+": "HumanEval+", "mbpp+": "MBPP+"}


def rows(rep: dict, workers: int) -> list[dict]:
    """The README's table lines for one repeat (``record.row``)."""
    import record

    o = rep["overhead"]
    fork = {"ms/job": 1000 * o["process_fork_join_s_per_job"]}
    out = [record.row(f"sandbox cost per job, trivial job (`emit(1)`), 1 worker, {mode}",
                      {"ms/job": 1000 * o[key]}, baseline=fork,
                      baseline_label="`multiprocessing.Process` fork + join (what EvalPlus pays per check)",
                      compare="ms/job", higher_is_better=False)
           for mode, key in (("`namespaces` mode (PID + mount namespace, fresh /proc, /tmp, root)",
                              "namespaces_s_per_job"), ("`none` mode (no isolation)", "none_s_per_job"))]
    for name, sides in rep["throughput"].items():
        ours, theirs = sides["ours"], sides["evalplus"]
        claim = (f"EvalPlus scoring, {LABELS.get(name, name)} canonical solutions ({ours['total']}), "
                 f"base + plus inputs, {workers} workers, warm ground-truth caches")
        mine = {"candidates/s": ours["total"] / ours["seconds"]}
        if theirs:
            out.append(record.row(claim, mine, baseline={"candidates/s": theirs["total"] / theirs["seconds"]},
                                  baseline_label="evalplus 0.3.1 `evaluate` on the same files",
                                  compare="candidates/s"))
        else:
            out.append(record.row(claim, mine))
    c = rep["cruxeval"]
    out.append(record.row(f"CRUXEval-O gold answers ({c['problems']}) through the sandbox, {c['workers']} workers",
                          {"executions/s": c["problems"] / c["seconds"]}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--evalplus-python", default=None, help="a Python with evalplus==0.3.1 (not the project's)")
    parser.add_argument("--sets", default="humaneval+,mbpp+")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", action="store_true", help="also time semcoder eval on a tiny model")
    parser.add_argument("--record", nargs="?", const="", default=None, metavar="NAME",
                        help="write benchmarks/results/NAME.json (default name: eval_exec) for the docs' tables")
    args = parser.parse_args()
    import record

    started = record.machine()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} cores, load average {load:.1f}, python {sys.version.split()[0]}, "
          f"{os.uname().release}, {time.strftime('%Y-%m-%d')}")
    sets = [s for s in args.sets.split(",") if s]
    if not args.evalplus_python:
        print("(no --evalplus-python: EvalPlus 0.3.1 not measured)")
    repeats = []
    with tempfile.TemporaryDirectory() as tmp:
        scoring = Throughput(sets, args.data_dir, args.evalplus_python, args.workers, Path(tmp))
        scoring.warm()
        for r in range(args.repeats):
            rep = {"overhead": overhead_fresh(), "cruxeval": cruxeval_rate(args.data_dir, args.workers),
                   "throughput": scoring.round(r)}
            rep["rows"] = rows(rep, args.workers)
            repeats.append(rep)
        scoring.summary()
    if args.models:
        walls = model_wall_times(args.data_dir)
        if repeats:
            repeats[-1]["semcoder_eval_wall_s"] = walls
    if args.record is not None:
        print(f"recorded: {record.write(args.record or 'eval_exec', repeats, started=started)}")


if __name__ == "__main__":
    main()
