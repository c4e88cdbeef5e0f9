"""The LLaMA / DeepSeek-Coder decoder in Flax (Linen), computing what HF ``LlamaForCausalLM`` computes.

Design points:
- Layers are stacked on a leading ``layers`` axis and run with ``nn.scan``, so compile time does not
  grow with depth; ``remat_policy`` wraps each layer in ``jax.checkpoint``.  ``scan_layers=False``
  runs the same stacked parameters in a Python loop (faster on XLA:CPU, see ``_layer_loop``).
- Every parameter carries logical axis names (``vocab``, ``embed``, ``mlp``, ``heads``, ``kv_heads``,
  ``head_dim``, ``norm``, ``layers``); ``semcoder_jax.sharding`` maps them to mesh axes.
- Attention masking is expressed by segment ids and slot indices: a query attends to a key when
  both belong to the same segment and the key's slot is not after the query's.  Packed training
  rows (several segments), padding (segment 0) and the KV-cache decode path all use this one rule.
- RoPE uses HF's half-split layout (``rotate_half``), so converted weights need no permutation;
  linear scaling divides positions by the factor.
- Weights keep HF's ``[out, in]`` order (``q_proj`` [heads, head_dim, embed], ``o_proj`` [embed,
  heads, head_dim], ``gate_proj`` [mlp, embed], ``lm_head`` [vocab, embed]), so converting a
  checkpoint is reshapes only; XLA picks matmul operand layouts itself, so this costs nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from semcoder_jax.attention import attention
from semcoder_jax.config import ModelConfig
from semcoder_jax.cpu_attention import FORWARD_TARGET

Array = jax.Array

# The primitives whose results are a fused attention kernel's forward: cuDNN's (bound in jax's
# custom_vjp forward rule), the CPU kernel's FFI call, and Pallas calls (splash is the only Pallas
# kernel in the model).
_CUDNN_FORWARDS = frozenset({"dot_product_attention_fwd_wrapper", "dot_product_attention_fwd"})
# Stand-ins for a kernel (the planner's) name their forward results with this ``checkpoint_name``.
FUSED_ATTENTION_FORWARD = "fused_attention_forward"


def fused_attention_forward_saveable(prim: Any, *avals: Any, **params: Any) -> bool:
    """Remat policy: save what a fused attention kernel's forward returns (output, softmax statistics).

    Under ``minimal`` a kernel is not a dot, so the backward pass runs its forward a second time to
    rebuild the residuals its own backward needs; saving them costs one [B, T, H, D] output plus
    [B, H, T] statistics per layer (cuDNN, CPU); splash's statistics are lane-replicated, [B, H, T, 128].
    """
    del avals
    if prim.name in _CUDNN_FORWARDS or prim.name == "pallas_call":
        return True
    if prim.name == "name":
        return params.get("name") == FUSED_ATTENTION_FORWARD
    return prim.name == "ffi_call" and params.get("target_name") == FORWARD_TARGET


_REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "minimal_attention": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, fused_attention_forward_saveable),
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "full": jax.checkpoint_policies.nothing_saveable,
}


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for ``max_len`` slots, and which slots hold real tokens.

    ``k``/``v``: [layers, batch, max_len, kv_heads, head_dim]; ``valid``: [batch, max_len] int32
    (1 = the slot holds a token of the sequence); ``index``: the next slot to write (shared by the
    batch, sequences are left-padded).
    """

    k: Array
    v: Array
    valid: Array
    index: Array

    @classmethod
    def init(cls, config: ModelConfig, batch: int, max_len: int, dtype: Any | None = None) -> KVCache:
        dtype = jnp.dtype(dtype or config.dtype)
        shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.resolved_head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init) -> Array:
    cfg: ModelConfig = module.config
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))


def matmul_precision(cfg: ModelConfig) -> jax.lax.Precision:
    """float32 compute means float32 matmuls (GPUs otherwise use TF32, TPUs bf16 passes)."""
    return jax.lax.Precision.HIGHEST if cfg.dtype == "float32" else jax.lax.Precision.DEFAULT


