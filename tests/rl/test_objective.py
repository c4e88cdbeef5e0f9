"""The GRPO-family objective computes, per variant, the numbers worked out by hand here."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semcoder_jax.rl.objective import (
    ObjectiveConfig,
    group_advantages,
    k3_kl,
    policy_loss,
    sequence_logprobs,
)

MODES = ("sequence", "token", "constant")

# Three responses of up to 4 tokens: 3, 2 and 4 of them real.
RAGGED_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)


def numpy_aggregate(per_token, mask, weight, mode):
    """The aggregation rules spelled out response by response, token by token."""
    n, t = mask.shape
    if mode == "sequence":
        means = [sum(per_token[i, j] for j in range(t) if mask[i, j]) / mask[i].sum() for i in range(n)]
        return sum(w * m for w, m in zip(weight, means)) / sum(weight)
    total = sum(weight[i] * per_token[i, j] for i in range(n) for j in range(t) if mask[i, j])
    if mode == "token":
        return total / sum(weight[i] * mask[i].sum() for i in range(n))
    return total / (sum(1 for w in weight if w > 0) * t)


# --- group advantages -----------------------------------------------------------------------------

# Group 0: mean 1/3, deviations (2/3, -1/3, -1/3), population std sqrt(2)/3.  Group 1: all equal (0.1 has
# a float32 mean that is not exactly 0.1, so "exactly zero" is not an accident of rounding).
REWARDS = np.array([[1.0, 0.0, 0.0], [0.1, 0.1, 0.1]], np.float32)


def test_grpo_advantages_are_deviations_over_the_population_std():
    adv, weight = group_advantages(REWARDS, ObjectiveConfig(scale_by_std=True))
    s2 = math.sqrt(2.0)
    np.testing.assert_allclose(adv[0], [s2, -s2 / 2, -s2 / 2], rtol=1e-5)
    np.testing.assert_array_equal(adv[1], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(weight, [1.0, 1.0])
    assert adv.dtype == jnp.float32


def test_dr_grpo_advantages_are_plain_deviations_from_the_group_mean():
    adv, _ = group_advantages(REWARDS, ObjectiveConfig(scale_by_std=False))
    np.testing.assert_allclose(adv[0], [2 / 3, -1 / 3, -1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(adv[1], [0.0, 0.0, 0.0])


def test_dropping_zero_variance_groups_gives_them_weight_zero():
    adv, weight = group_advantages(REWARDS, ObjectiveConfig(drop_zero_variance_groups=True))
    np.testing.assert_array_equal(weight, [1.0, 0.0])
    np.testing.assert_array_equal(adv[1], [0.0, 0.0, 0.0])


# --- k3 KL ----------------------------------------------------------------------------------------

def test_k3_is_zero_when_the_policies_agree():
    logp = jnp.array([-0.1, -2.0, -7.5])
    np.testing.assert_array_equal(k3_kl(logp, logp), [0.0, 0.0, 0.0])


def test_k3_hand_value():
    # ref/policy probability ratio 2: exp(log 2) - log 2 - 1 = 1 - log 2.
    value = k3_kl(jnp.log(jnp.float32(0.1)), jnp.log(jnp.float32(0.2)))
    assert float(value) == pytest.approx(1.0 - math.log(2.0), rel=1e-5)


def test_k3_is_non_negative():
    k1, k2 = jax.random.split(jax.random.key(0))
    logp, ref = 3.0 * jax.random.normal(k1, (1000,)), 3.0 * jax.random.normal(k2, (1000,))
    assert bool(jnp.all(k3_kl(logp, ref) >= 0.0))


def test_k3_averaged_under_the_policy_is_the_exact_kl():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    q = np.array([0.25, 0.25, 0.25, 0.25])
    expected = float(np.sum(p * np.log(p / q)))
    estimate = float(jnp.sum(p * k3_kl(jnp.log(p), jnp.log(q))))
    assert estimate == pytest.approx(expected, rel=1e-5)


# --- policy loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, expected", [
    ("sequence", -(1.0 - 0.5 + 2.0) / 3),               # mean over responses of -A
    ("token", -(1.0 * 3 - 0.5 * 2 + 2.0 * 4) / 9),      # 9 real tokens
    ("constant", -(1.0 * 3 - 0.5 * 2 + 2.0 * 4) / 12),  # 3 responses * 4 positions
])
def test_first_update_of_a_fresh_batch_is_minus_the_aggregated_advantage(mode, expected):
    logp = jnp.array(np.random.default_rng(0).uniform(-3.0, -0.1, (3, 4)), jnp.float32)
    adv = jnp.array([1.0, -0.5, 2.0])
    loss, metrics = policy_loss(logp, logp, logp, adv, RAGGED_MASK, ObjectiveConfig(aggregation=mode, kl_coef=0.1))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["ratio_mean"]) == 1.0
    assert float(metrics["kl"]) == 0.0
    assert float(metrics["clip_fraction"]) == 0.0


# Response 0 (A = +1) and response 1 (A = -1) with hand-built ratios exp(logp - old_logp).
CLIP_RATIOS = np.array([[1.25, 1.35, 0.75], [0.85, 0.75, 1.35]], np.float32)
CLIP_ADV = np.array([1.0, -1.0], np.float32)


def clip_case(clip_low, clip_high):
    logp = jnp.array([[-1.0, -0.5, -2.0], [-0.7, -1.2, -0.3]])
    old_logp = logp - jnp.log(jnp.asarray(CLIP_RATIOS))
    config = ObjectiveConfig(clip_low=clip_low, clip_high=clip_high, aggregation="token")

    def loss(lp):
        return policy_loss(lp, old_logp, None, jnp.asarray(CLIP_ADV), jnp.ones((2, 3)), config)

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(logp)
    return float(value), metrics, np.asarray(grad)


def test_ratios_beyond_the_clip_range_on_the_side_the_min_takes_have_no_gradient():
    value, metrics, grad = clip_case(clip_low=0.2, clip_high=0.28)
    # Clipped: 1.35 with A > 0 (to 1.28) and 0.75 with A < 0 (to 0.8).  Not clipped: 0.75 with A > 0 and
    # 1.35 with A < 0 (the min keeps the more pessimistic unclipped term), 1.25 and 0.85 (inside).
    surrogate = np.array([[1.25, 1.28, 0.75], [-0.85, -0.8, -1.35]])
    assert value == pytest.approx(-surrogate.sum() / 6, rel=1e-5)
    # d(-ratio * A / 6) / d(logp) = -ratio * A / 6 for unclipped tokens, 0 for clipped ones.
    expected_grad = np.array([[-1.25, 0.0, -0.75], [0.85, 0.0, 1.35]]) / 6
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 6)


def test_clip_higher_leaves_room_that_a_symmetric_clip_does_not():
    _, metrics, grad = clip_case(clip_low=0.2, clip_high=0.2)
    assert grad[0, 0] == 0.0  # 1.25 > 1.2 with A > 0: clipped now
    assert float(metrics["clip_fraction"]) == pytest.approx(3 / 6)
    _, _, grad_higher = clip_case(clip_low=0.2, clip_high=0.28)
    assert grad_higher[0, 0] != 0.0


def ragged_batch():
    """Non-uniform per-token losses: ratios in [0.7, 1.3] around both clip edges, mixed-sign advantages."""
    rng = np.random.default_rng(1)
    logp = rng.uniform(-3.0, -0.1, (3, 4)).astype(np.float32)
    old_logp = (logp - np.log(rng.uniform(0.7, 1.3, (3, 4)))).astype(np.float32)
    ref_logp = (logp + rng.normal(0.0, 0.5, (3, 4))).astype(np.float32)
    return logp, old_logp, ref_logp, np.array([0.8, -1.3, 0.4], np.float32)


def numpy_per_token(logp, old_logp, adv, clip_low=0.2, clip_high=0.2):
    ratio = np.exp(logp.astype(np.float64) - old_logp)
    a = adv[:, None]
    return -np.minimum(ratio * a, np.clip(ratio, 1 - clip_low, 1 + clip_high) * a)


@pytest.mark.parametrize("mode", MODES)
def test_each_aggregation_matches_its_hand_computation_on_a_ragged_mask(mode):
    logp, old_logp, _, adv = ragged_batch()
    per_token = numpy_per_token(logp, old_logp, adv)
    assert len(np.unique(np.round(per_token[RAGGED_MASK > 0], 6))) == int(RAGGED_MASK.sum())
    expected = numpy_aggregate(per_token, RAGGED_MASK, [1.0, 1.0, 1.0], mode)
    loss, _ = policy_loss(logp, old_logp, None, adv, RAGGED_MASK, ObjectiveConfig(aggregation=mode))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_a_weight_zero_response_counts_as_if_it_were_not_in_the_batch(mode):
    logp, old_logp, _, adv = ragged_batch()
    config = ObjectiveConfig(aggregation=mode)
    weighted, metrics = policy_loss(logp, old_logp, None, adv, RAGGED_MASK, config,
                                    response_weight=jnp.array([1.0, 0.0, 1.0]))
    keep = [0, 2]
    without, metrics_without = policy_loss(logp[keep], old_logp[keep], None, adv[keep], RAGGED_MASK[keep], config)
    expected = numpy_aggregate(numpy_per_token(logp, old_logp, adv), RAGGED_MASK, [1.0, 0.0, 1.0], mode)
    assert float(weighted) == pytest.approx(expected, rel=1e-5)
    assert float(weighted) == pytest.approx(float(without), rel=1e-6)
    for name in metrics:
        assert float(metrics[name]) == pytest.approx(float(metrics_without[name]), rel=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_the_kl_penalty_adds_kl_coef_times_the_aggregated_k3(mode):
    logp, old_logp, ref_logp, adv = ragged_batch()
    plain, _ = policy_loss(logp, old_logp, None, adv, RAGGED_MASK, ObjectiveConfig(aggregation=mode))
    penalised, metrics = policy_loss(logp, old_logp, ref_logp, adv, RAGGED_MASK,
                                     ObjectiveConfig(aggregation=mode, kl_coef=0.05))
    d = ref_logp.astype(np.float64) - logp
    k3 = np.exp(d) - d - 1
    assert float(penalised) - float(plain) == pytest.approx(0.05 * numpy_aggregate(k3, RAGGED_MASK, [1.0] * 3, mode),
                                                           rel=1e-4)
    assert float(metrics["kl"]) == pytest.approx(numpy_aggregate(k3, RAGGED_MASK, [1.0] * 3, "token"), rel=1e-5)


def test_a_kl_penalty_without_reference_log_probs_is_an_error():
    logp = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="kl_coef"):
        policy_loss(logp, logp, None, jnp.ones((1,)), jnp.ones((1, 2)), ObjectiveConfig(kl_coef=0.1))


@pytest.mark.parametrize("mode", MODES)
def test_a_fully_masked_batch_gives_zero_loss_and_finite_gradients(mode):
    logp = jnp.full((2, 3), -1.0)
    old_logp = jnp.full((2, 3), -1e4)  # padding garbage: exp(logp - old_logp) would overflow
    config = ObjectiveConfig(aggregation=mode, kl_coef=0.1)
    mask = jnp.zeros((2, 3))

    def loss(lp):
        return policy_loss(lp, old_logp, old_logp, jnp.array([1.0, -1.0]), mask, config)

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(logp)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros((2, 3)))
    assert all(float(v) == 0.0 for v in metrics.values())


def test_the_loss_is_jit_able_with_the_config_static():
    logp, old_logp, ref_logp, adv = ragged_batch()
    config = ObjectiveConfig(aggregation="token", kl_coef=0.05, clip_high=0.28)
    eager, _ = policy_loss(logp, old_logp, ref_logp, adv, RAGGED_MASK, config)
    jitted = jax.jit(functools.partial(policy_loss, config=config))
    value, _ = jitted(logp, old_logp, ref_logp, adv, RAGGED_MASK)
    assert float(value) == pytest.approx(float(eager), rel=1e-6)


# --- config ---------------------------------------------------------------------------------------

def test_config_rejects_an_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregation.*'mean'"):
        ObjectiveConfig(aggregation="mean")


@pytest.mark.parametrize("field", ["clip_low", "clip_high", "kl_coef"])
def test_config_rejects_a_negative_clip_or_coefficient(field):
    with pytest.raises(ValueError, match=f"{field}.*-0.1"):
        ObjectiveConfig(**{field: -0.1})


# --- log-probs ------------------------------------------------------------------------------------

def test_sequence_logprobs_is_log_softmax_at_the_targets():
    k1, k2 = jax.random.split(jax.random.key(2))
    logits = 4.0 * jax.random.normal(k1, (2, 3, 7))
    targets = jax.random.randint(k2, (2, 3), 0, 7)
    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)), np.asarray(targets)[..., None],
                                  axis=-1)[..., 0]
    np.testing.assert_allclose(sequence_logprobs(logits, targets), expected, rtol=1e-6, atol=1e-6)


def test_sequence_logprobs_of_bfloat16_logits_are_float32():
    logits = (4.0 * jax.random.normal(jax.random.key(3), (2, 3, 7))).astype(jnp.bfloat16)
    targets = jnp.array([[0, 6, 3], [1, 1, 5]])
    out = sequence_logprobs(logits, targets)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, sequence_logprobs(logits.astype(jnp.float32), targets), rtol=1e-6, atol=1e-6)
