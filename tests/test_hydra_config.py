"""Config composition and validation: every bad override fails naming the key, before JAX compiles."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from purerl import sweep
from purerl.algos import ALGORITHMS, get_algorithm
from purerl.cli import schema
from purerl.cli.train import ConfigError, build_plan, run_job

CONF = str(schema.CONF_DIR)
ENVS = sorted(p.stem for p in (schema.CONF_DIR / "env").glob("*.yaml"))
# `purerl-train` presets (`# @package _global_`). An experiment that trains outside purerl-train
# (softmax_vs_linear's recall models) keeps a plain recipe there instead, loaded by experiments.lab
# (tests/test_experiments_attention.py::test_every_scale_loads).
EXPERIMENTS = sorted(
    p.stem for p in (schema.CONF_DIR / "experiment").glob("*.yaml") if "@package _global_" in p.read_text()
)
# Measurement experiments whose preset is the one small set-up they account for, not a grid.
SINGLE_CELL_PRESETS = {"rlhf_memory"}


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
# DQN needs discrete actions (its Pendulum mismatch is tested in tests/test_dqn.py) and has
# a Q network instead of actor/critic sizes.
ENV_PRESETS = {
    "bandit": ("bernoulli_bandit", "gaussian_bandit"),
    "dqn": ("cartpole", "acrobot"),
    "sac": ("pendulum", "cartpole", "breakout"),
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_registered_algorithm_composes(name):
    module = get_algorithm(name)
    # Language-model algorithms (purerl/llm) have tasks instead of a gymnax env.
    has_env = "env" in {f.name for f in dataclasses.fields(module.Config)}
    presets = ENV_PRESETS.get(name, ("cartpole", "pendulum", "breakout")) if has_env else ()
    # `~env` drops the env group for them (as conf/experiment/llm_rl_smoke.yaml does).
    cfg = compose_cfg(f"algo={name}", *(f"env={p}" for p in presets[:1]) if has_env else ["~env"])
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
    # A preset sweeps an in-job grid, or (static axes such as kv_cache_4x's H_kv) a multirun axis,
    # or is one cell of an experiment whose scale trains several jobs (on_vs_off_policy's algorithms).
    from experiments import lab

    multirun = compose_cfg(f"experiment={experiment}", hydra_node=True).hydra.sweeper.get("params") or {}
    has_scales = (schema.CONF_DIR / "experiment" / experiment / "ci.yaml").exists()
    jobs = (lab.load_plan(experiment, ["scale=ci"]).get("jobs") or {}) if has_scales else {}
    assert plan.experiment == experiment
    sweeps = len(plan.sweep) >= 2 or any(len(str(v).split(",")) >= 2 for v in multirun.values()) or len(jobs) >= 2
    assert sweeps or experiment in SINGLE_CELL_PRESETS


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("basic", "BasicLauncher"),
        ("parallel", "JoblibLauncher"),
    ],  # the Ray and SLURM presets, which need their plugins: tests/test_launchers.py
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
            "purerl.cli.train",
            "algo.hyper.gae_lambda=1.5",
            f"hydra.run.dir={tmp_path}/job",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    # One line naming key, value and what is allowed; exit status 2; nothing written.
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["purerl-train: error: algo.hyper.gae_lambda: got 1.5; allowed: [0, 1]"]
    assert not (tmp_path / "job").exists()


def test_resolved_config_round_trips():
    from purerl.cli.train import resolved_config_text

    cfg = compose_cfg("grid.clip_eps=[0.1,0.2]")
    loaded = OmegaConf.create(resolved_config_text(cfg))
    assert dict(loaded.grid) == {"clip_eps": [0.1, 0.2]}
    assert loaded.algo.config.env == "CartPole-v1" and loaded.compile_cache.dir


# ---------------------------------------------------------------- command-line errors
@pytest.mark.parametrize(
    "override, expected",
    [
        ("grid.foo=[1,2]", "grid.foo: unknown key; allowed: traced fields of ppo: lr, gamma, gae_lambda, ent_coef"),
        ("algo=trpo grid.cg_itrs=[1]", "grid.cg_itrs: unknown key; allowed: traced fields of trpo: "),
        ("algo.hyper.clip_eps=abc", "algo.hyper.clip_eps: got 'abc'; allowed: a number"),
        ("grid.clip_eps=[0.1,abc]", "grid.clip_eps[1]: got 'abc'; allowed: a number"),
        ("seeds=two", "seeds: got 'two'; allowed: an integer"),
        ("max_batch=0", "max_batch: got 0; allowed: a positive integer or null"),
        ("seedz=3", "seedz: unknown key; allowed: name, algo, seeds, first_seed, grid"),
        ("algo.config.num_env=3", "algo.config.num_env: unknown key; allowed: env, env_kwargs, num_envs"),
        ("algo=ppo_schema", "algo: got 'ppo_schema'; allowed: a2c, "),
        ("env=cartpol", "env: got 'cartpol'; allowed: acrobot, asterix"),
        ("grid.clip_eps=[0.1,0.2,0.1]", "grid.clip_eps: 0.1 listed more than once"),
        ("grid_mode=zip grid.lr=[0.1,0.1] grid.gamma=[0.9,0.9]", "grid: the zipped lists repeat a setting"),
        ("grid.clip_eps=0.1", "grid.clip_eps: got 0.1; allowed: a list of values, e.g. grid.clip_eps=[0.1]"),
        ("algo=grpo", "env: grpo trains on its own task, not a gymnax env; drop the env group: add '~env'"),
        ("algo=grpo ~env algo.config.task_kwargs={num_digits:1}",
         "algo.config.task_kwargs.num_digits: not a key of algo.config.task_kwargs yet; add it with '+'"),
    ],
)
def test_command_line_errors_are_one_line(override, expected, tmp_path):
    from purerl.cli.train import validate_command_line

    errors = validate_command_line([*override.split(), f"hydra.run.dir={tmp_path}/job"])
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(expected), errors[0]
    assert not (tmp_path / "job").exists()


def test_valid_command_lines_pass_validation(tmp_path):
    from purerl.cli.train import validate_command_line

    assert validate_command_line(["grid.clip_eps=[0.1,0.2]", f"hydra.run.dir={tmp_path}/a"]) == []
    assert validate_command_line(["-m", "env=cartpole,acrobot", f"hydra.sweep.dir={tmp_path}/b"]) == []
    assert validate_command_line(["--help"]) == [] and validate_command_line(["--cfg", "job"]) == []


def test_multirun_validates_every_job_before_the_first(tmp_path):
    from purerl.cli.train import validate_command_line

    errors = validate_command_line(
        ["-m", "algo.hyper.ent_coef=0.0,-1,0.01", "env=cartpole,acrobot", f"hydra.sweep.dir={tmp_path}/s"]
    )
    assert errors == [
        "job algo.hyper.ent_coef=-1 env=cartpole: algo.hyper.ent_coef: got -1; allowed: [0, inf)",
        "job algo.hyper.ent_coef=-1 env=acrobot: algo.hyper.ent_coef: got -1; allowed: [0, inf)",
        "nothing was started: 2 of 6 jobs are invalid",
    ]
    assert not (tmp_path / "s").exists()


def test_schema_nodes_are_not_algorithm_choices():
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        options = GlobalHydra.instance().config_loader().get_group_options("algo")
        assert sorted(options) == sorted(ALGORITHMS)
        with pytest.raises(Exception, match="ppo_schema"):
            compose("config", overrides=["algo=ppo_schema"])


def test_strings_where_numbers_belong_name_the_field_in_the_python_api():
    cfg = OmegaConf.create(OmegaConf.to_container(compose_cfg(), resolve=True))  # untyped: no schema
    cfg.algo.hyper.clip_eps = "abc"
    with pytest.raises(ConfigError, match=r"^algo.hyper.clip_eps: got 'abc'; allowed: a number in \(0, inf\)$"):
        build_plan(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(compose_cfg(), resolve=True))
    cfg.grid = {"lr": [0.1, "fast"]}
    with pytest.raises(ConfigError, match=r"^grid.lr: got 'fast'; allowed: numbers in \(0, inf\)"):
        build_plan(cfg)


# ---------------------------------------------------------------- rerunning finished jobs
def _complete_job(job_dir, plan):
    """A finished job folder recorded as made by `plan` (tiny stand-in tables)."""
    from purerl import results as res

    table = pd.DataFrame({"seed": [0], "setting": [0], "final_return": [1.0], "diverged": [False]})
    res.write_job(job_dir, table, table, "x: 1\n", **plan.record)
    return (job_dir / res.STATUS).read_bytes()


def test_fingerprint_includes_purerl_source_and_library_versions(monkeypatch):
    from purerl import provenance

    base = build_plan(compose_cfg())
    assert set(base.provenance["versions"]) == {"jax", "jaxlib", "gymnax", "flax", "optax", "distrax"}
    assert base.provenance["source_digest"] == provenance.hash_source_tree(provenance.PACKAGE_ROOT)
    monkeypatch.setattr(provenance, "source_digest", lambda: "0" * 64)
    edited = build_plan(compose_cfg())
    assert edited.config_fingerprint == base.config_fingerprint and edited.fingerprint != base.fingerprint
    monkeypatch.setattr(provenance, "dependency_versions", lambda: {**base.provenance["versions"], "optax": "9"})
    upgraded = build_plan(compose_cfg())
    assert upgraded.fingerprint not in (base.fingerprint, edited.fingerprint)


def test_source_digest_changes_with_any_source_edit(tmp_path):
    from purerl import provenance

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    before = provenance.hash_source_tree(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    assert provenance.hash_source_tree(tmp_path / "pkg") == before
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2  # a comment\n")
    assert provenance.hash_source_tree(tmp_path / "pkg") != before


def test_rerun_after_a_code_or_library_change_is_refused(tmp_path, monkeypatch, training):
    from purerl import provenance
    from purerl import results as res

    cfg = compose_cfg("grid.clip_eps=[0.1,0.2]", "print_table=false", "compile_cache.enabled=false")
    job = tmp_path / "job"
    status = _complete_job(job, build_plan(cfg))
    assert run_job(cfg, job) == "skipped" and training == []

    with monkeypatch.context() as patch:  # purerl's source edited since the job finished
        patch.setattr(provenance, "source_digest", lambda: "f" * 64)
        with pytest.raises(ConfigError) as info:
            run_job(cfg, job)
    message = str(info.value)
    assert "\n" not in message and str(job) in message
    assert f"purerl source {provenance.hash_source_tree(provenance.PACKAGE_ROOT)[:8]} (now ffffffff)" in message
    assert "force=true" in message and "name=" in message
    assert training == [] and (job / res.STATUS).read_bytes() == status  # untouched, still complete

    versions = provenance.dependency_versions()
    with monkeypatch.context() as patch:  # a library upgraded since
        patch.setattr(provenance, "dependency_versions", lambda: {**versions, "jax": "99.0"})
        with pytest.raises(ConfigError, match=rf"jax {versions['jax']} \(now 99.0\)"):
            run_job(cfg, job)
    with pytest.raises(ConfigError, match="another configuration"):
        run_job(compose_cfg("grid.clip_eps=[0.1,0.3]", "print_table=false"), job)
    assert res.is_complete(job) and (job / res.STATUS).read_bytes() == status

    with pytest.raises(Trained):  # force=true replaces them
        run_job(compose_cfg("grid.clip_eps=[0.1,0.2]", "force=true", "compile_cache.enabled=false"), job)
    assert training


def test_job_from_before_provenance_is_refused_not_reused(tmp_path, training):
    from purerl import results as res

    cfg = compose_cfg("print_table=false")
    plan = build_plan(cfg)
    table = pd.DataFrame({"seed": [0]})
    res.write_job(tmp_path, table, table, "x\n", fingerprint=plan.config_fingerprint)  # what older purerl wrote
    with pytest.raises(ConfigError, match="purerl source unrecorded"):
        run_job(cfg, tmp_path)
    assert training == []


@pytest.mark.parametrize("override", ["max_batch=0", "algo.hyper.gae_lambda=1.5", "seeds=0"])
def test_a_bad_rerun_never_downgrades_a_complete_job(override, tmp_path, training):
    from purerl import results as res

    job = tmp_path / "job"
    status = _complete_job(job, build_plan(compose_cfg("print_table=false")))
    with pytest.raises(ConfigError):
        run_job(compose_cfg(override, "print_table=false"), job)
    with pytest.raises(ConfigError):  # forced or not
        run_job(compose_cfg(override, "force=true"), job)
    assert training == []
    assert res.is_complete(job) and (job / res.STATUS).read_bytes() == status


def test_progress_is_on_by_default_when_stderr_is_a_terminal():
    from purerl.cli.train import progress_wanted

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    cfg = compose_cfg()
    assert cfg.progress == "auto"
    assert progress_wanted(cfg.progress, Stream(True)) and not progress_wanted(cfg.progress, Stream(False))
    assert progress_wanted(compose_cfg("progress=true").progress, Stream(False))
    assert not progress_wanted(compose_cfg("progress=false").progress, Stream(True))
    with pytest.raises(ConfigError, match=r"^progress: got 'yes'; allowed: auto, true, false$"):
        build_plan(compose_cfg("progress=yes"))


def test_progress_bar_advances_once_per_update_of_every_chunk_and_tensorboard_has_the_metrics(
    tmp_path, monkeypatch
):
    import purerl.cli.train as train

    bars = []

    def recording(plan):
        bar = original(plan)
        bars.append(bar)
        return bar

    original = train._progress_bar
    monkeypatch.setattr(train, "_progress_bar", recording)
    cfg = compose_cfg(
        "seeds=2", "max_batch=1", "progress=true", "print_table=false", "compile_cache.enabled=false",
        "algo.config.num_envs=2", "algo.config.num_steps=8", "algo.config.total_timesteps=48",
        "algo.config.update_epochs=1", "algo.config.num_minibatches=1", "tensorboard=true",
        "grid.clip_eps=[0.1,0.3]", "algo.config.eval_every=2", "algo.config.eval_episodes=2",
        "algo.config.update_eval_every=2",
    )
    assert run_job(cfg, tmp_path) == "complete"
    (bar,) = bars
    num_updates = 48 // (2 * 8)
    chunks = sweep.chunk_count(4, 1, len(jax.local_devices()))
    assert bar.bar.total == num_updates * chunks
    assert bar.calls == num_updates * chunks  # one tick per update, not one per chunk

    # The event files, read back by TensorBoard's own reader, hold the job's metrics.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from purerl import results as res
    from purerl.watch import run_name

    table = pd.read_parquet(tmp_path / "results.parquet")
    runs = sorted((tmp_path / "tensorboard").iterdir())
    assert [r.name for r in runs] == sorted(run_name(s, k) for s in (0, 1) for k in (0, 1))
    for (setting, seed), rows in table.groupby(["setting", "seed"]):
        events = EventAccumulator(str(tmp_path / "tensorboard" / run_name(setting, seed)))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"entropy", "policy_loss", "env_steps"} <= tags
        assert np.isfinite(rows.eval_return).tolist() == [False, True, False]  # after update 2 of 3
        for name in ("eval_before", "eval_after", "eval_before_repeat"):  # on updates 0 and 2 of 3
            assert np.isfinite(rows[name]).tolist() == [True, False, True], name
        for tag in ("entropy", "policy_loss", "env_steps", "episode_return", "eval_return"):
            finite = rows[np.isfinite(rows[tag])]
            if finite.empty:  # no episode finished in these few steps: NaN values are left out
                assert tag not in tags
                continue
            scalars = events.Scalars(tag)
            assert [e.step for e in scalars] == finite.env_steps.tolist()  # one point per update
            np.testing.assert_allclose([e.value for e in scalars], finite[tag], rtol=1e-6)
        assert len(events.Scalars("entropy")) == num_updates
    assert not res.damage(tmp_path)  # the event files are not result files

    from purerl.cli.analyze import main as analyze

    assert analyze([str(tmp_path), "--by", "clip_eps", "--curve-metric", "eval_return", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
