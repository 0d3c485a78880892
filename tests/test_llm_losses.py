"""Losses of RL for LMs against independent references: exact categorical KL, NumPy GAE over
tokens, NumPy group advantages, closed-form DPO and GSPO; masked-out tokens change nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl.llm import losses
from purerl.llm.grpo import group_advantages
from purerl.llm.ppo import Batch, Config, Hyper, policy_token_loss, token_advantages, token_rewards
from purerl.llm.rollout import Sequences

rng = np.random.default_rng(0)


def categorical(logits):
    p = np.exp(logits - logits.max())
    return p / p.sum()


# ----------------------------------------------------------------------------- KL estimators
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_for_the_exact_categorical_kl(estimator, highest_precision):
    p = categorical(rng.normal(size=7) * 1.5)
    q = categorical(rng.normal(size=7) * 1.5)
    exact = float(np.sum(p * np.log(p / q)))
    per_outcome = np.asarray(losses.kl_estimate(jnp.log(p), jnp.log(q), estimator), np.float64)
    # The expectation under π, summed over all outcomes, is the KL itself ...
    np.testing.assert_allclose(np.sum(p * per_outcome), exact, **tol())
    # ... and so is the Monte Carlo mean over samples y ~ π (within 5 standard errors).
    samples = rng.choice(7, size=200_000, p=p)
    values = per_outcome[samples]
    assert abs(values.mean() - exact) < 5 * values.std() / np.sqrt(values.size)


def test_k3_is_non_negative_and_k1_is_not():
    log_p = jnp.log(jnp.asarray([0.7, 0.2, 0.1]))
    log_q = jnp.log(jnp.asarray([0.2, 0.3, 0.5]))
    assert np.all(np.asarray(losses.kl_estimate(log_p, log_q, "k3")) >= 0)
    assert np.any(np.asarray(losses.kl_estimate(log_p, log_q, "k1")) < 0)
    np.testing.assert_allclose(losses.kl_estimate(log_p, log_q, "k2"), 0.5 * (log_q - log_p) ** 2, rtol=1e-6)


# ----------------------------------------------------------------------------- masking
def toy_sequences(batch=4, steps=9, seed=0):
    """Completion targets start at prompt_length − 1 and last completion_length positions."""
    r = np.random.default_rng(seed)
    prompt_lengths = r.integers(2, 5, size=batch)
    completion_lengths = r.integers(1, steps - prompt_lengths + 2)
    positions = np.arange(steps)[None]
    mask = (positions >= prompt_lengths[:, None] - 1) & (positions < (prompt_lengths + completion_lengths - 1)[:, None])
    sequences = Sequences(tokens=jnp.zeros((batch, steps + 1), jnp.int32), target_mask=jnp.asarray(mask, jnp.float32))
    return sequences, mask


def scramble_outside(x, mask, seed):
    """Replace entries outside the mask by junk, including inf and NaN."""
    junk = np.random.default_rng(seed).normal(size=x.shape) * 100
    junk.flat[::5] = np.inf
    junk.flat[1::7] = np.nan
    return jnp.where(mask, x, junk)


def test_ppo_token_loss_ignores_prompt_and_padding_tokens():
    sequences, mask = toy_sequences()
    shape = mask.shape
    batch = Batch(
        tokens=sequences.tokens, mask=sequences.target_mask,
        old_log_prob=jnp.asarray(-rng.uniform(0.1, 3, shape), jnp.float32),
        ref_log_prob=jnp.asarray(-rng.uniform(0.1, 3, shape), jnp.float32),
        value=jnp.zeros(shape), advantage=jnp.asarray(rng.normal(size=shape), jnp.float32),
        target=jnp.zeros(shape),
    )
    log_prob = jnp.asarray(-rng.uniform(0.1, 3, shape), jnp.float32)
    entropy = jnp.asarray(rng.uniform(0, 2, shape), jnp.float32)
    hyper = Hyper(clip_eps=0.2, kl_coef=0.1, ent_coef=0.01)
    config = Config(kl_mode="loss")

    def loss(log_prob, entropy, batch):
        return policy_token_loss(log_prob, entropy, batch, config, hyper)[0]

    value, grad = jax.value_and_grad(loss)(log_prob, entropy, batch)
    scrambled = batch.replace(
        old_log_prob=scramble_outside(batch.old_log_prob, mask, 1),
        ref_log_prob=scramble_outside(batch.ref_log_prob, mask, 2),
        advantage=scramble_outside(batch.advantage, mask, 3))
    value2, grad2 = jax.value_and_grad(loss)(scramble_outside(log_prob, mask, 4),
                                            scramble_outside(entropy, mask, 5), scrambled)
    np.testing.assert_array_equal(value, value2)
    np.testing.assert_array_equal(np.where(mask, grad, 0), np.where(mask, grad2, 0))
    assert np.all(np.asarray(grad2)[~mask] == 0)

    # And the value is the NumPy token mean of the clipped objective plus β·k3 minus the entropy bonus.
    lp, old, ref, a = (np.asarray(x, np.float64)[mask] for x in
                       (log_prob, batch.old_log_prob, batch.ref_log_prob, batch.advantage))
    ratio = np.exp(lp - old)
    surrogate = -np.mean(np.minimum(ratio * a, np.clip(ratio, 0.8, 1.2) * a))
    k3 = np.exp(ref - lp) - 1 - (ref - lp)
    expected = surrogate + 0.1 * k3.mean() - 0.01 * np.asarray(entropy, np.float64)[mask].mean()
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)


def test_sequence_aggregation_weights_each_completion_equally():
    _, mask = toy_sequences(seed=3)
    weights = np.asarray(losses.token_weights(jnp.asarray(mask, jnp.float32), "sequence"))
    per_sequence = weights.sum(axis=1)
    np.testing.assert_allclose(per_sequence, 1 / mask.shape[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.token_weights(jnp.asarray(mask, jnp.float32), "token"))[mask],
                               1 / mask.sum(), rtol=1e-6)


def numpy_token_gae(score, kl, beta, values, mask, gamma, lam):
    """Per completion, backwards over its own tokens only (NumPy, float64)."""
    advantages = np.zeros(mask.shape)
    for b in range(mask.shape[0]):
        idx = np.flatnonzero(mask[b])
        rewards = -beta * kl[b, idx]
        rewards[-1] += score[b]
        v = values[b, idx]
        running = 0.0
        for i in reversed(range(len(idx))):
            next_value = v[i + 1] if i + 1 < len(idx) else 0.0
            delta = rewards[i] + gamma * next_value - v[i]
            running = delta + gamma * lam * running
            advantages[b, idx[i]] = running
    return advantages


def test_token_gae_matches_numpy_and_ignores_prompt_and_padding(highest_precision):
    sequences, mask = toy_sequences(batch=5, steps=10, seed=7)
    shape = mask.shape
    score = rng.uniform(size=5)
    kl = rng.normal(size=shape) * 0.1
    values = rng.normal(size=shape)

    def run(kl, values):
        rewards = token_rewards(jnp.asarray(score, jnp.float32), sequences, jnp.asarray(kl, jnp.float32), 0.3)
        return token_advantages(rewards, jnp.asarray(values, jnp.float32), sequences.target_mask, 0.9, 0.8)

    advantages, targets = run(kl, values)
    expected = numpy_token_gae(score, kl, 0.3, values, mask, 0.9, 0.8)
    np.testing.assert_allclose(advantages, expected, **tol())
    np.testing.assert_allclose(np.asarray(targets)[mask], (expected + values)[mask], **tol())
    junk = np.random.default_rng(1).normal(size=shape) * 50
    advantages2, _ = run(np.where(mask, kl, junk), np.where(mask, values, -junk))
    np.testing.assert_array_equal(advantages, advantages2)


def test_masked_value_loss_ignores_unmasked_entries():
    _, mask = toy_sequences(seed=5)
    v, t, old = (jnp.asarray(rng.normal(size=mask.shape), jnp.float32) for _ in range(3))
    loss = losses.masked_value_loss(v, t, old, 0.2, jnp.asarray(mask, jnp.float32))
    loss2 = losses.masked_value_loss(scramble_outside(v, mask, 1), scramble_outside(t, mask, 2),
                                     scramble_outside(old, mask, 3), 0.2, jnp.asarray(mask, jnp.float32))
    np.testing.assert_array_equal(loss, loss2)
    vm, tm, om = (np.asarray(x, np.float64)[mask] for x in (v, t, old))
    clipped = om + np.clip(vm - om, -0.2, 0.2)
    expected = 0.5 * np.mean(np.maximum((vm - tm) ** 2, (clipped - tm) ** 2))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- GRPO
@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(scale, highest_precision):
    rewards = rng.integers(0, 2, size=24).astype(np.float64)
    rewards[:6] = 1.0  # one group with zero spread
    grouped = rewards.reshape(4, 6)
    expected = grouped - grouped.mean(axis=1, keepdims=True)
    if scale:
        expected = expected / (grouped.std(axis=1, keepdims=True) + 1e-8)
    got = group_advantages(jnp.asarray(rewards, jnp.float32), 6, scale)
    np.testing.assert_allclose(got, expected.reshape(-1), **tol())
    np.testing.assert_array_equal(np.asarray(got)[:6], 0.0)


@pytest.mark.parametrize("scale", [True, False])
def test_leave_one_out_advantages_match_a_numpy_loop(scale, highest_precision):
    """RLOO: each completion's baseline is the mean of the OTHER G − 1 rewards of its group; the
    group-mean advantage is (G − 1)/G of it."""
    group = 5
    rewards = rng.normal(size=4 * group)
    expected = np.empty_like(rewards)
    for i in range(rewards.size):
        start = i - i % group
        others = [rewards[j] for j in range(start, start + group) if j != i]
        expected[i] = rewards[i] - sum(others) / len(others)
        if scale:
            expected[i] /= np.std(rewards[start:start + group]) + 1e-8
    got = group_advantages(jnp.asarray(rewards, jnp.float32), group, scale, "leave_one_out")
    np.testing.assert_allclose(got, expected, **tol())
    mean_baseline = group_advantages(jnp.asarray(rewards, jnp.float32), group, scale, "mean")
    np.testing.assert_allclose(mean_baseline, expected * (group - 1) / group, **tol())
    with pytest.raises(ValueError, match=r"baseline: got 'median'"):
        group_advantages(jnp.asarray(rewards, jnp.float32), group, scale, "median")


def test_gspo_sequence_ratio_is_the_length_normalised_ratio(highest_precision):
    _, mask = toy_sequences(seed=11)
    lp, old = (jnp.asarray(-rng.uniform(0.1, 2, mask.shape), jnp.float32) for _ in range(2))
    adv = jnp.asarray(rng.normal(size=mask.shape[0]), jnp.float32)
    loss, _ = losses.clipped_sequence_loss(lp, scramble_outside(old, mask, 1), adv, jnp.asarray(mask, jnp.float32), 0.1)
    ratios = np.asarray([np.exp(np.mean((np.asarray(lp, np.float64) - np.asarray(old, np.float64))[b][mask[b]]))
                         for b in range(mask.shape[0])])
    a = np.asarray(adv, np.float64)
    expected = -np.mean(np.minimum(ratios * a, np.clip(ratios, 0.9, 1.1) * a))
    np.testing.assert_allclose(loss, expected, **tol())


# ----------------------------------------------------------------------------- DPO and Bradley-Terry
def test_dpo_loss_equals_its_closed_form(highest_precision):
    chosen, rejected, ref_chosen, ref_rejected = (rng.normal(size=16) - 5 for _ in range(4))
    beta = 0.3
    loss, stats = losses.dpo_loss(*(jnp.asarray(x, jnp.float32) for x in (chosen, rejected, ref_chosen, ref_rejected)),
                                  beta)
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-margin))), **tol())
    np.testing.assert_allclose(stats["reward_accuracy"], np.mean(margin > 0), **tol())
    # At π = π_ref every pair is a coin flip: log 2.
    c, r = jnp.asarray(chosen), jnp.asarray(rejected)
    same, _ = losses.dpo_loss(c, r, c, r, beta)
    np.testing.assert_allclose(same, np.log(2.0), rtol=1e-6)


def test_bradley_terry_recovers_a_known_preference_ordering():
    """Pairs labelled by P(i ≻ j) = σ(u_i − u_j); fitting one score per item by the BT loss
    recovers the order of the hidden utilities u."""
    utilities = np.array([0.0, 1.5, -1.0, 0.7, 2.5, -2.0])
    r = np.random.default_rng(1)
    first, second = r.integers(0, 6, size=(2, 4000))
    first_wins = r.random(4000) < 1 / (1 + np.exp(-(utilities[first] - utilities[second])))
    chosen = np.where(first_wins, first, second)
    rejected = np.where(first_wins, second, first)

    def loss(scores):
        return losses.bradley_terry_loss(scores[chosen], scores[rejected])[0]

    scores = jnp.zeros(6)
    step = jax.jit(lambda s: s - 2.0 * jax.grad(loss)(s))
    for _ in range(300):
        scores = step(scores)
    np.testing.assert_array_equal(np.argsort(scores), np.argsort(utilities))
    # The differences are the utilities' (BT is identified up to a constant), within sampling noise.
    fitted = np.asarray(scores) - np.asarray(scores).mean()
    np.testing.assert_allclose(fitted, utilities - utilities.mean(), atol=0.2)
    assert float(losses.bradley_terry_loss(scores[chosen], scores[rejected])[1]["pair_accuracy"]) > 0.6


def test_pairs_with_zero_weight_do_not_count():
    """Dropped ties: the weighted losses equal the losses over the remaining pairs."""
    values = [jnp.asarray(rng.normal(size=10) - 5, jnp.float32) for _ in range(4)]
    weights = jnp.asarray([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], jnp.float32)
    keep = np.asarray(weights) > 0
    weighted, _ = losses.dpo_loss(*values, 0.5, weights)
    subset, _ = losses.dpo_loss(*(v[keep] for v in values), 0.5)
    np.testing.assert_allclose(weighted, subset, rtol=1e-6)
    weighted, _ = losses.bradley_terry_loss(values[0], values[1], weights)
    subset, _ = losses.bradley_terry_loss(values[0][keep], values[1][keep])
    np.testing.assert_allclose(weighted, subset, rtol=1e-6)
