"""Next-token cross-entropy sums, with the LM head applied to whole rows or blockwise.

The LM head's logits are the largest activation of a code LLM's step: [B, T, 32256] for
deepseek-coder, formed in the compute dtype, then float32 for the softmax, and in the backward pass
a float32 gradient of the same size.  With ``chunk`` = 0 (the default) the loss is written plainly
and differentiated by JAX.  With ``chunk`` > 0 the head and the loss run as a ``lax.scan`` over
``T / chunk`` slices of the sequence axis, and ``fused_head_loss`` computes each slice's gradients
in the forward pass (the loss is the last thing the step computes, so they only wait for a
scale): the slice's logits are dropped as soon as its hidden-state gradient and its share of the
head's gradient are formed.  No matmul is recomputed.  The batch axis is never split, so batch
sharding over the mesh is unchanged.

Both ways compute the same values: logits in the compute dtype, softmax in float32.  The blockwise
head gradient adds up over slices in float32.

Per task: given ``task_ids`` ([B, T] int, each token's index into ``data_pipeline.prompts.TASK_NAMES``)
every function also returns a ``TaskSums`` (cross-entropy sum and loss-token count per task, [K]
float32), formed from the same per-position cross-entropy as the total: no second pass over the
logits, never differentiated.  The total itself is computed as without ``task_ids`` (a task id outside
[0, K) on a loss token drops out of the per-task sums only).  Without ``task_ids`` the outputs and the
compiled program are what they were before per-task sums existed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from data_pipeline.prompts import TASK_NAMES
from semcoder_jax.config import ModelConfig
from semcoder_jax.model import (
    constrain_activations,
    hidden_states,
    lm_head_weight,
    logits_from_hidden,
    matmul_precision,
    traced_platform,
)

Array = jax.Array
NUM_TASKS = len(TASK_NAMES)
TASK_KEY = "task_ids"  # the optional batch field: [B, T] int, each token's task index


class TaskSums(NamedTuple):
    """Per-task sums over loss tokens (index = position in ``TASK_NAMES``), float32."""

    loss_sum: Array  # [K] cross-entropy sum
    tokens: Array  # [K] number of loss tokens

    @classmethod
    def zeros(cls, num_tasks: int = NUM_TASKS) -> TaskSums:
        return cls(jnp.zeros((num_tasks,), jnp.float32), jnp.zeros((num_tasks,), jnp.float32))


def task_sums(ce: Array, mask: Array, task_ids: Array, num_tasks: int = NUM_TASKS) -> TaskSums:
    """Per-task sums of masked per-position cross-entropy ``ce`` ([B, t], already zero where ``mask`` is).

    A one-hot reduction rather than a scatter: elementwise float32 (no matmul precision to worry
    about), [B, t, K] is small beside the logits, and batch sharding reduces like any other sum.
    """
    onehot = (task_ids[..., None].astype(jnp.int32) == jnp.arange(num_tasks, dtype=jnp.int32)).astype(jnp.float32)
    return TaskSums(jnp.sum(ce[..., None] * onehot, axis=(0, 1)), jnp.sum(mask[..., None] * onehot, axis=(0, 1)))


def _zeros_if(task_ids: Array | None) -> TaskSums | None:
    return None if task_ids is None else TaskSums.zeros()


def _task_slices(task_ids: Array | None, chunk: int) -> Array | None:
    return None if task_ids is None else _slices(task_ids, chunk)


def _add_tasks(a: TaskSums | None, b: TaskSums | None) -> TaskSums | None:
    return None if a is None else TaskSums(a.loss_sum + b.loss_sum, a.tokens + b.tokens)


def _stop_tasks(tasks: TaskSums | None) -> TaskSums | None:
    return None if tasks is None else jax.tree.map(jax.lax.stop_gradient, tasks)


def _with_tasks(values: tuple, tasks: TaskSums | None) -> tuple:
    """The public functions return ``values``, plus the ``TaskSums`` when ``task_ids`` were given."""
    return values if tasks is None else (*values, tasks)


def check_loss_chunk(chunk: int, seq_len: int, length_name: str | None = None) -> None:
    """``chunk`` must be 0 (whole rows) or a positive divisor of the row length (ValueError)."""
    if chunk < 0 or (chunk and seq_len % chunk):
        length = f"{length_name}={seq_len}" if length_name else f"the row length {seq_len}"
        raise ValueError(f"train.loss_chunk={chunk}: must be 0 (whole rows) or a positive divisor of {length}")


def _slices(a: Array, chunk: int) -> Array:
    """[B, T, ...] -> [T / chunk, B, chunk, ...]: the scan runs over positions, batch stays whole."""
    batch, length = a.shape[:2]
    return jnp.swapaxes(a.reshape((batch, length // chunk, chunk) + a.shape[2:]), 0, 1)


def _blocks(chunk: int, length: int) -> int:
    """The slice length actually used: whole rows for 0 or a chunk at least as long as the row."""
    if not chunk or chunk >= length:
        return length
    check_loss_chunk(chunk, length)
    return chunk


def _loss_terms(logits: Array, targets: Array, mask: Array,
                task_ids: Array | None = None) -> tuple[Array, Array, Array, TaskSums | None]:
    """(logsumexp per position, cross-entropy sum, logsumexp**2 sum, per-task sums or None) of float32
    logits, masked."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    ce = (lse - target_logit) * mask
    tasks = None if task_ids is None else task_sums(ce, mask, task_ids)
    return lse, jnp.sum(ce), jnp.sum(lse * lse * mask), tasks


