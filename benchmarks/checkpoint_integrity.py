"""What checkpoint manifests cost: digest throughput, and a 1.3B-shaped train-state save with and without.

Measures in one run, on this machine:
  1. digest throughput per core (one thread) of ``xxh3-64`` (host arrays) and of ``fmix32x2-sum`` in
     numpy (what ``checkpoint verify`` uses for device-digested steps) and jitted on the default jax
     device (what a save on accelerators runs; on CPU this is XLA:CPU, not a goal);
  2. saving a deepseek-coder-1.3b-shaped state (``--items state``: float32 params + AdamW mu and nu,
     16.2 GB; ``--items params``: the float32 params alone, 5.4 GB; ``--preset`` and ``--layers`` change
     the shape) through ``Checkpointer.save`` (manifest included) beside a plain Orbax save of the same
     items without the manifest, interleaved ``--repeats`` times (alternating which goes first); each save is synchronous and followed
     by ``sync``, so the time is the bytes on disk; one untimed save of each first; ratios compare means and medians;
  3. ``semcoder checkpoint verify`` on the saved step (every array read back and digested).
Each of the ``--repeats`` rounds runs 1 (unless ``--no-digests``), one timed save of each kind and 3;
``--record [NAME]`` writes every round's raw results and README table rows to
``benchmarks/results/NAME.json`` (default ``checkpoint_integrity_<items>_<preset>[_<layers>l]``, e.g.
``checkpoint_integrity_params_1.3b``), which ``benchmarks/figures.py`` renders.
Goal: the manifest adds a small fraction (<10 %) to the save.  Needs about 2.5x the state in free disk
and, because an Orbax OCDBT save holds about two copies of what it writes until it commits, about 3x it
in RAM (a 24 GiB machine runs ``--items params`` at full size, ``--items state`` up to ~8 layers).

    python benchmarks/checkpoint_integrity.py --workdir /tmp/ckpt-bench [--items params|state] [--layers N]
        [--repeats 4] [--no-digests] [--record [NAME]]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from semcoder_jax import integrity
from semcoder_jax.config import get_preset
from semcoder_jax.model import abstract_params
from semcoder_jax.train import checkpoint as ckpt_lib


def throughput(fn, nbytes: int, repeats: int = 3) -> float:
    """GB/s of the best of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e9