def _dense_init(cfg: ModelConfig):
    return nn.initializers.normal(stddev=cfg.initializer_range)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _cpu_friendly_einsum(spec: str, x: Array, w: Array, precision) -> Array:
    return jnp.einsum(spec, x, w, precision=precision)


def _cpu_friendly_einsum_fwd(spec, x, w, precision):
    return jnp.einsum(spec, x, w, precision=precision), (x, w)


def _cpu_friendly_einsum_bwd(spec, precision, residuals, dy):
    x, w = residuals
    x_dims, rest = spec.split(",")
    w_dims, y_dims = rest.split("->")
    dx = jnp.einsum(f"{y_dims},{w_dims}->{x_dims}", dy, w, precision=precision)
    # The weight gradient contracts over the token dims, so XLA:CPU transposes one operand.  It is
    # written with the smaller operand first (x^T . dy, or dy^T . x when dy is smaller, e.g. the MLP's
    # down projection) and the small result transposed after: in the other order XLA fuses a
    # transpose of the larger operand into its elementwise producer, which runs ~5x slower there
    # (isolated [2048, 704] x [2048, 256]: 4.1 -> 3.4 ms; paired hidden-256 step 356-364 -> 352-359).
    (small, small_dims), (big, big_dims) = sorted([(x, x_dims), (dy, y_dims)], key=lambda a: a[0].size)
    order = "".join(d for d in w_dims if d in small_dims) + "".join(d for d in w_dims if d not in small_dims)
    dw = jnp.einsum(f"{small_dims},{big_dims}->{order}", small, big, precision=precision)
    # The barrier keeps XLA from folding the transpose into the dot's output layout, which makes
    # the dot itself slower (paired: hidden-256 step 401-409 -> 379-387 ms, tiny 51-59 -> 47-48).
    dw = jnp.transpose(jax.lax.optimization_barrier(dw), [order.index(d) for d in w_dims])
    return dx.astype(x.dtype), dw.astype(w.dtype)


_cpu_friendly_einsum.defvjp(_cpu_friendly_einsum_fwd, _cpu_friendly_einsum_bwd)


_TRACE_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_platform", default=None)


@contextlib.contextmanager
def trace_for_platform(platform: str) -> Iterator[None]:
    """Trace the model as for ``platform`` ('cpu', 'gpu', 'tpu') rather than the default backend.

    The AOT planner compiles the TPU/GPU train step on CPU devices; inside this context the model
    builds the program those platforms run (see ``project``).
    """
    token = _TRACE_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TRACE_PLATFORM.reset(token)


def traced_platform() -> str:
    """The platform the model is being traced for: ``trace_for_platform``'s, else the default backend."""
    return _TRACE_PLATFORM.get() or jax.default_backend()


def project(spec: str, x: Array, w: Array, precision) -> Array:
    """``einsum(spec, x, w)`` for an activation ``x`` and a weight ``w``.

    On CPU the backward pass uses an explicit gradient whose weight-gradient contraction order
    suits XLA:CPU (forward+backward 610 -> 465 ms on the CPU benchmark shape); elsewhere it is
    plain ``einsum`` and XLA picks the order itself.  Both compute the same gradients.
    """
    if traced_platform() == "cpu":
        return _cpu_friendly_einsum(spec, x, w, precision)
    return jnp.einsum(spec, x, w, precision=precision)


