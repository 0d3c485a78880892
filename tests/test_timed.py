"""Training in timed segments with greedy evaluation between them (`purerl.rl.timed`).

One tiny DQN batch (4 seeds, 6 updates in segments of 2) is shared by the module: its
training numbers against `sweep.run` of the same train and seeds, its greedy evaluation
returns against a NumPy re-implementation of the greedy Q-policy playing CartPole from the
same start states."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import tol

from purerl import sweep
from purerl.algos import dqn, ppo, sac
from purerl.nets import SquashedGaussianActor
from purerl.rl import evaluation, timed

pytestmark = pytest.mark.xdist_group(__name__)

CONFIG = dqn.Config(num_envs=2, num_steps=16, total_timesteps=2 * 16 * 6, learning_starts=64, buffer_size=256,
                    batch_size=16, q_hidden=(8,))
SEEDS, SEGMENT, EPISODES = 4, 2, 3


@pytest.fixture(scope="module")
def runs():
    # Highest precision: greedy actions of two programs are compared (no TF32 near-ties on GPU).
    with jax.default_matmul_precision("highest"):
        train = dqn.make_train(CONFIG)
        timed_run = timed.run_timed(train, dqn.Hyper(), SEEDS, SEGMENT, config=CONFIG,
                                    greedy=timed.greedy_policy("dqn", CONFIG), episodes=EPISODES)
        plain = sweep.run(train, dqn.Hyper(), seeds=SEEDS)
    return timed_run, plain


def test_segments_cover_the_run_and_are_timed_apart_from_compiling(runs):
    run, _ = runs
    np.testing.assert_array_equal(run.segment_updates, [2, 2, 2])
    np.testing.assert_array_equal(run.eval_updates, [0, 2, 4, 6])
    assert run.eval_returns.shape == (4, SEEDS)
    assert (run.segment_seconds > 0).all() and run.segment_seconds.shape == (3,)
    assert set(run.compile_seconds) == {"init", "segment", "evaluation"}
    assert all(v > 0 for v in run.compile_seconds.values())


def test_training_numbers_equal_one_uninterrupted_sweep(runs):
    run, plain = runs
    for name, values in plain.metrics.items():
        mine = run.metrics[name]
        assert mine.shape == values[0].shape, name
        if np.issubdtype(values.dtype, np.floating):
            np.testing.assert_allclose(mine, values[0], err_msg=name, equal_nan=True, **tol(vmapped=True))
        else:
            np.testing.assert_array_equal(mine, values[0], err_msg=name)


def _numpy_cartpole_greedy_return(obs: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]],
                                  limit: int = 500) -> float:
    """Return of one CartPole-v1 episode (Euler dynamics, ±2.4 m, ±12°) from state `obs` under
    argmax of a ReLU MLP's Q-values: 1 per step, the step that ends the episode included."""
    x, x_dot, theta, theta_dot = (np.float32(v) for v in obs)
    gravity, masspole, total_mass, length, force_mag, tau = 9.8, 0.1, 1.1, 0.5, 10.0, 0.02
    polemass_length = masspole * length
    for step in range(1, limit + 1):
        h = np.asarray([x, x_dot, theta, theta_dot], np.float64)
        for i, (w, b) in enumerate(layers):
            h = h @ w + b
            if i < len(layers) - 1:
                h = np.maximum(h, 0.0)
        force = force_mag if int(np.argmax(h)) == 1 else -force_mag
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        theta_acc = (gravity * sin - cos * temp) / (length * (4.0 / 3.0 - masspole * cos**2 / total_mass))
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        x, x_dot = x + tau * x_dot, x_dot + tau * x_acc
        theta, theta_dot = theta + tau * theta_dot, theta_dot + tau * theta_acc
        if abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360:
            return float(step)
    return float(limit)


def test_greedy_returns_match_a_numpy_greedy_q_policy_on_cartpole(runs):
    run, _ = runs
    params = jax.device_get(run.final_state.agent.params["params"])
    env, env_params = evaluation.evaluation_env(CONFIG, EPISODES)
    reset_key, _ = jax.random.split(evaluation.evaluation_key(int(run.eval_updates[-1])))
    start, _ = env.reset(reset_key, env_params)
    start = np.asarray(start)
    assert CONFIG.normalize_obs is False  # the NumPy policy reads raw observations
    for seed in range(SEEDS):
        mlp = params["MLP_0"]
        layers = [(np.asarray(mlp[name]["kernel"][seed], np.float64), np.asarray(mlp[name]["bias"][seed], np.float64))
                  for name in sorted(mlp)]
        head = params["Dense_0"]
        layers.append((np.asarray(head["kernel"][seed], np.float64), np.asarray(head["bias"][seed], np.float64)))
        expected = np.mean([_numpy_cartpole_greedy_return(o, layers) for o in start])
        np.testing.assert_allclose(run.eval_returns[-1, seed], expected, rtol=1e-6)


def test_greedy_policies_are_deterministic_modes():
    """PPO's greedy action is its categorical's argmax; continuous SAC's is tanh of its mean, in [-1, 1]."""
    cfg = ppo.Config(num_envs=2, num_steps=8, total_timesteps=16, actor_hidden=(4,), critic_hidden=(4,))
    from purerl.rl import on_policy
    from purerl.rl.agent import build_env_and_network

    env, env_params, network = build_env_and_network(cfg)
    state = on_policy.init_state(cfg, env, env_params, network, lambda p: None, jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    logits = network.apply(state.params, obs, method=type(network).policy).logits
    np.testing.assert_array_equal(timed.greedy_policy("ppo", cfg)(state, obs), np.argmax(logits, axis=-1))

    scfg = sac.Config(num_envs=1, num_steps=8, total_timesteps=16, learning_starts=8, buffer_size=64, batch_size=8,
                      actor_hidden=(4,), critic_hidden=(4,))
    actor = SquashedGaussianActor(1, (4,))
    actor_params = actor.init(jax.random.PRNGKey(0), np.zeros((1, 3), np.float32))
    # A first Dense layer large enough that the mean is not near 0, so tanh is visible.
    actor_params = jax.tree.map(lambda x: 50.0 * x, actor_params)
    state = SimpleNamespace(agent=SimpleNamespace(actor_params=actor_params), obs_stats=None)
    pendulum_obs = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
    greedy = np.asarray(timed.greedy_policy("sac", scfg)(state, pendulum_obs))
    mean, _ = actor.apply(actor_params, pendulum_obs)
    np.testing.assert_allclose(greedy, np.tanh(np.asarray(mean)), **tol())
    assert greedy.shape == (5, 1) and (np.abs(greedy) <= 1).all()


@pytest.mark.parametrize(("field", "value"), [("segment_updates", 0), ("episodes", 1.5)])
def test_bad_counts_are_refused_naming_the_field(field, value):
    kwargs = {"segment_updates": 2, "episodes": 2, field: value}
    with pytest.raises(ValueError, match=f"{field}: got {value!r}; allowed: a positive integer"):
        timed.run_timed(lambda k, h: None, dqn.Hyper(), 2, kwargs["segment_updates"], config=CONFIG,
                        greedy=lambda s, o: o, episodes=kwargs["episodes"])
