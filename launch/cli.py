"""``semcoder launch``: start training on this machine (several processes) or on a TPU pod slice.

    semcoder launch local --processes 2 --devices-per-process 2 -- --config launch/configs/tiny_cpu.yaml
    semcoder launch tpu -- up --name semcoder --zone us-east5-a --type v5p-32 --dry-run

``local`` runs P ``semcoder train`` processes on 127.0.0.1 with D forced CPU devices each, streams
their output prefixed ``[pI]`` and stops all of them when one fails.  ``tpu`` runs
``launch/tpu/pod.sh`` (gcloud TPU VMs: create, setup, run, status, logs, stop, delete, supervise).
GPU clusters: ``launch/gpu/slurm.sbatch`` and ``launch/gpu/multinode.sh`` (see docs/launch.md).
Every launcher accepts ``--dry-run``, which prints the commands it would run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

LAUNCH_DIR = os.path.dirname(os.path.abspath(__file__))


def register(subparsers) -> None:
    parser = subparsers.add_parser("launch", help="start training locally (multi-process) or on a TPU pod",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="launcher", metavar="LAUNCHER")
    local = sub.add_parser("local", help="P processes x D CPU devices on 127.0.0.1 (jax.distributed)")
    local.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
    local.add_argument("--devices-per-process", type=int, default=1, help="CPU devices per process (default 1)")
    local.add_argument("--port", type=int, help="coordinator port (default: a free one)")
    local.add_argument("--grace", type=float, default=20.0,
                       help="seconds a stopped process may take to save before it is killed (default 20)")
    local.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    local.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_ARGS",
                       help="arguments of `semcoder train` (after --)")
    local.set_defaults(func=run_local_command)
    tpu = sub.add_parser("tpu", help="TPU VM slices through gcloud (launch/tpu/pod.sh)")
    tpu.add_argument("pod_args", nargs=argparse.REMAINDER, metavar="-- POD_ARGS", help="arguments of pod.sh")
    tpu.set_defaults(func=run_tpu_command)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _after_dashes(args: list[str]) -> list[str]:
    return args[1:] if args and args[0] == "--" else args


def run_local_command(args: argparse.Namespace) -> int:
    from launch.local import build_processes, free_port, run_local

    port = args.port or free_port()
    specs = build_processes(args.processes, args.devices_per_process, _after_dashes(args.train_args), port=port)
    if args.dry_run:
        for spec in specs:
            print(spec.shell())
        return 0
    return run_local(specs, grace=args.grace)


def run_tpu_command(args: argparse.Namespace) -> int:
    script = os.path.join(LAUNCH_DIR, "tpu", "pod.sh")
    env = dict(os.environ)
    semcoder = os.path.join(os.path.dirname(sys.executable), "semcoder")
    if "SEMCODER" not in env and os.access(semcoder, os.X_OK):
        env["SEMCODER"] = semcoder  # pod.sh checks the config and overrides with it before it creates anything
    return subprocess.call(["bash", script, *_after_dashes(args.pod_args)], env=env)
