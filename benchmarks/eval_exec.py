"""Throughput of the eval harness's sandbox, and wall time of the main job's eval step on a tiny model.

    .venv/bin/python benchmarks/eval_exec.py [--data-dir /work/shared/data] [--samples 800] [--limit 50]

1. Candidate executions per second per core: the 800 CRUXEval-O gold programs run (a) in the sandbox
   (namespaces, limits, per-sample PID namespace, forked from warm workers) and (b) with a plain
   ``subprocess.run([python, -c, program])`` per sample (no isolation at all: the baseline every reference
   scorer's process-per-sample design approximates), both with one worker per core.
2. ``semcoder eval --benchmark cruxeval-o --mode monologue --limit 50`` wall time with a tiny random LLaMA
   (2 layers, hidden 64) for ``--backend hf`` and ``--backend jax`` (includes model load and compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def programs(data_dir: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in open(data_dir / "cruxeval" / "cruxeval.jsonl")]
    return [f"{r['code']}\nassert {r['output']} == f({r['input']})" for r in rows][:n]


def sandbox_rate(progs: list[str], workers: int) -> tuple[float, int]:
    from eval.sandbox import Job, Sandbox

    with Sandbox(workers=workers) as sb:
        sb.map([Job("x = 1")] * workers)  # warm
        start = time.perf_counter()
        results = sb.map([Job(p, timeout_s=3) for p in progs])
        elapsed = time.perf_counter() - start
    return len(progs) / elapsed, sum(r.status == "passed" for r in results)


def subprocess_rate(progs: list[str], workers: int) -> tuple[float, int]:
    def one(p: str) -> bool:
        with tempfile.TemporaryDirectory() as d:
            return subprocess.run([sys.executable, "-I", "-c", p], cwd=d, capture_output=True,
                                  timeout=3).returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(one, progs))
    return len(progs) / (time.perf_counter() - start), passed


def tiny_model(directory: Path, data_dir: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests" / "eval"))
    import torch
    from conftest import _train_tokenizer
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hf = directory / "hf"
    _train_tokenizer(hf, data_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(AutoTokenizer.from_pretrained(hf)), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         initializer_range=0.3, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(hf)
    return hf


def eval_wall_time(model: Path, backend: str, data_dir: Path, limit: int, max_new_tokens: int, out: Path) -> float:
    cmd = [str(Path(sys.executable).with_name("semcoder")), "eval", "--model", str(model), "--backend", backend,
           "--benchmark", "cruxeval-o", "--mode", "monologue", "--limit", str(limit), "--max-new-tokens",
           str(max_new_tokens), "--batch-size", "10", "--data-dir", str(data_dir), "--out", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--samples", type=int, default=800)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--skip-models", action="store_true")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    progs = programs(args.data_dir, args.samples)
    print(f"machine: {cores} cores, python {sys.version.split()[0]}, {os.uname().release}")
    rate, passed = sandbox_rate(progs, cores)
    print(f"sandbox:             {rate:7.1f} executions/s = {rate / cores:6.1f} per core ({passed}/{len(progs)} passed)")
    rate, passed = subprocess_rate(progs, cores)
    print(f"subprocess baseline: {rate:7.1f} executions/s = {rate / cores:6.1f} per core ({passed}/{len(progs)} passed)")
    if args.skip_models:
        return
    from semcoder_jax.convert import convert_hf_to_native

    with tempfile.TemporaryDirectory() as tmp:
        hf = tiny_model(Path(tmp), args.data_dir)
        native = Path(tmp) / "native"
        convert_hf_to_native(str(hf), str(native))
        for backend, model in (("hf", hf), ("jax", native)):
            seconds = eval_wall_time(model, backend, args.data_dir, args.limit, args.max_new_tokens,
                                     Path(tmp) / f"out-{backend}")
            print(f"cruxeval-o --limit {args.limit} --max-new-tokens {args.max_new_tokens} --backend {backend}: "
                  f"{seconds:.1f} s wall")


if __name__ == "__main__":
    main()