def digest_rates(size_mb: int) -> dict[str, float]:
    data = np.random.default_rng(0).standard_normal(size_mb * 2**20 // 4, dtype=np.float32)
    on_device = jax.device_put(data.reshape(-1, 1024))
    summed = jax.jit(lambda x: integrity._lanes(x, jnp.uint32(0)))
    jax.block_until_ready(summed(on_device))
    return {
        "xxh3-64 (numpy, 1 thread)": throughput(lambda: integrity.digest_array(data, integrity.XXH3), data.nbytes),
        "fmix32x2-sum (numpy, 1 thread)": throughput(lambda: integrity.digest_array(data, integrity.SUM),
                                                     data.nbytes),
        f"fmix32x2-sum (jit, {jax.devices()[0].platform})": throughput(
            lambda: jax.block_until_ready(summed(on_device)), data.nbytes),
    }


def random_state(preset: str, layers: int | None, items: str):
    """float32 params and AdamW state with the preset's shapes, filled with distinct random values."""
    overrides = {"num_layers": layers} if layers else {}
    config = get_preset(preset, **overrides)
    shapes = abstract_params(config)
    pool = np.random.default_rng(0).standard_normal(2**24 + 4096, dtype=np.float32)
    counter = iter(range(10**6))

    def fill(leaf):
        n = int(np.prod(leaf.shape))
        offset = next(counter) * 7 % 4096
        out = np.empty(n, np.float32)
        for start in range(0, n, 2**24):
            m = min(2**24, n - start)
            out[start:start + m] = pool[offset:offset + m]
        return out.reshape(leaf.shape)  # numpy: Orbax writes it without a device-to-host copy

    params = jax.tree.map(fill, shapes)
    if items == "params":  # a step counter stands in for the optimizer (Orbax refuses an empty tree)
        return params, {"count": np.zeros((), np.int32)}
    abstract_opt = jax.eval_shape(optax.adamw(1e-4).init, shapes)
    opt_state = jax.tree.map(lambda x: fill(x) if x.ndim else np.zeros(x.shape, x.dtype), abstract_opt)
    return params, opt_state


def timed_save(save, step: int) -> float:
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    save(step)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - start


def record_name(args: argparse.Namespace) -> str:
    """``checkpoint_integrity_params_1.3b``, ``checkpoint_integrity_state_1.3b_8l``: the default --record name."""
    name = f"checkpoint_integrity_{args.items}_{args.preset.removeprefix('deepseek-coder-')}"
    if args.layers:
        name += f"_{args.layers}l"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def rows(rep: dict, described: str, platform: str) -> list[dict]:
    """The README's table lines for one round (``record.row``)."""
    import record

    out = []
    if "digests_gb_per_s" in rep:
        d = rep["digests_gb_per_s"]
        out.append(record.row(
            f"checkpoint digests of a {rep['digest_mb']} MB float32 array, GB/s per core (one thread)",
            {"xxh3-64 (host arrays) GB/s": d["xxh3-64 (numpy, 1 thread)"],
             "fmix32x2-sum numpy GB/s": d["fmix32x2-sum (numpy, 1 thread)"],
             f"fmix32x2-sum jitted on XLA:{platform.upper()} GB/s": d[f"fmix32x2-sum (jit, {platform})"]}))
    s, nbytes = rep["seconds"], rep["bytes"]
    out.append(record.row(
        f"checkpoint save with manifest vs without, {described}, synchronous save + `sync`, interleaved",
        {"s": s["save with manifest"], "manifest alone s": s["manifest alone"],
         "manifest (digest + finiteness) GB/s": nbytes / s["manifest alone"] / 1e9},
        baseline={"s": s["plain Orbax save"]}, baseline_label="plain Orbax save of the same items, no manifest",
        compare="s", higher_is_better=False))
    out.append(record.row(
        f"`semcoder checkpoint verify` of the saved step, {described}, page cache warm from the save",
        {"s": rep["verify"]["seconds"], "GB/s": nbytes / rep["verify"]["seconds"] / 1e9}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--preset", default="deepseek-coder-1.3b")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--items", choices=("params", "state"), default="params")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--digest-mb", type=int, default=512)
    parser.add_argument("--digests", action=argparse.BooleanOptionalAction, default=True,
                        help="measure digest throughput in every round (--no-digests: saves and verify only)")
    parser.add_argument("--record", nargs="?", const="", default=None, metavar="NAME",
                        help="write benchmarks/results/NAME.json for the docs' tables (default name: see above)")
    args = parser.parse_args()
    import orbax.checkpoint as ocp
    import record

    started = record.machine()
    platform = jax.devices()[0].platform
    print(f"machine: {os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.devices()[0].device_kind}")

    params, opt_state = random_state(args.preset, args.layers, args.items)
    nbytes = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
    meta = {"step": 0, "note": "benchmark"}
    what = "fp32 params + AdamW mu, nu" if args.items == "state" else "fp32 params"
    shape = f" shape with {args.layers} layer{'s' if args.layers > 1 else ''}," if args.layers else ""
    described = f"{args.preset}{shape} {what} ({nbytes / 1e9:.2f} GB)"
    print(f"\n{args.preset}{f' ({args.layers} layers)' if args.layers else ''} train state: "
          f"{nbytes / 1e9:.2f} GB ({'float32 params + AdamW mu, nu' if args.items == 'state' else 'float32 params'})")

    shutil.rmtree(args.workdir, ignore_errors=True)
    with_dir, plain_dir = os.path.join(args.workdir, "with-manifest"), os.path.join(args.workdir, "plain")
    checkpointer = ckpt_lib.Checkpointer(with_dir, keep=1, async_save=False)
    plain = ocp.CheckpointManager(plain_dir, options=ocp.CheckpointManagerOptions(
        max_to_keep=1, enable_async_checkpointing=False, create=True))

    def save_plain(step: int) -> None:
        plain.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 opt_state=ocp.args.StandardSave(opt_state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
        plain.wait_until_finished()

    def save_with_manifest(step: int) -> None:
        checkpointer.save(step, params, opt_state, meta)
        checkpointer.wait()

    def manifest_only() -> None:
        ckpt_lib.make_manifest(0, params, opt_state, meta)

    save_plain(0)  # untimed: the first save of a process also sets up TensorStore's contexts and threads
    save_with_manifest(0)
    repeats: list[dict] = []
    ok = True
    for step in range(1, args.repeats + 1):
        rep: dict = {"round": step, "bytes": nbytes, "items": args.items, "preset": args.preset,
                     "layers": args.layers}
        if args.digests:
            print(f"\nround {step}: digest throughput, GB/s per core")
            rep["digest_mb"] = args.digest_mb
            rep["digests_gb_per_s"] = digest_rates(args.digest_mb)
            for name, rate in rep["digests_gb_per_s"].items():
                print(f"  {name:34s} {rate:6.2f}")
        seconds: dict[str, float] = {}
        order = [("plain Orbax save", save_plain), ("save with manifest", save_with_manifest)]
        rep["order"] = [name for name, _ in (order if step % 2 else order[::-1])]
        for name, save in order if step % 2 else order[::-1]:  # alternate which one follows the other
            seconds[name] = timed_save(save, step)
        start = time.perf_counter()
        manifest_only()
        seconds["manifest alone"] = time.perf_counter() - start
        rep["seconds"] = seconds
        print(f"round {step}: " + ", ".join(f"{name} {v:.1f} s" for name, v in seconds.items()), flush=True)

        step_dir = os.path.join(with_dir, str(step))
        subprocess.run(["sync"], check=True)
        start = time.perf_counter()
        status, problems = ckpt_lib.verify_step(step_dir)
        elapsed = time.perf_counter() - start
        rep["verify"] = {"seconds": elapsed, "status": status, "problems": len(problems)}
        ok = ok and status == "ok" and not problems
        print(f"checkpoint verify of step {step}: {status} in {elapsed:.1f} s "
              f"({nbytes / elapsed / 1e9:.2f} GB/s; page cache warm from the save)", flush=True)
        rep["rows"] = rows(rep, described, platform)
        repeats.append(rep)

    times = {k: [rep["seconds"][k] for rep in repeats] for k in ("plain Orbax save", "save with manifest",
                                                                  "manifest alone")}
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    print(f"\nsynchronous save + sync, mean of {args.repeats} (interleaved)")
    for name, values in times.items():
        print(f"  {name:22s} {mean[name]:7.1f} s   ({', '.join(f'{v:.1f}' for v in values)}; "
              f"{nbytes / mean[name] / 1e9:.2f} GB/s)")
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"  ratio with/without manifest: {mean['save with manifest'] / mean['plain Orbax save']:.3f} of means, "
          f"{median['save with manifest'] / median['plain Orbax save']:.3f} of medians; the manifest alone is "
          f"{mean['manifest alone'] / mean['plain Orbax save']:.3f} of a plain save")
    checkpointer.close()
    plain.close()
    shutil.rmtree(args.workdir, ignore_errors=True)
    if args.record is not None:
        print(f"recorded: {record.write(args.record or record_name(args), repeats, started=started)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
