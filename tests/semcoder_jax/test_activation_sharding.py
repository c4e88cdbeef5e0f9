"""Activations are constrained to the batch axes only while tracing under ``activation_sharding``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax import sharding as shd
from semcoder_jax.config import get_preset
from semcoder_jax.model import forward, init_params


def _constraints(mesh):
    config = get_preset("tiny")
    params = init_params(config, jax.random.key(0))
    ids = jnp.zeros((8, 16), jnp.int32)

    def fn(p, x):
        with shd.activation_sharding(mesh):
            return forward(p, config, x)

    text = str(jax.make_jaxpr(fn)(params, ids))
    return text.count("sharding_constraint"), text


def test_constraints_bind_batch_to_data_and_fsdp_under_a_mesh():
    mesh = shd.build_mesh({"data": 2, "fsdp": 4, "tensor": 1})
    count, text = _constraints(mesh)
    assert count >= 3  # embedding output, and each scanned layer's input and output
    assert "('data', 'fsdp')" in text or "P(('data', 'fsdp')" in text


def test_constraints_are_absent_without_a_mesh():
    count, _ = _constraints(None)
    assert count == 0


@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_constrained_forward_computes_the_same_logits(impl):
    """Also with the fused CPU kernel, whose per-device region must bind the mesh's devices even when
    the inputs are plain single-device arrays."""
    mesh = shd.build_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    config = get_preset("tiny")
    params = init_params(config, jax.random.key(0))
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 1024, (8, 16)))

    @jax.jit
    def constrained(p, x):
        with shd.activation_sharding(mesh):
            return forward(p, config.replace(attention_impl=impl), x)

    np.testing.assert_allclose(np.asarray(constrained(params, ids)), np.asarray(forward(params, config, ids)), atol=1e-5)
