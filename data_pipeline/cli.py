"""``semcoder data``: check, inspect and prepare training data.

  semcoder data check FILE...                               validate records (exit 1 if any is bad)
  semcoder data stats --tokenizer TOK --seq-len N FILE...   tasks, token lengths, truncation, pad vs pack
  semcoder data stats --config CONFIG [KEY=VALUE...]        the task mix a training config trains on
  semcoder data preview --tokenizer TOK FILE                decoded examples with the loss span marked
  semcoder data make-sample                                 regenerate the embedded sample and tokenizer
  semcoder data prepare-tfds --manual-dir DIR --data-dir D  build the ``pyx`` TFDS dataset

Heavy imports (tensorflow, tokenizers) happen inside the commands.
"""

from __future__ import annotations

import argparse
import collections
import sys

from data_pipeline import remote

LOSS_OPEN, LOSS_CLOSE = "\u27e6LOSS\u27e7", "\u27e6/LOSS\u27e7"


def _iter_file(path: str, max_bytes: int):
    """Records or BadRecords of a JSON Lines file or a TFRecord shard."""
    from data_pipeline.pipeline import _file_kind
    from data_pipeline.records import BadRecord, iter_jsonl, parse_example_proto

    kind, compression = _file_kind(path)
    if kind == "jsonl":
        yield from iter_jsonl(path, max_bytes)
        return
    import tensorflow as tf

    for i, raw in enumerate(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator(), 1):
        try:
            yield parse_example_proto(raw, path, i, max_bytes)
        except BadRecord as bad:
            yield bad


def _load_records(files: list[str], max_bytes: int, out=None):
    """(valid records, bad records) of all files; prints each bad one as FILE:LINE: reason."""
    from data_pipeline.pipeline import expand_files
    from data_pipeline.records import BadRecord

    out = out or sys.stdout
    good, bad = [], []
    for path in expand_files(tuple(files)):
        for item in _iter_file(path, max_bytes):
            if isinstance(item, BadRecord):
                bad.append(item)
                print(str(item), file=out)
            else:
                good.append(item)
    return good, bad


def cmd_check(args: argparse.Namespace) -> int:
    from data_pipeline.records import REASONS

    good, bad = _load_records(args.files, args.max_record_bytes)
    tasks = collections.Counter(r.task for r in good)
    print(f"{len(good)} valid records: " + (", ".join(f"{t} {n}" for t, n in sorted(tasks.items())) or "none"))
    if bad:
        counts = collections.Counter(b.reason for b in bad)
        print(f"{len(bad)} bad records: " + ", ".join(f"{REASONS[r]} {n}" for r, n in sorted(counts.items())))
        return 1
    print("0 bad records")
    return 0


def _percentiles(values: list[int]) -> str:
    import numpy as np

    if not values:
        return "n/a"
    p = np.percentile(values, [50, 90, 99])
    return f"p50 {p[0]:.0f}, p90 {p[1]:.0f}, p99 {p[2]:.0f}, max {max(values)}"


def cmd_stats(args: argparse.Namespace) -> int:
    from data_pipeline.examples import build_examples
    from data_pipeline.packing import best_fit_decreasing
    from data_pipeline.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    good, bad = _load_records(args.files, args.max_record_bytes, out=sys.stderr)
    examples = build_examples(good, tokenizer, args.seq_len)
    full = build_examples(good, tokenizer, 1 << 62)
    print(f"records: {len(good)} valid, {len(bad)} bad (listed on stderr)")
    for task in sorted({e.task for e in examples}):
        lengths = [len(e.tokens) for e in full if e.task == task]
        print(f"  {task:8s} {len(lengths):7d} records, tokens {_percentiles(lengths)}")
    lengths = [len(e.tokens) for e in full]
    print(f"all tokens (before truncation): {_percentiles(lengths)}")
    truncated = sum(e.truncated for e in examples)
    print(f"truncated at seq_len {args.seq_len}: {truncated} ({100 * truncated / max(len(examples), 1):.2f} %)")
    kept = [len(e.tokens) for e in examples]
    loss = sum(e.num_loss_tokens for e in examples)
    if kept:
        pad_slots = len(kept) * args.seq_len
        rows = sum(len(best_fit_decreasing(kept[i:i + args.window_size], args.seq_len))
                   for i in range(0, len(kept), args.window_size))
        pack_slots = rows * args.seq_len
        print(f"pad : {len(kept)} rows, real tokens {100 * sum(kept) / pad_slots:.2f} %, "
              f"loss tokens {100 * loss / pad_slots:.2f} % of all slots")
        print(f"pack: {rows} rows (best-fit decreasing, windows of {args.window_size}), real tokens "
              f"{100 * sum(kept) / pack_slots:.2f} %, loss tokens {100 * loss / pack_slots:.2f} % of all slots")
    return 0


def _stats(args: argparse.Namespace, config_stats) -> int:
    from data_pipeline.errors import UserError

    if getattr(args, "config", None):
        return config_stats(args)
    if not args.tokenizer or not args.files:
        raise UserError("data stats: give --tokenizer TOK and data FILEs, or --config CONFIG")
    return cmd_stats(args)


