"""Attention implementations side by side: agreement with the reference and forward+backward time.

For packed training shapes (two segments per row) it runs every implementation available on this
backend (``xla`` always; on CPU also ``xla`` in causal query blocks, as the model runs it there, and
the fused ``cpu`` kernel; on GPU cuDNN's three calls: the segment mask as a bias, packed runs, and
the causal kernel on rows of one segment; ``splash`` on TPU), checks values and input gradients
against ``xla`` computed in float32, and times a jitted forward+backward of the attention op.  On CPU it also times torch's
``scaled_dot_product_attention`` (its fused CPU flash kernel, causal over whole unpacked rows: the
packing mask would send torch to its unfused path) on the same shapes.

    python benchmarks/attention.py [--batch 4 --seq 2048 --heads 32 --kv-heads 32 --head-dim 128]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from semcoder_jax.attention import attention
from semcoder_jax.model import causal_query_blocks


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
    args = parser.parse_args()
    b, t, h, k, d = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
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
    if jax.default_backend() == "gpu":  # the three cuDNN calls of attention.cudnn_attention
        cases += [("cudnn mask", "packed", dict(impl="cudnn")),
                  ("cudnn runs", "packed", dict(impl="cudnn", cudnn_packed_runs=4)),
                  ("cudnn causal", "whole", dict(impl="cudnn"))]
    if jax.default_backend() == "tpu":
        cases += [("splash", "packed", dict(impl="splash"))]
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); B={b} T={t} H={h} K={k} D={d} {args.dtype}")
    unit, scale = ("GFLOP/s", 1e6) if on_cpu else ("TFLOP/s", 1e9)
    print(f"{'impl':<14}{'rows':<8}{'max |diff| vs fp32 ref':>24}{'grad diff':>11}{'fwd+bwd ms':>12}{unit:>10}")
    # causal attention: 4*B*H*T*T*D/2 flops forward (QK^T and PV), backward ~2.5x
    flops = 3.5 * 4 * b * h * t * t * d / 2
    for name, rows, options in cases:
        seg = packed if rows == "packed" else whole
        fwd = jax.jit(lambda q, kk, v, seg=seg, options=options: attention(q, kk, v, seg, slot, seg, slot, **options))
        grad = jax.jit(jax.grad(lambda q, kk, v, seg=seg, options=options: loss(q, kk, v, seg, **options),
                                argnums=(0, 1, 2)))
        ref_out, ref_grads = reference[rows]
        try:
            diff = float(jnp.max(jnp.abs(fwd(q, kk, v).astype(jnp.float32) - ref_out)))
            grads = grad(q, kk, v)
            grad_diff = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r))) for g, r in zip(grads, ref_grads))
            ms = _time(grad, q, kk, v) * 1e3
        except Exception as e:  # noqa: BLE001 - report an unavailable kernel and go on
            print(f"{name:<14}{rows:<8} unavailable: {str(e).splitlines()[0][:100]}")
            continue
        print(f"{name:<14}{rows:<8}{diff:>24.4g}{grad_diff:>11.4g}{ms:>12.2f}{flops / ms / scale:>10.2f}")
    if on_cpu:
        _torch_row(b, t, h, k, d, args.dtype, flops)


def _torch_row(b, t, h, k, d, dtype, flops) -> None:
    try:
        import torch
    except ImportError:
        return
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


if __name__ == "__main__":
    main()
