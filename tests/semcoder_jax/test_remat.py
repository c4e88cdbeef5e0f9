"""Remat policies: what a training step's backward recomputes, and that no policy changes the function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax import sharding as shd
from semcoder_jax.config import ModelConfig
from semcoder_jax.model import forward, init_params

CONFIG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                     num_kv_heads=2, max_position_embeddings=64, dtype="float32")


def _loss(config, mesh=None):
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 128, (8, 32)))

    def loss(params):
        if mesh is None:
            return jnp.mean(forward(params, config, ids) ** 2)
        with shd.activation_sharding(mesh):
            return jnp.mean(forward(params, config, ids) ** 2)
    return loss


def _gradient_program(config, mesh=None) -> str:
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return str(jax.make_jaxpr(jax.grad(_loss(config, mesh)))(params))


@pytest.mark.parametrize("mesh_axes", [None, {"data": 2, "fsdp": 2, "tensor": 2}])
def test_minimal_attention_keeps_the_cpu_kernels_forward_out_of_the_backward(mesh_axes):
    """Under ``minimal`` the backward reruns the kernel's forward (it is not a dot); ``minimal_attention``
    saves its output and statistics, also when the kernel runs per device under ``shard_map``."""
    mesh = shd.build_mesh(mesh_axes) if mesh_axes else None
    config = CONFIG.replace(attention_impl="cpu")
    forwards = {policy: _gradient_program(config.replace(remat_policy=policy), mesh)
                .count("semcoder_cpu_attention_forward") for policy in ("none", "minimal", "minimal_attention")}
    assert forwards == {"none": 1, "minimal": 2, "minimal_attention": 1}


def test_minimal_attention_keeps_cudnns_forward_out_of_the_backward(monkeypatch):
    """Traced only (cuDNN runs on GPUs): the policy matches the primitive jax's cuDNN forward rule binds."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: True)
    config = CONFIG.replace(attention_impl="cudnn", dtype="bfloat16")
    programs = {policy: _gradient_program(config.replace(remat_policy=policy))
                for policy in ("minimal", "minimal_attention")}
    # each program has the masked and the causal branch (lax.switch); each branch one forward call,
    # plus its rerun under minimal
    assert programs["minimal"].count("dot_product_attention_fwd") == 4
    assert programs["minimal_attention"].count("dot_product_attention_fwd") == 2


def test_minimal_attention_keeps_splashs_forward_out_of_the_backward():
    """Traced only (splash compiles for TPUs): forward, dq and dkv kernels, plus the rerun under minimal."""
    config = CONFIG.replace(attention_impl="splash", hidden_size=256, num_heads=2, num_kv_heads=2,
                            max_position_embeddings=128)
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    ids = jnp.zeros((2, 128), jnp.int32)
    calls = {}
    for policy in ("none", "minimal", "minimal_attention"):
        cfg = config.replace(remat_policy=policy)
        program = str(jax.make_jaxpr(jax.grad(lambda p, cfg=cfg: jnp.mean(forward(p, cfg, ids) ** 2)))(params))
        calls[policy] = program.count("pallas_call[")
    assert calls == {"none": 3, "minimal": 4, "minimal_attention": 3}


@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_minimal_attention_gives_the_losses_and_gradients_of_no_remat(impl):
    config = CONFIG.replace(attention_impl=impl)
    params = init_params(config, jax.random.key(0))
    ref_loss, ref_grads = jax.value_and_grad(_loss(config))(params)
    loss, grads = jax.value_and_grad(_loss(config.replace(remat_policy="minimal_attention")))(params)
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
