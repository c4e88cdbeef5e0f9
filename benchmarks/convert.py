"""Conversion cost at full deepseek-coder-6.7b shapes: HF -> native -> HF beside a plain file copy.

Writes a random bf16 checkpoint with the 6.7B shapes (13.5 GB; ``--layers`` shrinks it) as sharded
safetensors, then measures in one run, each step in a fresh subprocess so its peak RSS is its own:
  1. a buffered read+write copy of the same bytes (the baseline: moving that much data through this
     disk), and ``cp -r`` for reference (it may use copy_file_range, which skips user space),
  2. ``semcoder convert hf-to-orbax``,
  3. ``semcoder convert orbax-to-hf``,
and checks the round trip is bit-identical.  Each step starts after a ``sync``; "wall" is until the
process exits, "on disk" adds the ``sync`` that flushes what it left in the page cache.  The copy and
the conversions are interleaved and repeated (``--repeats``); ratios compare means.  Goals: peak RSS
<= 1.5 x the largest shard, wall time <= 2 x the copy.  Needs free disk of about 4x the checkpoint.

    python benchmarks/convert.py --workdir /tmp/convert-bench [--layers 32] [--shard-size 5GB] [--repeats 2]
        [--keep] [--record [NAME]]     # --keep: leave the checkpoints in --workdir

``--record [NAME]`` writes every repeat's raw results and README table rows to
``benchmarks/results/NAME.json`` (default ``convert_6.7b``, ``convert_6.7b_<N>l`` with ``--layers N`` other
than 32, ``_shard<SIZE>`` appended for a ``--shard-size`` other than 5GB), which ``benchmarks/figures.py``
renders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from semcoder_jax.config import get_preset
from semcoder_jax.convert import _hf_config_json, mappings
from semcoder_jax.safetensors_stream import TensorSpec, parse_size, plan_shards, read_header, write_file


def write_random_hf(directory: str, layers: int, shard_size: str) -> int:
    """A random checkpoint with the 6.7B shapes; returns the largest shard's size in bytes."""
    import ml_dtypes

    dtype = np.dtype(ml_dtypes.bfloat16)
    config = get_preset("deepseek-coder-6.7b", num_layers=layers)
    os.makedirs(directory, exist_ok=True)
    specs = [TensorSpec(name, m.hf_shape, dtype) for m in mappings(config) for name in m.hf_names(layers)]
    shards = plan_shards(specs, parse_size(shard_size))
    pool = np.random.default_rng(0).standard_normal(2**24, dtype=np.float32).astype(dtype)

    def data(spec: TensorSpec) -> np.ndarray:
        n = int(np.prod(spec.shape))
        offset = int(hashlib.md5(spec.name.encode()).hexdigest(), 16) % 4096  # distinct tensors
        reps = -(-(n + offset) // pool.size)
        return np.tile(pool, reps)[offset: offset + n].reshape(spec.shape)

    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        write_file(os.path.join(directory, name), shard, data)
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)},
             "weight_map": {s.name: n for n, shard in zip(names, shards) for s in shard}}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(_hf_config_json(config, dtype))
    return max(os.path.getsize(os.path.join(directory, n)) for n in names)


def measured(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, seconds until the output is on disk, and peak RSS (bytes) of one child process.

    Dirty pages left by the previous step are flushed first (untimed), so each step starts alike.
    """
    os.sync()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(argv)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stderr[-3000:]}")
    os.sync()
    durable = time.perf_counter() - start
    rss = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kb"] * 1024
    return wall, durable, rss


_RUNNER = """
import json, resource, subprocess, sys
argv = json.loads(sys.argv[1])
if argv[0] == "cp":
    subprocess.run(["cp", "-r", argv[1], argv[2]], check=True)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
elif argv[0] == "read-write":
    import os
    os.makedirs(argv[2])
    buf = bytearray(16 << 20)
    for name in sorted(os.listdir(argv[1])):
        with open(os.path.join(argv[1], name), "rb") as src, open(os.path.join(argv[2], name), "wb") as dst:
            while n := src.readinto(buf):
                dst.write(memoryview(buf)[:n])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
else:
    from semcoder_jax.cli import main
    assert main(argv) == 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"maxrss_kb": rss}))
