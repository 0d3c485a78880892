"""The MoE ratio-noise experiment: a smoke run (`scale=smoke`) writes its tables, and
`rebuild=true` remakes the same report from the kept per-seed results without computing.

The start-of-RL diagnostics run for real (two small programs); the learning arms are four GRPO
trainings whose plumbing tests/test_llm_mismatch.py already runs, so here a synthetic per-seed
table of the same shape stands in for them and keeps this test in seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments import moe_ratios


def synthetic_learning(plan):
    rng = np.random.default_rng(0)
    rows = []
    for ffn in moe_ratios.FFNS:
        for ratio, algo in moe_ratios.RATIOS.items():
            for seed in range(int(plan.seeds)):
                sft, final = rng.uniform(0, 1, 2)
                rows.append({"ffn": ffn, "ratio": ratio, "algo": algo, "seed": seed, "sft_accuracy": sft,
                             "final_accuracy": final, "gain": final - sft, "drop_from_best": rng.uniform(0, 0.1),
                             "first_approx_kl": rng.uniform(0, 1e-4), "clip_frac": rng.uniform(0, 0.2)})
    return pd.DataFrame(rows)


def test_moe_ratios_smoke_and_rebuild_from_kept_results(tmp_path, monkeypatch):
    monkeypatch.setattr(moe_ratios, "learning", synthetic_learning)
    argv = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}"]
    assert moe_ratios.main(argv) == 0
    report = (tmp_path / "report" / "moe_ratios.md").read_text()
    for heading in ("## 1. Mismatch at the start of RL", "MoE − dense (paired, 4 comparisons)",
                    "GSPO − GRPO (moe)", "MoE − dense (GSPO)", "## Kept results"):
        assert heading in report, heading
    kept = tmp_path / "report" / "moe_ratios"
    start = pd.read_csv(kept / "results" / "start.csv")
    learning = pd.read_csv(kept / "results" / "learning.csv")
    assert len(start) == 2 * 2 and len(learning) == 2 * 2 * 2  # seeds × arms
    assert (start[start.ffn == "dense"].flip_share == 0).all()
    assert start.flip_share.between(0, 1).all() and (start.token_ratio_var >= 0).all()
    argv = ["scale=smoke", "rebuild=true", f"kept_from={kept}", f"out_dir={tmp_path / 'nothing'}",
            f"report_dir={tmp_path / 'rebuilt'}"]
    assert moe_ratios.main(argv) == 0
    assert (tmp_path / "rebuilt" / "moe_ratios.md").read_text() == report
    assert not (tmp_path / "nothing").exists()


def test_committed_report_rebuilds_from_its_kept_results(tmp_path):
    committed = moe_ratios.lab.REPO_ROOT / "experiments" / "reports"
    argv = ["scale=ci", "rebuild=true", f"kept_from={committed / 'moe_ratios'}", f"out_dir={tmp_path / 'out'}",
            f"report_dir={tmp_path}"]
    assert moe_ratios.main(argv) == 0
    assert (tmp_path / "moe_ratios.md").read_text() == (committed / "moe_ratios.md").read_text()
