"""gymnax wrappers: names, episode statistics across auto-reset, actions (observation
normalisation is the agent's: tests/test_skeleton.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl import envs


def test_unknown_env_lists_valid_names():
    with pytest.raises(ValueError, match="unknown gymnax environment 'CartPole-v9'.*CartPole-v1.*Pendulum-v1"):
        envs.make_env("CartPole-v9")


# MNISTBandit-bsuite downloads MNIST when constructed, which needs network access.
OFFLINE_ENVS = [n for n in envs.ENV_NAMES if n != "MNISTBandit-bsuite"]


@pytest.mark.parametrize("name", OFFLINE_ENVS)
def test_every_registered_env_builds_with_vector_observations(name):
    env, params = envs.make_vec_env(name, num_envs=2)
    assert len(env.observation_space(params).shape) == 1
    assert envs.action_dim(env, params) >= 1


# One representative per family; stepping compiles, so not all 25.
@pytest.mark.parametrize(
    "name", ["CartPole-v1", "Pendulum-v1", "Breakout-MinAtar", "Catch-bsuite", "FrozenLake-misc"]
)
def test_env_families_reset_and_step(name):
    env, params = envs.make_vec_env(name, num_envs=2)
    key = jax.random.PRNGKey(0)
    obs, state = env.reset(key, params)
    assert obs.shape == (2,) + env.observation_space(params).shape
    action = jax.vmap(env.action_space(params).sample)(jax.random.split(key, 2))
    obs2, _, reward, terminated, truncated, info = env.step(key, state, action, params)
    assert obs2.shape == obs.shape and info["final_observation"].shape == obs.shape
    assert reward.shape == terminated.shape == truncated.shape == (2,)


def test_episode_statistics_survive_auto_reset():
    # CartPole with a 7-step limit and a fixed action: every episode is truncated at 7
    # unless the pole falls first; totals reported at the end step must equal the
    # number of steps since the previous end.
    env, params = envs.make_vec_env("CartPole-v1", num_envs=3)
    params = params.replace(max_steps_in_episode=7)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    step = jax.jit(env.step)
    since_end = np.zeros(3)
    ended = 0
    for t in range(40):
        obs, state, reward, term, trunc, info = step(jax.random.PRNGKey(t), state, jnp.zeros(3, jnp.int32), params)
        since_end += 1
        done = np.asarray(info["episode_done"])
        np.testing.assert_array_equal(done, np.asarray(term) | np.asarray(trunc))
        for i in np.flatnonzero(done):
            assert info["episode_length"][i] == since_end[i]
            assert info["episode_return"][i] == since_end[i]  # reward 1 per step
            assert since_end[i] <= 7
            ended += 1
        since_end[done] = 0
    assert ended >= 15


def test_final_observation_differs_from_reset_observation_on_done():
    env, params = envs.make_vec_env("CartPole-v1", num_envs=1)
    params = params.replace(max_steps_in_episode=3)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    for t in range(3):
        prev = obs
        obs, state, _, term, trunc, info = env.step(jax.random.PRNGKey(t), state, jnp.ones(1, jnp.int32), params)
    assert bool(trunc[0])
    # After auto-reset the returned obs is a fresh start; the final obs continues from prev
    # by CartPole's Euler step x' = x + τ·ẋ (τ = 0.02), the same for the pole angle.
    final, prev = np.asarray(info["final_observation"])[0], np.asarray(prev)[0]
    assert not np.allclose(final, np.asarray(obs)[0])
    assert final[0] == pytest.approx(prev[0] + 0.02 * prev[1], abs=1e-6)
    assert final[2] == pytest.approx(prev[2] + 0.02 * prev[3], abs=1e-6)


def test_minatar_observations_are_flattened():
    env, params = envs.make_vec_env("Breakout-MinAtar", num_envs=2)
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (2, 400)
    assert env.observation_space(params).shape == (400,)


def test_continuous_actions_clipped_and_rescaled():
    class Recorder:
        """Minimal env that returns the action it received as the reward."""
        default_params = None
        def action_space(self, params):
            from gymnax.environments import spaces
            return spaces.Box(low=-2.0, high=2.0, shape=(1,))
        def step(self, key, state, action, params=None):
            return action, state, action[0], False, False, {"final_observation": action}

    clipped = envs.ClipAction(Recorder()).step(None, None, jnp.array([5.0]))[2]
    rescaled = envs.RescaleAction(Recorder()).step(None, None, jnp.array([0.5]))[2]
    assert float(clipped) == 2.0
    assert float(rescaled) == pytest.approx(1.0)  # 0.5 in [-1, 1] -> 1.0 in [-2, 2]
