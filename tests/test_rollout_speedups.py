"""The rollout's speed-ups give the numbers of the plain code they replace.

- Presampled env steps (`step_presampled` on `VecEnv.presample`) == gymnax's own `env.step(key)`
  across auto-resets (flags exactly, floats to rounding): CartPole (discrete), Pendulum
  (continuous, truncation) and DeepSea (an env with its own `step`, drawing per step).
- The lean categorical sampler (Gumbel noise from a per-step key, or presampled for a
  rollout) == distrax's `sample_and_log_prob`.
- `collect` (all randomness presampled) == a plain scan drawing from per-step keys.
- `evaluate_values` with `last_obs` == a direct critic call on every next observation,
  including V(final observation) on truncated rows.
- `random_permutation` is a permutation, reproducible, and uniform (chi-square).
- `shuffled_minibatch_epochs` == a plain loop
  that draws each epoch's permutation from its own key and steps through the minibatches.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from scipy import stats

from purerl import envs
from purerl.algos import ppo
from purerl.nets import ActorCritic
from purerl.rl import rollout
from purerl.rl.agent import build_env_and_network, init_params
from purerl.rl.training import random_permutation, shuffled_minibatch_epochs

NUM_ENVS, NUM_STEPS = 6, 40


def assert_same(got, want):
    """Integers and flags exactly; floats to float32 rounding (the presampled reset is
    compiled into a different fusion, where XLA may contract a multiply-add differently)."""
    for have, expected in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        have, expected = np.asarray(have), np.asarray(expected)
        assert have.dtype == expected.dtype and have.shape == expected.shape
        if np.issubdtype(expected.dtype, np.floating):
            np.testing.assert_allclose(have, expected, **tol())
        else:
            np.testing.assert_array_equal(have, expected)


def _random_actions(env, params, key, shape):
    space = env.action_space(params)
    if hasattr(space, "n"):
        return jax.random.randint(key, shape, 0, space.n)
    return jax.random.uniform(key, shape + tuple(space.shape), minval=space.low, maxval=space.high)


def _trajectories(name, env_params_update=None):
    """(gymnax's env.step per key, AutoReset.step on VecEnv.presample) over NUM_STEPS
    steps of NUM_ENVS envs with the same keys and actions."""
    gym_env, params = envs.make_env(name)
    if env_params_update:
        params = params.replace(**env_params_update)
    vec = envs.VecEnv(envs.AutoReset(gym_env), NUM_ENVS)
    key_reset, key_steps, key_actions = jax.random.split(jax.random.PRNGKey(3), 3)
    step_keys = jax.random.split(key_steps, NUM_STEPS)
    actions = _random_actions(gym_env, params, key_actions, (NUM_STEPS, NUM_ENVS))
    _, state0 = vec.reset(key_reset, params)

    def reference(state, inputs):  # gymnax's own step, one key per env
        key, action = inputs
        keys = jax.random.split(key, NUM_ENVS)
        obs, state, reward, terminated, truncated, info = jax.vmap(gym_env.step, (0, 0, 0, None))(
            keys, state, action, params
        )
        return state, (obs, reward, terminated, truncated, info["final_observation"])

    def presampled(state, inputs):
        sample, action = inputs
        obs, state, reward, terminated, truncated, info = vec.step_presampled(sample, state, action, params)
        return state, (obs, reward, terminated, truncated, info["final_observation"])

    run = jax.jit(lambda: (
        jax.lax.scan(reference, state0, (step_keys, actions))[1],
        jax.lax.scan(presampled, state0, (vec.presample(step_keys, params), actions))[1],
    ))
    return run()


@pytest.mark.parametrize(
    "name, params_update",
    [("CartPole-v1", None), ("Pendulum-v1", {"max_steps_in_episode": 15}), ("DeepSea-bsuite", None)],
)
def test_presampled_env_step_equals_gymnax_step(name, params_update):
    expected, got = _trajectories(name, params_update)
    obs, reward, terminated, truncated, final_obs = expected
    ended = np.asarray(terminated | truncated)
    assert ended.any(), "the trajectory must cross an auto-reset to test it"
    if params_update:
        assert np.asarray(truncated).any()
    assert_same(got, expected)


def test_lean_categorical_equals_distrax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (NUM_ENVS, 5)) * 3.0
    dist = distrax.Categorical(logits=logits)
    keys = jax.random.split(jax.random.PRNGKey(1), 64)
    policy = rollout.CategoricalPolicy(lambda obs: dist)
    noise = policy.presample(keys, None)

    @jax.jit
    def draws(keys, noise):
        return (
            jax.vmap(lambda k: dist.sample_and_log_prob(seed=k))(keys),
            jax.vmap(lambda k: rollout.sample_categorical(dist, rollout.gumbel_noise(dist, k)))(keys),
            jax.vmap(lambda n: policy(None, n))(noise),
        )

    (want_action, want_log_prob), (lean_action, lean_log_prob), (pre_action, pre_log_prob) = draws(keys, noise)
    assert len(np.unique(np.asarray(want_action))) == 5  # the draws cover every action
    for action, log_prob in [(lean_action, lean_log_prob), (pre_action, pre_log_prob)]:
        np.testing.assert_array_equal(np.asarray(action), np.asarray(want_action))
        np.testing.assert_allclose(np.asarray(log_prob), np.asarray(want_log_prob), **tol())
    # Non-categorical policies keep distrax's own draw from the step's key; Gumbel noise
    # for them is an error.
    config = ppo.Config(env="Pendulum-v1", num_envs=NUM_ENVS, num_steps=NUM_STEPS)
    env, env_params, network = build_env_and_network(config)
    params = init_params(network, env, env_params, jax.random.PRNGKey(0))
    gaussian = rollout.make_policy_sampler(network, params)
    assert isinstance(gaussian, rollout.KeyedPolicy) and gaussian.presample(keys, None) is keys
    normal = distrax.Normal(jnp.zeros(3), jnp.ones(3))
    with pytest.raises(ValueError, match="GumbelNoise"):
        rollout.sample_categorical(normal, noise)


def _per_step_collect(env, env_params, policy_fn, runner, key, num_steps):
    """collect()'s reference: a plain scan where step t draws from its keys (policy, env) =
    split(split(key, num_steps)[t]) with gymnax's `env.step(key)` and `policy_fn(obs, key)`."""

    def step(carry, step_key):
        runner, totals = carry
        policy_key, env_key = jax.random.split(step_key)
        action, log_prob = policy_fn(runner.obs, policy_key)
        obs, env_state, reward, terminated, truncated, info = env.step(env_key, runner.env_state, action, env_params)
        done = info["episode_done"]
        totals = rollout.EpisodeTotals(
            totals.return_sum + jnp.sum(jnp.where(done, info["episode_return"], 0.0)),
            totals.length_sum + jnp.sum(jnp.where(done, info["episode_length"], 0)).astype(jnp.float32),
            totals.count + jnp.sum(done, dtype=jnp.int32),
        )
        transition = rollout.Transition(
            runner.obs, action, log_prob, reward.astype(jnp.float32), terminated, truncated, info["final_observation"]
        )
        return (rollout.EnvRunner(env_state, obs), totals), transition

    (runner, totals), batch = jax.lax.scan(
        step, (runner, rollout.EpisodeTotals.zeros()), jax.random.split(key, num_steps)
    )
    return runner, batch, totals


@pytest.mark.parametrize("name, policy_type", [("CartPole-v1", "CategoricalPolicy"), ("Pendulum-v1", "KeyedPolicy")])
def test_collect_presampled_equals_per_step_keys(name, policy_type):
    """collect() on the make_vec_env stack with the PPO policy sampler (env randomness and
    Gumbel noise presampled; Pendulum: through ClipAction, the Gaussian drawing from its
    step keys) == the same env and distrax's policy drawing from per-step keys."""
    config = ppo.Config(env=name, num_envs=NUM_ENVS, num_steps=NUM_STEPS)
    env, env_params, network = build_env_and_network(config)
    params = init_params(network, env, env_params, jax.random.PRNGKey(0))
    sampler = rollout.make_policy_sampler(network, params)
    assert type(sampler).__name__ == policy_type
    runner = rollout.init_runner(env, env_params, jax.random.PRNGKey(1))

    def distrax_policy(obs, key):  # no observation statistics: the network sees raw observations
        return network.apply(params, obs, method=ActorCritic.policy).sample_and_log_prob(seed=key)

    def both(key):
        presampled = rollout.collect(env, env_params, sampler, runner, key, NUM_STEPS)
        per_step = _per_step_collect(env, env_params, distrax_policy, runner, key, NUM_STEPS)
        return presampled, per_step

    presampled, per_step = jax.jit(both)(jax.random.PRNGKey(2))
    if name == "CartPole-v1":  # Pendulum's episodes outlast the rollout; its auto-reset is tested above
        assert np.asarray(per_step[1].terminated).any()
    assert_same(presampled, per_step)


@pytest.mark.parametrize("ended_fraction", [0.05, 1.0])  # one chunk of ended rows; all rows
def test_evaluate_values_with_last_obs_matches_direct_critic(highest_precision, ended_fraction):
    config = ppo.Config()
    env, env_params, network = build_env_and_network(config)
    params = init_params(network, env, env_params, jax.random.PRNGKey(0))
    value_fn = jax.jit(rollout.make_value_fn(network, params))
    num_steps, num_envs = 32, 4
    k_obs, k_final, k_ended, k_kind = jax.random.split(jax.random.PRNGKey(1), 4)
    states = jax.random.normal(k_obs, (num_steps + 1, num_envs, 4))  # s_0 .. s_T
    final_obs = jax.random.normal(k_final, (num_steps, num_envs, 4))
    ended = jax.random.uniform(k_ended, (num_steps, num_envs)) < ended_fraction
    truncated = ended & (jax.random.uniform(k_kind, (num_steps, num_envs)) < 0.5)
    terminated = ended & ~truncated
    next_obs = jnp.where(ended[..., None], final_obs, states[1:])
    zeros = jnp.zeros((num_steps, num_envs))
    batch = rollout.Transition(states[:-1], zeros.astype(jnp.int32), zeros, zeros, terminated, truncated, next_obs)
    evaluate = jax.jit(lambda batch, last_obs: rollout.evaluate_values(value_fn, batch, last_obs))
    values, next_values = evaluate(batch, states[-1])
    assert np.asarray(truncated).any() and np.asarray(terminated).any()
    np.testing.assert_allclose(values, value_fn(states[:-1]), **tol())
    np.testing.assert_allclose(next_values, value_fn(next_obs), **tol())
    # V(final obs) where truncated differs from V(s_{t+1}) there: the fix-up matters.
    truncated_rows = np.asarray(truncated)
    assert not np.allclose(np.asarray(next_values)[truncated_rows], np.asarray(value_fn(states[1:]))[truncated_rows])
    # Without last_obs: the plain all-rows path, same numbers.
    _, plain_next = evaluate(batch, None)
    np.testing.assert_allclose(plain_next, next_values, **tol())


def test_random_permutation_is_a_uniform_permutation():
    n, draws = 6, 6000
    keys = jax.random.split(jax.random.PRNGKey(0), draws)
    perms = np.asarray(jax.jit(jax.vmap(random_permutation, (0, None)), static_argnums=1)(keys, n))
    np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(n), (draws, 1)))
    alone = np.asarray(random_permutation(keys[7], n))
    np.testing.assert_array_equal(alone, perms[7])
    # Position of each element: uniform over the n positions.
    counts = np.stack([np.bincount(np.argmax(perms == value, axis=1), minlength=n) for value in range(n)])
    assert stats.chisquare(counts.ravel(), np.full(n * n, draws / n)).pvalue > 1e-4
    # Large n: a permutation too (and the fallback beyond 2^16).
    for size in (512, 70_000):
        big = np.asarray(random_permutation(jax.random.PRNGKey(1), size))
        np.testing.assert_array_equal(np.sort(big), np.arange(size))


