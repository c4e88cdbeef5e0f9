"""The GRPO loop as a library: rollouts on the engine, rewards in the sandbox, updates with the objective.

Every random choice of a step is a function of (seed, step): which tasks it takes, and each sample's
sampling seed.  A run that restarts from a step's parameters and optimizer state therefore repeats the
same prompts, samples and results (the trainer's exact resume rests on this).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from semcoder_jax.config import ModelConfig
from semcoder_jax.engine import Engine, Request
from semcoder_jax.rl import step as rl_step
from semcoder_jax.rl.objective import ObjectiveConfig


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class Task(Protocol):
    """A verifiable question (``eval.rewards.Task``): its ``id``, ``kind`` and ``prompt``."""

    id: str
    kind: str
    prompt: str


class Reward(Protocol):
    value: float
    correct: bool
    status: str


Scorer = Callable[[Sequence[Task], Sequence[str]], Sequence[Reward]]
"""Rewards for (task, response) pairs, e.g. ``functools.partial(eval.rewards.score, sandbox)``."""


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """``prompts_per_step`` tasks, ``group_size`` samples each, ``updates_per_batch`` optimizer steps on
    each rollout batch (gradients accumulated over ``micro_batches`` slices of it); sampling at ``temperature``/``top_p`` up to ``max_new_tokens``; ``slots`` of the
    engine (``prefix_cache_tokens`` its prefix pool, None: the engine's default); ``bos_id`` prepended to
    each prompt (None: none); ``eos_id`` ends a response."""

    prompts_per_step: int = 4
    group_size: int = 4
    updates_per_batch: int = 1
    micro_batches: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    slots: int = 16
    prefix_cache_tokens: int | None = None
    eos_id: int = 2
    bos_id: int | None = 1
    seed: int = 0
    objective: ObjectiveConfig = ObjectiveConfig()

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "group_size", "updates_per_batch", "micro_batches", "max_new_tokens", "slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"rl.{name} must be at least 1, got {getattr(self, name)}")


def _seed(*parts: Any) -> int:
    """A 31-bit seed from its parts, stable across processes and Python versions."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") >> 1


def step_tasks(tasks: Sequence[Task], step: int, config: GRPOConfig) -> list[Task]:
    """The step's tasks: epochs over a permutation seeded by (seed, epoch), taken in order."""
    n, k = len(tasks), config.prompts_per_step
    picked = []
    for i in range(step * k, (step + 1) * k):
        epoch, at = divmod(i, n)
        order = np.random.default_rng(_seed(config.seed, "epoch", epoch)).permutation(n)
        picked.append(tasks[int(order[at])])
    return picked


def _rollout_and_score(engine: Engine, requests: list[Request], tasks: dict, score: Scorer,
                       chunk: int) -> tuple[dict, dict, dict[str, float]]:
    """Decodes ``requests`` and scores each response as it finishes, ``chunk`` at a time on a background
    thread (the sandbox works while the engine decodes).  Returns (results, rewards, seconds), the first two
    keyed by request id; seconds: ``rollout`` (decoding), ``reward`` (waiting for the last rewards after
    decoding ended: the part not hidden behind it) and ``scoring`` (all scoring calls, overlapped or not)."""
    results: dict = {}
    rewards: dict = {}
    futures = []
    scoring = [0.0]

    def timed(done: list) -> Sequence[Reward]:
        start = time.perf_counter()
        try:
            return score([tasks[r.id] for r in done], [r.text or "" for r in done])
        finally:
            scoring[0] += time.perf_counter() - start

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward") as pool:
        def submit(done: list) -> None:
            futures.append((done, pool.submit(timed, done)))

        pending: list = []
        for result in engine.generate(requests):
            results[result.id] = result
            pending.append(result)
            if len(pending) >= chunk:
                submit(pending)
                pending = []
        if pending:
            submit(pending)
        t1 = time.perf_counter()
        for done, future in futures:
            for r, reward in zip(done, future.result()):
                rewards[r.id] = reward
    return results, rewards, {"rollout": t1 - t0, "reward": time.perf_counter() - t1, "scoring": scoring[0]}