def _token_sums(hidden: Array, head: Array, targets: Array, mask: Array, config: ModelConfig,
                task_ids: Array | None = None) -> tuple[Array, Array, TaskSums | None]:
    """(sum of cross-entropy, sum of logsumexp**2, per-task sums or None) over the masked tokens of
    [B, t] positions."""
    logits = logits_from_hidden(hidden, head, config).astype(jnp.float32)
    _, ce, z, tasks = _loss_terms(logits, targets, mask, task_ids)
    return ce, z, tasks


def _head_sums(hidden, head, targets, mask, config, chunk, task_ids):
    """``head_loss_sums`` with the per-task part always in the result (None without ``task_ids``)."""
    chunk = _blocks(chunk, targets.shape[1])
    if chunk == targets.shape[1]:
        return _token_sums(hidden, head, targets, mask, config, task_ids)

    def body(carry, xs):
        h, t, m, ids = xs
        ce, z, tasks = _token_sums(constrain_activations(h), head, t, m, config, ids)
        return (carry[0] + ce, carry[1] + z, _add_tasks(carry[2], tasks)), None

    zero = jnp.zeros((), jnp.float32)
    xs = tuple(_slices(a, chunk) for a in (hidden, targets, mask)) + (_task_slices(task_ids, chunk),)
    (ce, z, tasks), _ = jax.lax.scan(body, (zero, zero, _zeros_if(task_ids)), xs)
    return ce, z, tasks


def head_loss_sums(hidden: Array, head: Array, targets: Array, mask: Array, config: ModelConfig,
                   chunk: int = 0, task_ids: Array | None = None) -> tuple[Array, ...]:
    """(cross-entropy sum, logsumexp**2 sum) of the LM head over [B, T] positions, ``chunk`` at a time;
    with ``task_ids`` also their ``TaskSums`` (third element).

    For evaluation; to train, differentiate ``fused_head_loss`` (or this with ``chunk`` = 0).
    """
    ce, z, tasks = _head_sums(hidden, head, targets, mask, config, chunk, task_ids)
    return _with_tasks((ce, z), tasks)


