"""Attention kernels behind one switch: ``xla`` (reference), ``cudnn`` (GPU), ``splash`` (TPU).

All take q [B, T, H, D], k/v [B, S, K, D] (K divides H: grouped-query attention) and the masking
inputs: a query attends to a key when their segment ids are equal and the key's slot is not after
the query's.  Segment 0 marks padding.  The ``xla`` path is plain einsums with a float32 softmax and
is what tests compare against HF; the others must agree with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_MASKED = float(jnp.finfo(jnp.float32).min)


def attention_mask(q_segment: Array, q_slot: Array, kv_segment: Array, kv_slot: Array) -> Array:
    """Boolean [B, T, S]: same segment and causal in slot order."""
    same_segment = q_segment[:, :, None] == kv_segment[:, None, :]
    causal = kv_slot[:, None, :] <= q_slot[:, :, None]
    return same_segment & causal


def xla_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot) -> Array:
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, precision=precision).astype(jnp.float32) * (head_dim**-0.5)
    mask = attention_mask(q_segment, q_slot, kv_segment, kv_slot)[:, None, None]
    probs = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, precision=precision)
    return out.reshape(batch, length, heads, head_dim)


def cudnn_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot) -> Array:
    """``jax.nn.dot_product_attention`` on cuDNN (GPU, fp16/bf16); the mask carries packing."""
    mask = attention_mask(q_segment, q_slot, kv_segment, kv_slot)[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def splash_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, *, interpret: bool | None = None) -> Array:
    """Pallas splash attention (TPU) with segment ids; training shapes only (no KV cache).

    Requires T == S and slots == arange (the training layout); on TPU head_dim a multiple of 128 and
    T a multiple of the kernel's block size.  Off TPU it runs the kernel in Pallas interpret mode
    (slow, exact), which is how the tests check it against the reference.
    """
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    if k.shape[1] != length:
        raise ValueError("splash attention supports self-attention over the whole row only (no KV cache)")
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = head_dim**-0.5
    # Kernel layout: [heads, T, D] per example; GQA by repeating kv heads.
    qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
    rep = heads // kv_heads
    kh = jnp.repeat(jnp.swapaxes(k, 1, 2), rep, axis=1)
    vh = jnp.repeat(jnp.swapaxes(v, 1, 2), rep, axis=1)
    segments = sk.SegmentIds(q=q_segment, kv=kv_segment)
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=segments)
    return jnp.swapaxes(out, 1, 2)


_IMPLS = {"xla": xla_attention, "cudnn": cudnn_attention, "splash": splash_attention}


def attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, *, impl: str = "xla") -> Array:
    if impl not in _IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from {sorted(_IMPLS)}")
    # The fused kernels serve the training/prefill layout; decoding against a cache uses the reference.
    if impl != "xla" and k.shape[1] != q.shape[1]:
        impl = "xla"
    return _IMPLS[impl](q, k, v, q_segment, q_slot, kv_segment, kv_slot)

