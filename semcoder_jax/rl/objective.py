"""The GRPO-family policy objective as pure functions: group advantages, the clipped surrogate, k3 KL.

One ``ObjectiveConfig`` names the variant; the math is shared:

- GRPO: advantages divided by the group's std, each response's tokens averaged, then the responses
  (``aggregation="sequence"``, ``scale_by_std=True``).
- Dr.GRPO: no std division, token sums over a constant normaliser, so neither a response's length nor
  its group's spread rescales its gradient (``aggregation="constant"``, ``scale_by_std=False``).
- DAPO: clip-higher (``clip_high`` > ``clip_low``), one mean over all tokens of the batch, groups whose
  rewards are all equal dropped (``aggregation="token"``, ``drop_zero_variance_groups=True``).

Shapes: a batch holds ``G`` groups of ``S`` responses to one prompt each, flattened group-major into
``N = G * S`` responses of ``T`` (padded) tokens; ``mask`` is 1 on response tokens.  All math is float32,
and the functions are jit-able with the config static (it is frozen, hence hashable).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from semcoder_jax.errors import UserError

Array = jax.Array
AGGREGATIONS = ("sequence", "token", "constant")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Which GRPO-family variant to optimise.

    ``clip_low``/``clip_high``: the ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's
    clip-higher is clip_high > clip_low).  ``kl_coef``: weight of the k3 KL penalty to a reference
    policy (0 = off, and no reference log-probs are needed).  ``aggregation``: how per-token losses
    become one number, one of ``AGGREGATIONS`` (see ``aggregate``).  ``scale_by_std``: divide
    advantages by the group std (GRPO) or not (Dr.GRPO).  ``drop_zero_variance_groups``: give groups
    whose rewards are all equal weight 0 (DAPO dynamic sampling).  ``std_eps``: added to the std.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    aggregation: str = "sequence"
    scale_by_std: bool = True
    drop_zero_variance_groups: bool = False
    std_eps: float = 1e-6

    def __post_init__(self) -> None:
        problems = []
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"aggregation must be one of {list(AGGREGATIONS)}, got {self.aggregation!r}")
        for name in ("clip_low", "clip_high", "kl_coef", "std_eps"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
        if problems:
            raise UserError("invalid objective config: " + "; ".join(problems))


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den``, and 0 where ``den`` is 0 (then ``num`` is a sum over nothing, also 0)."""
    return num / jnp.where(den > 0, den, 1.0)


def group_advantages(rewards: Array, config: ObjectiveConfig) -> tuple[Array, Array]:
    """(advantages [G, S], group weight [G]) of ``rewards`` [G, S], float32.

    The advantage is the reward minus its group's mean, divided by (the group's population std,
    ddof=0, + ``std_eps``) when ``config.scale_by_std``.  A group whose rewards are all equal has
    advantages exactly 0 (not the rounding residue of its mean over a tiny std); with
    ``config.drop_zero_variance_groups`` its weight is 0, else every weight is 1.  The weight matters
    beyond the zero advantages: passed to ``policy_loss`` as ``response_weight`` it also takes the
    group's tokens out of the normaliser, so dropped groups do not dilute the batch.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    centered = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    if config.scale_by_std:
        std = jnp.sqrt(jnp.mean(jnp.square(centered), axis=1, keepdims=True))
        centered = centered / (std + config.std_eps)
    constant = jnp.max(rewards, axis=1) == jnp.min(rewards, axis=1)
    advantages = jnp.where(constant[:, None], 0.0, centered)
    drop = constant if config.drop_zero_variance_groups else jnp.zeros_like(constant)
    return advantages, jnp.where(drop, 0.0, 1.0)


def k3_kl(logp: Array, ref_logp: Array) -> Array:
    """Per-token k3 estimate of KL(policy || ref) for tokens sampled from the policy, float32.

    Schulman's exp(d) - d - 1 with d = ref_logp - logp: unbiased (its mean under the policy is the KL)
    and never negative, unlike log-ratio estimators.  Written as expm1(d) - d, which keeps its small
    values accurate when the policies are close.
    """
    d = jnp.asarray(ref_logp, jnp.float32) - jnp.asarray(logp, jnp.float32)
    return jnp.expm1(d) - d


def aggregate(per_token: Array, token_weight: Array, response_weight: Array, aggregation: str) -> Array:
    """One scalar from per-token values [N, T], ``token_weight`` = mask * response weight [N, T].

    ``"sequence"``: each response's weighted token mean, then their mean weighted by
    ``response_weight`` (GRPO; a response without tokens counts as 0).  ``"token"``: the weighted
    sum over the batch over the sum of token weights (DAPO).  ``"constant"``: the weighted sum over
    (number of responses with weight > 0) * T (Dr.GRPO; pad T to the generation budget to keep it
    constant from step to step).  Weight-0 responses add nothing and count in no normaliser.
    """
    weighted = per_token * token_weight
    if aggregation == "sequence":
        per_response = _safe_div(jnp.sum(weighted, axis=1), jnp.sum(token_weight, axis=1))
        return _safe_div(jnp.sum(per_response * response_weight), jnp.sum(response_weight))
    if aggregation == "token":
        return _safe_div(jnp.sum(weighted), jnp.sum(token_weight))
    if aggregation == "constant":
        responses = jnp.sum((response_weight > 0).astype(jnp.float32))
        return _safe_div(jnp.sum(weighted), responses * per_token.shape[1])
    raise UserError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")


def aggregate_denominator(token_weight: Array, response_weight: Array, aggregation: str) -> Array:
    """What ``aggregate`` divides by: a micro-batch's loss times its denominator over the whole batch's is
    its exact share of the batch's loss (gradient accumulation)."""
    if aggregation == "sequence":
        return jnp.sum(response_weight)
    if aggregation == "token":
        return jnp.sum(token_weight)
    if aggregation == "constant":
        return jnp.sum((response_weight > 0).astype(jnp.float32)) * token_weight.shape[1]
    raise UserError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")


