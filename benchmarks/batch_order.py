"""The bundled run's loss per step and per task under three data setups, side by side in one run.

  before      data.seq_len=256 (truncates 71 % of the sample) and rows in the packer's longest-first
              order (``data.pipeline.row_order=packed``): what ``tiny_cpu.yaml`` trained on before issue 23
  order only  data.seq_len=256, rows in seeded random order
  after       the current ``tiny_cpu.yaml`` (seq_len 1024, truncating nothing; random row order)

Every setup trains from the same initialisation with the same optimizer and prints, per logged step, the
training loss (all tasks and per task) and, at every eval step, the held-out loss over the whole held-out
split.  The "spike" column is the worst ratio of a logged loss to the lowest logged before it (1.0 for a
curve that never rises).  Goal: no periodic spikes (worst ratio near 1) and a lower held-out loss for the
same number of steps.  Losses at different seq_len are over different tokens (truncated answers are not
scored at 256), so compare shapes across seq_len and values only within one.

    python benchmarks/batch_order.py [--steps 150] [--setups before,order_only,after]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch", "configs",
                      "tiny_cpu.yaml")
SETUPS = {
    "before": ["data.seq_len=256", "data.pipeline.row_order=packed", "data.max_truncated=1"],
    "order_only": ["data.seq_len=256", "data.max_truncated=1"],
    "after": [],
}
TASKS = ("nl2code", "exec_i", "exec_o", "refine")


def run(setup: str, steps: int, workdir: str) -> tuple[list[dict], float]:
    from semcoder_jax.train.config import load_config
    from semcoder_jax.train.loop import train

    overrides = SETUPS[setup] + [f"train.steps={steps}", "run.progress=false", "run.tensorboard=false",
                                 f"checkpoint.every={steps}", "train.eval_batches=0"]
    run_dir = os.path.join(workdir, setup)
    start = time.perf_counter()
    train(load_config(CONFIG, overrides), run_dir=run_dir)
    elapsed = time.perf_counter() - start
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()], elapsed


def per_task(record: dict, key: str) -> str:
    return " / ".join(f"{record[key + '/' + t]:.2f}" if key + "/" + t in record else "-" for t in TASKS)


def worst_rise(values: list[float]) -> float:
    worst, low = 1.0, float("inf")
    for v in values:
        if low < float("inf"):
            worst = max(worst, v / low)
        low = min(low, v)
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    setups = args.setups.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for setup in setups:
            results[setup] = run(setup, args.steps, workdir)
    print("training loss per logged step (all tasks; per task nl2code / exec_i / exec_o / refine)")
    header = "| step | " + " | ".join(setups) + " |"
    print(header + "\n|" + "---|" * (len(setups) + 1))
    trains = {s: [r for r in results[s][0] if "loss" in r] for s in setups}
    for i, record in enumerate(trains[setups[0]]):
        cells = []
        for s in setups:
            r = trains[s][i]
            cells.append(f"{r['loss']:.3f} ({per_task(r, 'loss')})")
        print(f"| {record['step']} | " + " | ".join(cells) + " |")
    print("\nheld-out loss, whole held-out split (all tasks; per task)")
    print(header + "\n|" + "---|" * (len(setups) + 1))
    evals = {s: [r for r in results[s][0] if "eval_loss" in r] for s in setups}
    for i, record in enumerate(evals[setups[0]]):
        cells = [f"{evals[s][i]['eval_loss']:.3f} ({per_task(evals[s][i], 'eval_loss')})" for s in setups]
        print(f"| {record['step']} | " + " | ".join(cells) + " |")
    print("\nsummary")
    for s in setups:
        losses = [r["loss"] for r in trains[s]]
        rises = {t: worst_rise([r[f"loss/{t}"] for r in trains[s] if f"loss/{t}" in r]) for t in TASKS}
        print(f"{s:10s} spike (worst logged loss / lowest before it) {worst_rise(losses):.2f}, per task "
              + ", ".join(f"{t} {v:.2f}" for t, v in rises.items())
              + f"; final held-out {evals[s][-1]['eval_loss']:.3f}; {results[s][1]:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
