"""PPO: clear errors before compiling, and reproducibility under vmap."""

import jax
import numpy as np
import pytest
from conftest import ON_CPU, tol

from purerl import sweep
from purerl.algos import ppo

SHORT = dict(num_envs=4, num_steps=32, total_timesteps=4 * 32 * 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_minibatches=3), r"Config.num_minibatches: 3 does not divide num_envs \* num_steps = 512"),
        (dict(env="CartPol-v1"), r"unknown gymnax environment 'CartPol-v1'; allowed: .*CartPole-v1"),
        (dict(env="Pendulum-v1", distribution="categorical"), r"Config.distribution: 'categorical' needs a discrete"),
        (dict(num_envs=0), r"Config.num_envs: got 0; allowed: a positive integer"),
        (dict(num_steps=-5), r"Config.num_steps: got -5; allowed: a positive integer"),
        (dict(update_epochs=0), r"Config.update_epochs: got 0; allowed: a positive integer"),
        (dict(total_timesteps=100), r"Config.total_timesteps: got 100; allowed: at least"),
        (dict(activation="sigmoidish"), r"Config.activation: unknown activation 'sigmoidish'"),
        (dict(actor_hidden=(64, 0)), r"Config.actor_hidden: got \(64, 0\)"),
    ],
)
def test_bad_config_fails_with_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ppo.Config(**kwargs)


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("clip_eps", 0.0, r"\(0, inf\)"),
        ("clip_eps", -0.1, r"\(0, inf\)"),
        ("gae_lambda", 1.5, r"\[0, 1\]"),
        ("gae_lambda", -0.1, r"\[0, 1\]"),
        ("gamma", 1.01, r"\[0, 1\]"),
        ("lr", 0.0, r"\(0, inf\)"),
    ],
)
def test_bad_hyper_fails_before_compiling(field, value, allowed, monkeypatch):
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
    message = rf"Hyper.{field}: got {value:g}; allowed: {allowed}"
    with pytest.raises(ValueError, match=message):  # at construction: before any jit
        ppo.Hyper(**{field: value})
    with pytest.raises(ValueError, match=message):
        sweep.grid(ppo.Hyper(), **{field: [0.5 if field != "lr" else 1e-3, value]})
    assert not compiled


def test_unknown_sweep_axis_lists_fields():
    with pytest.raises(ValueError, match="'clip' is not a field of Hyper; allowed: lr, gamma"):
        sweep.grid(ppo.Hyper(), clip=[0.1])


def test_config_is_hashable_and_static():
    a, b = ppo.Config(env_kwargs={}), ppo.Config()
    assert hash(a) == hash(b) and a == b


# Under `pytest -n 2 --dist loadgroup` one worker runs this whole module, so the
# module-scoped fixture below is built once.
pytestmark = pytest.mark.xdist_group(__name__)


@pytest.fixture(scope="module")
def short_train():
    return ppo.make_train(ppo.Config(**SHORT))


def test_vmapped_seeds_equal_runs_alone(short_train):
    # Whole (chaotic) trajectories drift apart on GPU: a CPU-only check.
    if not ON_CPU:
        pytest.skip("whole-trajectory equality is a CPU check; GPU: test_one_update_vmapped_equals_alone")
    seeds = [0, 5, 11]
    result = sweep.run(short_train, ppo.Hyper(), seeds=seeds)
    alone = jax.jit(short_train)
    for k, seed in enumerate(seeds):
        _, metrics = alone(jax.random.PRNGKey(seed), ppo.Hyper())
        for name, values in metrics.items():
            np.testing.assert_allclose(result.metrics[name][0, k], values, **tol(vmapped=True), err_msg=name)


@pytest.mark.skipif(not ON_CPU, reason="whole-trajectory equality is a CPU check")
def test_grid_setting_equals_that_setting_alone(short_train):
    grid = sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3], ent_coef=[0.0, 0.05])
    result = sweep.run(short_train, grid, seeds=2, max_batch=3)  # 8 runs in 3 chunks of 3
    assert result.metrics["policy_loss"].shape == (4, 2, 4)
    assert grid.settings[2] == {"clip_eps": 0.3, "ent_coef": 0.0}
    _, metrics = jax.jit(short_train)(jax.random.PRNGKey(1), ppo.Hyper(clip_eps=0.3, ent_coef=0.0))
    for name, values in metrics.items():
        np.testing.assert_allclose(result.metrics[name][2, 1], values, **tol(vmapped=True), err_msg=name)


