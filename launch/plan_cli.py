"""``semcoder plan``: will a training config fit on N devices of a kind?  Compiles the real step on CPU.

    semcoder plan --config launch/configs/semcoder_6.7b_v5p-32.yaml --devices 16 --device-kind v5p
    semcoder plan --config launch/configs/semcoder_6.7b_8xh100.yaml --devices 8 --device-kind h100 train.micro_batches=8

The N devices are simulated on the CPU (``jax_num_cpu_devices``); when JAX has already started its
backend with fewer devices in this process, the command re-runs itself in a fresh Python process.
With ``--compiler tpu`` (libtpu installed, no TPU needed) XLA:TPU itself compiles the step for the
slice's topology and its buffer assignment is the answer:

    semcoder plan --config launch/configs/semcoder_6.7b_v5p-32.yaml --devices 16 --device-kind v5p --compiler tpu

A config with ``rl.tasks`` (a GRPO run) also gets the GRPO phase planned: policy, Adam moments, the frozen
reference, the engine's KV cache and the sharded update (``launch.plan.plan_grpo``).

Exit status: 0 fits (both phases), 3 does not fit, 1 error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

NOT_FIT_EXIT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from launch.plan import DEFAULT_MFU, DEVICE_KINDS

    parser.add_argument("--config", help="YAML run config (launch/configs/*.yaml)")
    parser.add_argument("--devices", type=int, required=True, help="number of devices (chips / GPUs) of the target")
    parser.add_argument("--device-kind", required=True, choices=sorted(DEVICE_KINDS), help="the target's chip")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOPs utilisation assumed for the speed estimate (default {DEFAULT_MFU})")
    parser.add_argument("--compiler", choices=["cpu", "tpu"], default="cpu",
                        help="cpu: compile for simulated CPU devices (default); tpu: compile with XLA:TPU for "
                             "the slice's topology, no TPU needed (needs libtpu: pip install 'jax[tpu]')")
    parser.add_argument("--topology", help="with --compiler tpu: the slice's chip grid, e.g. v5p:2x2x4 "
                                           "(default: derived from --devices)")
    parser.add_argument("--no-suggest", action="store_true", help="do not search for a change that fits")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. mesh.fsdp=32")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="predict per-device memory and speed of a training config (AOT compile on CPU)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def _can_simulate_here(devices: int) -> bool:
    """Makes ``devices`` CPU devices available in this process if JAX's backend has not started yet."""
    if "jax" not in sys.modules:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.default_backend() == "cpu" and jax.device_count() >= devices
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", devices)
    return True


def _rerun_in_subprocess(argv: list[str], devices: int) -> int:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip())
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.call([sys.executable, "-m", "launch.plan_cli", *argv], env=env)


def _argv_of(args: argparse.Namespace) -> list[str]:
    argv = ["--devices", str(args.devices), "--device-kind", args.device_kind, "--mfu", str(args.mfu)]
    if args.config:
        argv += ["--config", args.config]
    argv += ["--compiler", args.compiler] + (["--topology", args.topology] if args.topology else [])
    if args.no_suggest:
        argv.append("--no-suggest")
    if args.json:
        argv.append("--json")
    return argv + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    from launch.plan import PlanError, plan
    from semcoder_jax.train.config import load_config

    if args.devices <= 0:
        raise PlanError(f"--devices {args.devices}: must be positive")
    config = load_config(args.config, list(args.overrides))  # config errors surface before any compile
    if not _can_simulate_here(args.devices):
        return _rerun_in_subprocess(_argv_of(args), args.devices)
    report = plan(config, devices=args.devices, device_kind=args.device_kind, mfu=args.mfu,
                  suggest=not args.no_suggest, compiler=args.compiler, topology=args.topology)
    grpo = None
    if config.rl.tasks is not None:  # the run's GRPO phase: policy, reference, KV cache and its update
        from launch.plan import plan_grpo

        grpo = plan_grpo(config, devices=args.devices, device_kind=args.device_kind)
    if args.json:
        out = report.to_dict()
        if grpo is not None:
            out["grpo"] = grpo.to_dict()
        print(json.dumps(out, indent=2), flush=True)
    else:
        print(report.format() + ("" if grpo is None else "\n" + grpo.format()), flush=True)
    return 0 if report.fits and (grpo is None or grpo.fits) else NOT_FIT_EXIT


def main(argv: list[str] | None = None) -> int:
    from semcoder_jax.errors import UserError

    parser = argparse.ArgumentParser(prog="semcoder plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"semcoder plan: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
