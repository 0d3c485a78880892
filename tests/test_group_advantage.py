"""Group-relative (critic-free) advantages: the estimator, grouped resets, use from PPO."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol

from purerl import sweep
from purerl.algos import ppo, reinforce
from purerl.rl import group
from purerl.rl.agent import build_env_and_network
from purerl.rl.rollout import first_episode_mask


def test_group_advantages_match_formula_and_are_zero_mean_per_group():
    returns = jnp.array([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 10.0])
    advantages = np.asarray(group.group_relative_advantages(returns, group_size=4))
    first = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(advantages[:4], (first - first.mean()) / (first.std() + 1e-8), rtol=1e-5)
    # A group with identical returns has no signal: zero advantages, not NaN.
    np.testing.assert_array_equal(advantages[4:], np.zeros(4))
    np.testing.assert_allclose(advantages.reshape(2, 4).mean(axis=1), 0.0, atol=1e-6)


def test_first_episode_mask_and_step_advantages():
    # 2 envs (one group of 2), 5 steps: env 0's first episode ends at t=1, env 1's at t=3.
    terminated = jnp.array([[0, 0], [1, 0], [0, 0], [0, 1], [1, 0]], bool)
    truncated = jnp.zeros_like(terminated)
    mask = first_episode_mask(terminated, truncated)
    np.testing.assert_array_equal(mask, [[1, 1], [1, 1], [0, 1], [0, 1], [0, 0]])
    rewards = jnp.ones((5, 2))
    steps = np.asarray(group.group_step_advantages(rewards, mask, group_size=2))
    # Returns 2 and 4 -> advantages −1 and +1 on every step of each first episode.
    np.testing.assert_allclose(steps, np.asarray(mask) * np.array([-1.0, 1.0]), rtol=1e-6)


def test_group_advantages_under_vmap_equal_per_batch():
    returns = jax.random.normal(jax.random.PRNGKey(0), (5, 12)) * 30.0 + 100.0
    batched = jax.vmap(lambda r: group.group_relative_advantages(r, 3))(returns)
    for b in range(5):
        np.testing.assert_allclose(batched[b], group.group_relative_advantages(returns[b], 3), **tol(vmapped=True))
        np.testing.assert_allclose(np.asarray(batched[b]).reshape(4, 3).mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.asarray(batched[b]).reshape(4, 3).std(axis=1), 1.0, rtol=1e-4)


def test_grouped_env_shares_start_state_within_groups_only():
    config = reinforce.Config(num_envs=6, baseline="group", group_size=3)
    vec_env, env_params, _ = build_env_and_network(config)
    env = group.make_grouped_env(vec_env, 3)
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(1), 2), env_params)
    for o in np.asarray(obs):  # [6, 4] per vmapped key
        np.testing.assert_array_equal(o[0], o[1])
        np.testing.assert_array_equal(o[0], o[2])
        np.testing.assert_array_equal(o[3], o[5])
        assert not np.allclose(o[0], o[3])


def test_group_settings_are_validated():
    with pytest.raises(ValueError, match=r"Config\.group_size: 3 does not divide num_envs = 4"):
        ppo.Config(advantage="group", group_size=3)
    with pytest.raises(ValueError, match=r"Config\.group_size: got 1"):
        reinforce.Config(baseline="group", group_size=1)
    with pytest.raises(ValueError, match=r"Config\.advantage: got 'vtrace'; allowed: 'gae', 'group'"):
        ppo.Config(advantage="vtrace")


def test_ppo_group_advantage_selectable_and_vmaps_over_seeds():
    config = ppo.Config(advantage="group", num_envs=8, group_size=4, num_steps=64, total_timesteps=3 * 512)
    result = sweep.run(ppo.make_train(config), ppo.Hyper(), seeds=[0, 1])
    for name in ("episode_return", "policy_loss", "entropy"):
        assert np.all(np.isfinite(result.metrics[name])), name
    assert not np.allclose(result.metrics["policy_loss"][0, 0], result.metrics["policy_loss"][0, 1])
    # Every env's first episode is counted each update (the critic: test_skeleton.py).
    np.testing.assert_array_equal(result.metrics["episodes"], 8)
