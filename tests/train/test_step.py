"""The compiled train step: sharding-invariant, exact gradient accumulation, the loss it promises."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from semcoder_jax import sharding as shd
from semcoder_jax.config import get_preset
from semcoder_jax.model import forward
from semcoder_jax.train import optimizer as opt_lib
from semcoder_jax.train import step as st
from semcoder_jax.train.config import OptimizerSection
from semcoder_jax.train.data import SyntheticBatches

CFG = get_preset("tiny", dtype="float32", param_dtype="float32")
# The optimizer and length of the loop tests' 20-step runs, so both compile the same programs (cached).
OPT = OptimizerSection(learning_rate=3e-3, warmup_steps=2, schedule="cosine_with_min_lr", weight_decay=0.01)
TOTAL = 20


def run_steps(mesh, steps=5, micro_batches=1, batches=None, model=CFG, z_loss=0.0, loss_chunk=0, hlo=None):
    """Losses and final state of ``steps`` seeded steps; appends the compiled step's HLO text to ``hlo`` if given."""
    tx = opt_lib.build_optimizer(OPT, TOTAL)
    schedule = opt_lib.learning_rate_schedule(OPT, TOTAL)
    shardings = st.state_shardings(model, tx, mesh)
    state = st.init_state(model, tx, shardings, seed=0)
    fn = st.compile_train_step(st.make_train_step(model, tx, schedule, micro_batches=micro_batches, mesh=mesh,
                                                  z_loss=z_loss, loss_chunk=loss_chunk,
                                                  param_sharding=shardings.params), shardings, mesh)
    data = batches or SyntheticBatches(global_batch=8, seq_len=32, vocab_size=model.vocab_size, seed=0)
    losses = []
    for _ in range(steps):
        batch = st.shard_batch(next(data), mesh)
        if hlo is not None and not losses:
            hlo.append(fn.lower(state, batch).compile().as_text())
        state, m = fn(state, batch)
        losses.append(float(m["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def single_device_run():
    return run_steps(shd.build_mesh({"data": 1}, jax.devices()[:1]))


@pytest.mark.parametrize("shape", [{"data": 8}, {"fsdp": 8}, {"fsdp": 4, "tensor": 2},
                                   {"data": 2, "fsdp": 2, "tensor": 2}], ids=str)
def test_every_mesh_gives_the_single_device_losses(shape, single_device_run):
    ref_losses, ref_state = single_device_run
    mesh = shd.build_mesh(shape)
    losses, state = run_steps(mesh)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))),
                                          state.params, ref_state.params))
    assert max(leaves) < 1e-5
    # parameters and Adam moments are laid out exactly as the rules table says
    expected = {"embedding": ("vocab", "embed"), "lm_head": ("vocab", "embed")}
    for name, logical in expected.items():
        spec = shd.logical_to_mesh_spec(logical, state.params[name].shape, mesh)
        assert state.params[name].sharding.spec == spec
    q = state.params["layers"]["attention"]["q_proj"]  # [layers, heads, head_dim, embed]
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
    assert q.addressable_shards[0].data.shape == (2, 4 // tensor, 16, 64 // fsdp)
    mu = state.opt_state[1][0].mu["layers"]["mlp"]["down_proj"]  # [layers, embed, mlp]
    assert mu.sharding.spec == state.params["layers"]["mlp"]["down_proj"].sharding.spec
    assert mu.addressable_shards[0].data.shape == (2, 64 // fsdp, 176 // tensor)


def test_the_layer_loop_trains_like_the_scan_on_a_sharded_mesh(single_device_run):
    """``model.scan_layers=false`` slices the same stacked (sharded) parameters: same losses, same layout."""
    ref_losses, ref_state = single_device_run
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    losses, state = run_steps(mesh, steps=5, model=CFG.replace(scan_layers=False))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    gate = state.params["layers"]["mlp"]["gate_proj"]
    assert gate.sharding.spec == shd.logical_to_mesh_spec(("layers", "mlp", "embed"), gate.shape, mesh)


def test_the_cpu_attention_kernel_trains_like_the_reference_on_a_sharded_mesh(single_device_run):
    """The FFI kernel inside the sharded step runs on each device's 2 rows and 2 of 4 heads (not the
    whole batch, which XLA would gather for an opaque call): the same losses and parameters."""
    ref_losses, ref_state = single_device_run
    hlo = []
    losses, state = run_steps(shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2}), steps=5,
                              model=CFG.replace(attention_impl="cpu"), hlo=hlo)
    kernels = [line for line in hlo[0].splitlines() if 'custom_call_target="semcoder' in line]
    assert kernels and all("f32[2,32,2,16]" in line for line in kernels)
    assert not any("f32[8,32," in line for line in kernels)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))),
                                          state.params, ref_state.params))
    assert max(leaves) < 1e-5


