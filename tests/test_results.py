"""purerl.results: tidy tables, summaries, divergence, atomic job files (no JAX compile)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest

from purerl import results as res
from purerl.algos import ppo


@dataclasses.dataclass
class FakeResult:  # the fields of purerl.sweep.SweepResult that results.py reads
    metrics: dict
    settings: tuple
    seeds: np.ndarray
    compile_seconds: float = 1.5
    run_seconds: float = 0.25


def make_result(num_updates: int = 20) -> FakeResult:
    settings = ({"clip_eps": 0.1}, {"clip_eps": 0.3})
    seeds = np.array([3, 7])
    shape = (2, 2, num_updates)
    rng = np.random.default_rng(0)
    returns = rng.uniform(0, 100, shape).astype(np.float32)
    episodes = np.ones(shape, np.int32)
    returns[0, 0, 0] = np.nan  # no episode finished in update 0: NaN by design, not divergence
    episodes[0, 0, 0] = 0
    loss = rng.normal(size=shape).astype(np.float32)
    loss[1, 1, 13] = np.nan  # run (setting 1, seed 7) diverges at update 13
    loss[1, 1, 15] = np.inf
    return FakeResult(
        metrics={
            "env_steps": np.broadcast_to((np.arange(num_updates) + 1) * 128, shape).astype(np.int32),
            "episode_return": returns,
            "episode_length": returns.copy(),
            "episodes": episodes,
            "policy_loss": loss,
            "lr": np.full(shape, 2.5e-4, np.float32),
        },
        settings=settings,
        seeds=seeds,
    )


IDS = dict(
    experiment="exp",
    algo="ppo",
    config=ppo.Config(num_envs=4, num_steps=32, total_timesteps=2560),
    base_hyper=ppo.Hyper(),
)


def test_tidy_rows_and_columns():
    result = make_result()
    df = res.tidy(result, **IDS)
    assert len(df) == 2 * 2 * 20
    hyper = [f.name for f in dataclasses.fields(ppo.Hyper)]
    static = [f.name for f in dataclasses.fields(ppo.Config) if f.name != "env"]
    expected = [
        "experiment",
        "algo",
        "env",
        "seed",
        "setting",
        *hyper,
        *static,
        "update",
        "env_steps",
        "episode_return",
        "episode_length",
        "episodes",
        "policy_loss",
        "metric_lr",
    ]
    assert list(df.columns) == expected
    assert set(df.env) == {"CartPole-v1"}
    row = df[(df.setting == 1) & (df.seed == 7) & (df["update"] == 4)]
    assert len(row) == 1
    assert row.clip_eps.item() == 0.3  # the exact swept value, not its float32 image
    assert row.gae_lambda.item() == 0.95
    assert row.num_envs.item() == 4 and row.actor_hidden.item() == "(64, 64)"
    assert row.env_steps.item() == 5 * 128
    assert row.episode_return.item() == pytest.approx(result.metrics["episode_return"][1, 1, 4])
    assert row.metric_lr.item() == pytest.approx(2.5e-4) and row.lr.item() == 2.5e-4


def test_summary_final_return_auc_and_divergence():
    result = make_result(num_updates=20)
    summary = res.summarize(result, **IDS)
    assert len(summary) == 4
    returns = result.metrics["episode_return"].astype(np.float64)
    for s in range(2):
        for k, seed in enumerate([3, 7]):
            row = summary[(summary.setting == s) & (summary.seed == seed)]
            assert row.final_episodes.item() == 2  # one per update in the final window
            if (s, seed) == (1, 7):  # diverged: no finite number may pass for its result
                assert np.isnan(row.final_return.item()) and np.isnan(row.auc.item())
                continue
            # last 10% of 20 updates = the last 2
            assert row.final_return.item() == pytest.approx(returns[s, k, -2:].mean())
            assert row.auc.item() == pytest.approx(np.nanmean(returns[s, k]))
    diverged = summary.set_index(["setting", "seed"]).diverged
    assert diverged.to_dict() == {(0, 3): False, (0, 7): False, (1, 3): False, (1, 7): True}
    first = summary.set_index(["setting", "seed"]).diverged_update
    assert first[(1, 7)] == 13 and pd.isna(first[(0, 3)])
    assert (summary.compile_seconds == 1.5).all() and (summary.wall_seconds == 0.25).all()


def test_no_finished_episode_in_the_final_window_is_counted_not_diverged():
    result = make_result(num_updates=20)
    result.metrics["episode_return"][0, 1, -2:] = np.nan
    result.metrics["episodes"][0, 1, -2:] = 0
    row = res.summarize(result, **IDS).set_index(["setting", "seed"]).loc[(0, 7)]
    assert np.isnan(row.final_return) and row.final_episodes == 0 and not row.diverged
    assert np.isfinite(row.auc)


def test_nan_return_with_finished_episodes_is_divergence():
    metrics = {"episode_return": np.array([[1.0, np.nan, 2.0]]), "episodes": np.array([[1, 1, 1]])}
    diverged, first = res.divergence(metrics)
    assert diverged.tolist() == [True] and first.tolist() == [1]
    metrics["episodes"] = np.array([[1, 0, 1]])
    diverged, first = res.divergence(metrics)
    assert diverged.tolist() == [False] and first.tolist() == [-1]


def test_write_job_roundtrip_and_status(tmp_path):
    result = make_result()
    tidy, summary = res.tidy(result, **IDS), res.summarize(result, **IDS)
    assert res.read_status(tmp_path) is None and not res.is_complete(tmp_path)
    res.mark_running(tmp_path, fingerprint="abc")
    assert not res.is_complete(tmp_path)
    res.write_job(tmp_path, tidy, summary, "a: 1\n", fingerprint="abc")
    assert res.is_complete(tmp_path)
    assert res.read_status(tmp_path)["fingerprint"] == "abc"
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / res.RESULTS), tidy)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / res.SUMMARY), summary)
    assert (tmp_path / res.CONFIG).read_text() == "a: 1\n"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    # A rerun that starts invalidates the old completion before touching anything else.
    res.mark_running(tmp_path, fingerprint="abc")
    assert not res.is_complete(tmp_path)


def test_completion_records_checksums_and_any_change_makes_the_job_damaged(tmp_path):
    import hashlib

    result = make_result()
    tidy, summary = res.tidy(result, **IDS), res.summarize(result, **IDS)
    (tmp_path / "policies" / "state").mkdir(parents=True)
    (tmp_path / "policies" / "state" / "leaf").write_bytes(b"params")
    res.write_job(tmp_path, tidy, summary, "a: 1\n", extra_files=["policies"], fingerprint="abc")
    files = res.read_status(tmp_path)["files"]
    assert sorted(files) == ["config.yaml", "policies/state/leaf", res.RESULTS, res.SUMMARY]
    for name, record in files.items():  # independent reference: hashlib over the whole file
        data = (tmp_path / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert res.job_state(tmp_path) == ("complete", "") and res.damage(tmp_path) == ""

    results_bytes = (tmp_path / res.RESULTS).read_bytes()
    (tmp_path / res.RESULTS).write_bytes(results_bytes[: len(results_bytes) // 2])  # truncated
    assert not res.is_complete(tmp_path)
    assert res.job_state(tmp_path) == (
        "damaged", f"{res.RESULTS} size mismatch ({len(results_bytes) // 2} bytes, recorded {len(results_bytes)})"
    )
    (tmp_path / res.RESULTS).write_bytes(results_bytes)
    assert res.is_complete(tmp_path)

    (tmp_path / "policies" / "state" / "leaf").write_bytes(b"PARAMS")  # same size, other bytes
    assert res.damage(tmp_path) == "policies/state/leaf sha256 mismatch"
    (tmp_path / res.SUMMARY).unlink()
    assert res.damage(tmp_path) == f"policies/state/leaf sha256 mismatch; {res.SUMMARY} missing"
    assert not res.is_complete(tmp_path)


def test_a_record_without_checksums_still_needs_both_tables(tmp_path):
    result = make_result()
    res.write_job(tmp_path, res.tidy(result, **IDS), res.summarize(result, **IDS), "a: 1\n")
    status = res.read_status(tmp_path)
    del status["files"]
    res.atomic_write_text(tmp_path / res.STATUS, json.dumps(status))
    assert res.is_complete(tmp_path)
    (tmp_path / res.RESULTS).unlink()
    assert res.job_state(tmp_path) == ("damaged", f"{res.RESULTS} missing")


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    res.atomic_write_bytes(target, b"old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        res.atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np, pandas as pd
    from pathlib import Path
    from purerl import results as res

    job = Path(sys.argv[1])
    signal_file = Path(sys.argv[2])
    df = pd.DataFrame({"x": np.arange(200_000, dtype=np.float64)})
    res.mark_running(job, fingerprint="new")
    real_fsync = os.fsync
    calls = []

    def stalled_fsync(fd):  # results.parquet's bytes are in the temp file: get killed here
        calls.append(fd)
        if len(calls) == 2:  # 1: config.yaml, 2: results.parquet
            signal_file.write_text("writing")
            time.sleep(600)
        real_fsync(fd)

    os.fsync = stalled_fsync
    res.write_job(job, df, df.head(3), "b: 2\\n", fingerprint="new")
    """
)


