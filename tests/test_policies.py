"""Saved policies (purerl.policies): saving with orbax from a Hydra job, loading back
as a callable policy, atomic saves; `purerl-eval` end to end (evaluation of saved policies,
purerl.rl.evaluation; a recorded episode drawn as a GIF, purerl.rendering); and a trained
CartPole policy that evaluates at the env's ceiling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import PPO_CARTPOLE_DEFAULTS_GROUP
from hydra import compose, initialize_config_dir

import purerl
from purerl import policies, rendering, results, sweep
from purerl.algos import ppo
from purerl.cli import evaluate as purerl_eval
from purerl.cli import schema
from purerl.cli.train import build_plan, run_job
from purerl.nets import ActorCritic
from purerl.rl import evaluation, normalization
from purerl.rl.agent import build_env_and_network, init_params
from purerl.rl.normalization import RunningStats
from purerl.rl.on_policy import TrainState

ROOT = Path(__file__).resolve().parent.parent
JOB_OVERRIDES = [
    "seeds=2",
    "first_seed=3",  # seed values differ from their positions
    "grid.lr=[0.001,0.0003]",
    "algo.config.normalize_obs=true",
    "algo.config.num_envs=4",
    "algo.config.num_steps=32",
    "algo.config.total_timesteps=1024",
    "algo.config.update_epochs=1",
    "compile_cache.enabled=false",
    "print_table=false",
]


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR)):
        return compose("config", overrides=list(overrides))


def in_memory_policy(result, config, setting: int, seed_index: int):
    """The final state's own policy, straight from sweep.run: (network, params, stats)."""
    _, _, network = build_env_and_network(config)
    pick = lambda x: x[setting, seed_index]  # noqa: E731
    return network, jax.tree.map(pick, result.final_state.params), jax.tree.map(pick, result.final_state.obs_stats)


# Under `pytest -n 2 --dist loadgroup` one worker runs this whole module, so the
# module-scoped fixture below is built once.
pytestmark = pytest.mark.xdist_group(__name__)


@pytest.fixture(scope="module")
def cartpole_job(tmp_path_factory):
    """A tiny PPO CartPole job (2 settings × seeds 3, 4, normalised observations) run by
    purerl-train's run_job, with the SweepResult it trained (final states included)."""
    # Named like a real grid job: orbax must cope with the brackets (see orbax_io.orbax_path).
    job = tmp_path_factory.mktemp("policies") / "algo.config.normalize_obs=true,grid.lr=[0.001,0.0003]"
    (job / policies.POLICIES).mkdir(parents=True)  # an earlier run's files: must not survive
    (job / policies.POLICIES / policies.INDEX).write_text("{stale")
    (job / ".policies.tmp-killed").mkdir()
    cfg = compose_cfg(*JOB_OVERRIDES)
    seen = []
    real_run = sweep.run

    def spy(*args, **kwargs):
        seen.append(real_run(*args, **kwargs))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "run", spy)
        assert run_job(cfg, job) == "complete"
    return job, seen[0], build_plan(cfg)


