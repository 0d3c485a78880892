"""A2C: validation, advantage options, CartPole learning."""

import jax
import numpy as np
import pytest

from purerl import sweep
from purerl.algos import a2c


def test_config_rejects_bad_values_before_compiling():
    with pytest.raises(ValueError, match=r"Config\.advantage: got 'td'; allowed: 'gae', 'n_step'"):
        a2c.Config(advantage="td")
    with pytest.raises(ValueError, match=r"Config\.n_step: got 0"):
        a2c.Config(advantage="n_step", n_step=0)
    with pytest.raises(ValueError, match=r"Hyper\.lr: got -1"):
        sweep.run(a2c.make_train(a2c.Config(total_timesteps=128)), a2c.Hyper(lr=-1.0))


def test_n_step_variant_runs():
    config = a2c.Config(advantage="n_step", n_step=3, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3)
    _, metrics = jax.jit(a2c.make_train(config))(jax.random.PRNGKey(0), a2c.Hyper())
    for name in ("policy_loss", "value_loss", "entropy", "explained_variance"):
        assert metrics[name].shape == (3,) and np.all(np.isfinite(metrics[name])), name


def test_a2c_learns_cartpole():
    # Defaults: 16 envs × 8 steps, one Adam step per rollout, lr 1e-3 annealed, 3e5 steps.
    result = sweep.run(a2c.make_train(a2c.Config()), a2c.Hyper(), seeds=4)
    # Few episodes finish per 128-step update near 500, so average the last 100 updates.
    finals = result.final("episode_return", last=100)[0]
    # Measured on seeds 0-3: see docs/algorithms.md (random policy: ~22).
    assert np.mean(finals) >= 350, finals
    assert np.min(finals) >= 200, finals
