"""Loss and loss tokens per task (``task_ids``), from the logits the step already forms.

A batch may carry ``task_ids`` [B, T] (each token's index into ``TASK_NAMES``); the train and eval
steps then also report ``task_loss_sum`` and ``task_tokens`` [K], which split the step's loss and
loss-token count by task exactly.  A batch without them trains and reports as before.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.prompts import TASK_NAMES
from semcoder_jax import sharding as shd
from semcoder_jax.config import get_preset
from semcoder_jax.model import forward, init_params
from semcoder_jax.train import loss as loss_lib
from semcoder_jax.train import optimizer as opt_lib
from semcoder_jax.train import step as st
from semcoder_jax.train.config import OptimizerSection
from semcoder_jax.train.data import SyntheticBatches
from semcoder_jax.train.loop import task_scalars

CFG = get_preset("tiny", dtype="float32", param_dtype="float32")
OPT = OptimizerSection(learning_rate=3e-3, warmup_steps=2, schedule="cosine_with_min_lr", weight_decay=0.01)
K = len(TASK_NAMES)
ABSENT = K - 1  # no token of the test batches belongs to the last task
CORE_METRICS = {"loss", "z_loss", "grad_norm", "learning_rate", "loss_tokens", "finite"}
MESHES = {"1_device": ({"data": 1}, 1), "fsdp2_x_tensor2": ({"fsdp": 2, "tensor": 2}, 4)}


def mesh_of(name):
    shape, devices = MESHES[name]
    return shd.build_mesh(shape, jax.devices()[:devices])


def task_batch(seed=0):
    """Synthetic packed rows whose segments belong to tasks 0..K-2 in turn (padding: task 0, no loss)."""
    batch = next(SyntheticBatches(global_batch=8, seq_len=32, vocab_size=CFG.vocab_size, seed=seed))
    rows = np.arange(batch["segment_ids"].shape[0])[:, None]
    batch["task_ids"] = np.where(batch["segment_ids"] > 0, (3 * rows + batch["segment_ids"]) % (K - 1), 0)
    batch["task_ids"] = batch["task_ids"].astype(np.int32)
    return batch


def expected_per_task(params, batch):
    """(cross-entropy sum, loss tokens) per task in float64, straight from the model's logits."""
    logits = np.asarray(jax.jit(forward, static_argnums=1)(params, CFG, batch["input_ids"], batch["positions"],
                                                          batch["segment_ids"]), np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0] * batch["loss_mask"]
    ids = batch["task_ids"].ravel()
    return (np.bincount(ids, nll.ravel(), minlength=K),
            np.bincount(ids, batch["loss_mask"].ravel().astype(np.float64), minlength=K))


def compiled_steps(mesh, micro_batches, loss_chunk):
    """(fresh seed-0 state, compiled train step, compiled eval step) on ``mesh``."""
    tx = opt_lib.build_optimizer(OPT, 20)
    shardings = st.state_shardings(CFG, tx, mesh)
    state = st.init_state(CFG, tx, shardings, seed=0)
    train = st.compile_train_step(st.make_train_step(CFG, tx, opt_lib.learning_rate_schedule(OPT, 20),
                                                     micro_batches=micro_batches, z_loss=1e-3,
                                                     loss_chunk=loss_chunk, mesh=mesh,
                                                     param_sharding=shardings.params), shardings, mesh)
    evaluate = st.compile_eval_step(st.make_eval_step(CFG, mesh, loss_chunk), shardings.params, mesh)
    return state, train, evaluate


@pytest.fixture(scope="module")
def reference():
    """The seed-0 parameters (the same on every mesh) and the test batch's per-task sums under them."""
    state, _, _ = compiled_steps(mesh_of("1_device"), 1, 0)
    params = jax.device_get(state.params)
    return params, expected_per_task(params, task_batch())


