"""Attention kernels behind one switch: ``xla`` (reference), ``cudnn`` (GPU), ``splash`` (TPU),
``cpu`` (a fused XLA FFI kernel for CPU, ``semcoder_jax.cpu_attention``).

All take q [B, T, H, D], k/v [B, S, K, D] (K divides H: grouped-query attention) and the masking
inputs: a query attends to a key when their segment ids are equal and the key's slot is not after
the query's.  Segment 0 marks padding.  The ``xla`` path is plain einsums with a float32 softmax and
is what tests compare against HF; the others must agree with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from semcoder_jax import sharding

Array = jax.Array
_MASKED = float(jnp.finfo(jnp.float32).min)


def attention_mask(q_segment: Array, q_slot: Array, kv_segment: Array, kv_slot: Array) -> Array:
    """Boolean [B, T, S]: same segment and causal in slot order."""
    same_segment = q_segment[:, :, None] == kv_segment[:, None, :]
    causal = kv_slot[:, None, :] <= q_slot[:, :, None]
    return same_segment & causal


def _softmax_attention(q, k, v, mask) -> Array:
    """Heads-major core: q [B, K, G, T, D], k/v [B, K, S, D], mask [B, T, S] -> [B, K, G, T, D].

    Normalises after the value product (dividing [T, D] rather than [T, S]): one pass fewer over
    the scores, the same sum.
    """
    head_dim = q.shape[-1]
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else jax.lax.Precision.DEFAULT
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, precision=precision).astype(jnp.float32) * (head_dim**-0.5)
    scores = jnp.where(mask[:, None, None], scores, _MASKED)
    weights = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bksd->bkgtd", weights.astype(v.dtype), v, precision=precision)
    return out / total.astype(out.dtype)


def xla_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, *, query_blocks: int = 1) -> Array:
    """Reference attention: einsums and a float32 softmax over the masked scores.

    ``query_blocks`` > 1 is for self-attention over whole rows (S == T, both slots ``arange``): the
    queries are cut into that many blocks and block i is given only the keys up to its own end,
    since every later key is causally masked anyway.  The result is the same (masked keys weigh
    exactly 0) and the work is (n + 1) / 2n of the dense one; see ``model.causal_query_blocks``.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    if query_blocks > 1 and (k.shape[1] != length or length % query_blocks):
        raise ValueError(f"query_blocks={query_blocks} needs self-attention over a row whose length "
                         f"({length}) it divides, with {k.shape[1]} keys")
    # Heads-major once, so that the blocks below are slices rather than one transpose each.
    qh = jnp.transpose(q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim), (0, 2, 3, 1, 4))
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    mask = attention_mask(q_segment, q_slot, kv_segment, kv_slot)
    if query_blocks <= 1:
        out = _softmax_attention(qh, kh, vh, mask)
    else:
        size = length // query_blocks
        out = jnp.concatenate([
            _softmax_attention(qh[:, :, :, i * size:(i + 1) * size], kh[:, :, :(i + 1) * size],
                               vh[:, :, :(i + 1) * size], mask[:, i * size:(i + 1) * size, :(i + 1) * size])
            for i in range(query_blocks)], axis=3)
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, length, heads, head_dim)


def segment_runs(segment_ids: Array, max_runs: int) -> tuple[Array, Array, Array]:
    """Each row's maximal runs of one segment id (padding runs too) in cuDNN's packed layout.

    Returns ``offsets`` [B, max_runs + 1] (first position of each run), ``lengths`` [B, max_runs]
    (unused entries -1 in both) and ``count`` [B], the number of runs in each row; a row with more
    than ``max_runs`` runs is not described (check ``count``).  Every position lies in exactly one
    run, so no query is left without keys.  Within a row, runs equal segments when each segment is
    contiguous, which is how the packer lays rows out.
    """
    batch, length = segment_ids.shape
    starts = jnp.concatenate([jnp.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    count = jnp.sum(starts, axis=1, dtype=jnp.int32)
    begin = jax.vmap(lambda row: jnp.nonzero(row, size=max_runs + 1, fill_value=length)[0])(starts).astype(jnp.int32)
    used = jnp.arange(max_runs + 1)[None, :] < count[:, None]
    offsets = jnp.where(used, begin, -1)
    lengths = jnp.where(used[:, :-1], begin[:, 1:] - begin[:, :-1], -1)
    return offsets, lengths, count


def cudnn_path(q_segment: Array, q_slot: Array, kv_segment: Array, packed_runs: int) -> Array:
    """Which cuDNN call serves this (per-device) batch: 0 masked, 1 causal, 2 packed runs.

    1 when every row is a single run of one segment id (no packing, no padding) in slot order: plain
    causal attention, nothing masked beyond the diagonal.  2 when ``packed_runs`` > 0 and every row
    has at most that many runs.  0 otherwise: the segment mask as an additive bias.
    """
    length = q_segment.shape[1]
    in_order = jnp.all(q_slot == jnp.arange(length, dtype=q_slot.dtype)[None]) & jnp.all(kv_segment == q_segment)
    one_run = in_order & jnp.all(q_segment == q_segment[:, :1])
    if packed_runs <= 0:
        return one_run.astype(jnp.int32)
    fits = in_order & jnp.all(segment_runs(q_segment, packed_runs)[2] <= packed_runs)
    return jnp.where(one_run, 1, jnp.where(fits, 2, 0)).astype(jnp.int32)


def cudnn_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, *, packed_runs: int = 0) -> Array:
    """cuDNN flash attention (GPU, fp16/bf16) through ``jax.nn.dot_product_attention``.

    Given a boolean mask, cuDNN adds it as a bias: it computes the whole [T, S] square (no causal
    skipping), reads a [B, T, S] bias and writes its gradient in the backward.  So the batch picks
    its call at run time (``cudnn_path``): rows that are one segment each take the causal kernel;
    with ``packed_runs`` > 0 (Hopper or later), packed rows of up to that many runs take cuDNN's
    packed layout, each run a causal sequence of its own; anything else keeps the mask.
    """
    scale = q.shape[-1] ** -0.5

    def masked(q, k, v):
        mask = attention_mask(q_segment, q_slot, kv_segment, kv_slot)[:, None]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="cudnn")

    def causal(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation="cudnn")

    def packed(q, k, v):
        from jax._src.cudnn import fused_attention_stablehlo as cudnn

        offsets, lengths, _ = segment_runs(q_segment, packed_runs)
        return cudnn.dot_product_attention(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets,
                                           kv_offsets=offsets, scale=scale,
                                           mask_type=cudnn.MaskType.PADDING_CAUSAL)

    branches = [masked, causal] + ([packed] if packed_runs > 0 else [])
    return jax.lax.switch(cudnn_path(q_segment, q_slot, kv_segment, packed_runs), branches, q, k, v)


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


