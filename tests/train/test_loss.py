"""The blockwise LM head + loss (``train.loss_chunk``) computes what the whole-row loss computes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax.config import get_preset
from semcoder_jax.model import init_params
from semcoder_jax.train import loss as loss_lib
from semcoder_jax.train.config import TrainConfigError, load_config
from semcoder_jax.train.data import SyntheticBatches

CFG = get_preset("tiny", dtype="float32", param_dtype="float32")


def assert_close(actual, expected, rel):
    """Every element within ``rel`` of the largest magnitude in ``expected`` (float32 sums reorder)."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= rel * np.abs(expected).max()


def head_inputs(seed=0, batch=3, length=48, vocab=512, hidden=64):
    k = jax.random.split(jax.random.key(seed), 4)
    hidden_states = jax.random.normal(k[0], (batch, length, hidden))
    head = 0.05 * jax.random.normal(k[1], (vocab, hidden))
    targets = jax.random.randint(k[2], (batch, length), 0, vocab)
    mask = (jax.random.uniform(k[3], (batch, length)) > 0.3).astype(jnp.int32)
    mask = mask.at[1].set(0)  # a row with no loss token at all
    return hidden_states, head, targets, mask


@pytest.mark.parametrize("z_weight", [0.0, 1e-3])
@pytest.mark.parametrize("chunk", [8, 16, 24])
def test_fused_head_loss_matches_the_whole_row_loss_and_its_gradients(chunk, z_weight):
    h, w, t, m = head_inputs()

    def whole(h, w):
        ce, z = loss_lib.head_loss_sums(h, w, t, m, CFG)
        return ce + z_weight * z

    def fused(h, w):
        return loss_lib.fused_head_loss(h, w, t, m, CFG, chunk, z_weight)[0]

    ref, ref_grads = jax.value_and_grad(whole, argnums=(0, 1))(h, w)
    val, grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1)))(h, w)
    assert float(val) == pytest.approx(float(ref), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 1e-6)
    total, ce, z = loss_lib.fused_head_loss(h, w, t, m, CFG, chunk, z_weight)
    assert float(total) == pytest.approx(float(ce) + z_weight * float(z), rel=1e-6)


def test_the_gradient_scales_with_the_cotangent():
    h, w, t, m = head_inputs(seed=1)
    grads = jax.grad(lambda h, w: 0.25 * loss_lib.fused_head_loss(h, w, t, m, CFG, 16, 0.0)[0],
                     argnums=(0, 1))(h, w)
    ref = jax.grad(lambda h, w: 0.25 * loss_lib.head_loss_sums(h, w, t, m, CFG)[0], argnums=(0, 1))(h, w)
    for g, r in zip(grads, ref):
        assert_close(g, r, 1e-6)


@pytest.mark.parametrize("tied", [False, True], ids=["lm_head", "tied_embeddings"])
def test_objective_gradients_through_the_whole_model_match(tied):
    """Blockwise and whole-row objectives differentiate to the same parameter gradients, tied or not."""
    cfg = CFG.replace(tie_word_embeddings=tied)
    params = init_params(cfg, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in
             next(SyntheticBatches(global_batch=4, seq_len=32, vocab_size=cfg.vocab_size, seed=2)).items()}

    def grads(chunk):
        return jax.jit(jax.grad(lambda p: loss_lib.objective_sums(p, cfg, batch, chunk, 1e-3)[0]))(params)

    whole, block = grads(0), grads(8)
    assert ("lm_head" in whole) != tied
    for a, b in zip(jax.tree.leaves(block), jax.tree.leaves(whole)):
        assert_close(a, b, 1e-5)


def test_bf16_compute_stays_close_to_the_whole_row_loss():
    h, w, t, m = head_inputs(seed=3)
    cfg = CFG.replace(dtype="bfloat16")
    h = h.astype(jnp.bfloat16)
    ref, ref_grads = jax.value_and_grad(lambda h, w: loss_lib.head_loss_sums(h, w, t, m, cfg)[0],
                                        argnums=(0, 1))(h, w)
    val, grads = jax.value_and_grad(lambda h, w: loss_lib.fused_head_loss(h, w, t, m, cfg, 16, 0.0)[0],
                                    argnums=(0, 1))(h, w)
    assert float(val) == pytest.approx(float(ref), rel=1e-3)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, 0.02)


def test_evaluation_sums_are_the_same_blockwise():
    h, w, t, m = head_inputs(seed=4)
    whole = loss_lib.head_loss_sums(h, w, t, m, CFG)
    block = jax.jit(lambda *a: loss_lib.head_loss_sums(*a, CFG, 12))(h, w, t, m)
    np.testing.assert_allclose(np.asarray(block), np.asarray(whole), rtol=1e-6)


def test_a_chunk_that_does_not_divide_the_rows_is_refused():
    h, w, t, m = head_inputs(length=48)
    with pytest.raises(ValueError, match=r"train\.loss_chunk=20: .*divisor of the row length 48"):
        loss_lib.fused_head_loss(h, w, t, m, CFG, 20, 0.0)
    with pytest.raises(TrainConfigError, match=r"train\.loss_chunk=100: .*data\.seq_len=256"):
        load_config(None, ["model.preset=tiny", "train.steps=1", "data.seq_len=256", "train.loss_chunk=100"])
    with pytest.raises(TrainConfigError, match=r"train\.loss_chunk=-1"):
        load_config(None, ["model.preset=tiny", "train.steps=1", "train.loss_chunk=-1"])


def test_hidden_states_through_the_head_are_the_forward_logits():
    from semcoder_jax.model import forward, hidden_states, lm_head_weight, logits_from_hidden

    for tied in (False, True):
        cfg = CFG.replace(tie_word_embeddings=tied)
        params = init_params(cfg, jax.random.key(1))
        ids = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
        logits = logits_from_hidden(hidden_states(params, cfg, ids), lm_head_weight(params, cfg), cfg)
        np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(params, cfg, ids)))
