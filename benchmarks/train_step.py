"""Training throughput of our compiled step beside the release's stack, same shapes, batch and precision.

Ours: ``semcoder_jax.train.step`` (jit, sharded state, AdamW, optional remat) on a mesh of all local
devices.  Theirs: transformers ``LlamaForCausalLM`` + ``torch.optim.AdamW`` (fused on GPU), autocast
for bf16 compute over fp32 parameters, gradient checkpointing when remat is on, SDPA attention.
Each stack runs in its own subprocess (so neither holds the other's device memory); the parent
prints tokens/s, MFU where the device's peak is known, and the ratio ours / torch.  ``--repeats N``
runs the pair N times, alternating which stack goes first; ``--record [NAME]`` writes every repeat's
results and the README table's row to ``benchmarks/results/NAME.json`` (default name: the shape's tag,
e.g. ``train_step_tiny_h256_l4_v8192_s256_b8_fp32_cpu_loop``), rewritten after each repeat so a run
stopped early keeps the repeats it finished.

    python benchmarks/train_step.py --preset tiny --hidden 256 --layers 4 --seq 256 --batch 8 --dtype float32
    python benchmarks/train_step.py --preset deepseek-coder-1.3b --seq 2048 --batch 8 --dtype bfloat16 --remat full
    python benchmarks/train_step.py --preset deepseek-coder-6.7b --layers 12 --seq 2048 --batch 4 --remat full
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time


def model_config(args):
    from semcoder_jax.config import get_preset

    overrides = dict(dtype=args.dtype, param_dtype=args.param_dtype, attention_impl=args.attention,
                     cudnn_packed_runs=args.cudnn_packed_runs, remat_policy=args.remat,
                     scan_layers=not args.no_scan_layers)
    if args.layers:
        overrides["num_layers"] = args.layers
    if args.hidden:
        overrides.update(hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_heads=max(args.hidden // 64, 1), num_kv_heads=max(args.hidden // 64, 1))
    if args.vocab:
        overrides["vocab_size"] = args.vocab
    return get_preset(args.preset, **overrides)


def batch_arrays(args, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (args.batch, args.seq + 1)).astype(np.int32)
    # --segments N: each row packs N equal examples (ids 1..N, positions restarting at each)
    segment = np.arange(args.seq) * args.segments // args.seq
    first = np.searchsorted(segment, segment)
    return {
        "input_ids": ids[:, :-1], "targets": ids[:, 1:],
        "loss_mask": np.ones((args.batch, args.seq), np.int32),
        "segment_ids": np.tile(segment + 1, (args.batch, 1)).astype(np.int32),
        "positions": np.tile(np.arange(args.seq) - first, (args.batch, 1)).astype(np.int32),
    }


def build_jax_step(args):
    """(compiled step, state, batch, model config, compile seconds) for the benchmark's arguments."""
    from semcoder_jax import sharding as shd
    from semcoder_jax.train import optimizer as opt_lib
    from semcoder_jax.train import step as st
    from semcoder_jax.train.config import OptimizerSection

    cfg = model_config(args)
    opt = OptimizerSection(learning_rate=1e-5, warmup_steps=0, schedule="constant", grad_clip=1.0)
    tx = opt_lib.build_optimizer(opt, 1000)
    mesh = shd.build_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    shardings = st.state_shardings(cfg, tx, mesh)
    state = st.init_state(cfg, tx, shardings, seed=0)
    fn = st.compile_train_step(st.make_train_step(cfg, tx, opt_lib.learning_rate_schedule(opt, 1000),
                                                  micro_batches=args.micro_batches, loss_chunk=args.loss_chunk,
                                                  mesh=mesh, param_sharding=shardings.params), shardings, mesh)
    batch = st.shard_batch(batch_arrays(args, cfg.vocab_size), mesh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, batch).compile()
    return compiled, state, batch, cfg, time.perf_counter() - t0


