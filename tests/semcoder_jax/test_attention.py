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
