"""The LM algorithms through the `purerl-train` entry point: one real job (experiment
llm_rl_smoke: GRPO with GSPO's sequence-level ratio, 2 learning rates × 2 seeds) writes tidy
results whose `env` column is the task."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from purerl import results as res


def test_purerl_train_runs_grpo_and_writes_results(tmp_path):
    job = tmp_path / "job"
    proc = subprocess.run(
        [sys.executable, "-m", "purerl.cli.train", "experiment=llm_rl_smoke", "algo.config.ratio=sequence",
         f"hydra.run.dir={job}", "compile_cache.enabled=false"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert res.is_complete(job)
    summary = pd.read_parquet(job / res.SUMMARY)
    assert len(summary) == 4 and set(summary["lr"]) == {1e-3, 2e-3}
    assert set(summary["algo"]) == {"grpo"} and set(summary["env"]) == {"addition"}
    assert set(summary["ratio"]) == {"sequence"}
    assert np.all(np.isfinite(summary["final_return"])) and not summary["diverged"].any()
    tidy = pd.read_parquet(job / res.RESULTS)
    assert {"accuracy", "kl_to_ref", "greedy_accuracy", "sft_accuracy", "zero_std_groups"} <= set(tidy.columns)
    assert "episode_return" not in tidy.columns  # the headline keeps its name (grpo.RETURN_METRIC)
    last = tidy[tidy["update"] == tidy["update"].max()].sort_values(["lr", "seed"])["accuracy"].to_numpy()
    np.testing.assert_allclose(summary.sort_values(["lr", "seed"])["final_return"], last, rtol=1e-6)
    assert tidy["env_steps"].max() == 3 * 4 * 2  # updates × prompts × group size