def fused_cpu_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, cos=None, sin=None) -> Array:
    """The CPU kernel: causal by position (slots are ``arange`` whenever S == T), segment-masked.

    With ``cos``/``sin`` ([B, T, D]) q and k are not yet rotated: the kernel applies RoPE as it loads them.
    """
    from semcoder_jax.cpu_attention import cpu_attention

    del q_slot, kv_slot
    return cpu_attention(q, k, v, q_segment, kv_segment, rope=None if cos is None else (cos, sin))


def per_device(kernel: Callable[..., Array], q: Array, k: Array, v: Array, *rows: Array) -> Array:
    """``kernel(q, k, v, *rows)`` run by each device on its own rows and heads of the batch.

    A fused kernel is an opaque custom call that XLA's partitioner cannot split: under a sharded
    ``jit`` it would gather the whole batch onto every device and compute all of its attention
    there.  Attention is independent per row and per group of query heads sharing a key/value head,
    so inside ``sharding.activation_sharding`` (which binds the mesh), the kernel runs under
    ``shard_map`` on the blocks that the rules table gives the activations around it (see
    ``sharding.per_device_attention_specs``).  ``rows`` are per-row inputs, [B, T, ...].
    Without a mesh (or on one device) it is a plain call.
    """
    bound = sharding.bound_mesh()
    if bound is None or bound[0].size == 1:
        return kernel(q, k, v, *rows)
    mesh, rules = bound
    q_spec, kv_spec, row_spec = sharding.per_device_attention_specs(q.shape, k.shape, mesh, rules)
    # Opaque kernels carry no varying-axes types, hence check_vma=False.
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec) + (row_spec,) * len(rows),
                         out_specs=q_spec, check_vma=False)(q, k, v, *rows)


_IMPLS = {"xla": xla_attention, "cudnn": cudnn_attention, "splash": splash_attention, "cpu": fused_cpu_attention}


def attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, *, impl: str = "xla",
              query_blocks: int = 1, rope: tuple[Array, Array] | None = None, cudnn_packed_runs: int = 0) -> Array:
    """Dispatches to ``impl``; ``query_blocks`` applies to ``xla`` on whole-row self-attention only.

    The fused kernels (``cudnn``, ``splash``, ``cpu``) run per device (``per_device``).  ``rope``
    (cos, sin) means q and k are not rotated yet; only the ``cpu`` kernel takes that (it rotates as
    it loads them).  ``cudnn_packed_runs`` is ``cudnn_attention``'s ``packed_runs``.
    """
    if impl not in _IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from {sorted(_IMPLS)}")
    if rope is not None and (impl != "cpu" or k.shape[1] != q.shape[1]):
        raise ValueError(f"attention: only the cpu kernel over whole rows applies RoPE itself, not {impl!r} "
                         f"with {k.shape[1]} keys for {q.shape[1]} queries")
    # The fused kernels serve the training/prefill layout; decoding against a cache uses the reference.
    if impl != "xla" and k.shape[1] != q.shape[1]:
        impl = "xla"
    if impl == "xla":
        return xla_attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, query_blocks=query_blocks)
    kernel = _IMPLS[impl]
    if impl == "cudnn" and cudnn_packed_runs:
        kernel = functools.partial(kernel, packed_runs=cudnn_packed_runs)
    return per_device(kernel, q, k, v, q_segment, q_slot, kv_segment, kv_slot, *(rope or ()))
