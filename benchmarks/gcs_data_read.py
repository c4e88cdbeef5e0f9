"""The pipeline's record reads from gs:// (a local GCS emulator) beside the same files on local disk.

One run, on this machine, interleaved ``--repeats`` times (alternating which side goes first), of what
``data_pipeline.index.RecordIndex`` does with the training files:

- **scan**: building the index (every file streamed once: ``SCAN_AHEAD`` blocks of ``SCAN_BLOCK`` bytes in
  flight for gs://; mmap locally), and with ``--gz`` also the ``.jsonl.gz`` copies (decompressed into a
  local temporary file while streamed);
- **random windows**: ``RecordIndex.read`` of ``--windows`` windows of ``--window`` records of a shuffled
  epoch (what each tf.data map call reads), by 1 thread and by ``--threads`` threads at once (tf.data runs
  several windows in parallel);
- **in-order windows**: the same for an unshuffled epoch (eval data), whose ranges merge into few requests;
- **pipeline**: ``build_batches`` end to end (read, tokenize, pack) for ``--batches`` batches.

Data: the embedded PyX sample repeated ``--copies`` times into ``--shards`` plain JSON Lines shards.  The
emulator (fake-gcs-server, objects in memory) runs on the same CPUs, so the gs:// figures are the client
stack's cost per request (gcsfs/aiohttp in Python, the emulator's HTTP handling), not Cloud Storage's
latency or bandwidth.  Writes ``benchmarks/results/gcs_data_read.json`` (``--no-record``: don't).

    .venv/bin/python benchmarks/gcs_data_read.py [--copies 64] [--shards 8] [--windows 30] [--repeats 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds of another process (the emulator), from /proc."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_shards(out: pathlib.Path, copies: int, shards: int, gz: bool) -> None:
    from data_pipeline.sample import sample_files

    lines = [line for p in sample_files() for line in gzip.open(p)]
    (out / "plain").mkdir(parents=True)
    files = [open(out / "plain" / f"pyx-{i:02d}.jsonl", "wb") for i in range(shards)]  # noqa: SIM115
    for c in range(copies):
        for k, line in enumerate(lines):
            files[(c * len(lines) + k) % shards].write(line)
    for f in files:
        f.close()
    if gz:
        (out / "gz").mkdir()
        for f in sorted((out / "plain").iterdir()):
            (out / "gz" / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes(), compresslevel=6))


class Meter:
    """Wall and CPU seconds of a block (this process, and the emulator's when given its pid)."""

    def __init__(self, emulator_pid: int | None):
        self.pid = emulator_pid

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        self.server = process_cpu(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = cpu_seconds() - self.cpu
        self.server = (process_cpu(self.pid) - self.server) if self.pid else 0.0


def windows_of(index, window: int, count: int, shuffle: bool, seed: int = 0) -> list[np.ndarray]:
    from data_pipeline import order

    perm = order.epoch_permutation(len(index), seed, 0, shuffle)
    n = order.num_windows(len(index), window)
    return [order.window_records(perm, w, window) for w in range(min(count, n))]


def read_windows(index, windows: list[np.ndarray], threads: int, pid: int | None) -> dict:
    with Meter(pid) as m:
        if threads == 1:
            payloads = [sum(len(p) for p in index.read(ids)) for ids in windows]
        else:
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                payloads = list(pool.map(lambda ids: sum(len(p) for p in index.read(ids)), windows))
    records = sum(len(w) for w in windows)
    return {"records": records, "bytes": sum(payloads), "s": m.wall, "cpu_s": m.cpu, "server_cpu_s": m.server,
            "records_per_s": records / m.wall, "mb_per_s": sum(payloads) / m.wall / 1e6}


def requests_per_window(files: list[str], index, windows: list[np.ndarray]) -> float:
    from data_pipeline import remote

    counts = [len(remote.plan_ranges([files[int(index.file_idx[i])] for i in ids], index.offsets[ids].tolist(),
                                     index.lengths[ids].tolist())) for ids in windows]
    return float(np.mean(counts))


def measure_side(side: str, files: list[str], gz_files: list[str], args, tokenizer, pid: int | None) -> dict:
    from data_pipeline.index import RecordIndex
    from data_pipeline.pipeline import PipelineConfig, build_batches

    out: dict = {}
    with Meter(pid) as m:
        index = RecordIndex(files, ["jsonl"] * len(files), [""] * len(files))
    size = int(index.lengths.sum()) + len(index)  # payload bytes and newlines
    out["scan"] = {"records": len(index), "bytes": size, "s": m.wall, "cpu_s": m.cpu, "server_cpu_s": m.server,
                   "records_per_s": len(index) / m.wall, "mb_per_s": size / m.wall / 1e6}
    if gz_files:
        with Meter(pid) as m:
            gz_index = RecordIndex(gz_files, ["jsonl"] * len(gz_files), ["GZIP"] * len(gz_files))
        out["scan gz"] = {"records": len(gz_index), "s": m.wall, "cpu_s": m.cpu, "server_cpu_s": m.server,
                          "records_per_s": len(gz_index) / m.wall, "mb_per_s": size / m.wall / 1e6}
        gz_index.close()
    shuffled = windows_of(index, args.window, args.windows, True)
    in_order = windows_of(index, args.window, args.windows, False)
    out["random windows, 1 thread"] = read_windows(index, shuffled, 1, pid)
    out[f"random windows, {args.threads} threads"] = read_windows(index, shuffled, args.threads, pid)
    out["in-order windows, 1 thread"] = read_windows(index, in_order, 1, pid)
    if side == "gs":
        out["requests per window"] = {"random": requests_per_window(files, index, shuffled),
                                      "in order": requests_per_window(files, index, in_order)}
    index.close()
    if args.batches:
        config = PipelineConfig(files=tuple(files), seq_len=args.seq_len, batch_size=args.batch_size, epochs=None,
                                window_size=args.window)
        with Meter(pid) as m, build_batches(config, tokenizer) as it:
            for _, _batch in zip(range(args.batches), it):
                pass
            records = it.stats.records
        out["pipeline"] = {"records": records, "batches": args.batches, "s": m.wall, "cpu_s": m.cpu,
                           "server_cpu_s": m.server, "records_per_s": records / m.wall}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=64, help="sample copies (1 copy: 1,050 records, 1.1 MB)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--window", type=int, default=1024, help="records per window (PipelineConfig.window_size)")
    parser.add_argument("--windows", type=int, default=30, help="windows read per measurement")
    parser.add_argument("--threads", type=int, default=4, help="windows read at once in the parallel measurement")
    parser.add_argument("--batches", type=int, default=200, help="pipeline batches end to end (0: skip)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gz", action=argparse.BooleanOptionalAction, default=True, help="also scan .jsonl.gz copies")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-record", action="store_true", help="print only; do not write the results file")
    args = parser.parse_args()

    import record

    from tests.gcs_emulator import GcsEmulator

    started = record.machine()
    emulator = GcsEmulator()
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    from data_pipeline import remote
    from data_pipeline.sample import sample_tokenizer_dir
    from data_pipeline.tokenizer import load_tokenizer
    from semcoder_jax import locations

    locations.configure_environment()
    tokenizer = load_tokenizer(sample_tokenizer_dir())
    work = pathlib.Path(tempfile.mkdtemp(prefix="gcs-data-read-"))
    repeats = []
    try:
        write_shards(work, args.copies, args.shards, args.gz)
        url = f"gs://{emulator.bucket('bench')}/data"
        t = time.perf_counter()
        uploaded = locations.upload_tree(str(work), url)
        upload_s = time.perf_counter() - t
        sides = {"local": (sorted(str(p) for p in (work / "plain").iterdir()),
                           sorted(str(p) for p in (work / "gz").iterdir()) if args.gz else []),
                 "gs": (remote.expand(f"{url}/plain/*.jsonl"), remote.expand(f"{url}/gz/*.jsonl.gz") if args.gz else [])}
        if args.batches:  # import TensorFlow and build a first tf.data pipeline outside the timings
            from data_pipeline.pipeline import PipelineConfig, build_batches

            with build_batches(PipelineConfig(files=tuple(sides["local"][0]), seq_len=args.seq_len,
                                              batch_size=args.batch_size, window_size=args.window), tokenizer) as it:
                next(it)
        for r in range(args.repeats):
            order = ["local", "gs"] if r % 2 == 0 else ["gs", "local"]
            rep = {"copies": args.copies, "shards": args.shards, "window": args.window, "windows": args.windows,
                   "threads": args.threads, "upload_mb_per_s": uploaded / upload_s / 1e6,
                   "settings": {"SCAN_BLOCK": remote.SCAN_BLOCK, "SCAN_AHEAD": remote.SCAN_AHEAD,
                                "READ_CONCURRENCY": remote.READ_CONCURRENCY, "MERGE_GAP": remote.MERGE_GAP,
                                "MAX_RANGE": remote.MAX_RANGE},
                   "sides": {}}
            for side in order:
                files, gz_files = sides[side]
                rep["sides"][side] = measure_side(side, files, gz_files, args, tokenizer,
                                                  emulator.process.pid if side == "gs" else None)
            repeats.append(rep)
            print_table(rep)
        if not args.no_record:
            print(f"recorded: {record.write('gcs_data_read', repeats, started=started)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        emulator.stop()


def print_table(rep: dict) -> None:
    local, gs = rep["sides"]["local"], rep["sides"]["gs"]
    print(f"\n{rep['copies']} sample copies in {rep['shards']} shards ({local['scan']['records']:,} records, "
          f"{local['scan']['bytes'] / 1e6:.1f} MB); windows of {rep['window']} records")
    print(f"{'measurement':<28} {'local rec/s':>12} {'local MB/s':>11} {'gs rec/s':>10} {'gs MB/s':>9} "
          f"{'gs/local':>9} {'gs CPU-s client+server':>24}")
    for key, value in local.items():
        if key not in gs or "records_per_s" not in value:
            continue
        g = gs[key]
        mb = f"{value['mb_per_s']:>11.1f}" if "mb_per_s" in value else f"{'':>11}"
        gmb = f"{g['mb_per_s']:>9.1f}" if "mb_per_s" in g else f"{'':>9}"
        print(f"{key:<28} {value['records_per_s']:>12,.0f} {mb} {g['records_per_s']:>10,.0f} {gmb} "
              f"{g['records_per_s'] / value['records_per_s']:>9.2f} {g['cpu_s']:>12.2f}+{g['server_cpu_s']:<.2f}")
    if "requests per window" in gs:
        q = gs["requests per window"]
        print(f"gs:// requests per window: {q['random']:.0f} shuffled, {q['in order']:.1f} in order; "
              f"upload {rep['upload_mb_per_s']:.0f} MB/s")


if __name__ == "__main__":
    main()