def render_example(example, tokenizer) -> str:
    """Decoded example text with the loss-bearing span between LOSS markers."""
    prompt = tokenizer.decode(example.tokens[:example.prompt_len], skip_special_tokens=False)
    completion = tokenizer.decode(example.tokens[example.prompt_len:], skip_special_tokens=False)
    return f"{prompt}{LOSS_OPEN}{completion}{LOSS_CLOSE}"


def cmd_preview(args: argparse.Namespace) -> int:
    from data_pipeline.examples import build_examples
    from data_pipeline.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    good, _ = _load_records([args.file], args.max_record_bytes, out=sys.stderr)
    if args.task:
        good = [r for r in good if r.task == args.task]
    for example, record in zip(build_examples(good[:args.num], tokenizer, args.seq_len), good):
        print(f"===== {record.source} task={example.task} tokens={len(example.tokens)} "
              f"loss_tokens={example.num_loss_tokens}{' TRUNCATED' if example.truncated else ''}")
        print(render_example(example, tokenizer))
    return 0


def cmd_make_sample(args: argparse.Namespace) -> int:
    from data_pipeline.sample import sample_data_dir, sample_tokenizer_dir
    from data_pipeline.sample.generate import make_sample

    out = args.out or sample_data_dir()
    tok = args.tokenizer_out or (sample_tokenizer_dir() if args.out is None else None)
    counts = make_sample(out, tok, seed=args.seed, per_task=args.per_task, refine=args.refine)
    print(f"wrote {counts['pyx']} PyX and {counts['pyx_r']} PyX-R records to {out}"
          + (f"; tokenizer to {tok}" if tok else ""))
    return 0


def cmd_prepare_tfds(args: argparse.Namespace) -> int:
    from data_pipeline.tfds_pyx import prepare

    builder = prepare(args.manual_dir, args.data_dir)
    for name, split in sorted(builder.info.splits.items()):
        print(f"{name}: {split.num_examples} records")
    print(f"bad records: {dict(builder.info.metadata.get('bad_records', {})) or 'none'}; prepared in {builder.data_dir}")
    return 0


def cmd_build(args: argparse.Namespace, load_teacher=None) -> int:
    from data_pipeline.errors import UserError

    if (args.teacher is None) != (args.backend is None):
        raise UserError("data build: --teacher and --backend go together (--teacher PATH --backend hf|jax)")
    if remote.is_remote(args.out):
        # The builder appends to its stage cache and renames files into place, which an object store cannot:
        # it builds in a local mirror of --out (downloaded first, so a rerun resumes from the bucket's
        # cache) that is uploaded at the end, and after a failure too.  Peak local disk: the output + cache.
        try:
            remote.probe_writable(args.out)
        except remote.RemoteError as e:
            raise UserError(f"data build: --out {e}") from None
        with remote.mirrored(args.out, "semcoder data build") as (local, _):
            return _build(args, load_teacher, local)
    return _build(args, load_teacher, args.out)