def test_sharding_table_maps_logical_names_to_mesh_axes():
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert shd.logical_to_mesh_spec(("layers", "embed", "mlp"), (2, 64, 176), mesh) == P(None, "fsdp", "tensor")
    assert shd.logical_to_mesh_spec(("vocab", "embed"), (512, 64), mesh) == P("tensor", "fsdp")
    assert shd.logical_to_mesh_spec(("norm",), (64,), mesh) == P(None)
    # a dimension the mesh does not divide is replicated rather than failing inside XLA
    assert shd.logical_to_mesh_spec(("embed", "kv_heads"), (64, 3), mesh) == P("fsdp", None)
    assert shd.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_mesh_must_match_the_device_count():
    with pytest.raises(shd.MeshError, match=r"data=3 x fsdp=1 x tensor=1 needs 3 devices but 8 are available"):
        shd.build_mesh({"data": 3})
    with pytest.raises(shd.MeshError, match="not divisible"):
        shd.build_mesh({"data": -1, "fsdp": 3})
    assert shd.build_mesh({"data": -1, "fsdp": 2, "tensor": 2}).shape["data"] == 2


class Uneven:
    """Micro-batches (k=2: even rows / odd rows) with very different loss-token counts: 1 vs ~all."""

    def __init__(self):
        self.src = SyntheticBatches(global_batch=8, seq_len=32, vocab_size=512, seed=3, max_segments=1)

    def __next__(self):
        b = next(self.src)
        mask = np.zeros_like(b["loss_mask"])
        mask[0::2, 5] = 1  # micro-batch 0: one loss token per row
        mask[1::2, :-1] = b["segment_ids"][1::2, :-1] > 0  # micro-batch 1: every real token
        mask[1, :] = 0  # and one row of it with none at all
        b["loss_mask"] = mask.astype(np.int32)
        return b


def test_gradient_accumulation_equals_one_step_on_the_whole_batch():
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})  # 2 micro-batches x 4 batch shards
    whole_losses, whole = run_steps(mesh, steps=2, micro_batches=1, batches=Uneven())
    acc_losses, acc = run_steps(mesh, steps=2, micro_batches=2, batches=Uneven())
    np.testing.assert_allclose(acc_losses, whole_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_the_blockwise_loss_trains_like_whole_rows_with_micro_batches_and_z_loss():
    """``train.loss_chunk``: the head over 4 slices of each row, vocabulary split over ``tensor``."""
    mesh = shd.build_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    whole_losses, whole = run_steps(mesh, steps=3, micro_batches=2, batches=Uneven(), z_loss=1e-3)
    block_losses, block = run_steps(mesh, steps=3, micro_batches=2, batches=Uneven(), z_loss=1e-3, loss_chunk=8)
    np.testing.assert_allclose(block_losses, whole_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(block.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    head = block.params["lm_head"]
    assert head.sharding.spec == shd.logical_to_mesh_spec(("vocab", "embed"), head.shape, mesh)


def test_loss_is_cross_entropy_over_loss_tokens_normalised_by_the_global_count(single_device_run):
    params = jax.device_get(single_device_run[1].params)
    b = next(Uneven())

    @jax.jit
    def logits_and_sums(params, batch):
        logits = forward(params, CFG, batch["input_ids"], batch["positions"], batch["segment_ids"])
        return logits, st.loss_sums(params, CFG, batch)

    logits, (ce, _, n) = logits_and_sums(params, {k: jnp.asarray(v) for k, v in b.items()})
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    nll = -np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
    expected = (nll * b["loss_mask"]).sum() / b["loss_mask"].sum()
    assert float(n) == b["loss_mask"].sum()
    assert float(ce) / float(n) == pytest.approx(expected, rel=1e-5)


def test_bf16_compute_keeps_fp32_parameters_and_optimizer_state():
    model = get_preset("tiny", dtype="bfloat16", param_dtype="float32")
    mesh = shd.build_mesh({"fsdp": 8})
    losses, state = run_steps(mesh, steps=2, model=model)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert state.opt_state[1][0].mu["lm_head"].dtype == jnp.float32


def test_flops_per_token_matches_the_6n_rule_for_the_6_7b_model():
    cfg = get_preset("deepseek-coder-6.7b")
    f = st.flops_per_token(cfg, 2048)
    n = cfg.num_params() - cfg.vocab_size * cfg.hidden_size
    assert 6 * n < f < 6 * n * 1.2
