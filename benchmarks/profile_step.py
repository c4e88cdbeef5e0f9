"""Where our compiled train step spends its time, by part of the model, forward and backward.

Takes ``train_step.py``'s shape flags, compiles the same step, runs a few warm-up steps, traces
``--profile-steps`` more with ``jax.profiler`` and prints ``semcoder_jax.train.profile``'s report:
ms per step for the attention core, projections, MLP, norms, LM head, loss, optimizer, ... and the
slowest HLO instructions.  On XLA:CPU concurrent ops share the wall time they overlap in.

    python benchmarks/profile_step.py --preset tiny --hidden 256 --layers 4 --vocab 8192 --seq 256 --batch 8 \\
        --dtype float32 --attention cpu --no-scan-layers
    python benchmarks/profile_step.py --preset deepseek-coder-6.7b --layers 8 --seq 2048 --batch 8 \\
        --attention cudnn --remat minimal_attention          # on a GPU
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_step  # noqa: E402  (the benchmark beside this file)


def main(argv=None) -> int:
    p = train_step.make_parser(__doc__)
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--trace-dir", help="keep the raw trace here (TensorBoard/Perfetto) instead of a temp dir")
    p.add_argument("--top", type=int, default=15, help="how many of the slowest instructions to list")
    args = p.parse_args(argv)
    # XLA:GPU replays runs of kernels as CUDA command buffers, which a trace shows as single opaque ops
    # ("command_buffer_114 ?", 192 ms of a 334 ms step).  Off, the report names every kernel; the step
    # time is the same (H100, 6.7B shape: 334.8 vs 334.5 ms/step).
    if "xla_gpu_enable_command_buffer" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer=").strip()
    import jax

    from semcoder_jax.train.profile import profile_compiled

    compiled, state, batch, cfg, compile_s = train_step.build_jax_step(args)
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    for _ in range(max(args.warmup, 1)):
        run()
    profile = profile_compiled(compiled, run, steps=args.profile_steps, trace_dir=args.trace_dir)
    print(f"{jax.devices()[0].device_kind}: {cfg.num_params() / 1e6:.1f} M params, batch {args.batch} x "
          f"{args.seq}, {args.dtype}, attention {args.attention}, remat {args.remat}; compiled in {compile_s:.1f} s")
    print(profile.table(args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
