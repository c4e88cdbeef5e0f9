"""One GRPO update on a batch of rollouts: the policy's token log-probs, the objective, an optax step.

A rollout batch (``RolloutBatch``) holds each response after its prompt, right-padded: ``tokens`` [N, L],
``mask`` [N, L - 1] marking which *targets* (``tokens[:, 1:]``) are response tokens (the EOS included when
the response ended on it), one advantage and weight per response.  ``old_logp`` (the policy that sampled,
taken from the first update's own forward pass, so that update's ratio is exactly 1) and ``ref_logp``
(the frozen reference, only when the KL coefficient is non-zero) come from ``token_logprobs``, as the
updated policy's do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from semcoder_jax import sharding as shd
from semcoder_jax.config import ModelConfig
from semcoder_jax.model import Decoder, abstract_params, logical_axes
from semcoder_jax.rl.objective import (
    ObjectiveConfig,
    aggregate_denominator,
    group_advantages,
    policy_loss,
    sequence_logprobs,
)


@dataclasses.dataclass(frozen=True)
class RolloutBatch:
    """Host arrays of G groups x S responses, group-major (see the module docstring)."""

    tokens: np.ndarray         # [N, L] int32
    mask: np.ndarray           # [N, L - 1] float32
    advantages: np.ndarray     # [N] float32
    response_weight: np.ndarray  # [N] float32
    rewards: np.ndarray        # [G, S] float32


def build_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]],
                rewards: np.ndarray, config: ObjectiveConfig, *, pad_id: int = 0, multiple: int = 64) -> RolloutBatch:
    """``prompts[g]`` with its S ``responses[g][s]`` (token ids) and ``rewards`` [G, S] -> a padded batch.

    The length is rounded up to ``multiple`` so that a run compiles few update shapes.
    """
    rewards = np.asarray(rewards, np.float32)
    groups, size = rewards.shape
    if len(prompts) != groups or any(len(r) != size for r in responses):
        raise ValueError(f"rewards {rewards.shape} do not match {len(prompts)} prompts with "
                         f"{[len(r) for r in responses]} responses")
    rows = [(list(p), list(r)) for p, group in zip(prompts, responses) for r in group]
    longest = max(len(p) + len(r) for p, r in rows)
    length = -(-longest // multiple) * multiple
    tokens = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length - 1), np.float32)
    for i, (p, r) in enumerate(rows):
        tokens[i, : len(p) + len(r)] = p + r
        mask[i, len(p) - 1: len(p) + len(r) - 1] = 1.0  # target t + 1 is the response's token
    advantages, weight = group_advantages(jnp.asarray(rewards), config)
    return RolloutBatch(tokens, mask, np.asarray(advantages).reshape(-1),
                        np.repeat(np.asarray(weight), size), rewards)


def token_logprobs(params, config: ModelConfig, tokens: jax.Array, mask: jax.Array, *,
                   with_entropy: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """log p(tokens[:, t + 1] | tokens[:, : t + 1]) [N, L - 1], float32; positions past a row's last
    response token attend as padding (they are masked out of every use).  ``with_entropy``: also the
    entropy of the whole next-token distribution at each position (nats, [N, L - 1])."""
    inputs = tokens[:, :-1]
    last = jnp.max(jnp.where(mask > 0, jnp.arange(mask.shape[1])[None], 0), axis=1)
    segment = (jnp.arange(inputs.shape[1])[None] <= last[:, None]).astype(jnp.int32)
    logits = Decoder(config).apply({"params": params}, inputs, segment_ids=segment)
    logp = sequence_logprobs(logits, tokens[:, 1:])
    if not with_entropy:
        return logp
    log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return logp, -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def _split(x: jax.Array, k: int, mesh: Mesh | None) -> jax.Array:
    """[N, ...] -> [k, N/k, ...]; micro-batch j holds rows j, j+k, ... (each device keeps its share of each)."""
    y = jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)
    if mesh is not None:
        spec = PartitionSpec(None, shd.BATCH_AXES, *([None] * (x.ndim - 1)))
        y = jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))
    return y


def _unsplit(y: jax.Array) -> jax.Array:
    return jnp.swapaxes(y, 0, 1).reshape((y.shape[0] * y.shape[1],) + y.shape[2:])


def _update(config: ModelConfig, objective: ObjectiveConfig, optimizer: optax.GradientTransformation, params,
            opt_state, tokens, mask, advantages, response_weight, old_logp=None, ref_logp=None, *,
            micro_batches: int = 1, mesh: Mesh | None = None):
    """The update, its gradients summed over ``micro_batches`` slices of the rows in float32: each slice's
    loss and metrics weighted by its share of the whole batch's denominators, so the sum is the batch's."""
    token_weight = mask * response_weight[:, None]
    loss_den = aggregate_denominator(token_weight, response_weight, objective.aggregation)
    metric_den, entropy_den = jnp.sum(token_weight), jnp.sum(mask)

    def share(part, whole):
        return part / jnp.where(whole > 0, whole, 1.0)

    def loss_fn(p, mb):
        logp, entropy = token_logprobs(p, config, mb["tokens"], mb["mask"], with_entropy=True)
        old = jax.lax.stop_gradient(logp) if mb.get("old") is None else mb["old"]
        loss, metrics = policy_loss(logp, old, mb.get("ref"), mb["advantages"], mb["mask"], objective, mb["weight"])
        tw = mb["mask"] * mb["weight"][:, None]
        if micro_batches == 1:  # the whole batch: every share is exactly 1
            scale, metric_scale, entropy_scale = 1.0, 1.0, 1.0
        else:
            scale = share(aggregate_denominator(tw, mb["weight"], objective.aggregation), loss_den)
            metric_scale, entropy_scale = share(jnp.sum(tw), metric_den), share(jnp.sum(mb["mask"]), entropy_den)
        entropy = jnp.sum(jax.lax.stop_gradient(entropy) * mb["mask"]) / jnp.maximum(jnp.sum(mb["mask"]), 1.0)
        metrics = {k: v * metric_scale for k, v in metrics.items()}
        metrics["entropy"] = entropy * entropy_scale
        return loss * scale, (metrics, old)

    batch = {"tokens": tokens, "mask": mask, "advantages": advantages, "weight": response_weight}
    if old_logp is not None:
        batch["old"] = old_logp
    if ref_logp is not None:
        batch["ref"] = ref_logp
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        (loss, (metrics, old)), grads = grad_fn(params, batch)
    else:
        if tokens.shape[0] % micro_batches:
            raise ValueError(f"{tokens.shape[0]} rollout rows do not split into {micro_batches} micro-batches")

        def body(carry, mb):
            acc, loss_acc, metrics_acc = carry
            (loss, (metrics, old)), g = grad_fn(params, mb)
            acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), acc, g)
            return (acc, loss_acc + loss, jax.tree.map(jnp.add, metrics_acc, metrics)), old

        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
        names = ("clip_fraction", "kl", "ratio_mean", "entropy")
        init = (zeros, jnp.zeros((), jnp.float32), {k: jnp.zeros((), jnp.float32) for k in names})
        (grads, loss, metrics), old = jax.lax.scan(body, init,
                                                   {k: _split(v, micro_batches, mesh) for k, v in batch.items()})
        old = _unsplit(old)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return optax.apply_updates(params, updates), opt_state, loss, metrics, old


@functools.partial(jax.jit, static_argnums=(0,))
def logprobs(config: ModelConfig, params, tokens, mask) -> jax.Array:
    """``token_logprobs`` compiled, on one device (or wherever its inputs live)."""
    return token_logprobs(params, config, tokens, mask)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=("micro_batches",), donate_argnums=(3, 4))
def update(config: ModelConfig, objective: ObjectiveConfig, optimizer: optax.GradientTransformation, params,
           opt_state, tokens, mask, advantages, response_weight, old_logp=None, ref_logp=None, *,
           micro_batches: int = 1):
    """One optimizer step on the objective; returns (params, opt_state, loss, metrics, old_logp).

    ``old_logp`` None: the batch is fresh, sampled by these very parameters; their log-probs, taken from
    this step's own forward pass (so the ratio is exactly 1), come back for the batch's later updates.
    Metrics: the objective's (``policy_loss``), ``entropy`` (mean over response tokens) and ``grad_norm``.
    ``micro_batches``: gradient accumulation over that many slices of the rows (same result, less memory).
    """
    return _update(config, objective, optimizer, params, opt_state, tokens, mask, advantages, response_weight,
                   old_logp, ref_logp, micro_batches=micro_batches)


@dataclasses.dataclass(frozen=True)
class ShardedUpdate:
    """``update`` and ``logprobs`` compiled for a training mesh, as supervised training's step is: the
    parameters and Adam moments split by the rules table (``shardings``), rollout rows over (data, fsdp),
    the state donated.  ``place_batch`` turns a host ``RolloutBatch`` into global arrays (every process
    passes the whole batch: rollouts are generated identically on each)."""

    mesh: Mesh
    param_shardings: object
    opt_shardings: object
    update: Callable
    logprobs: Callable

    def place_params(self, params):
        return jax.device_put(params, self.param_shardings)

    def place_opt_state(self, opt_state):
        return jax.device_put(opt_state, self.opt_shardings)

    def place_batch(self, batch: RolloutBatch) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        shards = shd.batch_shards(self.mesh)
        if batch.tokens.shape[0] % shards:
            raise ValueError(f"{batch.tokens.shape[0]} rollout rows do not split over the mesh's {shards} "
                             "data x fsdp shards (rl.prompts_per_step x rl.group_size must be a multiple)")

        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, shd.batch_sharding(self.mesh, x.ndim), lambda i: x[i])

        return put(batch.tokens), put(batch.mask), put(batch.advantages), put(batch.response_weight)


def state_shardings(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules=shd.LOGICAL_AXIS_RULES) -> tuple[object, object]:
    """(parameter, optimizer-state) NamedSharding trees: the rules table's layout, as supervised training's
    state; the optimizer's counts are replicated."""
    abstract = nn.unbox(abstract_params(config))
    params_s = shd.param_shardings(abstract, logical_axes(config), mesh, rules)
    opt_s = optax.tree_map_params(optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, abstract), params_s,
                                  transform_non_params=lambda _: shd.replicated(mesh))
    return params_s, opt_s


