"""The planner's claims: predicted vs measured peak on CPU, and the 6.7B plans for the shipped configs.

    python benchmarks/plan.py validate [--repeats N] [--record [NAME]]
                                            # predicted vs measured peak per device, 4 CPU devices;
                                            # --record: benchmarks/results/NAME.json (default plan_validate)
    python benchmarks/plan.py configs [--record]   # `semcoder plan` of every shipped 6.7B config, timed;
                                            # --record: benchmarks/results/plan_configs.json (docs/launch.md)
    python benchmarks/plan.py tpu           # CPU-compiled plans vs XLA:TPU's own compile (needs libtpu)

``validate`` runs each layout in a fresh process with exactly 4 CPU devices and
``MALLOC_MMAP_THRESHOLD_=65536``: ``launch.plan.plan`` predicts, ``launch.plan.measure_step_peak``
measures (resident-set high-water mark of one real step; see docs/launch.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["model.preset=tiny", "model.vocab_size=16384", "model.num_layers=4", "model.dtype=float32",
         "data.source=synthetic", "data.seq_len=128", "train.steps=10", "train.global_batch=16"]
LAYOUTS = {
    "fsdp=4, float32": ["mesh.fsdp=4", "mesh.data=1"],
    "fsdp=4, 2 micro-batches": ["mesh.fsdp=4", "mesh.data=1", "train.micro_batches=2"],
    "data=2 x fsdp=2, remat full": ["mesh.fsdp=2", "mesh.data=2", "model.remat_policy=full"],
    "fsdp=2 x tensor=2, bfloat16": ["mesh.fsdp=2", "mesh.tensor=2", "mesh.data=1", "model.dtype=bfloat16"],
}
CONFIGS = [("semcoder_6.7b_v5p-32.yaml", 16, "v5p", []), ("semcoder_6.7b_8xh100.yaml", 8, "h100", []),
           ("semcoder_6.7b_v4-64.yaml", 32, "v4", []), ("semcoder_6.7b_v5e-64.yaml", 64, "v5e", []),
           ("semcoder_6.7b_8xh100.yaml", 8, "h100", ["train.micro_batches=8"])]


def plan_and_measure(overrides: list[str], devices: int = 4) -> tuple[dict, dict]:
    code = ("import json, sys; from launch.plan import plan, measure_step_peak; "
            "from semcoder_jax.train.config import load_config; c = load_config(None, sys.argv[1:]); "
            f"p = plan(c, devices={devices}, device_kind='v5e', suggest=False).to_dict(); "
            f"print(json.dumps([p, measure_step_peak(c, {devices})]))")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code, *overrides], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True)
    predicted, measured = json.loads(out.stdout.strip().splitlines()[-1])
    return predicted, measured


def validate(repeats: int = 1, record_as: str | None = None) -> None:
    """Every layout planned and measured ``repeats`` times; ``record_as``: write the record under that name."""
    import record

    started = record.machine()
    rounds = []
    for r in range(repeats):
        print(("" if r == 0 else "\n") + "| layout | predicted peak | measured peak | error |\n|---|---|---|---|")
        layouts, rows = [], []
        for name, extra in LAYOUTS.items():
            predicted, measured = plan_and_measure(MODEL + extra)
            p, m = predicted["peak_bytes"], measured["peak"]
            error = 100 * (p - m) / m
            print(f"| {name} | {p / 1e6:.1f} MB | {m / 1e6:.1f} MB | {error:+.0f} % |", flush=True)
            layouts.append({"layout": name, "overrides": MODEL + extra, "predicted": predicted, "measured": measured})
            rows.append(record.row(
                f"planner accuracy, peak per device predicted vs measured, {name}; tiny preset with 4 layers, "
                f"vocab 16384, seq 128, global batch 16, 4 CPU devices",
                {"predicted peak MB": p / 1e6, "% error": error}, baseline={"measured peak MB": m / 1e6},
                baseline_label="resident-set high-water mark of one real step"))
        rounds.append({"layouts": layouts, "rows": rows})
    if record_as is not None:
        print(f"recorded: {record.write(record_as, rounds, started=started)}")


def configs(record_it: bool = False) -> None:
    import record

    started = record.machine()
    print("| config | overrides | devices | peak / device | usable | fits | s/step @ 40 % MFU | plan wall time |\n"
          "|---|---|---|---|---|---|---|---|")
    plans = []
    for name, devices, kind, extra in CONFIGS:
        r, wall = _plan_json(name, devices, kind, extra, "cpu")
        plans.append({"config": name, "devices": devices, "device_kind": kind, "overrides": extra, "plan": r,
                      "wall_s": wall})
        print(f"| {name} | {' '.join(extra) or '-'} | {devices} x {kind} | {r['peak_bytes'] / 2**30:.2f} GiB | "
              f"{r['usable_bytes'] / 2**30:.2f} GiB | {r['fits']} | {r['step_seconds']:.1f} | {wall:.0f} s |", flush=True)
    if record_it:
        print(f"recorded: {record.write('plan_configs', [{'plans': plans}], started=started)}")


# TPU plans compared with XLA:TPU's own compile (``tpu``): the shipped TPU configs, then variants
# that move memory between parameters, activations and attention.
TPU_CASES = [
    ("semcoder_6.7b_v5p-32.yaml", 16, "v5p", []),
    ("semcoder_6.7b_v5p-32.yaml", 16, "v5p", ["model.remat_policy=full"]),
    ("semcoder_6.7b_v5p-32.yaml", 16, "v5p", ["model.remat_policy=full", "model.attention_impl=xla"]),
    ("semcoder_6.7b_v4-64.yaml", 32, "v4", []),
    ("semcoder_6.7b_v5e-64.yaml", 64, "v5e", []),
    ("semcoder_6.7b_v5e-64.yaml", 64, "v5e", ["model.remat_policy=full", "mesh.fsdp=64", "mesh.tensor=1",
                                            "train.micro_batches=8"]),
]


def _plan_json(name: str, devices: int, kind: str, extra: list[str], compiler: str) -> tuple[dict, float]:
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "semcoder_jax.cli", "plan", "--config", f"launch/configs/{name}",
                          "--devices", str(devices), "--device-kind", kind, "--json", "--no-suggest",
                          "--compiler", compiler, *extra], cwd=REPO, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        raise SystemExit(f"plan failed for {name} {extra} ({compiler}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout), time.monotonic() - start


def tpu(record_it: bool = False) -> None:
    """The CPU-compiled plan (flash-like attention stand-in) beside XLA:TPU's compile of the same step."""
    import record

    started = record.machine()
    print("| config | overrides | devices | temporaries: CPU plan | XLA:TPU | error | peak: CPU plan | XLA:TPU | "
          "wall: CPU | TPU |\n|---|---|---|---|---|---|---|---|---|---|")
    cases = []
    for name, devices, kind, extra in TPU_CASES:
        cpu, cpu_wall = _plan_json(name, devices, kind, extra, "cpu")
        tpu, tpu_wall = _plan_json(name, devices, kind, extra, "tpu")
        c, t = cpu["temp_bytes"], tpu["temp_bytes"]
        print(f"| {name} | {' '.join(extra) or '-'} | {devices} x {kind} | {c / 2**30:.2f} GiB | {t / 2**30:.2f} GiB "
              f"| {100 * (c - t) / t:+.1f} % | {cpu['peak_bytes'] / 2**30:.2f} GiB | {tpu['peak_bytes'] / 2**30:.2f} GiB "
              f"| {cpu_wall:.0f} s | {tpu_wall:.0f} s |", flush=True)
        cases.append({"config": name, "devices": devices, "device_kind": kind, "overrides": extra, "cpu": cpu,
                      "tpu": tpu, "cpu_wall_s": cpu_wall, "tpu_wall_s": tpu_wall})
    if record_it:
        print(f"recorded: {record.write('plan_tpu', [{'cases': cases}], started=started)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["validate", "configs", "tpu"])
    parser.add_argument("--record", nargs="?", const=True, default=None, metavar="NAME",
                        help="configs: write benchmarks/results/plan_configs.json; tpu: plan_tpu.json; "
                             "validate: NAME.json (default plan_validate)")
    parser.add_argument("--repeats", type=int, default=1, help="validate: plan and measure every layout N times")
    args = parser.parse_args()
    if args.what is None and args.record in ("validate", "configs", "tpu"):  # `plan.py --record configs`
        args.what, args.record = args.record, True
    if args.what is None:
        parser.error("the following arguments are required: what")
    if args.what == "configs":
        if isinstance(args.record, str):
            parser.error("configs --record takes no NAME: it writes benchmarks/results/plan_configs.json")
        configs(args.record is not None)
    elif args.what == "validate":
        validate(args.repeats, None if args.record is None else
                 "plan_validate" if args.record is True else args.record)
    else:
        if isinstance(args.record, str):
            parser.error("tpu --record takes no NAME: it writes benchmarks/results/plan_tpu.json")
        tpu(args.record is not None)


if __name__ == "__main__":
    main()
