"""Every attention implementation agrees with the reference einsum path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax.attention import attention_mask, splash_attention, xla_attention
from semcoder_jax.config import ModelConfig
from semcoder_jax.model import forward, init_params


def _inputs(seed=0, batch=1, length=256, heads=4, kv_heads=2, head_dim=128):
    r = np.random.RandomState(seed)
    q = jnp.asarray(r.randn(batch, length, heads, head_dim).astype(np.float32))
    k = jnp.asarray(r.randn(batch, length, kv_heads, head_dim).astype(np.float32))
    v = jnp.asarray(r.randn(batch, length, kv_heads, head_dim).astype(np.float32))
    segments = jnp.asarray(np.array([[1] * 100 + [2] * 120 + [0] * (length - 220)] * batch, np.int32))
    slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return q, k, v, segments, slots


def test_mask_is_causal_within_segments_only():
    seg = jnp.asarray([[1, 1, 2, 2, 0]])
    slot = jnp.arange(5)[None]
    mask = np.asarray(attention_mask(seg, slot, seg, slot))[0]
    expected = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]], bool)
    assert (mask == expected).all()


@pytest.mark.parametrize("blocks", [2, 8])
def test_causal_query_blocks_compute_the_dense_result(blocks):
    """Block i of the queries sees keys up to its own end only; the keys it skips are masked anyway."""
    q, k, v, seg, slot = _inputs(head_dim=16)

    def loss(q, k, v, query_blocks):
        out = xla_attention(q, k, v, seg, slot, seg, slot, query_blocks=query_blocks)
        return jnp.sum(out**2), out

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (ours, ours_out), (ref, ref_out) = grad(q, k, v, blocks), grad(q, k, v, 1)
    np.testing.assert_allclose(np.asarray(ours_out), np.asarray(ref_out), atol=1e-6)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_query_blocks_refuse_a_row_they_do_not_divide_or_a_kv_cache():
    q, k, v, seg, slot = _inputs(head_dim=16)
    with pytest.raises(ValueError, match="query_blocks=3"):
        xla_attention(q, k, v, seg, slot, seg, slot, query_blocks=3)
    with pytest.raises(ValueError, match="64 keys"):
        xla_attention(q, k[:, :64], v[:, :64], seg, slot, seg[:, :64], slot[:, :64], query_blocks=2)


def test_splash_kernel_matches_reference_on_packed_segments():
    q, k, v, seg, slot = _inputs()
    ours = splash_attention(q, k, v, seg, slot, seg, slot, interpret=True)
    ref = xla_attention(q, k, v, seg, slot, seg, slot)
    np.testing.assert_allclose(np.asarray(ours)[:, :220], np.asarray(ref)[:, :220], atol=1e-5)


@pytest.mark.slow  # Pallas interpret mode on CPU: ~35 s
def test_decoder_with_splash_attention_equals_xla():
    config = ModelConfig(vocab_size=64, hidden_size=256, intermediate_size=128, num_layers=1, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=512, rope_scaling_factor=1.0)
    params = init_params(config, jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(1).randint(0, 64, (1, 256)))
    ref = forward(params, config, ids)
    ours = forward(params, config.replace(attention_impl="splash"), ids)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-4)
