"""Where a GRPO step's time goes: rollout on the engine, rewards in the sandbox, the update.

Runs ``semcoder_jax.rl.loop`` on a random model of a preset's shape (``--layers`` to shrink it) with
CRUXEval forward/backward tasks (the bundled CRUXEval file), ``--prompts-per-step`` x ``--group-size``
rollouts of exactly ``--max-new-tokens`` tokens (EOS is an id the model never samples first, so every
response has the same length and the figures do not depend on the random weights).  A random model
writes no answers, so the rewards are scored on each task's gold answer instead of its response: the
sandbox does the work a trained model's answers would give it.  With equal lengths every response
finishes in the last decode chunk, so nothing of the scoring hides behind decoding: the reward wait here
is its upper bound (a trained model's responses end at different steps; see the README's demo figures).
Prints the mean per step after the
first (which compiles) and ``--record`` writes ``benchmarks/results/grpo_step_<tag>.json``.

    python benchmarks/grpo_step.py                         # tiny, CPU, about a minute
    python benchmarks/grpo_step.py --preset deepseek-coder-1.3b --dtype bfloat16 --record   # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import optax

from data_pipeline.sample.generate import train_byte_level_bpe
from eval.benchmarks import BUNDLED_DATA_DIR, DATA_FILES, read_jsonl
from eval.rewards import score, tasks_from_record
from sandbox import Sandbox
from semcoder_jax.config import get_preset
from semcoder_jax.model import init_params
from semcoder_jax.rl import loop
from semcoder_jax.rl.objective import ObjectiveConfig

RESULTS = Path(__file__).resolve().parent / "results"


class _Tokenizer:
    """The loop's tokenizer protocol over a ``tokenizers.Tokenizer``."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)


def _gold(task) -> str:
    """The right answer in the release's format (CRUXEval tasks carry both the input and the output)."""
    return f"[ANSWER]\nassert f({task.input}) == {task.output}\n[/ANSWER]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--dtype", default="float32" if jax.default_backend() == "cpu" else "bfloat16")
    parser.add_argument("--tasks", type=int, default=64, help="CRUXEval records (each a forward and a backward task)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="steps timed after the first (which compiles)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="sandbox processes")
    parser.add_argument("--record", action="store_true", help="write benchmarks/results/grpo_step_<tag>.json")
    args = parser.parse_args()

    overrides = {"dtype": args.dtype, "param_dtype": "float32"}
    if args.layers:
        overrides["num_layers"] = args.layers
    config = get_preset(args.preset, **overrides)
    records = read_jsonl(BUNDLED_DATA_DIR / DATA_FILES["cruxeval-o"])[: args.tasks]
    tasks = [t for i, r in enumerate(records) for t in tasks_from_record(r, f"cruxeval record {i + 1}")]
    gold = {t.id: _gold(t) for t in tasks}
    tokenizer = _Tokenizer(train_byte_level_bpe([t.prompt for t in tasks], min(config.vocab_size, 4096)))
    never = config.vocab_size - 1  # an EOS no response reaches before its budget: fixed lengths
    settings = loop.GRPOConfig(prompts_per_step=args.prompts_per_step, group_size=args.group_size,
                               micro_batches=args.micro_batches, max_new_tokens=args.max_new_tokens,
                               slots=args.slots, eos_id=never, bos_id=1, objective=ObjectiveConfig())
    params = init_params(config, jax.random.key(0))
    optimizer = optax.adam(1e-6)
    mesh = None
    if jax.device_count() > 1:
        from semcoder_jax.sharding import build_mesh

        mesh = build_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    with Sandbox(workers=args.workers) as sandbox:
        def scorer(batch_tasks, responses):  # the gold answers: real sandbox work for a random model
            return score(sandbox, batch_tasks, [gold[t.id] for t in batch_tasks])

        start = time.perf_counter()
        history = list(loop.run(params, config, tokenizer, tasks, scorer, optimizer, settings, args.steps + 1,
                                mesh=mesh))
        total = time.perf_counter() - start
    timed = history[1:]
    keys = ("seconds_rollout", "seconds_reward", "seconds_scoring", "seconds_update", "seconds_step")
    means = {k: statistics.fmean(h[k] for h in timed) for k in keys}
    rows = args.prompts_per_step * args.group_size
    device = jax.devices()[0]
    result = {
        "preset": args.preset, "layers": config.num_layers, "dtype": args.dtype,
        "device": getattr(device, "device_kind", device.platform), "devices": jax.device_count(),
        "rollouts_per_step": rows, "new_tokens": args.max_new_tokens, "micro_batches": args.micro_batches,
        "slots": args.slots, "steps_timed": len(timed), "first_step_seconds": history[0]["seconds_step"],
        **{k.removeprefix("seconds_"): round(v, 4) for k, v in means.items()},
        "rollout_tokens_per_second": round(rows * args.max_new_tokens / means["seconds_rollout"], 1),
        "pass_rate": statistics.fmean(h["pass_rate"] for h in timed), "wall_seconds": round(total, 1),
    }
    print(f"GRPO step, {args.preset} ({config.num_layers} layers, {args.dtype}) on {result['devices']} x "
          f"{result['device']}: {rows} rollouts x {args.max_new_tokens} tokens, mean of {len(timed)} steps")
    print(f"  rollout {means['seconds_rollout']:.3f} s ({result['rollout_tokens_per_second']:,.0f} tokens/s), "
          f"reward wait {means['seconds_reward']:.3f} s (scoring {means['seconds_scoring']:.3f} s, overlapped), "
          f"update {means['seconds_update']:.3f} s, step {means['seconds_step']:.3f} s; first step "
          f"{result['first_step_seconds']:.1f} s (compiles); gold pass rate {result['pass_rate']:.2f}")
    if args.record:
        tag = f"{args.preset}_l{config.num_layers}_r{rows}_n{args.max_new_tokens}_{args.dtype}_{device.platform}"
        path = RESULTS / f"grpo_step_{tag}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