@pytest.mark.parametrize("previous", ["none", "complete"])
def test_killed_mid_write_leaves_nothing_complete(tmp_path, previous):
    import analysis

    job = tmp_path / "sweep" / "job0"
    job.mkdir(parents=True)
    if previous == "complete":  # a forced rerun of a finished job is killed halfway
        result = make_result()
        res.write_job(job, res.tidy(result, **IDS), res.summarize(result, **IDS), "a: 1\n", fingerprint="old")
        assert res.is_complete(job)
    signal_file = tmp_path / "signal"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(job), str(signal_file)])
    try:
        deadline = time.time() + 60
        while not signal_file.exists():
            assert child.poll() is None, "writer exited before reaching the write"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not res.is_complete(job)
    assert res.read_status(job)["status"] == "running"
    if previous == "none":
        assert not (job / res.RESULTS).exists()  # only the temp file was being written
    assert [p for p in os.listdir(job) if p.startswith(".results.parquet.")], "the temp file was in flight"
    with pytest.warns(UserWarning, match="incomplete"):
        df = analysis.load(tmp_path / "sweep")
    assert df.empty
    assert df.attrs["missing"] == ["job0"]
    table = analysis.jobs(tmp_path / "sweep")
    assert table.status.tolist() == ["incomplete"]