class RMSNorm(nn.Module):
    """HF LlamaRMSNorm: normalise in float32, cast back, then scale."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
        return scale.astype(self.config.dtype) * y.astype(x.dtype)


def rope_cos_sin(positions: Array, head_dim: int, theta: float, scaling_factor: float, dtype) -> tuple[Array, Array]:
    """cos/sin tables [B, T, head_dim] for integer positions, as HF builds them (float32, then cast)."""
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (theta**exponent) / scaling_factor
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """x: [B, T, heads, head_dim]; half-split rotation (HF ``rotate_half``)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def causal_query_blocks(length: int, head_dim: int) -> int:
    """Query blocks for the reference attention over a whole row on CPU (see ``xla_attention``).

    Blocks of max(32, 2 * head_dim) rows, at most 8 of them, and only a count that divides the row.
    Measured on XLA:CPU (2 cores, fwd+bwd of the whole model): the tiny preset (head_dim 16, T 256)
    108 -> 85 ms with 8 blocks; head_dim 64, T 256: 521 -> 485 ms with 2 blocks, 488 with 4, 520
    with 8.  Other platforms keep the dense square (not measured there; they use fused kernels).
    """
    if traced_platform() != "cpu":
        return 1
    count = min(8, length // max(32, 2 * head_dim))
    while count > 1 and length % count:
        count -= 1
    return max(count, 1)


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, q_segment, q_slot, kv_segment, layer_cache):
        cfg = self.config
        d, h, kvh, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        init = _dense_init(cfg)
        wq = _param(self, "q_proj", (h, hd, d), ("heads", "head_dim", "embed"), init)
        wk = _param(self, "k_proj", (kvh, hd, d), ("kv_heads", "head_dim", "embed"), init)
        wv = _param(self, "v_proj", (kvh, hd, d), ("kv_heads", "head_dim", "embed"), init)
        wo = _param(self, "o_proj", (d, h, hd), ("embed", "heads", "head_dim"), init)
        dt = jnp.dtype(cfg.dtype)
        p = matmul_precision(cfg)
        q = project("btd,hkd->bthk", x, wq.astype(dt), p)
        k = project("btd,hkd->bthk", x, wk.astype(dt), p)
        v = project("btd,hkd->bthk", x, wv.astype(dt), p)
        # The CPU kernel applies RoPE itself while it loads q and k (training/prefill without a cache).
        fused_rope = cfg.attention_impl == "cpu" and layer_cache is None
        if not fused_rope:
            q = apply_rope(q, cos, sin)
            k = apply_rope(k, cos, sin)
        new_cache = None
        if layer_cache is not None:
            # The whole cache [layers, B, T, kv_heads, head_dim]: the new columns are written into it in
            # place and this layer's slice read back, so a decode step moves one column per layer, not the
            # cache (a scan that stacked per-layer caches as its outputs rewrote all of it every step).
            k_all, v_all, layer, index = layer_cache
            k_all = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype)[None], (layer, 0, index, 0, 0))
            v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype)[None], (layer, 0, index, 0, 0))
            new_cache = (k_all, v_all)
            k = jax.lax.dynamic_index_in_dim(k_all, layer, 0, keepdims=False).astype(dt)
            v = jax.lax.dynamic_index_in_dim(v_all, layer, 0, keepdims=False).astype(dt)
            kv_slot = jnp.broadcast_to(jnp.arange(k.shape[1], dtype=jnp.int32), kv_segment.shape)
            query_blocks = 1
        else:
            kv_slot = q_slot
            query_blocks = causal_query_blocks(q.shape[1], hd)
        out = attention(q, k, v, q_segment, q_slot, kv_segment, kv_slot, impl=cfg.attention_impl,
                        query_blocks=query_blocks, rope=(cos, sin) if fused_rope else None,
                        cudnn_packed_runs=cfg.cudnn_packed_runs)
        return project("bthk,dhk->btd", out, wo.astype(dt), p), new_cache


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        d, f = cfg.hidden_size, cfg.intermediate_size
        init = _dense_init(cfg)
        dt = jnp.dtype(cfg.dtype)
        w_gate = _param(self, "gate_proj", (f, d), ("mlp", "embed"), init)
        w_up = _param(self, "up_proj", (f, d), ("mlp", "embed"), init)
        w_down = _param(self, "down_proj", (d, f), ("embed", "mlp"), init)
        p = matmul_precision(cfg)
        gate = project("btd,fd->btf", x, w_gate.astype(dt), p)
        up = project("btd,fd->btf", x, w_up.astype(dt), p)
        return project("btf,df->btd", nn.silu(gate) * up, w_down.astype(dt), p)


# Logical names of activation dimensions; the rules table in ``semcoder_jax.sharding`` maps them.
ACTIVATION_AXES = ("batch", "length", "act_embed")


def constrain_activations(x: Array) -> Array:
    """Keeps [B, T, D] activations split by batch across data-parallel devices.

    A no-op unless the caller traces under a mesh and ``nn.logical_axis_rules`` (the train step
    does); without it XLA may gather whole-batch activations on every fsdp device.
    """
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


