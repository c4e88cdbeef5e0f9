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
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from semcoder_jax.config import ModelConfig
from semcoder_jax.model import Decoder
from semcoder_jax.rl.objective import ObjectiveConfig, group_advantages, policy_loss, sequence_logprobs


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


def token_logprobs(params, config: ModelConfig, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """log p(tokens[:, t + 1] | tokens[:, : t + 1]) [N, L - 1], float32; positions past a row's last
    response token attend as padding (they are masked out of every use)."""
    inputs = tokens[:, :-1]
    last = jnp.max(jnp.where(mask > 0, jnp.arange(mask.shape[1])[None], 0), axis=1)
    segment = (jnp.arange(inputs.shape[1])[None] <= last[:, None]).astype(jnp.int32)
    logits = Decoder(config).apply({"params": params}, inputs, segment_ids=segment)
    return sequence_logprobs(logits, tokens[:, 1:])


@functools.partial(jax.jit, static_argnums=(0,))
def logprobs(config: ModelConfig, params, tokens, mask) -> jax.Array:
    """``token_logprobs`` compiled: the sampling policy's (``old_logp``) and the reference's."""
    return token_logprobs(params, config, tokens, mask)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(3, 4))
def update(config: ModelConfig, objective: ObjectiveConfig, optimizer: optax.GradientTransformation, params,
           opt_state, tokens, mask, advantages, response_weight, old_logp=None, ref_logp=None):
    """One optimizer step on the objective; returns (params, opt_state, loss, metrics, old_logp).

    ``old_logp`` None: the batch is fresh, sampled by these very parameters; their log-probs, taken from
    this step's own forward pass (so the ratio is exactly 1), come back for the batch's later updates.
    """

    def loss_fn(p):
        logp = token_logprobs(p, config, tokens, mask)
        old = jax.lax.stop_gradient(logp) if old_logp is None else old_logp
        loss, metrics = policy_loss(logp, old, ref_logp, advantages, mask, objective, response_weight)
        return loss, (metrics, old)

    (loss, (metrics, old)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return optax.apply_updates(params, updates), opt_state, loss, metrics, old
