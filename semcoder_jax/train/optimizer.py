"""The optimizer: optax AdamW behind global-norm clipping, with HF Trainer's learning-rate schedules.

HF semantics reproduced (``transformers.get_cosine_with_min_lr_schedule_with_warmup``): the update
with index ``s`` (0-based) uses ``peak * s / warmup`` while ``s < warmup``, then
``min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))``.  optax's
schedules take the same 0-based update count, so ``warmup_cosine_decay_schedule`` is that formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from semcoder_jax.train.config import OptimizerSection

_NO_DECAY_NAMES = ("norm", "embedding")


def learning_rate_schedule(opt: OptimizerSection, total_steps: int) -> optax.Schedule:
    """The per-update learning rate for a run of ``total_steps`` updates."""
    peak = opt.learning_rate
    warmup = min(opt.warmup_steps, total_steps)
    if opt.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(peak)
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
                                    [warmup])
    if opt.schedule == "cosine_with_min_lr":
        end = opt.min_lr if opt.min_lr is not None else 0.1 * peak
    else:
        end = opt.min_lr if opt.min_lr is not None else 0.0
    if total_steps <= warmup:
        return optax.linear_schedule(0.0, peak, max(warmup, 1))
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=warmup,
                                              decay_steps=total_steps, end_value=end)


def weight_decay_mask(params) -> dict:
    """True where weight decay applies: everything but norm scales and the embedding table."""

    def decays(path, _leaf) -> bool:
        names = [str(getattr(k, "key", k)) for k in path]
        return not any(any(tag in name for tag in _NO_DECAY_NAMES) for name in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(opt: OptimizerSection, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule), decay masked unless ``decay_norms_and_embeddings``."""
    schedule = learning_rate_schedule(opt, total_steps)
    mask = None if opt.decay_norms_and_embeddings else weight_decay_mask
    parts = []
    if opt.grad_clip is not None and opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                             mask=mask, mu_dtype=jnp.dtype(opt.mu_dtype) if opt.mu_dtype else None))
    return optax.chain(*parts)