def policy_loss(logp: Array, old_logp: Array, ref_logp: Array | None, advantages: Array, mask: Array,
                config: ObjectiveConfig, response_weight: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """(loss, metrics) of the clipped surrogate (+ k3 KL) over N responses of T tokens; minimise the loss.

    ``logp``, ``old_logp`` (the sampling policy's), ``ref_logp`` (the reference policy's; may be None
    when ``config.kl_coef`` is 0) and ``mask`` are [N, T]; ``advantages`` [N] apply to every token of
    their response; ``response_weight`` [N] (default 1) scales each response's tokens, e.g. the group
    weight of ``group_advantages`` repeated per response.  Per token, with ratio = exp(logp - old_logp):
    -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) + kl_coef * k3_kl(logp, ref_logp),
    reduced by ``aggregate``.  Gradients flow through ``logp`` only; the other inputs are constants.

    Metrics (scalars, means over tokens weighted by mask * response weight, not differentiated):
    ``clip_fraction`` (tokens where the min takes the clipped branch and it differs, so the token has
    no gradient), ``kl`` (mean k3; 0 without ``ref_logp``) and ``ratio_mean``.  An all-masked batch
    gives a loss and metrics of 0 and zero gradients.
    """
    if config.kl_coef > 0 and ref_logp is None:
        raise UserError(f"policy_loss: kl_coef={config.kl_coef} needs ref_logp, got None")
    n = mask.shape[0]
    response_weight = (jnp.ones((n,), jnp.float32) if response_weight is None
                       else jnp.asarray(response_weight, jnp.float32))
    token_weight = jnp.asarray(mask, jnp.float32) * response_weight[:, None]
    valid = token_weight > 0
    logp = jnp.asarray(logp, jnp.float32)
    old_logp, advantages = jax.lax.stop_gradient((old_logp, advantages))

    # Padding may hold any log-probs: zero the log-ratios there first, so exp cannot overflow into
    # inf * 0 = NaN in the loss or its gradient.
    ratio = jnp.exp(jnp.where(valid, logp - jnp.asarray(old_logp, jnp.float32), 0.0))
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high) * adv
    per_token = -jnp.minimum(unclipped, clipped)

    kl = None
    if ref_logp is not None:
        ref_logp = jax.lax.stop_gradient(jnp.asarray(ref_logp, jnp.float32))
        kl = k3_kl(jnp.where(valid, logp, 0.0), jnp.where(valid, ref_logp, 0.0))
    if config.kl_coef > 0:
        per_token = per_token + config.kl_coef * kl

    loss = aggregate(per_token, token_weight, response_weight, config.aggregation)

    def token_mean(x: Array) -> Array:
        return jax.lax.stop_gradient(_safe_div(jnp.sum(x * token_weight), jnp.sum(token_weight)))

    metrics = {
        "clip_fraction": token_mean((clipped < unclipped).astype(jnp.float32)),
        "kl": token_mean(kl) if kl is not None else jnp.zeros((), jnp.float32),
        "ratio_mean": token_mean(ratio),
    }
    return loss, metrics


def sequence_logprobs(logits: Array, targets: Array) -> Array:
    """log softmax(logits)[target] per position: [N, T, V] logits, [N, T] targets -> [N, T] float32."""
    logits = jnp.asarray(logits, jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return target_logit - jax.nn.logsumexp(logits, axis=-1)
