"""analysis: tables that cannot mislead (diverged and empty runs counted, pooling and
duplicated seeds refused), robust loading, one-line CLI errors, plot titles and colours.

Job folders are synthetic (written by purerl.results from made-up metrics): no training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from analysis_fixtures import write_fake_job  # noqa: E402
from scipy import stats  # noqa: E402

import analysis  # noqa: E402
from analysis import plots  # noqa: E402
from purerl import results as res  # noqa: E402
from purerl.cli.analyze import main  # noqa: E402

GRID_JOB = "grid.clip_eps=[0.1,0.2]"


def written(folder) -> set[str]:
    return {p for p in os.listdir(folder) if p.endswith((".md", ".tex", ".png"))}


# ---------------------------------------------------------------- bootstrap CI
def test_bootstrap_ci_of_the_mean_matches_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(10.0, 2.0, 400)
    low, high = analysis.stratified_bootstrap_ci([x], "mean", 0.95, n_resamples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))  # closed form for a mean
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def test_bootstrap_strata_keep_their_share_of_runs():
    # Two strata with constant values: any within-stratum resample has the same mean.
    a, b = np.full(3, 1.0), np.full(5, 9.0)
    low, high = analysis.stratified_bootstrap_ci([a, b], "mean", 0.9, n_resamples=200)
    assert low == high == pytest.approx((3 * 1.0 + 5 * 9.0) / 8)
    single = analysis.stratified_bootstrap_ci([np.array([1.0]), np.array([2.0])], "mean")
    assert np.isnan(single).all()  # nothing to resample


def test_bootstrap_with_diverged_runs_gives_infinite_not_nan_bounds():
    few = np.r_[np.full(39, 100.0), -np.inf]  # 1 of 40 at -inf: the IQM trims it in any likely resample
    low, high = analysis.stratified_bootstrap_ci([few], "iqm", 0.95, n_resamples=1000)
    assert low == high == 100.0
    many = np.r_[np.full(6, 100.0), -np.inf, -np.inf]  # 2 of 8: resamples with >2 happen often
    low, high = analysis.stratified_bootstrap_ci([many], "iqm", 0.95, n_resamples=1000)
    assert low == -np.inf and high == 100.0


# ---------------------------------------------------------------- diverged and empty runs
def _summary(values, diverged=None):
    n = len(values)
    return pd.DataFrame(
        {
            "job": "j",
            "algo": "ppo",
            "env": "CartPole-v1",
            "setting": 0,
            "seed": np.arange(n),
            "final_return": np.asarray(values, dtype=np.float64),
            "diverged": np.zeros(n, bool) if diverged is None else np.asarray(diverged),
        }
    )


def test_diverged_runs_count_as_the_worst_outcome():
    values = [10.0, 20, 30, 40, 50, 60, 70, np.nan]  # run 7 diverged (summary stores NaN)
    df = _summary(values, [False] * 7 + [True])
    row = analysis.aggregate(df, by="env", stat="iqm").iloc[0]
    # IQM of the 8 runs with the diverged one ranked lowest: trim 2 from each end of
    # [-inf, 10, 20, 30, 40, 50, 60, 70] -> mean(20, 30, 40, 50)
    assert row.iqm == pytest.approx(35.0)
    assert (row.n_runs, row.n_diverged, row.n_no_episode) == (8, 1, 0)
    excluded = analysis.aggregate(df, by="env", stat="iqm", diverged="exclude").iloc[0]
    assert excluded.iqm == pytest.approx(stats.trim_mean(values[:7], 0.25)) and excluded.n_diverged == 1
    mean = analysis.aggregate(df, by="env", stat="mean").iloc[0]
    assert mean["mean"] == -np.inf and "1 of 8 runs diverged and count as -inf" in mean.note
    # An old summary with a finite final_return for the diverged run gives the same table.
    old = df.assign(final_return=[10.0, 20, 30, 40, 50, 60, 70, 1e6])
    assert analysis.aggregate(old, by="env", stat="iqm").iloc[0].iqm == pytest.approx(35.0)


def test_too_many_diverged_runs_make_the_iqm_minus_infinity_and_say_why():
    df = _summary([1.0, 2, 3, 4, 5, np.nan, np.nan, np.nan], [False] * 5 + [True] * 3)
    table = analysis.aggregate(df, by="env", stat="iqm")
    assert table.iqm.item() == -np.inf
    text = analysis.to_markdown(table)
    assert "-inf [-inf, " in text and "3 of 8 runs diverged and count as -inf" in text
    assert "3 diverged run(s) count as the worst outcome (-inf)" in text


def test_where_lower_is_better_a_diverged_run_counts_as_plus_infinity():
    """Bandit regret (purerl.algos.lower_is_better): the worst outcome is +inf, and the table says
    its headline is better when lower; runs whose headlines point opposite ways are refused."""
    values = [10.0, 20, 30, 40, 50, 60, 70, np.nan]
    df = _summary(values, [False] * 7 + [True]).assign(algo="bandit")
    table = analysis.aggregate(df, by="env", stat="iqm")
    # [10, …, 70, +inf]: trim 2 from each end -> mean(30, 40, 50, 60)
    assert table.iqm.item() == pytest.approx(45.0) and table.attrs["lower_is_better"]
    mean = analysis.aggregate(df, by="env", stat="mean")
    assert mean["mean"].item() == np.inf and "1 of 8 runs diverged and count as inf" in mean.note.item()
    text = analysis.to_markdown(mean)
    assert "final_return (lower is better)" in text.splitlines()[0] and "worst outcome (+inf)" in text
    mixed = pd.concat([df, df.assign(algo="ppo", seed=df.seed + 100)], ignore_index=True)
    with pytest.raises(ValueError, match="better when lower for bandit but when higher for ppo"):
        analysis.aggregate(mixed, by="env")
    assert not analysis.aggregate(df.assign(algo="ppo"), by="env").attrs["lower_is_better"]


def test_runs_without_a_finished_episode_are_counted_and_nan_rows_explained():
    df = pd.concat(
        [
            _summary([np.nan, np.nan]).assign(env="A"),  # no run finished an episode
            _summary([np.nan, np.nan], [True, True]).assign(env="B"),  # all diverged
            _summary([5.0]).assign(env="C"),  # one run: a value but no CI
            _summary([5.0, np.nan, 7.0]).assign(env="D"),
        ],
        ignore_index=True,
    )
    table = analysis.aggregate(df, by="env", stat="mean", diverged="exclude").set_index("env")
    assert table.loc["A", "note"] == "no run to aggregate: 2 with no finished episode"
    assert table.loc["B", "note"] == "no run to aggregate: 2 diverged (excluded)"
    assert table.loc["C", "note"] == "no CI: fewer than 2 runs per setting"
    assert table.loc["D", "mean"] == 6.0 and table.loc["D", "n_no_episode"] == 1 and table.loc["D", "note"] == ""
    text = analysis.to_markdown(table.reset_index().pipe(lambda t: t.set_axis(t.columns, axis=1)))
    for line in text.splitlines():
        if "nan [nan, nan]" in line:
            assert "no run to aggregate" in line  # every NaN row says why
    header = text.splitlines()[0]
    assert "| n |" in header and "n diverged" in header and "n no episode" in header


def test_summary_never_stores_a_finite_return_for_a_diverged_run(tmp_path):
    write_fake_job(tmp_path / "job", diverge={(1, 3): 12})
    summary = analysis.load(tmp_path / "job")
    row = summary[(summary.setting == 1) & (summary.seed == 3)].iloc[0]
    assert row.diverged and row.diverged_update == 12
    assert np.isnan(row.final_return) and np.isnan(row.auc)


# ---------------------------------------------------------------- loading
def test_literal_paths_with_brackets_are_not_globs(tmp_path):
    job = write_fake_job(tmp_path / "sweep" / GRID_JOB)
    write_fake_job(tmp_path / "sweep" / "grid.clip_eps=1", clip_eps=(0.5,))  # what "[0.1,0.2]" would glob to
    for path in (job, str(job)):
        summary = analysis.load(path)
        assert len(summary) == 16 and set(summary.clip_eps) == {0.1, 0.2}
    assert main([str(job), "--no-plots"]) == 0
    assert written(job) == {"table.md", "table.tex"}
    assert len(analysis.load(str(tmp_path / "sweep" / "grid.*"))) == 24  # a real glob still works


def test_a_damaged_job_is_reported_in_one_line_and_the_rest_is_analysed(tmp_path, capsys):
    write_fake_job(tmp_path / "s" / "good")
    bad = write_fake_job(tmp_path / "s" / "bad", seeds=(10, 11))
    data = (bad / res.RESULTS).read_bytes()
    (bad / res.RESULTS).write_bytes(data[: len(data) // 2])  # truncated after the job finished
    why = f"{res.RESULTS} size mismatch ({len(data) // 2} bytes, recorded {len(data)})"
    with pytest.warns(UserWarning, match="damaged"):
        summary = analysis.load(tmp_path / "s")  # the summary table alone is intact: still left out
    assert len(summary) == 16 and summary.attrs["damaged"] == ["bad"]
    jobs = pd.DataFrame(summary.attrs["jobs"]).set_index("job")
    assert jobs.status.to_dict() == {"bad": "damaged", "good": "complete"}
    assert jobs.error["bad"] == why
    assert main([str(tmp_path / "s"), "--by", "clip_eps", "--no-plots"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"[damaged] bad: {why}"]
    assert "1/2 jobs complete, 16 runs" in out


def _forget_checksums(job: Path) -> None:
    """What a job finished before checksums were recorded looks like."""
    status = res.read_status(job)
    del status["files"]
    res.atomic_write_text(job / res.STATUS, json.dumps(status))


def test_unreadable_parquet_without_checksums_is_reported_and_the_rest_is_analysed(tmp_path, capsys):
    write_fake_job(tmp_path / "s" / "good")
    bad = write_fake_job(tmp_path / "s" / "bad", seeds=(10, 11))
    _forget_checksums(bad)
    data = (bad / res.SUMMARY).read_bytes()
    (bad / res.SUMMARY).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        summary = analysis.load(tmp_path / "s")
    assert len(summary) == 16 and summary.attrs["unreadable"] == ["bad"]
    status = pd.DataFrame(summary.attrs["jobs"]).set_index("job").status
    assert status.to_dict() == {"bad": "unreadable", "good": "complete"}
    # results.parquet corrupted (summary fine): same for the per-update table
    (bad / res.SUMMARY).write_bytes(data)
    (bad / res.RESULTS).write_bytes(b"PAR1 this is not parquet")
    results = analysis.load(tmp_path / "s", table="results", quiet=True)
    assert set(results.job) == {"good"} and results.attrs["unreadable"] == ["bad"]
    # purerl-analyze with curves: the job is named and left out of the table as well
    capsys.readouterr()
    assert main([str(tmp_path / "s"), "--by", "clip_eps", "--out", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0].startswith("[unreadable] bad: results.parquet unreadable")
    assert "1/2 jobs complete, 16 runs" in out
    (bad / res.SUMMARY).write_bytes(b"")
    assert main([str(tmp_path / "s"), "--by", "clip_eps", "--no-plots"]) == 0
    assert "[unreadable] bad: summary.parquet unreadable" in capsys.readouterr().err


def test_two_jobs_holding_the_same_runs_are_refused(tmp_path, capsys):
    # Two single runs under one name whose grids overlap on clip_eps=0.2, same seeds.
    write_fake_job(tmp_path / "x" / "grid.clip_eps=[0.1,0.2]", clip_eps=(0.1, 0.2))
    write_fake_job(tmp_path / "x" / "grid.clip_eps=[0.2,0.3]", clip_eps=(0.2, 0.3), seed=5)
    with pytest.raises(ValueError, match="8 run.*appear in several jobs.*share 8 run"):
        analysis.load(tmp_path / "x")
    assert main([str(tmp_path / "x"), "--by", "clip_eps"]) == 2
    assert "count their seeds twice" in capsys.readouterr().err
    assert written(tmp_path / "x") == set()

    newest = analysis.load(tmp_path / "x", duplicates="newest")
    assert len(newest) == 24 and newest.attrs["dropped_duplicates"] == 8
    assert (newest.groupby(["clip_eps", "seed"]).size() == 1).all()
    assert set(newest[newest.clip_eps == 0.2].job) == {"grid.clip_eps=[0.2,0.3]"}  # finished last

    kept = analysis.load(tmp_path / "x", duplicates="keep")
    with pytest.raises(ValueError, match="count their seeds twice"):
        analysis.aggregate(kept, by="clip_eps")
    per_job = analysis.aggregate(kept, by=["job", "clip_eps"])
    assert (per_job.n_runs == 8).all() and len(per_job) == 4
    # Different seeds (first_seed=8) are not duplicates.
    write_fake_job(tmp_path / "y" / "a", clip_eps=(0.2,))
    write_fake_job(tmp_path / "y" / "b", clip_eps=(0.2,), seeds=tuple(range(8, 16)))
    assert len(analysis.load(tmp_path / "y")) == 16


# ---------------------------------------------------------------- purerl-analyze
@pytest.fixture
def ablation(tmp_path):
    """The README's multirun: 2 envs x 2 num_envs jobs, each with clip_eps 0.1/0.2/0.3."""
    root = tmp_path / "abl"
    for env, level in (("CartPole-v1", 400.0), ("Acrobot-v1", -100.0)):
        for num_envs in (4, 16):
            name = f"algo.config.num_envs={num_envs},env={env[:4].lower()},grid.clip_eps=[0.1,0.2,0.3]"
            write_fake_job(root / name, clip_eps=(0.1, 0.2, 0.3), env=env, num_envs=num_envs,
                           level=[level, 1.1 * level, 0.8 * level], seed=num_envs,
                           diverge={(2, 1): 12} if (env, num_envs) == ("CartPole-v1", 16) else None)
    return root