def run_jax(args, repeats: int = 1) -> list[dict]:
    """One result per repeat: warm-up and timed steps again on the step compiled once."""
    import jax

    from semcoder_jax.train import step as st

    compiled, state, batch, cfg, compile_s = build_jax_step(args)
    results = []
    for _ in range(repeats):
        for _ in range(args.warmup):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        elapsed = time.perf_counter() - t0
        mem = None
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            mem = stats["peak_bytes_in_use"] / 2**30
        results.append(_result("jax", cfg, args, elapsed, jax.devices()[0].device_kind, len(jax.devices()),
                               st.peak_flops(jax.devices()[0]), compile_s=compile_s, loss=float(metrics["loss"]),
                               peak_gib=mem))
    return results


def run_torch(args, repeats: int = 1) -> list[dict]:
    """One result per repeat: warm-up and timed steps again on the model built once."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from semcoder_jax.train import step as st

    cfg = model_config(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = cfg.to_hf_dict()
    hf.pop("model_type")
    config = LlamaConfig(**hf, attn_implementation="sdpa")
    torch.manual_seed(0)
    param_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.param_dtype]
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype=param_dtype)
    if args.remat != "none":
        model.gradient_checkpointing_enable()
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                              fused=device == "cuda")
    arrays = batch_arrays(args, cfg.vocab_size)
    ids = torch.from_numpy(arrays["input_ids"].astype(np.int64)).to(device)
    labels = torch.from_numpy(arrays["targets"].astype(np.int64)).to(device)
    compute = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    micro = args.micro_batches

    def step():
        optim.zero_grad(set_to_none=True)
        total = 0.0
        for chunk_ids, chunk_labels in zip(ids.chunk(micro), labels.chunk(micro)):
            with torch.autocast(device_type=device, dtype=compute, enabled=compute != torch.float32):
                logits = model(input_ids=chunk_ids).logits
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), chunk_labels.flatten()) / micro
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        return total

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    kind = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = None
    for prefix, flops in st.PEAK_FLOPS.items():
        if kind.startswith(prefix):
            peak = flops
    results = []
    for _ in range(repeats):
        for _ in range(args.warmup):
            loss = step()
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync()
        elapsed = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        results.append(_result("torch", cfg, args, elapsed, kind, 1, peak, loss=loss, peak_gib=mem,
                               threads=torch.get_num_threads()))
    return results


def _result(stack, cfg, args, elapsed, kind, devices, peak, **extra) -> dict:
    from semcoder_jax.train.step import flops_per_token

    tokens_per_s = args.batch * args.seq * args.steps / elapsed
    out = {"stack": stack, "device": kind, "devices": devices, "tokens_per_second": tokens_per_s,
           "step_seconds": elapsed / args.steps, "params": cfg.num_params(), **extra}
    if peak:
        out["mfu"] = tokens_per_s * flops_per_token(cfg, args.seq) / (peak * devices)
    return out


# ---- what a record says: the shape in words (the README's claims) and as a filename tag ----------------

_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}


def shape_words(args, cfg) -> str:
    """The model shape, batch and precision in words: ``hidden 256, 4 layers, vocab 8192, seq 256, batch 8, fp32``."""
    from semcoder_jax.config import get_preset

    if args.hidden:
        model = f"hidden {cfg.hidden_size}, {cfg.num_layers} layers, vocab {cfg.vocab_size}"
        if args.preset != "tiny":
            model = f"{args.preset} with {model}"
    else:
        model = f"`{args.preset}` preset" if args.preset == "tiny" else f"{args.preset} shape"
        base = get_preset(args.preset).num_layers
        if args.layers and args.layers != base:
            model += f" with {args.layers} of {base} layers"
        if args.vocab:
            model += f", vocab {cfg.vocab_size}"
    words = [model, f"seq {args.seq}", f"batch {args.batch}"]
    if args.segments > 1:
        words.append(f"{args.segments} examples packed per row")
    if args.dtype == args.param_dtype:
        words.append(_DTYPE[args.dtype])
    elif args.param_dtype == "float32":
        words.append(f"{_DTYPE[args.dtype]} compute, fp32 params and AdamW")
    else:
        words.append(f"{_DTYPE[args.dtype]} compute, {_DTYPE[args.param_dtype]} params")
    if args.micro_batches > 1:
        words.append(f"{args.micro_batches} micro-batches")
    if args.loss_chunk:
        words.append(f"LM head + loss over {args.loss_chunk} positions at a time")
    if args.remat != "none":
        words.append(f"remat `{args.remat}`")
    return ", ".join(words)


def kernel_flags(args) -> list[str]:
    """The layer-loop and attention flags as given on the command line."""
    flags = ["--no-scan-layers"] if args.no_scan_layers else []
    flags.append(f"--attention {args.attention}")
    if args.cudnn_packed_runs:
        flags.append(f"--cudnn-packed-runs {args.cudnn_packed_runs}")
    return flags


def shape_tag(args) -> str:
    """The shape and settings as a filename-safe tag: ``tiny_h256_l4_v8192_s256_b8_fp32_cpu_loop``."""
    parts = [args.preset]
    parts += [f"{k}{v}" for k, v in (("h", args.hidden), ("l", args.layers), ("v", args.vocab)) if v]
    parts += [f"s{args.seq}", f"b{args.batch}", _DTYPE[args.dtype]]
    if args.param_dtype != "float32":
        parts.append(f"p{_DTYPE[args.param_dtype]}")
    if args.segments > 1:
        parts.append(f"seg{args.segments}")
    if args.micro_batches > 1:
        parts.append(f"mb{args.micro_batches}")
    if args.loss_chunk:
        parts.append(f"lc{args.loss_chunk}")
    if args.remat != "none":
        parts.append(args.remat)
    parts.append(args.attention)
    if args.cudnn_packed_runs:
        parts.append(f"runs{args.cudnn_packed_runs}")
    if args.no_scan_layers:
        parts.append("loop")
    if args.system_malloc:
        parts.append("sysmalloc")
    return safe_name("_".join(parts))


def safe_name(name: str) -> str:
    """Letters, digits, '.', '_' and '-' only (anything else becomes '-')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "unnamed"


