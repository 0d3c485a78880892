"""REINFORCE: validation (learning with value and group baselines: tests/test_learning.py)."""

import numpy as np
import pytest
from conftest import tol

from purerl import sweep
from purerl.algos import reinforce


def test_config_rejects_bad_values_before_compiling():
    with pytest.raises(ValueError, match=r"Config\.baseline: got 'mean'; allowed: 'none', 'value', 'group'"):
        reinforce.Config(baseline="mean")
    with pytest.raises(ValueError, match=r"Hyper\.gamma: got 1\.5"):
        reinforce.Hyper(gamma=1.5)
    with pytest.raises(ValueError, match=r"Hyper\.gamma: got 1\.5"):
        sweep.grid(reinforce.Hyper(), gamma=[0.9, 1.5])


def test_critic_settings_are_validated_before_compiling():
    with pytest.raises(ValueError, match=r"Config\.critic_epochs: got 0"):
        reinforce.Config(critic_epochs=0)
    with pytest.raises(ValueError, match=r"critic_minibatches"):
        reinforce.Config(num_envs=2, num_steps=5, total_timesteps=10, critic_minibatches=3)
    with pytest.raises(ValueError, match=r"Hyper\.critic_lr: got 0"):
        reinforce.Hyper(critic_lr=0.0)


SMALL = dict(num_envs=4, num_steps=20, total_timesteps=80, actor_hidden=(8,), critic_hidden=(8,))  # one update


@pytest.fixture(scope="module")
def one_update():
    """One REINFORCE update from the same initial parameters and batch (seeds 0 and 1): the
    value baseline with one critic step, and with 8 × 2 critic steps at a larger critic lr."""

    def run(baseline, epochs, minibatches, critic_lr):
        config = reinforce.Config(baseline=baseline, critic_epochs=epochs, critic_minibatches=minibatches, **SMALL)
        return sweep.run(reinforce.make_train(config), reinforce.Hyper(critic_lr=critic_lr), seeds=2,
                         return_state=True)

    return {"one": run("value", 1, 1, 2e-3), "fitted": run("value", 8, 2, 5e-2)}


def test_the_actor_step_does_not_depend_on_how_the_critic_is_fitted(one_update):
    import jax

    one, fitted = (one_update[k].final_state.params["params"] for k in ("one", "fitted"))
    # The weights come from the critic before its fit: the same actor step either way (two
    # programs that differ in the critic's part: the tolerance of differently fused kernels).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol(vmapped=True)), one["actor"], fitted["actor"])
    # The critic itself moved differently.
    difference = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one["critic"], fitted["critic"])
    assert max(jax.tree.leaves(difference)) > 1e-3


def test_fitting_the_critic_lowers_its_loss_on_the_batch(one_update):
    metrics = one_update["fitted"].metrics
    # value_loss: the critic before the fit on this batch's G_t; critic_loss: the last
    # minibatch of the last epoch after 15 Adam steps on that same batch.
    assert np.all(metrics["critic_loss"][..., 0] < 0.8 * metrics["value_loss"][..., 0]), metrics
    assert np.all(metrics["explained_variance"][..., 0] <= 1.0)