def test_by_that_pools_other_varying_columns_is_refused(ablation, capsys):
    assert main([str(ablation), "--by", "clip_eps"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "pools runs over env, num_envs, total_timesteps" in err
    assert "--by clip_eps env num_envs" in err and "--pool" in err
    assert written(ablation) == set()

    assert main([str(ablation), "--by", "clip_eps", "--pool", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "pooled over env, num_envs, total_timesteps (--pool)" in out
    assert "| 0.1      |" in out and "| 32 |" in out  # 2 envs x 2 num_envs x 8 seeds in one row

    assert main([str(ablation), "--by", "env", "num_envs", "clip_eps"]) == 0
    assert written(ablation) == {"table.md", "table.tex", "curves.png", "heatmap.png"}
    table = (ablation / "table.md").read_text()
    assert table.count("\n| ") == 12  # rows after the header: 2 envs x 2 num_envs x 3 clip_eps
    assert "1 diverged run(s) count as the worst outcome" in table


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "final_retrun"], "--metric: got 'final_retrun'; allowed: final_return, auc, final_episodes"),
        (["--ci", "1.5"], "--ci: got 1.5; allowed: a confidence level strictly between 0 and 1"),
        (["--ci", "abc"], "argument --ci: invalid float value: 'abc'"),
        (["--stat", "max"], "argument --stat: invalid choice: 'max'"),
        (["--by", "clip"], "--by: unknown column(s) clip; allowed: job, algo, env"),
        (["--heatmap", "clip", "num_envs"], "--heatmap: unknown column(s) clip; allowed: env, clip_eps, num_envs"),
        (["--curve-metric", "return"], "--curve-metric: got 'return'; allowed: episode_return, episodes, policy_loss"),
        (["--diverged", "drop"], "argument --diverged: invalid choice: 'drop'"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_anything_is_written(ablation, capsys, args, message):
    assert main([str(ablation), "--by", "env", "num_envs", "clip_eps", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"purerl-analyze: error: {message}"), err
    assert written(ablation) == set()


def test_missing_sweep_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    expected = f"purerl-analyze: error: no sweep or job directory matches '{tmp_path / 'nope'}'\n"
    assert capsys.readouterr().err == expected


# ---------------------------------------------------------------- plots
def test_curves_mark_diverged_settings_instead_of_dropping_them(tmp_path):
    job = write_fake_job(tmp_path / "j", clip_eps=(0.1, 0.2), diverge={(1, 0): 10, (1, 1): 14, (1, 2): 16})
    summary = analysis.load(job)
    results = analysis.load(job, table="results")
    table = plots.curve_table(results, "clip_eps", stat="mean", summary=summary).set_index(["clip_eps", "env_steps"])
    steps = 128 * (np.arange(20) + 1)
    assert (table.loc[0.1, "n_diverged"] == 0).all()
    # setting 0.2: no run is dropped (n stays 8); the mean is -inf from the first divergence on
    diverging = table.loc[0.2]
    assert (diverging["n"] == 8).all()
    assert np.isfinite(diverging.loc[steps[:10], "mean"]).all() and (diverging.loc[steps[10:], "mean"] == -np.inf).all()
    assert diverging.loc[steps[-1], "n_diverged"] == 3
    # the IQM is finite while at most 2 of 8 runs have diverged
    iqm = plots.curve_table(results, "clip_eps", summary=summary).set_index(["clip_eps", "env_steps"]).loc[0.2]
    assert np.isfinite(iqm.loc[steps[:16], "iqm"]).all() and (iqm.loc[steps[16:], "iqm"] == -np.inf).all()
    # reference: at update 15, runs 0 and 1 have diverged (-inf), the others have their values
    at = results[(results.clip_eps == 0.2) & (results["update"] == 15)].sort_values("seed").episode_return
    expected = stats.trim_mean(np.r_[-np.inf, -np.inf, at.to_numpy()[2:]], 0.25)
    assert iqm.loc[steps[15], "iqm"] == pytest.approx(expected)

    fig = plots.learning_curves(results, "clip_eps", summary=summary)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [
        "clip_eps=0.1", "clip_eps=0.2 (3/8 diverged)", "first divergence", "IQM -inf after this (diverged)"
    ]
    assert fig.get_suptitle().startswith("PPO on CartPole-v1, 8 seeds per setting")
    excluded = plots.curve_table(results, "clip_eps", summary=summary, diverged="exclude").set_index("clip_eps")
    assert (excluded.loc[0.2, "n"] == 5).all()


def test_many_settings_get_distinct_colours_and_small_multiples(tmp_path):
    values = tuple(np.round(np.linspace(0.05, 0.6, 12), 3))
    write_fake_job(tmp_path / "s" / "cart", clip_eps=values, seeds=(0, 1, 2))
    write_fake_job(tmp_path / "s" / "acro", clip_eps=values, seeds=(0, 1, 2), env="Acrobot-v1")
    summary = analysis.load(tmp_path / "s")
    results = analysis.load(tmp_path / "s", table="results")
    fig = plots.learning_curves(results, ["env", "clip_eps"], summary=summary)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["env=Acrobot-v1", "env=CartPole-v1"]
    for ax in panels:
        colours = [tuple(matplotlib.colors.to_rgba(line.get_color())) for line in ax.get_lines()]
        assert len(colours) == 12 and len(set(colours)) == 12
    assert fig.get_suptitle().startswith("PPO on Acrobot-v1, CartPole-v1, 3 seeds per setting")
    assert len(set(plots.line_colours(8))) == 8 and len(set(map(tuple, plots.line_colours(30)))) == 30


def test_heatmap_cells_show_n_and_optionally_the_ci_width(ablation):
    summary = analysis.load(ablation)
    fig = plots.heatmap(summary, x="clip_eps", y="num_envs", facets=["env"], show_ci=True)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("env=")]
    assert [ax.get_title() for ax in panels] == ["env=Acrobot-v1", "env=CartPole-v1"]
    texts = [t.get_text() for t in panels[1].texts]
    assert len(texts) == 6 and all("n=8" in t for t in texts)
    assert sum("1 diverged" in t for t in texts) == 1 and sum("CI width" in t for t in texts) >= 5
    table = analysis.aggregate(summary[summary.env == "CartPole-v1"], by=["num_envs", "clip_eps"], n_resamples=500)
    row = table[(table.num_envs == 4) & (table.clip_eps == 0.1)].iloc[0]
    label = plots._short_value(row.iqm, plots.distinct_digits(table["iqm"].to_numpy()))
    assert any(t.startswith(f"{label}\nCI width {row.ci_high - row.ci_low:.3g}\nn=8") for t in texts)
    assert fig.get_suptitle().startswith("PPO on Acrobot-v1, CartPole-v1, 8 seeds per setting")
    plain = plots.heatmap(summary[summary.env == "Acrobot-v1"], x="clip_eps", y="num_envs")
    assert not any("CI width" in t.get_text() for t in plain.axes[0].texts)


def test_heatmap_labels_keep_distinct_values_distinct():
    values = np.array([[0.12341, 0.12349], [np.nan, 5.0]])
    digits = plots.distinct_digits(values)
    labels = {plots._short_value(v, digits) for v in values[np.isfinite(values)]}
    assert digits == 4 and labels == {"0.1234", "0.1235", "5"}
    assert plots.distinct_digits(np.array([1.0, 2.0])) == 3  # no extra digits when not needed
