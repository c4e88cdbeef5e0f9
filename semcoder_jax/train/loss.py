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
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

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


def _loss_terms(logits: Array, targets: Array, mask: Array) -> tuple[Array, Array, Array]:
    """(logsumexp per position, cross-entropy sum, logsumexp**2 sum) of float32 logits, masked."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return lse, jnp.sum((lse - target_logit) * mask), jnp.sum(lse * lse * mask)


def _token_sums(hidden: Array, head: Array, targets: Array, mask: Array,
                config: ModelConfig) -> tuple[Array, Array]:
    """(sum of cross-entropy, sum of logsumexp**2) over the masked tokens of [B, t] positions."""
    _, ce, z = _loss_terms(logits_from_hidden(hidden, head, config).astype(jnp.float32), targets, mask)
    return ce, z


def head_loss_sums(hidden: Array, head: Array, targets: Array, mask: Array, config: ModelConfig,
                   chunk: int = 0) -> tuple[Array, Array]:
    """(cross-entropy sum, logsumexp**2 sum) of the LM head over [B, T] positions, ``chunk`` at a time.

    For evaluation; to train, differentiate ``fused_head_loss`` (or this with ``chunk`` = 0).
    """
    chunk = _blocks(chunk, targets.shape[1])
    if chunk == targets.shape[1]:
        return _token_sums(hidden, head, targets, mask, config)

    def body(carry, xs):
        h, t, m = xs
        ce, z = _token_sums(constrain_activations(h), head, t, m, config)
        return (carry[0] + ce, carry[1] + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce, z), _ = jax.lax.scan(body, (zero, zero), tuple(_slices(a, chunk) for a in (hidden, targets, mask)))
    return ce, z


def _logit_grad(logits: Array, lse: Array, targets: Array, mask: Array, z_weight: float) -> Array:
    """d(ce + z_weight * lse**2) / d(logits) for float32 logits; zero where ``mask`` is 0."""
    probs = jnp.exp(logits - lse[..., None])
    vocab_index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    is_target = (vocab_index == targets[..., None].astype(jnp.int32)).astype(jnp.float32)
    return (probs * (1.0 + 2.0 * z_weight * lse)[..., None] - is_target) * mask[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def fused_head_loss(hidden: Array, head: Array, targets: Array, mask: Array, config: ModelConfig,
                    chunk: int, z_weight: float) -> tuple[Array, Array, Array]:
    """(ce + z_weight * z, ce, z) over [B, T] positions, the head applied ``chunk`` positions at a time.

    Only the first output is differentiable (w.r.t. ``hidden`` and ``head``); ``ce`` and ``z`` are
    for logging.  Under ``jax.grad`` the gradients are formed slice by slice in the forward pass.
    """
    ce, z = head_loss_sums(hidden, head, targets, mask, config, chunk)
    return ce + z_weight * z, jax.lax.stop_gradient(ce), jax.lax.stop_gradient(z)


def _fused_fwd(hidden, head, targets, mask, config, chunk, z_weight):
    chunk = _blocks(chunk, targets.shape[1])
    dt = jnp.dtype(config.dtype)
    w = head.astype(dt)
    precision = matmul_precision(config)
    # XLA:CPU runs the head-gradient dot faster as [hidden, vocab] (see ``model.project``).
    cpu = traced_platform() == "cpu"

    def body(carry, xs):
        ce_sum, z_sum, head_grad = carry
        h, t, m = xs
        h = constrain_activations(h)
        logits = jnp.einsum("btd,vd->btv", h, w, precision=precision).astype(jnp.float32)
        lse, ce, z = _loss_terms(logits, t, m)
        dlogits = _logit_grad(logits, lse, t, m.astype(jnp.float32), z_weight).astype(dt)
        dh = jnp.einsum("btv,vd->btd", dlogits, w, precision=precision)
        if cpu:
            step = jnp.einsum("btd,btv->dv", h, dlogits, precision=precision, preferred_element_type=jnp.float32)
        else:
            step = jnp.einsum("btv,btd->vd", dlogits, h, precision=precision, preferred_element_type=jnp.float32)
        return (ce_sum + ce, z_sum + z, head_grad + step), dh

    zero = jnp.zeros((), jnp.float32)
    init = (zero, zero, jnp.zeros(head.shape[::-1] if cpu else head.shape, jnp.float32))
    (ce, z, head_grad), dh = jax.lax.scan(body, init, tuple(_slices(a, chunk) for a in (hidden, targets, mask)))
    dh = jnp.swapaxes(dh, 0, 1).reshape(hidden.shape)
    return (ce + z_weight * z, ce, z), (dh, head_grad.T if cpu else head_grad, jnp.zeros((), head.dtype))


def _fused_bwd(config, chunk, z_weight, residuals, cotangents):
    dh, head_grad, head_dtype_marker = residuals
    scale = cotangents[0]
    return (dh * scale.astype(dh.dtype), (head_grad * scale).astype(head_dtype_marker.dtype),
            None, None)


fused_head_loss.defvjp(_fused_fwd, _fused_bwd)


def loss_sums(params, config: ModelConfig, batch: Mapping[str, Array],
              chunk: int = 0) -> tuple[Array, Array, Array]:
    """(sum of cross-entropy, sum of logsumexp**2, number of loss tokens) over a batch, float32."""
    hidden = hidden_states(params, config, batch["input_ids"], batch["positions"], batch["segment_ids"])
    ce, z = head_loss_sums(hidden, lm_head_weight(params, config), batch["targets"], batch["loss_mask"],
                           config, chunk)
    return ce, z, jnp.sum(batch["loss_mask"].astype(jnp.float32))


def objective_sums(params, config: ModelConfig, batch: Mapping[str, Array], chunk: int = 0,
                   z_weight: float = 0.0) -> tuple[Array, Array, Array]:
    """(ce + z_weight * z, ce, z) summed over a batch; differentiate the first.

    ``chunk`` = 0: JAX differentiates the whole-row loss; otherwise ``fused_head_loss``.
    """
    hidden = hidden_states(params, config, batch["input_ids"], batch["positions"], batch["segment_ids"])
    head, targets, mask = lm_head_weight(params, config), batch["targets"], batch["loss_mask"]
    if _blocks(chunk, targets.shape[1]) == targets.shape[1]:
        ce, z = _token_sums(hidden, head, targets, mask, config)
        return ce + z_weight * z, ce, z
    return fused_head_loss(hidden, head, targets, mask, config, chunk, z_weight)
