"""End to end: a real `purerl-train` multirun (2 Hydra values) × in-job grid 2 × 2 seeds.

One tiny multirun (PPO CartPole, 16 updates of 4 envs × 32 steps) is shared by the module;
the second job and every rerun hit the persistent compilation cache of the first.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import trim_mean

import analysis
from purerl import results as res
from purerl.algos import ppo

LRS = [0.00025, 0.0025]
GOOD = ["0.0", "0.01"]
OVERRIDES = [
    "name=t",
    "seeds=2",
    "algo.config.num_envs=4",
    "algo.config.num_steps=32",
    "algo.config.total_timesteps=2048",
    "grid.lr=[0.00025,0.0025]",
    "algo.hyper.ent_coef=0.0,0.01",
]
NUM_UPDATES = 2048 // (4 * 32)


def job_name(ent_coef: str) -> str:
    return (
        "algo.config.num_envs=4,algo.config.num_steps=32,algo.config.total_timesteps=2048,"
        f"algo.hyper.ent_coef={ent_coef},grid.lr=[0.00025,0.0025],seeds=2"
    )


def result_mtimes(job: Path) -> dict[str, int]:
    return {name: (job / name).stat().st_mtime_ns for name in (res.RESULTS, res.SUMMARY, res.CONFIG, res.STATUS)}


def purerl_train(
    sweep_dir: Path, cache: Path, *extra: str, overrides=OVERRIDES, cwd=None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PURERL_COMPILE_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "purerl.cli.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=cwd,
    )


# Under `pytest -n 2 --dist loadgroup` one worker runs this whole module, so the
# module-scoped fixture below is built once.
pytestmark = pytest.mark.xdist_group(__name__)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("hydra_sweep")
    cache = tmp_path_factory.getbasetemp() / "jax-cache"
    proc = purerl_train(root / "sweep", cache)
    return root / "sweep", cache, proc


def test_multirun_runs_every_job(sweep):
    sweep_dir, _, proc = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    for value in GOOD:
        assert res.is_complete(sweep_dir / job_name(value)), proc.stderr[-3000:]
    jobs = analysis.jobs(sweep_dir)
    assert sorted(jobs.status) == ["complete", "complete"]


def test_an_invalid_job_stops_the_multirun_before_anything_runs(tmp_path):
    overrides = [o if not o.startswith("algo.hyper.ent_coef") else "algo.hyper.ent_coef=0.0,-1,0.01" for o in OVERRIDES]
    proc = purerl_train(tmp_path / "sweep", tmp_path / "cache", overrides=overrides)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "purerl-train: error: job algo.hyper.ent_coef=-1: algo.hyper.ent_coef: got -1; allowed: [0, inf)",
        "purerl-train: error: nothing was started: 1 of 3 jobs are invalid",
    ]
    assert not (tmp_path / "sweep").exists()


def test_rows_and_columns(sweep):
    sweep_dir = sweep[0]
    df = analysis.load(sweep_dir, table="results", quiet=True)
    hyper = [f.name for f in dataclasses.fields(ppo.Hyper)]
    static = [f.name for f in dataclasses.fields(ppo.Config) if f.name != "env"]
    ids = ["job", "experiment", "algo", "env", "seed", "setting", *hyper, *static, "update", "env_steps"]
    assert list(df.columns[: len(ids)]) == ids
    metrics = set(df.columns[len(ids) :])
    assert {
        "episode_return",
        "episode_length",
        "policy_loss",
        "value_loss",
        "entropy",
        "metric_lr",
    } <= metrics
    # 2 jobs × 2 settings × 2 seeds × 16 updates, each combination exactly once
    assert len(df) == 2 * 2 * 2 * NUM_UPDATES
    combos = df.groupby(["ent_coef", "lr", "seed", "update"]).size()
    assert len(combos) == len(df) and (combos == 1).all()
    assert sorted(df.ent_coef.unique()) == [0.0, 0.01]
    assert sorted(df.lr.unique()) == LRS
    assert sorted(df.seed.unique()) == [0, 1]
    assert sorted(df.setting.unique()) == [0, 1]
    assert (df.experiment == "t").all() and (df.algo == "ppo").all() and (df.env == "CartPole-v1").all()
    assert (df.num_envs == 4).all() and (df.num_steps == 32).all() and (df.clip_eps == 0.2).all()
    assert sorted(df.env_steps.unique()) == [128 * (u + 1) for u in range(NUM_UPDATES)]

    summary = analysis.load(sweep_dir, quiet=True)
    assert len(summary) == 8
    assert {"final_return", "auc", "diverged", "diverged_update", "wall_seconds", "compile_seconds"} <= set(
        summary.columns
    )
    assert not summary.diverged.any()
    # summary agrees with the per-update rows: final return = mean over the last 10% (2 updates)
    last = df[df["update"] >= NUM_UPDATES - 2].groupby(["ent_coef", "lr", "seed"]).episode_return.mean()
    got = summary.set_index(["ent_coef", "lr", "seed"]).final_return
    pd.testing.assert_series_equal(got.sort_index(), last.sort_index(), check_names=False, check_dtype=False)
    config_text = (sweep_dir / job_name("0.0") / "config.yaml").read_text()
    assert "ent_coef: 0.0" in config_text and "total_timesteps: 2048" in config_text


def test_table_equals_hand_computation(sweep):
    summary = analysis.load(sweep[0], quiet=True)
    table = analysis.aggregate(summary, by=["ent_coef", "lr"], metric="final_return", stat="mean")
    assert len(table) == 4
    for row in table.itertuples():
        runs = summary[(summary.ent_coef == row.ent_coef) & (summary.lr == row.lr)].final_return.to_numpy()
        assert len(runs) == 2 and row.n_runs == 2 and row.n_diverged == 0
        assert row.mean == pytest.approx(sum(runs) / 2)
        assert row.ci_low <= row.mean <= row.ci_high
        assert min(runs) <= row.ci_low and row.ci_high <= max(runs)  # resampled means of 2 values


def test_iqm_equals_scipy_trim_mean(sweep):
    summary = analysis.load(sweep[0], quiet=True)
    table = analysis.aggregate(summary, by="lr", metric="auc", stat="iqm")
    for row in table.itertuples():
        values = summary[summary.lr == row.lr].auc.to_numpy()
        assert len(values) == 4 and row.n_runs == 4
        assert row.iqm == pytest.approx(trim_mean(values, 0.25))


def test_rerun_skips_finished_jobs_without_training(sweep, monkeypatch):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import purerl.sweep
    from purerl.cli import schema
    from purerl.cli.train import run_job

    job = sweep[0] / job_name("0.0")
    overrides = list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    calls = []

    def no_training(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a finished job must not train again")

    monkeypatch.setattr(purerl.sweep, "run", no_training)
    monkeypatch.setattr(ppo, "make_train", no_training)
    before = result_mtimes(job)
    assert run_job(cfg, job) == "skipped"
    assert calls == []
    assert result_mtimes(job) == before
    # force=true does train again (here: builds the program and reaches the patched sweep.run)
    monkeypatch.undo()
    monkeypatch.setattr(purerl.sweep, "run", no_training)
    with initialize_config_dir(version_base="1.3", config_dir=str(schema.CONF_DIR)):
        forced = compose("config", overrides=[*overrides, "force=true", "compile_cache.enabled=false"])
    with pytest.raises(AssertionError, match="must not train"):
        run_job(forced, job)
    assert calls and not res.is_complete(job)  # invalidated before training; restored below
    res.write_job(
        job,
        pd.read_parquet(job / res.RESULTS),
        pd.read_parquet(job / res.SUMMARY),
        (job / res.CONFIG).read_text(),
        **{k: v for k, v in res.read_status(job).items() if k not in ("status", "pid", "started")},
    )


def test_rerun_after_kill_redoes_only_the_unfinished_job(sweep):
    sweep_dir, cache, _ = sweep
    done, killed = sweep_dir / job_name("0.0"), sweep_dir / job_name("0.01")
    kept = result_mtimes(done)
    old_summary = pd.read_parquet(killed / res.SUMMARY)
    res.mark_running(killed)  # what a job killed halfway leaves: a 'running' status
    assert analysis.jobs(sweep_dir).set_index("job").loc[job_name("0.01"), "status"] == "incomplete"

    proc = purerl_train(sweep_dir, cache)
    log = proc.stdout + proc.stderr
    assert f"skipping {done}" in log, log[-3000:]
    assert result_mtimes(done) == kept
    assert res.is_complete(killed), log[-3000:]
    new_summary = pd.read_parquet(killed / res.SUMMARY)
    cols = ["seed", "setting", "final_return", "auc"]
    pd.testing.assert_frame_equal(new_summary[cols], old_summary[cols])  # same program, same numbers
    assert new_summary.compile_seconds.iloc[0] != old_summary.compile_seconds.iloc[0]  # it did rerun


def test_a_truncated_result_file_is_reported_and_only_its_job_reruns(sweep, capsys):
    from purerl.cli.analyze import main

    sweep_dir, cache, _ = sweep
    intact, damaged = sweep_dir / job_name("0.0"), sweep_dir / job_name("0.01")
    kept = result_mtimes(intact)
    old_results = pd.read_parquet(damaged / res.RESULTS)
    data = (damaged / res.RESULTS).read_bytes()
    (damaged / res.RESULTS).write_bytes(data[: len(data) // 2])

    assert main([str(sweep_dir), "--by", "ent_coef", "lr", "--out", str(sweep_dir / "damaged-analysis")]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"[damaged] {job_name('0.01')}: {res.RESULTS} size mismatch ({len(data) // 2} bytes, recorded {len(data)})"
    ]
    assert f"{sweep_dir}: 1/2 jobs complete, 4 runs" in out

    proc = purerl_train(sweep_dir, cache)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"skipping {intact}" in log and f"[damaged] {damaged}: {res.RESULTS} size mismatch" in log, log[-3000:]
    assert result_mtimes(intact) == kept  # the intact job was not touched
    assert res.job_state(damaged) == ("complete", "")
    cols = ["seed", "setting", "update", "episode_return", "policy_loss"]
    pd.testing.assert_frame_equal(pd.read_parquet(damaged / res.RESULTS)[cols], old_results[cols])
    assert main([str(sweep_dir), "--by", "ent_coef", "lr", "--no-plots", "--out", str(sweep_dir / "again")]) == 0
    assert f"{sweep_dir}: 2/2 jobs complete, 8 runs" in capsys.readouterr().out


def test_purerl_analyze_writes_table_and_plots(sweep, capsys):
    from purerl.cli.analyze import main

    sweep_dir = sweep[0]
    assert main([str(sweep_dir), "--by", "ent_coef", "lr", "--metric", "final_return", "--stat", "iqm"]) == 0
    out = capsys.readouterr().out
    summary = analysis.load(sweep_dir, quiet=True)
    expected = analysis.to_markdown(analysis.aggregate(summary, by=["ent_coef", "lr"], stat="iqm"))
    assert expected in out
    assert (sweep_dir / "table.md").read_text() == expected
    assert "\\begin{tabular}" in (sweep_dir / "table.tex").read_text()
    for name in ("curves.png", "heatmap.png"):
        assert (sweep_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pools runs" not in out  # both varying axes are the heatmap's axes

    # When another varying column shares the cells, the title names it.
    from analysis import plots

    figure = plots.heatmap(summary, x="lr", y="seed", pooled=("ent_coef",))
    assert "pooled over ent_coef" in figure.get_suptitle()
    assert figure.get_suptitle().startswith("PPO on CartPole-v1, 2 seeds per setting")


def test_notebook_executes(sweep, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    path = Path(__file__).resolve().parent.parent / "analysis" / "notebooks" / "ablation.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    monkeypatch.setenv("PURERL_SWEEP_DIR", str(sweep[0]))
    # The kernel runs in tmp_path: make it import this checkout, not an installed copy.
    root = str(path.parent.parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "IQM final_return" in text and "8 runs" in text
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # learning curves and heatmap


def test_rerun_after_editing_purerl_is_refused(sweep, tmp_path):
    """The same command in a checkout whose purerl source differs by one comment."""
    import shutil

    sweep_dir, cache, _ = sweep
    root = Path(__file__).resolve().parent.parent
    for folder in ("purerl", "experiments", "analysis", "conf"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "purerl" / "envs.py", "a") as f:
        f.write("# an edit after the sweep finished\n")
    kept = {v: result_mtimes(sweep_dir / job_name(v)) for v in GOOD}

    proc = purerl_train(sweep_dir, cache, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "purerl-train: error: nothing was started: 2 of 2 jobs are invalid"
    for line in lines[:2]:
        assert "its complete results were made with purerl source" in line
        assert "force=true" in line and "name=" in line
    assert {v: result_mtimes(sweep_dir / job_name(v)) for v in GOOD} == kept


def test_analysis_of_a_job_folder_named_with_brackets(sweep, tmp_path):
    from purerl.cli.analyze import main

    job = sweep[0] / job_name("0.0")
    assert "[" in job.name
    summary = analysis.load(job)
    assert len(summary) == 4 and set(summary.ent_coef) == {0.0}
    out = tmp_path / "out"
    assert main([str(job), "--out", str(out), "--no-plots"]) == 0
    assert "| lr " in (out / "table.md").read_text()
