"""The attention experiments of issue 13 (`rlhf_memory`, `softmax_vs_linear`): a smoke run of each
(`scale=smoke`) that checks the generated report has the expected tables and rows."""

from __future__ import annotations

import pytest
from test_experiments import table_under

from experiments import lab


def _smoke(module, tmp_path, *extra: str) -> str:
    argv = ["scale=smoke", f"out_dir={tmp_path / 'out'}", f"report_dir={tmp_path / 'report'}", *extra]
    assert module.main(argv) == 0
    return (tmp_path / "report" / f"{module.NAME}.md").read_text()


def test_rlhf_memory_smoke(tmp_path):
    from experiments import rlhf_memory

    report = _smoke(rlhf_memory, tmp_path)
    plan = lab.load_plan("rlhf_memory", ["scale=smoke"])
    headline = table_under(report, "Headline: 7B RLHF training memory")
    assert len(headline) == len(plan.setups) * len(plan.precisions) * len(plan.offloads)  # 3 × 2 × 3
    grpo_bf16 = [row for row in headline if row[0] == "GRPO" and row[1].startswith("bf16")]
    assert [row[7] for row in grpo_bf16] == ["84 GB", "56 GB", "28 GB"]  # training state on device
    grpo_mixed = [row for row in headline if row[0] == "GRPO" and row[1].startswith("mixed")]
    assert [row[7] for row in grpo_mixed] == ["140 GB", "112 GB", "28 GB"]
    assert all(row[-1] in ("yes", "no") for row in headline)
    hand = table_under(report, "Check against the hand arithmetic")
    assert len(hand) == 6 and all(row[-1] == "yes" for row in hand)
    conventions = table_under(report, "Bytes per parameter of one trained model")
    assert [row[0] for row in conventions] == ["fp32", "bf16", "mixed"]
    assert all(row[-1] == "yes" for row in conventions)
    kv = table_under(report, "KV cache of the policy while it generates")
    assert len(kv) == len(plan.kv_sweep.kv_heads) * len(plan.kv_sweep.lens)
    assert "python -m experiments.rlhf_memory scale=smoke" in report and "## Answer" in report
    for png in ("breakdown.png", "kv_cache.png"):
        assert (tmp_path / "report" / "rlhf_memory" / png).stat().st_size > 10_000


@pytest.mark.parametrize("name", ["rlhf_memory"])
def test_every_scale_loads(name):
    assert lab.scales(name) == ["ci", "paper", "smoke"]
    for scale in lab.scales(name):
        plan = lab.load_plan(name, [f"scale={scale}"])
        if scale == "paper":
            assert plan.seeds >= 32
