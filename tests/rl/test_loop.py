"""The GRPO loop on a tiny random model: every metric is reported, a run is a function of its seed, and a
run resumed from a step's parameters and optimizer state continues exactly as the straight run."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from eval.rewards import make_task, score
from semcoder_jax.config import get_preset
from semcoder_jax.model import init_params
from semcoder_jax.rl import loop


class Chars:
    """Token id = the character's code (ASCII prompts), 2 = EOS."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i > 2)


TASKS = [make_task("forward", f"t{i}", f"def f(x):\n    return x + {i}", "3", str(3 + i)) for i in range(3)]
TASKS += [make_task("backward", "b0", "def f(x):\n    return x * 2", "", "8")]


@pytest.fixture(scope="module")
def setup():
    from sandbox import Sandbox

    config = get_preset("tiny", dtype="float32", param_dtype="float32", num_layers=1, vocab_size=128)
    params = init_params(config, jax.random.key(0))
    with Sandbox(workers=2) as sandbox:
        yield config, params, sandbox


def _run(setup, steps, start_step=0, params=None, opt_state=None, keep=None):
    config, init, sandbox = setup
    grpo = loop.GRPOConfig(prompts_per_step=2, group_size=2, max_new_tokens=6, slots=4, seed=3,
                           updates_per_batch=2)
    params = jax.tree.map(jnp.array, init if params is None else params)

    def on_step(step, metrics, p, o):
        if keep is not None:
            keep[step] = (jax.tree.map(jnp.array, p), jax.tree.map(jnp.array, o))

    return list(loop.run(params, config, Chars(), TASKS, functools.partial(score, sandbox), optax.adam(1e-3), grpo, steps,
                         start_step=start_step, opt_state=opt_state, on_step=on_step))


def _numbers(metrics):
    return [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in metrics]


def test_each_step_reports_rewards_objective_and_time_split(setup):
    (metrics,) = _run(setup, 1)
    assert {"step", "loss", "reward_mean", "reward_std", "pass_rate", "kl", "clip_fraction", "ratio_mean",
            "grad_norm", "response_tokens", "zero_variance_groups", "seconds_rollout", "seconds_reward",
            "seconds_update"} <= set(metrics)
    assert metrics["step"] == 1 and 0 < metrics["response_tokens"] <= 6
    assert all(metrics[f"seconds_{part}"] > 0 for part in ("rollout", "reward", "update"))
    assert any(key.startswith("pass_rate/") for key in metrics)


def test_a_resumed_run_continues_exactly_as_the_straight_run(setup):
    keep = {}
    straight = _run(setup, 3, keep=keep)
    params, opt_state = keep[1]
    resumed = _run(setup, 2, start_step=1, params=params, opt_state=opt_state)
    assert _numbers(resumed) == _numbers(straight[1:])
    assert [m["step"] for m in straight] == [1, 2, 3]


def test_steps_take_tasks_in_seeded_epochs():
    grpo = loop.GRPOConfig(prompts_per_step=3, seed=1)
    taken = [t.id for step in range(4) for t in loop.step_tasks(TASKS, step, grpo)]
    assert sorted(taken[:4]) == sorted(t.id for t in TASKS)  # the first epoch covers every task once
    assert taken == [t.id for step in range(4) for t in loop.step_tasks(TASKS, step, grpo)]
    assert taken != [t.id for step in range(4) for t in loop.step_tasks(TASKS, step, loop.GRPOConfig(prompts_per_step=3, seed=2))]
