"""``semcoder checkpoint verify RUN_DIR [--step N]``: is every checkpoint of a run intact?

Each step is read back from its files, array by array, and its contents digested and compared with the
manifest written when it was saved (``semcoder_jax.train.checkpoint``).  Prints one line per step
(``ok``, ``corrupt`` with what differs, or ``unverifiable`` with why) and exits 1 if any step is corrupt.
"""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("checkpoint", help="check a run's checkpoints against their manifests",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="read every step back and compare it with its manifest")
    verify.add_argument("run_dir", help="a training run directory (or its checkpoints/ directory)")
    verify.add_argument("--step", type=int, default=None, help="only this step")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from semcoder_jax.train.checkpoint import verify_run

    start = time.perf_counter()
    results = verify_run(args.run_dir, args.step)
    for step, status, problems in results:
        detail = f": {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "") \
            if problems else ""
        print(f"step {step}: {status}{detail}")
    corrupt = sum(status == "corrupt" for _, status, _ in results)
    print(f"{len(results)} step(s) checked in {time.perf_counter() - start:.1f}s: "
          f"{sum(s == 'ok' for _, s, _ in results)} ok, {corrupt} corrupt, "
          f"{sum(s == 'unverifiable' for _, s, _ in results)} unverifiable")
    return 1 if corrupt else 0