"""


def tensors_equal(a_dir: str, b_dir: str) -> bool:
    from semcoder_jax.convert import HFCheckpoint

    a, b = HFCheckpoint(a_dir), HFCheckpoint(b_dir)
    if a.names() != b.names():
        return False
    return all(np.array_equal(a.read(n).view(np.uint16), b.read(n).view(np.uint16)) for n in sorted(a.names()))


def record_name(args: argparse.Namespace) -> str:
    name = "convert_6.7b" + (f"_{args.layers}l" if args.layers != 32 else "")
    if args.shard_size != "5GB":
        name += f"_shard{args.shard_size}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def rows(rep: dict, described: str, largest: int) -> list[dict]:
    """The README's table lines for one repeat (``record.row``): each conversion beside the read+write copy."""
    import record

    copy = rep["read+write copy"]
    out = []
    for step in ("hf-to-orbax", "orbax-to-hf"):
        r = rep[step]
        out.append(record.row(
            f"`semcoder convert {step}`, {described}, own process after a `sync`",
            {"s": r["wall_s"], "on disk s": r["on_disk_s"], "peak RSS GB": r["peak_rss_bytes"] / 1e9,
             "× shard RSS": r["peak_rss_bytes"] / largest},
            baseline={"s": copy["wall_s"], "on disk s": copy["on_disk_s"],
                      "peak RSS GB": copy["peak_rss_bytes"] / 1e9},
            baseline_label="buffered read+write copy of the same files (16 MiB buffer)", compare="s",
            higher_is_better=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/semcoder-convert-bench")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--shard-size", default="5GB")
    parser.add_argument("--skip-verify", action="store_true", help="skip the bit-identity check (saves a re-read)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repetitions of copy and conversions")
    parser.add_argument("--keep", action="store_true", help="leave the checkpoints in --workdir (removed by default)")
    parser.add_argument("--record", nargs="?", const="", default=None, metavar="NAME",
                        help="write benchmarks/results/NAME.json for the docs' tables (default name: see above)")
    args = parser.parse_args()
    import record

    started = record.machine()
    shutil.rmtree(args.workdir, ignore_errors=True)
    src, copy, native, back = (os.path.join(args.workdir, n) for n in ("hf", "copy", "native", "back"))
    t = time.perf_counter()
    largest = write_random_hf(src, args.layers, args.shard_size)
    shard_files = [f for f in os.listdir(src) if f.endswith(".safetensors")]
    total = sum(os.path.getsize(os.path.join(src, f)) for f in os.listdir(src))
    print(f"wrote random deepseek-coder-6.7b-shaped checkpoint ({args.layers} layers): {total / 1e9:.2f} GB, "
          f"largest shard {largest / 1e9:.2f} GB, in {time.perf_counter() - t:.0f}s")
    shape = "deepseek-coder-6.7b shapes" + (f" with {args.layers} of 32 layers" if args.layers != 32 else "")
    described = (f"{shape} ({total / 1e9:.2f} GB bf16, {len(shard_files)} shard{'s' if len(shard_files) > 1 else ''}"
                 f" of at most {args.shard_size}, largest {largest / 1e9:.2f} GB)")
    # This disk's speed swings a lot between minutes (the same copy took 8.6-26 s in one session), so
    # the copy and both conversions are interleaved and repeated, and ratios use the means.
    runs: dict[str, list[tuple[float, float, int]]] = {}
    repeats: list[dict] = []

    def step(rep: dict, name: str, argv: list[str]) -> None:
        result = measured(argv)
        runs.setdefault(name, []).append(result)
        rep[name] = dict(zip(("wall_s", "on_disk_s", "peak_rss_bytes"), result))

    for repeat in range(args.repeats):
        rep: dict = {"repeat": repeat + 1, "layers": args.layers, "bytes": total, "largest_shard_bytes": largest,
                     "shards": len(shard_files), "shard_size": args.shard_size}
        shutil.rmtree(native, ignore_errors=True)
        shutil.rmtree(back, ignore_errors=True)
        step(rep, "read+write copy", ["read-write", src, copy])
        shutil.rmtree(copy)
        if repeat == 0:
            step(rep, "cp -r", ["cp", src, copy])
            shutil.rmtree(copy)
        step(rep, "hf-to-orbax", ["convert", "hf-to-orbax", "--hf", src, "--out", native])
        step(rep, "orbax-to-hf",
             ["convert", "orbax-to-hf", "--ckpt", native, "--out", back, "--max-shard-size", args.shard_size])
        rep["rows"] = rows(rep, described, largest)
        repeats.append(rep)
    mean = {name: [sum(column) / len(column) for column in zip(*values)] for name, values in runs.items()}
    copy_wall, copy_durable, _ = mean["read+write copy"]
    print(f"\n{'step':<18}{'runs: wall s':>24}{'mean':>7}{'x copy':>8}{'on disk':>9}{'x copy':>8}"
          f"{'peak RSS GB':>13}{'x shard':>9}")
    for name, values in runs.items():
        wall, durable, _ = mean[name]
        rss = max(v[2] for v in values)
        walls = " / ".join(f"{v[0]:.1f}" for v in values)
        print(f"{name:<18}{walls:>24}{wall:>7.1f}{wall / copy_wall:>8.2f}{durable:>9.1f}{durable / copy_durable:>8.2f}"
              f"{rss / 1e9:>13.2f}{rss / largest:>9.2f}")
    if not args.skip_verify:
        identical = tensors_equal(src, back)
        repeats[-1]["round_trip_bit_identical"] = identical
        print(f"\nround trip bit-identical: {identical}")
    header, _ = read_header(os.path.join(back, sorted(f for f in os.listdir(back) if f.endswith('.safetensors'))[0]))
    print(f"export shards: {len([f for f in os.listdir(back) if f.endswith('.safetensors')])}, "
          f"first holds {len(header)} tensors")
    if not args.keep:  # three copies of the checkpoint (about 40 GB at full size)
        shutil.rmtree(args.workdir, ignore_errors=True)
    if args.record is not None:
        print(f"recorded: {record.write(args.record or record_name(args), repeats, started=started)}")


if __name__ == "__main__":
    main()
