"""REINFORCE: validation and CartPole learning with a value baseline and a group baseline."""

import numpy as np
import pytest

from purerl import sweep
from purerl.algos import reinforce


def test_config_rejects_bad_values_before_compiling():
    with pytest.raises(ValueError, match=r"Config\.baseline: got 'mean'; allowed: 'none', 'value', 'group'"):
        reinforce.Config(baseline="mean")
    with pytest.raises(ValueError, match=r"Hyper\.gamma: got 1\.5"):
        sweep.run(reinforce.make_train(reinforce.Config(total_timesteps=8000)), reinforce.Hyper(gamma=1.5))


@pytest.mark.parametrize("baseline", ["value", "group"])
def test_reinforce_learns_cartpole(baseline):
    # 16 complete episodes (horizon 500) per update, one Adam step each; 60 updates.
    config = reinforce.Config(baseline=baseline, total_timesteps=60 * 16 * 500)
    result = sweep.run(reinforce.make_train(config), reinforce.Hyper(), seeds=2)
    returns = result.metrics["episode_return"][0]
    finals = result.final("episode_return", last=5)[0]
    # Measured on seeds 0-1: see docs/algorithms.md (random policy: ~22).
    assert np.all(finals >= 400), finals
    assert np.all(returns[:, :5].mean(axis=1) < 60)  # it started from scratch
