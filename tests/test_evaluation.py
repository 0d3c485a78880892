"""Periodic greedy evaluation during training (`eval_every`, metric `eval_return`).

One tiny PPO batch (2 settings × 2 seeds, 4 updates, evaluation after every 2nd) is shared
by the module; it is compared with `evaluation.evaluate` of its final parameters as a job's
saved policies (purerl.policies.SavedPolicies) and with the same batch trained without
evaluation."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import tol

from purerl import policies, results, sweep
from purerl.algos import a2c, ppo
from purerl.rl import evaluation

# The tests share module fixtures (one training run): one worker builds them once.
pytestmark = pytest.mark.xdist_group(__name__)

CONFIG = ppo.Config(
    num_envs=2, num_steps=16, total_timesteps=2 * 16 * 4, update_epochs=1, num_minibatches=1,
    normalize_obs=True, eval_every=2, eval_episodes=3,
)
GRID = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3])


@pytest.fixture(scope="module")
def trained():
    # Highest precision: the greedy actions of two programs are compared (no TF32 near-ties on GPU).
    with jax.default_matmul_precision("highest"):
        with_eval = sweep.run(ppo.make_train(CONFIG), GRID, seeds=2, return_state=True)
        without = sweep.run(ppo.make_train(dataclasses.replace(CONFIG, eval_every=0)), GRID, seeds=2)
    return with_eval, without


def test_eval_return_at_every_eval_every_th_update_and_nan_elsewhere(trained):
    values = trained[0].metrics["eval_return"]
    assert values.shape == (2, 2, CONFIG.num_updates) == (2, 2, 4)
    assert np.isnan(values[..., [0, 2]]).all()
    assert np.isfinite(values[..., [1, 3]]).all()
    assert (values[..., [1, 3]] >= 1).all()  # CartPole pays 1 per step before the pole falls
    summary = results.summarize(trained[0], experiment="e", algo="ppo", config=CONFIG, base_hyper=ppo.Hyper())
    assert not summary.diverged.any()  # NaN between evaluations is by design, not divergence


def test_eval_return_equals_saved_policies_evaluate_of_the_same_params_and_keys(trained):
    result = trained[0]
    state = result.final_state
    saved = policies.SavedPolicies(
        job_dir=None, algo="ppo", config=CONFIG, settings=list(result.settings), seeds=list(result.seeds),
        params=state.params, obs_stats=state.obs_stats, fingerprint=None,
    )
    last = CONFIG.num_updates - 1
    with jax.default_matmul_precision("highest"):
        returns, finished = evaluation.evaluate(saved, CONFIG.eval_episodes, evaluation.evaluation_key(last))[
            "deterministic"
        ]
    assert finished.all()
    np.testing.assert_allclose(result.metrics["eval_return"][..., last], returns.mean(axis=-1), **tol())


def test_evaluation_off_leaves_training_unchanged(trained):
    with_eval, without = trained
    assert "eval_return" not in without.metrics
    assert set(with_eval.metrics) == set(without.metrics) | {"eval_return"}
    for name, values in without.metrics.items():
        if np.issubdtype(values.dtype, np.floating):
            np.testing.assert_allclose(with_eval.metrics[name], values, err_msg=name, **tol(vmapped=True))
        else:
            np.testing.assert_array_equal(with_eval.metrics[name], values, err_msg=name)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("eval_every", -1, "a non-negative integer"), ("eval_every", 1.5, "a non-negative integer"),
     ("eval_episodes", 0, "a positive integer")],
)
def test_bad_evaluation_settings_name_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^Config\.{field}: got {value!r}; allowed: {allowed}"):
        a2c.Config(**{field: value})
