"""Attention implementations side by side: agreement with the reference and forward+backward time.

For packed training shapes (two segments per row) it runs every implementation available on this
backend (``xla`` always; on CPU also ``xla`` in causal query blocks, as the model runs it there, and
the fused ``cpu`` kernel; ``cudnn`` on GPU; ``splash`` on TPU), checks each against ``xla`` computed
in float32, and times a jitted forward+backward of the attention op.  On CPU it also times torch's
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
    seg = jnp.asarray(np.concatenate([np.ones((b, split)), 2 * np.ones((b, t - split))], 1), jnp.int32)
    slot = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    ref = attention(q.astype(jnp.float32), kk.astype(jnp.float32), v.astype(jnp.float32), seg, slot, seg, slot)

    impls = ["xla"] + (["xla-blocks", "cpu"] if on_cpu else []) + (
        ["cudnn"] if jax.default_backend() == "gpu" else []) + (["splash"] if jax.default_backend() == "tpu" else [])
    blocks = causal_query_blocks(t, d)
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); B={b} T={t} H={h} K={k} D={d} {args.dtype}")
    unit, scale = ("GFLOP/s", 1e6) if on_cpu else ("TFLOP/s", 1e9)
    print(f"{'impl':<12}{'max |diff| vs fp32 ref':>20}{'fwd+bwd ms':>12}{unit:>10}")
    # causal attention: 4*B*H*T*T*D/2 flops forward (QK^T and PV), backward ~2.5x
    flops = 3.5 * 4 * b * h * t * t * d / 2
    for name in impls:
        impl, query_blocks = ("xla", blocks) if name == "xla-blocks" else (name, 1)

        def run(q, kk, v, impl=impl, query_blocks=query_blocks):
            return attention(q, kk, v, seg, slot, seg, slot, impl=impl, query_blocks=query_blocks)

        def loss(q, kk, v, run=run):
            return jnp.sum(run(q, kk, v).astype(jnp.float32))

        fwd = jax.jit(run)
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        try:
            diff = float(jnp.max(jnp.abs(fwd(q, kk, v).astype(jnp.float32) - ref)))
            ms = _time(grad, q, kk, v) * 1e3
        except Exception as e:  # noqa: BLE001 - report an unavailable kernel and go on
            print(f"{name:<12} unavailable: {str(e).splitlines()[0][:100]}")
            continue
        print(f"{name:<12}{diff:>20.4g}{ms:>12.2f}{flops / ms / scale:>10.2f}")
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
    print(f"{'torch sdpa':<12}{'(unpacked)':>20}{ms:>12.2f}{flops / ms / 1e6:>10.2f}  {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
