"""Evaluation during training: the periodic greedy one (`eval_every`, metric `eval_return`)
and the update evaluation (`update_eval_every`: the policy before and after an update on the
same episodes, metrics `eval_before`, `eval_after`, `eval_before_repeat`).

One tiny PPO batch (2 settings × 2 seeds, 4 updates, both evaluations on every 2nd) is shared
by the module; it is compared with `evaluation.evaluate` of its final parameters as a job's
saved policies (purerl.policies.SavedPolicies) and with the same batch trained without
evaluation. The update evaluation is checked against a plain Python loop over env steps."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from flax import struct

from purerl import policies, results, sweep
from purerl.algos import a2c, ppo
from purerl.rl import evaluation
from purerl.rl.agent import build_env_and_network, init_obs_stats, init_params

# The tests share module fixtures (one training run): one worker builds them once.
pytestmark = pytest.mark.xdist_group(__name__)

CONFIG = ppo.Config(
    num_envs=2, num_steps=16, total_timesteps=2 * 16 * 4, update_epochs=1, num_minibatches=1,
    normalize_obs=True, eval_every=2, eval_episodes=3, update_eval_every=2,
)
GRID = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3])


@pytest.fixture(scope="module")
def trained():
    # Highest precision: the greedy actions of two programs are compared (no TF32 near-ties on GPU).
    with jax.default_matmul_precision("highest"):
        with_eval = sweep.run(ppo.make_train(CONFIG), GRID, seeds=2, return_state=True)
        without = sweep.run(ppo.make_train(dataclasses.replace(CONFIG, eval_every=0, update_eval_every=0)), GRID,
                            seeds=2)
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
    assert set(with_eval.metrics) == set(without.metrics) | {"eval_return", *evaluation.UPDATE_METRICS}
    for name, values in without.metrics.items():
        if np.issubdtype(values.dtype, np.floating):
            np.testing.assert_allclose(with_eval.metrics[name], values, err_msg=name, **tol(vmapped=True))
        else:
            np.testing.assert_array_equal(with_eval.metrics[name], values, err_msg=name)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("eval_every", -1, "a non-negative integer"), ("eval_every", 1.5, "a non-negative integer"),
     ("eval_episodes", 0, "a positive integer"), ("update_eval_every", -2, "a non-negative integer")],
)
def test_bad_evaluation_settings_name_the_field(field, value, allowed):
    with pytest.raises(ValueError, match=rf"^Config\.{field}: got {value!r}; allowed: {allowed}"):
        a2c.Config(**{field: value})


def test_update_evaluation_on_updates_0_k_2k_and_nan_elsewhere(trained):
    metrics = trained[0].metrics
    for name in evaluation.UPDATE_METRICS:
        assert np.isfinite(metrics[name][..., [0, 2]]).all(), name
        assert np.isnan(metrics[name][..., [1, 3]]).all(), name
        assert (metrics[name][..., [0, 2]] >= 1).all(), name  # CartPole pays 1 per step


# ---------------------------------------------------------------- the update evaluation, alone
UPDATE_CONFIG = a2c.Config(num_envs=2, num_steps=8, total_timesteps=16, actor_hidden=(8,), critic_hidden=(8,),
                           normalize_obs=True, eval_episodes=4, update_eval_every=2)


@struct.dataclass
class _State:
    params: object
    obs_stats: object
    scale: object  # the update shifts every parameter by scale × (update index + 1)


def _moves(state, key, update_index):
    """An update step with a known before and after (scale 0: an update of size zero)."""
    shift = state.scale * (update_index + 1.0)
    return state.replace(params=jax.tree.map(lambda p: p + shift, state.params)), {"loss": jnp.float32(0)}


@functools.cache
def _compiled_env(network, episodes: int):
    """(reset, one step): each compiled on its own."""
    env, env_params = evaluation.evaluation_env(UPDATE_CONFIG, episodes)

    @jax.jit
    def env_step(params, obs_stats, obs, state, step_key):
        act_key, env_key = jax.random.split(step_key)
        action = evaluation.act(network, params, obs_stats, obs, act_key, False)
        return env.step(env_key, state, action, env_params)

    return jax.jit(lambda key: env.reset(key, env_params)), env_step


def _reference_returns(network, params, obs_stats, key, episodes: int, max_steps: int) -> np.ndarray:
    """The return of each env's first episode, one env step at a time in a Python loop (each
    step compiled on its own: no loop, vmap or cond of the code under test)."""
    reset, env_step = _compiled_env(network, episodes)
    reset_key, steps_key = jax.random.split(key)
    obs, state = reset(reset_key)
    returns, finished = np.zeros(episodes), np.zeros(episodes, bool)
    for step_key in jax.random.split(steps_key, max_steps):
        obs, state, _, _, _, info = env_step(params, obs_stats, obs, state, step_key)
        done, ret = np.asarray(info["episode_done"]), np.asarray(info["episode_return"])
        returns = np.where(done & ~finished, ret, returns)
        finished |= done
        if finished.all():
            break
    assert finished.all()
    return returns


@pytest.fixture(scope="module")
def update_setup():
    """(network, state, the compiled update step with the update evaluation): one program for
    every test of the update evaluation."""
    env, env_params, network = build_env_and_network(UPDATE_CONFIG)
    stats = init_obs_stats(UPDATE_CONFIG, env, env_params)
    # Observation statistics away from (0, 1), so that before and after use their own.
    stats = stats.replace(mean=stats.mean + 0.1, var=stats.var * 2.0)
    state = _State(init_params(network, env, env_params, jax.random.PRNGKey(3)), stats, jnp.float32(0.05))
    with jax.default_matmul_precision("highest"):
        step = jax.jit(evaluation.with_update_evaluation(_moves, UPDATE_CONFIG, network))
        step(state, jax.random.PRNGKey(0), jnp.int32(0))  # compiled under the precision it runs with
    return network, state, step


@pytest.mark.usefixtures("highest_precision")
def test_update_evaluation_matches_a_python_loop_over_env_steps(update_setup):
    network, state, step = update_setup
    limit = evaluation.episode_limit(UPDATE_CONFIG)
    for update_index in range(3):
        new_state, metrics = step(state, jax.random.PRNGKey(0), jnp.int32(update_index))
        assert float(metrics["loss"]) == 0.0  # the wrapped step's own metrics pass through
        if update_index % UPDATE_CONFIG.update_eval_every:
            assert all(np.isnan(float(metrics[name])) for name in evaluation.UPDATE_METRICS)
        else:
            paired, repeat = evaluation.update_evaluation_keys(update_index)
            expected = {
                "eval_before": _reference_returns(network, state.params, state.obs_stats, paired, 4, limit),
                "eval_after": _reference_returns(network, new_state.params, new_state.obs_stats, paired, 4, limit),
                "eval_before_repeat": _reference_returns(network, state.params, state.obs_stats, repeat, 4, limit),
            }
            for name, returns in expected.items():
                np.testing.assert_allclose(float(metrics[name]), returns.mean(), err_msg=name, **tol())
        state = new_state


@pytest.mark.usefixtures("highest_precision")
def test_an_update_of_size_zero_shows_no_change_on_the_paired_episodes_but_noise_on_independent_ones(update_setup):
    _, state, step = update_setup
    frozen = state.replace(scale=jnp.float32(0.0))
    differs = []
    for update_index in range(0, 8, UPDATE_CONFIG.update_eval_every):
        after, metrics = step(frozen, jax.random.PRNGKey(0), jnp.int32(update_index))
        jax.tree.map(np.testing.assert_array_equal, after.params, frozen.params)
        # Common random numbers: the same policy on the same episodes gives the same returns, exactly.
        assert float(metrics["eval_after"]) == float(metrics["eval_before"])
        differs.append(float(metrics["eval_before_repeat"]) != float(metrics["eval_before"]))
    assert any(differs)


def test_update_evaluation_off_is_the_update_step_itself(update_setup):
    network = update_setup[0]
    off = dataclasses.replace(UPDATE_CONFIG, update_eval_every=0)
    assert evaluation.with_update_evaluation(_moves, off, network) is _moves
    assert evaluation.with_evaluations(_moves, off, network) is _moves
