"""The pure training math: state, loss, one compiled optimizer step, evaluation loss.

- Loss (``semcoder_jax.train.loss``): next-token cross-entropy summed over loss-bearing tokens
  (``loss_mask``) and divided by the number of such tokens in the *whole global batch*, so
  micro-batching, sharding and packing never change what is optimised; optional z-loss
  (``z_loss * logsumexp(logits)**2`` on the same tokens); optionally blockwise over the sequence.
- Gradient accumulation runs inside the compiled step as a ``lax.scan`` over ``micro_batches``
  slices of the global batch (rows ``j, j+k, j+2k, ...`` form micro-batch ``j``, so every device
  keeps its share of every micro-batch); gradients add up in float32 and are token-weighted by
  construction.
- Compute runs in ``ModelConfig.dtype`` (bf16 by default) against ``param_dtype`` parameters; the
  loss and softmax are float32.
- ``compile_train_step`` jits with explicit in/out shardings and donates the state.
- A batch may carry ``task_ids`` (``OPTIONAL_BATCH_KEYS``): then the step's metrics add the per-task
  cross-entropy sums and loss-token counts (``task_loss_sum``, ``task_tokens``, [K] in
  ``TASK_NAMES`` order, global sums), from the logits the loss already forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semcoder_jax import sharding as shd
from semcoder_jax.config import ModelConfig
from semcoder_jax.model import abstract_params, init_params, logical_axes
from semcoder_jax.train.loss import TASK_KEY, TaskSums, loss_sums, objective_sums

Array = jax.Array
Batch = Mapping[str, Array]
BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
OPTIONAL_BATCH_KEYS = (TASK_KEY,)  # carried (split, sharded) when present; they only add metrics


def batch_keys(batch: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields of ``batch`` the step reads: ``BATCH_KEYS`` and whichever optional ones it has."""
    return BATCH_KEYS + tuple(key for key in OPTIONAL_BATCH_KEYS if key in batch)


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the update count, parameters, optimizer state and the RNG key data."""

    step: Array
    params: Any
    opt_state: Any
    rng: Array


def _split_micro_batches(batch: Batch, k: int, mesh: Mesh | None) -> Batch:
    """[B, ...] -> [k, B/k, ...] with micro-batch j = rows j, j+k, ... (a local reshape per shard)."""

    def split(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)
        if mesh is not None:
            spec = PartitionSpec(None, shd.BATCH_AXES, *([None] * (x.ndim - 1)))
            y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
        return y

    return {key: split(batch[key]) for key in batch_keys(batch)}


def make_train_step(config: ModelConfig, tx: optax.GradientTransformation, schedule: optax.Schedule, *,
                    micro_batches: int = 1, z_loss: float = 0.0, loss_chunk: int = 0, mesh: Mesh | None = None,
                    param_sharding=None) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A pure ``(state, global_batch) -> (state, metrics)`` function (jit it with ``compile_train_step``).

    ``loss_chunk``: positions per slice of the blockwise LM head + loss (0 = whole rows), see
    ``semcoder_jax.train.loss``.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        with shd.activation_sharding(mesh):
            return _train_step(state, batch)

    def _train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        num_tokens = jnp.sum(batch["loss_mask"].astype(jnp.float32))
        denom = jnp.maximum(num_tokens, 1.0)

        def objective(params, micro):
            total, ce, z, *tasks = objective_sums(params, config, micro, loss_chunk, z_loss)
            return total / denom, (ce, z, *tasks)

        grad_fn = jax.grad(objective, has_aux=True)
        if micro_batches == 1:
            grads, (ce_sum, z_sum, *tasks) = grad_fn(state.params, batch)
            grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        else:
            micro = _split_micro_batches(batch, micro_batches, mesh)

            def constrain(tree):
                if param_sharding is None:
                    return tree
                return jax.lax.with_sharding_constraint(tree, param_sharding)

            def body(carry, mb):
                acc, ce_acc, z_acc, *task_acc = carry
                g, (ce, z, *tasks) = grad_fn(state.params, mb)
                acc = constrain(jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g))
                return (acc, ce_acc + ce, z_acc + z, *jax.tree.map(jnp.add, task_acc, tasks)), None

            zeros = constrain(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params))
            init = (zeros, jnp.float32(0), jnp.float32(0))
            if TASK_KEY in batch:
                init += (TaskSums.zeros(),)
            (grads, ce_sum, z_sum, *tasks), _ = jax.lax.scan(body, init, micro)
        grad_norm = global_norm(grads)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient never reaches the state: the step keeps the old parameters and
        # optimizer state (a select XLA fuses into the update) and reports it; the loop stops or counts.
        finite = jnp.isfinite(ce_sum) & jnp.isfinite(z_sum) & jnp.isfinite(grad_norm)
        params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
        opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
        metrics = {
            "loss": ce_sum / denom,
            "z_loss": z_sum / denom,
            "grad_norm": grad_norm,
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "loss_tokens": num_tokens,
            "finite": finite.astype(jnp.float32),
        }
        if tasks:
            metrics["task_loss_sum"], metrics["task_tokens"] = tasks[0]
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng), metrics

    return train_step


def global_norm(tree) -> Array:
    """sqrt of the sum of squares of every leaf, in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_eval_step(config: ModelConfig, mesh: Mesh | None = None,
                   loss_chunk: int = 0) -> Callable[[Any, Batch], dict]:
    """``(params, batch) -> {loss_sum, loss_tokens}`` (+ ``task_loss_sum``, ``task_tokens`` for a batch
    with ``task_ids``); the caller sums over batches and divides."""

    def eval_step(params, batch: Batch) -> dict:
        with shd.activation_sharding(mesh):
            ce, _, n, *tasks = loss_sums(params, config, batch, loss_chunk)
        out = {"loss_sum": ce, "loss_tokens": n}
        if tasks:
            out["task_loss_sum"], out["task_tokens"] = tasks[0]
        return out

    return eval_step


