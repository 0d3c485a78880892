"""experiments/llm_rl.py: the per-seed summaries and paired comparisons against NumPy, the report
written from synthetic curves (no training) and rebuilt from its kept results, and (slow) the
smoke run that trains every arm of the smoke plan. The committed `full` report's rebuild is
tests/test_reports.py's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments import lab, llm_rl
from tests.test_experiments import table_under

SEEDS, UPDATES = 4, 3


def synthetic_curves(plan) -> pd.DataFrame:
    """Curves of the smoke plan's labels with known per-seed numbers: accuracy = start + gain·u/U,
    GRPO's gain 0.1 + 0.01·seed, the reward-model arm's 0.05·seed·(1 − β)."""
    rng = np.random.default_rng(0)
    frames = []
    labels = [("GRPO", "GRPO", None)] + [("PPO + RM", f"PPO + RM kl_coef={b:g}", b)
                                         for b in plan.arms["PPO + RM"].grid.kl_coef]
    for arm, label, beta in labels:
        for seed in range(SEEDS):
            start = 0.2 + 0.01 * seed
            gain = 0.1 + 0.01 * seed if beta is None else 0.05 * seed * (1 - beta)
            u = np.arange(1, UPDATES + 1)
            frame = pd.DataFrame({"arm": arm, "label": label, "seed": seed, "update": u,
                                  "accuracy": start + gain * u / UPDATES, "greedy_accuracy": start + gain,
                                  "kl_to_ref": 0.1 * u, "sample_reward": start + gain * u / UPDATES,
                                  "proxy_reward": rng.normal(size=UPDATES), "sft_accuracy": start,
                                  "env_steps": 8.0 * u, "clip_frac": 0.1, "approx_kl": 0.01,
                                  "compile_seconds": 1.0, "run_seconds": 1.0})
            if beta is None:
                frame["zero_std_groups"] = 0.5
                frame["sft_greedy_accuracy"] = 0.9
                frame["token_ratio_var"] = 0.02 * (seed + 1)
                frame["sequence_ratio_var"] = 0.01
            else:
                frame["kl_coef"] = beta
                frame["rm_true_accuracy"] = 0.7
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def plan(tmp_path):
    return lab.load_plan("llm_rl", ["scale=smoke", f"out_dir={tmp_path / 'out'}",
                                    f"report_dir={tmp_path / 'report'}"])


def test_per_seed_gain_and_paired_difference_match_numpy(plan):
    curves = synthetic_curves(plan)
    seeds = llm_rl.per_seed(plan, curves)
    grpo = seeds[seeds.label == "GRPO"].set_index("seed")
    # final = the last `final_updates` (1) updates: start + gain
    np.testing.assert_allclose(grpo.gain, 0.1 + 0.01 * np.arange(SEEDS), rtol=1e-12)
    estimate, low, high, n = llm_rl.paired(seeds, "GRPO", "PPO + RM kl_coef=0")
    expected = (0.1 + 0.01 * np.arange(SEEDS)) - 0.05 * np.arange(SEEDS)
    assert n == SEEDS and estimate == pytest.approx(expected.mean())
    assert low <= estimate <= high
    # token / sequence ratio variance: per seed 2·(seed + 1), then the mean over seeds
    ratios = llm_rl.ratio_table(seeds)
    assert list(ratios.method) == ["GRPO"]
    assert float(ratios["token / sequence"][0].split(" [")[0]) == pytest.approx(np.mean(2 * np.arange(1, SEEDS + 1)))
    assert llm_rl.verdict((1.0, 0.5, 2.0, 8), "A", "B") == "A higher"
    assert llm_rl.verdict((-1.0, -2.0, -0.5, 8), "A", "B") == "B higher"
    assert llm_rl.verdict((0.1, -0.5, 2.0, 8), "A", "B") == "not resolved at 8 seeds"


def test_report_from_synthetic_curves_and_its_rebuild(plan, tmp_path, monkeypatch):
    monkeypatch.setattr(llm_rl, "compute", lambda plan: {"curves": synthetic_curves(plan)})
    args = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}"]
    assert llm_rl.main(args) == 0
    path = tmp_path / "report" / "llm_rl.md"
    report = path.read_text()
    headline = table_under(report, "Headline: final held-out accuracy")
    assert [r[0] for r in headline] == ["GRPO"]
    over = table_under(report, "The reward model")
    assert len(over[0]) == 8
    assert [r[0] for r in over] == ["0", "0.2"]
    assert table_under(report, "Variance of the per-token ratios")[0][0] == "GRPO"
    comparisons = table_under(report, "1 comparisons")
    assert comparisons[0][:2] == ["GRPO", "PPO + RM kl_coef=0"]
    for png in ("curves.png", "overoptimisation.png"):
        assert (tmp_path / "report" / "llm_rl" / png).stat().st_size > 0
    kept = tmp_path / "report" / "llm_rl" / "results" / "curves.csv"
    assert kept.exists()
    monkeypatch.setattr(llm_rl, "compute", lambda plan: pytest.fail("rebuild must not compute"))
    path.unlink()
    assert llm_rl.main([*args, "rebuild=true"]) == 0
    rebuilt = path.read_text()
    assert table_under(rebuilt, "Headline: final held-out accuracy") == headline
    assert table_under(rebuilt, "The reward model") == over


@pytest.mark.slow
def test_llm_rl_smoke_trains_every_arm(tmp_path):
    args = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}"]
    assert llm_rl.main(args) == 0
    report = (tmp_path / "report" / "llm_rl.md").read_text()
    plan = lab.load_plan("llm_rl", args)
    kept = pd.read_csv(tmp_path / "report" / "llm_rl" / "results" / "curves.csv")
    assert set(kept.seed) == set(range(plan.seeds)) and kept["update"].max() == plan.counts.num_updates
    assert set(kept.label) == {"GRPO", "PPO + RM kl_coef=0", "PPO + RM kl_coef=0.2"}
    assert kept[["accuracy", "kl_to_ref", "proxy_reward", "sample_reward"]].notna().all().all()
    assert [r[0] for r in table_under(report, "Headline: final held-out accuracy")] == ["GRPO"]

