"""Stale PPO's lagging actor and off-policy corrections (purerl.algos.stale_ppo): with no staleness
every correction is the synchronous PPO update (purerl.algos.ppo), the lag really is k updates,
staleness × correction is one vmapped program, and purerl-train sweeps it."""

import dataclasses

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import ON_CPU, tol

from purerl import sweep
from purerl.algos import ppo, stale_ppo
from purerl.rl import off_policy_corrections as opc

# The command docs/algorithms.md shows, and the sizes that make it a test: 3 updates, no rollout
# buffer (max_stale=0, so the batch is PPO's), large steps so consecutive policies differ visibly.
DOCUMENTED = ("algo=stale_ppo env=cartpole seeds=2 algo.config.max_staleness=4 grid.staleness=[0,1,4] "
              "grid.correction=[0,1,2,3]")
TINY = ["algo.config.num_envs=2", "algo.config.num_steps=8", "algo.config.total_timesteps=48",
        "algo.config.num_minibatches=2", "algo.config.update_epochs=2", "algo.config.max_stale=0",
        "algo.config.actor_hidden=[8]", "algo.config.critic_hidden=[8]", "algo.hyper.lr=0.02", "seeds=1"]
STALENESS = [0, 1, 4]
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    from purerl.cli import schema

    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR)):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The documented purerl-train sweep (staleness × correction, one vmapped program) at tiny size,
    and synchronous PPO with the same settings alone."""
    from purerl import results
    from purerl.cli.train import build_plan, run_job

    cfg = compose(*DOCUMENTED.split(), *TINY, "compile_cache.enabled=false", "print_table=false",
                  "save_policies=false", "progress=false")
    job = tmp_path_factory.mktemp("stale_ppo") / "job"
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU: the comparison is of float32 programs
        assert run_job(cfg, job) == "complete"
    plan = build_plan(cfg)
    config = ppo.Config(**{f.name: getattr(plan.config, f.name) for f in dataclasses.fields(ppo.Config)})
    hyper = ppo.Hyper(**{f.name: getattr(plan.hyper, f.name) for f in dataclasses.fields(ppo.Hyper)})
    key = jax.random.PRNGKey(plan.seeds[0])
    with jax.default_matmul_precision("highest"):
        train = jax.jit(ppo.make_train(config)).lower(key, hyper).compile(compiler_options=FAST_COMPILE)
    _, sync = jax.device_get(train(key, hyper))
    return pd.read_parquet(job / results.RESULTS).sort_values("update"), sync


def run(curves: pd.DataFrame, correction: int, staleness: int) -> pd.DataFrame:
    """One run's per-update rows."""
    return curves[(curves.correction == correction) & (curves.staleness == staleness)]


@pytest.mark.parametrize("correction", opc.CORRECTIONS)
def test_without_staleness_every_correction_is_the_synchronous_ppo_update(runs, correction):
    curves, sync = runs
    rows = run(curves, opc.correction_code(correction), 0)
    shared = sorted(set(sync) & set(rows.columns) - {"lr", "env_steps"})
    assert {"policy_loss", "value_loss", "approx_kl", "clip_frac", "update_kl", "episode_length"} <= set(shared)
    # Whole (chaotic) trajectories on CPU only; elsewhere the first update, whose rollout both act
    # with the same initial parameters.
    updates = slice(None) if ON_CPU else slice(0, 1)
    for name in shared:
        np.testing.assert_allclose(rows[name].to_numpy()[updates], sync[name][updates], **tol(vmapped=True),
                                   err_msg=name)


def test_the_behaviour_policy_lags_by_k_updates(runs):
    """Update u acts with θ_{max(u − k, 0)}: at update 0 every k acts with the learner's own θ_0;
    at update 1, k = 1 and k = 4 both act with θ_0 (the same rollout); at update 2 with θ_1 vs θ_0."""
    curves, _ = runs
    by_k = {k: run(curves, opc.NONE, k) for k in STALENESS}
    for k, rows in by_k.items():
        np.testing.assert_array_equal(rows.behaviour_lag, float(k))
        assert abs(rows.behaviour_kl.iloc[0]) < 1e-6, k
    kl = {k: rows.behaviour_kl.to_numpy() for k, rows in by_k.items()}
    np.testing.assert_array_equal(kl[0], np.zeros(3) + kl[0])  # k = 0: on-policy throughout
    assert np.all(np.abs(kl[0]) < 1e-6)
    assert kl[1][1] > 1e-4 and kl[1][2] > 1e-4 and kl[4][2] > 1e-4
    np.testing.assert_allclose(kl[1][1], kl[4][1], **tol(vmapped=True))
    for metric in ("episodes", "episode_length"):
        np.testing.assert_allclose(by_k[1][metric].iloc[:2], by_k[4][metric].iloc[:2], **tol(vmapped=True))
    assert not np.isclose(kl[1][2], kl[4][2], rtol=1e-3), "update 2: θ_1 and θ_0 act"


