"""``semcoder generate``: sample completions from a native checkpoint or an HF directory."""

from __future__ import annotations

import argparse
import json
import sys

from semcoder_jax.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="generate text with the KV-cache sampler",
                                   description="Generate completions from a native checkpoint, a training run "
                                               "or an HF directory.")
    parser.add_argument("--model", required=True, help="native checkpoint, training run or HF directory")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    prompt.add_argument("--prompt-file", help="file of prompts: JSON Lines with a 'prompt' field, or one plain-text prompt")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", nargs="+", default=[], metavar="STR", help="stop strings (cut before them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default: float32 on CPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.set_defaults(func=run)


def read_prompts(path: str) -> list[str]:
    """JSON Lines of objects with a ``prompt`` field (``.jsonl``), else the whole file is one prompt."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read prompt file ({e.strerror})") from None
    if not path.endswith(".jsonl"):
        return [text]
    prompts = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise UserError(f"{path}:{lineno}: expected an object with a string 'prompt' field")
        prompts.append(record["prompt"])
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def run(args: argparse.Namespace) -> int:
    from semcoder_jax.generate import load_generator

    if args.max_new_tokens <= 0:
        raise UserError("--max-new-tokens must be positive")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError("--top-p must be in (0, 1]")
    prompts = args.prompt if args.prompt else read_prompts(args.prompt_file)
    generator = load_generator(args.model, dtype=args.dtype, tokenizer=args.tokenizer)
    results = generator.generate(prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, seed=args.seed, stop=args.stop, batch_size=args.batch_size)
    for prompt, result in zip(prompts, results):
        if args.json:
            print(json.dumps({"prompt": prompt, "completion": result.text, "token_ids": result.token_ids,
                              "finish_reason": result.finish_reason}))
        else:
            sys.stdout.write(result.text + "\n")
    if (line := generator.decoding_summary()) is not None:
        print(line, file=sys.stderr)
    return 0
