"""A2C: validation and advantage options (learning: tests/test_learning.py)."""

import jax
import numpy as np
import pytest

from purerl.algos import a2c


def test_config_rejects_bad_values_before_compiling():
    with pytest.raises(ValueError, match=r"Config\.advantage: got 'td'; allowed: 'gae', 'n_step'"):
        a2c.Config(advantage="td")
    with pytest.raises(ValueError, match=r"Config\.n_step: got 0"):
        a2c.Config(advantage="n_step", n_step=0)


def test_n_step_variant_runs():
    config = a2c.Config(advantage="n_step", n_step=3, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3)
    _, metrics = jax.jit(a2c.make_train(config))(jax.random.PRNGKey(0), a2c.Hyper())
    for name in ("policy_loss", "value_loss", "entropy", "explained_variance"):
        assert metrics[name].shape == (3,) and np.all(np.isfinite(metrics[name])), name