def record_name(args, default: str) -> str:
    """``--record NAME`` as given (checked filename-safe), or ``default`` for a bare ``--record``."""
    if not args.record:
        return default
    if safe_name(args.record) != args.record:
        raise SystemExit(f"--record {args.record!r}: use letters, digits, '.', '_' and '-' only")
    return args.record


def _side(r: dict) -> dict[str, float]:
    """One stack's table figures, units in the names."""
    out = {"tokens/s": r["tokens_per_second"]}
    if "mfu" in r:
        out["MFU %"] = 100 * r["mfu"]
    if r.get("peak_gib"):
        out["peak GiB"] = r["peak_gib"]
    return out


def table_row(args, cfg, results: dict, malloc: str) -> dict:
    """The README line of one repeat: ours (jax) beside torch where both ran."""
    import record

    claim = ", ".join(["train step", shape_words(args, cfg), f"`{' '.join([*kernel_flags(args), f'--steps {args.steps}'])}`"]
                      + ([malloc] if malloc else []))
    jax_r, torch_r = results.get("jax"), results.get("torch")
    if torch_r is None:
        return record.row(claim, _side(jax_r) if jax_r else {})
    label = "torch + AdamW" + (" (fused)" if torch_r["device"] != "cpu" else "") + ", SDPA"
    if args.remat != "none":
        label += ", gradient checkpointing"
    if args.segments > 1:
        label += ", whole rows (no packing)"
    return record.row(claim, _side(jax_r) if jax_r else {}, baseline=_side(torch_r), baseline_label=label,
                      compare="tokens/s" if jax_r else None)