def compile_sharded_update(config: ModelConfig, objective: ObjectiveConfig, optimizer: optax.GradientTransformation,
                           mesh: Mesh, rules=shd.LOGICAL_AXIS_RULES, *, micro_batches: int = 1) -> ShardedUpdate:
    """The GRPO update and log-prob pass jitted with explicit shardings on ``mesh`` (see ``ShardedUpdate``)."""
    params_s, opt_s = state_shardings(config, optimizer, mesh, rules)
    replicated = shd.replicated(mesh)
    rows = shd.batch_sharding(mesh, 2)

    def sharded_update(params, opt_state, tokens, mask, advantages, response_weight, old_logp, ref_logp):
        with shd.activation_sharding(mesh, rules):
            return _update(config, objective, optimizer, params, opt_state, tokens, mask, advantages,
                           response_weight, old_logp, ref_logp, micro_batches=micro_batches, mesh=mesh)

    def sharded_logprobs(params, tokens, mask):
        with shd.activation_sharding(mesh, rules):
            return token_logprobs(params, config, tokens, mask)

    update_fn = jax.jit(sharded_update, out_shardings=(params_s, opt_s, replicated, replicated, rows),
                        donate_argnums=(0, 1))
    logprobs_fn = jax.jit(sharded_logprobs, out_shardings=rows)
    return ShardedUpdate(mesh, params_s, opt_s, update_fn, logprobs_fn)
