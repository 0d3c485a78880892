"""The MoE ratio-noise experiment: a smoke run (`scale=smoke`) writes its tables, and
`rebuild=true` remakes the same report from the kept per-seed results without computing.

The start-of-RL diagnostics run for real (two small programs); the learning arms are four GRPO
trainings whose plumbing tests/test_llm_mismatch.py already runs, so here a synthetic per-seed
table of the same shape stands in for them and keeps this test in seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments import moe_ratios


def synthetic_learning(plan, ffn, ratio):
    rng = np.random.default_rng(len(ffn) + len(ratio))
    seeds, updates = int(plan.seeds), int(plan.config.num_updates)
    sft, final = rng.uniform(0, 1, (2, seeds))
    summary = pd.DataFrame({"ffn": ffn, "ratio": ratio, "algo": moe_ratios.RATIOS[ratio], "seed": np.arange(seeds),
                            "sft_accuracy": sft, "final_accuracy": final, "gain": final - sft,
                            "drop_from_best": rng.uniform(0, 0.1, seeds),
                            "first_approx_kl": rng.uniform(0, 1e-4, seeds),
                            "clip_frac": rng.uniform(0, 0.2, seeds)})
    curves = pd.DataFrame({"ffn": ffn, "ratio": ratio, "seed": np.repeat(np.arange(seeds), updates),
                           "update": np.tile(np.arange(1, updates + 1), seeds),
                           **{m: rng.uniform(0.01, 1, seeds * updates) for m in moe_ratios.CURVE_MEASURES}})
    return {"summary": summary, "curves": curves}


def test_moe_ratios_smoke_and_rebuild_from_kept_results(tmp_path, monkeypatch):
    monkeypatch.setattr(moe_ratios, "learning", synthetic_learning)
    argv = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}"]
    assert moe_ratios.main(argv) == 0
    report = (tmp_path / "report" / "moe_ratios.md").read_text()
    for heading in ("## 1. Mismatch at the start of RL", "Mismatch at the start: 8 quantities, paired by seed",
                    "MoE: log10(token-ratio var / sequence-ratio var)", "GSPO − GRPO (moe)", "MoE − dense (GSPO)",
                    "(GSPO − GRPO) MoE − (GSPO − GRPO) dense", "## Closing note", "## Kept results"):
        assert heading in report, heading
    kept = tmp_path / "report" / "moe_ratios"
    start = pd.read_csv(kept / "results" / "start.csv")
    learning = pd.read_csv(kept / "results" / "learning.csv")
    curves = pd.read_csv(kept / "results" / "curves.csv")
    # seeds × FFNs, seeds × arms, seeds × arms × updates
    assert len(start) == 2 * 2 and len(learning) == 2 * 2 * 2 and len(curves) == 2 * 2 * 2 * 2
    assert (kept / "curves.png").exists()
    assert (start[start.ffn == "dense"].flip_share == 0).all()
    assert start.flip_share.between(0, 1).all() and (start.token_ratio_var >= 0).all()
    assert start[start.ffn == "dense"].flipped_abs_log_ratio.isna().all()
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert moe_ratios.main(argv) == 0
    assert (tmp_path / "rebuilt" / "moe_ratios.md").read_text() == report
    assert not (tmp_path / "nothing").exists()


def test_smoothed_drop_reads_a_late_fall_not_single_update_noise():
    rising = np.array([[0.1, 0.9, 0.1, 0.5, 0.5, 0.6]])  # one noisy spike, then the best window at the end
    falling = np.array([[0.2, 0.6, 0.6, 0.6, 0.3, 0.3]])
    np.testing.assert_allclose(moe_ratios.smoothed_drop(rising, 3), [0.0], atol=1e-12)
    np.testing.assert_allclose(moe_ratios.smoothed_drop(falling, 3), [0.6 - 0.4], atol=1e-12)


def test_every_scale_loads_and_its_trainer_configs_validate():
    assert moe_ratios.lab.scales("moe_ratios") == ["ci", "full", "paper", "smoke"]
    for scale in moe_ratios.lab.scales("moe_ratios"):
        plan = moe_ratios.lab.load_plan("moe_ratios", [f"scale={scale}"])
        for ffn in moe_ratios.FFNS:
            for ratio in moe_ratios.RATIOS:
                config = moe_ratios.grpo_config(plan, ffn, ratio)
                assert (config.ffn, config.ratio, config.rollout_dtype) == (ffn, ratio, plan.rollout_dtype)
        assert plan.seeds >= {"paper": 32, "full": 16}.get(scale, 1), scale