@pytest.mark.parametrize("micro_batches", [1, 2], ids=lambda k: f"micro{k}")
@pytest.mark.parametrize("loss_chunk", [0, 8], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_the_train_step_splits_its_loss_and_tokens_by_task(mesh_name, loss_chunk, micro_batches, reference):
    """Per-task sums add up to the step's loss and loss tokens, and each is that task's own share."""
    mesh = mesh_of(mesh_name)
    state, train, _ = compiled_steps(mesh, micro_batches, loss_chunk)
    batch = st.shard_batch(task_batch(), mesh)
    assert batch["task_ids"].sharding.is_equivalent_to(batch["input_ids"].sharding, 2)
    _, m = train(state, batch)
    m = jax.device_get(m)
    loss_sum, tokens = m["task_loss_sum"], m["task_tokens"]
    assert loss_sum.shape == tokens.shape == (K,) and loss_sum.dtype == tokens.dtype == np.float32

    assert tokens.sum() == m["loss_tokens"]
    assert loss_sum.sum() / m["loss_tokens"] == pytest.approx(float(m["loss"]), rel=1e-6)

    ref_loss, ref_tokens = reference[1]
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(loss_sum, ref_loss, rtol=1e-5)
    assert tokens[ABSENT] == 0 and loss_sum[ABSENT] == 0


def only_task(batch, k):
    """The batch with every loss token of other tasks masked out, and no task_ids."""
    out = {key: v for key, v in batch.items() if key != "task_ids"}
    out["loss_mask"] = batch["loss_mask"] * (batch["task_ids"] == k)
    return out


@pytest.mark.parametrize("loss_chunk", [0, 8], ids=lambda c: f"chunk{c}")
def test_each_task_sum_is_the_loss_of_that_task_alone(loss_chunk):
    """Evaluation sums and the differentiated objective (whole rows or the fused blockwise head) both
    give, per task, the cross-entropy of a batch in which only that task's tokens carry loss."""
    params = init_params(CFG, jax.random.key(3))
    batch = {k: jnp.asarray(v) for k, v in task_batch(seed=5).items()}

    alone = jax.jit(lambda p, b: loss_lib.loss_sums(p, CFG, b, loss_chunk)[0])
    expected = np.array([float(alone(params, only_task(batch, k))) for k in range(K)])
    assert expected[ABSENT] == 0 and (expected[:ABSENT] > 0).all()

    ce, _, n, evaluated = jax.jit(lambda p, b: loss_lib.loss_sums(p, CFG, b, loss_chunk))(params, batch)
    assert isinstance(evaluated, loss_lib.TaskSums)
    np.testing.assert_allclose(evaluated.loss_sum, expected, rtol=1e-5)
    np.testing.assert_array_equal(evaluated.tokens, [float(only_task(batch, k)["loss_mask"].sum()) for k in range(K)])

    def objective(p):
        total, _, _, tasks = loss_lib.objective_sums(p, CFG, batch, loss_chunk, 1e-3)
        return total, tasks

    _, trained = jax.jit(jax.grad(objective, has_aux=True))(params)
    np.testing.assert_allclose(trained.loss_sum, expected, rtol=1e-5)
    np.testing.assert_array_equal(trained.tokens, evaluated.tokens)
    assert float(evaluated.loss_sum.sum()) == pytest.approx(float(ce), rel=1e-6)
    assert float(evaluated.tokens.sum()) == float(n)


@pytest.mark.parametrize("loss_chunk", [0, 8], ids=lambda c: f"chunk{c}")
def test_task_ids_change_no_gradient(loss_chunk):
    """The per-task sums are logging only: the objective and its gradients are those without them."""
    params = init_params(CFG, jax.random.key(4))
    batch = {k: jnp.asarray(v) for k, v in task_batch(seed=6).items()}
    plain = {k: v for k, v in batch.items() if k != "task_ids"}
    grad = jax.jit(jax.value_and_grad(lambda p, b: loss_lib.objective_sums(p, CFG, b, loss_chunk, 1e-3)[0]))
    (value, grads), (ref_value, ref_grads) = grad(params, batch), grad(params, plain)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-7)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss_chunk", [0, 8], ids=lambda c: f"chunk{c}")
def test_the_eval_step_reports_the_train_steps_per_task_sums(loss_chunk):
    mesh = mesh_of("fsdp2_x_tensor2")
    state, train, evaluate = compiled_steps(mesh, 2, loss_chunk)
    batch = st.shard_batch(task_batch(), mesh)
    evaluated = jax.device_get(evaluate(state.params, batch))  # before the step: it donates the state
    _, trained = train(state, batch)
    trained = jax.device_get(trained)
    assert set(evaluated) == {"loss_sum", "loss_tokens", "task_loss_sum", "task_tokens"}
    np.testing.assert_array_equal(evaluated["task_tokens"], trained["task_tokens"])
    np.testing.assert_allclose(evaluated["task_loss_sum"], trained["task_loss_sum"], rtol=1e-5)
    assert float(evaluated["loss_sum"]) / float(evaluated["loss_tokens"]) == pytest.approx(float(trained["loss"]),
                                                                                         rel=1e-5)


def test_a_batch_without_task_ids_gives_the_same_step_and_no_per_task_metrics():
    mesh = mesh_of("fsdp2_x_tensor2")
    with_tasks = st.shard_batch(task_batch(), mesh)
    plain = st.shard_batch({k: v for k, v in task_batch().items() if k != "task_ids"}, mesh)
    assert set(plain) == set(st.BATCH_KEYS)

    state, train, evaluate = compiled_steps(mesh, 2, 8)
    assert set(jax.device_get(evaluate(state.params, plain))) == {"loss_sum", "loss_tokens"}
    plain_state, plain_metrics = train(state, plain)
    state, _, _ = compiled_steps(mesh, 2, 8)
    task_state, task_metrics = train(state, with_tasks)

    assert set(plain_metrics) == CORE_METRICS
    assert set(task_metrics) == CORE_METRICS | {"task_loss_sum", "task_tokens"}
    for key in CORE_METRICS:
        assert float(task_metrics[key]) == pytest.approx(float(plain_metrics[key]), rel=1e-6), key
    for a, b in zip(jax.tree.leaves(task_state.params), jax.tree.leaves(plain_state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)


def test_logged_scalars_name_each_task_and_skip_the_loss_of_tasks_without_tokens():
    loss_sum = np.array([6.0, 0.0, 1.5, 0.0, 0.0], np.float32)[:K]
    tokens = np.array([3.0, 0.0, 1.0, 0.0, 0.0], np.float32)[:K]
    values = task_scalars(loss_sum, tokens, "eval_loss", "eval_tokens")
    assert values[f"eval_loss/{TASK_NAMES[0]}"] == 2.0 and values[f"eval_loss/{TASK_NAMES[2]}"] == 1.5
    assert {f"eval_tokens/{name}" for name in TASK_NAMES} <= set(values)
    assert values[f"eval_tokens/{TASK_NAMES[1]}"] == 0.0 and f"eval_loss/{TASK_NAMES[1]}" not in values
    assert len(values) == K + 2
    assert all(type(v) is float for v in values.values())  # plain scalars for metrics.jsonl and TensorBoard