def test_shuffled_minibatch_epochs_equals_a_plain_epoch_loop():
    num_epochs, num_minibatches, batch_size = 3, 4, 24
    batch = {
        "x": jnp.arange(batch_size * 2, dtype=jnp.float32).reshape(batch_size, 2),
        "i": jnp.arange(batch_size),
    }

    def step(carry, minibatch):
        # Order-sensitive carry: any change in the minibatch order or content shows.
        carry = 0.5 * carry + jnp.sum(minibatch["x"]) + jnp.sum(minibatch["i"] * jnp.arange(6))
        return carry, {"first": minibatch["i"][0].astype(jnp.float32)}

    run = jax.jit(lambda key: shuffled_minibatch_epochs(key, jnp.float32(0), batch, num_epochs, num_minibatches, step))
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    carry, metrics = run(keys[0])

    # Reference: a host loop over epochs, each shuffled with its own key.
    x, i = np.asarray(batch["x"], np.float64), np.asarray(batch["i"])
    want_carry, want_first = 0.0, []
    for epoch_key in jax.random.split(keys[0], num_epochs):
        order = np.asarray(random_permutation(epoch_key, batch_size)).reshape(num_minibatches, -1)
        want_first.append(np.mean(i[order[:, 0]]))
        for rows in order:
            want_carry = 0.5 * want_carry + x[rows].sum() + (i[rows] * np.arange(6)).sum()
    np.testing.assert_allclose(float(carry), want_carry, **tol())
    np.testing.assert_allclose(np.asarray(metrics["first"]), want_first, **tol())

    # Run i of a vmapped batch equals the same run alone.
    batched_carry, batched_metrics = jax.jit(jax.vmap(run))(keys)
    np.testing.assert_allclose(np.asarray(batched_carry)[0], np.asarray(carry), **tol(vmapped=True))
    np.testing.assert_array_equal(np.asarray(batched_metrics["first"])[0], np.asarray(metrics["first"]))
