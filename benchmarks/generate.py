"""Decoding throughput beside transformers' ``generate`` on the same random model.

Builds a random LLaMA model from a preset (``--layers`` to shrink it); then, by ``--workload``:

- ``fixed`` (default): greedy generation of ``--new-tokens`` tokens for ``--batch`` prompts with (a) the
  batched sampler (``generate_ids``) and (b) ``LlamaForCausalLM.generate`` (torch, same dtype, same device
  kind), after one warm-up each; generated tokens per second and whether the greedy tokens agree.
- ``eval``: an evaluation-shaped workload (see ``generate_eval.py``): HumanEval prompts x 10 samples at
  temperature 0.8 and CRUXEval-O monologue prompts greedy with stop ``[/ANSWER]``, through the
  continuous-batching engine, the batched sampler and transformers, side by side.
- ``roofline``: decode step time of the engine at several batch sizes against the time to read the
  weights and the KV cache once at the device's memory bandwidth.

``--repeats N`` times both samplers N times over (each warmed up once, the order alternating);
``--record [NAME]`` writes the repeats' figures and the README table's row to
``benchmarks/results/NAME.json`` (default name: the shape's tag, e.g. ``generate_tiny_l2_b8_p128_n128_fp32_cpu``).

    python benchmarks/generate.py [--preset tiny] [--layers N] [--batch 8] [--prompt-len 128] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np

from semcoder_jax.config import get_preset
from semcoder_jax.generate import generate_ids
from semcoder_jax.model import init_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("fixed", "eval", "roofline"), default="fixed")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32" if jax.default_backend() == "cpu" else "bfloat16")
    parser.add_argument("--repeats", type=int, default=1, help="time both samplers this many times over")
    parser.add_argument("--record", nargs="?", const="", metavar="NAME",
                        help="write benchmarks/results/NAME.json (default NAME: the script's name and the shape's tag)")
    import generate_eval

    generate_eval.add_arguments(parser)
    args = parser.parse_args()
    if args.workload != "fixed":
        return generate_eval.main(args, parser)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    record_name = args.record
    if record_name and re.sub(r"[^A-Za-z0-9_.-]", "-", record_name) != record_name:
        parser.error(f"--record {record_name!r}: use letters, digits, '.', '_' and '-' only")
    import record

    started = record.machine()
    overrides = {"num_layers": args.layers} if args.layers else {}
    config = get_preset(args.preset, dtype=args.dtype, param_dtype=args.dtype, initializer_range=0.5, **overrides)
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.vocab_size, args.prompt_len).tolist() for _ in range(args.batch)]
    eos = -1  # never emitted: every row generates exactly --new-tokens

    def ours():
        return generate_ids(params, config, prompts, max_new_tokens=args.new_tokens, eos_id=eos)

    ours()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = generate_eval.hf_model(config, params, args.dtype, device)
    ids = torch.tensor(prompts, device=device)

    def theirs():
        with torch.no_grad():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                               min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    theirs()
    sync()
    tokens = args.batch * args.new_tokens
    dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(args.dtype, args.dtype)
    claim = (f"greedy decoding, {args.preset} ({config.num_layers} layers, random weights) {dtype}, "
             f"batch {args.batch}, {args.prompt_len} + {args.new_tokens} tokens")
    tag = (f"generate_{args.preset}_l{config.num_layers}_b{args.batch}_p{args.prompt_len}_n{args.new_tokens}_"
           f"{dtype}_{jax.default_backend()}")
    record_name = record_name or re.sub(r"[^A-Za-z0-9_.-]", "-", tag)
    repeats = []
    for i in range(args.repeats):
        seconds = {}
        for side in ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours"):
            start = time.perf_counter()
            if side == "ours":
                ours_out = ours()
            else:
                theirs_out = theirs()
                sync()
            seconds[side] = time.perf_counter() - start
        ours_s, theirs_s = seconds["ours"], seconds["theirs"]
        theirs_ids = theirs_out[:, args.prompt_len:].cpu().tolist()
        agree = np.mean([a == b for (a, _), b in zip(ours_out, theirs_ids)])
        if args.repeats > 1:
            print(f"--- repeat {i + 1}/{args.repeats}")
        print(f"{jax.devices()[0].device_kind}; preset {args.preset} ({config.num_layers} layers, "
              f"{config.num_params() / 1e6:.0f}M params) {args.dtype}; batch {args.batch}, prompt {args.prompt_len}, "
              f"new {args.new_tokens}")
        print(f"{'sampler':<26}{'seconds':>9}{'tokens/s':>11}")
        print(f"{'semcoder-jax (KV cache)':<26}{ours_s:>9.2f}{tokens / ours_s:>11.0f}")
        print(f"{'transformers generate':<26}{theirs_s:>9.2f}{tokens / theirs_s:>11.0f}")
        print(f"speed ratio {theirs_s / ours_s:.2f}x; identical greedy rows: {agree:.0%}")
        row = record.row(claim, {"tokens/s": tokens / ours_s, "identical greedy rows %": 100 * float(agree)},
                         baseline={"tokens/s": tokens / theirs_s}, baseline_label="transformers `generate`",
                         compare="tokens/s")
        repeats.append({"ours_seconds": ours_s, "theirs_seconds": theirs_s, "tokens": tokens,
                        "identical_rows": float(agree), "rows": [row]})
        if args.record is not None:  # after every repeat: a run stopped early keeps what it finished
            path = record.write(record_name, repeats, started=started)
    if args.record is not None:
        print(f"recorded: {path}")


if __name__ == "__main__":
    main()