def make_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """The shape/precision/kernel flags (``profile_step.py`` takes the same ones)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--layers", type=int, help="override the preset's layer count (fit a large shape in memory)")
    p.add_argument("--hidden", type=int, help="override hidden size (heads of 64, MLP 2.75x): small CPU shapes")
    p.add_argument("--vocab", type=int)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--loss-chunk", type=int, default=0,
                   help="train.loss_chunk: LM head + loss over this many positions at a time (0 = whole rows)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--attention", default="xla", choices=["xla", "cudnn", "splash", "cpu"])
    p.add_argument("--cudnn-packed-runs", type=int, default=0,
                   help="model.cudnn_packed_runs: packed rows of up to this many runs use cuDNN's packed layout")
    p.add_argument("--segments", type=int, default=1,
                   help="examples packed per row (ours only: the torch stack always runs whole rows)")
    p.add_argument("--remat", default="none", choices=["none", "minimal", "minimal_attention", "dots", "full"])
    p.add_argument("--no-scan-layers", action="store_true",
                   help="model.scan_layers=false: a Python loop over the layers (faster on CPU)")
    p.add_argument("--system-malloc", action="store_true",
                   help="leave glibc malloc as it is for both stacks (as run.keep_host_buffers=false)")
    p.add_argument("--repeats", type=int, default=1, help="repeat the whole measurement this many times")
    p.add_argument("--record", nargs="?", const="", metavar="NAME",
                   help="write benchmarks/results/NAME.json (default NAME: the script's name and the shape's tag)")
    return p


def main(argv=None) -> int:
    p = make_parser()
    p.add_argument("--only", choices=["jax", "torch"], help="run one stack in this process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one measurement for the parent
    p.add_argument("--json", help="append the results as one JSON line to this file (one per repeat)")
    args = p.parse_args(argv)
    if not 1 <= args.segments <= args.seq:
        p.error(f"--segments must lie in [1, --seq], got {args.segments}")
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.segments > 1 and args.only is None:
        print(f"note: ours packs {args.segments} examples per row; the torch stack runs whole rows", flush=True)
    if args.child:
        if args.only is None:
            p.error("--child needs --only")
        (result,) = (run_jax if args.only == "jax" else run_torch)(args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import record

    if args.record is not None:
        name = record_name(args, f"train_step_{shape_tag(args)}" + (f"_{args.only}only" if args.only else ""))
    started = record.machine()
    if args.only:  # this process, one build, --repeats timings of it
        repeats = []
        for r in (run_jax if args.only == "jax" else run_torch)(args, args.repeats):
            print("RESULT " + json.dumps(r), flush=True)
            repeats.append({args.only: r, "rows": [table_row(args, model_config(args), {args.only: r}, "")]})
        if args.record is not None:
            print(f"recorded: {record.write(name, repeats, started=started)}", flush=True)
        return 0
    # Both stacks run with the host malloc settings `semcoder train` uses (run.keep_host_buffers):
    # torch's 64 MB logits gain from them as XLA's per-step buffer does.  --system-malloc: neither.
    from semcoder_jax import host_memory

    env = dict(os.environ)
    malloc = ""
    if host_memory.applies_here():
        malloc = "glibc malloc defaults for both stacks (`--system-malloc`)"
        if not args.system_malloc:
            env = host_memory.with_kept_buffers(env)
            malloc = "both stacks with the kept-buffer malloc settings"
            print(f"both stacks: {host_memory.ENV}={env[host_memory.ENV]}", flush=True)
    cfg = model_config(args)
    repeats = []
    ok = True
    for i in range(args.repeats):
        order = ("jax", "torch") if i % 2 == 0 else ("torch", "jax")
        if args.repeats > 1:
            print(f"--- repeat {i + 1}/{args.repeats} ({order[0]} first)", flush=True)
        results = {}
        for stack in order:
            cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
                   "--only", stack, "--child"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{stack}: failed ({proc.returncode})\n{proc.stderr[-4000:]}", file=sys.stderr)
                continue
            results[stack] = json.loads(lines[-1][len("RESULT "):])
            r = results[stack]
            mfu = f", MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
            mem = f", peak {r['peak_gib']:.1f} GiB" if r.get("peak_gib") else ""
            print(f"{stack:5s} {r['device']} x{r['devices']}: {r['tokens_per_second']:.0f} tokens/s, "
                  f"{r['step_seconds'] * 1000:.1f} ms/step{mfu}{mem}, final loss {r['loss']:.4f}", flush=True)
        if len(results) == 2:
            ratio = results["jax"]["tokens_per_second"] / results["torch"]["tokens_per_second"]
            print(f"ratio jax/torch: {ratio:.2f}x", flush=True)
            results["ratio"] = ratio
        ok = ok and "jax" in results and "torch" in results
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps({"args": vars(args), **results}) + "\n")
        if results:
            repeats.append({"order": list(order), **results, "rows": [table_row(args, cfg, results, malloc)]})
        if args.record is not None and repeats:  # after every repeat: a run stopped early keeps what it finished
            path = record.write(name, repeats, started=started)
    if args.record is not None and repeats:
        print(f"recorded: {path}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
