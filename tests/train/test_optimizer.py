"""Learning-rate schedules follow HF Trainer exactly; weight decay spares norms and embeddings."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax.config import get_preset
from semcoder_jax.model import abstract_params
from semcoder_jax.train.config import OptimizerSection
from semcoder_jax.train.optimizer import build_optimizer, learning_rate_schedule, weight_decay_mask


def hf_lrs(kind, peak, warmup, total, min_lr=None):
    import torch
    from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    if kind == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    else:
        sched = get_cosine_with_min_lr_schedule_with_warmup(opt, warmup, total, min_lr=min_lr)
    out = []
    for _ in range(total):  # the lr the optimizer uses for update s, then scheduler.step() as the Trainer does
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("kind,peak,min_lr,warmup,total", [
    ("cosine_with_min_lr", 5e-5, 5e-6, 5, 365),  # SemCoder stage 1
    ("cosine", 1e-5, None, 5, 69),               # PyX-R stage 2
    ("cosine", 1e-3, None, 0, 10),
])
def test_schedule_matches_hf_trainer_update_by_update(kind, peak, min_lr, warmup, total):
    ours = learning_rate_schedule(OptimizerSection(learning_rate=peak, min_lr=min_lr, schedule=kind,
                                                   warmup_steps=warmup), total)
    np.testing.assert_allclose([float(ours(s)) for s in range(total)], hf_lrs(kind, peak, warmup, total, min_lr),
                               rtol=1e-5, atol=1e-12)


def test_cosine_with_min_lr_defaults_to_a_tenth_of_the_peak():
    sched = learning_rate_schedule(OptimizerSection(learning_rate=1e-4, schedule="cosine_with_min_lr"), 100)
    assert float(sched(100)) == pytest.approx(1e-5)


def test_weight_decay_skips_norms_and_embedding_but_not_the_head():
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), nn.unbox(abstract_params(get_preset("tiny"))))
    mask = weight_decay_mask(params)
    assert mask["embedding"] is False and mask["final_norm"]["scale"] is False
    assert mask["layers"]["attention_norm"]["scale"] is False and mask["layers"]["mlp_norm"]["scale"] is False
    assert mask["lm_head"] is True and mask["layers"]["mlp"]["up_proj"] is True
    # and the optimizer really applies it that way: with zero gradients only decayed leaves move
    tx = build_optimizer(OptimizerSection(learning_rate=0.1, weight_decay=0.5, grad_clip=None), 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    assert moved == jax.tree.map(bool, mask)
    tx_all = build_optimizer(OptimizerSection(learning_rate=0.1, weight_decay=0.5, grad_clip=None,
                                              decay_norms_and_embeddings=True), 10)
    updates, _ = jax.jit(tx_all.update)(zeros, tx_all.init(params), params)
    assert all(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates))


def test_gradients_are_clipped_to_the_global_norm_before_adam():
    # b1 = b2 = 0 and eps = 1 make the first AdamW update -lr * g / (|g| + 1), which shows g's scale
    opt = OptimizerSection(learning_rate=1.0, grad_clip=1.0, b1=0.0, b2=0.0, eps=1.0)
    params = {"w": jnp.ones(4)}
    tx = build_optimizer(opt, 10)
    updates, _ = tx.update({"w": jnp.full(4, 10.0)}, tx.init(params), params)  # global norm 20 -> 1
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.5 / 1.5, rtol=1e-6)
    unclipped = build_optimizer(OptimizerSection(learning_rate=1.0, grad_clip=None, b1=0.0, b2=0.0, eps=1.0), 10)
    updates, _ = unclipped.update({"w": jnp.full(4, 10.0)}, unclipped.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -10 / 11, rtol=1e-6)