def _logit_grad(logits: Array, lse: Array, targets: Array, mask: Array, z_weight: float) -> Array:
    """d(ce + z_weight * lse**2) / d(logits) for float32 logits; zero where ``mask`` is 0."""
    probs = jnp.exp(logits - lse[..., None])
    vocab_index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    is_target = (vocab_index == targets[..., None].astype(jnp.int32)).astype(jnp.float32)
    return (probs * (1.0 + 2.0 * z_weight * lse)[..., None] - is_target) * mask[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def fused_head_loss(hidden: Array, head: Array, targets: Array, mask: Array, config: ModelConfig,
                    chunk: int, z_weight: float, task_ids: Array | None = None) -> tuple[Array, ...]:
    """(ce + z_weight * z, ce, z) over [B, T] positions, the head applied ``chunk`` positions at a time;
    with ``task_ids`` also their ``TaskSums`` (fourth element).

    Only the first output is differentiable (w.r.t. ``hidden`` and ``head``); the others are for
    logging.  Under ``jax.grad`` the gradients are formed slice by slice in the forward pass.
    """
    ce, z, tasks = _head_sums(hidden, head, targets, mask, config, chunk, task_ids)
    return _with_tasks((ce + z_weight * z, jax.lax.stop_gradient(ce), jax.lax.stop_gradient(z)), _stop_tasks(tasks))


def _fused_fwd(hidden, head, targets, mask, config, chunk, z_weight, task_ids=None):
    chunk = _blocks(chunk, targets.shape[1])
    dt = jnp.dtype(config.dtype)
    w = head.astype(dt)
    precision = matmul_precision(config)
    # XLA:CPU runs the head-gradient dot faster as [hidden, vocab] (see ``model.project``).
    cpu = traced_platform() == "cpu"

    def body(carry, xs):
        ce_sum, z_sum, head_grad, task_acc = carry
        h, t, m, ids = xs
        h = constrain_activations(h)
        logits = jnp.einsum("btd,vd->btv", h, w, precision=precision).astype(jnp.float32)
        lse, ce, z, tasks = _loss_terms(logits, t, m, ids)
        dlogits = _logit_grad(logits, lse, t, m.astype(jnp.float32), z_weight).astype(dt)
        dh = jnp.einsum("btv,vd->btd", dlogits, w, precision=precision)
        if cpu:
            step = jnp.einsum("btd,btv->dv", h, dlogits, precision=precision, preferred_element_type=jnp.float32)
        else:
            step = jnp.einsum("btv,btd->vd", dlogits, h, precision=precision, preferred_element_type=jnp.float32)
        return (ce_sum + ce, z_sum + z, head_grad + step, _add_tasks(task_acc, tasks)), dh

    zero = jnp.zeros((), jnp.float32)
    init = (zero, zero, jnp.zeros(head.shape[::-1] if cpu else head.shape, jnp.float32), _zeros_if(task_ids))
    xs = tuple(_slices(a, chunk) for a in (hidden, targets, mask)) + (_task_slices(task_ids, chunk),)
    (ce, z, head_grad, tasks), dh = jax.lax.scan(body, init, xs)
    dh = jnp.swapaxes(dh, 0, 1).reshape(hidden.shape)
    return (_with_tasks((ce + z_weight * z, ce, z), tasks),
            (dh, head_grad.T if cpu else head_grad, jnp.zeros((), head.dtype)))


def _fused_bwd(config, chunk, z_weight, residuals, cotangents):
    """Only the objective's cotangent matters; the logging outputs (ce, z, per-task sums) have none."""
    dh, head_grad, head_dtype_marker = residuals
    scale = cotangents[0]
    return (dh * scale.astype(dh.dtype), (head_grad * scale).astype(head_dtype_marker.dtype),
            None, None, None)


fused_head_loss.defvjp(_fused_fwd, _fused_bwd)


def loss_sums(params, config: ModelConfig, batch: Mapping[str, Array],
              chunk: int = 0) -> tuple[Array, ...]:
    """(sum of cross-entropy, sum of logsumexp**2, number of loss tokens) over a batch, float32; a batch
    with ``task_ids`` adds their ``TaskSums`` (fourth element)."""
    hidden = hidden_states(params, config, batch["input_ids"], batch["positions"], batch["segment_ids"])
    ce, z, tasks = _head_sums(hidden, lm_head_weight(params, config), batch["targets"], batch["loss_mask"],
                              config, chunk, batch.get(TASK_KEY))
    return _with_tasks((ce, z, jnp.sum(batch["loss_mask"].astype(jnp.float32))), tasks)


def objective_sums(params, config: ModelConfig, batch: Mapping[str, Array], chunk: int = 0,
                   z_weight: float = 0.0) -> tuple[Array, ...]:
    """(ce + z_weight * z, ce, z) summed over a batch; differentiate the first.  A batch with
    ``task_ids`` adds their ``TaskSums`` (fourth element, not differentiable).

    ``chunk`` = 0: JAX differentiates the whole-row loss; otherwise ``fused_head_loss``.
    """
    hidden = hidden_states(params, config, batch["input_ids"], batch["positions"], batch["segment_ids"])
    head, targets, mask = lm_head_weight(params, config), batch["targets"], batch["loss_mask"]
    task_ids = batch.get(TASK_KEY)
    if _blocks(chunk, targets.shape[1]) == targets.shape[1]:
        ce, z, tasks = _token_sums(hidden, head, targets, mask, config, task_ids)
        return _with_tasks((ce + z_weight * z, ce, z), _stop_tasks(tasks))
    return fused_head_loss(hidden, head, targets, mask, config, chunk, z_weight, task_ids)
