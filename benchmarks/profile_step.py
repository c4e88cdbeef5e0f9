"""Where our compiled train step spends its time, by part of the model, forward and backward.

Takes ``train_step.py``'s shape flags, compiles the same step, runs a few warm-up steps, traces
``--profile-steps`` more with ``jax.profiler`` and prints ``semcoder_jax.train.profile``'s report:
ms per step for the attention core, projections, MLP, norms, LM head, loss, optimizer, ... and the
slowest HLO instructions.  On XLA:CPU concurrent ops share the wall time they overlap in.
``--repeats N`` traces N times over (one compile); ``--record [NAME]`` writes each repeat's ms per part
and the README table's row (each part's share of the busy time) to ``benchmarks/results/NAME.json``
(default name: ``profile_step_`` and ``train_step.py``'s shape tag).

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
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    import record  # beside this file, as train_step

    name = train_step.record_name(args, f"profile_step_{train_step.shape_tag(args)}") if args.record is not None else ""
    started = record.machine()
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
    claim = (f"where the train step goes, {train_step.shape_words(args, cfg)}, "
             f"`{' '.join([*train_step.kernel_flags(args), f'--profile-steps {args.profile_steps}'])}`")
    repeats = []
    for i in range(args.repeats):
        trace_dir = args.trace_dir and (args.trace_dir if args.repeats == 1 else os.path.join(args.trace_dir, str(i)))
        profile = profile_compiled(compiled, run, steps=args.profile_steps, trace_dir=trace_dir)
        if args.repeats > 1:
            print(f"--- repeat {i + 1}/{args.repeats}")
        print(f"{jax.devices()[0].device_kind}: {cfg.num_params() / 1e6:.1f} M params, batch {args.batch} x "
              f"{args.seq}, {args.dtype}, attention {args.attention}, remat {args.remat}; compiled in {compile_s:.1f} s")
        print(profile.table(args.top))
        parts: dict[str, float] = {}
        for (part, _direction), ms in profile.parts.items():
            parts[part] = parts.get(part, 0.0) + ms
        busy = profile.busy_ms or 1.0
        shares = {f"{part} %": 100 * ms / busy for part, ms in sorted(parts.items(), key=lambda kv: -kv[1])}
        repeats.append({"wall_ms": profile.wall_ms, "busy_ms": profile.busy_ms, "source": profile.source,
                        "compile_s": compile_s, "parts_ms": {f"{part} {direction}".strip(): ms
                                                             for (part, direction), ms in profile.parts.items()},
                        "rows": [record.row(claim, {"ms/step": profile.wall_ms, **shares})]})
        if args.record is not None:  # after every repeat: a run stopped early keeps what it finished
            path = record.write(name, repeats, started=started)
    if args.record is not None:
        print(f"recorded: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
