"""PPO learns: fixed seeds, thresholds measured on our 2-core CPU (see README)."""

import numpy as np
import pytest

import purerl  # noqa: F401
from purerl import sweep
from purerl.algos import ppo


@pytest.mark.slow
def test_ppo_solves_cartpole_with_default_settings():
    # PureJaxRL's CartPole settings (the defaults), 5e5 steps, 4 seeds in one compiled call.
    result = sweep.run(ppo.make_train(ppo.Config()), ppo.Hyper(), seeds=[0, 1, 2, 3])
    final = result.final("episode_return", last=10)[0]
    assert np.all(final >= 475), f"mean return over the last 10 updates per seed: {final}"


# Pendulum: a random policy scores about -1200 to -1300; measured finals with these
# settings were about -200 (see README). The threshold leaves a wide margin while still
# demanding a policy that swings up and balances most of the time.
PENDULUM_CONFIG = dict(
    env="Pendulum-v1", num_envs=16, num_steps=256, total_timesteps=409_600,
    update_epochs=10, num_minibatches=32,
)
PENDULUM_HYPER = dict(lr=1e-3, gamma=0.9, gae_lambda=0.95, ent_coef=0.0)


@pytest.mark.slow
def test_continuous_ppo_learns_pendulum():
    result = sweep.run(
        ppo.make_train(ppo.Config(**PENDULUM_CONFIG)), ppo.Hyper(**PENDULUM_HYPER), seeds=[0, 1]
    )
    returns = result.metrics["episode_return"][0]
    first, final = np.nanmean(returns[:, :5], axis=1), result.final("episode_return", last=10)[0]
    assert np.all(first < -900), f"first updates should look random: {first}"
    assert np.all(final > -400), f"final returns per seed: {final}"
