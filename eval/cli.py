"""``semcoder eval``: score a model (``--model``) or existing generations (``--predictions``) offline.

    semcoder eval --model PATH --backend jax --benchmark cruxeval-o --mode monologue --limit 20 --out DIR
    semcoder eval --predictions samples.jsonl --benchmark humaneval+ --out DIR
    semcoder eval --model PATH --benchmark humaneval+,mbpp+,cruxeval-i,cruxeval-o --protocol semcoder --out DIR
    semcoder eval --model PATH --benchmark humaneval+ --self-refine 5 --out DIR
    semcoder eval download            # fetch the official releases into the data cache (online only)

--protocol semcoder sets the release's prompts, token limits, temperatures and sample counts per
benchmark; giving one of those flags too with another value is an error.  Without it, unset flags take
the defaults shown.  Rerunning with the same --out resumes; a rerun whose model (by content), dtype,
backend, seed or generation settings differ is refused.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from eval.benchmarks import BENCHMARK_NAMES, DATA_ENV
    from eval.prompts import CRUXEVAL_MODES
    from eval.protocol import PROTOCOLS

    p = subparsers.add_parser("eval", help="evaluate on HumanEval(+), MBPP(+), CRUXEval-I/O in a sandbox",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", choices=("run", "download"), default="run",
                   help="run (default) or download the benchmark files into the data cache")
    p.add_argument("--model", help="HF model directory (hf, jax) or native checkpoint / training export (jax)")
    p.add_argument("--backend", choices=("hf", "jax"), default="hf")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
    p.add_argument("--predictions", help="score existing generations instead of generating: EvalPlus samples "
                   "JSONL (task_id + solution|completion), CRUXEval generations JSON, or this harness's "
                   "per-sample JSONL")
    p.add_argument("--benchmark", required=False, default=None,
                   help=f"comma-separated: {', '.join(BENCHMARK_NAMES)}")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="semcoder: the release's generation settings per benchmark (see docs/eval.md)")
    p.add_argument("--mode", choices=CRUXEVAL_MODES, default=None,
                   help="prompt mode of CRUXEval, LiveCodeBench execution / test output and REval (default: "
                        "monologue where SemCoder has one: CRUXEval, lcb-execution; else direct)")
    p.add_argument("--release-version", default=None,
                   help="LiveCodeBench release_version: release_v1 .. release_v6, v5 (one release's new problems), "
                        "release_latest (default)")
    p.add_argument("--start-date", default=None, metavar="YYYY-MM-DD",
                   help="LiveCodeBench: only problems whose contest date is on or after this (after a model's cutoff)")
    p.add_argument("--end-date", default=None, metavar="YYYY-MM-DD", help="LiveCodeBench: ... on or before this")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N problems of each benchmark (also the tasks --predictions must cover)")
    p.add_argument("--n-samples", type=int, default=None, help="samples per task (default 1)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=None, help="default 1.0")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="new tokens per sample (default 1024, or no cap of its own with --max-length)")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt + output tokens per sample (the release's CRUXEval limit, 4096)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0,
                   help="each sample's sampling seed is a function of this, its task and its index")
    p.add_argument("--self-refine", type=int, default=0, metavar="K", help="self-refine rounds after round 0")
    p.add_argument("--refine-temperature", type=float, default=None, help="default: --temperature")
    p.add_argument("--refine-top-p", type=float, default=None, help="default: --top-p")
    p.add_argument("--refine-max-new-tokens", type=int, default=None, help="default 512")
    p.add_argument("--refine-trace", action="store_true",
                   help="add the failing input's execution trace (the [MONOLOGUE] section) to refine prompts")
    p.add_argument("--missing-as-failed", action="store_true",
                   help="--predictions: score tasks without a prediction as failed (else that is an error)")
    p.add_argument("--release-quotes", action="store_true",
                   help="CRUXEval: extract answers exactly as the release (including its double-to-single "
                   "quote replacement, which can turn correct answers wrong)")
    p.add_argument("--workers", type=int, default=None, help="sandbox worker processes (default: CPU count)")
    p.add_argument("--require-isolation", action="store_true",
                   help="refuse to run when the sandbox cannot isolate candidates (no user namespaces) "
                   "instead of warning and running them in mode 'none'")
    p.add_argument("--sandbox-mode", choices=("auto", "namespaces", "none"), default="auto",
                   help="auto (the strongest available), namespaces, or none (rlimits and seccomp only)")
    p.add_argument("--data-dir", default=None, help=f"benchmark data folder (default: ${DATA_ENV} or the "
                   "download cache)")
    p.add_argument("--out", help="output directory (rerunning with the same one resumes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from eval.benchmarks import BENCHMARK_NAMES, resolve_data_dir
    from semcoder_jax.errors import UserError

    if args.action == "download":
        from eval.download import download

        target = resolve_data_dir(args.data_dir)
        written = download(target)
        print(f"{len(written)} file(s) downloaded into {target}")
        return 0
    if not args.benchmark:
        raise UserError("--benchmark is required")
    if not args.out:
        raise UserError("--out is required")
    if bool(args.model) == bool(args.predictions):
        raise UserError("pass exactly one of --model or --predictions")
    names = [n.strip() for n in args.benchmark.split(",") if n.strip()]
    for name in names:
        if name not in BENCHMARK_NAMES:
            raise UserError(f"--benchmark {name!r}: expected one of {', '.join(BENCHMARK_NAMES)}")
    for flag in ("n_samples", "max_new_tokens", "max_length", "refine_max_new_tokens", "batch_size", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.self_refine < 0:
        raise UserError("--self-refine must be >= 0")
    for flag in ("temperature", "refine_temperature"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0")
    for flag in ("top_p", "refine_top_p"):
        if getattr(args, flag) is not None and not 0 < getattr(args, flag) <= 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in (0, 1]")
    if args.missing_as_failed and not args.predictions:
        raise UserError("--missing-as-failed applies to --predictions")

    from eval.runner import EvalConfig, check_resume, format_table, run
    from sandbox import SandboxUnavailable

    config = EvalConfig(benchmarks=names, mode=args.mode, n_samples=args.n_samples, temperature=args.temperature,
                        top_p=args.top_p, max_new_tokens=args.max_new_tokens, max_length=args.max_length,
                        seed=args.seed, limit=args.limit, release_quotes=args.release_quotes,
                        self_refine=args.self_refine, refine_temperature=args.refine_temperature,
                        refine_top_p=args.refine_top_p, refine_max_new_tokens=args.refine_max_new_tokens,
                        refine_trace=args.refine_trace, protocol=args.protocol,
                        missing_as_failed=args.missing_as_failed, model=args.model,
                        backend=args.backend if args.model else None, predictions=args.predictions,
                        release_version=args.release_version, start_date=args.start_date, end_date=args.end_date)
    backend = None
    if args.model:
        from dataclasses import replace

        from eval.backends import load_backend, model_fingerprint, resolve_dtype

        # Everything that ties the output directory to the model is known before the (slow) load: a
        # directory made with other weights, dtype or settings is refused now.
        config = replace(config, dtype=resolve_dtype(args.backend, args.dtype),
                         model_fingerprint=model_fingerprint(args.model))
        check_resume(config, args.out)
        backend = load_backend(args.backend, args.model, config.dtype)
    try:
        summary = run(config, args.out, backend=backend, data_dir=args.data_dir, batch_size=args.batch_size,
                      workers=args.workers, progress=not args.no_progress and sys.stderr.isatty(),
                      sandbox_mode=args.sandbox_mode, require_isolation=args.require_isolation)
    except SandboxUnavailable as e:
        raise UserError(str(e)) from None
    from eval.runner import REVAL_TASKS

    shown = set(names) | ({"reval-consistency"} if set(REVAL_TASKS) <= set(names) else set())
    print(format_table({k: v for k, v in summary.items() if k in shown}))
    print(f"summary: {json.dumps(str(args.out))[1:-1]}/summary.json")
    decoding = getattr(backend, "decoding_summary", None)
    if decoding is not None and (line := decoding()) is not None:
        print(line, file=sys.stderr)
    return 0