def untrained_state(config, num_settings: int, num_seeds: int, key: int = 7) -> TrainState:
    """Random parameters of the network's shapes (orthogonal init is slow to compile and
    irrelevant here), shaped like sweep.run's final_state; no observation statistics."""
    env, env_params, network = build_env_and_network(config)
    shapes = jax.eval_shape(lambda k: init_params(network, env, env_params, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(key)
    batch = (num_settings, num_seeds)
    params = jax.tree.map(lambda x: (0.3 * rng.normal(size=batch + x.shape)).astype(x.dtype), shapes)
    return TrainState(params, None, None, None)


# ---------------------------------------------------------------- save -> load
def test_saved_policy_acts_exactly_like_the_final_state(cartpole_job):
    job, result, plan = cartpole_job
    obs = jax.random.normal(jax.random.PRNGKey(1), (512, 4)) * jnp.asarray([1.0, 1.0, 0.1, 1.0])
    key = jax.random.PRNGKey(2)
    for setting in range(2):
        for seed_index, seed in enumerate([3, 4]):
            policy = purerl.load_policy(job, setting=setting, seed=seed)
            network, params, stats = in_memory_policy(result, plan.config, setting, seed_index)
            dist = network.apply(params, normalization.normalize(stats, obs), method=ActorCritic.policy)
            np.testing.assert_array_equal(policy(obs), dist.mode())
            np.testing.assert_array_equal(policy(obs, key, deterministic=False), dist.sample(seed=key))
            np.testing.assert_array_equal(policy(obs[7]), dist.mode()[7])  # unbatched
            np.testing.assert_array_equal(policy.obs_stats.mean, stats.mean)
            np.testing.assert_array_equal(policy.obs_stats.var, stats.var)
            assert policy.setting == {"lr": [0.001, 0.0003][setting]} and policy.seed == seed
    # The statistics are real (not the (0, 1) prior) and the loaded policy applies them.
    policy = purerl.load_policy(job, 1, 4)
    assert float(policy.obs_stats.count) > 1000 and np.all(np.abs(policy.obs_stats.mean) > 0)
    unnormalised = network.apply(policy.params, obs, method=ActorCritic.policy).mode()
    assert np.any(np.asarray(policy(obs)) != np.asarray(unnormalised))
    # A policy is a jittable function and prints as a summary, not as its weights.
    np.testing.assert_array_equal(jax.jit(policy)(obs), policy(obs))
    text = repr(policy)
    assert text.startswith("Policy(ppo on CartPole-v1, setting={'lr': 0.0003}, seed=4,") and len(text) < 200


def test_job_saves_params_and_stats_only_indexed_by_setting_and_seed(cartpole_job):
    job, result, plan = cartpole_job
    assert results.is_complete(job)
    assert not list(job.glob(".policies.*")), "a killed save's leftovers are removed"
    index = json.loads((job / policies.POLICIES / policies.INDEX).read_text())
    assert index["algo"] == "ppo" and index["seeds"] == [3, 4]
    assert index["settings"] == [{"lr": 0.001}, {"lr": 0.0003}]
    assert index["fingerprint"] == results.read_status(job)["fingerprint"]
    saved = policies.load_policies(job)
    assert saved.config == plan.config  # the network is rebuilt from the saved Config
    assert set(os.listdir(job / policies.POLICIES)) == {policies.INDEX, policies.STATE}
    for name in ("mean", "var", "count"):
        np.testing.assert_array_equal(getattr(saved.obs_stats, name), getattr(result.final_state.obs_stats, name))
    jax.tree.map(np.testing.assert_array_equal, saved.params, jax.device_get(result.final_state.params))


def test_save_policies_false_saves_nothing(cartpole_job, tmp_path, monkeypatch):
    job, result, _ = cartpole_job
    assert compose_cfg().save_policies is True  # the documented default
    asked = []

    def fake_run(*args, **kwargs):  # no training: the fixture's result stands in
        asked.append(kwargs["return_state"])
        return result

    monkeypatch.setattr(sweep, "run", fake_run)
    assert run_job(compose_cfg(*JOB_OVERRIDES, "save_policies=false"), tmp_path) == "complete"
    assert asked == [False] and results.is_complete(tmp_path)
    assert not (tmp_path / policies.POLICIES).exists()
    with pytest.raises(policies.PoliciesNotFound, match="save_policies=true"):
        purerl.load_policy(tmp_path)
    # Algorithms whose states load_policy cannot rebuild do not ask for them (and keep the
    # exported-program cache); their jobs run as before.
    dqn_job = tmp_path / "dqn"
    assert run_job(compose_cfg("algo=dqn", "seeds=2", "compile_cache.enabled=false", "print_table=false"), dqn_job)
    assert asked == [False, False] and not (dqn_job / policies.POLICIES).exists()


def test_a_variant_state_saves_its_agent(tmp_path):
    """Stale PPO's final state wraps the on-policy TrainState with its rollout buffer: the
    saved policy is the agent's."""
    from purerl.algos import stale_ppo

    config = stale_ppo.Config(num_envs=2, num_steps=8, total_timesteps=16, max_stale=2)
    agent = untrained_state(config, 1, 2)
    state = stale_ppo.StaleState(agent=agent, buffer=None, filled=np.zeros((1, 2), np.int32), history=None)
    policies.save_policies(tmp_path, state, algo="stale_ppo", config=config, settings=[{}], seeds=[0, 1])
    policy = purerl.load_policy(tmp_path, setting=0, seed=1)
    for loaded, saved in zip(jax.tree.leaves(policy.params), jax.tree.leaves(agent.params)):
        np.testing.assert_array_equal(loaded, saved[0, 1])


def test_policies_are_supported_for_the_on_policy_actor_critics():
    from purerl.algos import ALGORITHMS, get_algorithm

    supported = {name for name in ALGORITHMS if policies.supports(get_algorithm(name).Config())}
    assert supported == {"ppo", "stale_ppo", "a2c", "trpo", "reinforce"}


def test_load_errors_name_what_is_allowed(cartpole_job, tmp_path):
    job, _, _ = cartpole_job
    with pytest.raises(ValueError, match=r"setting: got 2; allowed: 0\.\.1"):
        purerl.load_policy(job, setting=2, seed=3)
    with pytest.raises(ValueError, match="seed: got 0; allowed: 3, 4"):
        purerl.load_policy(job, setting=0, seed=0)
    policy = purerl.load_policy(job, 0, 3)
    with pytest.raises(ValueError, match="key: got None"):
        policy(jnp.zeros(4), deterministic=False)
    with pytest.raises(ValueError, match=r"obs: got shape \(3,\); allowed: \[\.\.\., 4\]"):
        policy(jnp.zeros(3))
    with pytest.raises(policies.PoliciesNotFound, match="no complete saved policies"):
        purerl.load_policy(tmp_path)
    # Policies of another run of the job (e.g. copied in by hand) are refused.
    copy = tmp_path / "copy"
    shutil.copytree(job, copy)
    status = json.loads((copy / results.STATUS).read_text())
    (copy / results.STATUS).write_text(json.dumps({**status, "fingerprint": "0" * 16}))
    with pytest.raises(ValueError, match="another run of this job"):
        purerl.load_policy(copy)


def test_import_purerl_stays_cheap():
    code = (
        "import sys, purerl; assert 'jax' not in sys.modules; "
        "f = purerl.load_policy; assert callable(f) and 'orbax.checkpoint' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---------------------------------------------------------------- atomic saves
def synthetic_state(num_settings: int, num_seeds: int, key: int, stats: bool = True) -> TrainState:
    """Arrays shaped like a final state, for tests of the files (not of acting)."""
    rng = np.random.default_rng(key)
    batch = (num_settings, num_seeds)
    params = {"params": {"actor": {"kernel": rng.normal(size=batch + (4, 8)).astype(np.float32)},
                         "step": np.full(batch, key, np.int32)}}
    obs_stats = RunningStats(rng.normal(size=batch + (4,)), rng.uniform(size=batch + (4,)), np.full(batch, 9.0))
    return TrainState(params, None, obs_stats if stats else None, None)


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import orbax.checkpoint as ocp
    sys.path.insert(0, {tests!r})
    from test_policies import synthetic_state
    from purerl import policies
    from purerl.algos import ppo

    kill_at, old_dir, new_dir = sys.argv[1:]
    config = ppo.Config(num_envs=2, num_steps=8, total_timesteps=16, normalize_obs=True)
    if old_dir != "-":
        policies.save_policies(old_dir, synthetic_state(1, 2, key=1), algo="ppo", config=config,
                               settings=[{{}}], seeds=[0, 1])
    die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    if kill_at == "orbax":  # mid-write: the async checkpoint has started, nothing is committed
        save = ocp.StandardCheckpointer.save
        ocp.StandardCheckpointer.save = lambda self, *a, **k: (save(self, *a, **k), die())
    else:  # everything written to the temporary directory, not yet renamed
        policies._publish = die
    policies.save_policies(new_dir, synthetic_state(1, 2, key=2), algo="ppo", config=config,
                           settings=[{{}}], seeds=[0, 1])
    print("not killed")
    """
)


def assert_same_tree(actual, expected) -> None:
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.parametrize("kill_at", ["orbax", "publish"])
def test_a_killed_save_is_never_loadable(kill_at, tmp_path):
    config = ppo.Config(num_envs=2, num_steps=8, total_timesteps=16, normalize_obs=True)
    old, fresh = tmp_path / "old,grid.lr=[0.1]", tmp_path / "fresh"
    # Kill while overwriting a complete save (orbax) / while saving into an empty job (publish).
    target = old if kill_at == "orbax" else fresh
    script = KILLED_SAVE.format(tests=str(ROOT / "tests"))
    out = subprocess.run(
        [sys.executable, "-c", script, kill_at, str(old) if kill_at == "orbax" else "-", str(target)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the killed save's orbax link stays in here
    )
    assert out.returncode == -9, (out.returncode, out.stdout, out.stderr[-2000:])
    assert list(target.glob(".policies.tmp-*")), "the kill happened while the save was in flight"
    if kill_at == "orbax":  # the earlier complete save is intact and unchanged
        assert_same_tree(policies.load_policies(old).params, synthetic_state(1, 2, key=1).params)
    else:
        with pytest.raises(policies.PoliciesNotFound):
            policies.load_policies(fresh)
    # The next save cleans the leftovers up and is complete.
    policies.save_policies(target, synthetic_state(1, 2, key=3), algo="ppo", config=config,
                           settings=[{}], seeds=[0, 1])
    assert not list(target.glob(".policies.*"))
    saved = policies.load_policies(target)
    assert_same_tree(saved.params, synthetic_state(1, 2, key=3).params)
    np.testing.assert_array_equal(saved.obs_stats.var, synthetic_state(1, 2, key=3).obs_stats.var)


def test_a_failed_save_leaves_the_earlier_one(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    config = ppo.Config(num_envs=2, num_steps=8, total_timesteps=16)
    save = lambda state: policies.save_policies(  # noqa: E731
        tmp_path, state, algo="ppo", config=config, settings=[{}], seeds=[0]
    )
    save(synthetic_state(1, 1, key=1, stats=False))

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save(synthetic_state(1, 1, key=2, stats=False))
    assert not list(tmp_path.glob(".policies.*"))
    saved = policies.load_policies(tmp_path)
    assert_same_tree(saved.params, synthetic_state(1, 1, key=1).params)
    assert saved.obs_stats is None  # normalize_obs=False stores no statistics
    with pytest.raises(ValueError, match=r"leading shape \(1, 1\); allowed: \[setting, seed\] = \(1, 2\)"):
        policies.save_policies(tmp_path, synthetic_state(1, 1, key=1), algo="ppo", config=config,
                               settings=[{}], seeds=[0, 1])


# ---------------------------------------------------------------- purerl-eval
def test_purerl_eval_end_to_end(cartpole_job):
    job, _, _ = cartpole_job
    out = subprocess.run(
        [sys.executable, "-m", "purerl.cli.evaluate", str(job), "--episodes", "3", "--gif"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| setting |     lr | seed | mode          | mean return |" in out.stdout
    table = pd.read_parquet(job / purerl_eval.EVALUATION)
    assert len(table) == 2 * 2 * 2 and set(table["mode"]) == {"deterministic", "stochastic"}
    assert list(table.columns[:6]) == ["setting", "seed", "mode", "mean_return", "std_return", "episodes"]
    assert (table["episodes"] == 3).all() and (table["mean_return"] >= 1).all()
    assert not list(job.glob(".evaluation.parquet.*"))
    gifs = list(job.glob("*.gif"))
    try:
        import pygame  # noqa: F401
    except ImportError:  # classic control renders through Gymnasium's pygame renderer
        assert "no GIF: rendering CartPole-v1 needs pygame" in out.stderr
        assert "pip install 'purerl[render]'" in out.stderr and not gifs
    else:
        assert len(gifs) == 1

    # Reference: the deterministic episodes played one by one with the loaded policy and the
    # plain gymnax env (same reset keys), summing rewards in a Python loop.
    if jax.default_backend() != "cpu":
        return  # whole trajectories are compared on CPU only (tests/conftest.py)
    env, env_params = gymnax.make("CartPole-v1")
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    reset_keys = jax.random.split(jax.random.split(jax.random.PRNGKey(0))[0], 3)
    for setting, seed in [(0, 3), (1, 4)]:
        policy = purerl.load_policy(job, setting, seed)
        returns = []
        for reset_key in reset_keys:
            obs, state = reset(reset_key, env_params)
            total, done = 0.0, False
            while not done:
                obs, state, reward, terminated, truncated, _ = step(reset_key, state, policy(obs), env_params)
                total += float(reward)
                done = bool(terminated) or bool(truncated)
            returns.append(total)
        row = table[(table["setting"] == setting) & (table["seed"] == seed) & (table["mode"] == "deterministic")]
        assert row["mean_return"].item() == pytest.approx(np.mean(returns), rel=1e-6)
        assert row["std_return"].item() == pytest.approx(np.std(returns), rel=1e-6, abs=1e-6)


def test_purerl_eval_catch_gif_and_errors(tmp_path, capsys):
    from PIL import Image

    config = ppo.Config(env="Catch-bsuite", num_envs=2, num_steps=8, total_timesteps=16)
    job = tmp_path / "env=catch"
    policies.save_policies(job, untrained_state(config, 1, 2), algo="ppo", config=config, settings=[{}], seeds=[0, 1])
    # More episodes than the training budget's envs (2 envs × 8 steps = total_timesteps 16), and
    # the multirun folder above the job instead of the job: every job below is evaluated.
    purerl_eval.main([str(tmp_path), "--episodes", "5", "--gif"])
    printed = capsys.readouterr().out
    table = pd.read_parquet(job / purerl_eval.EVALUATION)
    assert len(table) == 4 and (table["episodes"] == 5).all()
    assert table["mean_return"].between(-1, 1).all()  # Catch pays ±1 once per episode
    gif = next(job.glob("episode_setting0_seed*.gif"))
    assert gif.name in printed
    with Image.open(gif) as image:
        assert image.n_frames == 10  # the ball falls from row 0 to row 9: nine steps, ten states
    saved = policies.load_policies(job)
    frames, returns = rendering.record_episode(saved, 0, 0, jax.random.PRNGKey(0))
    assert [int(f.ball_y) for f in frames] == list(range(10))  # the last frame is the real end
    assert returns[-1] in (-1.0, 1.0) and np.all(returns[:-1] == 0)
    assert returns[-1] == (1.0 if int(frames[-1].ball_x) == int(frames[-1].paddle_x) else -1.0)

    with pytest.raises(SystemExit) as exit_info:
        purerl_eval.main([str(tmp_path / "nothing"), "--episodes", "2"])
    assert exit_info.value.code == 2
    assert "no saved policies in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        purerl_eval.main([str(job), "--episodes", "0"])
    assert "--episodes: got '0'; allowed: a positive integer" in capsys.readouterr().err


# ---------------------------------------------------------------- a trained policy
@pytest.mark.slow
@pytest.mark.runtime_bound(seconds=4)
@pytest.mark.xdist_group(PPO_CARTPOLE_DEFAULTS_GROUP)
def test_trained_cartpole_policy_evaluates_at_the_ceiling(ppo_cartpole_defaults, tmp_path):
    # Seed 0 of the PPO-defaults run (PureJaxRL's CartPole settings, 500k steps) that the learning
    # test checks. Measured: all 8 policies of the docs/hydra.md table (seeds 0-3 × ent_coef 0,
    # 0.01) evaluate at 500 deterministically, and so do seeds 0-7 of this run.
    config, result = ppo_cartpole_defaults
    seed0 = jax.tree.map(lambda leaf: leaf[:, :1], result.final_state)
    policies.save_policies(tmp_path, seed0, algo="ppo", config=config, settings=result.settings,
                           seeds=result.seeds[:1])
    table = evaluation.evaluation_table(policies.load_policies(tmp_path), episodes=10)
    deterministic = table[table["mode"] == "deterministic"]
    assert deterministic["episodes"].item() == 10
    assert deterministic["mean_return"].item() >= 475