def _build(args: argparse.Namespace, load_teacher, out: str) -> int:
    from data_pipeline.builder.build import BuildConfig, BuildError, build
    from data_pipeline.errors import UserError

    try:
        config = BuildConfig(seeds=tuple(args.seeds), out=out, data_dir=args.data_dir, rng_seed=args.seed,
                             limit=args.limit, max_inputs=args.max_inputs,
                             monologues_per_program=args.monologues_per_program,
                             refine_per_program=args.refine_per_program, similarity_threshold=args.similarity,
                             debug_rounds=args.debug_rounds, samples=args.samples,
                             max_new_tokens=args.max_new_tokens, flag_wrong_steps=args.flag_wrong_steps,
                             workers=args.workers, runner=args.runner, programs=args.programs)
    except BuildError as e:
        raise UserError(f"data build: {e}") from None
    teacher = None
    if args.teacher is not None:
        if load_teacher is None:
            raise UserError("data build: --teacher needs the eval backends (run it through `semcoder data build`)")
        teacher = load_teacher(args.backend, args.teacher)
    try:
        report = build(config, teacher, progress=not args.quiet)
    except BuildError as e:
        raise UserError(f"data build: {e}") from None
    seeds, execute = report["stages"]["seeds"], report["stages"]["execute"]
    records = report["records"]
    print(f"seeds kept {seeds.get('kept', '?')}; programs {execute['programs']}, executable "
          f"{execute['executable']} ({100 * execute['executable_yield']:.1f} %), line coverage "
          f"{_percent(execute['line_coverage_mean'])}, branch coverage {_percent(execute['branch_coverage_mean'])}")
    print(f"records: nl {records['nl']}, fwd_mnl {records['fwd_mnl']}, bwd_mnl {records['bwd_mnl']}, "
          f"pyx_r {records['pyx_r']}; wrote {args.out}/data/pyx.jsonl, data/pyx_r.jsonl, removed.jsonl, build_report.json "
          f"({report['seconds']:.1f} s)")
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def register(subparsers: argparse._SubParsersAction, config_stats=None, load_teacher=None) -> None:
    """Add ``data`` and its subcommands to the ``semcoder`` parser.

    ``config_stats(args) -> int``, when given, serves ``data stats --config CONFIG [KEY=VALUE ...]``: the
    training side knows how a training config reads its data, this package does not.  ``load_teacher(backend,
    path)``, when given, serves ``data build --teacher``: the generation backends live above this package.
    """
    from data_pipeline.records import DEFAULT_MAX_RECORD_BYTES

    parser = subparsers.add_parser("data", help="check, inspect and prepare PyX training data",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-record-bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES)

    p = sub.add_parser("check", help="validate records; FILE:LINE: reason per bad record")
    p.add_argument("files", nargs="+", metavar="FILE")
    common(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("stats", help="records per task, token lengths, truncation, pad vs pack utilisation; "
                                      "with --config, the task mix a training config will train on")
    p.add_argument("--tokenizer")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--window-size", type=int, default=1024, help="packing window (records), as in the pipeline")
    if config_stats is not None:
        p.add_argument("--config", help="a training config: replay its first epoch (its seq_len, global_batch, mode, "
                                        "seed) and report each task's share of loss tokens, overall and per batch")
        p.add_argument("--hosts", type=int, default=1, help="with --config: the number of hosts to replay")
    p.add_argument("files", nargs="*", metavar="FILE|KEY=VALUE",
                   help="data files; with --config, overrides of the config (key.sub=value)")
    common(p)
    p.set_defaults(func=lambda args: _stats(args, config_stats))

    p = sub.add_parser("preview", help="decoded examples with the loss-bearing span marked")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("-n", "--num", type=int, default=3)
    p.add_argument("--task", default=None, help="only this task (nl2code, exec_i, exec_o, refine, chat)")
    p.add_argument("file", metavar="FILE")
    common(p)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("make-sample", help="regenerate the embedded sample data and tokenizer")
    p.add_argument("--out", default=None, help="data directory (default: the package's sample)")
    p.add_argument("--tokenizer-out", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-task", type=int, default=300)
    p.add_argument("--refine", type=int, default=150)
    p.set_defaults(func=cmd_make_sample)

    p = sub.add_parser("build", help="build PyX and PyX-R records from real Python code, verified by execution",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Seeds (functions sampled from real code) -> NL->code, forward and backward\n"
                                   "monologues and PyX-R, every answer checked by execution in the sandbox;\n"
                                   "resumable (results cached under OUT/.cache).  Example:\n\n"
                                   "  semcoder data build --seeds stdlib --out /tmp/pyx --limit 50\n")
    p.add_argument("--seeds", nargs="+", required=True, metavar="PATH",
                   help="directories or .py files, JSON Lines files of {\"code\": ...} snippets, or 'stdlib' "
                        "('stdlib:textwrap,heapq' for some modules) for the running interpreter's standard library")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--teacher", help="a local model to write problems, inputs, monologues and patches")
    p.add_argument("--backend", choices=["hf", "jax"], help="how to load --teacher (the eval backends)")
    p.add_argument("--data-dir", help="benchmark data for decontamination (default: $SEMCODER_DATA_DIR, else the "
                                      "bundled copies)")
    p.add_argument("--limit", type=int, help="use the first N seeds that pass the filters")
    p.add_argument("--seed", type=int, default=0, help="mutation and sampling seed (the build is deterministic)")
    p.add_argument("--max-inputs", type=int, default=8, help="inputs kept per program")
    p.add_argument("--monologues-per-program", type=int, default=2)
    p.add_argument("--refine-per-program", type=int, default=2)
    p.add_argument("--programs", choices=["teacher", "seeds"], default="teacher",
                   help="with --teacher: teacher = it writes a problem and a solution per seed (the paper's step I); "
                        "seeds = the seeds are the programs, the teacher writes inputs, monologues and patches")
    p.add_argument("--similarity", type=float, help="edit-similarity threshold in (0, 1] for decontamination")
    p.add_argument("--debug-rounds", type=int, default=2, help="teacher: rounds of fixing a solution that fails")
    p.add_argument("--samples", type=int, default=2, help="teacher: replies per monologue prompt")
    p.add_argument("--max-new-tokens", type=int, default=768)
    p.add_argument("--flag-wrong-steps", action="store_true",
                   help="teacher: keep right-answer monologues whose steps contradict the trace (flagged in the "
                        "report) instead of rejecting them")
    p.add_argument("--workers", type=int, default=0, help="processes (default: the CPU count, at most 8)")
    p.add_argument("--runner", choices=["pool", "ray"], default="pool",
                   help="pool: a process pool on this machine; ray: Ray Data (pip install 'semcoder-jax[ray]')")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=lambda args: cmd_build(args, load_teacher))

    p = sub.add_parser("prepare-tfds", help="build the pyx TFDS dataset from released JSON Lines files")
    p.add_argument("--manual-dir", required=True)
    p.add_argument("--data-dir", required=True)
    p.set_defaults(func=cmd_prepare_tfds)
