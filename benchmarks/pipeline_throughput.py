"""Input pipeline throughput and token utilisation: our tf.data ``pack`` pipeline beside the release's approach.

The release tokenizes with HF ``datasets.map`` (prompt and response separately, labels masked over the
prompt) and batches with a dynamic-padding collator (pad to the longest sequence of each batch, no
packing).  Both sides here read the same JSON Lines files with the same tokenizer, build the same
examples and run one epoch, timed from construction to the last batch; tokens are real (non-pad)
tokens delivered.  "Per core" divides by the CPU seconds the process used (all threads), so a
multi-threaded side gains nothing by using more cores.

  .venv/bin/python benchmarks/pipeline_throughput.py [--copies 20] [--seq-len 2048] [--batch-size 8]
      [--repeats 3 --record]    # --record: benchmarks/results/pipeline_throughput.json, rendered into the docs

Data: the embedded sample (PyX + PyX-R, generated from executed code) repeated ``--copies`` times
into 8 shards; tokenizer: the sample byte-level BPE (vocab 1024) unless ``--tokenizer`` is given.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))



def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and its reaped children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def write_shards(out: pathlib.Path, copies: int, shards: int = 8) -> list[str]:
    from data_pipeline.sample import sample_files

    lines = [line for p in sample_files() for line in gzip.open(p)]
    files = [open(out / f"pyx-{i:02d}.jsonl", "wb") for i in range(shards)]
    for c in range(copies):
        for k, line in enumerate(lines):
            files[(c * len(lines) + k) % shards].write(line)
    for f in files:
        f.close()
    return [f.name for f in files]


def run_ours(files: list[str], tokenizer, seq_len: int, batch_size: int, mode: str) -> dict:
    from data_pipeline.pipeline import PipelineConfig, build_batches

    config = PipelineConfig(files=tuple(files), seq_len=seq_len, batch_size=batch_size, mode=mode, epochs=1)
    wall, cpu = time.perf_counter(), cpu_seconds()
    real = loss = slots = batches = 0
    with build_batches(config, tokenizer) as it:
        for batch in it:
            real += int((batch["segment_ids"] > 0).sum())
            loss += int(batch["loss_mask"].sum())
            slots += batch["segment_ids"].size
            batches += 1
        records = it.stats.records
    return {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu, "real": real, "loss": loss,
            "slots": slots, "batches": batches, "records": records}


def run_release(files: list[str], tokenizer_dir: str, seq_len: int, batch_size: int, debug_decode: bool,
                seed: int = 0) -> dict:
    """The release's data path (ARiSE-Lab/SemCoder src/train.py, src/dataset.py, src/wrapper.py, re-implemented).

    ``datasets.load_dataset("json")`` -> ``map(batched=True)`` that formats the templates, tokenizes
    prompts and completions without special tokens, adds bos / eos, truncates and masks labels (and, as
    released, batch-decodes every mapped batch for a debug print: ``debug_decode``) -> seeded shuffle ->
    batches padded to their longest row with torch (``pad_sequences``), attention mask ``ids != pad``.
    ``num_proc=1`` here (the release uses one process per core; per CPU-second that only adds overhead).
    """
    import datasets
    import torch
    from transformers import AutoTokenizer

    from data_pipeline.prompts import TASKS

    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    pad = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id

    def map_fn(batch):
        prompts = []
        n = len(batch["response"])
        for i in range(n):
            for field, template in TASKS.values():
                value = (batch.get(field) or [None] * n)[i]
                if value:
                    prompts.append(template.format(instruction=value, response="") if template else value)
                    break
        p_ids = [[hf.bos_token_id] + ids for ids in hf(prompts, add_special_tokens=False)["input_ids"]]
        c_ids = [ids + [hf.eos_token_id] for ids in hf(batch["response"], add_special_tokens=False)["input_ids"]]
        full = [p + c for p, c in zip(p_ids, c_ids)]
        input_ids = [x[:seq_len] for x in full]
        labels = [([-100] * len(p) + c)[:seq_len] for p, c in zip(p_ids, c_ids)]
        if debug_decode:
            hf.batch_decode(input_ids, skip_special_tokens=True)[0]  # the release prints this
        return {"input_ids": input_ids, "labels": labels, "exceeding_length": [len(x) > seq_len for x in full]}

    def pad_right(seqs, value):
        out = torch.nn.utils.rnn.pad_sequence([torch.tensor(x, dtype=torch.long) for x in seqs], batch_first=True,
                                              padding_value=value)
        return out

    with tempfile.TemporaryDirectory() as cache:
        wall, cpu = time.perf_counter(), cpu_seconds()
        ds = datasets.load_dataset("json", data_files=files, split="train", cache_dir=cache)
        ds = ds.map(map_fn, batched=True, num_proc=1, remove_columns=ds.column_names)
        ds = ds.shuffle(seed=seed)
        real = loss = slots = batches = 0
        for start in range(0, len(ds), batch_size):
            rows = ds[start:start + batch_size]
            ids, labels = pad_right(rows["input_ids"], pad), pad_right(rows["labels"], -100)
            attention = sum(len(x) for x in rows["input_ids"])  # real tokens (ids.ne(pad) would drop eos)
            real += attention
            loss += int((labels[:, 1:] != -100).sum())
            slots += ids.numel()
            batches += 1
        out = {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu, "real": real, "loss": loss,
               "slots": slots, "batches": batches, "records": len(ds)}
    return out


def resume_cost(files: list[str], tokenizer, seq_len: int, batch_size: int, records: int) -> dict:
    """What a restore costs at the start and near the end of an epoch: the index scan every start makes,
    and the time to the first batch (one window re-packed; nothing before it is read)."""
    from data_pipeline import order as order_lib
    from data_pipeline.pipeline import PipelineConfig, build_batches

    config = PipelineConfig(files=tuple(files), seq_len=seq_len, batch_size=batch_size, epochs=None)
    windows = order_lib.num_windows(records, config.window_size)
    with build_batches(config, tokenizer) as it:
        state = it.get_state()
    out = {"records": records}
    for name, window in (("restore_start", 0), ("restore_end", windows - 1)):
        plan = order_lib.EpochPlan(0, tuple(range(window, windows)), {window: 3})
        wall = time.perf_counter()
        with build_batches(config, tokenizer, state={**state, "plans": [plan.to_json()]}) as it:
            scanned = time.perf_counter()
            next(it)
        out[name] = time.perf_counter() - wall
        out[name + "_index"] = scanned - wall
    out["index_records_per_s"] = records / out["restore_end_index"]
    out["seconds_for_10M"] = 10_000_000 / out["index_records_per_s"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--resume-copies", type=int, default=0,
                        help="also time a restore near the end of an epoch of sample x N (0 = skip)")
    parser.add_argument("--repeats", type=int, default=1, help="run every side this many times (the spread)")
    parser.add_argument("--record", action="store_true",
                        help="write benchmarks/results/pipeline_throughput.json (the docs' figures come from it)")
    args = parser.parse_args()
    import record

    started = record.machine()
    repeats = [measure(args) for _ in range(args.repeats)]
    if args.record:
        print(f"recorded: {record.write('pipeline_throughput', repeats, started=started)}")
    return 0


def measure(args: argparse.Namespace) -> dict:
    """One run of every side; prints the table and returns the raw results."""

    from data_pipeline.sample import sample_tokenizer_dir
    from data_pipeline.tokenizer import load_tokenizer

    tok_dir = args.tokenizer or str(sample_tokenizer_dir())
    tokenizer = load_tokenizer(tok_dir)
    import datasets  # noqa: F401
    import tensorflow as tf  # noqa: F401  (import cost kept out of the timings)

    with tempfile.TemporaryDirectory() as tmp:
        files = write_shards(pathlib.Path(tmp), args.copies)
        results = {
            "ours pack": run_ours(files, tokenizer, args.seq_len, args.batch_size, "pack"),
            "ours pad (fixed)": run_ours(files, tokenizer, args.seq_len, args.batch_size, "pad"),
            "release, as released (map + debug decode)": run_release(files, tok_dir, args.seq_len, args.batch_size,
                                                                     debug_decode=True),
            "release without its debug decode": run_release(files, tok_dir, args.seq_len, args.batch_size,
                                                            debug_decode=False),
        }
    print(f"machine: {os.cpu_count()} CPU cores; data: sample x{args.copies} "
          f"({results['ours pack']['records']} records); tokenizer: {tok_dir}; seq_len {args.seq_len}, "
          f"batch {args.batch_size}")
    header = f"{'pipeline':42s} {'wall s':>7s} {'cpu s':>7s} {'tok/s':>9s} {'tok/s/core':>10s} {'real %':>7s} {'loss %':>7s} {'batches':>8s}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(f"{name:42s} {r['wall']:7.2f} {r['cpu']:7.2f} {r['real'] / r['wall']:9.0f} {r['real'] / r['cpu']:10.0f} "
              f"{100 * r['real'] / r['slots']:7.2f} {100 * r['loss'] / r['slots']:7.2f} {r['batches']:8d}")
    ours = results["ours pack"]
    print()
    for name in ("release, as released (map + debug decode)", "release without its debug decode"):
        rel = results[name]
        print(f"pack vs {name}: {(ours['real'] / ours['cpu']) / (rel['real'] / rel['cpu']):.2f}x tokens per "
              f"CPU-second, {(ours['real'] / ours['wall']) / (rel['real'] / rel['wall']):.2f}x wall")
    print(f"pack utilisation "
          f"{100 * ours['real'] / ours['slots']:.2f} % real, {100 * ours['loss'] / ours['slots']:.2f} % loss-bearing; "
          f"{ours['real'] / ours['wall']:.0f} tokens/s on this host")
    if args.resume_copies:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_shards(pathlib.Path(tmp), args.resume_copies)
            n = sum(1 for f in files for _ in open(f, "rb"))
            cost = resume_cost(files, tokenizer, args.seq_len, args.batch_size, n)
        print(f"resume ({cost['records']} records): first batch after a restore at the start of the epoch "
              f"{cost['restore_start']:.2f} s, in its last window {cost['restore_end']:.2f} s; of that, the index "
              f"scan {cost['restore_end_index']:.2f} s ({cost['index_records_per_s']:.0f} records/s; a 10 M-record "
              f"split: {cost['seconds_for_10M']:.0f} s, at any position)")
        results["resume"] = cost
    print(json.dumps({k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                      for k, v in results.items()}))
    return {"copies": args.copies, "seq_len": args.seq_len, "batch_size": args.batch_size, "sides": results}


if __name__ == "__main__":
    sys.exit(main())
