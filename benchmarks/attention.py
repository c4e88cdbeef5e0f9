"""Attention implementations side by side: agreement with the reference and forward+backward time.

For packed training shapes (two segments per row) it runs every implementation available on this
backend (``xla`` always; on CPU also ``xla`` in causal query blocks, as the model runs it there, and
the fused ``cpu`` kernel; on GPU cuDNN's three calls: the segment mask as a bias, packed runs, and
the causal kernel on rows of one segment; ``splash`` on TPU), checks values and input gradients
against ``xla`` computed in float32, and times a jitted forward+backward of the attention op.  On CPU it also times torch's
``scaled_dot_product_attention`` (its fused CPU flash kernel, causal over whole unpacked rows: the
packing mask would send torch to its unfused path) on the same shapes.

``--repeats N`` times every implementation N times over (each compiled once); ``--record [NAME]`` writes
the repeats' figures and the README table's row to ``benchmarks/results/NAME.json`` (default name: the
shape's tag, e.g. ``attention_b8_t256_h4_kv4_d64_fp32_cpu``), rewritten after each repeat.

    python benchmarks/attention.py [--batch 4 --seq 2048 --heads 32 --kv-heads 32 --head-dim 128]
    python benchmarks/attention.py --batch 8 --seq 256 --heads 4 --kv-heads 4 --head-dim 64 --repeats 4 --record
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from semcoder_jax.attention import attention
from semcoder_jax.model import causal_query_blocks

_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# the implementation a backend's table row is about ("ms" in the row), in words; the others are extra figures
_PRIMARY = {"cpu": ("cpu", 'the fused CPU kernel (`impl="cpu"`)'),
            "gpu": ("cudnn runs", "cuDNN's packed layout (`cudnn_packed_runs=4`)"),
            "tpu": ("splash", "splash attention")}
_EXTRA = {"xla-blocks": "XLA query blocks ms", "cudnn mask": "cuDNN through the mask ms",
          "cudnn causal": "cuDNN causal kernel, whole rows ms"}


def _time(fn, *args, repeats: int = 10) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument("--batch", type=int, default=1 if on_cpu else 4)
    parser.add_argument("--seq", type=int, default=256 if on_cpu else 2048)
    parser.add_argument("--heads", type=int, default=4 if on_cpu else 32)
    parser.add_argument("--kv-heads", type=int, default=4 if on_cpu else 32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="float32" if on_cpu else "bfloat16")
    parser.add_argument("--repeats", type=int, default=1, help="time every implementation this many times over")
    parser.add_argument("--record", nargs="?", const="", metavar="NAME",
                        help="write benchmarks/results/NAME.json (default NAME: the script's name and the shape's tag)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    b, t, h, k, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    backend = jax.default_backend()
    name = _tag(args, backend)
    if args.record:
        if re.sub(r"[^A-Za-z0-9_.-]", "-", args.record) != args.record:
            parser.error(f"--record {args.record!r}: use letters, digits, '.', '_' and '-' only")
        name = args.record
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import record

    started = record.machine()
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, t, h, d)), dtype)
    kk = jnp.asarray(rng.standard_normal((b, t, k, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, t, k, d)), dtype)
    split = t * 3 // 5
    packed = jnp.asarray(np.concatenate([np.ones((b, split)), 2 * np.ones((b, t - split))], 1), jnp.int32)
    whole = jnp.ones((b, t), jnp.int32)
    slot = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    f32 = [x.astype(jnp.float32) for x in (q, kk, v)]

    def loss(q, kk, v, seg, **options):
        return jnp.sum(attention(q, kk, v, seg, slot, seg, slot, **options).astype(jnp.float32))

    reference = {}
    for rows, seg in (("packed", packed), ("whole", whole)):
        out = attention(*f32, seg, slot, seg, slot)
        reference[rows] = (out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*f32, seg))

    # (label, rows, attention options): rows are "packed" (two segments) or "whole" (one segment)
    cases = [("xla", "packed", dict(impl="xla"))]
    if on_cpu:
        cases += [("xla-blocks", "packed", dict(impl="xla", query_blocks=causal_query_blocks(t, d))),
                  ("cpu", "packed", dict(impl="cpu"))]
    if backend == "gpu":  # the three cuDNN calls of attention.cudnn_attention
        cases += [("cudnn mask", "packed", dict(impl="cudnn")),
                  ("cudnn runs", "packed", dict(impl="cudnn", cudnn_packed_runs=4)),
                  ("cudnn causal", "whole", dict(impl="cudnn"))]
    if backend == "tpu":
        cases += [("splash", "packed", dict(impl="splash"))]
    compiled = []  # (label, rows, forward, gradient): jitted once, timed in every repeat
    for label, rows, options in cases:
        seg = packed if rows == "packed" else whole
        fwd = jax.jit(lambda q, kk, v, seg=seg, options=options: attention(q, kk, v, seg, slot, seg, slot, **options))
        grad = jax.jit(jax.grad(lambda q, kk, v, seg=seg, options=options: loss(q, kk, v, seg, **options),
                                argnums=(0, 1, 2)))
        compiled.append((label, rows, fwd, grad))
    print(f"backend {backend} ({jax.devices()[0].device_kind}); B={b} T={t} H={h} K={k} D={d} {args.dtype}")
    unit, scale = ("GFLOP/s", 1e6) if on_cpu else ("TFLOP/s", 1e9)
    # causal attention: 4*B*H*T*T*D/2 flops forward (QK^T and PV), backward ~2.5x
    flops = 3.5 * 4 * b * h * t * t * d / 2
    unavailable: set[str] = set()
    repeats = []
    for i in range(args.repeats):
        if args.repeats > 1:
            print(f"--- repeat {i + 1}/{args.repeats}")
        print(f"{'impl':<14}{'rows':<8}{'max |diff| vs fp32 ref':>24}{'grad diff':>11}{'fwd+bwd ms':>12}{unit:>10}")
        measured = {}
        for label, rows, fwd, grad in compiled:
            if label in unavailable:
                continue
            ref_out, ref_grads = reference[rows]
            try:
                diff = float(jnp.max(jnp.abs(fwd(q, kk, v).astype(jnp.float32) - ref_out)))
                grads = grad(q, kk, v)
                grad_diff = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r))) for g, r in zip(grads, ref_grads))
                ms = _time(grad, q, kk, v) * 1e3
            except Exception as e:  # noqa: BLE001 - report an unavailable kernel and go on
                print(f"{label:<14}{rows:<8} unavailable: {str(e).splitlines()[0][:100]}")
                unavailable.add(label)
                continue
            print(f"{label:<14}{rows:<8}{diff:>24.4g}{grad_diff:>11.4g}{ms:>12.2f}{flops / ms / scale:>10.2f}")
            measured[label] = {"rows": rows, "max_diff": diff, "grad_diff": grad_diff, "ms": ms}
        torch_sdpa = _torch_row(b, t, h, k, d, args.dtype, flops) if on_cpu else None
        repeats.append({"implementations": measured, "torch_sdpa": torch_sdpa,
                        "rows": [_table_row(args, backend, measured, torch_sdpa)]})
        if args.record is not None:  # after every repeat: a run stopped early keeps what it finished
            path = record.write(name, repeats, started=started)
    if args.record is not None:
        print(f"recorded: {path}")


def _tag(args, backend: str) -> str:
    """The default record name: ``attention_b8_t256_h4_kv4_d64_fp32_cpu``."""
    tag = (f"attention_b{args.batch}_t{args.seq}_h{args.heads}_kv{args.kv_heads}_d{args.head_dim}_"
           f"{_DTYPE.get(args.dtype, args.dtype)}_{backend}")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", tag)


def _table_row(args, backend: str, measured: dict, torch_sdpa: dict | None) -> dict:
    """The README line of one repeat: the backend's own kernel ("ms") beside torch SDPA (CPU) or XLA's einsums."""
    import record

    kv = f" KV{args.kv_heads}" if args.kv_heads != args.heads else ""
    primary, words = _PRIMARY.get(backend, (None, "XLA"))
    claim = (f"attention fwd+bwd, B{args.batch} T{args.seq} H{args.heads}{kv} D{args.head_dim} "
             f"{_DTYPE.get(args.dtype, args.dtype)}, two packed segments; ms: {words}")
    ours = {}
    if primary in measured:
        m = measured[primary]
        ours = {"ms": m["ms"], "max diff": m["max_diff"], "grad max diff": m["grad_diff"]}
    if backend == "cpu" and "xla" in measured:
        ours["XLA ms"] = measured["xla"]["ms"]
    for label, metric in _EXTRA.items():
        if label in measured:
            ours[metric] = measured[label]["ms"]
    if torch_sdpa is not None:
        baseline = {"ms": torch_sdpa["ms"]}
        baseline_label = "torch SDPA (flash, causal over whole unpacked rows: no segment skipping)"
    elif backend != "cpu" and "xla" in measured:
        m = measured["xla"]
        baseline = {"ms": m["ms"], "max diff": m["max_diff"], "grad max diff": m["grad_diff"]}
        baseline_label = 'XLA einsums (`impl="xla"`)'
    else:
        baseline, baseline_label = None, ""
    compare = "ms" if baseline and "ms" in ours else None
    return record.row(claim, ours, baseline=baseline, baseline_label=baseline_label, compare=compare,
                      higher_is_better=False)


def _torch_row(b, t, h, k, d, dtype, flops) -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    dt = getattr(torch, dtype)
    q, kk, v = (torch.randn(b, n, t, d, dtype=dt, requires_grad=True) for n in (h, k, k))

    def step():
        out = torch.nn.functional.scaled_dot_product_attention(q, kk, v, is_causal=True, enable_gqa=k != h)
        out.float().sum().backward()

    step()
    start = time.perf_counter()
    for _ in range(10):
        step()
    ms = (time.perf_counter() - start) / 10 * 1e3
    print(f"{'torch sdpa':<14}{'whole':<8}{'-':>24}{'-':>11}{ms:>12.2f}{flops / ms / 1e6:>10.2f}  "
          f"{torch.get_num_threads()} threads")
    return {"ms": ms, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
