"""The GRPO phase of ``semcoder train`` (``rl.tasks`` set): after the supervised warm-up, in ``RUN_DIR/grpo``.

Layout, as supervised training's: ``grpo/checkpoints/STEP`` (parameters, Adam state, meta, manifest),
``grpo/metrics.jsonl`` (one record per step: rewards, pass rates, objective, time split) and
``grpo/tensorboard``.  Resume: a rerun restores the latest GRPO checkpoint, drops the metrics records
after it, and continues with the same tasks and sampling seeds (``semcoder_jax.rl.loop``), so its
records equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from semcoder_jax import locations
from semcoder_jax import sharding as shd
from semcoder_jax.config import ModelConfig
from semcoder_jax.errors import UserError
from semcoder_jax.rl import loop
from semcoder_jax.rl import step as rl_step
from semcoder_jax.rl.objective import ObjectiveConfig
from semcoder_jax.train import checkpoint as ckpt_lib
from semcoder_jax.train.config import TrainRunConfig


@dataclasses.dataclass
class GRPOResult:
    start_step: int
    final_step: int
    history: list[dict[str, Any]]
    params: Any


def grpo_config(config: TrainRunConfig, model: ModelConfig) -> loop.GRPOConfig:
    r = config.rl
    objective = ObjectiveConfig(clip_low=r.clip_low, clip_high=r.clip_high, kl_coef=r.kl_coef,
                                aggregation=r.aggregation, scale_by_std=r.scale_by_std,
                                drop_zero_variance_groups=r.drop_zero_variance_groups)
    return loop.GRPOConfig(prompts_per_step=r.prompts_per_step, group_size=r.group_size,
                           updates_per_batch=r.updates_per_batch, micro_batches=r.micro_batches,
                           max_new_tokens=r.max_new_tokens,
                           temperature=r.temperature, top_p=r.top_p, slots=r.slots,
                           prefix_cache_tokens=r.prefix_cache_tokens, eos_id=model.eos_token_id,
                           bos_id=model.bos_token_id, seed=config.train.seed, objective=objective)


def optimizer(config: TrainRunConfig) -> optax.GradientTransformation:
    r = config.rl
    adam = optax.adam(r.learning_rate, b1=config.optimizer.b1, b2=config.optimizer.b2, eps=config.optimizer.eps)
    return optax.chain(optax.clip_by_global_norm(r.grad_clip), adam) if r.grad_clip is not None else adam


def run_grpo(config: TrainRunConfig, run_dir: str, params, model: ModelConfig, *, tasks: Sequence[loop.Task],
             score: Callable[[Any, Sequence[loop.Task], Sequence[str]], Sequence[loop.Reward]],
             stop_after: int | None = None) -> GRPOResult:
    """Runs (or resumes) the GRPO phase from the warm-up's ``params`` on ``tasks``, rewarded by
    ``score(sandbox, tasks, responses)`` (``eval.rewards``: ``semcoder train`` loads both); ``stop_after``
    ends this call after that many steps, as a preemption would (tests)."""
    from data_pipeline.tokenizer import load_tokenizer
    from sandbox import Sandbox
    from semcoder_jax.train.loop import MetricsLog

    r = config.rl
    tokenizer = load_tokenizer(locations.join(run_dir, "tokenizer"))  # local or gs:// (data_pipeline reads both)
    settings = grpo_config(config, model)
    max_len = None
    if r.max_prompt_tokens is not None:
        bos = 0 if model.bos_token_id is None else 1
        kept = [t for t in tasks if len(tokenizer.encode(t.prompt)) + bos <= r.max_prompt_tokens]
        if len(kept) < len(tasks) and jax.process_index() == 0:
            print(f"semcoder train: rl.max_prompt_tokens={r.max_prompt_tokens} leaves out {len(tasks) - len(kept)} of "
                  f"{len(tasks)} tasks (longer prompts)", file=sys.stderr, flush=True)
        if not kept:
            raise UserError(f"rl.max_prompt_tokens={r.max_prompt_tokens}: every task's prompt is longer")
        tasks, max_len = kept, r.max_prompt_tokens + r.max_new_tokens
    opt = optimizer(config)
    out = locations.join(run_dir, "grpo")
    if not locations.is_remote(out):
        os.makedirs(out, exist_ok=True)
    mesh = shd.build_mesh(config.mesh.as_dict())
    params_s, opt_s = rl_step.state_shardings(model, opt, mesh)
    params = jax.device_put(params, params_s)
    # the warm-up's weights, frozen (a copy: the policy's buffers are donated to its updates)
    reference = jax.tree.map(jnp.copy, params) if r.kl_coef > 0 else None
    opt_state = jax.jit(opt.init, out_shardings=opt_s)(params)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            (params, opt_state), (params_s, opt_s))
    checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoints_dir(out), keep=config.checkpoint.keep,
                                         async_save=False)
    log = MetricsLog(out, enabled=jax.process_index() == 0, tensorboard=config.run.tensorboard)
    start = 0
    try:
        if checkpointer.steps():
            params, opt_state, meta = checkpointer.restore(checkpointer.steps()[-1], *abstract)
            start = int(meta["step"])
            print(f"semcoder train: GRPO resumes after step {start} of {r.steps}", file=sys.stderr, flush=True)
        log.truncate_after(start)
        todo = r.steps - start if stop_after is None else min(stop_after, r.steps - start)
        history: list[dict[str, Any]] = []
        final = start
        process0 = jax.process_index() == 0
        bar = None
        if process0 and config.run.progress and sys.stdout.isatty():
            from tqdm import tqdm

            bar = tqdm(total=r.steps, initial=start, file=sys.stdout, desc="grpo", dynamic_ncols=True)

        def on_step(step: int, metrics: dict[str, float], p, o) -> None:
            nonlocal final
            final = step
            history.append(metrics)
            log.write(metrics)
            if bar is not None:
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.4f}")
                bar.update(1)
            elif process0 and step % r.log_every == 0:
                print(f"grpo step {step}/{r.steps}: reward {metrics['reward_mean']:.3f} (pass "
                      f"{metrics['pass_rate']:.2f}), kl {metrics['kl']:.4f}, rollout {metrics['seconds_rollout']:.1f}s "
                      f"reward {metrics['seconds_reward']:.1f}s update {metrics['seconds_update']:.1f}s", flush=True)
            if step % r.checkpoint_every == 0 or step == start + todo:
                checkpointer.save(step, p, o, {"step": step, "phase": "grpo"})
                checkpointer.wait()
                log.flush()

        if todo > 0:
            with Sandbox(workers=r.sandbox_workers) as sandbox:
                for _ in loop.run(params, model, tokenizer, tasks, functools.partial(score, sandbox), opt, settings,
                                  todo, start_step=start,
                                  opt_state=opt_state, ref_params=reference, max_len=max_len, mesh=mesh,
                                  on_step=on_step):
                    pass
            if bar is not None:
                bar.close()
            params, opt_state, _ = checkpointer.restore(final, *abstract)  # the loop donated its buffers
        return GRPOResult(start, final, history, params)
    finally:
        log.close()
        checkpointer.close()