def test_corrections_differ_once_the_data_is_stale(runs):
    curves, _ = runs
    losses = [run(curves, c, 4).policy_loss.iloc[-1] for c in range(len(opc.CORRECTIONS))]
    assert len({round(float(x), 6) for x in losses}) == len(losses), losses


def test_corrections_apply_to_buffered_rollouts_too():
    """K = 1 older rollout and a lag of 1, vmapped over the corrections: from update 1 on every sample
    is off-policy (the buffered rollout and the lagging actor's fresh one) and every correction trains
    on them, each differently."""
    sizes = dict(num_envs=2, num_steps=8, total_timesteps=48, update_epochs=1, num_minibatches=2,
                 actor_hidden=(8,), critic_hidden=(8,))
    config = stale_ppo.Config(**sizes, max_stale=1, max_staleness=1)
    codes = list(range(len(opc.CORRECTIONS)))
    hypers = sweep.grid(stale_ppo.Hyper(lr=0.02, stale_rollouts=1.0, staleness=1.0), correction=codes).hypers
    train = jax.vmap(stale_ppo.make_train(config), in_axes=(None, 0))
    key = jax.random.PRNGKey(0)
    program = jax.jit(train).lower(key, hypers).compile(compiler_options=FAST_COMPILE)
    _, metrics = jax.device_get(program(key, hypers))
    batch = config.num_steps * config.num_envs
    np.testing.assert_array_equal(metrics["stale_samples"], [[batch, 2 * batch, 2 * batch]] * len(codes))
    for name in ("policy_loss", "value_loss", "behaviour_kl", "update_kl"):
        assert np.all(np.isfinite(metrics[name])), name
    assert np.all(metrics["behaviour_kl"][:, 1:] > 1e-5)
    last = metrics["value_loss"][:, -1]
    assert len({round(float(x), 6) for x in last}) == len(codes), last


def test_staleness_beyond_the_kept_history_is_refused():
    from purerl.cli.train import ConfigError, build_plan

    config = stale_ppo.Config(max_stale=1, max_staleness=2)
    too_many = r"staleness: got {}; allowed: a whole number, at most Config\.max_staleness = 2"
    with pytest.raises(ValueError, match=r"Hyper\." + too_many.format(3)):
        stale_ppo.make_train(config)(jax.random.PRNGKey(0), stale_ppo.Hyper(staleness=3.0))
    with pytest.raises(ValueError, match=r"Hyper\.correction: got 1\.5; allowed: 0 \(none\), 1 \(truncated_is\)"):
        stale_ppo.check_hyper(config, stale_ppo.Hyper(correction=1.5))
    with pytest.raises(ValueError, match=r"Hyper\.stale_rollouts: got 0\.5; allowed: a whole number, at most "
                                         r"Config\.max_stale = 1"):
        stale_ppo.check_hyper(config, stale_ppo.Hyper(stale_rollouts=np.asarray([0.0, 0.5])))
    stale_ppo.check_hyper(config, stale_ppo.Hyper(staleness=2.0, stale_rollouts=1.0, correction=3.0))
    with pytest.raises(ValueError, match=r"Config\.max_staleness: got -1; allowed: a non-negative integer"):
        stale_ppo.Config(max_staleness=-1)
    with pytest.raises(ConfigError, match=r"grid\." + too_many.format(4)):
        build_plan(compose(*DOCUMENTED.split(), "algo.config.max_staleness=2"))
    with pytest.raises(ConfigError, match=r"algo\.hyper\.staleness: got 5; allowed: a whole number, at most"):
        build_plan(compose("algo=stale_ppo", "algo.hyper.staleness=5"))


def test_the_documented_sweep_trains_every_cell(runs):
    curves, _ = runs
    cells = set(zip(curves.staleness, curves.correction, strict=True))
    assert cells == {(k, c) for k in (0.0, 1.0, 4.0) for c in (0.0, 1.0, 2.0, 3.0)}
    assert np.all(np.isfinite(curves.policy_loss)) and np.all(curves.hyper_ok == 1)


def test_the_docs_show_the_tested_command():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "algorithms.md").read_text()
    assert f"purerl-train {DOCUMENTED}\n" in page
