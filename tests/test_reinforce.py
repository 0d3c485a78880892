"""REINFORCE: validation (learning with value and group baselines: tests/test_learning.py)."""

import pytest

from purerl import sweep
from purerl.algos import reinforce


def test_config_rejects_bad_values_before_compiling():
    with pytest.raises(ValueError, match=r"Config\.baseline: got 'mean'; allowed: 'none', 'value', 'group'"):
        reinforce.Config(baseline="mean")
    with pytest.raises(ValueError, match=r"Hyper\.gamma: got 1\.5"):
        reinforce.Hyper(gamma=1.5)
    with pytest.raises(ValueError, match=r"Hyper\.gamma: got 1\.5"):
        sweep.grid(reinforce.Hyper(), gamma=[0.9, 1.5])
