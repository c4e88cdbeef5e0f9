"""The step profiler: wall time shared among concurrent ops, HLO instructions named by model part."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from semcoder_jax import sharding as shd
from semcoder_jax.config import get_preset
from semcoder_jax.train import optimizer as opt_lib
from semcoder_jax.train import profile as prof
from semcoder_jax.train import step as st
from semcoder_jax.train.config import OptimizerSection
from semcoder_jax.train.data import SyntheticBatches


def test_overlapping_ops_share_the_wall_time_they_overlap_in():
    # a: [0, 10), b: [5, 15), c: [20, 22) -> a alone 5, a+b 5 (2.5 each), b alone 5, c 2
    shares = prof.wall_shares([(0, 10, "a"), (5, 10, "b"), (20, 2, "c")])
    assert shares == pytest.approx({"a": 7.5, "b": 7.5, "c": 2.0})
    assert sum(shares.values()) == pytest.approx(17.0)  # the union of the intervals, not 22
    # the same instruction twice at once counts twice its share; zero-length events count nothing
    assert prof.wall_shares([(0, 4, "a"), (0, 4, "a"), (0, 4, "b"), (1, 0, "z")]) == pytest.approx(
        {"a": 4 * 2 / 3, "b": 4 / 3})


@pytest.mark.parametrize("op_name, part", [
    ("jit(train_step)/jvp(Decoder)/DecoderLayer/mlp/btd,fd->btf/dot_general", ("mlp", "fwd")),
    ("jit(train_step)/transpose(jvp(Decoder))/DecoderLayer/attention/ffi_call", ("attention core", "bwd")),
    ("jit(train_step)/transpose(jvp(Decoder))/DecoderLayer/attention/btd,bthk->dhk/dot_general",
     ("attention projections", "bwd")),
    ("jit(train_step)/jvp(Decoder)/DecoderLayer/attention/bkgtd,bksd->bkgts/dot_general", ("attention core", "fwd")),
    ("jit(train_step)/jvp(Decoder)/DecoderLayer/mlp_norm/mul", ("norms", "fwd")),
    ("jit(train_step)/transpose(jvp(btd,btv->dv))/dot_general", ("lm head", "bwd")),
    ("jit(train_step)/jvp()/exp", ("loss", "fwd")),
    ("jit(train_step)/sqrt", ("optimizer", "")),
    ("jit(train_step)/transpose(jvp(Decoder))/DecoderLayer/all-gather", ("collectives", "bwd")),
    ("", ("unattributed", "")),  # XLA's own instructions (scan buffer updates) are not the optimizer's
])
def test_op_names_map_to_parts_of_the_model(op_name, part):
    assert prof.classify(op_name) == part


def test_hlo_instructions_are_named_by_their_jax_op_names():
    compiled = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(jnp.ones((8, 8)), jnp.ones((8, 8))).compile()
    names = prof.op_names_from_hlo(compiled.as_text())
    assert {"jit(<lambda>)/dot_general", "jit(<lambda>)/tanh"} <= set(names.values())
    assert all(" " not in name for name in names)


def test_instructions_without_a_jax_op_are_reported_by_their_shapes():
    """The layer scan's zero-filled stacked outputs: XLA's own instructions, shown by what they make."""
    def scan_ys(x):
        return jax.lax.scan(lambda c, _: (c * 2.0, jnp.tanh(c)), x, None, length=4)[1]

    hlo = jax.jit(scan_ys).lower(jnp.ones((3, 5))).compile().as_text()
    signatures = prof.signatures_from_hlo(hlo)
    assert any(sig.startswith("f32[4,3,5] ") for sig in signatures.values())  # the stacked ys buffer
    assert all("{" not in sig and "metadata" not in sig for sig in signatures.values())
    name = next(n for n, sig in signatures.items() if sig.startswith("f32[4,3,5] "))
    profile = prof.fold_trace(
        [{"ph": "X", "ts": 0.0, "dur": 2000.0, "args": {"hlo_op": name, "hlo_module": "jit_scan_ys"}}],
        {}, "jit_scan_ys", steps=1, wall_s=0.002, signatures=signatures)
    assert profile.parts == {("unattributed", ""): 2.0}
    assert f"(no JAX op) {signatures[name]}" in profile.table(top=1)


def test_time_inside_gpu_command_buffers_is_flagged_with_the_flag_that_reveals_it():
    events = [{"ph": "X", "ts": 0.0, "dur": 3000.0, "args": {"hlo_op": "command_buffer_114", "hlo_module": "m"}},
              {"ph": "X", "ts": 3000.0, "dur": 1000.0, "args": {"hlo_op": "fusion.1", "hlo_module": "m"}}]
    report = prof.fold_trace(events, {"fusion.1": "jit(train_step)/add"}, "m", steps=1, wall_s=0.004).table()
    assert "3.0 ms/step ran inside XLA:GPU command buffers" in report
    assert "--xla_gpu_enable_command_buffer=" in report
    plain = prof.fold_trace(events[1:], {"fusion.1": "jit(train_step)/add"}, "m", steps=1, wall_s=0.001).table()
    assert "command buffers" not in plain


def test_profile_of_a_real_step_covers_the_model_parts_and_adds_up():
    cfg = get_preset("tiny", dtype="float32", num_layers=1)
    opt = OptimizerSection(learning_rate=1e-3, warmup_steps=0, schedule="constant")
    tx = opt_lib.build_optimizer(opt, 10)
    mesh = shd.build_mesh({"data": 1}, jax.devices()[:1])
    shardings = st.state_shardings(cfg, tx, mesh)
    fn = st.compile_train_step(st.make_train_step(cfg, tx, opt_lib.learning_rate_schedule(opt, 10), mesh=mesh,
                                                  param_sharding=shardings.params), shardings, mesh)
    batch = st.shard_batch(next(SyntheticBatches(global_batch=4, seq_len=64, vocab_size=cfg.vocab_size)), mesh)
    holder = {"state": st.init_state(cfg, tx, shardings, seed=0)}
    compiled = fn.lower(holder["state"], batch).compile()

    def run():
        holder["state"], metrics = compiled(holder["state"], batch)
        jax.block_until_ready(metrics)

    run()
    profile = prof.profile_compiled(compiled, run, steps=2)
    parts = {part for part, _ in profile.parts}
    assert {"mlp", "attention projections", "norms", "lm head", "loss", "optimizer"} <= parts
    assert {d for _, d in profile.parts} >= {"fwd", "bwd"}
    assert 0 < profile.busy_ms <= profile.wall_ms * 1.05
    assert profile.busy_ms == pytest.approx(sum(profile.instructions.values()))
    report = profile.table(top=5)
    assert "mlp" in report and "slowest 5 instructions" in report
