"""The asynchronous actor–learner (purerl.rl.async_runner) on two CPU devices: the actor's and the
learner's outputs live on different devices, the staleness bound holds in every update under both
policies, the synchronous mode is stale PPO's single program at staleness 0 (and repeats itself),
async with fresh parameters every update is the sync run, GRPO on the tiny LM runs through the same
runner, and bad settings are refused by name."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import ON_CPU, tol

from purerl.algos import stale_ppo
from purerl.rl import async_runner

# One subprocess (two simulated host devices must be set before JAX starts) runs every case at
# tiny size; the runner compiles each program once and the runs share them.
TWO_DEVICES = textwrap.dedent(
    """
    import json, jax, numpy as np
    from purerl.algos import stale_ppo
    from purerl.rl import async_runner as ar

    config = stale_ppo.Config(num_envs=2, num_steps=8, total_timesteps=96, update_epochs=2, num_minibatches=2,
                              actor_hidden=(8,), critic_hidden=(8,), max_stale=0, max_staleness=0)
    hyper = stale_ppo.Hyper(lr=0.02, correction=2.0)
    programs = ar.ppo_programs(config)
    key = jax.random.PRNGKey(3)
    fast = {"xla_backend_optimization_level": 0}

    def go(**settings):
        result = ar.run(programs, ar.Settings(**settings), key, hyper, config.num_updates, compiler_options=fast)
        return {"metrics": {k: np.asarray(v, np.float64).tolist() for k, v in result.metrics.items()},
                "versions": result.rollouts["version"].tolist(),
                "actor_devices": sorted({d.id for x in jax.tree.leaves(result.actor_state) for d in x.devices()}),
                "learner_devices": sorted({d.id for x in jax.tree.leaves(result.state) for d in x.devices()}),
                "summary": result.summary()}

    runs = {"sync": go(mode="sync"), "sync_again": go(mode="sync"),
            "async_fresh": go(mode="async", push_every=1, max_staleness=0, on_stale="block"),
            "block": go(mode="async", queue_size=2, push_every=2, max_staleness=2, on_stale="block"),
            "drop": go(mode="async", queue_size=3, push_every=1, max_staleness=1, on_stale="drop")}
    with jax.default_matmul_precision("highest"):
        train = jax.jit(stale_ppo.make_train(config)).lower(key, hyper).compile(compiler_options=fast)
    _, single = jax.device_get(train(key, hyper))
    runs["single"] = {k: np.asarray(v, np.float64).tolist() for k, v in single.items()}
    runs["devices"] = [d.id for d in jax.local_devices()]

    from purerl.llm import grpo
    lm = grpo.Config(d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, sft_steps=4, num_updates=3,
                     eval_prompts=8, num_prompts=4, group_size=2, task_kwargs={"num_digits": 1})
    lm_hyper = grpo.Hyper(lr=0.01)
    lm_programs = ar.grpo_programs(lm)
    lm_runs = {}
    for name, settings in (("sync", dict(mode="sync")),
                           ("block", dict(mode="async", queue_size=2, max_staleness=1))):
        result = ar.run(lm_programs, ar.Settings(**settings), key, lm_hyper, lm.num_updates, compiler_options=fast)
        lm_runs[name] = {k: np.asarray(v, np.float64).tolist() for k, v in result.metrics.items()}
        lm_runs[name]["devices"] = [sorted({d.id for x in jax.tree.leaves(part) for d in x.devices()})
                                    for part in (result.actor_state, result.state)]
    train = jax.jit(grpo.make_train(lm)).lower(key, lm_hyper).compile(compiler_options=fast)
    _, single = jax.device_get(train(key, lm_hyper))
    lm_runs["single"] = {k: np.asarray(v, np.float64).tolist() for k, v in single.items()}
    runs["grpo"] = lm_runs
    print(json.dumps(runs))
    """
)
COMPARED = ("policy_loss", "value_loss", "entropy", "approx_kl", "update_kl", "episode_length", "behaviour_kl")


@pytest.fixture(scope="module")
def runs():
    # This test run's XLA flags (make test's fast-compile settings) plus two simulated devices.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", TWO_DEVICES], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_grpo_through_the_runner(runs):
    """GRPO on the tiny LM: sync is the single program (same SFT start, prompts, samples and
    steps); async keeps the actor on device 0, the learner on 1 and the lag within its bound."""
    lm = runs["grpo"]
    updates = slice(None) if ON_CPU else slice(0, 1)
    for name in ("policy_loss", "kl_loss", "sample_reward", "completion_length", "accuracy", "sft_accuracy"):
        np.testing.assert_allclose(lm["sync"][name][updates], lm["single"][name][updates], **tol(vmapped=True),
                                   err_msg=name)
    assert lm["sync"]["devices"] == lm["block"]["devices"] == [[0], [1]]
    lag = np.asarray(lm["block"]["behaviour_lag"])
    assert np.all((lag >= 0) & (lag <= 1)), lag
    for name in ("policy_loss", "kl_loss"):
        assert np.all(np.isfinite(lm["block"][name])), name


def test_actor_and_learner_outputs_live_on_different_devices(runs):
    assert runs["devices"] == [0, 1]
    for name in ("sync", "async_fresh", "block", "drop"):
        assert (runs[name]["actor_devices"], runs[name]["learner_devices"]) == ([0], [1]), name


@pytest.mark.parametrize("name, bound", [("block", 2), ("drop", 1), ("async_fresh", 0), ("sync", 0)])
def test_the_staleness_bound_holds_in_every_update(runs, name, bound):
    metrics = runs[name]["metrics"]
    lag = np.asarray(metrics["behaviour_lag"])
    assert len(lag) == 6 and np.all(lag >= 0) and np.all(lag <= bound), lag
    # The realised lag is the update's index minus the learnt rollout's parameter version, and the
    # learner's own diagnostic saw the same lag.
    np.testing.assert_array_equal(lag, np.arange(6) - np.asarray(metrics["behaviour_version"]))
    np.testing.assert_array_equal(lag, metrics["behaviour_lag"])
    # Every rollout is learnt (block) or counted as dropped (drop); none is lost.
    assert len(runs[name]["versions"]) >= 6 + int(np.sum(metrics["dropped"]))
    if name == "block":
        assert np.sum(metrics["dropped"]) == 0


def test_sync_is_stale_ppo_at_staleness_zero_and_repeats_itself(runs):
    sync, single = runs["sync"]["metrics"], runs["single"]
    updates = slice(None) if ON_CPU else slice(0, 1)  # whole chaotic trajectories on CPU only
    for name in COMPARED:
        np.testing.assert_allclose(sync[name][updates], single[name][updates], **tol(vmapped=True), err_msg=name)
        # Exact: the runs are CPU programs (JAX_PLATFORMS=cpu in the subprocess) with the same keys.
        np.testing.assert_array_equal(sync[name], runs["sync_again"]["metrics"][name], err_msg=name)


def test_async_with_fresh_parameters_every_update_is_the_sync_run(runs):
    fresh, sync = runs["async_fresh"]["metrics"], runs["sync"]["metrics"]
    np.testing.assert_array_equal(fresh["behaviour_lag"], np.zeros(6))
    for name in COMPARED:
        np.testing.assert_allclose(fresh[name], sync[name], **tol(vmapped=True), err_msg=name)


@pytest.mark.parametrize("settings, field", [
    (dict(mode="threads"), "Settings.mode"),
    (dict(on_stale="wait"), "Settings.on_stale"),
    (dict(queue_size=0), "Settings.queue_size"),
    (dict(push_every=0), "Settings.push_every"),
    (dict(max_staleness=-1), "Settings.max_staleness"),
    (dict(push_every=3, max_staleness=1), "Settings.max_staleness: got 1; allowed: an integer ≥ push_every − 1 = 2"),
    (dict(timeout_s=0), "Settings.timeout_s"),
])
def test_bad_settings_are_refused_naming_the_field(settings, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        async_runner.Settings(**settings)


def test_bad_runs_are_refused_before_compiling():
    config = stale_ppo.Config(num_envs=2, num_steps=8, total_timesteps=32, normalize_obs=True)
    with pytest.raises(ValueError, match="Config.normalize_obs: got True"):
        async_runner.ppo_programs(config)
    programs = async_runner.ppo_programs(stale_ppo.Config(num_envs=2, num_steps=8, total_timesteps=32))
    with pytest.raises(ValueError, match="num_updates: got 0"):
        async_runner.run(programs, async_runner.Settings(), jax.random.PRNGKey(0), stale_ppo.Hyper(), 0)
    with pytest.raises(ValueError, match="Hyper.correction: got 7"):
        async_runner.run(programs, async_runner.Settings(), jax.random.PRNGKey(0), stale_ppo.Hyper(correction=7.0), 1)
