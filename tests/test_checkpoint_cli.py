"""purerl-train jobs killed mid-run (SIGKILL, SIGTERM) resume from their checkpoint and
end with the results of an uninterrupted job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ON_CPU, tol

# The tests share module fixtures (one training run): one worker builds them once.
pytestmark = pytest.mark.xdist_group(__name__)

# 120 updates in segments of 4, a checkpoint after every other segment: the first one appears
# long before the job ends, so a kill lands mid-run.
JOB = ["algo=ppo", "env=cartpole", "seeds=2", "algo.config.num_envs=2", "algo.config.num_steps=8",
       "algo.config.total_timesteps=1920", "checkpoint.segment_updates=4", "checkpoint.every_updates=8",
       "print_table=false", "save_policies=false"]


def start(job_dir: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PURERL_COMPILE_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "purerl.cli.train", *JOB, f"hydra.run.dir={job_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def wait_for_checkpoint(job_dir: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not list((job_dir / "checkpoints").glob("ckpt-*/meta.json")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def assert_same_results(a: Path, b: Path) -> None:
    """Every row and column of results.parquet equal (float32 tolerance on GPU)."""
    left, right = (pd.read_parquet(job / "results.parquet") for job in (a, b))
    pd.testing.assert_frame_equal(left, right, check_exact=ON_CPU, **({} if ON_CPU else tol(vmapped=True)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt_cli")
    job = root / "uninterrupted"
    finish(start(job, root / "cache"))
    assert not (job / "checkpoints").exists()  # removed once the results are written
    return root, job


def test_sigkill_mid_run_then_rerun_resumes(uninterrupted):
    root, reference = uninterrupted
    job = root / "killed"
    proc = start(job, root / "cache")
    wait_for_checkpoint(job, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    out = finish(start(job, root / "cache"))
    assert "resuming from checkpoint" in out
    assert_same_results(job, reference)


def test_sigterm_saves_within_seconds_then_rerun_resumes(uninterrupted):
    root, reference = uninterrupted
    job = root / "terminated"
    proc = start(job, root / "cache")
    wait_for_checkpoint(job, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 30, out  # one segment and a save, not the rest of the run
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out and "rerun the same command to resume" in out
    assert '"status": "failed"' in (job / "job.json").read_text()
    out = finish(start(job, root / "cache"))
    assert "resuming from checkpoint" in out
    assert_same_results(job, reference)
