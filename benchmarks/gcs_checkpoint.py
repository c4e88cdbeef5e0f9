"""Checkpoint save and restore of a 1.3B-shaped state on gs:// (a local GCS emulator) beside local disk.

Measures in one run, on this machine, interleaved ``--repeats`` times (alternating which goes first):
``Checkpointer.save`` (manifest included, synchronous, then ``sync``) and ``Checkpointer.restore`` (read back
and checked against the manifest) of the same deepseek-coder-1.3b-shaped parameters (bfloat16 by default,
2.7 GB: a float32 restore peaks near 4x its 5.4 GB in RAM, past this 24 GiB machine; ``--dtype float32``,
``--items state`` adds AdamW's moments (float32), ``--layers`` shrinks it) to a local directory and to
``gs://BUCKET/...`` served by fake-gcs-server on 127.0.0.1 (its filesystem backend, under ``--workdir``:
holding the objects in memory would not fit beside the state).  The emulator is one Go process writing
to the same disk, so the gs:// figures measure the client stack's overhead over HTTP (TensorStore's GCS
driver, Orbax's marker commit), not Cloud Storage's bandwidth.  ``--record [NAME]`` writes the rounds to
``benchmarks/results/NAME.json`` (default ``gcs_checkpoint_<items>_<preset>``).

    python benchmarks/gcs_checkpoint.py --workdir /tmp/gcs-ckpt-bench [--items params|state] [--layers N]
        [--repeats 2] [--record [NAME]]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.checkpoint_integrity import random_state, timed_save  # noqa: E402
from tests.gcs_emulator import GcsEmulator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--preset", default="deepseek-coder-1.3b")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--items", choices=("params", "state"), default="params")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16",
                        help="the parameters' dtype (bfloat16: the 1.3B shape fits this 24 GiB machine; a restore "
                             "peaks near 4x the state in RAM)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--record", nargs="?", const="", default=None)
    args = parser.parse_args()

    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "gcs"))
    emulator = GcsEmulator(filesystem_root=os.path.join(work, "gcs"))
    emulator.bucket("bench")
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
    from semcoder_jax import locations
    from semcoder_jax.train import checkpoint as ckpt_lib

    locations.configure_environment()
    import benchmarks.record as record

    started = record.machine()
    try:
        params, opt_state = random_state(args.preset, args.layers, args.items)
        if args.dtype == "bfloat16":
            params = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
        nbytes = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (params, opt_state))
        places = {"local disk": os.path.join(work, "local"), "gs:// (emulator)": "gs://bench/run/checkpoints"}
        managers = {k: ckpt_lib.Checkpointer(v, keep=1, async_save=False) for k, v in places.items()}
        for ckpt in managers.values():  # untimed first save of each: compile and warm both paths
            ckpt.save(1, params, opt_state, {"step": 1})
            ckpt.wait()
        rounds = []
        for r in range(args.repeats):
            order = list(managers) if r % 2 == 0 else list(reversed(managers))
            save_s, restore_s = {}, {}
            for name in order:
                ckpt = managers[name]
                step = 2 + r

                def save(s, ckpt=ckpt):
                    ckpt.save(s, params, opt_state, {"step": s})
                    ckpt.wait()

                save_s[name] = timed_save(save, step)
            for name in order:
                start = time.perf_counter()
                restored = managers[name].restore(2 + r, *abstract)
                restore_s[name] = time.perf_counter() - start
                assert np.array_equal(np.asarray(jax.tree.leaves(restored[0])[0]),
                                      np.asarray(jax.tree.leaves(params)[0]))
                del restored
            rounds.append({"round": r + 1, "order": order, "bytes": nbytes, "items": args.items,
                           "preset": args.preset, "layers": args.layers, "save_s": save_s, "restore_s": restore_s})
            print(f"round {r + 1}: " + ", ".join(
                f"{k}: save {save_s[k]:.1f} s ({nbytes / save_s[k] / 1e6:.0f} MB/s), restore {restore_s[k]:.1f} s "
                f"({nbytes / restore_s[k] / 1e6:.0f} MB/s)" for k in managers), flush=True)
        for ckpt in managers.values():
            ckpt.close()
    finally:
        emulator.stop()
    described = f"{args.preset} {args.items} {args.dtype}{f' {args.layers} layers' if args.layers else ''}, " \
                f"{nbytes / 1e9:.1f} GB"
    for rep in rounds:
        rep["rows"] = [record.row(
            f"checkpoint {what} of {described}: gs:// on a local emulator vs local disk, same run, interleaved",
            {"s": rep[f"{what}_s"]["gs:// (emulator)"], "MB/s": nbytes / rep[f"{what}_s"]["gs:// (emulator)"] / 1e6},
            baseline={"s": rep[f"{what}_s"]["local disk"], "MB/s": nbytes / rep[f"{what}_s"]["local disk"] / 1e6},
            baseline_label="local disk", compare="s", higher_is_better=False) for what in ("save", "restore")]
    if args.record is not None:
        name = args.record or re.sub(r"[^A-Za-z0-9._-]", "_", f"gcs_checkpoint_{args.items}_"
                                     f"{args.preset.removeprefix('deepseek-coder-')}"
                                     + (f"_{args.layers}l" if args.layers else ""))
        print(f"recorded {record.write(name, rounds, started=started)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
