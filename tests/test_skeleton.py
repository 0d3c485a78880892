"""The shared on-policy skeleton and the defects found in review, each with a
test that failed before its fix: agent-held observation statistics, the 2-device hang,
traced-hyperparameter contract, diluted group diagnostics, exact counters, duplicate
seeds, and the collect + critic wiring at a truncation step."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from purerl import sweep
from purerl.algos import ppo, reinforce
from purerl.rl import losses, normalization
from purerl.rl.agent import build_env_and_network, init_params
from purerl.rl.loop import host_metrics
from purerl.rl.on_policy import TrainState, collect_rollout, gae
from purerl.rl.rollout import init_runner, make_value_fn


# ---------------------------------------------------------------- 1. normalisation lives in the agent
def test_running_stats_equal_numpy_over_all_batches_and_respect_the_mask():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(5, 4, 3)).astype(np.float32) for _ in range(4)]
    masks = [(rng.random((5, 4)) > 0.3).astype(np.float32) for _ in range(4)]
    stats = normalization.RunningStats.create((3,))
    for obs, mask in zip(batches, masks):
        stats = normalization.update(stats, jnp.asarray(obs), jnp.asarray(mask))
    kept = np.concatenate([o[m > 0] for o, m in zip(batches, masks)])
    np.testing.assert_allclose(stats.mean, kept.mean(axis=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.var, kept.var(axis=0), rtol=1e-3)
    assert float(stats.count) == pytest.approx(len(kept), rel=1e-5)
    normalised = normalization.normalize(stats, jnp.asarray(kept))
    np.testing.assert_allclose(np.mean(normalised, axis=0), 0.0, atol=1e-3)
    x = jnp.asarray([1.0, -2.0, 3.5])
    np.testing.assert_array_equal(normalization.normalize(None, x), x)  # identity without stats


def test_reinforce_keeps_observation_statistics_across_updates():
    # Every REINFORCE update resets the envs; the statistics must still accumulate over
    # all episode steps of the run (before the fix they restarted every update).
    config = reinforce.Config(num_envs=4, num_steps=60, total_timesteps=4 * 60 * 3, normalize_obs=True)
    result = sweep.run(reinforce.make_train(config), reinforce.Hyper(), seeds=1, return_state=True)
    stats = result.final_state.obs_stats
    episode_steps = result.metrics["episode_steps"][0, 0]
    assert episode_steps[-1] > episode_steps[0] > 0
    assert float(stats.count[0, 0]) == pytest.approx(episode_steps[-1], abs=1e-2)


# ---------------------------------------------------------------- 2. multi-device runs do not hang
HANG_REPRODUCER = textwrap.dedent(
    """
    import json
    import jax
    from purerl import sweep
    from purerl.algos import ppo
    # The sizes that hung in about 9 of 10 tries before the fix (num_steps=64, 2 epochs).
    config = ppo.Config(num_envs=4, num_steps=64, total_timesteps=256, update_epochs=2)
    train, grid = ppo.make_train(config), sweep.grid(ppo.Hyper(), clip_eps=[0.1, 0.3])
    two = sweep.run(train, grid, seeds=3)
    one = sweep.run(train, grid, seeds=3, devices=jax.devices()[:1])
    single = sweep.run(train, ppo.Hyper(clip_eps=0.3), seeds=[2])
    print(json.dumps({"devices": jax.local_device_count(),
                      "two": two.metrics["value_loss"].tolist(),
                      "one": one.metrics["value_loss"].tolist(),
                      "single": single.metrics["value_loss"].tolist(),
                      "program_devices": sorted(len(key[3]) for key in sweep._EXECUTABLES)}))
    """
)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="simulated host devices are a CPU feature")
def test_sweep_over_two_cpu_devices_finishes_and_matches_one_device():
    # This test run's XLA flags (make test's fast-compile settings) plus two simulated devices.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    try:
        out = subprocess.run(
            [sys.executable, "-c", HANG_REPRODUCER], env=env, capture_output=True, text=True, timeout=420
        )
    except subprocess.TimeoutExpired:
        pytest.fail("sweep over 2 CPU devices hung (no result in 420 s)")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["devices"] == 2
    np.testing.assert_allclose(got["two"], got["one"], rtol=1e-5, atol=1e-5)
    # The 6-run sweep on 2 devices and on 1; a 1-run sweep uses one device, not a padded copy
    # on the second one: same numbers as that run (clip 0.3, seed 2) inside the 6-run sweep.
    assert got["program_devices"] == [1, 1, 2]
    np.testing.assert_allclose(got["single"][0][0], got["two"][1][2], rtol=1e-5, atol=1e-5)


def test_training_programs_call_no_lapack_kernels():
    # The hang's cause: a batched LAPACK QR (orthogonal init) blocking the CPU thread pool.
    config = ppo.Config(num_envs=2, num_steps=8, num_minibatches=1, total_timesteps=16)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    hypers = jax.tree.map(lambda x: jnp.full((2,), x), ppo.Hyper())
    text = jax.jit(jax.vmap(ppo.make_train(config))).lower(keys, hypers).as_text()
    assert "lapack" not in text.lower() and "geqrf" not in text.lower()


def test_orthogonal_init_is_orthogonal_with_gain():
    from purerl.nets import orthogonal_init

    for shape in [(4, 64), (64, 64), (64, 2), (3, 5, 7)]:
        w = np.asarray(orthogonal_init(np.sqrt(2.0))(jax.random.PRNGKey(1), shape), np.float64)
        w = w.reshape(-1, shape[-1])
        gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        np.testing.assert_allclose(gram, 2.0 * np.eye(len(gram)), atol=1e-5)


# ---------------------------------------------------------------- 3. bad Hyper under the user's jit
def test_bad_hyper_fails_on_construction_replace_and_strings():
    with pytest.raises(ValueError, match=r"Hyper\.gamma: got 1\.5; allowed: \[0, 1\]"):
        ppo.Hyper(gamma=1.5)
    with pytest.raises(ValueError, match=r"Hyper\.clip_eps: got -0\.1; allowed: \(0, inf\)"):
        ppo.Hyper().replace(clip_eps=-0.1)
    with pytest.raises(ValueError, match=r"Hyper\.lr: got 'fast' \(a string\); allowed: a number in"):
        ppo.Hyper(lr="fast")


# ---------------------------------------------------------------- 5. diagnostics over valid steps
def test_masked_surrogate_statistics_equal_those_of_the_valid_samples():
    rng = np.random.default_rng(1)
    new, old, adv = (jnp.asarray(rng.normal(size=40) * s, jnp.float32) for s in (0.3, 0.3, 1.0))
    mask = jnp.asarray(np.arange(40) < 7, jnp.float32)  # 7 valid steps, 33 padding
    loss, stats = losses.clipped_surrogate(new, old, adv, 0.2, mask)
    ref_loss, ref_stats = losses.clipped_surrogate(new[:7], old[:7], adv[:7], 0.2)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for name in ("approx_kl", "clip_frac"):
        np.testing.assert_allclose(stats[name], ref_stats[name], rtol=1e-5, err_msg=name)


def test_ppo_reports_kl_of_the_first_and_last_epoch():
    config = ppo.Config(num_envs=4, num_steps=32, total_timesteps=4 * 32 * 3, update_epochs=4, num_minibatches=1)
    _, metrics = jax.jit(ppo.make_train(config))(jax.random.PRNGKey(0), ppo.Hyper(lr=3e-3))
    # One minibatch per epoch: the first epoch's only step starts at π_old, so its KL is 0.
    np.testing.assert_allclose(metrics["approx_kl_first_epoch"], 0.0, atol=1e-7)
    assert np.all(np.asarray(metrics["approx_kl"]) > 0)


def test_group_ppo_leaves_the_critic_untouched():
    base = dict(advantage="group", num_envs=8, group_size=4, num_steps=32, num_minibatches=2)
    one = ppo.make_train(ppo.Config(**base, total_timesteps=256))
    three = ppo.make_train(ppo.Config(**base, total_timesteps=3 * 256))
    state1, _ = jax.jit(one)(jax.random.PRNGKey(2), ppo.Hyper())
    state3, metrics = jax.jit(three)(jax.random.PRNGKey(2), ppo.Hyper())
    jax.tree.map(np.testing.assert_array_equal, state1.params["params"]["critic"], state3.params["params"]["critic"])
    actor1 = jax.tree.leaves(state1.params["params"]["actor"])
    actor3 = jax.tree.leaves(state3.params["params"]["actor"])
    assert any(not np.allclose(a, b) for a, b in zip(actor1, actor3))
    assert "value_loss" not in metrics


# ---------------------------------------------------------------- 6. counters exact beyond 2^31
def test_cumulative_counters_are_exact_int64_on_the_host():
    per_update = np.full((2, 10), 2**30, np.int32)  # 1.07e9 steps per update
    counters = host_metrics({"env_steps_in_update": per_update})
    assert counters["env_steps"].dtype == np.int64
    assert counters["env_steps"][0, -1] == 10 * 2**30  # 1.07e10: past int32 and float32
    np.testing.assert_array_equal(np.diff(counters["env_steps"], axis=-1), 2**30)


def test_sweep_metrics_carry_exact_env_steps():
    config = ppo.Config(num_envs=2, num_steps=16, num_minibatches=1, total_timesteps=64)
    result = sweep.run(ppo.make_train(config), ppo.Hyper(), seeds=1)
    np.testing.assert_array_equal(result.metrics["env_steps"][0, 0], config.batch_size * np.arange(1, 3))


# ---------------------------------------------------------------- 7. duplicate seeds
def test_duplicate_seeds_are_rejected():
    train = ppo.make_train(ppo.Config(num_envs=2, num_steps=16, num_minibatches=1, total_timesteps=32))
    with pytest.raises(ValueError, match=r"seeds: got duplicates \[0\]"):
        sweep.run(train, ppo.Hyper(), seeds=[0, 0])


# ---------------------------------------------------------------- collect + critic at truncation
def test_collect_and_critic_values_bootstrap_from_the_final_observation(highest_precision):
    from conftest import tol

    config = ppo.Config(num_envs=2, num_steps=12, num_minibatches=1, total_timesteps=24)
    env, env_params, network = build_env_and_network(config)
    env_params = env_params.replace(max_steps_in_episode=5)  # truncation at t = 4 (unless it falls)
    params = init_params(network, env, env_params, jax.random.PRNGKey(0))
    runner = init_runner(env, env_params, jax.random.PRNGKey(1))
    state = TrainState(params, None, None, runner)
    _, rollout = jax.jit(collect_rollout, static_argnums=(0, 2, 5))(
        env, env_params, network, state, jax.random.PRNGKey(2), 12
    )
    batch = rollout.batch
    truncated = np.asarray(batch.truncated) & ~np.asarray(batch.terminated)
    assert truncated[4].all(), "every env is cut by the 5-step limit at t = 4"

    # Independent replay: reset with the same key, step with the recorded actions.
    obs, env_state = env.reset(jax.random.PRNGKey(1), env_params)
    for t in range(5):
        obs, env_state, _, _, _, info = env.step(jax.random.PRNGKey(100 + t), env_state, batch.action[t], env_params)
    final_obs = np.asarray(info["final_observation"])
    np.testing.assert_allclose(batch.next_obs[4], final_obs, **tol())
    value = make_value_fn(network, params)
    np.testing.assert_allclose(rollout.next_values[4], value(final_obs), **tol())
    assert not np.allclose(rollout.next_values[4], rollout.values[5])  # not V(reset observation)

    # GAE at the truncation step is the one-step TD error bootstrapped from V(final obs).
    gamma = 0.99
    advantages, _ = gae(rollout, gamma, 0.95)
    expected = np.asarray(batch.reward[4]) + gamma * np.asarray(value(final_obs)) - np.asarray(rollout.values[4])
    np.testing.assert_allclose(advantages[4], expected, rtol=1e-5, atol=1e-5)