class DecoderLayer(nn.Module):
    """One pre-norm block; written as a scan body: (carry, broadcast inputs) -> (carry, None).

    The carry is (hidden states, cache): the cache is None, or (k, v, this layer's index) with k/v
    the whole [layers, ...] cache, updated in place (see ``Attention``).
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, carry, cos, sin, q_segment, q_slot, kv_segment, cache_index):
        cfg = self.config
        x, kv = carry
        x = constrain_activations(x)
        layer_cache = None if kv is None else (*kv, cache_index)
        attn_out, new_kv = Attention(cfg, name="attention")(
            RMSNorm(cfg, name="attention_norm")(x), cos, sin, q_segment, q_slot, kv_segment, layer_cache)
        x = x + attn_out
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x))
        kv = None if kv is None else (*new_kv, kv[2] + 1)
        return (constrain_activations(x), kv), None


class Decoder(nn.Module):
    """Token ids -> next-token logits; optionally reads and extends a ``KVCache``.

    Args to ``__call__``:
      input_ids: [B, T] int32.
      positions: [B, T] RoPE positions (default ``arange(T)``; per-segment positions for packed rows).
      segment_ids: [B, T] int32, 0 = padding, tokens attend only within their segment (default all 1).
      cache: a ``KVCache``; the new tokens are written at ``cache.index`` and attend to every valid
        earlier slot.  Returns ``(logits, new_cache)`` then, else ``logits``.
      attend_all_valid: with a cache and one new token per row, that token attends to every valid
        column of its row whatever the column order (a ring-buffer cache whose keys carry their own
        RoPE positions, see ``semcoder_jax.engine``); the default compares column order.
      hidden_only: return the final-normed hidden states [B, T, hidden] instead of logits (the
        blockwise loss applies the LM head itself, see ``semcoder_jax.train.loss``).
    Logits are [B, T, vocab] in the compute dtype.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: Array, positions: Array | None = None, segment_ids: Array | None = None,
                 cache: KVCache | None = None, hidden_only: bool = False, *, attend_all_valid: bool = False):
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        batch, length = input_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        segment_ids = segment_ids.astype(jnp.int32)

        embedding = _param(self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                           _dense_init(cfg))
        x = constrain_activations(jnp.take(embedding, input_ids, axis=0).astype(dt))
        cos, sin = rope_cos_sin(positions, cfg.resolved_head_dim, cfg.rope_theta, cfg.rope_scaling_factor, dt)

        slots = jnp.arange(length, dtype=jnp.int32)
        if cache is None:
            q_slot = jnp.broadcast_to(slots, (batch, length))
            kv_segment, cache_index, layer_kv = segment_ids, None, None
        else:
            if attend_all_valid and length != 1:
                raise ValueError(f"attend_all_valid decodes one token per row, not {length}")
            # A query slot past the last column makes every column "earlier": only validity masks.
            q_start = cache.max_len if attend_all_valid else cache.index
            q_slot = jnp.broadcast_to(q_start + slots, (batch, length))
            valid = jax.lax.dynamic_update_slice(cache.valid, (segment_ids != 0).astype(jnp.int32),
                                                 (0, cache.index))
            kv_segment, cache_index, layer_kv = valid, cache.index, (cache.k, cache.v)

        # Query segments: with a cache, valid new tokens are segment 1 (the one sequence of the row).
        q_segment = segment_ids if cache is None else (segment_ids != 0).astype(jnp.int32)
        layer_inputs = (cos, sin, q_segment, q_slot, kv_segment, cache_index)
        carry = (x, None if layer_kv is None else (*layer_kv, jnp.zeros((), jnp.int32)))
        if cfg.scan_layers or self.is_initializing():
            layer_cls = DecoderLayer
            if cfg.remat_policy != "none":
                layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
            layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast,) * 6,
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
            (x, kv), _ = layers(carry, *layer_inputs)
        else:
            x, kv = _layer_loop(cfg, self.variables["params"]["layers"], carry, layer_inputs)
        new_kv = None if kv is None else kv[:2]

        x = RMSNorm(cfg, name="final_norm")(x)
        if hidden_only:
            if cache is not None:
                raise ValueError("hidden_only is for training and scoring, not for decoding with a cache")
            return x
        if cfg.tie_word_embeddings:
            head = embedding
        else:
            head = _param(self, "lm_head", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), _dense_init(cfg))
        logits = logits_from_hidden(x, head, cfg)
        if cache is None:
            return logits
        new_cache = KVCache(k=new_kv[0], v=new_kv[1], valid=valid, index=cache.index + length)
        return logits, new_cache


