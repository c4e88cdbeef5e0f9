"""``semcoder train``: run or resume a training job from a YAML config plus ``key=value`` overrides.

    semcoder train --config launch/configs/tiny_cpu.yaml train.steps=50 mesh.fsdp=4
    semcoder train --config launch/configs/semcoder_6.7b_pyx.yaml --run-dir gs://BUCKET/runs/NAME model.init_from=hf:gs://BUCKET/models/NAME

Locations are local paths or gs://BUCKET/PATH (run directory, data, tokenizer, init_from, export; read and
written natively, docs/object_storage.md).  A gs:// run directory is probed with a small write first: a
missing bucket, missing credentials or a missing permission is one line before any work.

Running it again on the same run directory resumes from the latest checkpoint.

Exit status: 0 when the run reached its last step; 75 (EX_TEMPFAIL) when SIGTERM stopped it earlier with a
checkpoint saved, so a scheduler requeues it (``launch/gpu/slurm.sbatch`` does, ``pod.sh supervise`` runs
it again); 1 for a configuration or data mistake (one line naming it) or a failure; 2 for a bad command
line.
"""

from __future__ import annotations

import argparse
import sys

EXIT_RESUMABLE = 75
"""Stopped before the last step with a checkpoint saved (EX_TEMPFAIL from sysexits.h): run it again to resume."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or resume a model (YAML config + key=value overrides)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (launch/configs/*.yaml); defaults when omitted")
    parser.add_argument("--run-dir", help="run directory (same as run.dir=); resumes when it holds checkpoints")
    parser.add_argument("--export-hf", metavar="DIR", help="write an HF checkpoint here when training completes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --export-hf directory (e.g. when re-running a finished run)")
    parser.add_argument("--coordinator", help="jax.distributed coordinator host:port (GPU clusters, local multi-process)")
    parser.add_argument("--num-processes", type=int, help="number of processes of a multi-process run")
    parser.add_argument("--process-id", type=int, help="this process's index in a multi-process run")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.steps=50")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semcoder_jax.train.config import dump_config, load_config

    overrides = list(args.overrides)
    for flag, key in (("run_dir", "run.dir"), ("export_hf", "run.export_hf"),
                      ("coordinator", "distributed.coordinator"), ("num_processes", "distributed.num_processes"),
                      ("process_id", "distributed.process_id")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from semcoder_jax.train.loop import catch_sigterm_from_now, initialize_distributed, train

    if config.run.keep_host_buffers:
        from semcoder_jax import host_memory

        if host_memory.applies_here():
            if not host_memory.active() and getattr(args, "argv", None) is not None:
                host_memory.restart_with_kept_buffers(args.argv)  # glibc reads its settings at start
            if host_memory.active():
                print("semcoder train: host malloc keeps freed buffers for reuse (run.keep_host_buffers)",
                      file=sys.stderr)
    initialize_distributed(config.distributed)
    catch_sigterm_from_now()  # after JAX's preemption notifier: a TERM while starting or exiting is not lost
    result = train(config, overwrite_export=args.overwrite)
    if result.final_step < result.total_steps:
        return EXIT_RESUMABLE if result.preempted else 1
    if config.rl.tasks is not None:
        import functools
        import importlib

        from semcoder_jax.rl.trainer import run_grpo
        from semcoder_jax.train.loop import _export

        # The application's top wires the evaluation layer's tasks and scorers into the library (as the
        # dispatcher names its subcommands): semcoder_jax itself does not import eval.
        rewards = importlib.import_module("eval.rewards")
        r = config.rl
        score = functools.partial(rewards.score, config=rewards.RewardConfig(
            correct=r.reward_correct, wrong=r.reward_wrong, format_bonus=r.format_bonus,
            code_timeout_s=r.code_timeout_s))
        counts: dict[str, int] = {}
        tasks = rewards.load_tasks(r.tasks, counts=counts)
        print(f"semcoder train: rl.tasks: {len(tasks)} tasks from {r.tasks} ("
              + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "records_without_task")
              + f"; {counts.get('records_without_task', 0)} records give none)", file=sys.stderr, flush=True)
        grpo = run_grpo(config, result.run_dir, result.params, result.model, tasks=tasks, score=score)
        if grpo.final_step < config.rl.steps:
            return 1
        if config.run.export_hf:
            _export(grpo.params, result.model, config.run.export_hf, result.run_dir, config, True, args.overwrite)
    return 0