# ---- state layout on the mesh ------------------------------------------------------------------


def state_shardings(config: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh,
                    rules=shd.LOGICAL_AXIS_RULES) -> TrainState:
    """NamedSharding for every leaf of the train state: params and their optimizer moments follow the
    rules table; counts, the step and the RNG are replicated."""
    abstract = nn.unbox(abstract_params(config))
    params_s = shd.param_shardings(abstract, logical_axes(config), mesh, rules)
    abstract_opt = jax.eval_shape(tx.init, abstract)
    rep = shd.replicated(mesh)
    opt_s = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, params_s,
                                  transform_non_params=lambda _: rep)
    return TrainState(step=rep, params=params_s, opt_state=opt_s, rng=rep)


def abstract_state(config: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings for the whole state (restore targets, AOT compilation)."""
    params = nn.unbox(abstract_params(config))
    opt_state = jax.eval_shape(tx.init, params)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state,
                        rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_state(config: ModelConfig, tx: optax.GradientTransformation, shardings: TrainState, seed: int,
               params: Any | None = None) -> TrainState:
    """A fresh state on the mesh: random params from ``seed`` or the given host params (numpy tree)."""
    rng = jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
    if params is None:
        def fresh(key_data):
            p = init_params(config, jax.random.wrap_key_data(key_data))
            return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), rng=key_data)

        return jax.jit(fresh, out_shardings=shardings)(rng)
    placed = place_params(params, shardings.params, config)

    def from_params(p, key_data):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p), rng=key_data)

    return jax.jit(from_params, out_shardings=shardings)(placed, rng)


def place_params(params: Any, param_shardings: Any, config: ModelConfig) -> Any:
    """Host (numpy) params -> global arrays in ``param_dtype``, each process filling its own shards."""
    dtype = jnp.dtype(config.param_dtype)

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: np.asarray(x[idx], dtype))

    return jax.tree.map(put, params, param_shardings)


def compile_train_step(step_fn, shardings: TrainState, mesh: Mesh):
    """jit with the state's shardings in and out, the batch split over (data, fsdp), state donated."""
    return jax.jit(step_fn, in_shardings=(shardings, shd.batch_sharding(mesh)),
                   out_shardings=(shardings, shd.replicated(mesh)), donate_argnums=(0,))


def compile_eval_step(eval_fn, param_shardings, mesh: Mesh):
    return jax.jit(eval_fn, in_shardings=(param_shardings, shd.batch_sharding(mesh)),
                   out_shardings=shd.replicated(mesh))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """This process's rows -> global arrays split over (data, fsdp) (rows of process i follow those of i-1).

    Takes ``BATCH_KEYS`` and any ``OPTIONAL_BATCH_KEYS`` present (every process must have the same)."""
    sharding = shd.batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local_batch[key]))
            for key in batch_keys(local_batch)}


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward, no remat recompute): 6 N + causal attention.

    N counts every matmul weight (the embedding lookup is not a matmul; the LM head is).  Attention
    scores and values add 12 * layers * heads * head_dim * seq / 2 (causal half).
    """
    d, hd = config.hidden_size, config.resolved_head_dim
    n_matmul = config.num_params() - config.vocab_size * d * (0 if config.tie_word_embeddings else 1)
    n_matmul -= (2 * config.num_layers + 1) * d  # norm scales
    attention = 12 * config.num_layers * config.num_heads * hd * seq_len / 2
    return 6.0 * n_matmul + attention


# Dense bf16 peak FLOP/s per device, by ``device_kind`` prefix (vendor datasheets).
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA A6000": 154.8e12,
    "NVIDIA RTX A6000": 154.8e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops(device: jax.Device) -> float | None:
    """The device's dense bf16 peak, or None where it is not known (CPUs)."""
    kind = getattr(device, "device_kind", "")
    for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
        if kind.startswith(prefix):
            return PEAK_FLOPS[prefix]
    return None