def _unstack(tree: Any, n: int) -> list[Any]:
    """Per-layer slices of a tree stacked on axis 0.  ``split`` (not indexing) so that the gradient
    of the stack is one concatenate rather than a sum of padded slices."""
    parts = jax.tree.map(lambda a: [jnp.squeeze(s, 0) for s in jnp.split(a, n, axis=0)], tree)
    return [jax.tree.map(lambda p, i=i: p[i], parts, is_leaf=lambda p: isinstance(p, list)) for i in range(n)]


def _layer_loop(cfg: ModelConfig, stacked_params: dict, carry: tuple, layer_inputs: tuple) -> tuple:
    """The layers as a Python loop over slices of the scan's stacked parameters (``scan_layers=False``).

    Computes what the scan computes, with the same remat policy per layer and the same carry
    (hidden states, whole cache updated in place).
    """
    layer = DecoderLayer(cfg, parent=None)

    def apply_layer(params, carry, layer_inputs):
        return layer.apply({"params": params}, carry, *layer_inputs)[0]

    if cfg.remat_policy != "none":
        apply_layer = jax.checkpoint(apply_layer, policy=_REMAT_POLICIES[cfg.remat_policy])
    for params in _unstack(stacked_params, cfg.num_layers):
        carry = apply_layer(params, carry, layer_inputs)
    return carry


def _init_config(config: ModelConfig) -> ModelConfig:
    """Parameters do not depend on the kernel; init traces a 1-token input, which fused kernels refuse."""
    return config.replace(attention_impl="xla", cudnn_packed_runs=0, remat_policy="none")


def init_params(config: ModelConfig, rng: Array, *, boxed: bool = False) -> dict:
    """Random parameters (HF's normal(0, initializer_range) init); ``boxed`` keeps partitioning metadata."""
    variables = Decoder(_init_config(config)).init(rng, jnp.zeros((1, 1), jnp.int32))
    params = variables["params"]
    return params if boxed else nn.unbox(params)


def abstract_params(config: ModelConfig) -> dict:
    """Parameter shapes/dtypes with their logical-axis metadata, without allocating anything."""
    init = Decoder(_init_config(config)).init
    return jax.eval_shape(lambda: init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])


def logical_axes(config: ModelConfig) -> dict:
    """The tree of logical axis names (``PartitionSpec`` of names) matching the parameter tree."""
    return nn.get_partition_spec(abstract_params(config))


def forward(params: dict, config: ModelConfig, input_ids: Array, positions: Array | None = None,
            segment_ids: Array | None = None) -> Array:
    """Pure forward pass: logits [B, T, vocab]."""
    return Decoder(config).apply({"params": params}, input_ids, positions, segment_ids)


def hidden_states(params: dict, config: ModelConfig, input_ids: Array, positions: Array | None = None,
                  segment_ids: Array | None = None) -> Array:
    """Pure forward pass up to the final norm: [B, T, hidden] in the compute dtype.

    ``logits_from_hidden(hidden_states(...), lm_head_weight(params, config), config)`` equals
    ``forward(...)``.
    """
    return Decoder(config).apply({"params": params}, input_ids, positions, segment_ids, hidden_only=True)


def lm_head_weight(params: dict, config: ModelConfig) -> Array:
    """The [vocab, hidden] output projection: ``lm_head``, or the embedding when they are tied."""
    return params["embedding"] if config.tie_word_embeddings else params["lm_head"]


def logits_from_hidden(hidden: Array, head: Array, config: ModelConfig) -> Array:
    """The LM head: [..., hidden] x [vocab, hidden] -> [..., vocab] logits in the compute dtype."""
    dt = jnp.dtype(config.dtype)
    return project("btd,vd->btv", hidden, head.astype(dt), matmul_precision(config))
