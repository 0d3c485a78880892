"""Config composition and validation: every bad override fails naming the key, before JAX compiles."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from experiments import schema
from experiments.train import ConfigError, build_plan, run_job
from purerl.algos import ALGORITHMS, get_algorithm

CONF = str(schema.CONF_DIR)
ENVS = sorted(p.stem for p in (schema.CONF_DIR / "env").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (schema.CONF_DIR / "experiment").glob("*.yaml"))


def compose_cfg(*overrides: str, hydra_node: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_node)


class Trained(Exception):
    pass


@pytest.fixture
def training(monkeypatch):
    """Records (and stops at) any attempt to build or compile a training program."""
    calls = []

    def record(name):
        def fake(*args, **kwargs):
            calls.append(name)
            raise Trained(name)

        return fake

    import purerl.sweep

    monkeypatch.setattr(purerl.sweep, "run", record("sweep.run"))
    for name in ALGORITHMS:
        monkeypatch.setattr(get_algorithm(name), "make_train", record(f"{name}.make_train"))
    monkeypatch.setattr(jax, "jit", record("jax.jit"))
    return calls


def test_default_and_grid_plan():
    cfg = compose_cfg("seeds=3", "grid.clip_eps=[0.1,0.2,0.3]", "grid.gae_lambda=[0.9,0.95]")
    plan = build_plan(cfg)
    assert plan.algo == "ppo" and plan.config.env == "CartPole-v1"
    assert len(plan.sweep) == 6 and plan.seeds == [0, 1, 2]
    # axes in Hyper field order (gae_lambda before clip_eps), the last varying fastest
    assert plan.sweep.settings[1] == {"gae_lambda": 0.9, "clip_eps": 0.2}


def test_control_a_valid_config_reaches_training(training, tmp_path):
    with pytest.raises(Trained):
        run_job(compose_cfg("grid.clip_eps=[0.1,0.2]", "compile_cache.enabled=false"), tmp_path)
    assert training, "the guard must see training start, or the no-training assertions prove nothing"


def test_fingerprint_tracks_what_is_trained():
    a = build_plan(compose_cfg("grid.clip_eps=[0.1,0.2]")).fingerprint
    assert a == build_plan(compose_cfg("grid.clip_eps=[0.1,0.2]", "force=true", "progress=true")).fingerprint
    assert a != build_plan(compose_cfg("grid.clip_eps=[0.1,0.3]")).fingerprint
    assert a != build_plan(compose_cfg("grid.clip_eps=[0.1,0.2]", "algo.config.num_envs=8")).fingerprint


# Env presets an algorithm is checked with, where the default (cartpole, then pendulum for
# continuous actions and breakout for MinAtar sizes and gamma) does not fit it.
ENV_PRESETS = {"bandit": ("bernoulli_bandit", "gaussian_bandit")}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_registered_algorithm_composes(name):
    module = get_algorithm(name)
    presets = ENV_PRESETS.get(name, ("cartpole", "pendulum", "breakout"))
    cfg = compose_cfg(f"algo={name}", f"env={presets[0]}")
    assert set(cfg.algo.config) == {f.name for f in dataclasses.fields(module.Config)}
    assert set(cfg.algo.hyper) == {f.name for f in dataclasses.fields(module.Hyper)}
    plan = build_plan(cfg)
    assert plan.config == module.Config(**{k: v for k, v in plan.config.__dict__.items()})
    for env in presets[1:]:
        assert (
            build_plan(compose_cfg(f"algo={name}", f"env={env}")).config.env
            == compose_cfg(f"env={env}").algo.config.env
        )


@pytest.mark.parametrize("env", ENVS)
def test_env_presets_build_valid_configs(env):
    cfg = compose_cfg(f"env={env}")
    plan = build_plan(cfg)
    assert plan.config.env == cfg.algo.config.env
    # command-line overrides beat the env preset
    assert compose_cfg(f"env={env}", "algo.config.num_envs=2").algo.config.num_envs == 2


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_presets_build(experiment):
    plan = build_plan(compose_cfg(f"experiment={experiment}"))
    assert plan.experiment == experiment and len(plan.sweep) >= 2


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("basic", "BasicLauncher"),
        ("parallel", "JoblibLauncher"),
        ("slurm", "SlurmLauncher"),
        ("ray", "RayLauncher"),
    ],
)
def test_launcher_presets_compose(launcher, target):
    cfg = compose_cfg(f"hydra/launcher={launcher}", hydra_node=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "parallel":
        assert cfg.hydra.launcher.n_jobs == 2


def test_job_dir_is_named_by_overrides():
    cfg = compose_cfg("env=acrobot", "algo.config.num_envs=4", "force=true", "name=x", hydra_node=True)
    assert cfg.hydra.sweep.subdir == "algo.config.num_envs=4,env=acrobot"  # force, name excluded
    assert cfg.hydra.sweep.dir == "multirun/x"
    assert compose_cfg(hydra_node=True).hydra.run.dir == "outputs/default/base"


@pytest.mark.parametrize(
    "override, key",
    [
        ("algo.hyper.clip_epss=0.1", "clip_epss"),  # misspelt traced field
        ("algo.config.num_env=4", "num_env"),  # misspelt static field
        ("grid.clip_epss=[0.1,0.2]", "grid.clip_epss"),  # misspelt grid axis
        ("seedz=4", "seedz"),
        ("algo.hyper.clip_eps=abc", "algo.hyper.clip_eps"),  # wrong types
        ("algo.config.num_envs=4.5", "algo.config.num_envs"),
        ("seeds=two", "seeds"),
        ("grid.clip_eps=[0.1,abc]", "grid.clip_eps"),
        ("grid_mode=diagonal", "grid_mode"),
    ],
)
def test_bad_overrides_fail_at_composition_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(override)
    message = str(info.value) + str(info.value.__cause__)
    assert key in message


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["algo.hyper.gae_lambda=1.5"], ["algo.hyper.gae_lambda", "1.5", "[0, 1]"]),
        (["algo.hyper.lr=0"], ["algo.hyper.lr", "(0, inf)"]),
        (["grid.gae_lambda=[0.9,1.5]"], ["grid.gae_lambda", "1.5", "[0, 1]"]),
        (["grid.num_envs=[4,8]"], ["grid.num_envs", "static", "-m algo.config.num_envs="]),
        (["grid.clip_eps=[]"], ["grid.clip_eps", "non-empty"]),
        (["algo.config.num_minibatches=3"], ["algo.config.num_minibatches", "divide"]),
        (["algo.config.env=CartPole-v9"], ["algo.config.env", "CartPole-v9"]),
        (["algo.config.distribution=gaussian"], ["algo.config.distribution"]),
        (["seeds=0"], ["seeds"]),
        (["grid_mode=zip", "grid.lr=[0.1]", "grid.gamma=[0.9,0.99]"], ["grid_mode", "equal length"]),
    ],
)
def test_bad_values_fail_before_compiling_naming_the_key(overrides, needles, training, tmp_path):
    cfg = compose_cfg(*overrides, "compile_cache.enabled=false")
    with pytest.raises(ConfigError) as info:
        run_job(cfg, tmp_path)
    for needle in needles:
        assert needle in str(info.value)
    assert training == []
    assert '"status": "failed"' in (tmp_path / "job.json").read_text()


def test_cli_reports_bad_override_and_writes_nothing(tmp_path):
    env = {**os.environ, "PURERL_COMPILE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "algo.hyper.gae_lambda=1.5",
            f"hydra.run.dir={tmp_path}/job",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "algo.hyper.gae_lambda: got 1.5; allowed: [0, 1]" in proc.stderr
    assert not (tmp_path / "job" / "results.parquet").exists()
    assert '"status": "failed"' in (tmp_path / "job" / "job.json").read_text()


def test_resolved_config_round_trips():
    from experiments.train import resolved_config_text

    cfg = compose_cfg("grid.clip_eps=[0.1,0.2]")
    loaded = OmegaConf.create(resolved_config_text(cfg))
    assert dict(loaded.grid) == {"clip_eps": [0.1, 0.2]}
    assert loaded.algo.config.env == "CartPole-v1" and loaded.compile_cache.dir