def test_same_seed_same_numbers_and_different_seeds_differ(short_train):
    train = jax.jit(short_train)
    _, a = train(jax.random.PRNGKey(3), ppo.Hyper())
    _, b = train(jax.random.PRNGKey(3), ppo.Hyper())
    _, c = train(jax.random.PRNGKey(4), ppo.Hyper())
    np.testing.assert_array_equal(a["value_loss"], b["value_loss"])
    assert not np.allclose(a["value_loss"], c["value_loss"])


def test_metrics_are_per_update():
    config = ppo.Config(**SHORT)
    _, metrics = jax.jit(ppo.make_train(config))(jax.random.PRNGKey(0), ppo.Hyper())
    expected = {
        "env_steps_in_update", "episode_return", "episode_length", "episodes", "policy_loss", "value_loss",
        "entropy", "approx_kl", "approx_kl_first_epoch", "update_kl", "clip_frac", "explained_variance",
        "value_error_mc", "return_variance_mc", "value_error_ratio", "advantage_variance",
        "grad_norm", "lr", "hyper_ok",
    }
    assert set(metrics) == expected
    assert all(v.shape == (config.num_updates,) for v in metrics.values())
    np.testing.assert_array_equal(metrics["env_steps_in_update"], config.batch_size)
    # Annealed linearly from lr towards 0, constant within an update.
    np.testing.assert_allclose(metrics["lr"], 2.5e-4 * (1 - np.arange(4) / 4), rtol=1e-6)


def reference_critic_diagnostics(rewards, values, next_values, terminated, truncated, advantages, gamma):
    """Forward loop per step: the return sums rewards until the episode ends, bootstrapping from
    V(final observation) at a truncation and from V(s_T) at the rollout's end."""
    horizon, batch = rewards.shape
    returns = np.zeros((horizon, batch))
    for b in range(batch):
        for t in range(horizon):
            total, weight = 0.0, 1.0
            for u in range(t, horizon):
                total += weight * rewards[u, b]
                if terminated[u, b]:
                    break
                if truncated[u, b] or u == horizon - 1:
                    total += weight * gamma * next_values[u, b]
                    break
                weight *= gamma
            returns[t, b] = total
    error = np.mean((values - returns) ** 2)
    return {"value_error_mc": error, "return_variance_mc": returns.var(),
            "value_error_ratio": error / returns.var(), "advantage_variance": advantages.var()}


def test_critic_diagnostics_match_a_numpy_loop():
    from purerl.rl import on_policy
    from purerl.rl.rollout import Transition

    rng = np.random.default_rng(0)
    horizon, batch, gamma = 12, 3, 0.9
    rewards, values, final_values = (rng.normal(size=(horizon, batch)).astype(np.float32) for _ in range(3))
    ends = rng.random((horizon, batch))
    terminated, truncated = ends < 0.12, (ends >= 0.12) & (ends < 0.22)
    # As in a rollout: V(s'_t) is V(s_{t+1}) unless the episode or the rollout ends at t.
    next_values = np.where(terminated | truncated, final_values, np.roll(values, -1, axis=0))
    next_values[-1] = final_values[-1]
    advantages = rng.normal(size=(horizon, batch)).astype(np.float32) * 3.0
    blank = np.zeros((horizon, batch), np.float32)
    rollout = on_policy.Rollout(Transition(blank, blank, blank, rewards, terminated, truncated, blank),
                                values, next_values, None)
    got = on_policy.critic_diagnostics(rollout, advantages, gamma)
    want = reference_critic_diagnostics(rewards, values, next_values, terminated, truncated, advantages, gamma)
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(float(got[name]), value, rtol=1e-5, err_msg=name)


def test_continuous_ppo_runs_on_pendulum():
    config = ppo.Config(env="Pendulum-v1", num_envs=2, num_steps=64, total_timesteps=256)
    state, metrics = jax.jit(ppo.make_train(config))(jax.random.PRNGKey(0), ppo.Hyper())
    assert state.params["params"]["actor"]["log_std"].shape == (1,)
    assert np.all(np.isfinite(metrics["policy_loss"]))