def _agree_across_processes(values: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Process 0's rewards on every process: each host scores the same responses, but a time limit can fire
    on one and not on another, and the update needs one set of advantages."""
    if jax.process_count() == 1:
        return values, correct
    from jax.experimental import multihost_utils

    both = multihost_utils.broadcast_one_to_all(np.stack([values, correct.astype(np.float32)]))
    return np.asarray(both[0], np.float32), np.asarray(both[1]) > 0.5


def run(params, model_config: ModelConfig, tokenizer: Tokenizer, tasks: Sequence[Task], score: Scorer,
        optimizer: optax.GradientTransformation, config: GRPOConfig, steps: int, *, start_step: int = 0,
        opt_state=None, ref_params=None, max_len: int | None = None, mesh: Mesh | None = None,
        on_step: Callable[[int, dict[str, float], Any, Any], None] | None = None) -> Iterator[dict[str, float]]:
    """Runs ``steps`` GRPO steps from ``start_step``, rewarding responses with ``score``; yields each step's
    metrics (and calls ``on_step(step, metrics, params, opt_state)``, e.g. to checkpoint).  ``ref_params``: the
    frozen reference, needed when the objective's KL coefficient is non-zero.  ``mesh``: roll out and update
    on a device mesh (the training mesh: parameters and Adam moments split by the rules table, rollout rows
    over data x fsdp), as ``semcoder_jax.rl.step.compile_sharded_update`` lays out."""
    if config.objective.kl_coef > 0 and ref_params is None:
        raise ValueError("rl.objective.kl_coef > 0 needs the reference parameters")
    encoded = {t.id: ([config.bos_id] if config.bos_id is not None else []) + tokenizer.encode(t.prompt)
               for t in tasks}
    longest = max(len(ids) for ids in encoded.values()) + config.max_new_tokens
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    if mesh is not None:
        sharded = rl_step.compile_sharded_update(model_config, config.objective, optimizer, mesh,
                                                 micro_batches=config.micro_batches)
        params, opt_state = sharded.place_params(params), sharded.place_opt_state(opt_state)
        ref_params = None if ref_params is None else sharded.place_params(ref_params)
        update = sharded.update
        logprobs, place = sharded.logprobs, sharded.place_batch
    else:
        update = functools.partial(rl_step.update, model_config, config.objective, optimizer,
                                   micro_batches=config.micro_batches)
        logprobs = functools.partial(rl_step.logprobs, model_config)

        def place(batch: rl_step.RolloutBatch):
            return (jnp.asarray(batch.tokens), jnp.asarray(batch.mask), jnp.asarray(batch.advantages),
                    jnp.asarray(batch.response_weight))

    engine = Engine(params, model_config, slots=config.slots, max_len=max_len or longest, eos_id=config.eos_id,
                    decode=tokenizer.decode, mesh=mesh, prefix_cache_tokens=config.prefix_cache_tokens)
    for step in range(start_step, start_step + steps):
        t0 = time.perf_counter()
        picked = step_tasks(tasks, step, config)
        engine.params = params
        requests = [Request(encoded[t.id], config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                            seed=_seed(config.seed, "sample", step, g, s), stop=("[/ANSWER]",), id=(g, s))
                    for g, t in enumerate(picked) for s in range(config.group_size)]
        by_id = {(g, s): t for g, t in enumerate(picked) for s in range(config.group_size)}
        results, scored, seconds = _rollout_and_score(
            engine, requests, by_id, score, chunk=config.group_size)
        t2 = time.perf_counter()
        keys = [(g, s) for g in range(len(picked)) for s in range(config.group_size)]
        flat = [(by_id[k], results[k]) for k in keys]
        rewards = [scored[k] for k in keys]
        values, correct = _agree_across_processes(
            np.array([r.value for r in rewards], np.float32).reshape(len(picked), config.group_size),
            np.array([r.correct for r in rewards]))
        # A response is its tokens up to the stop string or EOS (the EOS included: the policy chose to end).
        responses = [[results[(g, s)].token_ids or [config.eos_id] for s in range(config.group_size)]
                     for g in range(len(picked))]
        batch = rl_step.build_batch([encoded[t.id] for t in picked], responses, values, config.objective)
        tokens, mask, advantages, weight = place(batch)
        ref = logprobs(ref_params, tokens, mask) if config.objective.kl_coef > 0 else None
        old = None
        for _ in range(config.updates_per_batch):
            params, opt_state, loss, metrics, old = update(params, opt_state, tokens, mask, advantages, weight,
                                                           old, ref)
        loss = float(loss)
        t3 = time.perf_counter()
        out = {"step": step + 1, "loss": loss, **{k: float(v) for k, v in metrics.items()},
               "reward_mean": float(values.mean()), "reward_std": float(values.std()),
               "pass_rate": float(np.mean(correct)),
               "response_tokens": float(np.mean([len(r.token_ids) for _, r in flat])),
               "zero_variance_groups": int(np.sum(values.max(axis=1) == values.min(axis=1))),
               "seconds_rollout": seconds["rollout"], "seconds_reward": seconds["reward"],
               "seconds_scoring": seconds["scoring"], "seconds_update": t3 - t2, "seconds_step": t3 - t0}
        out["sample"] = {"task": flat[0][0].id, "response": (flat[0][1].text or "")[:300], "reward": float(values[0, 0]),
                         "status": rewards[0].status}
        for kind in sorted({t.kind for t in picked}):
            mine = [c for (t, _), c in zip(flat, correct) if t.kind == kind]
            out[f"pass_rate/{kind}"] = float(np.mean(mine))
        if on_step is not None:
            on_step(step + 1, out, params, opt_state)
        yield out
